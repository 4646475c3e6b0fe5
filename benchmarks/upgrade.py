"""What an upgrade (SIGUSR2) costs: how long the sockets go unread, and what they hold meanwhile.

Usage::

    .venv/bin/python benchmarks/upgrade.py                       # about a minute
    .venv/bin/python benchmarks/upgrade.py --flows 1000 100000   # other table sizes

Between the moment the old process's workers stop reading and the moment the new copy's
workers read, frames wait in the sockets' receive queues. That gap is mostly the flow table
moving: each worker's ``Pipeline.hand_over()`` (every live flow as a record, pickled), the
channel, and ``Pipeline.take_over()`` in the new copy (unpickle, ``geneve_flow_restore``).
This measures that work in one process for tables of the sizes given (C table, flows with a
verdict and a small ``state``, medians of ``--rounds``), and how many frames one socket opened
as the appliance opens it (``SO_RCVBUF`` 4 MiB, capped by ``net.core.rmem_max``) holds unread,
at 156 and 1500 bytes, over loopback. Frames that arrive during the gap beyond what the queue
holds are lost: the gap times the frame rate must stay below it.
"""

from __future__ import annotations

import argparse
import pickle
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.frames import flow_frame  # the tests' frame builder

from geneve import Packet, Pipeline, Verdict
from geneve._flows import FlowTable

SO_RCVBUF = 4 << 20  # what geneve._sockets asks for


class Keeps:
    """A modifier that gives each flow a verdict, and with ``state`` a little state too (as
    stateful rules do: each such flow's state is pickled and its view made again)."""

    def __init__(self, state: bool) -> None:
        self.state = state

    def __call__(self, packet: Packet) -> None:
        flow = packet.flow  # type: ignore[attr-defined]
        if self.state:
            flow.state["rule"] = "allow-web"
        flow.verdict = Verdict.FORWARD


def fill(flows: int, state: bool) -> Pipeline:
    pipeline = Pipeline(Keeps(state), flows=FlowTable(max_flows=flows))
    for i in range(flows):
        a = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        frame = flow_frame(a, "192.0.2.1", "udp", sport=1024 + (i % 50000), payload=b"x")
        pipeline.handle(frame, len(frame), 1.0)
    assert pipeline.flows is not None and len(pipeline.flows) == flows
    return pipeline


def handover_ms(flows: int, rounds: int, state: bool) -> tuple[float, float, float]:
    """Medians (ms): hand_over + pickle, unpickle + take_over, and their sum."""
    old = fill(flows, state)
    out, into, total = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        data = pickle.dumps(old.hand_over(), pickle.HIGHEST_PROTOCOL)
        t1 = time.perf_counter()
        new = Pipeline(Keeps(state), flows=FlowTable(max_flows=flows))
        taken = new.take_over(pickle.loads(data), 2.0)
        t2 = time.perf_counter()
        assert taken == flows
        out.append((t1 - t0) * 1000)
        into.append((t2 - t1) * 1000)
        total.append((t2 - t0) * 1000)
    return statistics.median(out), statistics.median(into), statistics.median(total)


def queue_holds(size: int) -> int:
    """Datagrams of ``size`` bytes one unread socket holds, opened as the appliance opens it."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF)
        rx.bind(("127.0.0.1", 0))
        address = rx.getsockname()
        payload = b"x" * (size - 28)  # the outer IPv4 and UDP headers make it ``size``
        for _ in range(200_000):
            tx.sendto(payload, address)
        rx.setblocking(False)
        held = 0
        while True:
            try:
                rx.recv(65535)
            except BlockingIOError:
                return held
            held += 1
    finally:
        rx.close()
        tx.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    print(f"net.core.rmem_max = {rmem_max}; the appliance asks SO_RCVBUF {SO_RCVBUF}")
    print()
    print("| flows in one worker | flow.state | hand_over + pickle | unpickle + take_over "
          "| total | per flow |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for flows in args.flows:
        for state in (False, True):
            out, into, total = handover_ms(flows, args.rounds, state)
            print(f"| {flows:,} | {'set' if state else 'none'} | {out:.1f} ms | {into:.1f} ms "
                  f"| {total:.1f} ms | {1000 * total / flows:.2f} us |")  # fmt: skip
    print()
    print("| frame size | frames one unread socket holds |")
    print("| ---: | ---: |")
    for size in (156, 1500):
        print(f"| {size} B | {queue_holds(size):,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
