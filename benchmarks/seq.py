"""What TCP rewrites that change the length cost (sequence adjustment, docs/codec.md).

    python benchmarks/seq.py                 # both parts, a few minutes (the second needs root)
    python benchmarks/seq.py --quick         # fewer rounds
    python benchmarks/seq.py --no-daemon     # the pipeline only

Pipeline (frames/s, in process): one TCP connection's server stream of 156- or 1500-byte GWLB
frames (outer IPv4 total length), each segment with one ``http://`` in it, consecutive sequence
numbers, and a client ACK after every second segment, handed to ``Pipeline.handle`` (flows
on, the C table when built) through a ReceiveBuffer. Two modifiers that differ only in the
replacement: ``http://`` -> ``https://`` (one byte longer: the flow keeps a record, every
segment and ACK is mapped through it) and ``http://`` -> ``HTTP://`` (the same length: no
record, the codec's in-place rewrite). A fresh pipeline per run; each round runs both, in
alternating order; the table shows medians over rounds and the ratio.

Daemon (seconds per transfer): the emulator (network namespaces, its Python data plane) and
``python -m geneve.appliance`` with each modifier (and, for reference, with one that declares
no interest in the port, so every frame goes through C), a client fetching 100 KB of lines
with a link each from a server over one TCP connection; rounds alternate the modifiers (a new
emulator and daemon each), five transfers each, median. The emulator's data plane is the
bottleneck of this path, so the ratio says more than the figures.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where benchmarks/inspect.py
# would hide the standard library's inspect, which geneve imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import geneve
from geneve import FlowTable, Packet, Pipeline, ReceiveBuffer

HERE = Path(__file__).resolve().parent


def grow(packet: Packet) -> None:
    packet.replace_in_payload(b"http://", b"https://")


def same(packet: Packet) -> None:
    packet.replace_in_payload(b"http://", b"HTTP://")


def tcp_frame(payload: bytes, seq: int, ack: int, reply: bool) -> bytearray:
    server, client = bytes((10, 0, 0, 2)), bytes((10, 0, 0, 1))
    ports = (80, 40000) if reply else (40000, 80)
    src, dst = (server, client) if reply else (client, server)
    tcp = struct.pack("!HHIIBBHHH", *ports, seq, ack, 5 << 4, 0x18 if payload else 0x10,
                      65535, 0, 0) + payload  # fmt: skip
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0) + src + dst
    return geneve.build_frame(ip + tcp)


def stream(size: int, segments: int, growth: int) -> list[bytes]:
    """Server segments of ``size``-byte frames, a link in each, and the client's ACKs (of the
    stream as the client sees it: ``growth`` bytes longer a segment)."""
    room = size - 68 - 40
    half = (room - 7) // 2
    payload = b"a" * half + b"http://" + b"b" * (room - 7 - half)
    out = []
    for i in range(segments):
        out.append(bytes(tcp_frame(payload, 1000 + i * room, 5000, True)))
        if i % 2:
            out.append(bytes(tcp_frame(b"", 5000, 1000 + (i + 1) * (room + growth), False)))
    assert len(out[0]) == size
    return out


def run_pipeline(modifier: Callable[[Packet], None], frames: list[bytes]) -> float:
    """Seconds to hand every frame to a fresh pipeline."""
    pipeline = Pipeline(modifier, flows=FlowTable())
    buf = ReceiveBuffer()
    view = memoryview(buf)
    handle = pipeline.handle
    began = time.perf_counter_ns()
    for frame in frames:
        n = len(frame)
        view[:n] = frame
        handle(buf, n, 1.0)
    took = (time.perf_counter_ns() - began) / 1e9
    assert pipeline.stats.forwarded == len(frames), pipeline.stats.as_dict()
    return took


def pipeline_part(rounds: int, segments: int) -> list[str]:
    lines = ["| frame | `http://` -> `https://` (frames/s) | -> `HTTP://`, same length | ratio |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for size in (156, 1500):
        frames = {"grow": stream(size, segments, 1), "same": stream(size, segments, 0)}
        times: dict[str, list[float]] = {"grow": [], "same": []}
        for r in range(rounds):
            for name in ("grow", "same") if r % 2 == 0 else ("same", "grow"):
                modifier = grow if name == "grow" else same
                times[name].append(len(frames[name]) / run_pipeline(modifier, frames[name]))
        g, s = statistics.median(times["grow"]), statistics.median(times["same"])
        lines.append(f"| {size} B | {g / 1000:.1f}k | {s / 1000:.1f}k | {g / s:.2f} |")
    return lines


# -- the daemon through the emulator ------------------------------------------------------------

RULES = """
from geneve import declare_interest

def _grow(packet):
    packet.replace_in_payload(b"http://", b"https://")

def _same(packet):
    packet.replace_in_payload(b"http://", b"HTTP://")

def _none(packet):
    return None

grow = declare_interest(_grow, tcp_ports=[9000], payload_contains=[b"http://"], max_growth=40)
same = declare_interest(_same, tcp_ports=[9000], payload_contains=[b"http://"])
none = declare_interest(_none, tcp_ports=[], udp_ports=[])
"""


def daemon_part(rounds: int, transfers: int) -> list[str]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_seq_live import CLIENT, PORT, SERVER, text

    from geneve._emulator import Emulator

    where = Path(tempfile.mkdtemp(prefix="geneve-seq-bench-"))
    (where / "seqrules.py").write_text(RULES)
    (where / "down.txt").write_bytes(text())
    (where / "up.txt").write_bytes(b"")
    seconds: dict[str, list[float]] = {"grow": [], "same": [], "none": []}
    order = ["grow", "same", "none"]
    for r in range(rounds):
        for name in order[r % 3 :] + order[: r % 3]:
            with Emulator() as emu:
                argv = ["env", f"PYTHONPATH={where}", *emu.appliance_command(f"seqrules:{name}")]
                emu.start_appliance(argv)
                emu.wait_healthy()
                emu.spawn("server", [sys.executable, "-c", SERVER, str(where / "down.txt"),
                                     str(PORT)])  # fmt: skip
                deadline = time.monotonic() + 10
                while "LISTEN" not in emu.run("server", ["ss", "-ltn", f"sport = :{PORT}"]).stdout:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server never listened")
                    time.sleep(0.05)
                for _ in range(transfers):
                    began = time.monotonic()
                    done = emu.run("client", [sys.executable, "-c", CLIENT, "down",
                                              emu.addressing.server, str(PORT),
                                              str(where / "up.txt"), str(where / "got.bin")],
                                   timeout=120)  # fmt: skip
                    took = time.monotonic() - began
                    got = (where / "got.bin").read_bytes()
                    # Whole, every link rewritten or (straddling two segments) left alone.
                    undone = got.replace(b"https://", b"http://").replace(b"HTTP://", b"http://")
                    if done.returncode or undone != text():
                        raise SystemExit(f"{name}: the transfer failed: {done.stderr[-300:]}")
                    seconds[name].append(took)
    base = statistics.median(seconds["same"])
    lines = ["| modifier | seconds per 100 KB transfer (median) | MB/s | against same length |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    labels = {"grow": "`http://` -> `https://`", "same": "-> `HTTP://`, same length",
              "none": "no interest in the port (all in C)"}  # fmt: skip
    for name in order:
        m = statistics.median(seconds[name])
        lines.append(f"| {labels[name]} | {m:.3f} | {len(text()) / m / 1e6:.2f} | {m / base:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--no-daemon", action="store_true", help="the pipeline part only")
    args = parser.parse_args()
    rounds = 5 if args.quick else 11
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("\n".join(pipeline_part(rounds, 2000 if args.quick else 5000)))
    if not args.no_daemon:
        print()
        print("\n".join(daemon_part(3 if args.quick else 5, 3 if args.quick else 5)))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
