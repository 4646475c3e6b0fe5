"""The appliance: the only code with sockets, workers, signals and the health endpoint.

Where each part lives:

- ``_sockets``: the sockets a worker owns (UDP bound to the Geneve port with ``SO_REUSEPORT``
  and ``IP_PKTINFO``, a raw ``IP_HDRINCL`` socket for replies; a raw receive socket in raw
  mode) and the host's own addresses;
- ``_transport``: one receiver and one sender per mode, moving batches of frames (recvmmsg /
  sendmmsg in C, or one recvmsg / sendto per call in Python), and the C fast path;
- ``_worker``: the one worker loop that runs the bound :class:`Pipeline` over each batch;
- here: :class:`Appliance` (options, workers as a thread or forked processes, privilege drop,
  signals) and its health endpoint and metrics.

Receive modes: ``udp`` (default, the design of AWS's own tunnel handler): the kernel has
checked and stripped the outer IPv4 and UDP headers; the receiver writes an equivalent 28-byte
header in front of the Geneve bytes, so the pipeline sees exactly the frame GWLB sent.
``raw`` (the original blog design) reads whole frames from a raw socket; every raw socket gets
a copy of every UDP datagram, so it allows only one worker. See docs/appliance.md for the
measurements behind the default.

Workers are a thread when there is one (so a modifier can share state with the embedding
program) and forked processes when there are several (one core each). Each publishes a
snapshot of its counters and a heartbeat twice a second; the health endpoint reports 503 when a
worker died or its heartbeat is stale.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.popen_fork  # now: workers are forked after --user may bar the way to it
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from . import _tun
from ._flows import OTHER_TIMEOUT, TCP_TIMEOUT, EndReason
from ._handover import HANDOVER_ENV, Channel, HandoverError
from ._headers import GENEVE_PORT
from ._health import HealthReport, HealthServer
from ._loader import RulesError, RulesSource, load_modifier, load_rules
from ._notify import notify
from ._packet import GWLB_ENCAP_LENGTH, MAX_INNER_LENGTH
from ._pipeline import ErrorPolicy, FlowTable, Modifier, Stats, check_modifier
from ._sockets import ReceiveMode, Sockets, broadcast_addresses, local_addresses, steer
from ._worker import BATCH, HEARTBEAT, RESUME, RETIRE, Worker, process_main

__all__ = [
    "Appliance",
    "ApplianceError",
    "ReceiveMode",
    "broadcast_addresses",
    "local_addresses",
]

log = logging.getLogger("geneve.appliance")

#: A worker whose heartbeat is older than this is reported as not making progress.
STALE_AFTER = 3.0


#: Modifier errors above this share of the frames received make the appliance unhealthy
#: (a modifier raising on every packet drops every packet while the data path "works").
MAX_ERROR_SHARE = 0.5
#: Over how many seconds that share is measured.
ERROR_WINDOW = 10.0

#: Seconds the workers get to stop (finish the batch, end their flows, run on_stop) before a
#: worker process is killed, plus STOP_PER_FLOW for each flow it had live. Stopping normally
#: takes a fraction of a second.
STOP_TIMEOUT = 10.0
#: Seconds of stop time each live flow adds to its worker's allowance: ending a flow and
#: writing its JSON line (docs/flows.md's logger) took 24 us with the C table (19 us with the
#: Python one; 100,000 flows), so 1 ms leaves a hook 40 times that. 1,000,000 flows in one
#: worker: 1000 s more.
STOP_PER_FLOW = 0.001

#: Seconds an upgrade waits for each step of the new copy (start-up, taking the flows) before
#: the running process gives up on it and goes on.
UPGRADE_TIMEOUT = 60.0

#: GWLB's range for its TCP idle timeout (``tcp.idle_timeout.seconds``). Others are accepted,
#: with a warning: the appliance would end flows GWLB keeps, or keep flows GWLB let go.
GWLB_TCP_TIMEOUT_RANGE = (60.0, 6000.0)
#: The default --max-flows: this many, or one flow per MEMORY_PER_FLOW bytes of the machine's
#: memory when that is fewer (a flow costs far less; the rest is for everything else).
MAX_FLOWS = 1_000_000
MEMORY_PER_FLOW = 4096
#: The reasons a flow ends, each a label of geneve_flows_ended_total even before it happened.
END_REASONS: tuple[EndReason, ...] = typing.get_args(EndReason)


def allow_networks(cidrs: Sequence[str]) -> tuple[ipaddress.IPv4Network, ...]:
    """``--allow-from``'s networks; ValueError, in one line, for one that is not IPv4."""
    nets = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as err:
            raise ValueError(f"--allow-from: {err}") from None
        if not isinstance(net, ipaddress.IPv4Network):  # GWLB's Geneve comes over IPv4 only
            raise ValueError(
                f"--allow-from {cidr}: GWLB sends Geneve over IPv4 only; give IPv4 networks"
            )
        nets.append(net)
    return tuple(nets)


class ApplianceError(Exception):
    """A start-up problem (port taken, no permission, bad option): one line, no traceback."""


def _user_entry(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ApplianceError(f"--user: no such user {user!r}") from None


def _drop_privileges(user: str, keep_net_admin: bool = False) -> None:
    """Become ``user`` (and its primary group) for good; the open sockets keep working.
    ``keep_net_admin``: tun mode, which makes interfaces and runs hooks afterwards."""
    entry = _user_entry(user)
    if os.getuid() == entry.pw_uid and os.getgid() == entry.pw_gid:
        return  # already (an upgrade's new copy, started by a daemon that switched)
    if keep_net_admin:
        try:
            return _tun.drop_privileges_keeping_net_admin(user)
        except OSError as err:
            raise ApplianceError(f"--user {user}: cannot switch user keeping CAP_NET_ADMIN "
                                 f"({err.strerror or err}; not root?)") from None  # fmt: skip
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise ApplianceError(f"--user {user}: cannot switch user (not root?)") from None
    log.info("running as %s (uid %d) from now on", user, entry.pw_uid)


def default_max_flows() -> int:
    """The default bound on live flows: :data:`MAX_FLOWS`, or fewer on a small machine."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not known here: the default as it is
        return MAX_FLOWS
    return max(1, min(MAX_FLOWS, memory // MEMORY_PER_FLOW))


def _seconds(name: str, value: object) -> float:
    """``value`` as a positive, finite number of seconds, or a one-line ApplianceError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApplianceError(f"{name} must be a number of seconds, not {value!r}")
    if not 0 < value < float("inf"):
        raise ApplianceError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class Appliance:
    """A GWLB appliance: sockets, workers running ``modifier``, and a health endpoint.

    ``run()`` blocks until SIGTERM/SIGINT; ``start()``/``stop()`` (or ``with``) embed it.
    Flows are tracked unless ``flows=False`` (docs/flows.md): each worker keeps its own
    :class:`FlowTable` of the flows steered to it, with ``max_flows`` shared out among them.
    """

    def __init__(
        self,
        modifier: Modifier,
        *,
        port: int = GENEVE_PORT,
        bind: str = "0.0.0.0",
        health_host: str = "0.0.0.0",
        health_port: int | None = 8080,
        workers: int = 1,
        on_error: ErrorPolicy = "drop",
        receive: ReceiveMode = "udp",
        max_inner_length: int = MAX_INNER_LENGTH,
        on_too_large: ErrorPolicy = "drop",
        allow_from: Sequence[str] = (),
        user: str | None = None,
        batch: int = BATCH,
        fast_path: bool = True,
        stop_timeout: float = STOP_TIMEOUT,
        drain_seconds: float = 0.0,
        rules: RulesSource | str | None = None,
        max_error_share: float | None = MAX_ERROR_SHARE,
        flows: bool = True,
        flow_timeout_tcp: float = TCP_TIMEOUT,
        flow_timeout_other: float = OTHER_TIMEOUT,
        max_flows: int | None = None,
        tun: bool = False,
        tun_create_hook: str | None = None,
        tun_destroy_hook: str | None = None,
        tun_idle_timeout: float | None = None,
    ) -> None:
        try:
            check_modifier(modifier)
        except TypeError as err:
            raise ApplianceError(str(err)) from None
        if workers < 1:
            raise ApplianceError("workers must be at least 1")
        if not 1 <= batch <= 64:
            raise ApplianceError("batch must be 1 (one frame per system call) to 64")
        if receive not in ("udp", "raw"):
            raise ApplianceError(f"receive must be 'udp' or 'raw', not {receive!r}")
        if receive == "raw" and workers != 1:
            raise ApplianceError(
                "receive='raw' takes one worker: each raw socket sees every packet"
            )
        for name, policy in (("on_error", on_error), ("on_too_large", on_too_large)):
            if policy not in ("drop", "forward"):
                raise ApplianceError(f"{name} must be 'drop' or 'forward', not {policy!r}")
        if not 0 < port < 65536:
            raise ApplianceError(f"port {port} is out of range")
        if max_error_share is not None and not 0 < max_error_share <= 1:
            raise ApplianceError("max_error_share must be above 0 and at most 1 (or None)")
        if not 0 <= drain_seconds < float("inf"):
            raise ApplianceError("drain_seconds must be 0 or a positive number of seconds")
        if not 0 < stop_timeout < float("inf"):
            raise ApplianceError("stop_timeout must be a positive number of seconds")
        self.flow_timeout_tcp = _seconds("flow_timeout_tcp", flow_timeout_tcp)
        self.flow_timeout_other = _seconds("flow_timeout_other", flow_timeout_other)
        if max_flows is None:
            max_flows = default_max_flows()
        if isinstance(max_flows, bool) or not isinstance(max_flows, int) or max_flows < 1:
            raise ApplianceError(
                f"max_flows must be a whole number of at least 1, not {max_flows!r}"
            )
        low, high = GWLB_TCP_TIMEOUT_RANGE
        if flows and not low <= self.flow_timeout_tcp <= high:
            log.warning(
                "--flow-timeout-tcp %g s is outside GWLB's %g-%g s: flows will end here while "
                "GWLB keeps them, or live on after GWLB let them go",
                self.flow_timeout_tcp,
                low,
                high,
            )
        self.flows = bool(flows)
        self.max_flows = max_flows
        # Tun mode (docs/tun.md): forwarded inner packets go into per-endpoint tun interfaces.
        self.tun: _tun.TunOptions | None = None
        if tun or tun_create_hook or tun_destroy_hook or tun_idle_timeout is not None:
            try:
                self.tun = _tun.options(tun, tun_create_hook, tun_destroy_hook, tun_idle_timeout,
                                        flows=self.flows, workers=workers, receive=receive,
                                        batch=batch)  # fmt: skip
            except ValueError as err:
                raise ApplianceError(str(err)) from None
        self._tun: _tun.TunBridge | None = None
        # The 68 bytes of encapsulation around the inner packet must still fit in IPv4.
        if not 0 < max_inner_length <= 0xFFFF - GWLB_ENCAP_LENGTH:
            raise ApplianceError(f"max_inner_length must be 1 to {0xFFFF - GWLB_ENCAP_LENGTH}")
        self.modifier = modifier
        self.stop_timeout = stop_timeout
        self.drain_seconds = drain_seconds
        self.max_error_share = max_error_share
        # (time, frames received, modifier errors), a sample a second over ERROR_WINDOW.
        self._error_samples: collections.deque[tuple[float, int, int]] = collections.deque()
        # The MODULE:CALLABLE the modifier came from (the daemon's --rules): SIGHUP reads it
        # again (reload()).
        self.rules = rules
        self.reloads = 0
        self.reload_failures = 0
        # Set by drain(): health checks fail ("draining") while the data path goes on.
        self._draining = threading.Event()
        self.port = port
        self.bind = bind
        self.health_host = health_host
        self.health_port = health_port
        self.workers = workers
        self.on_error = on_error
        self.on_too_large = on_too_large
        self.receive = receive
        self.max_inner_length = max_inner_length
        try:
            self.allow_from = allow_networks(allow_from)
        except ValueError as err:
            raise ApplianceError(str(err)) from None
        if user is not None:
            _user_entry(user)  # a user that does not exist stops us before any socket opens
        self.user = user
        self.batch = batch
        self.fast_path = fast_path
        self._started = 0.0
        self._threads: list[threading.Thread] = []
        self._local_workers: list[Worker] = []
        self._processes: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self._snapshots: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._health: HealthServer | None = None
        self._stopped = threading.Event()
        self._running = False
        # Every worker's sockets, kept here too: an upgrade hands them to the new copy.
        self._sockets: list[Sockets] = []
        # The command that starts a new copy of this program for upgrade() (SIGUSR2); the
        # daemon sets it to itself with its own arguments.
        self.upgrade_command: list[str] | None = None
        self.upgrades = 0
        self.upgrade_failures = 0
        # Worker processes' hand-overs during an upgrade, by worker index (see _collect).
        self._handovers: dict[int, dict[str, Any]] = {}
        self._taken: dict[int, int] = {}  # flows each worker process of a new copy took
        self._handover_ready = threading.Condition(self._lock)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open every socket and start the workers and the health endpoint."""
        self._start(None)

    def _start(self, channel: Channel | None) -> None:
        """start(); with ``channel``, as an upgrade's new copy: the sockets and flows are the
        running process's (see :meth:`upgrade`)."""
        if self._running:
            raise ApplianceError("already started")
        self._draining.clear()
        # A start after a stop begins afresh: the old workers are gone, and their counters.
        self._threads = []
        self._local_workers = []
        self._processes = []
        with self._lock:
            self._snapshots = {}
            self._handovers = {}
            self._taken = {}
        listener: socket.socket | None = None
        if channel is None:
            self._check_port_free()
            sockets = self._open_sockets()
        else:
            sockets, listener = self._adopt_sockets(channel)
        self._sockets = sockets
        self._started = time.monotonic()
        self._stopped.clear()
        try:
            if self.health_port is not None:
                try:
                    self._health = HealthServer(
                        self.health_host, self.health_port, self.report, listener
                    )
                except OSError as err:
                    raise ApplianceError(
                        f"cannot open the health endpoint {self.health_host}:{self.health_port}: "
                        f"{err.strerror or err}"
                    ) from None
            if self.tun is not None:
                self._tun = self._tun_bridge(sockets[0])
            if self.user is not None:
                _drop_privileges(self.user, keep_net_admin=self.tun is not None)
            if not self.allow_from:
                log.warning(
                    "no --allow-from: Geneve from any source is answered; a spoofed sender "
                    "could use this appliance to bounce packets"
                )
            if channel is not None:  # loaded and checked: the old process may let go
                try:
                    channel.send({"type": "ready", "pid": os.getpid()})
                except HandoverError as err:
                    raise ApplianceError(f"upgrade: {err}") from None
            if self.workers == 1:
                worker = self._make_worker(0, sockets[0], None)
                if channel is not None:
                    worker.inherit = self._receive_flows(channel)[0]
                self._local_workers.append(worker)
                thread = threading.Thread(target=worker.run, name="geneve-worker-0", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                ctx = multiprocessing.get_context("fork")
                for i, socks in enumerate(sockets):
                    parent, child = ctx.Pipe()
                    worker = self._make_worker(i, socks, None)
                    if channel is not None:
                        worker.inherit = {"wait": True}  # the flows follow through the pipe
                    proc = ctx.Process(
                        target=process_main, args=(worker, child), name=f"geneve-worker-{i}"
                    )
                    proc.start()
                    child.close()
                    self._processes.append((proc, parent))
                if channel is not None:
                    handed = self._receive_flows(channel)
                    for i, (_proc, parent) in enumerate(self._processes):
                        parent.send(handed[i])
                reader = threading.Thread(target=self._collect, name="geneve-stats", daemon=True)
                self._threads.append(reader)
                reader.start()
            if channel is not None:
                self._wait_taken_over()
            if self._health is not None:
                self._health.start()
        except BaseException:
            self._running = True
            self._stop(summary=False)  # nothing ran: the error says it all
            raise
        self._running = True
        log.info(
            "listening on %s:%d (%s receive, %d worker%s), health on %s%s",
            self.bind,
            self.port,
            self.receive,
            self.workers,
            "" if self.workers == 1 else "s",
            f"{self.health_host}:{self.health_address[1]}" if self._health else "off",
            " (sockets and flows taken over)" if channel is not None else "",
        )

    def _open_sockets(self) -> list[Sockets]:
        sockets: list[Sockets] = []
        try:
            for _ in range(self.workers):
                sockets.append(
                    Sockets(self.receive, self.bind, self.port, reuse=True, timeout=HEARTBEAT / 2)
                )
        except PermissionError as err:
            for s in sockets:
                s.close()
            raise ApplianceError(
                f"cannot open raw sockets ({err.strerror}): run as root or with CAP_NET_RAW"
            ) from None
        except OSError as err:
            for s in sockets:
                s.close()
            raise ApplianceError(f"cannot open sockets on port {self.port}: {err}") from None
        if self.receive == "udp" and self.workers > 1:
            try:
                steer([s.udp for s in sockets])
            except OSError as err:
                log.warning(
                    "cannot steer flows to workers by inner addresses (%s): the kernel's hash of "
                    "the outer headers decides, so a flow's two directions may reach two workers",
                    err.strerror or err,
                )
        return sockets

    def _socket_config(self) -> dict[str, object]:
        """What the sockets were opened for: an upgrade keeps it (a change is a restart)."""
        return {
            "workers": self.workers,
            "receive": self.receive,
            "bind": self.bind,
            "port": self.port,
            "health": None if self.health_port is None else (self.health_host, self.health_port),
        }

    def _adopt_sockets(self, channel: Channel) -> tuple[list[Sockets], socket.socket | None]:
        """An upgrade's new copy: the running process's sockets, if they are what this
        configuration would open; else the running process is told why not."""
        try:
            message, fds = channel.receive(UPGRADE_TIMEOUT)
            fds += channel.receive_fds(int(message.get("count", 0)) - len(fds))
        except HandoverError as err:
            raise ApplianceError(f"upgrade: {err}") from None
        theirs = message.get("config")
        ours = self._socket_config()
        if message["type"] != "sockets" or theirs != ours:
            for fd in fds:
                os.close(fd)
            assert isinstance(theirs, dict)
            changed = ", ".join(
                f"{name} {theirs.get(name)!r} -> {ours[name]!r}"
                for name in ours
                if theirs.get(name) != ours[name]
            )
            reason = (
                f"an upgrade keeps the workers and sockets as they are ({changed}): "
                "stop and start the daemon to change them"
            )
            with contextlib.suppress(HandoverError):
                channel.send({"type": "refused", "reason": reason})
            raise ApplianceError(f"upgrade: {reason}")
        sockets = []
        at = 0
        for count in message["layout"]:
            sockets.append(
                Sockets.adopt(self.receive, self.port, fds[at : at + count], timeout=HEARTBEAT / 2)
            )
            at += count
        listener = socket.socket(fileno=fds[at]) if at < len(fds) else None
        return sockets, listener

    def _wait_taken_over(self) -> None:
        """An upgrade's new copy: until every worker has taken its flows and reads."""
        deadline = time.monotonic() + UPGRADE_TIMEOUT
        for worker in self._local_workers:
            if not worker.taken.wait(max(0.0, deadline - time.monotonic())):
                raise ApplianceError("upgrade: the worker did not take the flows over in time")
        with self._handover_ready:
            while len(self._taken) < len(self._processes):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApplianceError("upgrade: the workers did not take the flows in time")
                self._handover_ready.wait(min(left, HEARTBEAT))
                if not all(proc.is_alive() for proc, _conn in self._processes):
                    raise ApplianceError("upgrade: a worker died taking the flows over")

    def _receive_flows(self, channel: Channel) -> list[dict[str, Any]]:
        try:
            message, _fds = channel.receive(UPGRADE_TIMEOUT)
        except HandoverError as err:
            raise ApplianceError(f"upgrade: {err}") from None
        handed: list[dict[str, Any]] = message.get("workers", [])
        if message["type"] != "flows" or len(handed) != self.workers:
            raise ApplianceError("upgrade: the running process sent no flows")
        return handed

    @property
    def max_flows_per_worker(self) -> int:
        """Each worker's share of :attr:`max_flows` (every worker keeps its own table)."""
        return max(1, self.max_flows // self.workers)

    def flow_table(self) -> FlowTable | None:
        """A new table for one worker, or None with flows off."""
        if not self.flows:
            return None
        return FlowTable(
            tcp_timeout=self.flow_timeout_tcp,
            other_timeout=self.flow_timeout_other,
            max_flows=self.max_flows_per_worker,
        )

    def _tun_bridge(self, socks: Sockets) -> _tun.TunBridge:
        """Tun mode's bridge, whose receiver and sender the (one) worker uses."""
        assert self.tun is not None
        bridge = _tun.TunBridge(
            self.tun,
            max_flows=self.max_flows_per_worker,
            tcp_timeout=self.flow_timeout_tcp,
            other_timeout=self.flow_timeout_other,
            send_fd=socks.raw_send.fileno(),
        )
        socks.tun = bridge
        return bridge

    def _make_worker(self, index: int, socks: Sockets, publish: Any) -> Worker:
        return Worker(
            index,
            socks,
            self.modifier,
            rules=self.rules,
            on_error=self.on_error,
            on_too_large=self.on_too_large,
            max_inner_length=self.max_inner_length,
            publish=publish,
            allow_from=self.allow_from,
            batch=self.batch,
            fast_path=self.fast_path,
            flows=self.flow_table(),
        )

    def _check_port_free(self) -> None:
        """Fail if anyone holds the port, even another SO_REUSEPORT user (bind would share it)."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((self.bind, self.port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ApplianceError(f"UDP port {self.port} is already in use") from None
            raise ApplianceError(f"cannot bind {self.bind}:{self.port}: {err.strerror}") from None
        finally:
            probe.close()

    def _collect(self) -> None:
        conns = {parent: proc for proc, parent in self._processes}
        while conns and not self._stopped.is_set():
            try:
                ready = multiprocessing.connection.wait(list(conns), timeout=HEARTBEAT)
            except OSError:
                return
            for conn in ready:
                assert isinstance(conn, multiprocessing.connection.Connection)
                try:
                    snap = conn.recv()
                except (EOFError, OSError):
                    conns.pop(conn, None)
                    continue
                if "handover" in snap or "taken" in snap:  # an upgrade: flows given, taken
                    with self._handover_ready:
                        if "handover" in snap:
                            self._handovers[snap["index"]] = snap["handover"]
                        else:
                            self._taken[snap["index"]] = snap["taken"]
                        self._handover_ready.notify_all()
                    continue
                snap["received_at"] = time.monotonic()
                with self._lock:
                    self._snapshots[snap["index"]] = snap

    def stop(self, timeout: float | None = None) -> None:
        """Stop the workers and the health endpoint.

        Each worker finishes the batch in hand, ends its live flows (reason "shutdown") and
        runs the modifier's ``on_stop()``. It gets ``timeout`` seconds (default
        :attr:`stop_timeout`, 10) plus :data:`STOP_PER_FLOW` (1 ms) for each flow it had live
        when the stop began (as its last published counters say). A worker process still
        running past its allowance is killed and a worker thread is left behind (it dies with
        the daemon); either way the ends of its remaining flows and its ``on_stop()`` are
        lost, and one line in the log says for how many flows at most.
        """
        self._stop(self.stop_timeout if timeout is None else timeout)

    def _stop(self, timeout: float = STOP_TIMEOUT, summary: bool = True) -> None:
        if not self._running:
            return
        self._running = False
        began = time.monotonic()
        live = {
            int(s["index"]): int(s["stats"].get("flows_active", 0)) for s in self._worker_states()
        }

        def left(index: int) -> float:
            """Seconds left of worker ``index``'s allowance."""
            allowance = timeout + STOP_PER_FLOW * live.get(index, 0)
            return max(0.0, began + allowance - time.monotonic())

        for worker in self._local_workers:
            worker.stop.set()
        for proc, _conn in self._processes:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for worker in self._local_workers:
            for thread in self._threads:
                if thread.name == f"geneve-worker-{worker.index}":
                    thread.join(left(worker.index))
                    if thread.is_alive():
                        self._stop_overrun(worker.index, "left behind", began, live)
        for index, (proc, _conn) in enumerate(self._processes):
            proc.join(left(index))
            if proc.is_alive():
                proc.kill()
                proc.join(0.2)
                self._stop_overrun(index, "killed", began, live)
        # Let the collector read the final snapshots before it goes.
        time.sleep(0.05)
        self._stopped.set()
        for thread in self._threads:
            if not thread.name.startswith("geneve-worker"):
                thread.join(0.5)
        if self._tun is not None:  # the worker is gone: the interfaces go, destroy hooks run
            self._tun.close()
            self._tun = None
        for socks in self._sockets:
            socks.close()
        if self._health is not None:
            self._health.stop()
        if summary:
            log.info("stopped: %s", self._summary_line())

    @staticmethod
    def _stop_overrun(index: int, what: str, began: float, live: dict[int, int]) -> None:
        log.error(
            "worker %d had not stopped after %.1f s, %s: the ends of up to %d flows were lost "
            "(no on_flow_end for them, no on_stop)",
            index,
            time.monotonic() - began,
            what,
            live.get(index, 0),
        )

    # -- an upgrade: a new copy of the program takes the sockets and flows (SIGUSR2) ----------

    def upgrade(
        self,
        command: Sequence[str] | None = None,
        timeout: float = UPGRADE_TIMEOUT,
        cancel: threading.Event | None = None,
    ) -> bool:
        """Hand the sockets and flows to a new copy of the program; whether it took them.

        ``command`` (default :attr:`upgrade_command`; the daemon's is itself with its own
        arguments) starts the new copy, which must call :meth:`run` with the same workers
        and sockets options. It gets the very sockets open here (``SCM_RIGHTS``), loads its
        code and rules and says it is ready; only then does every worker here finish its
        batch, stop reading and hand its flows over (no ``on_flow_end``: they live on). The
        new copy's workers take them and read the sockets; it tells systemd its PID
        (``MAINPID=``, ``READY=1``) and says so here; then the workers here retire (the
        modifier's ``on_handover()``, then ``on_stop()``) and this appliance is stopped.

        Frames that come meanwhile wait in the sockets' queues: each is answered once, by one
        process or the other. A new copy that fails, refuses (other workers or sockets) or
        does not answer within ``timeout`` seconds per step changes nothing here (one line
        logged, counted in ``upgrade_failures``); if the workers had paused, they go on.
        ``cancel`` set before the workers pause calls the upgrade off (a stop signal came);
        set later, the new copy is sent SIGTERM once it runs (the stop goes on there).
        """
        if not self._running:
            raise ApplianceError("upgrade: the appliance is not running")
        if self.tun is not None:
            self.upgrade_failures += 1
            log.error(
                "upgrade: not in tun mode (the interfaces and the headers kept for the way back "
                "stay with this process): restart to upgrade"
            )
            return False
        argv = list(command if command is not None else self.upgrade_command or [])
        if not argv:
            raise ApplianceError("upgrade: no command to start the new copy with")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, **{HANDOVER_ENV: str(theirs.fileno())})
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), env=env)
        except OSError as err:
            ours.close()
            self.upgrade_failures += 1
            log.error("upgrade failed, this process goes on: cannot start %s: %s", argv[0], err)
            return False
        finally:
            theirs.close()
        channel = Channel(ours, timeout)
        paused = False
        began = 0.0
        try:
            fds = [fd for socks in self._sockets for fd in socks.fds()]
            if self._health is not None:
                fds.append(self._health.listener.fileno())
            channel.send(
                {
                    "type": "sockets",
                    "config": self._socket_config(),
                    "layout": [len(socks.fds()) for socks in self._sockets],
                    "count": len(fds),
                }
            )
            channel.send_fds(fds)
            message, _ = channel.receive()
            if message["type"] != "ready":
                raise HandoverError(str(message.get("reason", "the new copy is not ready")))
            if cancel is not None and cancel.is_set():
                raise HandoverError("called off")
            paused = True
            began = time.monotonic()
            handed = self._pause_workers(timeout)
            channel.send({"type": "flows", "workers": handed})
            message, _ = channel.receive()
            if message["type"] != "running":
                raise HandoverError("the new copy did not start")
        except HandoverError as err:
            if cancel is not None and cancel.is_set() and not paused:
                log.info("upgrade called off: a stop signal came first")
            else:
                self.upgrade_failures += 1
                log.error("upgrade failed, this process goes on: %s", err)
            if paused:
                self._decide_workers(RESUME)
            channel.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return False
        channel.close()
        flows = sum(int(h.get("count", 0)) for h in handed)
        log.info(
            "upgrade: pid %d took over the sockets and %d flows (%.0f ms unread); retiring",
            proc.pid,
            flows,
            1000 * (time.monotonic() - began),
        )
        self.upgrades += 1
        self._retire()
        if cancel is not None and cancel.is_set():  # a stop came meanwhile: it goes on there
            log.info("a stop signal came during the upgrade: passing it on to pid %d", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        return True

    def _pause_workers(self, timeout: float) -> list[dict[str, Any]]:
        """Every worker: finish the batch, stop reading, hand the flows over; theirs in order."""
        deadline = time.monotonic() + timeout
        for worker in self._local_workers:
            worker.handed = None
            worker.pause = True
        with self._handover_ready:
            self._handovers = {}
        for proc, _conn in self._processes:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGUSR1)
        handed: list[dict[str, Any]] = []
        for worker in self._local_workers:
            while worker.handed is None:
                if time.monotonic() >= deadline or worker.failed:
                    self._decide_workers(RESUME)
                    raise HandoverError(f"worker {worker.index} did not pause in time")
                time.sleep(0.001)
            handed.append(worker.handed)
        if self._processes:
            with self._handover_ready:
                while len(self._handovers) < len(self._processes):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._handover_ready.wait(left)
                got = dict(self._handovers)
            if len(got) < len(self._processes):
                self._decide_workers(RESUME)
                raise HandoverError("the worker processes did not pause in time")
            handed += [got[i] for i in range(len(self._processes))]
        return handed

    def _decide_workers(self, decision: str) -> None:
        for worker in self._local_workers:
            worker.decide(decision)
        for proc, conn in self._processes:
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    conn.send(decision)

    def _retire(self) -> None:
        """After an upgrade: the workers retire (their flows live on elsewhere) and this
        appliance stops, without ending a flow."""
        if self._health is not None:  # the new copy answers on the same listener now
            self._health.stop()
            self._health = None
        self._decide_workers(RETIRE)
        for thread in self._threads:
            if thread.name.startswith("geneve-worker"):
                thread.join(self.stop_timeout)
        for proc, _conn in self._processes:
            proc.join(self.stop_timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(0.2)
        self._running = False
        self._stopped.set()
        for thread in self._threads:
            if not thread.name.startswith("geneve-worker"):
                thread.join(0.5)
        for socks in self._sockets:
            socks.close()
        log.info("handed over: %s", self._summary_line())

    def set_modifier(self, modifier: Modifier | str) -> bool:
        """Run another modifier from now on: a callable (one worker), or ``MODULE:CALLABLE``,
        which every worker, thread or process, imports (:meth:`reload`); whether it was taken.
        Before :meth:`start`, it only replaces what the workers will run."""
        if isinstance(modifier, str):
            try:
                loaded = load_modifier(modifier)
            except RulesError as err:
                raise ApplianceError(str(err)) from None
            self.rules = modifier
            if not self._running:
                self.modifier = loaded
                return True
            return self.reload()
        if not callable(modifier):
            raise ApplianceError("the modifier must be callable")
        self.rules = None
        if not self._running:
            self.modifier = modifier
            return True
        return self.reload(modifier)

    def reload(self, modifier: Modifier | None = None) -> bool:
        """Run new rules without a restart; whether they were taken.

        Without ``modifier``, the ``rules`` this appliance was made with (``MODULE:CALLABLE``)
        are imported again here and checked; if that fails, the old rules stay, one line is
        logged and ``reload_failures`` counts it. Then every worker takes the new rules
        between two batches: a thread gets the modifier, a worker process imports the same
        ``rules`` itself (on SIGHUP). Flows, their state and verdicts stay; the old
        modifier's ``on_stop()`` and the new one's ``on_start()`` run in each worker. An
        embedded appliance may pass ``modifier`` instead (threads only: one worker).
        """
        if modifier is None:
            if self.rules is None:
                log.warning("reload: no rules to read again (made without rules=MODULE:CALLABLE)")
                return False
            try:
                modifier = load_rules(self.rules, reload=True)
            except RulesError as err:
                self.reload_failures += 1
                log.error("reload failed, the old rules stay: %s", err)
                return False
        elif self._processes:
            raise ApplianceError(
                "reload(modifier) needs one worker: worker processes import their rules again"
            )
        if not callable(modifier):
            self.reload_failures += 1
            log.error("reload failed, the old rules stay: the modifier is not callable")
            return False
        self.modifier = modifier
        for worker in self._local_workers:
            worker.swap = modifier
        for proc, _conn in self._processes:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)
        self.reloads += 1
        log.info("rules reloaded%s", f" from {self.rules}" if self.rules else "")
        return True

    def drain(self) -> None:
        """Fail health checks from now on ("draining", HTTP 503) while frames are still
        forwarded: GWLB stops sending new flows to a target that fails its checks and keeps
        the existing ones until its deregistration delay. :meth:`stop` afterwards."""
        if not self._draining.is_set():
            self._draining.set()
            log.info("draining: health checks answer 503 from now on, frames are still answered")

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT (call from the main thread); SIGHUP
        reloads the rules (:meth:`reload`).

        With ``drain_seconds``, the first SIGTERM drains (:meth:`drain`) for that long before
        stopping; a second signal during the drain stops at once. Stopping ends every live
        flow and runs ``on_stop()`` either way.
        """
        handover = os.environ.pop(HANDOVER_ENV, None)
        channel: Channel | None = None
        if handover is not None:  # started by upgrade(): take the running process's place
            try:
                channel = Channel.from_fd(int(handover), UPGRADE_TIMEOUT)
            except (ValueError, OSError) as err:
                raise ApplianceError(f"{HANDOVER_ENV}={handover!r}: {err}") from None
        stop = threading.Event()
        signals: list[int] = []
        reloads: list[int] = []
        upgrades: list[int] = []
        handed_over = False

        stopping = threading.Event()  # a stop signal: an upgrade under way is called off

        def on_signal(signum: int, frame: object) -> None:
            signals.append(signum)
            stopping.set()
            if not stop.is_set():
                log.info("%s received, stopping", signal.Signals(signum).name)
            stop.set()

        def on_hangup(signum: int, frame: object) -> None:
            reloads.append(signum)  # done by the main loop, not in the handler
            stop.set()

        def on_upgrade(signum: int, frame: object) -> None:
            upgrades.append(signum)
            stop.set()

        handlers = {
            signal.SIGTERM: on_signal,
            signal.SIGINT: on_signal,
            signal.SIGHUP: on_hangup,
            signal.SIGUSR2: on_upgrade,
        }
        # Handlers first: a signal that comes as soon as READY=1 is out must find them.
        previous = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            try:
                self._start(channel)
            finally:
                if channel is not None and not self._running:
                    channel.close()
            notify("READY=1", f"STATUS=serving on port {self.port}", f"MAINPID={os.getpid()}")
            if channel is not None:
                with contextlib.suppress(HandoverError):
                    channel.send({"type": "running", "pid": os.getpid()})
                channel.close()
            while True:
                while not stop.wait(0.5):
                    pass
                if signals:
                    break
                stop.clear()
                if upgrades:
                    upgrades.clear()
                    log.info("SIGUSR2 received, upgrading: starting a new copy")
                    notify("STATUS=upgrading: starting a new copy")
                    if self.upgrade_command is None:
                        log.error("upgrade: no command to start the new copy with")
                    elif self.upgrade(cancel=stopping):
                        handed_over = True
                        return
                    if signals:  # a stop came during the upgrade, which was called off
                        break
                    notify("STATUS=upgrade failed, serving on")
                while reloads:
                    reloads.pop()
                    log.info("SIGHUP received, reloading the rules")
                    notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    taken = self.reload()
                    notify("READY=1", "STATUS=rules reloaded" if taken else "STATUS=reload failed")
            if self.drain_seconds > 0 and signals[:1] == [signal.SIGTERM]:
                notify(f"STATUS=draining for {self.drain_seconds:g} s")
                self.drain()
                deadline = time.monotonic() + self.drain_seconds
                while len(signals) < 2 and time.monotonic() < deadline:
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                if len(signals) >= 2:
                    log.info("a second signal: the drain ends early")
        finally:
            try:
                # Unless it never started, or the new copy is the service now (nothing to say).
                if self._running and not handed_over:
                    notify("STOPPING=1", "STATUS=stopping: ending flows")
                    self.stop()  # a second signal meanwhile changes nothing
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def __enter__(self) -> Appliance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def health_address(self) -> tuple[str, int]:
        if self._health is None:
            raise ApplianceError("the health endpoint is off")
        return self._health.address

    def _worker_states(self) -> Iterator[dict[str, Any]]:
        now = time.monotonic()
        for worker in self._local_workers:
            snap = worker.snapshot()
            alive = any(
                t.is_alive() for t in self._threads if t.name == f"geneve-worker-{worker.index}"
            )
            snap["alive"] = alive and worker.failed is None
            snap["stale"] = now - worker.heartbeat > STALE_AFTER and not worker.taking_over
            yield snap
        with self._lock:
            snaps = dict(self._snapshots)
        for i, (proc, _conn) in enumerate(self._processes):
            snap = snaps.get(
                i,
                {
                    "index": i,
                    "stats": Stats().as_dict(),
                    "send_errors": 0,
                    "own_replies": 0,
                    "failed": None,
                    "received_at": self._started,
                },
            )
            snap = dict(snap)
            snap["alive"] = proc.is_alive() and not snap.get("failed")
            snap["stale"] = now - snap["received_at"] > STALE_AFTER and not snap.get(
                "taking_over"
            )
            yield snap

    def stats(self) -> dict[str, Any]:
        """Counters summed over the workers, plus send errors and looped-back replies ignored."""
        total = Stats()
        send_errors = own = not_allowed = 0
        for snap in self._worker_states():
            part = Stats.from_dict(snap["stats"])
            total.merge(part)
            send_errors += snap["send_errors"]
            own += snap["own_replies"]
            not_allowed += snap.get("not_allowed", 0)
        result = total.as_dict()
        result["not_allowed"] = not_allowed
        result["send_errors"] = send_errors
        result["own_replies_ignored"] = own
        return result

    def problems(self) -> list[str]:
        """Why the data path is not working, or an empty list when it is."""
        if not self._running:
            return ["stopped"]
        found = []
        for snap in self._worker_states():
            if snap.get("failed"):
                found.append(f"worker {snap['index']} failed: {snap['failed']}")
            elif not snap["alive"]:
                found.append(f"worker {snap['index']} is not running")
            elif snap["stale"]:
                found.append(f"worker {snap['index']} is not making progress")
        erring = self._error_share()
        if erring:
            found.append(erring)
        return found

    def _error_share(self) -> str | None:
        """A problem when the modifier raised on more than ``max_error_share`` of the frames
        received over the last :data:`ERROR_WINDOW` seconds (at least 20 frames)."""
        if self.max_error_share is None:
            return None
        counters = self.stats()
        now = time.monotonic()
        samples = self._error_samples
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, counters["received"], counters["modifier_errors"]))
        while len(samples) > 1 and now - samples[1][0] >= ERROR_WINDOW:
            samples.popleft()
        _then, received, errors = samples[0]
        frames = counters["received"] - received
        raised = counters["modifier_errors"] - errors
        if frames >= 20 and raised > self.max_error_share * frames:
            return (
                f"the modifier raised on {100 * raised / frames:.0f}% of the frames "
                f"of the last {now - _then:.0f} s"
            )
        return None

    def report(self) -> HealthReport:
        problems = self.problems()
        if self._draining.is_set():
            problems = ["draining", *problems]
        counters = self.stats()
        body: dict[str, object] = {
            "status": "ok" if not problems else "draining" if self.draining else "unhealthy",
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "workers": self.workers,
            "counters": counters,
            # The bound as the workers hold it: their shares together.
            "flows": _flows_report(counters, self.flows, self.max_flows_per_worker * self.workers),
        }
        states = list(self._worker_states())
        worker_failures = sum(snap.get("reload_failures", 0) for snap in states)
        rule_counts: dict[str, int] = {}
        for snap in states:
            for name, value in snap.get("rule_counters", {}).items():
                rule_counts[name] = rule_counts.get(name, 0) + value
        body["rule_counters"] = rule_counts
        body["reloads"] = {
            "done": self.reloads,
            "failed": self.reload_failures + worker_failures,
        }
        body["upgrades"] = {
            "failed": self.upgrade_failures,
            "flows_taken_over": sum(snap.get("taken_over", 0) for snap in states),
        }
        metrics = _prometheus(counters, not problems, body)
        if self._tun is not None:
            body["tun"] = tun = self._tun.report()
            metrics += _tun.prometheus(tun)
        if problems:
            body["problems"] = problems
        return HealthReport(not problems, body, metrics)

    def _summary_line(self) -> str:
        s = self.stats()
        return (
            f"received {s['received']}, forwarded {s['forwarded']}, modified {s['modified']}, "
            f"rejected {s['rejected']}, dropped {s['dropped']}, malformed {s['malformed']}, "
            f"modifier errors {s['modifier_errors']}, send errors {s['send_errors']}"
        )


def _flows_report(counters: dict[str, Any], tracking: bool, max_flows: int) -> dict[str, object]:
    """The health JSON's "flows": tracking on or off, the bound, and the flow counters."""
    return {
        "tracking": tracking,
        "max_flows": max_flows if tracking else 0,
        "active": counters["flows_active"],
        "created": counters["flows_created"],
        "ended": dict.fromkeys(END_REASONS, 0) | counters["flows_ended"],
        "verdict_packets": counters["flow_verdict_packets"],
        "early_dropped": counters["flows_early_dropped"],
        "rejects": counters["rejected"],
    }


def _prometheus(counters: dict[str, Any], healthy: bool, body: dict[str, object]) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    def total(key: str) -> list[tuple[str, float]]:
        return [("", counters[key])]

    metric("geneve_up", "gauge", "1 while the data path works, else 0.", [("", int(healthy))])
    metric("geneve_uptime_seconds", "gauge", "Seconds since the appliance started.",
           [("", float(body["uptime_seconds"]))])  # type: ignore[arg-type]  # fmt: skip
    metric("geneve_received_total", "counter", "Frames received on the Geneve port.",
           total("received"))  # fmt: skip
    metric("geneve_forwarded_total", "counter", "Frames sent back to GWLB.", total("forwarded"))
    metric("geneve_modified_total", "counter", "Forwarded frames the modifier changed.",
           total("modified"))  # fmt: skip
    metric("geneve_rejects_total", "counter",
           "Frames refused with a TCP RST or ICMP error sent back (REJECT).",
           total("rejected"))  # fmt: skip
    metric("geneve_seq_adjusted_total", "counter",
           "TCP segments Python shifted for a rewrite that changed a length (docs/codec.md).",
           [("", counters.get("seq_adjusted", 0))])  # fmt: skip
    metric("geneve_seq_resets_total", "counter",
           "Connections reset both ways because their rewrite state was lost.",
           [("", counters.get("seq_resets", 0))])  # fmt: skip
    flows: dict[str, Any] = body["flows"]  # type: ignore[assignment]
    metric("geneve_flows_enabled", "gauge", "1 when flows are tracked, 0 with --no-flows.",
           [("", int(flows["tracking"]))])  # fmt: skip
    metric("geneve_flows_max", "gauge", "Live flows allowed, the workers' shares together.",
           [("", flows["max_flows"])])  # fmt: skip
    metric("geneve_flows_active", "gauge", "Flows live now.", [("", flows["active"])])
    metric("geneve_flows_created_total", "counter", "Flows started.", [("", flows["created"])])
    metric("geneve_flows_ended_total", "counter", "Flows ended, by reason.",
           [(f'{{reason="{k}"}}', v) for k, v in flows["ended"].items()])  # fmt: skip
    metric("geneve_flows_verdict_packets_total", "counter",
           "Frames decided by their flow's verdict, without the modifier.",
           [("", flows["verdict_packets"])])  # fmt: skip
    metric("geneve_flows_early_dropped_total", "counter",
           "Flows that never saw a reply, ended to make room (the table was full).",
           [("", flows["early_dropped"])])  # fmt: skip
    metric("geneve_flows_rejects_total", "counter",
           "REJECTs sent (a TCP RST or ICMP error), by the modifier or a flow verdict.",
           [("", flows["rejects"])])  # fmt: skip
    metric("geneve_dropped_total", "counter", "Frames dropped, by reason.",
           [(f'{{reason="{k}"}}', v) for k, v in sorted(counters["drops"].items())])  # fmt: skip
    metric("geneve_malformed_total", "counter", "Malformed frames dropped, by reason.",
           [(f'{{reason="{k}"}}', v)
            for k, v in sorted(counters["malformed_reasons"].items())])  # fmt: skip
    metric("geneve_skipped_total", "counter", "Datagrams that were not Geneve.", total("skipped"))
    metric("geneve_modifier_errors_total", "counter", "Exceptions raised by the modifier.",
           total("modifier_errors"))  # fmt: skip
    metric("geneve_not_allowed_total", "counter", "Geneve from sources outside --allow-from.",
           total("not_allowed"))  # fmt: skip
    rule_counts: dict[str, int] = body.get("rule_counters", {})  # type: ignore[assignment]
    metric("geneve_rule_counter_total", "counter",
           "Counters of the modifier's own (geneve.count), by name.",
           [(f'{{name="{k}"}}', v) for k, v in sorted(rule_counts.items())])  # fmt: skip
    reloads: dict[str, int] = body.get("reloads", {"done": 0, "failed": 0})  # type: ignore[assignment]
    metric("geneve_reloads_total", "counter", "Rules reloaded (SIGHUP).",
           [("", reloads["done"])])  # fmt: skip
    metric("geneve_reload_failures_total", "counter",
           "Reloads that failed: the old rules stayed.", [("", reloads["failed"])])  # fmt: skip
    upgrades: dict[str, int] = body.get("upgrades", {"failed": 0, "flows_taken_over": 0})  # type: ignore[assignment]
    metric("geneve_upgrade_failures_total", "counter",
           "Upgrades (SIGUSR2) whose new copy failed: this process went on.",
           [("", upgrades["failed"])])  # fmt: skip
    metric("geneve_flows_taken_over", "gauge",
           "Flows this process took over from the one it upgraded.",
           [("", upgrades["flows_taken_over"])])  # fmt: skip
    metric("geneve_send_errors_total", "counter", "Replies the kernel refused to send.",
           total("send_errors"))  # fmt: skip
    return "\n".join(out) + "\n"
