"""A new-flow flood against the daemon: memory stays within --max-flows, established flows lose
nothing.

Usage (root; gcc and iproute2 needed)::

    .venv/bin/python benchmarks/flood.py                 # about 2 minutes
    .venv/bin/python benchmarks/flood.py --tuples 500000 --bounds 50000   # shorter

The namespaces, generator and pinning of benchmarks/appliance.py. For each ``--max-flows``
bound, a daemon with its default settings (flows on, the reference rules) is started, and:

1. **flood at full rate**: ``loadgen --distinct 1 --rate 0`` sends ``--tuples`` frames, each its
   own inner 5-tuple (a flow the table has never seen), as fast as the generator can; the
   daemon's resident memory (``/proc/PID/status`` VmRSS) is read before and after, and its
   ``/metrics`` gives flows created, active and ended early;
2. **flood below saturation, established flows beside it**: the same number of new tuples at
   ``--below`` of the full-rate reply rate, while a second generator runs 256 established
   flows at ``--established-pps`` and checks every reply: its loss is what the flood cost them.

What must hold: the growth of resident memory follows the bound, not the number of tuples
(at most about 200 bytes per flow of the bound plus a constant), every early drop is counted,
and the established flows lose nothing in phase 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from appliance import (  # the benchmark's own plumbing, not a package
    BenchmarkError,
    Running,
    Topology,
    build,
    children,
    in_ns,
    on_signal,
)

from geneve._emulator.namespaces import ip


def resident(pid: int) -> int:
    """Resident memory of ``pid`` and its children (worker processes), in bytes."""
    total = 0
    for proc in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{proc}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def metrics(ns: str, port: int) -> dict[str, float]:
    """The daemon's /metrics, read from inside its namespace: name{labels} -> value."""
    code = (
        "import urllib.request;"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read()"
        ".decode())"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    values: dict[str, float] = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


#: The established flows' generator has an address of its own (each generator holds the
#: Geneve port on its address to take its replies).
ESTABLISHED_ADDR = "10.251.0.3"


def second_address(topo: Topology) -> None:
    ip("-n", topo.gen_ns, "addr", "add", f"{ESTABLISHED_ADDR}/24", "dev", topo.gen_if)
    mac = topo._mac(topo.gen_ns, topo.gen_if)
    ip(*f"-n {topo.app_ns} neigh replace {ESTABLISHED_ADDR} lladdr {mac} dev {topo.app_if} "
       "nud permanent".split())  # fmt: skip


def loadgen(
    topo: Topology, binary: Path, cpu: int, *, distinct: bool, rate: float, packets: int,
    duration: float, flows: int = 256, src: str | None = None,
) -> subprocess.Popen[str]:  # fmt: skip
    args = [
        str(binary),
        *f"--src {src or topo.gen_addr} --dst {topo.app_addr} --mix forward --size 156".split(),
        *f"--rate {int(rate)} --duration {duration} --max-packets {packets}".split(),
        *f"--flows {flows} --distinct {int(distinct)} --validate-every 1".split(),
        *f"--tx packet --ifname {topo.gen_if} --dst-mac {topo.app_mac}".split(),
    ]
    return subprocess.Popen(
        in_ns(topo.gen_ns, cpu, 0, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise BenchmarkError(f"loadgen failed ({proc.returncode}): {err.strip()}")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def flows_of(m: dict[str, float]) -> tuple[float, float, float]:
    return (
        m.get("geneve_flows_created_total", -1.0),
        m.get("geneve_flows_active", -1.0),
        m.get("geneve_flows_early_dropped_total", -1.0),
    )


def one_bound(
    topo: Topology, binaries: Path, args: argparse.Namespace, bound: int, workdir: Path
) -> dict[str, Any]:
    daemon = [sys.executable, "-m", "geneve.appliance", "--max-flows", str(bound)]
    running = Running(f"geneve-{bound}", in_ns(topo.app_ns, args.app_cpu, 0, daemon),
                      workdir / f"daemon-{bound}.log")  # fmt: skip
    out: dict[str, Any] = {"max_flows": bound, "tuples": args.tuples}
    try:
        probe = loadgen(topo, binaries / "loadgen", args.gen_cpu, distinct=False, rate=5000,
                        packets=2000, duration=0.5)  # fmt: skip
        deadline = time.monotonic() + 15
        while result(probe, 30)["received"] == 0:
            if time.monotonic() > deadline or running.proc.poll() is not None:
                raise BenchmarkError(f"the daemon did not answer: {running.stop()}")
            time.sleep(0.3)
            probe = loadgen(topo, binaries / "loadgen", args.gen_cpu, distinct=False,
                            rate=5000, packets=2000, duration=0.5)  # fmt: skip
        pid = running.proc.pid
        out["rss_before"] = resident(pid)
        # 1. Full rate.
        flood = loadgen(topo, binaries / "loadgen", args.gen_cpu, distinct=True, rate=0,
                        packets=args.tuples, duration=120)  # fmt: skip
        full = result(flood, 200)
        time.sleep(1.0)
        out["rss_after_full"] = resident(pid)
        out["full"] = {k: full[k] for k in ("sent", "tx_pps", "received", "rx_pps", "loss")}
        out["flows_after_full"] = flows_of(metrics(topo.app_ns, 8080))
        # 2. Below saturation, with established flows checked beside it.
        rate = max(1000.0, full["rx_pps"] * args.below)
        seconds = args.tuples / rate
        established = loadgen(topo, binaries / "loadgen", args.gen_cpu, distinct=False,
                              rate=args.established_pps, packets=50_000_000,
                              duration=seconds + 1.0, src=ESTABLISHED_ADDR)  # fmt: skip
        time.sleep(0.5)
        flood = loadgen(topo, binaries / "loadgen", args.gen_cpu, distinct=True, rate=rate,
                        packets=args.tuples, duration=seconds + 5)  # fmt: skip
        below = result(flood, seconds + 60)
        kept = result(established, seconds + 60)
        out["rss_after_below"] = resident(pid)
        out["below"] = {k: below[k] for k in ("sent", "tx_pps", "received", "rx_pps", "loss")}
        out["established"] = {
            k: kept[k] for k in ("sent", "received", "lost", "loss", "invalid", "tx_pps")
        }
        out["flows_after_below"] = flows_of(metrics(topo.app_ns, 8080))
    finally:
        out["daemon_log_tail"] = running.stop()
    return out


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'max-flows':>10} {'tuples':>9} {'full kpps':>9} {'RSS +MB':>8} {'B/flow':>7} "
        f"{'created':>9} {'active':>8} {'early drops':>11} {'below kpps':>10} "
        f"{'est. sent':>9} {'est. lost':>9}"
    ]
    for r in results:
        growth = max(r["rss_after_full"], r["rss_after_below"]) - r["rss_before"]
        created, active, early = r["flows_after_below"]
        lines.append(
            f"{r['max_flows']:>10,} {r['tuples']:>9,} {r['full']['rx_pps'] / 1000:>9.0f} "
            f"{growth / 2**20:>8.1f} {growth / r['max_flows']:>7.0f} {created:>9,.0f} "
            f"{active:>8,.0f} {early:>11,.0f} {r['below']['tx_pps'] / 1000:>10.0f} "
            f"{r['established']['sent']:>9,} {r['established']['lost']:>9,}"
        )
    lines.append(
        "RSS +MB: the daemon's resident memory after the floods less before; B/flow: that over "
        "the bound. est.: the 256 established flows run beside the flood below saturation."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tuples", type=int, default=2_000_000, help="new 5-tuples per flood")
    p.add_argument("--bounds", default="100000,1000000", help="--max-flows values to run")
    p.add_argument("--below", type=float, default=0.6, help="phase 2 rate / full reply rate")
    p.add_argument("--established-pps", type=float, default=5000)
    p.add_argument("--gen-cpu", type=int, default=0)
    p.add_argument("--app-cpu", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    topo = Topology()
    workdir = Path(tempfile.mkdtemp(prefix="geneve-flood-"))
    results = []
    try:
        binaries = build(workdir)
        topo.up()
        second_address(topo)
        for bound in (int(b) for b in args.bounds.split(",")):
            results.append(one_bound(topo, binaries, args, bound, workdir))
            print(report(results[-1:]).splitlines()[1], flush=True)
    except BenchmarkError as err:
        print(f"flood: {err}", file=sys.stderr)
        return 1
    finally:
        topo.down()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
