"""The emulator: builds the topology, runs the data plane and the processes, tears down.

The gwlb namespace routes every packet that arrives from the client for the server (and back)
into a tun device, by policy routing on the incoming interface; the data plane (dataplane.py)
wraps each one as GWLB does and sends it to the appliance, checks the reply and writes the
inner packet back into the tun.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from .dataplane import DataPlane
from .namespaces import (
    EmulatorError,
    Namespaces,
    die_with_parent,
    ip,
    netns,
    sysctl,
    tx_checksum,
    veth,
)
from .topology import DIVERT_TABLE, GWLB_TO, PEER_IFNAME, TUN_NAME, EmulatorConfig, Names, Role


@dataclass
class HealthResult:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Emulator:
    """The whole local GWLB: namespaces, routing, data plane, and the processes run inside.

    Use as a context manager; everything created is removed on exit, whatever happened::

        with Emulator() as emu:
            emu.start_appliance()
            emu.wait_healthy()
            emu.run("client", ["ping", "-c", "3", emu.addressing.server])
            print(format_summary(emu.summary()))
    """

    def __init__(self, config: EmulatorConfig | None = None, names: Names | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.addressing = self.config.addressing
        self.names = names or Names()
        self.data_plane: DataPlane | None = None
        self.appliance: subprocess.Popen[bytes] | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._namespaces = Namespaces()
        self.tx_checksum_offload: bool | None = None  # of the appliance's interface, after setup
        self.final_summary: dict[str, Any] | None = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except EmulatorError as err:
            if exc is None:
                raise
            print(f"geneve.emulator: {err}", file=sys.stderr)  # do not hide the first error

    # -- bring up -----------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._build()
            self.data_plane = DataPlane.open(self.config, self.names.gwlb)
            self._divert()
            self.data_plane.start()
        except BaseException:
            self.stop()
            raise

    def _build(self) -> None:
        a, n, c = self.addressing, self.names, self.config
        plen, plen6 = str(a.prefix_length), str(a.prefix6_length)
        for name in n.all():
            self._namespaces.add(name)  # recorded first: a signal cannot orphan it
            with netns(name):
                # No duplicate address detection: addresses usable at once (isolated links).
                for scope in ("all", "default"):
                    sysctl(f"net/ipv6/conf/{scope}/accept_dad", 0)
        with netns(n.gwlb):
            sysctl("net/ipv4/ip_forward", 1)
            sysctl("net/ipv6/conf/all/forwarding", int(c.ipv6))
            # Strict reverse-path filtering drops what re-enters through the address-less tun
            # (GWLB.md); a new namespace may inherit it from the host, so set it here.
            for scope in ("all", "default"):
                sysctl(f"net/ipv4/conf/{scope}/rp_filter", 0)
        links = (
            ("client", n.client, a.client_gateway, a.client, a.client6_gateway, a.client6),
            ("server", n.server, a.server_gateway, a.server, a.server6_gateway, a.server6),
            ("appliance", n.appliance, a.gwlb, a.appliance, "", ""),
        )
        for role, ns, gw, addr, gw6, addr6 in links:
            mtu = c.appliance_mtu if role == "appliance" else c.inner_mtu
            ifname = GWLB_TO[role]
            veth(n.gwlb, ifname, ns, PEER_IFNAME, mtu=mtu)
            ip("-n", n.gwlb, "addr", "add", f"{gw}/{plen}", "dev", ifname)
            ip("-n", ns, "addr", "add", f"{addr}/{plen}", "dev", PEER_IFNAME)
            if c.ipv6 and addr6:
                ip("-n", n.gwlb, "addr", "add", f"{gw6}/{plen6}", "dev", ifname, "nodad")
                ip("-n", ns, "addr", "add", f"{addr6}/{plen6}", "dev", PEER_IFNAME, "nodad")
            for where, dev in ((n.gwlb, ifname), (ns, PEER_IFNAME), (ns, "lo")):
                ip("-n", where, "link", "set", dev, "up")
            if role != "appliance":
                ip("-n", ns, "route", "add", "default", "via", gw)
                if c.ipv6:
                    ip("-n", ns, "-6", "route", "add", "default", "via", gw6)
        ip("-n", n.gwlb, "link", "set", "lo", "up")
        with netns(n.gwlb):
            for ifname in GWLB_TO.values():
                sysctl(f"net/ipv4/conf/{ifname}/rp_filter", 0)
            # The tun gets no IPv6 link-local address, so it sends no chatter of its own.
            sysctl("net/ipv6/conf/default/addr_gen_mode", 1)
        with netns(n.appliance):
            try:
                self.tx_checksum_offload = tx_checksum(PEER_IFNAME, False)
            except OSError:
                self.tx_checksum_offload = None  # no ethtool ioctl here: replies are checked anyway

    def _divert(self) -> None:
        """Route client<->server packets through the tun (and so through the data plane)."""
        a, n, c = self.addressing, self.names, self.config
        table = str(DIVERT_TABLE)
        with netns(n.gwlb):
            sysctl(f"net/ipv4/conf/{TUN_NAME}/rp_filter", 0)
        ip("-n", n.gwlb, "link", "set", TUN_NAME, "mtu", str(c.inner_mtu), "up")
        families = [("-4", a.client, a.server)]
        if c.ipv6:
            families.append(("-6", a.client6, a.server6))
        for family, client, server in families:
            ip("-n", n.gwlb, family, "route", "add", "default", "dev", TUN_NAME, "table", table)
            for ifname, to in ((GWLB_TO["client"], server), (GWLB_TO["server"], client)):
                ip("-n", n.gwlb, family, "rule", "add", "iif", ifname,
                    "to", a.network(to), "lookup", table, "pref", "100")  # fmt: skip

    # -- processes inside the namespaces --------------------------------------------------------

    def command(self, role: Role, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the ``role`` namespace."""
        return ["ip", "netns", "exec", self.names[role], *argv]

    def run(
        self, role: Role, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace to completion (stdout and stderr captured as text)."""
        proc = subprocess.run(
            self.command(role, argv),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent,
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def spawn(self, role: Role, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command in a namespace; it is stopped (by pid) when the emulator stops."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.command(role, argv), preexec_fn=die_with_parent, **kwargs
        )
        self._processes.append(proc)
        return proc

    def appliance_command(self, rules: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        argv = [sys.executable, "-m", "geneve.appliance", "--health-host", "0.0.0.0",
                "--allow-from", f"{self.addressing.gwlb}/32"]  # fmt: skip
        if rules:
            argv += ["--rules", rules]
        return argv + list(extra)

    def start_appliance(
        self, argv: Sequence[str] | None = None, *, log: Any = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """Start the appliance under test (default ``python -m geneve.appliance``)."""
        self.appliance = self.spawn(
            "appliance", argv or self.appliance_command(), stdout=log, stderr=subprocess.STDOUT
        )
        return self.appliance

    def http_get(self, path: str = "/", port: int = 8080, timeout: float = 2.0) -> HealthResult:
        """GET ``path`` on the appliance, from the gwlb namespace (as GWLB's health checks)."""
        host = self.addressing.appliance
        t0 = time.monotonic()
        with netns(self.names.gwlb):
            sock = socket.create_connection((host, port), timeout=timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return HealthResult(resp.status, body, time.monotonic() - t0)

    def wait_healthy(self, port: int = 8080, timeout: float = 15.0) -> HealthResult:
        """Poll ``GET /`` until it answers 200; raise if the appliance exits or time runs out."""
        t0 = time.monotonic()
        last = "no answer"
        while time.monotonic() - t0 < timeout:
            if self.appliance is not None and self.appliance.poll() is not None:
                raise EmulatorError(f"the appliance {describe_exit(self.appliance.returncode)}")
            try:
                result = self.http_get("/", port, timeout=1.0)
            except OSError as err:
                last = str(err)
            else:
                if result.status == 200:
                    result.seconds = time.monotonic() - t0
                    return result
                last = f"HTTP {result.status}"
            time.sleep(0.1)
        raise EmulatorError(f"the appliance was not healthy after {timeout:.0f} s ({last})")

    def stop_appliance(self, timeout: float = 5.0) -> tuple[int | None, float]:
        """SIGTERM the appliance; returns its exit status (None: had to be killed) and seconds."""
        proc = self.appliance
        if proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.terminate()
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            rc = None
        return rc, time.monotonic() - t0

    def udp_port_bound(self, role: Role, port: int) -> bool:
        """Whether a socket in ``role``'s namespace is bound to UDP ``port``."""
        lines: list[str] = []
        with netns(self.names[role]):
            for table in ("udp", "udp6"):
                with open(f"/proc/thread-self/net/{table}") as f:
                    lines += f.read().splitlines()[1:]
        # "sl local_address rem_address ...": the local address is hex "ADDR:PORT".
        return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in lines)

    def summary(self) -> dict[str, Any]:
        if self.data_plane is None:
            return self.final_summary or {}
        return self.data_plane.summary()

    # -- tear down ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process started here (by pid), the data plane, and delete the namespaces.

        Idempotent, and safe after a partial start. Signals that arrive meanwhile are held
        until the end, so a second Ctrl-C cannot leave half a topology behind.
        """
        with _signals_held():
            for proc in self._processes:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 3
            for proc in self._processes:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self._processes.clear()
            if self.data_plane is not None:
                self.data_plane.stop()
                self.final_summary = self.data_plane.summary()
                self.data_plane = None
            # Processes left in a namespace are not ours (ours were stopped above): say so.
            problems = self._namespaces.delete(
                warn=lambda text: print(f"geneve.emulator: {text}", file=sys.stderr)
            )
        if problems:
            raise EmulatorError("teardown: " + "; ".join(problems))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP for the block (main thread only), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        for signum in caught[:1]:
            signal.raise_signal(signum)


def describe_exit(returncode: int) -> str:
    """A child's exit as words: ``exited with status 1``, ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"
