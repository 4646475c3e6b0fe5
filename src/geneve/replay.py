"""``python -m geneve.replay IN OUT [--rules MODULE:CALLABLE]``: a capture through the pipeline.

Every Geneve packet of IN goes through the same :class:`geneve.Pipeline` as in the appliance;
the forwarded ones are written to OUT (classic pcap) in input order with the input's link type
(Ethernet headers get their MAC addresses swapped, as a reply would). A pcapng may mix link
types, one per interface, where a pcap has one: OUT then takes the link type of the first
forwarded packet, and packets captured on another link type get a header of that type in
front of their IPv4 packet. A summary goes to stdout.

Flows are tracked on the capture's clock: each packet's ``now`` is its capture time, the
pipeline ticks as that time passes each whole second, and at the end of the capture every flow
still live ends (reason ``"shutdown"``). The modifier's hooks (``on_start``, ``on_tick``,
``on_flow_end``, ``on_stop``) run as in the appliance, so replaying a capture twice gives the
same flows and the same hook calls.

OUT appears whole or not at all: it is written to a temporary file beside it and renamed into
place on success, so a bad capture or a failing rule leaves any earlier OUT as it was. OUT may
not be IN (nor a link to it). A device or a pipe (``/dev/null``) is written directly.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import stat
import sys
import traceback
from collections.abc import Sequence
from typing import BinaryIO

from ._flows import FlowTable
from ._headers import GENEVE_PORT
from ._loader import RulesError, load_modifier
from ._pcap import (
    LINKTYPE_ETHERNET,
    CaptureError,
    PcapWriter,
    ip_offset,
    link_header,
    read_capture,
)
from ._pipeline import ErrorPolicy, Modifier, Pipeline, Stats

__all__ = ["ReplayResult", "main", "replay"]

DEFAULT_RULES = "geneve.rules.reference:modifier"


class ReplayResult:
    def __init__(self, stats: Stats, read: int, both_ways: tuple[str, str] | None = None) -> None:
        self.stats = stats
        self.read = read
        #: Two outer addresses with Geneve between them both ways: the capture holds the
        #: appliance's own replies beside GWLB's frames (they are replayed too).
        self.both_ways = both_ways

    def summary(self) -> str:
        s = self.stats
        line = (
            f"read {self.read}, forwarded {s.forwarded}, modified {s.modified}, "
            f"dropped {s.dropped}, skipped {self.read - s.received + s.skipped}, "
            f"malformed {s.malformed}"
        )
        if s.malformed_reasons:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.malformed_reasons.items()))
            line += f" ({reasons})"
        if s.rejected:
            line += f", rejected {s.rejected} (a RST or ICMP error written instead)"
        if s.modifier_errors:
            line += f", modifier errors {s.modifier_errors}"
        if self.both_ways:
            a, b = self.both_ways
            line += (
                f"\nwarning: Geneve goes both ways between {a} and {b}: the capture holds the "
                "appliance's replies too, and they were replayed as if GWLB had sent them"
            )
        return line


def replay(
    src: BinaryIO,
    dst: BinaryIO,
    modifier: Modifier,
    *,
    on_error: ErrorPolicy = "drop",
    flows: FlowTable | bool = True,
) -> ReplayResult:
    """Run every Geneve packet of the capture ``src`` through ``modifier``; write to ``dst``.

    ``flows``: a :class:`FlowTable` of one's own (timeouts, size), True for GWLB's defaults,
    False for none.
    """
    info, records = read_capture(src)
    writer: PcapWriter | None = None  # made at the first forwarded packet: see the docstring
    pipeline = Pipeline(modifier, on_error=on_error, flows=flows)
    pipeline.start()
    read = 0
    now = 0.0
    next_tick: float | None = None
    pairs: set[bytes] = set()  # outer (source, destination) of the Geneve frames read
    for record in records:
        read += 1
        now = record.ts_ns / 1e9
        if next_tick is None:
            next_tick = float(record.ts_ns // 1_000_000_000 + 1)
        elif now >= next_tick:
            pipeline.tick(now)  # (held frames a "forward" hold limit lets go are not written)
            next_tick = float(record.ts_ns // 1_000_000_000 + 1)
        data = record.data
        off = ip_offset(record.linktype, data)
        if off < 0:
            continue  # not IPv4 at all: skipped
        ihl = (data[off] & 0x0F) * 4 if len(data) > off else 0
        if (
            ihl >= 20
            and len(data) >= off + ihl + 4
            and data[off + 9] == 17  # outer UDP to the Geneve port
            and int.from_bytes(data[off + ihl + 2 : off + ihl + 4], "big") == GENEVE_PORT
        ):
            pairs.add(bytes(data[off + 12 : off + 20]))  # its outer (source, destination)
        buf = bytearray(data[off:])
        frames = pipeline.handle(buf, len(buf), now)
        if not frames:
            continue
        if writer is None:
            writer = PcapWriter(dst, record.linktype, nanosecond=info.nanosecond)
        if record.linktype == writer.linktype:
            link = bytearray(data[:off])
            if record.linktype == LINKTYPE_ETHERNET and off >= 12:
                link[0:6], link[6:12] = data[6:12], data[0:6]
        else:  # ip_offset knows this link type, so link_header knows the writer's
            link = bytearray(link_header(writer.linktype) or b"")
        for frame in frames:
            writer.write(bytes(link) + bytes(frame), record.ts_ns)
    pipeline.stop(now)
    if writer is None:  # nothing forwarded: an empty capture of the input's link type
        PcapWriter(dst, info.linktype, nanosecond=info.nanosecond)
    both = next((p for p in sorted(pairs) if p[4:] + p[:4] in pairs and p[:4] != p[4:]), None)
    ends = None
    if both is not None:
        ends = (str(ipaddress.IPv4Address(both[:4])), str(ipaddress.IPv4Address(both[4:])))
    return ReplayResult(pipeline.stats, read, ends)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geneve.replay",
        description="Run the Geneve packets of a capture through an appliance modifier.",
    )
    parser.add_argument("input", help="pcap or pcapng file to read")
    parser.add_argument("output", help="pcap file to write the forwarded packets to")
    parser.add_argument(
        "--rules", default=DEFAULT_RULES, help=f"MODULE:CALLABLE (default {DEFAULT_RULES})"
    )
    parser.add_argument("--on-error", choices=("drop", "forward"), default="drop")
    args = parser.parse_args(argv)
    try:
        modifier = load_modifier(args.rules)
        with open(args.input, "rb") as src:
            if _same_file(src, args.output):
                message = f"{args.output} is the same file as {args.input}; give another OUT"
                print(f"geneve.replay: {message}", file=sys.stderr)
                return 2
            result = _replay_to_path(src, args.output, modifier, args.on_error)
    except (OSError, CaptureError, RulesError) as err:
        message = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) else str(err)
        print(f"geneve.replay: {message}", file=sys.stderr)
        return 2
    print(result.summary())
    first = result.stats.first_error
    if first is not None:  # every such packet was dropped (or forwarded, --on-error forward)
        print("geneve.replay: the modifier raised; the first error:", file=sys.stderr)
        traceback.print_exception(first, file=sys.stderr)
        return 1
    return 0


def _same_file(src: BinaryIO, output: str) -> bool:
    # Opening OUT for writing first would empty IN before a byte of it is read.
    try:
        out = os.stat(output)
    except OSError:
        return False  # no OUT yet (or none reachable: writing it will say why)
    return os.path.samestat(os.fstat(src.fileno()), out)


def _replay_to_path(
    src: BinaryIO, output: str, modifier: Modifier, on_error: ErrorPolicy
) -> ReplayResult:
    target = os.path.realpath(output)  # through a symlink to where it points, as open() goes
    try:
        old: os.stat_result | None = os.stat(target)
    except OSError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        with open(output, "wb") as dst:  # a device or a pipe: nothing to rename onto
            return replay(src, dst, modifier, on_error=on_error)
    folder, name = os.path.split(target)
    temp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        # Mode 0o666 less the umask, as open() would make OUT; an existing OUT keeps its mode.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise OSError(err.errno, err.strerror, output) from err  # name OUT, not the temporary
    try:
        with open(fd, "wb") as dst:
            if old is not None:
                os.fchmod(dst.fileno(), stat.S_IMODE(old.st_mode))
            result = replay(src, dst, modifier, on_error=on_error)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return result


if __name__ == "__main__":
    sys.exit(main())
