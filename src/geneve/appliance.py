"""``python -m geneve.appliance``: the reference GWLB appliance daemon.

Runs the reference rules unless ``--rules MODULE:CALLABLE`` names another modifier. Every flag
can also be given as an environment variable (``GENEVE_PORT``, ``GENEVE_WORKERS``...). Logs go
to stderr, one line per event. SIGTERM or SIGINT stops it cleanly (exit 0), after
``--drain-seconds``; SIGHUP reloads the rules; SIGUSR2 upgrades: a new copy of the daemon,
started with the same arguments, takes the sockets and flows over (docs/appliance.md). A
start-up problem, or a bad flag or environment variable, is one line with exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import typing
from collections.abc import Sequence

from ._appliance import Appliance, ApplianceError, ReceiveMode, allow_networks
from ._loader import RulesError, RulesSource, load_rules
from ._packet import GWLB_ENCAP_LENGTH

__all__ = ["Appliance", "main"]

DEFAULT_RULES = "geneve.rules.reference:modifier"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"GENEVE_{name}", default)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 1-65535")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (0 to 1)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0 and at most 1")
    return value


def _drain(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or a positive number of seconds")
    return value


def _batch(text: str) -> int:
    value = _positive(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"{value}: at most 64 frames per call")
    return value


def _ipv4(text: str) -> str:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None
    return text


def _address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    return text


def _inner_length(text: str) -> int:
    value = _positive(text)
    # The frame around it (68 bytes of encapsulation) must still fit IPv4's 65535.
    most = 0xFFFF - GWLB_ENCAP_LENGTH
    if value > most:
        raise argparse.ArgumentTypeError(f"{value} is over the {most} bytes IPv4 allows")
    return value


_TRUE, _FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")


def _switch(name: str, default: bool) -> bool:
    text = _env(name, "").strip().lower()
    if not text:
        return default
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _Usage(f"GENEVE_{name}: {text!r} is not one of {', '.join(_TRUE + _FALSE)}")


class _Usage(Exception):
    """A bad flag or environment variable: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Says what is wrong in one line (with --help pointed to), not the whole usage text."""

    def error(self, message: str) -> typing.NoReturn:
        raise _Usage(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m geneve.appliance",
        description="A GWLB appliance: answers Geneve on UDP 6081 and health checks over HTTP. "
        "Each option can also be set with the environment variable named in brackets.",
    )
    p.add_argument(
        "--rules",
        default=_env("RULES", DEFAULT_RULES),
        help="modifier as MODULE:CALLABLE [GENEVE_RULES] (default: %(default)s)",
    )
    p.add_argument(
        "--rules-factory",
        default=_env("RULES_FACTORY", "") or None,
        metavar="MODULE:CALLABLE",
        help="instead of --rules: a callable given the --rules-config table that returns the "
        "modifier [GENEVE_RULES_FACTORY]",
    )
    p.add_argument(
        "--rules-config",
        default=_env("RULES_CONFIG", "") or None,
        metavar="FILE",
        help="a TOML file whose table goes to --rules-factory; read again on SIGHUP "
        "[GENEVE_RULES_CONFIG]",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=_env("PORT", "6081"),
        help="Geneve UDP port [GENEVE_PORT] (default: %(default)s)",
    )
    p.add_argument(
        "--bind",
        type=_ipv4,
        default=_env("BIND", "0.0.0.0"),
        help="address to receive Geneve on [GENEVE_BIND] (default: %(default)s)",
    )
    p.add_argument(
        "--health-host",
        type=_address,
        default=_env("HEALTH_HOST", "0.0.0.0"),
        help="health endpoint address [GENEVE_HEALTH_HOST] (default: %(default)s)",
    )
    p.add_argument(
        "--health-port",
        type=_port,
        default=_env("HEALTH_PORT", "8080"),
        help="health endpoint port [GENEVE_HEALTH_PORT] (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=_env("WORKERS", "1"),
        help="worker processes [GENEVE_WORKERS] (default: %(default)s)",
    )
    p.add_argument(
        "--on-error",
        choices=("drop", "forward"),
        default=_env("ON_ERROR", "drop"),
        help="when the modifier raises [GENEVE_ON_ERROR] (default: %(default)s)",
    )
    p.add_argument(
        "--receive",
        choices=("udp", "raw"),
        default=_env("RECEIVE", "udp"),
        help="receive path [GENEVE_RECEIVE] (default: %(default)s)",
    )
    p.add_argument(
        "--batch",
        type=_batch,
        default=_env("BATCH", "64"),
        help="frames per recvmmsg/sendmmsg call, 1 to 64; 1 is one frame per system call "
        "(udp receive only) [GENEVE_BATCH] (default: %(default)s)",
    )
    p.add_argument(
        "--no-fast-path",
        dest="fast_path",
        action="store_false",
        default=True,
        help="call the modifier for every frame, even those outside its declared interest "
        "[GENEVE_FAST_PATH=0]",
    )
    p.add_argument(
        "--allow-from",
        action="append",
        metavar="CIDR",
        default=[c for c in _env("ALLOW_FROM", "").replace(",", " ").split() if c],
        help="accept Geneve only from these GWLB addresses or subnets; repeatable "
        "[GENEVE_ALLOW_FROM, comma-separated] (default: any source, with a warning)",
    )
    p.add_argument(
        "--user",
        default=_env("USER", "") or None,
        help="switch to this user once the sockets are open [GENEVE_USER]",
    )
    p.add_argument(
        "--max-inner-length",
        type=_inner_length,
        default=_env("MAX_INNER_LENGTH", "8500"),
        help="largest inner packet (bytes after the Geneve header) accepted from GWLB or "
        "produced by a rewrite; a larger received frame is dropped as malformed ('oversized') "
        "[GENEVE_MAX_INNER_LENGTH] (default: %(default)s, GWLB's MTU)",
    )
    p.add_argument(
        "--on-too-large",
        choices=("drop", "forward"),
        default=_env("ON_TOO_LARGE", "drop"),
        help="when a rewrite would pass --max-inner-length: drop, or forward the packet "
        "unchanged [GENEVE_ON_TOO_LARGE] (default: %(default)s)",
    )
    p.add_argument(
        "--flow-timeout-tcp",
        type=_seconds,
        default=_env("FLOW_TIMEOUT_TCP", "350"),
        metavar="SECONDS",
        help="a TCP flow with no packet for this long ends ('idle'); GWLB's own is 350 s by "
        "default, 60-6000 s (a value outside is accepted, with a warning) "
        "[GENEVE_FLOW_TIMEOUT_TCP] (default: %(default)s)",
    )
    p.add_argument(
        "--flow-timeout-other",
        type=_seconds,
        default=_env("FLOW_TIMEOUT_OTHER", "120"),
        metavar="SECONDS",
        help="the same for every other protocol (GWLB's: 120 s) [GENEVE_FLOW_TIMEOUT_OTHER] "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-flows",
        type=_positive,
        default=_env("MAX_FLOWS", "") or None,
        help="live flows at most, all workers together (each worker gets its share); past "
        "it, flows that never saw a reply end early [GENEVE_MAX_FLOWS] (default: 1000000, or "
        "one per 4 KiB of memory on a smaller machine)",
    )
    p.add_argument(
        "--max-error-share",
        type=_share,
        default=_env("MAX_ERROR_SHARE", "0.5"),
        metavar="SHARE",
        help="health fails while the modifier raises on more than this share of the frames "
        "of the last 10 s (0 < SHARE <= 1; 1: never) [GENEVE_MAX_ERROR_SHARE] "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=_drain,
        default=_env("DRAIN_SECONDS", "0"),
        metavar="SECONDS",
        help="on SIGTERM, answer health checks 503 \"draining\" and keep forwarding this long "
        "before stopping (a second SIGTERM stops at once); set it to the target group's "
        "deregistration delay or less [GENEVE_DRAIN_SECONDS] (default: %(default)s)",
    )
    p.add_argument(
        "--no-flows",
        dest="flows",
        action="store_false",
        default=True,
        help="track no flows: no packet.flow, no flow hooks or verdicts [GENEVE_FLOWS=0]",
    )
    p.add_argument(
        "--tun",
        action="store_true",
        default=False,
        help="send forwarded inner packets into tun interfaces gwi-<id> (one pair per GWLB "
        "endpoint, as gwlbtun names them) and what the kernel sends out of gwo-<id> back to "
        "GWLB; one worker (docs/tun.md) [GENEVE_TUN=1]",
    )
    p.add_argument(
        "--tun-create-hook",
        default=_env("TUN_CREATE_HOOK", "") or None,
        metavar="CMD",
        help="with --tun: run through a shell when an endpoint's interfaces are made, with "
        "gwlbtun's arguments: CREATE INGRESS EGRESS ENDPOINT-HEX [GENEVE_TUN_CREATE_HOOK]",
    )
    p.add_argument(
        "--tun-destroy-hook",
        default=_env("TUN_DESTROY_HOOK", "") or None,
        metavar="CMD",
        help="with --tun: the same when they are deleted (DESTROY ...) [GENEVE_TUN_DESTROY_HOOK]",
    )
    p.add_argument(
        "--tun-idle-timeout",
        type=_seconds,
        default=_env("TUN_IDLE_TIMEOUT", "") or None,
        metavar="SECONDS",
        help="with --tun: delete an endpoint's interfaces after this long without a packet "
        "(default: keep them) [GENEVE_TUN_IDLE_TIMEOUT]",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
        help="[GENEVE_LOG_LEVEL] (default: %(default)s)",
    )
    return p


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks choices on what the command line gave, not on defaults from the
    # environment: check those here.
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value not in action.choices:
            flag = action.option_strings[0]
            raise _Usage(
                f"{flag} (or GENEVE_{action.dest.upper()}): {value!r} is not one of "
                + ", ".join(map(str, action.choices))
            )
    try:
        allow_networks(args.allow_from)  # from the environment too
    except ValueError as err:
        raise _Usage(str(err)) from None
    if args.fast_path:  # no --no-fast-path: the environment may still say no
        args.fast_path = _switch("FAST_PATH", True)
    if args.flows:
        args.flows = _switch("FLOWS", True)
    if not args.tun:
        args.tun = _switch("TUN", False)
    if isinstance(args.tun_idle_timeout, str):  # from the environment: argparse left it as is
        try:
            args.tun_idle_timeout = _seconds(args.tun_idle_timeout)
        except argparse.ArgumentTypeError as err:
            raise _Usage(f"GENEVE_TUN_IDLE_TIMEOUT: {err}") from None
    if args.tun:
        if not args.flows:
            raise _Usage(
                "--tun cannot go with --no-flows: the way back looks each packet's flow up"
            )
        if args.workers != 1:
            raise _Usage(f"--tun takes one worker, not --workers {args.workers} (docs/tun.md)")
    elif args.tun_create_hook or args.tun_destroy_hook or args.tun_idle_timeout is not None:
        raise _Usage("--tun-create-hook, --tun-destroy-hook and --tun-idle-timeout need --tun")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(arguments)
    except _Usage as err:
        print(f"geneve.appliance: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.rules_factory is not None:
            source = RulesSource(factory=args.rules_factory, config=args.rules_config)
        else:
            source = RulesSource(rules=args.rules, config=args.rules_config)
        modifier = load_rules(source)
        receive: ReceiveMode = args.receive
        appliance = Appliance(
            modifier,
            port=args.port,
            bind=args.bind,
            health_host=args.health_host,
            health_port=args.health_port,
            workers=args.workers,
            on_error=args.on_error,
            receive=receive,
            allow_from=args.allow_from,
            user=args.user,
            max_inner_length=args.max_inner_length,
            on_too_large=args.on_too_large,
            batch=args.batch,
            fast_path=args.fast_path,
            flows=args.flows,
            flow_timeout_tcp=args.flow_timeout_tcp,
            flow_timeout_other=args.flow_timeout_other,
            max_flows=args.max_flows,
            drain_seconds=args.drain_seconds,
            rules=source,
            max_error_share=args.max_error_share,
            tun=args.tun,
            tun_create_hook=args.tun_create_hook,
            tun_destroy_hook=args.tun_destroy_hook,
            tun_idle_timeout=args.tun_idle_timeout,
        )
        # SIGUSR2: this program again, with the same arguments (and environment), in the
        # same interpreter: a package upgraded in place is the new code.
        appliance.upgrade_command = [sys.executable, "-m", "geneve.appliance", *arguments]
        appliance.run()
    except (ApplianceError, RulesError) as err:
        print(f"geneve.appliance: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # anything the kernel refused at start-up that start() did not name
        print(f"geneve.appliance: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
