"""``python -m geneve.emulator {demo,run,cleanup}``: a local GWLB for testing appliances.

- ``demo``: build the namespaces, start ``python -m geneve.appliance`` in the appliance
  namespace and replay the original GWLB blog demo with ping and nc; exit status 0 only if
  every expectation held.
- ``run``: build the namespaces and keep them up (with the reference appliance, your own
  command, or none) until Ctrl-C, SIGTERM or ``--duration``; then print what the emulator saw.
  Exit status 1 if the appliance exits (or never starts) while the run expects it up.
- ``cleanup``: delete namespaces left behind by emulators that were killed.

Needs root (network namespaces, veth, tun). Everything created is removed on exit. A bad
argument is one line on stderr and exit status 2. See docs/emulator.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from ._emulator import (
    Emulator,
    EmulatorConfig,
    EmulatorError,
    cleanup,
    format_summary,
    run_demo,
)
from ._emulator.console import serve

__all__ = ["main"]


class _Usage(Exception):
    """A bad argument: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Says what is wrong in one line (with --help pointed to), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise _Usage(f"{message} (see --help)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # nan compares false: refused too
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _terminate_on_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` tears down."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _config(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        outer_udp_checksum=args.outer_udp_checksum,
        ipv6=not args.no_ipv6,
        seed=args.seed,
        tcp_idle_timeout=args.tcp_idle_timeout,
        other_idle_timeout=args.other_idle_timeout,
        per_direction_ports=args.per_direction_ports,
    )


def _print(line: str) -> None:
    print(line, flush=True)


def _demo(args: argparse.Namespace) -> int:
    out = None if args.json else _print
    appliance = shlex.split(args.appliance_command) if args.appliance_command else None
    result = run_demo(_config(args), appliance=appliance, rules=args.rules, out=out)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        if result.summary:
            print()
            print(format_summary(result.summary))
        verdict = "every expectation held" if result.ok else "some expectations FAILED"
        print(f"\ndemo: {verdict} ({result.seconds:.1f} s); namespaces removed")
    return 0 if result.ok else 1


def _run(args: argparse.Namespace) -> int:
    out = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else _print
    emu = Emulator(_config(args))
    log = sys.stderr if args.json else None  # keep stdout for the JSON
    failure = None
    try:
        with emu:
            if args.appliance_command:
                emu.start_appliance(shlex.split(args.appliance_command), log=log)
            elif not args.no_appliance:
                emu.start_appliance(emu.appliance_command(args.rules), log=log)
            wait = emu.appliance is not None and not args.appliance_command
            try:
                serve(emu, duration=args.duration, out=out, wait_health=wait)
            except KeyboardInterrupt:
                out("stopping")  # Ctrl-C is how run ends: tear down and report
            except EmulatorError as err:
                failure = str(err)  # the appliance died or never got healthy: report, then fail
    except EmulatorError as err:
        print(f"geneve.emulator: {err}", file=sys.stderr)
        return 1
    summary = emu.final_summary or {}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary:
        print(format_summary(summary))
    if not failure and summary.get("data_plane_error"):
        failure = f"the data plane died: {summary['data_plane_error']}"
    if failure:
        print(f"geneve.emulator: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    removed = cleanup(everything=args.all)
    for name in removed:
        print(f"deleted {name}")
    if not removed:
        print("nothing to clean up")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m geneve.emulator",
        description="A local AWS Gateway Load Balancer in network namespaces (needs root).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("demo", "replay the GWLB blog demo through python -m geneve.appliance"),
        ("run", "bring the emulator up and keep it running until Ctrl-C"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        # Each chooses the appliance: together, all but one would be ignored.
        appliance = p.add_mutually_exclusive_group()
        appliance.add_argument("--rules", help="MODULE:CALLABLE passed to geneve.appliance --rules")
        appliance.add_argument(
            "--appliance-command",
            metavar="CMD",
            help="run CMD (a shell-quoted command line) in the appliance namespace instead",
        )
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument(
            "--outer-udp-checksum",
            action="store_true",
            help="send a correct outer UDP checksum instead of 0",
        )
        p.add_argument("--no-ipv6", action="store_true", help="IPv4 only")
        p.add_argument("--seed", type=int, help="seed for flow cookies and source ports")
        p.add_argument(
            "--tcp-idle-timeout",
            type=_seconds,
            default=350.0,
            metavar="SECONDS",
            help="a TCP flow expires after this idle time (GWLB's default: 350)",
        )
        p.add_argument(
            "--other-idle-timeout",
            type=_seconds,
            default=120.0,
            metavar="SECONDS",
            help="a flow of another protocol expires after this idle time (GWLB: 120)",
        )
        p.add_argument(
            "--per-direction-ports",
            action="store_true",
            help="send each direction of a flow from its own outer UDP source port",
        )
        if name == "run":
            appliance.add_argument(
                "--no-appliance",
                action="store_true",
                help="start no appliance (run your own in the appliance namespace)",
            )
            p.add_argument("--duration", type=_seconds, help="stop after this many seconds")
    p = sub.add_parser("cleanup", help="delete namespaces left by emulators that died")
    p.add_argument("--all", action="store_true", help="also those of emulators still running")
    try:
        args = parser.parse_args(argv)
    except _Usage as err:
        print(f"geneve.emulator: {err}", file=sys.stderr)
        return 2
    command = getattr(args, "appliance_command", None)
    if command is not None:
        try:
            words = shlex.split(command)
        except ValueError as err:  # an unclosed quote
            words, why = [], str(err)
        else:
            why = "empty"
        if not words:
            print(
                f"geneve.emulator: --appliance-command {command!r}: {why} (see --help)",
                file=sys.stderr,
            )
            return 2
    if os.geteuid() != 0 and args.command != "cleanup":
        print("geneve.emulator: needs root (network namespaces)", file=sys.stderr)
        return 2
    _terminate_on_signals()
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args)
        return _cleanup(args)
    except KeyboardInterrupt:
        print("geneve.emulator: interrupted; namespaces removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
