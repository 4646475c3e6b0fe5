"""Tun bridge benchmark: ``geneve --tun`` against a minimal C tun bridge, on one machine.

Usage (root; gcc, iproute2 with tc, and the kernel's u32 classifier and mirred action)::

    .venv/bin/python benchmarks/tun.py              # 5 rounds, 156 and 1500 bytes
    .venv/bin/python benchmarks/tun.py --rounds 7 --json tun.json

Strategy. benchmarks/appliance.py's rig (its namespaces, its generator ``loadgen.c`` pinned to
one core, its saturation and no-loss measurements, its medians): only the appliances differ.

- ``tunfloor`` (``benchmarks/c/tunfloor.c``): the least a one-arm C tun bridge does, in one
  thread: recvmmsg, the reply header kept per flow, write into the ingress tun; read from the
  egress tun, flow look-up, sendmmsg.
- ``geneve-tun``: ``python -m geneve.appliance --tun`` with its default rules.

Between the two tuns of an endpoint both run the same passthrough, gwlbtun's
``create-passthrough.sh`` as a create hook: a tc ``mirred`` redirect from the ingress
interface's ingress to the egress interface, so every packet comes back as it went in (the
generator checks each reply byte for byte; routing through the kernel would lower the inner
TTL, which it counts as invalid) and the kernel's own cost is the same for both. Appliances
alternate (A B A B ...) for ``--rounds`` rounds (at least 5); the table shows medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# benchmarks/appliance.py, loaded by path: this folder on sys.path would hide the standard
# library's inspect module behind benchmarks/inspect.py.
_spec = importlib.util.spec_from_file_location("geneve_bench_appliance", HERE / "appliance.py")
assert _spec is not None and _spec.loader is not None
rig: Any = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rig
_spec.loader.exec_module(rig)

PASSTHROUGH = """#!/bin/sh
# gwlbtun's passthrough: what enters the ingress interface leaves by the egress one, unchanged.
[ "$1" = CREATE ] || exit 0
tc qdisc add dev "$2" ingress
tc filter add dev "$2" parent ffff: protocol all prio 2 u32 match u32 0 0 flowid 1:1 \\
  action mirred egress redirect dev "$3"
"""
APPLIANCES = ("tunfloor", "geneve-tun")
# The rig's table orders appliances by its own list: ours join it.
for _name in APPLIANCES:
    rig.APPLIANCES[_name] = rig.Appliance(_name, ("forward",), None)


def command(name: str, binaries: Path, hook: Path) -> list[str]:
    if name == "tunfloor":
        return [str(binaries / "tunfloor"), "--hook", str(hook)]
    return [sys.executable, "-m", "geneve.appliance", "--tun", "--tun-create-hook", str(hook)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5, at least 5)")
    p.add_argument("--sizes", default="156,1500", help="frame sizes (default 156,1500)")
    p.add_argument("--gen-cpu", type=int, default=0)
    p.add_argument("--app-cpu", type=int, default=1)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every result to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 5:
        print("--rounds: at least 5 (medians of alternated rounds)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("needs root (network namespaces, raw sockets, tun devices)", file=sys.stderr)
        return 2
    if shutil.which("tc") is None:
        print("needs tc (iproute2)", file=sys.stderr)
        return 2
    plan = rig.Plan(**{**rig.FULL.__dict__, "rounds": args.rounds, "appliances": APPLIANCES,
                       "sizes": tuple(int(s) for s in args.sizes.split(","))})  # fmt: skip
    signal.signal(signal.SIGTERM, rig.on_signal)
    signal.signal(signal.SIGINT, rig.on_signal)
    os.sched_setaffinity(0, {args.gen_cpu})
    info = {"machine": rig.machine(), "load_before": os.getloadavg(), "rounds": plan.rounds,
            "source": rig.source_state(), "gen_cpu": args.gen_cpu, "app_cpu": args.app_cpu,
            "nice": args.nice, "tx": "packet", "plan": plan.__dict__}  # fmt: skip
    topo = rig.Topology()
    results: list[dict[str, Any]] = []
    running: Any = None
    workdir = Path(tempfile.mkdtemp(prefix="geneve-bench-tun-"))
    started = time.monotonic()
    try:
        binaries = rig.build(workdir)
        cc = shutil.which("gcc") or "cc"
        rig.run(cc, "-O2", "-std=gnu99", "-Wall", "-o", str(binaries / "tunfloor"),
                str(HERE / "c" / "tunfloor.c"), timeout=120)  # fmt: skip
        hook = workdir / "passthrough.sh"
        hook.write_text(PASSTHROUGH)
        hook.chmod(0o755)
        topo.up()
        gen = rig.Generator(topo, binaries / "loadgen", args.gen_cpu, args.nice, "packet")
        for rnd in range(plan.rounds):
            for name in APPLIANCES:
                argv = rig.in_ns(topo.app_ns, args.app_cpu, args.nice,
                                 command(name, binaries, hook))  # fmt: skip
                meter = rig.CpuMeter()
                running = rig.Running(name, argv, workdir / f"{name}-{rnd}.log")
                rig.wait_ready(gen, running)
                measured = []
                for size in plan.sizes:
                    m = rig.measure(gen, "forward", size, plan)
                    m.update(appliance=name, mix="forward", size=size, round=rnd)
                    measured.append(m)
                    print(
                        f"round {rnd + 1}/{plan.rounds} {name:<11} {size:>5}: saturation "
                        f"{rig.kpps(m['saturation_pps'], m['generator_bound'])} no-loss "
                        f"{rig.kpps(m['no_loss_pps'], m['no_loss_generator_bound'])} "
                        f"p50 {m['p50_us']:.1f} us invalid {m['invalid']}",
                        flush=True,
                    )
                last = running.stop()
                running = None
                noise = meter.stop()
                for m in measured:
                    m["noise"] = noise
                    m["appliance_log"] = last
                results.extend(measured)
        summary = rig.summarize(results)
        info["elapsed_s"] = round(time.monotonic() - started, 1)
        info["load_after"] = os.getloadavg()
        if args.json:  # first: nothing measured is lost to a failure below
            import json

            args.json.write_text(json.dumps({"info": info, "results": results}, indent=1))
        print()
        print(rig.table(summary, info))
        for size in plan.sizes:
            floor = summary.get(("tunfloor", "forward", size))
            ours = summary.get(("geneve-tun", "forward", size))
            if floor and ours and floor["saturation_pps"]:
                print(f"geneve-tun / tunfloor at {size} bytes: saturation "
                      f"{ours['saturation_pps'] / floor['saturation_pps']:.2f}x, no-loss "
                      f"{ours['no_loss_pps'] / max(floor['no_loss_pps'], 1):.2f}x")  # fmt: skip
        print(f"load average after the run: {' '.join(f'{x:.2f}' for x in info['load_after'])}")
    except (rig.BenchmarkError, rig.EmulatorError, subprocess.SubprocessError) as err:
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
