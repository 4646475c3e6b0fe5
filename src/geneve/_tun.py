"""The tun bridge: GWLB traffic through the Linux network stack (docs/tun.md).

Per GWLB endpoint (the endpoint id option of every frame), a pair of tun interfaces made on the
first frame from it, named as AWS's tunnel handler (gwlbtun) names them: ``gwi-<id>``, where
the inner packets the pipeline forwarded come out to the kernel, and ``gwo-<id>``, whose
outgoing packets go back to GWLB (so do packets routed out of ``gwi-<id>``, as in gwlbtun).
``<id>`` is the 64-bit endpoint id in gwlbtun's base 60, which keeps the name within 15 bytes.

Split of the work: C (``_tun.c``) moves the packets both ways and keeps the per-flow headers;
this module makes and deletes the interfaces, runs the hook commands (a thread of their own: a
slow hook never stalls a packet), times endpoints out, and reports. One worker serves a tun
appliance (docs/tun.md says why) and does both ways in its own thread: its sender writes what
the pipeline forwarded into the tuns, its receiver's wait also reads the tuns, like a C bridge
in one thread.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import logging
import os
import pwd
import queue
import shlex
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._transport import BUFFER_SIZE, BatchSender, Slots, UdpBatchReceiver

try:
    from . import _batch_cffi, _tun_cffi
except ImportError:  # built without a compiler: no tun mode
    _batch_cffi = _tun_cffi = None  # type: ignore[assignment]

__all__ = [
    "BASE60",
    "TUN_MTU",
    "TunBridge",
    "TunOptions",
    "available",
    "drop_privileges_keeping_net_admin",
    "endpoint_hex",
    "interface_names",
    "options",
    "prometheus",
    "to_base60",
]

log = logging.getLogger("geneve.appliance")

#: The MTU of both interfaces: GWLB's largest inner packet.
TUN_MTU = 8500
#: Packets the kernel queues on a tun for the way back (its default, 500, overflows in bursts
#: of a batch from several flows at once: benchmarks/tun.py saw drops at 90k frames/s).
TUN_TXQUEUE = 4096
#: gwlbtun's digits for the endpoint id in interface names.
BASE60 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Seconds between two looks for idle endpoints (--tun-idle-timeout).
EXPIRE_EVERY = 1.0
#: Seconds a hook may run before it is killed (a hook that hangs must not pile up the rest).
HOOK_TIMEOUT = 60.0
#: Seconds the hooks still queued at a stop get, all together, before they are skipped.
HOOK_STOP_TIMEOUT = 10.0
#: New endpoints taken from one batch (the frames of more wait for the next of theirs).
UNKNOWN_MAX = 16
#: Frames held, all endpoints together, while their endpoints' create hooks run; more are
#: dropped (counted).
HOLD_MAX = 1024

# linux/if_tun.h and linux/sockios.h
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFMTU, _SIOCSIFTXQLEN = 0x8913, 0x8914, 0x8922, 0x8943
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags
_IFREQ_INT = struct.Struct("16si20x")  # name, then ifr_mtu or ifr_qlen
# linux/capability.h and linux/prctl.h
_CAP_NET_ADMIN = 12
_PR_SET_KEEPCAPS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 8, 47, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def available() -> str | None:
    """Why tun mode cannot run here, or None when it can."""
    if _tun_cffi is None:
        return "the C module geneve._tun_cffi is not built (no compiler at install time?)"
    if _batch_cffi is None:  # the batch receiver and sender the bridge wraps
        return "the C module geneve._batch_cffi is not built (no compiler at install time?)"
    return None


def to_base60(value: int) -> str:
    """``value`` in gwlbtun's base 60 (most significant digit first; 0 is "0")."""
    digits = []
    while value >= 60:
        value, digit = divmod(value, 60)
        digits.append(BASE60[digit])
    digits.append(BASE60[value])
    return "".join(reversed(digits))


def interface_names(endpoint: int) -> tuple[str, str]:
    """The ingress and egress interface names of an endpoint id, as gwlbtun makes them."""
    tag = to_base60(endpoint)
    return f"gwi-{tag}", f"gwo-{tag}"


def endpoint_hex(endpoint: int) -> str:
    """The endpoint id as gwlbtun passes it to its hooks: hex, zero-padded to 17 digits."""
    return f"{endpoint:017x}"


def open_tun(name: str, mtu: int = TUN_MTU) -> int:
    """A new tun interface ``name`` (layer 3, no packet info), up with ``mtu`` and a queue of
    :data:`TUN_TXQUEUE` packets; its descriptor.

    The interface lives as long as the descriptor: closing it deletes the interface.
    """
    raw = name.encode()
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _IFREQ_FLAGS.pack(raw, _IFF_TUN | _IFF_NO_PI))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, _SIOCSIFMTU, _IFREQ_INT.pack(raw, mtu))
            fcntl.ioctl(s, _SIOCSIFTXQLEN, _IFREQ_INT.pack(raw, TUN_TXQUEUE))
            got = fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw, 0))
            flags = _IFREQ_FLAGS.unpack(got)[1] | _IFF_UP | _IFF_RUNNING
            fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ_FLAGS.pack(raw, flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def drop_privileges_keeping_net_admin(user: str) -> None:
    """Become ``user`` for good, keeping ``CAP_NET_ADMIN`` (and passing it on to hooks).

    Tun mode makes interfaces after the drop, on the first frame of each endpoint, and its
    hooks change routes, sysctls and firewall rules: all of that needs ``CAP_NET_ADMIN`` and
    nothing more. It stays in this thread's permitted and effective sets (threads started
    afterwards inherit them) and in the ambient set, which survives a hook's ``execve``.
    """
    entry = pwd.getpwnam(user)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    mask = 1 << _CAP_NET_ADMIN
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, mask, 0, 0, 0)  # effective, permitted, inheritable
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset(CAP_NET_ADMIN)")
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_NET_ADMIN, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN)")
    log.info("running as %s (uid %d) from now on, with CAP_NET_ADMIN", user, entry.pw_uid)


@dataclass(frozen=True)
class TunOptions:
    """What ``Appliance(tun=True)`` was given: the hooks (shell commands, gwlbtun's
    arguments appended) and the idle time after which an endpoint's interfaces go (None:
    never)."""

    create_hook: str | None = None
    destroy_hook: str | None = None
    idle_timeout: float | None = None


def options(
    tun: bool,
    create_hook: str | None,
    destroy_hook: str | None,
    idle_timeout: float | None,
    *,
    flows: bool,
    workers: int,
    receive: str,
    batch: int,
) -> TunOptions:
    """``Appliance``'s tun options checked against the rest; ValueError in one line."""
    if not tun:
        raise ValueError("the tun hooks and idle timeout need tun=True (--tun)")
    why = available()
    if why is not None:
        raise ValueError(f"tun mode: {why}")
    if not flows:
        raise ValueError(
            "tun=True (--tun) needs flows (no --no-flows): the way back looks each packet's flow up"
        )
    if workers != 1:
        raise ValueError(
            "tun=True (--tun) takes one worker (--workers 1): the way back must find every "
            "flow in one table (docs/tun.md)"
        )
    if receive != "udp" or batch < 2:
        raise ValueError("tun=True (--tun) needs --receive udp and --batch 2 or more")
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, int | float)
        or not 0 < idle_timeout < float("inf")
    ):
        raise ValueError(
            f"tun_idle_timeout must be a positive number of seconds, not {idle_timeout!r}"
        )
    return TunOptions(
        create_hook or None,
        destroy_hook or None,
        None if idle_timeout is None else float(idle_timeout),
    )


def prometheus(report: dict[str, Any]) -> str:
    """/metrics lines of a :meth:`TunBridge.report`."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    endpoints = report["endpoints"]

    def each(key: str) -> list[tuple[str, Any]]:
        return [(f'{{endpoint="{e["endpoint"]}"}}', e[key]) for e in endpoints]

    metric("geneve_tun_endpoints", "gauge", "GWLB endpoints with tun interfaces now.",
           [("", len(endpoints))])  # fmt: skip
    metric("geneve_tun_packets_in_total", "counter",
           "Inner packets written into an endpoint's ingress tun.", each("packets_in"))  # fmt: skip
    metric("geneve_tun_packets_out_total", "counter",
           "Packets read from an endpoint's tuns and sent back to GWLB.",
           each("packets_out"))  # fmt: skip
    metric("geneve_tun_misses_total", "counter",
           "Packets read from an endpoint's tuns for no known flow: dropped.",
           each("misses"))  # fmt: skip
    metric("geneve_tun_write_errors_total", "counter",
           "Inner packets the kernel refused at the ingress tun.",
           each("write_errors"))  # fmt: skip
    metric("geneve_tun_send_errors_total", "counter",
           "Packets of the way back the kernel refused to send.", each("send_errors"))  # fmt: skip
    metric("geneve_tun_headers", "gauge", "Flows whose Geneve header is kept for the way back.",
           [("", report["headers"])])  # fmt: skip
    metric("geneve_tun_headers_max", "gauge", "Flows whose header can be kept at most.",
           [("", report["max_headers"])])  # fmt: skip
    metric("geneve_tun_headers_evicted_total", "counter",
           "Kept headers of live flows pushed out by new flows (the bound).",
           [("", report["evicted"])])  # fmt: skip
    metric("geneve_tun_no_endpoint_total", "counter",
           "Forwarded frames without GWLB's endpoint id option: dropped.",
           [("", report["no_endpoint"])])  # fmt: skip
    metric("geneve_tun_create_failures_total", "counter",
           "Attempts to make an endpoint's interfaces that failed (its frames are dropped).",
           [("", report["create_failures"])])  # fmt: skip
    metric("geneve_tun_hook_failures_total", "counter",
           "Hook commands that failed (exit status, timeout).",
           [("", report["hook_failures"])])  # fmt: skip
    return "\n".join(out) + "\n"


@dataclass
class Endpoint:
    id: int
    ingress: str
    egress: str
    created: float


class Hooks:
    """Runs hook commands one after another in a thread of their own, in the order asked."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[list[str], Callable[[], None] | None] | None]
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="geneve-tun-hooks", daemon=True)
        self._thread.start()
        self.failures = 0
        self.done = 0

    def call(self, command: str, *args: str, then: Callable[[], None] | None = None) -> None:
        """Run ``command`` with ``args``, then call ``then`` (however the command ended)."""
        # As gwlbtun does: the command line, then the arguments, through a shell.
        argv = ["/bin/sh", "-c", " ".join([command, *map(shlex.quote, args)])]
        self._queue.put((argv, then))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            argv, then = item
            try:
                self._one(argv)
            finally:
                if then is not None:
                    then()

    def _one(self, argv: list[str]) -> None:
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=HOOK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            self.failures += 1
            log.error("tun hook %r failed: %s", argv[-1], err)
            return
        self.done += 1
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode:
            self.failures += 1
            log.error("tun hook %r exited %d: %s", argv[-1], done.returncode, output[-500:])
        else:
            log.info("tun hook %r done in %.2f s", argv[-1], time.monotonic() - started)
            if output:
                log.debug("tun hook output: %s", output[-2000:])

    def close(self, timeout: float = HOOK_STOP_TIMEOUT) -> None:
        """Run what is queued (at most ``timeout`` seconds more), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("tun hooks still running after %.0f s at the stop: left behind", timeout)


class TunBridge:
    """The endpoints' interfaces, the C header store, the way back's thread and the hooks."""

    def __init__(
        self,
        options: TunOptions,
        *,
        max_flows: int,
        tcp_timeout: float,
        other_timeout: float,
        send_fd: int,
    ) -> None:
        assert _tun_cffi is not None, available()
        self.options = options
        self.ffi, self.lib = _tun_cffi.ffi, _tun_cffi.lib
        table = self.lib.geneve_tun_new(
            max_flows, tcp_timeout, other_timeout, int.from_bytes(os.urandom(8), "little")
        )
        if table == self.ffi.NULL:
            raise MemoryError("cannot allocate the tun bridge's header store")
        self.table = table
        self.send_fd = send_fd
        self.endpoints: dict[int, Endpoint] = {}
        self.create_failures = 0
        self._failed_ids: set[int] = set()  # logged once each
        # self.endpoints and the C side's life: the worker, the hook thread, the health endpoint.
        self._lock = threading.Lock()
        self._next_expiry = time.monotonic() + EXPIRE_EVERY
        # Endpoints whose create hook runs; their frames, held meanwhile (oldest first); the
        # endpoints whose hook is done (the hook thread appends, the worker takes).
        self.pending: set[int] = set()
        self._held: list[bytes] = []
        self.held_dropped = 0
        self._hooked: collections.deque[int] = collections.deque()
        self._replay = self.ffi.new("uint8_t[]", BUFFER_SIZE)
        self._replay_slots = self.ffi.new("uint8_t *[]", [self._replay])
        self._replay_out = self.ffi.new("int32_t[]", 1)
        self.hooks = Hooks()
        self._closed = False
        self._freed = False

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the way back, delete every endpoint's interfaces (destroy hooks run), free C."""
        if self._closed:
            return
        self._closed = True
        for endpoint in list(self.endpoints.values()):
            self._destroy(endpoint, "stop")
        self.hooks.close()
        with self._lock:  # a hook left running may still call _ready
            self._freed = True
            self.lib.geneve_tun_free(self.table)

    def sender(self, sock: socket.socket, slots: Slots) -> TunSender:
        """The worker's sender in tun mode (see :class:`TunSender`)."""
        return TunSender(self, sock, slots)

    def receiver(self, sock: socket.socket, port: int, size: int) -> TunReceiver:
        """The worker's receiver in tun mode (see :class:`TunReceiver`)."""
        return TunReceiver(self, sock, port, size)

    # -- endpoints -------------------------------------------------------------------------

    def create(self, endpoint_id: int) -> bool:
        """Make the endpoint's two interfaces and queue its create hook; False if refused."""
        ingress, egress = interface_names(endpoint_id)
        fds: list[int] = []
        try:
            for name in (ingress, egress):
                fds.append(open_tun(name))
        except OSError as err:
            for fd in fds:
                os.close(fd)
            self._create_failed(endpoint_id, f"cannot make {ingress}/{egress}: {err}")
            return False
        hook = self.options.create_hook
        # With a create hook, the endpoint's frames are dropped (counted) until it is done:
        # before it, the kernel would route them as it was, not as the hook sets it up.
        rc = self.lib.geneve_tun_add_endpoint(
            self.table, endpoint_id, fds[0], fds[1], int(hook is None), time.monotonic()
        )
        if rc < 0:
            for fd in fds:
                os.close(fd)
            self._create_failed(
                endpoint_id,
                f"already {self.lib.GENEVE_TUN_ENDPOINTS_MAX} endpoints"
                if rc == -28
                else os.strerror(-rc),
            )
            return False
        with self._lock:
            self.endpoints[endpoint_id] = Endpoint(endpoint_id, ingress, egress, time.time())
        log.info(
            "endpoint %s: interfaces %s and %s made", endpoint_hex(endpoint_id), ingress, egress
        )
        if hook is not None:
            self.pending.add(endpoint_id)
            self.hooks.call(hook, "CREATE", ingress, egress, endpoint_hex(endpoint_id),
                            then=lambda: self._hooked.append(endpoint_id))  # fmt: skip
        return True

    def hold(self, frame: bytes) -> None:
        """Keep a frame of an endpoint whose create hook runs (the worker's thread)."""
        if len(self._held) < HOLD_MAX:
            self._held.append(frame)
        else:
            self.held_dropped += 1

    def _release(self) -> None:
        """The endpoints whose create hook is done take their frames: the held ones first, in
        the order they came, then the new ones (the worker's thread)."""
        lib, out = self.lib, self._replay_out
        while self._hooked:
            endpoint_id = self._hooked.popleft()
            self.pending.discard(endpoint_id)
            with self._lock:
                if self._freed:
                    return
                lib.geneve_tun_endpoint_ready(self.table, endpoint_id)
        held, self._held = self._held, []
        for frame in held:
            self.ffi.memmove(self._replay, frame, len(frame))
            out[0] = len(frame)
            lib.geneve_tun_decap(self.table, self._replay_slots, BUFFER_SIZE, out, 1,
                                 time.monotonic(), self.ffi.NULL, 0)  # fmt: skip
            if out[0] < 0:  # another endpoint, still waiting for its hook
                self._held.append(frame)

    def _create_failed(self, endpoint_id: int, why: str) -> None:
        self.create_failures += 1
        if endpoint_id not in self._failed_ids:
            if len(self._failed_ids) < 4096:
                self._failed_ids.add(endpoint_id)
            log.error("endpoint %s: %s; its frames are dropped", endpoint_hex(endpoint_id), why)

    def _destroy(self, endpoint: Endpoint, why: str) -> None:
        """Delete an endpoint's interfaces (from the worker's thread, or once it stopped)."""
        self.lib.geneve_tun_remove_endpoint(self.table, endpoint.id)
        with self._lock:
            self.endpoints.pop(endpoint.id, None)
        log.info(
            "endpoint %s: interfaces %s and %s deleted (%s)",
            endpoint_hex(endpoint.id),
            endpoint.ingress,
            endpoint.egress,
            why,
        )
        if self.options.destroy_hook is not None:
            self.hooks.call(self.options.destroy_hook, "DESTROY", endpoint.ingress,
                            endpoint.egress, endpoint_hex(endpoint.id))  # fmt: skip

    def _expire(self, now: float) -> None:
        idle = self.options.idle_timeout
        if idle is None:
            return
        ids = self.ffi.new("uint64_t[]", self.lib.GENEVE_TUN_ENDPOINTS_MAX)
        n = self.lib.geneve_tun_idle_endpoints(
            self.table, now, idle, ids, self.lib.GENEVE_TUN_ENDPOINTS_MAX
        )
        for i in range(max(0, n)):
            endpoint = self.endpoints.get(int(ids[i]))
            if endpoint is not None:
                self._destroy(endpoint, f"idle for {idle:g} s")

    # -- the way back ----------------------------------------------------------------------

    def chores(self, now: float) -> None:
        """The worker's, between two waits: frames held for a hook now done go into their tun;
        idle endpoints go (at most once a second)."""
        if self._hooked:
            self._release()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            self._expire(now)

    # -- reporting -------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Bridge-wide counters and, per endpoint, its interfaces and counters."""
        lib, ffi = self.lib, self.ffi
        totals = ffi.new("uint64_t[]", lib.GENEVE_TUN_COUNTERS)
        counts = ffi.new("uint64_t[]", lib.GENEVE_TUN_EP_COUNTERS)
        last = ffi.new("double *")
        endpoints = []
        now = time.monotonic()
        with self._lock:  # the C side is not freed meanwhile (a health check during a stop)
            if self._freed:
                totals = ffi.new("uint64_t[]", lib.GENEVE_TUN_COUNTERS)
            else:
                lib.geneve_tun_counts(self.table, totals)
            for endpoint in self.endpoints.values():
                if self._freed or lib.geneve_tun_endpoint_counts(
                    self.table, endpoint.id, counts, last
                ):
                    continue
                endpoints.append(
                    {
                        "endpoint": endpoint_hex(endpoint.id),
                        "ingress": endpoint.ingress,
                        "egress": endpoint.egress,
                        "packets_in": counts[lib.GENEVE_TUN_EP_IN],
                        "bytes_in": counts[lib.GENEVE_TUN_EP_IN_BYTES],
                        "packets_out": counts[lib.GENEVE_TUN_EP_OUT],
                        "bytes_out": counts[lib.GENEVE_TUN_EP_OUT_BYTES],
                        "misses": counts[lib.GENEVE_TUN_EP_MISSES],
                        "not_ip": counts[lib.GENEVE_TUN_EP_NOT_IP],
                        "before_hook": counts[lib.GENEVE_TUN_EP_EARLY],
                        "write_errors": counts[lib.GENEVE_TUN_EP_WRITE_ERRORS],
                        "send_errors": counts[lib.GENEVE_TUN_EP_SEND_ERRORS],
                        "idle_seconds": round(max(0.0, now - last[0]), 3),
                    }
                )
        return {
            "endpoints": endpoints,
            "headers": totals[lib.GENEVE_TUN_ENTRIES],
            "max_headers": totals[lib.GENEVE_TUN_CAPACITY],
            "evicted": totals[lib.GENEVE_TUN_EVICTED],
            "no_endpoint": totals[lib.GENEVE_TUN_NO_ENDPOINT],
            "long_header": totals[lib.GENEVE_TUN_LONG_HEADER],
            "held": len(self._held),
            "held_dropped": self.held_dropped,
            "create_failures": self.create_failures,
            "hooks_run": self.hooks.done,
            "hook_failures": self.hooks.failures,
        }


class TunReceiver(UdpBatchReceiver):
    """A worker's receiver in tun mode: its wait for the next batch also serves the tuns.

    One poll over the Geneve socket and every endpoint's tuns: what the kernel sent out of a
    tun goes back to GWLB there and then (C, ``geneve_tun_wait``), so that what one batch wrote
    into the tuns comes back as a batch too, in the worker's own thread, as a one-thread C
    bridge would do it. Then the batch from the socket, if there is one.
    """

    def __init__(self, bridge: TunBridge, sock: socket.socket, port: int, size: int) -> None:
        timeout = sock.gettimeout() or 0.0  # what the worker's heartbeat allows
        super().__init__(sock, port, size)
        self.bridge = bridge
        self._wait = bridge.lib.geneve_tun_wait
        self._timeout_ms = max(1, int(timeout * 1000))

    def receive(self) -> int:
        bridge = self.bridge
        now = time.monotonic()
        ready = self._wait(bridge.table, self._fd, bridge.send_fd, self._timeout_ms, now)
        bridge.chores(now)
        if ready < 0 and ready != -errno.EINTR:
            raise OSError(-ready, os.strerror(-ready))
        return super().receive() if ready > 0 else 0


class TunSender(BatchSender):
    """A worker's sender in tun mode: what the batch forwards goes into the tuns.

    The frames the worker leaves in their slots (forwarded by the fast path or the pipeline:
    FORWARD means "into the tun") are decapsulated into their endpoint's ingress tun; a frame
    sent on its own (a REJECT's RST or ICMP error) goes back to GWLB as in every mode.
    """

    def __init__(self, bridge: TunBridge, sock: socket.socket, slots: Slots) -> None:
        super().__init__(sock, slots)
        self.bridge = bridge
        ffi = bridge.ffi
        self._decap = bridge.lib.geneve_tun_decap
        self._unknown = ffi.new("uint64_t[]", UNKNOWN_MAX)
        # The slots' C arrays, as this module's ffi types them.
        self._slots = ffi.cast("uint8_t **", slots.c_slots)
        self._out = ffi.cast("int32_t *", slots.c_out)

    def send_slots(self, count: int) -> int:
        """Write the batch's forwarded frames into their tuns; 0 (failed writes are counted
        per endpoint, in C)."""
        bridge, decap = self.bridge, self._decap
        n = decap(bridge.table, self._slots, BUFFER_SIZE, self._out, count, time.monotonic(),
                  self._unknown, UNKNOWN_MAX)  # fmt: skip
        if n > 0:  # first frames of new endpoints: make their tuns, then those frames go
            for i in range(n):
                bridge.create(int(self._unknown[i]))
            # No more new endpoints taken: frames of one that could not be made are dropped.
            n = decap(bridge.table, self._slots, BUFFER_SIZE, self._out, count,
                      time.monotonic(), self._unknown, 0)  # fmt: skip
        if n < 0:
            raise ValueError("geneve_tun_decap: the batch's arguments disagree")
        if bridge.pending:  # frames of endpoints whose create hook runs: held till it is done
            out, views = self.slots.out, self.slots.views
            for i in range(count):
                if out[i] < 0:
                    bridge.hold(bytes(views[i][: -out[i]]))
                    out[i] = 0
        return 0
