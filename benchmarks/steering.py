"""How evenly does the steering program spread flows over workers? A simulation, no kernel.

    python benchmarks/steering.py

Runs ``geneve._steering``'s program (through its interpreter, which the tests hold to the
kernel) over sets of inner flows and prints, for 2 to 8 workers, the busiest worker's share
relative to a perfectly even one (1.00 = even; 1.10 = the busiest has 10 % more flows than the
mean). Beside each, in brackets, the median of the same figure for a uniformly random
assignment of the same number of flows (200 draws): what any good hash would give.
"""

from __future__ import annotations

import random
import statistics
import struct
from collections.abc import Callable

from geneve._steering import program, run

Flow = tuple[bytes, bytes]


def payload(src: bytes, dst: bytes) -> bytes:
    """A GWLB Geneve header (8 words of options) and the start of the inner IP header."""
    if len(src) == 4:
        return bytes([8, 0]) + struct.pack("!HI", 0x0800, 0) + bytes(32) + bytes(12) + src + dst
    return bytes([8, 0]) + struct.pack("!HI", 0x86DD, 0) + bytes(32) + bytes(8) + src + dst


def scenarios(rnd: random.Random) -> dict[str, Callable[[], list[Flow]]]:
    server4, server6 = bytes([10, 1, 0, 5]), bytes.fromhex("20010db8000000020000000000000001")
    prefix6 = bytes.fromhex("20010db800000001")
    return {
        "10,000 random IPv4 pairs": lambda: [
            (rnd.randbytes(4), rnd.randbytes(4)) for _ in range(10_000)
        ],
        "10,000 random IPv6 pairs": lambda: [
            (rnd.randbytes(16), rnd.randbytes(16)) for _ in range(10_000)
        ],
        "4,096 clients 10.0.0.0/20 to one server": lambda: [
            ((0x0A000000 + i).to_bytes(4, "big"), server4) for i in range(4096)
        ],
        "4,096 clients of one IPv6 /64 (random IIDs) to one server": lambda: [
            (prefix6 + rnd.randbytes(8), server6) for _ in range(4096)
        ],
        "4,096 pairs 10.0.x.y <-> 10.1.x.y (both vary together)": lambda: [
            (bytes([10, 0, i >> 8, i & 255]), bytes([10, 1, i >> 8, i & 255])) for i in range(4096)
        ],
        "256 clients 192.168.1.x to one server": lambda: [
            (bytes([192, 168, 1, i]), server4) for i in range(256)
        ],
        "256 clients x.0.0.1 (only the first octet varies) to one server": lambda: [
            (bytes([i, 0, 0, 1]), server4) for i in range(256)
        ],
    }


def busiest(counts: list[int], flows: int) -> float:
    return max(counts) / (flows / len(counts))


def main() -> None:
    rnd = random.Random(14)
    for name, make in scenarios(rnd).items():
        flows = make()
        cells = []
        for workers in range(2, 9):
            prog = program(workers)
            counts = [0] * workers
            for src, dst in flows:
                counts[run(prog, payload(src, dst))] += 1
            draws = []
            for _ in range(200):
                ideal = [0] * workers
                for _flow in flows:
                    ideal[rnd.randrange(workers)] += 1
                draws.append(busiest(ideal, len(flows)))
            cells.append(f"{busiest(counts, len(flows)):.2f} ({statistics.median(draws):.2f})")
        print(f"{name}\n  workers 2..8: " + "  ".join(cells))


if __name__ == "__main__":
    main()
