"""What tracking flows costs: time per packet through Pipeline.handle, memory per flow.

    python benchmarks/flows.py           # a few minutes (1,000,000 flows under tracemalloc)
    python benchmarks/flows.py --quick   # under a minute, rougher, 100,000 flows only

Time: the 156-byte GWLB frame of benchmarks/codec.py (UDP in IPv4, three GWLB options), copied
into a ReceiveBuffer and handed to ``Pipeline.handle`` with a modifier that does nothing, so
the rows differ only by what the pipeline does around it:

- flows off (the default);
- flows on, a packet of an existing flow (the same 5-tuple again);
- flows on, every packet a new flow (distinct source addresses; a fresh table per round);
- flows on, an existing flow whose verdict is FORWARD (the modifier is not called);
- the first two again with the pure-Python table (``PyFlowTable``), beside the C one that
  ``FlowTable`` makes when it is built. (The appliance's fast path decides most packets of
  flows with a verdict in C, without ``handle``: benchmarks/appliance.py measures that.)

Each round runs every row once, in a rotating order, as a batch of calls timed with
time.perf_counter_ns; the table shows the median over rounds of ns per packet, and the cost of
the copy alone (memoryview slice assignment into the buffer) for reference. GC stays on.

Memory, pure-Python table: ``track`` on N distinct flows (the packet's source address
rewritten in place, so the frames cost nothing), measured with tracemalloc: everything the
table holds (the flows, the keys, the dict, the deadline heap, the early-drop order) divided
by N. Twice: flows that saw one packet only (each also in the early-drop order) and flows that
saw a reply.

Memory, C table: the growth of the process's resident memory (/proc/self/statm, which sees
C's allocations) over N distinct flows, divided by N: made by the fast path as the appliance
makes them (batches of 64 frames through ``geneve_fast_forward``: no Python object per flow),
and made through ``Pipeline.handle`` (each flow also has the Python view the modifier saw).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable

import geneve
from geneve import FlowTable, Packet, Pipeline, ReceiveBuffer, Verdict
from geneve._flows import CFlowTable, PyFlowTable

FRAME_SIZE = 156
SRC, DST = 68 + 12, 68 + 16  # the inner IPv4 addresses in the usual GWLB frame


def frame(src: int = 0xC0000201, sport: int = 40000, dport: int = 53) -> bytearray:
    payload = b"x" * (FRAME_SIZE - 68 - 28)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, 0xC6336414)
    out = geneve.build_frame(ip + udp)
    assert len(out) == FRAME_SIZE
    return out


def nothing(packet: Packet) -> None:
    return None


def forward_flow(packet: Packet) -> None:
    flow = getattr(packet, "flow", None)
    if flow is not None:
        flow.verdict = Verdict.FORWARD


def timing(rounds: int, batch: int) -> dict[str, float]:
    same = bytes(frame())
    distinct = [bytes(frame(src=0x0A000000 + i)) for i in range(batch)]
    buf = ReceiveBuffer()
    view = memoryview(buf)
    n = len(same)

    def copy_only() -> Callable[[], None]:
        def run() -> None:
            for _ in range(batch):
                view[:n] = same

        return run

    def repeated(pipeline: Pipeline) -> Callable[[], None]:
        handle = pipeline.handle
        handle(bytearray(same), n, 0.0)  # the flow exists (and its verdict is set) before

        def run() -> None:
            for _ in range(batch):
                view[:n] = same
                handle(buf, n, 1.0)

        return run

    def new_flows(table: type[FlowTable] = FlowTable) -> Callable[[], None]:
        pipeline = Pipeline(nothing, flows=table(max_flows=batch * 2))
        handle = pipeline.handle

        def run() -> None:
            for data in distinct:
                view[:n] = data
                handle(buf, n, 1.0)

        return run

    rows: dict[str, Callable[[], Callable[[], None]]] = {
        "copy into the buffer only": copy_only,
        "handle(), flows off": lambda: repeated(Pipeline(nothing)),
        "handle(), flows on, existing flow": lambda: repeated(Pipeline(nothing, flows=True)),
        "handle(), flows on, new flow each packet": new_flows,
        "handle(), flows on, flow verdict FORWARD": lambda: repeated(
            Pipeline(forward_flow, flows=True)
        ),
        "handle(), Python table, existing flow": lambda: repeated(
            Pipeline(nothing, flows=PyFlowTable())
        ),
        "handle(), Python table, new flow each packet": lambda: new_flows(PyFlowTable),
    }
    results: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = rows[name]()  # set-up outside the timing
            start = time.perf_counter_ns()
            run()
            results[name].append((time.perf_counter_ns() - start) / batch)
    return {name: statistics.median(values) for name, values in results.items()}


def bytes_per_flow(count: int, replied: bool) -> float:
    forward = Packet.parse(frame(sport=1000, dport=2000))
    back = Packet.parse(frame(sport=2000, dport=1000))
    back.buf[SRC:DST], back.buf[DST : DST + 4] = forward.buf[DST : DST + 4], forward.buf[SRC:DST]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = PyFlowTable(max_flows=count)
    track = table.track
    out, into = forward.buf, back.buf
    for i in range(count):
        address = (0x0A000000 + i).to_bytes(4, "big")
        out[SRC:DST] = address
        track(forward, 1.0)
        if replied:
            into[DST : DST + 4] = address
            track(back, 1.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(table) == count
    return (after - before) / count


def resident() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * PAGE


PAGE = 4096


def c_bytes_per_flow(count: int, through: str) -> tuple[float, float]:
    """Resident bytes per flow of the C table over ``count`` flows, and what it counts itself."""
    from geneve._transport import FastPath, Slots

    gc.collect()
    table = CFlowTable(max_flows=count)
    base = resident()
    empty = table.memory
    template = bytes(frame(sport=1000, dport=2000))
    if through == "fast path":
        # A modifier that wants no UDP or TCP packet: the fast path takes every frame.
        modifier = geneve.declare_interest(nothing, udp_ports=[], tcp_ports=[])
        pipeline = Pipeline(modifier, flows=table)
        slots = Slots(64, c=True)
        fast = FastPath(slots, pipeline.interest, 8500, 6081, table)
        fast.trust(1)
        for start in range(0, count, 64):
            n = min(64, count - start)
            for i in range(n):
                buf = slots.bufs[i]
                buf[: len(template)] = template
                buf[SRC:DST] = (0x0A000000 + start + i).to_bytes(4, "big")
                slots.lens[i] = len(template)
                slots.sources[i] = 1
            done, _todo = fast.forward(n, 1.0)
            assert done == n
    else:
        pipeline = Pipeline(nothing, flows=table)
        data = bytearray(template)
        for i in range(count):
            data[SRC:DST] = (0x0A000000 + i).to_bytes(4, "big")
            pipeline.handle(data, len(data), 1.0)
    assert len(table) == count
    return (resident() - base) / count, (table.memory - empty) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, batch = (7, 5_000) if args.quick else (21, 20_000)
    medians = timing(rounds, batch)
    print(f"{'156-byte frame, a modifier that does nothing':<48} {'ns/packet':>10}")
    for name, value in medians.items():
        print(f"{name:<48} {value:>10.0f}")
    off = medians["handle(), flows off"]
    for name in list(medians)[2:]:
        print(f"{name + ' / flows off':<60} {medians[name] / off:>6.2f}")
    print(f"{rounds} rounds of {batch} packets; medians; Python {sys.version.split()[0]}")
    print()
    sizes = (100_000,) if args.quick else (100_000, 1_000_000)
    print(f"{'bytes per tracked flow (tracemalloc)':<48} " + " ".join(f"{n:>10,}" for n in sizes))
    for replied in (False, True):
        label = "Python table, flows with a reply" if replied else "Python table, no reply"
        values = [bytes_per_flow(n, replied) for n in sizes]
        print(f"{label:<48} " + " ".join(f"{v:>10.0f}" for v in values))
    head = "C table, bytes per flow (resident / counted)"
    print(f"{head:<48} " + " ".join(f"{n:>10,}" for n in sizes))
    for through in ("fast path", "Pipeline.handle"):
        pairs = [c_bytes_per_flow(n, through) for n in sizes]
        label = f"C table, flows made by {through}"
        cells = [f"{rss:>5.0f} /{counted:>4.0f}" for rss, counted in pairs]
        print(f"{label:<48} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
