"""What the egress filter costs, in process: the mix of issue 15, and each new flow's decision.

    python benchmarks/egress.py            # about half a minute
    python benchmarks/egress.py --quick    # a few seconds, rougher numbers

In process means through ``geneve.Pipeline.handle`` (flows on, the C flow table when built),
without sockets or the appliance's C fast path: every frame enters Python, also those of a flow
with a FORWARD verdict, which the daemon would forward in C. So the mix's ratio here is the
filter against the cheapest flow-deciding rule in the same Python path, not against the C
floor of benchmarks/appliance.py (that needs its generator to open each flow with a
ClientHello).

The mix: 256 TCP flows, each a handshake, a real ClientHello (517 bytes, shaped like Debian
12's curl: tests/support/messages.py) to an allowed name, then 100 data packets in each
direction in 156-byte frames (68 bytes of outer IPv4, UDP and Geneve with GWLB's options, 88
of inner IPv4, TCP and 48 bytes of data), interleaved across the flows. Modifiers:

- ``egress``: ``DomainFilter(allow=[".example.com"])``;
- ``first-packet-forward``: ``flow.verdict = FORWARD`` on each flow's first packet
  (benchmarks/flow_rules.py), the cheapest decision a rule can take;
- ``every-packet``: returns None for every packet, deciding nothing.

Per new flow: µs of ``handle()`` for the frame that decides a flow, a ClientHello in one
segment (the flow's stream start, the parse, the lists, the verdict) and a DNS query over UDP
(the parse, the lists), each on a flow whose handshake was seen; beside it, the parse alone of
the same bytes by geneve.inspect, dpkt and scapy (benchmarks/parsers.py's functions).

Each round runs every case once, in a rotating order; the tables show medians over the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support.messages import dns_query  # noqa: E402

import geneve  # noqa: E402
from geneve.rules.egress import DomainFilter  # noqa: E402


def _load(name: str) -> Any:
    """A module of this folder, by path (see above for why not by sys.path)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARSERS = _load("parsers")
RULES = _load("flow_rules")
FLOWS = 256
DATA_PACKETS = 100  # per flow and direction
DATA = 48  # bytes of TCP data: 68 + 20 + 20 + 48 = 156-byte frames
CLIENT_NET, SERVER = "10.1.0.0", "10.2.0.1"
ACK, PSH_ACK, SYN, SYN_ACK = 0x10, 0x18, 0x02, 0x12


def tcp_frame(client: int, sport: int, seq: int, flags: int, payload: bytes, reply: bool) -> bytes:
    a = (int(ipaddress.ip_address(CLIENT_NET)) + client).to_bytes(4, "big")
    b = ipaddress.ip_address(SERVER).packed
    ports = (443, sport) if reply else (sport, 443)
    body = struct.pack("!HHIIBBHHH", *ports, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    src, dst = (b, a) if reply else (a, b)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, 6, 0) + src + dst
    return bytes(geneve.build_frame(ip + body, endpoint_id=5, flow_cookie=client + 1))


def udp_frame(client: int, sport: int, payload: bytes) -> bytes:
    a = (int(ipaddress.ip_address(CLIENT_NET)) + client).to_bytes(4, "big")
    body = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0) + a
    return bytes(geneve.build_frame(ip + ipaddress.ip_address(SERVER).packed + body))


def opening(flow: int, hello: bytes) -> list[bytes]:
    sport = 20000 + flow
    return [
        tcp_frame(flow, sport, 999, SYN, b"", False),
        tcp_frame(flow, sport, 4999, SYN_ACK, b"", True),
        tcp_frame(flow, sport, 1000, ACK, b"", False),
        tcp_frame(flow, sport, 1000, PSH_ACK, hello, False),
    ]


def mix(hello: bytes) -> list[bytes]:
    """The mix's frames in order: every flow opened, then their data interleaved."""
    frames = [frame for flow in range(FLOWS) for frame in opening(flow, hello)]
    data = b"d" * DATA
    for i in range(DATA_PACKETS):
        for flow in range(FLOWS):
            sport = 20000 + flow
            frames.append(
                tcp_frame(flow, sport, 1000 + len(hello) + i * DATA, PSH_ACK, data, False)
            )
            frames.append(tcp_frame(flow, sport, 5000 + i * DATA, PSH_ACK, data, True))
    assert len(frames[-1]) == 156
    return frames


MODIFIERS: dict[str, Callable[[], geneve.Modifier]] = {
    "egress": lambda: DomainFilter(allow=[".example.com"]),
    "first-packet-forward": lambda: RULES.first_packet_forward,
    "every-packet": lambda: RULES.every_packet,
}


def run_mix(make: Callable[[], geneve.Modifier], frames: list[bytes]) -> float:
    """Frames per second through a fresh pipeline."""
    pipeline = geneve.Pipeline(make(), flows=True)
    buffers = [bytearray(frame) for frame in frames]
    handle = pipeline.handle
    sent = 0
    start = time.perf_counter_ns()
    for buf in buffers:
        sent += len(handle(buf, len(buf), 1.0))
    took = time.perf_counter_ns() - start
    assert sent == len(frames), (sent, len(frames), pipeline.stats.drops)
    return len(frames) / took * 1e9


def decide_hello(hello: bytes, flows: int) -> float:
    """µs of handle() per ClientHello frame that decides its flow (handshakes seen first)."""
    pipeline = geneve.Pipeline(DomainFilter(allow=[".example.com"]), flows=True)
    hellos = []
    for flow in range(flows):
        *handshake, first = opening(flow, hello)
        for frame in handshake:
            buf = bytearray(frame)
            pipeline.handle(buf, len(buf), 1.0)
        hellos.append(bytearray(first))
    start = time.perf_counter_ns()
    for buf in hellos:
        pipeline.handle(buf, len(buf), 1.0)
    took = time.perf_counter_ns() - start
    assert pipeline.stats.forwarded == flows * 4
    return took / flows / 1000


def decide_query(query: bytes, flows: int) -> float:
    """µs of handle() per DNS query frame over UDP, each on a flow of its own."""
    pipeline = geneve.Pipeline(DomainFilter(allow=[".example.com"]), flows=True)
    frames = [bytearray(udp_frame(flow, 30000 + flow, query)) for flow in range(flows)]
    start = time.perf_counter_ns()
    for buf in frames:
        pipeline.handle(buf, len(buf), 1.0)
    took = time.perf_counter_ns() - start
    assert pipeline.stats.forwarded == flows
    return took / flows / 1000


def parse_cost(parse: Callable[[bytes], object], data: bytes, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        parse(data)
    return (time.perf_counter_ns() - start) / calls / 1000


def _parse_case(parse: Callable[[bytes], object], data: bytes, calls: int) -> Callable[[], float]:
    return lambda: parse_cost(parse, data, calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds, fewer flows decided")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (at least 5)")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else max(args.rounds, 5)
    decided = 256 if args.quick else 2048
    hello = PARSERS.curl_hello()
    query = dns_query((("www.example.com", 1, 1),), edns=True)
    frames = mix(hello)
    rates: dict[str, list[float]] = {name: [] for name in MODIFIERS}
    cases: dict[str, Callable[[], float]] = {
        "ClientHello, egress handle()": lambda: decide_hello(hello, decided),
        "DNS query, egress handle()": lambda: decide_query(query, decided),
    }
    for label, data, parsers in (
        ("ClientHello", hello, {"geneve.inspect": PARSERS.geneve_tls, "dpkt": PARSERS.dpkt_tls,
                                "scapy": PARSERS.scapy_tls}),
        ("DNS query", query, {"geneve.inspect": PARSERS.geneve_dns, "dpkt": PARSERS.dpkt_dns,
                              "scapy": PARSERS.scapy_dns}),
    ):  # fmt: skip
        for name, parse in parsers.items():
            assert parse(data) == "www.example.com", (name, parse(data))
            calls = decided if name != "scapy" else max(decided // 8, 32)
            cases[f"{label}, {name} parse"] = _parse_case(parse, data, calls)
    costs: dict[str, list[float]] = {name: [] for name in cases}
    names = list(MODIFIERS)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(run_mix(MODIFIERS[name], frames))
        for case, measure in cases.items():
            costs[case].append(measure())
    print(f"Python {sys.version.split()[0]}, {rounds} alternated rounds, medians")
    print(f"\nThe mix: {len(frames)} frames, {FLOWS} flows, in process (Pipeline.handle)\n")
    print("| modifier | kpps | x first-packet-forward |")
    print("| --- | ---: | ---: |")
    floor = statistics.median(rates["first-packet-forward"])
    for name in names:
        median = statistics.median(rates[name])
        print(f"| {name} | {median / 1000:.0f} | {median / floor:.2f} |")
    print(f"\nPer new flow ({len(hello)}-byte ClientHello, {len(query)}-byte query)\n")
    print("| case | µs |")
    print("| --- | ---: |")
    for case, values in costs.items():
        print(f"| {case} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
