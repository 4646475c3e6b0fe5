"""Appliance benchmark: the geneve daemon against two C floors, on one machine.

Usage (root; gcc and iproute2 needed)::

    .venv/bin/python benchmarks/appliance.py --quick     # under 2 minutes
    .venv/bin/python benchmarks/appliance.py             # about 6 minutes
    .venv/bin/python benchmarks/appliance.py --nice -10 --json results.json  # busy machine

Strategy. Two network namespaces joined by a veth (MTU 9001): the generator's and the
appliance's. ``benchmarks/c/loadgen.c`` (pinned to one core) sends GWLB frames and checks the
replies; the appliance under test runs pinned to the other core. Appliances:

- ``geneve``: ``python -m geneve.appliance`` with its default settings (reference rules);
- ``floor_single`` / ``floor_batch``: the least a C appliance with the daemon's sockets can do,
  one packet per system call / recvmmsg+sendmmsg batches (``benchmarks/c/floor_*.c``);
- ``geneve-py`` (full run only): ``--no-fast-path``, every frame through the Python pipeline;
- ``geneve-raw`` / ``geneve-w2`` / ``geneve-b1`` (full run only): ``--receive raw``,
  ``--workers 2`` (both workers on the appliance's one core) and ``--batch 1 --no-fast-path``
  (one frame per system call, all in Python: the batching lever measured);
- ``geneve-base`` (with ``--baseline PYTHON``): the daemon of another checkout, run by that
  checkout's own Python, so a before/after comparison is measured in one run, alternating;
- ``geneve-noflows``: ``--no-flows`` (flows are on by default: the difference is what
  tracking costs);
- ``geneve-verdict`` / ``geneve-verdict-py``: ``benchmarks/flow_rules.py``'s modifiers over the
  generator's 256 flows: a FORWARD flow verdict on each flow's first packet (the rest forwarded
  in C), and the same decision taken in Python for every packet;
- ``geneve-egress``: the egress filter, ``--rules geneve.rules.egress:from_env`` with
  ``GENEVE_EGRESS_ALLOW=.example``, on the ``egress`` mix: TCP connections in the generator's
  256 flow slots, each opened by a 517-byte TLS ClientHello to ``allowed.example`` and then
  ``--flow-packets`` data frames (200: 100 each way), after which the slot opens a new
  connection. The floors run the same mix when it is in the plan.
- ``geneve-grow`` / ``geneve-same``: TCP payload rewrites that change the length (issue 16),
  ``benchmarks/seq_rules.py``'s modifiers on the ``rewrite`` / ``rewrite-same`` mixes: TCP
  data from clients to port 8080 in the generator's 256 flow slots (``--flow-packets`` frames
  a connection, no handshake), each payload with ``http://`` in it (once at 156 bytes, four
  times at 1500), which ``geneve-grow`` makes ``https://`` (the reply longer, its sequence
  number shifted by the connection's earlier growth: loadgen computes both) and
  ``geneve-same`` ``HTTP://`` (the same length). Only the replacement differs, so their ratio
  is the cost of sequence adjustment on the daemon's path. A frame lost before the appliance
  leaves a gap in its connection, and ``geneve-grow`` drops the connection's later data
  (``seq-gap``: the generator never retransmits), so at saturation its reply rate is lower than
  what it could forward; the no-loss rate has no gaps.

For each appliance, frame size and traffic mix it measures the reply rate at saturation, the
highest offered rate with less than 0.1% loss and replies keeping pace (15% steps from the
saturation rate, then a short bisection) and the round-trip latency at 20k pps, and counts lost
and invalid replies. The floors only forward, so they run the ``forward`` mix (and the
``egress`` mix when an appliance of the plan does: the generator's egress frames are first
read back with geneve's own parsers); ``geneve`` also runs the ``rules`` mix (10% of frames
rewritten), compared against the single floor's forwarding. Appliances alternate
(A B C A B C ...) for several rounds; the table shows medians.

The C programs are compiled with ``gcc -O2`` into a temporary directory at every run. The
namespaces and every process started are removed at the end, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from geneve import GeneveError, Packet
from geneve._emulator.namespaces import EmulatorError, Namespaces, ip, veth
from geneve.checksum import internet_checksum
from geneve.inspect import InspectError, parse_client_hello

HERE = Path(__file__).resolve().parent
C_DIR = HERE / "c"
PROGRAMS = ("loadgen", "floor_single", "floor_batch")

#: Loss below this fraction counts as "no loss" (the issue's target).
LOSS_TARGET = 0.001
#: At saturation, a loss below this means the appliance kept up with the generator: the
#: measured rate is then a lower bound set by the generator, not the appliance's limit.
GENERATOR_BOUND_LOSS = 0.01


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    rounds: int
    sizes: tuple[int, ...]
    saturation_s: float
    search_s: float
    bisect_steps: int
    latency_s: float
    latency_pps: float
    appliances: tuple[str, ...]


QUICK = Plan(
    rounds=3,
    sizes=(156,),
    saturation_s=1.0,
    search_s=0.7,
    bisect_steps=2,
    latency_s=1.0,
    latency_pps=20_000.0,
    appliances=("geneve", "floor_single", "floor_batch"),
)
FULL = Plan(
    rounds=3,
    sizes=(156, 1500),
    saturation_s=2.0,
    search_s=1.0,
    bisect_steps=2,
    latency_s=2.0,
    latency_pps=20_000.0,
    appliances=(
        "geneve",
        "floor_single",
        "floor_batch",
        "geneve-py",
        "geneve-raw",
        "geneve-w2",
        "geneve-b1",
    ),
)


@dataclass(frozen=True)
class Appliance:
    name: str
    mixes: tuple[str, ...]
    sizes: tuple[int, ...] | None  # None: every size of the plan

    def command(self, build: Path) -> list[str]:
        daemon = [sys.executable, "-m", "geneve.appliance"]
        if self.name == "geneve":
            return daemon
        if self.name == "geneve-base":  # another checkout's daemon, through its own Python
            return [str(BASELINE_PYTHON), "-m", "geneve.appliance"]
        if self.name == "geneve-raw":
            return [*daemon, "--receive", "raw"]
        if self.name == "geneve-w2":
            return [*daemon, "--workers", "2"]
        if self.name == "geneve-b1":
            return [*daemon, "--batch", "1", "--no-fast-path"]
        if self.name == "geneve-py":
            return [*daemon, "--no-fast-path"]
        if self.name == "geneve-noflows":
            return [*daemon, "--no-flows"]
        if self.name == "geneve-egress":
            # The filter allows every hello of the egress mix: its SNI is allowed.example.
            return [
                "env",
                "GENEVE_EGRESS_ALLOW=.example",
                *daemon,
                "--rules",
                "geneve.rules.egress:from_env",
            ]
        if self.name in ("geneve-grow", "geneve-same"):
            rules = "grow" if self.name == "geneve-grow" else "same"
            return ["env", f"PYTHONPATH={HERE}", *daemon, "--rules", f"seq_rules:{rules}"]
        if self.name in ("geneve-verdict", "geneve-verdict-py"):
            # benchmarks/flow_rules.py: a FORWARD verdict on each flow's first packet, or the
            # same decision in Python for every packet.
            rules = "first_packet_forward" if self.name == "geneve-verdict" else "every_packet"
            return ["env", f"PYTHONPATH={HERE}", *daemon, "--rules", f"flow_rules:{rules}"]
        return [str(build / self.name)]


APPLIANCES = {
    "geneve": Appliance("geneve", ("forward", "rules"), None),
    # The floors forward anything: they run each mix the plan's other appliances forward.
    "floor_single": Appliance("floor_single", ("forward", "egress"), None),
    "floor_batch": Appliance("floor_batch", ("forward", "egress"), None),
    "geneve-raw": Appliance("geneve-raw", ("forward",), (156,)),
    "geneve-w2": Appliance("geneve-w2", ("forward",), (156,)),
    "geneve-b1": Appliance("geneve-b1", ("forward",), (156,)),
    "geneve-py": Appliance("geneve-py", ("forward", "rules"), None),
    "geneve-base": Appliance("geneve-base", ("forward", "rules"), None),
    "geneve-noflows": Appliance("geneve-noflows", ("forward", "rules"), None),
    "geneve-verdict": Appliance("geneve-verdict", ("forward",), (156,)),
    "geneve-verdict-py": Appliance("geneve-verdict-py", ("forward",), (156,)),
    "geneve-egress": Appliance("geneve-egress", ("egress",), None),
    "geneve-grow": Appliance("geneve-grow", ("rewrite",), None),
    "geneve-same": Appliance("geneve-same", ("rewrite-same",), None),
}
FLOORS = ("floor_single", "floor_batch")


def mixes_for(app: Appliance, plan: Plan) -> tuple[str, ...]:
    """The mixes ``app`` runs in ``plan``: its own; for a floor, those that the plan's other
    appliances are compared on (``rules`` against the floors' ``forward``), ``forward`` alone
    in a plan of floors only."""
    if app.name not in FLOORS:
        return app.mixes
    wanted = {
        "forward" if mix == "rules" else mix
        for name in plan.appliances
        if name not in FLOORS
        for mix in APPLIANCES[name].mixes
    } or {"forward"}
    return tuple(mix for mix in app.mixes if mix in wanted)


#: The interpreter of the checkout that ``geneve-base`` runs (``--baseline``).
BASELINE_PYTHON: Path | None = None


class BenchmarkError(Exception):
    """Something in the set-up failed: reported in one line."""


def run(*args: str, timeout: float = 30) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BenchmarkError(f"{' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


# -- build -------------------------------------------------------------------------------------


def build(into: Path) -> Path:
    """Compile the C programs into ``into`` with gcc -O2."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BenchmarkError("needs gcc to build benchmarks/c")
    for name in PROGRAMS:
        source, binary = C_DIR / f"{name}.c", into / name
        run(cc, "-O2", "-std=gnu99", "-Wall", "-o", str(binary), str(source), timeout=120)
    return into


#: The name in the egress mix's ClientHellos (loadgen.c's HELLO_SNI), and the allow list entry
#: of ``geneve-egress`` that lets it through.
EGRESS_SNI = "allowed.example"


def check_egress_mix(loadgen: Path, size: int, flows: int = 3, flow_packets: int = 5) -> None:
    """Read the egress mix as loadgen writes it with geneve's parsers (two generations of a
    small mix): every checksum valid, each connection's ClientHello parsed by
    ``geneve.inspect.parse_client_hello`` and sent before its data, data frames of ``size``
    bytes alternating direction under one GWLB header, sequence and acknowledgment numbers
    following the bytes each side sent. BenchmarkError on the first thing wrong."""
    count = 2 * flows * (1 + flow_packets)
    out = run(
        *f"{loadgen} --mix egress --size {size} --flows {flows} --flow-packets {flow_packets}"
        f" --dump-frames {count}".split()
    )
    frames = [bytearray.fromhex(line) for line in out.split()]
    if len(frames) != count:
        raise BenchmarkError(f"loadgen --dump-frames: {len(frames)} frames, not {count}")
    opened: dict[int, bytes] = {}  # flow slot -> its connection's client endpoint
    next_seq: dict[bytes, int] = {}  # sender endpoint -> the sequence number its next byte has
    for number, frame in enumerate(frames):
        where = f"egress mix frame {number} ({size} bytes)"
        try:
            packet = Packet.parse(frame)
            tcp = packet.tcp
            payload = packet.payload
        except GeneveError as err:
            raise BenchmarkError(f"{where}: {err}") from err
        ip_start = packet.ip_offset
        if tcp is None or payload is None or ip_start < 0:
            raise BenchmarkError(f"{where}: not TCP in IPv4")
        inner = bytes(frame[ip_start : packet.ip_end])
        segment = inner[20:]
        pseudo = inner[12:20] + bytes((0, 6)) + len(segment).to_bytes(2, "big")
        if (
            internet_checksum(frame[:20])
            or internet_checksum(inner[:20])
            or internet_checksum(pseudo + segment)
        ):
            raise BenchmarkError(f"{where}: a checksum is wrong")
        slot = frame[20:22]  # GWLB's outer source port: one per flow slot, both directions
        flow = int.from_bytes(slot, "big")
        src = inner[12:16] + tcp.src_port.to_bytes(2, "big")
        dst = inner[16:20] + tcp.dst_port.to_bytes(2, "big")
        if number % (flows * (1 + flow_packets)) < flows:  # a connection opens
            try:
                hello = parse_client_hello(payload)
            except InspectError as err:
                raise BenchmarkError(f"{where}: ClientHello: {err}") from err
            if hello.sni != EGRESS_SNI or 0x0304 not in hello.supported_versions:
                raise BenchmarkError(f"{where}: ClientHello for {hello.sni!r}, not TLS 1.3")
            if opened.get(flow) == src:
                raise BenchmarkError(f"{where}: a new connection reuses the last one's port")
            opened[flow] = src
            next_seq[src] = tcp.seq
            next_seq[dst] = tcp.ack
        else:
            client = opened.get(flow)
            if len(frame) != size or client not in (src, dst):
                raise BenchmarkError(f"{where}: not a data frame of its slot's connection")
            expect_reverse = (number % (flows * (1 + flow_packets)) - flows) // flows % 2
            if (src != client) != bool(expect_reverse):
                raise BenchmarkError(f"{where}: directions do not alternate")
        if tcp.seq != next_seq[src] or tcp.ack != next_seq[dst]:
            raise BenchmarkError(f"{where}: sequence numbers do not follow the bytes sent")
        next_seq[src] = (tcp.seq + len(payload)) % 2**32


def check_rewrite_mix(loadgen: Path, size: int, flows: int = 3, flow_packets: int = 5) -> None:
    """Hand the rewrite mixes as loadgen writes them (two connections a slot) to geneve's own
    pipeline, flows on, with ``benchmarks/seq_rules.py``'s modifier, and compare each reply
    from the Geneve header on with the reply loadgen expects (``--dump-replies``): the
    replacement in, lengths, sequence numbers and checksums right. BenchmarkError on the first
    that differs."""
    sys.path.insert(0, str(HERE))
    try:
        import seq_rules
    finally:
        sys.path.remove(str(HERE))
    from geneve import FlowTable, Pipeline, ReceiveBuffer

    count = 2 * flows * flow_packets
    common = f"--size {size} --flows {flows} --flow-packets {flow_packets} --dump-frames {count}"
    for mix, modifier in (("rewrite", seq_rules.grow), ("rewrite-same", seq_rules.same)):
        frames = run(*f"{loadgen} --mix {mix} {common}".split()).split()
        wanted = run(*f"{loadgen} --mix {mix} {common} --dump-replies 1".split()).split()
        if len(frames) != count or len(wanted) != count:
            raise BenchmarkError(f"loadgen --dump-frames: {len(frames)} frames, not {count}")
        pipeline = Pipeline(modifier, flows=FlowTable())
        buf = ReceiveBuffer()
        for number, (frame, reply) in enumerate(zip(frames, wanted, strict=True)):
            data = bytes.fromhex(frame)
            buf[: len(data)] = data
            out = pipeline.handle(buf, len(data), 1.0)
            expected = bytes.fromhex(reply)
            if len(out) != 1 or bytes(out[0][28:]) != expected[28:]:
                raise BenchmarkError(
                    f"{mix} mix frame {number} ({size} bytes): geneve's reply is not the one "
                    f"loadgen expects ({pipeline.stats.as_dict()})"
                )


# -- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    virt = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Hypervisor vendor:"):
                virt = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "hypervisor": virt or None,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def source_state() -> str:
    """The commit the daemon under test comes from, local changes, and a digest of src/.

    Each round starts a new daemon, which imports whatever src/ holds at that moment; the
    digest shows whether that changed during the run.
    """
    digest = hashlib.sha1()
    src = HERE.parent / "src"
    for path in sorted(src.rglob("*")):
        if path.suffix in (".py", ".c", ".h", ".pyi") and path.is_file():
            digest.update(path.relative_to(src).as_posix().encode())
            digest.update(path.read_bytes())
    tree = f"src {digest.hexdigest()[:10]}"
    try:
        head = run("git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD").strip()
        dirty = run("git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src").strip()
    except (BenchmarkError, OSError, subprocess.SubprocessError):
        return tree
    return f"{head}{' + uncommitted changes' if dirty else ''} ({tree})"


class CpuMeter:
    """CPU time the rest of the machine used while we measured (an estimate of the noise).

    Busy time (/proc/stat: user, nice, system, irq, softirq) minus what this script and its
    children used (their rusage, which includes the interrupt work done in their context).
    ``steal`` is time the hypervisor took from us.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float]:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) / tick for x in fields[:8]
        )
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            ours += ru.ru_utime + ru.ru_stime
        return time.monotonic(), user + nice + system + irq + softirq, ours, steal

    def stop(self) -> dict[str, float]:
        t1, busy1, ours1, steal1 = self._read()
        t0, busy0, ours0, steal0 = self._start
        wall = max(t1 - t0, 1e-9)
        other = (busy1 - busy0) - (ours1 - ours0)
        return {
            "other_cores": round(max(other, 0.0) / wall, 3),
            "steal_cores": round((steal1 - steal0) / wall, 3),
        }


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


# -- namespaces --------------------------------------------------------------------------------


@dataclass
class Topology:
    """The generator's and the appliance's namespaces, joined by a veth."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    gen_addr: str = "10.251.0.1"
    app_addr: str = "10.251.0.2"

    def __post_init__(self) -> None:
        self.gen_ns = f"geneve-bench-{self.tag}-gen"
        self.app_ns = f"geneve-bench-{self.tag}-app"
        short = self.tag[-8:]
        self.gen_if = f"gb{short}g"
        self.app_if = f"gb{short}a"
        self.app_mac = ""
        self.namespaces = Namespaces()  # the emulator's plumbing: deleted even after a failure

    def up(self) -> None:
        for ns in (self.gen_ns, self.app_ns):
            self.namespaces.add(ns)
        veth(self.gen_ns, self.gen_if, self.app_ns, self.app_if)
        for ns, dev, addr in (
            (self.gen_ns, self.gen_if, self.gen_addr),
            (self.app_ns, self.app_if, self.app_addr),
        ):
            ip("-n", ns, "link", "set", "lo", "up")
            # GWLB sends up to 8500-byte inner packets; a rewrite may grow a 1500-byte frame.
            ip("-n", ns, "link", "set", dev, "mtu", "9001", "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        # Neighbour entries fixed up front: no ARP in the middle of a measurement.
        gen_mac = self._mac(self.gen_ns, self.gen_if)
        self.app_mac = self._mac(self.app_ns, self.app_if)
        for ns, addr, mac, dev in (
            (self.gen_ns, self.app_addr, self.app_mac, self.gen_if),
            (self.app_ns, self.gen_addr, gen_mac, self.app_if),
        ):
            ip(*f"-n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent".split())

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        out = run("ip", "-n", ns, "-o", "link", "show", dev)
        words = out.split()
        return words[words.index("link/ether") + 1]

    def down(self) -> None:
        self.namespaces.delete()


# -- processes ---------------------------------------------------------------------------------


def in_ns(ns: str, cpu: int, nice: int, argv: Sequence[str]) -> list[str]:
    """Command line that runs ``argv`` in namespace ``ns`` on core ``cpu``.

    With ``nice`` (negative: more CPU share) the process gets it both as its own nice value and
    for its autogroup (the kernel groups processes by session, and a process's nice only counts
    within its group); the caller starts it in a new session.
    """
    cmd = ["ip", "netns", "exec", ns]
    if nice:
        cmd += [
            "sh",
            "-c",
            '{ echo "$0" > /proc/self/autogroup; } 2>/dev/null; exec "$@"',
            str(nice),
            "nice",
            "-n",
            str(nice),
        ]
    return [*cmd, "taskset", "-c", str(cpu), *argv]


class Running:
    """An appliance process we started; stopped by its pid (and its children's)."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after 5 s; returns the last lines it logged."""
        pid = self.proc.pid
        if self.proc.poll() is None:
            kids = children(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                for p in [pid, *kids]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                self.proc.wait(5)
            for p in kids:  # forked workers should be gone with their parent
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        self._log_file.close()
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


# -- the generator -----------------------------------------------------------------------------


@dataclass
class Generator:
    topo: Topology
    binary: Path
    cpu: int
    nice: int
    tx: str
    flow_packets: int = 200  # the egress mix: data frames per connection, both ways together

    def __call__(
        self, *, mix: str, size: int, rate: float, duration: float, validate_every: int = 8
    ) -> dict[str, Any]:
        topo = self.topo
        args = [
            str(self.binary),
            *f"--src {topo.gen_addr} --dst {topo.app_addr} --mix {mix}".split(),
        ]
        args += f"--size {size} --rate {int(rate)} --duration {duration} --tx {self.tx}".split()
        args += f"--validate-every {validate_every} --warmup {min(0.3, duration / 4)}".split()
        if mix in ("egress", "rewrite", "rewrite-same"):
            args += ["--flow-packets", str(self.flow_packets)]
        if self.tx == "packet":
            args += ["--ifname", topo.gen_if, "--dst-mac", topo.app_mac]
        argv = in_ns(topo.gen_ns, self.cpu, self.nice, args)
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True
        )
        if r.returncode != 0:
            raise BenchmarkError(f"loadgen failed ({r.returncode}): {r.stderr.strip()}")
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result


# -- measurements ------------------------------------------------------------------------------


def wait_ready(gen: Generator, running: Running, timeout: float = 15) -> None:
    """Probe with a little traffic until replies come back (sockets open, caches warm)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise BenchmarkError(f"{running.name} exited: {running.stop()}")
        probe = gen(mix="forward", size=156, rate=5000, duration=0.3, validate_every=1)
        if probe["received"] >= probe["sent"] * 0.9 and probe["sent"]:
            return
        time.sleep(0.2)
    raise BenchmarkError(f"{running.name} did not answer within {timeout:.0f} s")


def search_no_loss(
    gen: Generator, mix: str, size: int, start: float, plan: Plan, runs: list[dict[str, Any]]
) -> tuple[float, bool]:
    """Highest offered rate (pps) the appliance keeps up with, with loss < 0.1%.

    Keeping up also means the replies come back as fast as the frames go out: a short run
    slightly over capacity loses nothing while the socket buffer fills, but its reply rate
    falls behind. A rate passes when one of two tries passes. Starts at ``start`` (the
    saturation reply rate), steps up or down by 15% until it has a bracket, then bisects. The
    rewrite mixes get twice the steps (up to about 5x): a growing rewrite's saturation rate is
    far below what it forwards without loss (a frame lost before it ends its connection's data).
    Returns the rate and whether it is only a lower bound (the generator could not go faster).
    """
    ceiling = 0.0

    def ok(rate: float) -> bool:
        nonlocal ceiling
        for _ in range(2):  # a failure gets a second try: on a shared machine stalls happen
            r = gen(mix=mix, size=size, rate=rate, duration=plan.search_s)
            r["phase"] = "search"
            runs.append(r)
            if r["tx_pps"] < 0.97 * rate:  # the generator itself could not go faster
                ceiling = r["tx_pps"]
            if r["sent"] and r["loss"] < LOSS_TARGET and r["rx_pps"] >= 0.98 * r["tx_pps"]:
                r["passed"] = True
                return True
        return False

    step = 1.15
    lo, hi = 0.0, 0.0
    rate = start
    for _ in range(12 if mix.startswith("rewrite") else 6):  # 15% steps, about 2x either way
        if ok(rate):
            lo = rate
            if ceiling:
                return ceiling, True
            if hi:
                break
            rate *= step
        else:
            hi = rate
            if lo:
                break
            rate /= step
    if not lo:
        return 0.0, False
    if not hi:  # passed all the way up
        return lo, False
    for _ in range(plan.bisect_steps):
        mid = (lo + hi) / 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, False


def measure(gen: Generator, mix: str, size: int, plan: Plan) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    sat = gen(mix=mix, size=size, rate=0, duration=plan.saturation_s)
    sat["phase"] = "saturation"
    runs.append(sat)
    generator_bound = sat["loss"] < GENERATOR_BOUND_LOSS
    no_loss, no_loss_bound = search_no_loss(gen, mix, size, max(sat["rx_pps"], 1000.0), plan, runs)
    rate = min(plan.latency_pps, no_loss / 2) if no_loss else plan.latency_pps / 4
    lat = gen(mix=mix, size=size, rate=rate, duration=plan.latency_s, validate_every=1)
    lat["phase"] = "latency"
    runs.append(lat)
    return {
        "saturation_pps": sat["rx_pps"],
        "generator_pps": sat["tx_pps"],
        # The egress mix: connections opened (one ClientHello each) in the saturation run.
        "hellos": sat.get("hellos", 0),
        "saturation_sent": sat["sent"],
        "saturation_s": sat["duration"],
        "generator_bound": generator_bound,
        "no_loss_pps": no_loss,
        "no_loss_generator_bound": no_loss_bound,
        "latency_rate": rate,
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "latency_loss": lat["loss"],
        "invalid": sum(r["invalid"] for r in runs),
        "invalid_reasons": merge_counts(r["invalid_reasons"] for r in runs),
        "validated": sum(r["validated"] for r in runs),
        "rewritten_ok": sum(r["rewritten_ok"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "generator_rx_drops": max(r["rx_socket_drops"] for r in runs),
        "runs": runs,
    }


def merge_counts(dicts: Iterator[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


# -- report ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(results: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Medians over rounds for each (appliance, mix, size)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["appliance"], r["mix"], r["size"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {
            "rounds": len(rs),
            "saturation_pps": median([r["saturation_pps"] for r in rs]),
            "saturation_spread": (
                min(r["saturation_pps"] for r in rs),
                max(r["saturation_pps"] for r in rs),
            ),
            "generator_bound": sum(r["generator_bound"] for r in rs) * 2 > len(rs),
            "generator_pps": median([r["generator_pps"] for r in rs]),
            "no_loss_pps": median([r["no_loss_pps"] for r in rs]),
            "no_loss_generator_bound": sum(r["no_loss_generator_bound"] for r in rs) * 2 > len(rs),
            "p50_us": median([r["p50_us"] for r in rs]),
            "p99_us": median([r["p99_us"] for r in rs]),
            "latency_loss": max(r["latency_loss"] for r in rs),
            "invalid": sum(r["invalid"] for r in rs),
            "invalid_reasons": merge_counts(r["invalid_reasons"] for r in rs),
            "validated": sum(r["validated"] for r in rs),
            "rewritten_ok": sum(r["rewritten_ok"] for r in rs),
            "duplicates": sum(r["duplicates"] for r in rs),
            # The egress mix's saturation runs: connections opened per second, and data frames
            # sent per connection (a run's last connections are cut short by its end).
            "hellos_per_s": median([r["hellos"] / r["saturation_s"] for r in rs if r["hellos"]]),
            "data_per_hello": median(
                [(r["saturation_sent"] - r["hellos"]) / r["hellos"] for r in rs if r["hellos"]]
            ),
            "steal_cores": median([r["noise"]["steal_cores"] for r in rs]),
            "other_cores": median([r["noise"]["other_cores"] for r in rs]),
        }
    return out


def kpps(pps: float, lower_bound: bool = False) -> str:
    return f"{'>=' if lower_bound else ''}{pps / 1000:.1f}k"


def table(summary: dict[tuple[str, str, int], dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"machine: {info['machine']['cpu']}, {info['machine']['cores']} cores"
        + (f" ({info['machine']['hypervisor']} guest)" if info["machine"]["hypervisor"] else "")
        + f", Linux {info['machine']['kernel']}, {info['machine']['python']}",
        f"geneve at {info['source']}",
        f"generator on cpu {info['gen_cpu']} (tx {info['tx']}), appliance on cpu "
        f"{info['app_cpu']}, nice {info['nice']}; {info['rounds']} rounds, medians; "
        f"'>=' = the appliance kept up with the generator (a lower bound)",
        "",
        f"{'size':>5} {'mix':<12} {'appliance':<13} {'saturation':>11} {'no-loss':>9} "
        f"{'p50 us':>7} {'p99 us':>7} {'loss@lat':>9} {'invalid':>8} {'other load':>10}",
    ]
    for (name, mix, size), s in sorted(
        summary.items(), key=lambda kv: (kv[0][2], kv[0][1], list(APPLIANCES).index(kv[0][0]))
    ):
        lines.append(
            f"{size:>5} {mix:<12} {name:<13} "
            f"{kpps(s['saturation_pps'], s['generator_bound']):>11} "
            f"{kpps(s['no_loss_pps'], s['no_loss_generator_bound']):>9} "
            f"{s['p50_us']:>7.1f} {s['p99_us']:>7.0f} "
            f"{s['latency_loss'] * 100:>8.3f}% {s['invalid']:>8} "
            f"{s['other_cores']:>9.2f}c"
        )
    for (name, mix, size), s in summary.items():
        if s["invalid"]:
            lines.append(f"  invalid {name} {mix} {size}: {s['invalid_reasons']}")
    lines += ["", "ratios geneve / floor (same run):"]
    lines += [f"  {line}" for line in ratios(summary)]
    return "\n".join(lines)


def ratios(summary: dict[tuple[str, str, int], dict[str, Any]]) -> list[str]:
    out = []
    sizes = sorted({k[2] for k in summary})
    checks = [  # (geneve mix, floor, target for saturation ratio)
        ("forward", "floor_single", 1.0),
        ("forward", "floor_batch", 0.75),
        ("rules", "floor_single", 0.8),
    ]
    for size in sizes:
        for mix, floor, target in checks:
            g = summary.get(("geneve", mix, size))
            f = summary.get((floor, "forward", size))
            if not g or not f:
                continue
            sat = g["saturation_pps"] / f["saturation_pps"] if f["saturation_pps"] else 0.0
            nl = g["no_loss_pps"] / f["no_loss_pps"] if f["no_loss_pps"] else 0.0
            p50 = g["p50_us"] / f["p50_us"] if f["p50_us"] > 0 else float("nan")
            bound = (
                " (floor generator-bound: ratio is an upper bound)"
                if (f["generator_bound"])
                else ""
            )
            verdict = "meets" if sat >= target else "misses"
            lat = "meets" if p50 <= 2 else "misses"
            out.append(
                f"{size:>5} geneve {mix:<7} / {floor:<12}: saturation {sat:.2f}x "
                f"({verdict} >= {target}x){bound}, no-loss {nl:.2f}x, "
                f"p50 {p50:.2f}x ({lat} <= 2x, {g['p50_us'] - f['p50_us']:+.1f} us)"
            )
    for size in sizes:  # flows: tracking's cost, and flow verdicts against the floor
        f = summary.get(("floor_single", "forward", size))
        rows: tuple[tuple[str, str, float | None], ...] = (
            ("geneve-noflows", "forward", None),
            ("geneve-noflows", "rules", None),
            ("geneve-verdict", "forward", 1.0),
            ("geneve-verdict-py", "forward", None),
        )
        for name, mix, wanted in rows:
            g = summary.get((name, mix, size))
            if not g or not f or not f["saturation_pps"]:
                continue
            sat = g["saturation_pps"] / f["saturation_pps"]
            goal = ""
            if wanted is not None:
                goal = f" ({'meets' if sat >= wanted else 'misses'} >= {wanted}x)"
            line = f"{size:>5} {name} {mix:<7} / floor_single: saturation {sat:.2f}x{goal}"
            on = summary.get(("geneve", mix, size))
            if name == "geneve-noflows" and on and g["saturation_pps"]:
                cost = on["saturation_pps"] / g["saturation_pps"]
                line += f"; geneve (flows on) / --no-flows {cost:.2f}x"
            out.append(line)
    for size in sizes:  # the egress filter against the floors, all on the egress mix
        g = summary.get(("geneve-egress", "egress", size))
        egress_floors: tuple[tuple[str, float | None], ...] = (
            ("floor_single", 0.9),
            ("floor_batch", None),
        )
        for floor, wanted in egress_floors:
            f = summary.get((floor, "egress", size))
            if not g or not f or not f["saturation_pps"] or not f["no_loss_pps"]:
                continue
            sat = g["saturation_pps"] / f["saturation_pps"]
            goal = ""
            if wanted is not None:
                goal = f" ({'meets' if sat >= wanted else 'misses'} >= {wanted}x)"
            out.append(
                f"{size:>5} geneve-egress egress / {floor:<12}: saturation {sat:.2f}x{goal}, "
                f"no-loss {g['no_loss_pps'] / f['no_loss_pps']:.2f}x, "
                f"p50 {g['p50_us'] - f['p50_us']:+.1f} us"
            )
        for name in ("geneve-egress", *FLOORS):
            e = summary.get((name, "egress", size))
            if e and e["data_per_hello"] == e["data_per_hello"]:  # not NaN: it ran
                out.append(
                    f"{size:>5} egress mix at {name}'s saturation: "
                    f"{e['hellos_per_s']:,.0f} connections/s, each a ClientHello then "
                    f"{e['data_per_hello']:.0f} data frames"
                )
    for size in sizes:  # a rewrite that grows against one of the same length (issue 16)
        g = summary.get(("geneve-grow", "rewrite", size))
        s = summary.get(("geneve-same", "rewrite-same", size))
        if g and s and s["saturation_pps"] and s["no_loss_pps"]:
            out.append(
                f"{size:>5} geneve-grow rewrite / geneve-same rewrite-same: saturation "
                f"{g['saturation_pps'] / s['saturation_pps']:.2f}x, no-loss "
                f"{g['no_loss_pps'] / s['no_loss_pps']:.2f}x, p50 "
                f"{g['p50_us'] - s['p50_us']:+.1f} us"
            )
    for size in sizes:  # this checkout against --baseline's, mix by mix, in the same run
        for mix in ("forward", "rules"):
            g = summary.get(("geneve", mix, size))
            b = summary.get(("geneve-base", mix, size))
            if g and b and b["saturation_pps"]:
                out.append(
                    f"{size:>5} geneve {mix:<7} / geneve-base : saturation "
                    f"{g['saturation_pps'] / b['saturation_pps']:.2f}x, p50 "
                    f"{g['p50_us'] - b['p50_us']:+.1f} us"
                )
    clean = all(s["invalid"] == 0 for s in summary.values())
    lossless = all(s["latency_loss"] == 0 for s in summary.values())
    dups = sum(s["duplicates"] for s in summary.values())
    out.append(
        f"invalid replies: {'none' if clean else 'SOME (see the invalid column)'}"
        f" ({sum(s['validated'] for s in summary.values())} checked); duplicates: {dups}; "
        f"loss at the latency rate: {'none' if lossless else 'SOME (see loss@lat)'}"
    )
    return out


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a short run (under 2 min)")
    p.add_argument("--rounds", type=int, help="rounds (default 3)")
    p.add_argument("--appliances", help="comma-separated subset of " + ",".join(APPLIANCES))
    p.add_argument("--sizes", help="comma-separated frame sizes (default 156 quick, 156,1500)")
    p.add_argument("--gen-cpu", type=int, default=0, help="generator core (default 0)")
    p.add_argument("--app-cpu", type=int, default=1, help="appliance core (default 1)")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value for generator and appliance, e.g. -10 on a busy machine",
    )
    p.add_argument(
        "--tx",
        choices=("packet", "raw"),
        default="packet",
        help="how the generator sends (default packet: AF_PACKET, faster)",
    )
    p.add_argument(
        "--flow-packets",
        type=int,
        default=200,
        help="egress mix: data frames per connection after its ClientHello, both ways together "
        "(default 200: 100 each way)",
    )
    p.add_argument("--json", type=Path, help="write every result to this file")
    p.add_argument(
        "--baseline",
        type=Path,
        help="the Python of another checkout's venv (e.g. ../before/.venv/bin/python): its "
        "daemon runs as geneve-base beside this one, alternating, for a before/after table",
    )
    return p.parse_args(argv)


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    if args.sizes:
        plan = Plan(**{**plan.__dict__, "sizes": tuple(int(s) for s in args.sizes.split(","))})
    if args.appliances:
        names = tuple(a.strip() for a in args.appliances.split(","))
        unknown = [n for n in names if n not in APPLIANCES]
        if unknown:
            print(f"unknown appliance(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        plan = Plan(**{**plan.__dict__, "appliances": names})
    global BASELINE_PYTHON
    if args.baseline is not None:
        if not os.access(args.baseline, os.X_OK):
            print(f"--baseline: {args.baseline} is not an executable Python", file=sys.stderr)
            return 2
        BASELINE_PYTHON = args.baseline.absolute()
        if "geneve-base" not in plan.appliances:
            plan = Plan(**{**plan.__dict__, "appliances": (*plan.appliances, "geneve-base")})
    elif "geneve-base" in plan.appliances:
        print("geneve-base needs --baseline PYTHON", file=sys.stderr)
        return 2
    if args.flow_packets < 1:
        print("--flow-packets must be at least 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    if max(args.gen_cpu, args.app_cpu) >= (os.cpu_count() or 1) or args.gen_cpu == args.app_cpu:
        print("--gen-cpu and --app-cpu must be two different existing cores", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # even when started with SIGINT ignored
    # The script itself stays off the appliance's core.
    os.sched_setaffinity(0, {args.gen_cpu})
    info = {
        "machine": machine(),
        "gen_cpu": args.gen_cpu,
        "app_cpu": args.app_cpu,
        "nice": args.nice,
        "tx": args.tx,
        "rounds": plan.rounds,
        "plan": plan.__dict__,
        "source": source_state(),
    }
    topo = Topology()
    results: list[dict[str, Any]] = []
    running: Running | None = None
    workdir = Path(tempfile.mkdtemp(prefix="geneve-bench-"))
    started = time.monotonic()
    try:
        binaries = build(workdir)
        if any("egress" in mixes_for(APPLIANCES[name], plan) for name in plan.appliances):
            for size in plan.sizes:
                check_egress_mix(binaries / "loadgen", size)
        if any(mix.startswith("rewrite") for n in plan.appliances for mix in APPLIANCES[n].mixes):
            for size in plan.sizes:
                check_rewrite_mix(binaries / "loadgen", size)
        topo.up()
        gen = Generator(
            topo, binaries / "loadgen", args.gen_cpu, args.nice, args.tx, args.flow_packets
        )
        for rnd in range(plan.rounds):
            for name in plan.appliances:
                app = APPLIANCES[name]
                argv = in_ns(topo.app_ns, args.app_cpu, args.nice, app.command(binaries))
                meter = CpuMeter()
                state = source_state()
                running = Running(name, argv, workdir / f"{name}-{rnd}.log")
                wait_ready(gen, running)
                sizes = [s for s in plan.sizes if app.sizes is None or s in app.sizes]
                measured = []
                for size in sizes:
                    for mix in mixes_for(app, plan):
                        m = measure(gen, mix, size, plan)
                        m.update(appliance=name, mix=mix, size=size, round=rnd)
                        measured.append(m)
                        print(
                            f"round {rnd + 1}/{plan.rounds} {name:<13} {mix:<7} {size:>5}: "
                            f"saturation {kpps(m['saturation_pps'], m['generator_bound'])}"
                            f" no-loss {kpps(m['no_loss_pps'], m['no_loss_generator_bound'])}"
                            f" p50 {m['p50_us']:.1f} us "
                            f"p99 {m['p99_us']:.0f} us invalid {m['invalid']}",
                            flush=True,
                        )
                last = running.stop()  # reaped: its CPU time is in RUSAGE_CHILDREN now
                running = None
                noise = meter.stop()
                for m in measured:
                    m["noise"] = noise
                    m["source"] = state
                    m["appliance_log"] = last
                results.extend(measured)
        summary = summarize(results)
        info["elapsed_s"] = round(time.monotonic() - started, 1)
        states = list(
            dict.fromkeys(r["source"] for r in results if r["appliance"].startswith("geneve"))
        )
        if len(states) > 1:
            info["source"] = " -> ".join(states)
            info["source_changed"] = True
        print()
        print(table(summary, info))
        if len(states) > 1:
            print(f"\nWARNING: src/ changed during the run: {len(states)} versions of the daemon")
        print(
            f"\n(took {info['elapsed_s']:.0f} s; 'other load' = CPU used by other processes"
            " during that appliance's runs, in cores)"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "info": info,
                        "summary": [
                            {"appliance": k[0], "mix": k[1], "size": k[2], **v}
                            for k, v in summary.items()
                        ],
                        "results": results,
                    },
                    indent=1,
                )
            )
    except (BenchmarkError, EmulatorError) as err:
        print(f"benchmark: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if running is not None:
            running.stop()
        topo.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
