"""Sequence adjustment: TCP payload rewrites that change the length, kept consistent per flow.

A rewrite that makes a TCP segment longer or shorter moves every later byte of its direction in
the sequence space the receiver sees. The flow keeps, per direction, a record of where each
change happened (a *region*: the position of the rewritten bytes in the sender's sequence
space, how many there were, and what replaced them), and every segment that leaves the
pipeline is mapped through it: its sequence number shifted by the regions before it, its
acknowledgment number and SACK blocks (RFC 2018) shifted back by the other direction's. The
kernel's NAT does the same for FTP and SIP (``nf_nat_seq_adj``) with one correction position
per direction; here the record is a short list, which is what lets a retransmission be
rewritten again.

The rules, decided by sequence position, never by segment boundaries (a retransmission may be
cut differently from the original):

- A new region may only start at or after the direction's *high mark*, the end of the data
  forwarded so far: data the receiver may have seen already is never rewritten afresh. A match
  in older data (a retransmission) is left alone. A data segment that starts beyond the high
  mark (a gap before it: a segment lost or reordered before the appliance) is dropped, so that
  the gap is filled first and a match in it can still be rewritten; the sender sends it again.
- A segment that covers a region whole carries the replacement, whether or not the modifier
  rewrites it again (so a flow verdict FORWARD, or a modifier that changed its mind, keeps the
  stream consistent). A segment that covers a region in part loses those bytes: a head inside a
  region starts at the region's end, a tail inside one ends at its start. Acknowledgments
  inside a replacement are mapped back to the region's start, so the sender never learns that a
  part of a region arrived; it retransmits from the region's start, and that segment covers the
  region whole (a region is shorter than a segment).
- An acknowledgment prunes the regions before it: their shifts fold into one base shift, and
  the bytes before the acknowledged point are cut from any later segment (the receiver has
  them). At most :data:`MAX_REGIONS` regions wait per direction; one more is lost state.
- A segment grows by at most the modifier's declared ``max_growth`` (when it declares one:
  the MSS of the flow's SYNs is lowered by as much); rewrites past it are left alone.
- A match that straddles two segments is in neither: it is left alone, in the first
  transmission and in every retransmission (whose segments may hold it whole: it is before the
  high mark).

Positions are integers unwrapped around the high mark (a 32-bit sequence number is ambiguous
only two gigabytes away), relative to the sequence number of the first rewritten segment. The
high mark is kept for every TCP flow from its first segment (``note_forwarded``, and C's
``seq_note_high``), so that even a direction's first rewrite knows what went out before it.

In the appliance the C fast path applies the common case itself (``geneve_seq_fast`` in
``_flowtable.c``: one correction point and one shift per direction, as ``nf_nat_seq_adj``
keeps): the flow's view pushes it the end of the last region and the total shift after every
change, and pulls C's high mark and highest acknowledgment before it maps or records anything.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING

from ._errors import UnsupportedError
from ._packet import Packet

if TYPE_CHECKING:
    from ._flows import PipelinePacket

__all__ = [
    "ADJUSTED",
    "GAP",
    "LOST",
    "MAX_REGIONS",
    "SeqDirection",
    "adjust",
    "record_edits",
    "tcp_reset_forward",
]

#: What :func:`adjust` says of a segment: mapped; the flow's rewrite state is lost; a data
#: segment beyond a gap, to drop.
ADJUSTED, LOST, GAP = 0, 1, 2

#: Regions (rewrites not yet acknowledged by the peer) a direction may hold; one more and the
#: flow's rewrite state is lost (the pipeline resets the connection).
MAX_REGIONS = 16384
#: Bytes of replacements a direction may hold, for the same reason.
MAX_REGION_BYTES = 1 << 20

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_SEQ_ACK = struct.Struct("!II")
_U32 = struct.Struct("!I")
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10
_OPT_EOL, _OPT_NOP, _OPT_SACK = 0, 1, 5


class SeqDirection:
    """The record of one direction: regions rewritten, the high mark, what was acknowledged.

    The regions are kept in parallel lists, in order (they never overlap): where each starts and
    ends in the sender's positions, its replacement, and the total shift after it (counted from
    the first region ever, so that pruning is only moving :attr:`first` on), and where its
    replacement starts and ends in the receiver's; a segment finds the regions it meets by
    bisection.
    """

    __slots__ = (
        "anchor",
        "base",
        "ends",
        "first",
        "high",
        "lost",
        "mends",
        "mstarts",
        "news",
        "region_bytes",
        "shifts",
        "starts",
    )  # fmt: skip

    def __init__(self, anchor: int) -> None:
        self.anchor = anchor  # the sequence number of position 0
        self.high = 0  # end of the data forwarded so far
        # The peer acknowledged every position before this one (at first none: the data before
        # the first rewrite has negative positions).
        self.base = -(1 << 62)
        self.first = 0  # the regions before this index are pruned
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.news: list[bytes] = []
        self.shifts: list[int] = []  # the total shift after each region
        self.mstarts: list[int] = []  # the replacement's start and end, as the receiver sees them
        self.mends: list[int] = []
        self.region_bytes = 0  # bytes of the replacements kept
        self.lost = False  # too many regions: the flow's rewrite state is lost

    @property
    def regions(self) -> list[tuple[int, int, bytes]]:
        """The regions kept: (start, bytes replaced, replacement)."""
        i = self.first
        return [
            (start, end - start, new)
            for start, end, new in zip(self.starts[i:], self.ends[i:], self.news[i:], strict=True)
        ]

    # -- positions ------------------------------------------------------------------------------

    def position(self, seq: int) -> int:
        """The sender's sequence number ``seq`` as a position, unwrapped around the high mark."""
        delta = (seq - self.anchor - self.high) & _MASK
        return self.high + (delta - (1 << 32) if delta >= _HALF else delta)

    def _shift_before(self, i: int) -> int:
        return self.shifts[i - 1] if i > 0 else 0

    def mapped(self, pos: int) -> int:
        """The receiver's sequence number for position ``pos`` (a region's start inside one)."""
        i = bisect_right(self.ends, pos, self.first)
        if i < len(self.starts) and self.starts[i] < pos:
            pos = self.starts[i]
        return (self.anchor + pos + self._shift_before(i)) & _MASK

    def unmapped(self, seq: int, right: bool) -> int:
        """The position of the receiver's sequence number ``seq`` (an acknowledgment, a SACK
        edge). Inside a replacement: the region's start (``right``, an acknowledgment or a
        block's right edge) or its end (a block's left edge), so that the sender is never told
        that part of a region arrived."""
        high_mapped = self.high + self.shift_at_end()
        delta = (seq - self.anchor - high_mapped) & _MASK
        mpos = high_mapped + (delta - (1 << 32) if delta >= _HALF else delta)
        i = bisect_right(self.mends, mpos, self.first)
        if i < len(self.starts) and self.mstarts[i] < mpos:
            return self.starts[i] if right else self.ends[i]
        return mpos - self._shift_before(i)

    def shift_at_end(self) -> int:
        return self.shifts[-1] if self.shifts else 0

    # -- the record -------------------------------------------------------------------------------

    def add(self, start: int, old: int, new: bytes) -> bool:
        """Record a rewrite of ``old`` bytes at ``start`` by ``new``; False when it may not be
        (before the high mark, or overlapping another region: left alone). Sets :attr:`lost`
        past the bounds. A region may go before others not yet forwarded (a second rewrite of
        the same segment that comes earlier in it): theirs are moved along."""
        starts, ends = self.starts, self.ends
        i = bisect_left(starts, start, self.first)
        if i < len(starts) and starts[i] == start:
            # The same rewrite again (its segment came twice, or the modifier rewrites a
            # retransmission): the record's stands.
            return ends[i] - start == old and self.news[i] == new
        if start < self.high or start < self.base:
            return False
        if (i > self.first and ends[i - 1] > start) or (
            i < len(starts) and starts[i] < start + old
        ):
            return False
        if (
            len(starts) - self.first >= MAX_REGIONS
            or self.region_bytes + len(new) > MAX_REGION_BYTES
        ):
            self.lost = True
            return False
        starts.insert(i, start)
        ends.insert(i, start + old)
        self.news.insert(i, new)
        for name in ("shifts", "mstarts", "mends"):
            getattr(self, name).insert(i, 0)
        self.region_bytes += len(new)
        # The shifts and the receiver's positions from this region on (the ones after it were
        # never forwarded: they lie beyond the high mark too).
        shifts, mstarts, mends, news = self.shifts, self.mstarts, self.mends, self.news
        shift = self._shift_before(i)
        for k in range(i, len(starts)):
            mstarts[k] = starts[k] + shift
            mends[k] = mstarts[k] + len(news[k])
            shift += len(news[k]) - (ends[k] - starts[k])
            shifts[k] = shift
        return True

    def acknowledged(self, pos: int) -> None:
        """The peer acknowledged every position before ``pos``: prune the regions before it."""
        if pos <= self.base:
            return
        first = self.first
        i = bisect_right(self.ends, pos, first)
        if i > first:
            self.region_bytes -= sum(len(new) for new in self.news[first:i])
            self.first = first = i
            if first > 64 and first * 2 > len(self.starts):  # drop the pruned ones for good
                shift = self.shifts[first - 1]
                for name in ("starts", "ends", "news", "shifts", "mstarts", "mends"):
                    del getattr(self, name)[: first - 1]
                self.first = 1
                self.shifts[0] = shift
        # base never passes into a region that is still kept.
        if self.first < len(self.starts) and self.starts[self.first] < pos:
            pos = self.starts[self.first]
        if pos > self.base:
            self.base = pos

    def raise_high(self, seq: int) -> None:
        """The fast path forwarded data up to sequence number ``seq``."""
        pos = self.position(seq)
        if pos > self.high:
            self.high = pos

    def fast_path(self) -> tuple[int, int, int]:
        """What the C fast path applies: from which sequence number on the shift is one number
        (the end of the last region), that shift, and the high mark, as on the wire."""
        after = self.ends[-1] if self.ends else 0
        return (self.anchor + after) & _MASK, self.shift_at_end(), (self.anchor + self.high) & _MASK

    def overlapping(self, low: int, high: int) -> range:
        """The indexes of the regions that meet positions [low, high)."""
        i = bisect_right(self.ends, low, self.first)
        j = bisect_left(self.starts, high, i)
        return range(i, j)


def _state(flow: object) -> list[SeqDirection | None]:
    state: list[SeqDirection | None] | None = flow._seq  # type: ignore[attr-defined]
    if state is None:
        state = [None, None]
        flow._seq = state  # type: ignore[attr-defined]
        flow._set_seq_adjusted()  # type: ignore[attr-defined]
    return state


def record_edits(packet: PipelinePacket, edits: list[tuple[int, int, bytes]]) -> int:
    """Record the length-changing ``edits`` of a TCP payload, each (offset in the payload,
    bytes replaced, replacement), in the packet's flow; how many will be applied.

    What ``replace_in_payload`` and ``replace_payload`` do on TCP with flows on: the buffer
    changes when the packet leaves the pipeline (:func:`adjust`), for every segment alike.
    """
    flow = getattr(packet, "flow", None)  # a PipelinePacket parsed outside a pipeline has none
    if flow is None:
        raise UnsupportedError(
            "changing a TCP payload's length needs flows (Pipeline(..., flows=True)) "
            "to adjust its sequence numbers"
        )
    buf = packet.buf
    l4 = packet.l4_offset
    if buf[l4 + 13] & (_TCP_SYN | _TCP_RST):
        return 0  # the data of a SYN or RST is left alone
    seq = _U32.unpack_from(buf, l4 + 4)[0]
    state = _state(flow)
    d = 0 if flow.direction == "original" else 1
    record = state[d]
    if record is None:
        record = state[d] = SeqDirection(seq)
    flow._seq_pull(state)
    at = record.position(seq)
    if at > record.high:
        return 0  # a gap before it: the segment is dropped (adjust), nothing recorded
    # A declared growth is a bound: rewrites past it are left alone, so that the segment still
    # fits the MSS its SYN was clamped to.
    limit = packet.max_growth
    grown = packet.grown
    done = 0
    for offset, old, new in edits:
        if limit and grown + len(new) - old > limit:
            break
        if record.add(at + offset, old, new):
            grown += len(new) - old
            done += 1
    packet.grown = grown
    flow._seq_push(state)
    return done


def note_forwarded(packet: PipelinePacket) -> None:
    """A TCP segment of a flow without a record leaves: keep the end of its data, so that a
    first rewrite later in its direction knows what was forwarded before it."""
    flow = packet.flow
    buf = packet.buf
    l4 = packet.l4_offset
    if flow is None or l4 < 0 or packet.payload_offset < 0:
        return
    flags = buf[l4 + 13]
    length = packet.ip_end - packet.payload_offset + (flags & _TCP_FIN) + ((flags & _TCP_SYN) >> 1)
    if length:
        end = _U32.unpack_from(buf, l4 + 4)[0] + length
        flow._note_high(0 if flow.direction == "original" else 1, end & _MASK)


def adjust(packet: PipelinePacket) -> int:
    """Map a TCP segment of a flow with a record through it, before it leaves the pipeline.

    Applies the regions its payload covers (whole: the replacement; in part: cut), shifts its
    sequence number, shifts its acknowledgment number and SACK blocks back by the other
    direction's record, prunes that record by the acknowledgment, and moves the high mark.
    :data:`ADJUSTED`; :data:`LOST` when the flow's rewrite state is lost (the caller resets
    the connection); :data:`GAP` for data that starts beyond the high mark (the caller drops
    it: a match in the gap before it could no longer be rewritten).
    """
    flow = packet.flow
    state: list[SeqDirection | None] = flow._seq  # type: ignore[union-attr]
    d = 0 if flow.direction == "original" else 1  # type: ignore[union-attr]
    mine, theirs = state[d], state[1 - d]
    if (mine is not None and mine.lost) or (theirs is not None and theirs.lost):
        return LOST
    flow._seq_pull(state)  # type: ignore[union-attr]
    buf = packet.buf
    l4 = packet.l4_offset
    flags = buf[l4 + 13]
    if (
        mine is not None
        and (packet.ip_end > packet.payload_offset or flags & _TCP_FIN)
        and not flags & (_TCP_SYN | _TCP_RST)
        and mine.position(_U32.unpack_from(buf, l4 + 4)[0]) > mine.high
    ):
        return GAP
    if theirs is not None and flags & _TCP_ACK:
        ack = _U32.unpack_from(buf, l4 + 8)[0]
        pos = theirs.unmapped(ack, True)
        _U32.pack_into(buf, l4 + 8, (theirs.anchor + pos) & _MASK)
        _sack_back(packet, theirs)
        theirs.acknowledged(pos)
        packet.modified = True
    if mine is not None and not flags & _TCP_RST:
        _forward(packet, mine, flags)
    flow._seq_push(state)  # type: ignore[union-attr]
    return ADJUSTED


def _forward(packet: PipelinePacket, record: SeqDirection, flags: int) -> None:
    buf = packet.buf
    l4 = packet.l4_offset
    start = packet.payload_offset
    end = packet.ip_end
    seq = _U32.unpack_from(buf, l4 + 4)[0]
    syn = flags & _TCP_SYN
    first = record.position(seq) + (1 if syn else 0)  # SYN takes one number before the data
    last = first + end - start
    pieces: list[bytes | bytearray] = []
    kept_from = first  # where the data sent starts, as a position
    cut_tail = empty = False
    at = first  # the next position to copy
    changed = False
    base = record.base
    if first < base:  # acknowledged bytes go
        changed = True
        if last <= base:  # all of them: an empty segment at the acknowledged point
            kept_from = base
            empty = True
        else:
            at = kept_from = base
    starts, ends, news = record.starts, record.ends, record.news
    for i in () if empty else record.overlapping(at, last):
        rstart, rend, new = starts[i], ends[i], news[i]
        changed = True
        if rstart >= at and rend <= last:  # covered whole: the replacement
            pieces.append(buf[start + at - first : start + rstart - first])
            pieces.append(new)
            at = rend
        elif rstart < at:  # the head is inside: it starts at the region's end
            if rend >= last:  # all inside: an empty segment at the region's start
                kept_from = rstart
                empty = True
                break
            at = kept_from = rend
        else:  # the tail is inside: it ends at the region's start
            pieces.append(buf[start + at - first : start + rstart - first])
            at = last = rstart
            cut_tail = True
            break
    if changed:
        if not empty:
            pieces.append(buf[start + at - first : start + last - first])
        else:
            pieces.clear()
            last = first
        data = b"".join(pieces)
        if cut_tail and flags & _TCP_FIN:
            buf[l4 + 13] = flags & ~_TCP_FIN  # its FIN came after bytes it no longer carries
        packet._resize_tcp_payload(data)
        buf = packet.buf  # a copy, when a view pinned the buffer's size
    mapped = record.mapped(kept_from) - (1 if syn and kept_from == first else 0)
    _U32.pack_into(buf, l4 + 4, mapped & _MASK)
    packet.modified = True
    if last > record.high:
        record.high = last


def _sack_back(packet: PipelinePacket, record: SeqDirection) -> None:
    """Map the SACK blocks of the segment's options back to the sender's positions."""
    buf = packet.buf
    l4 = packet.l4_offset
    pos = l4 + 20
    end = packet.payload_offset
    while pos < end:
        kind = buf[pos]
        if kind == _OPT_EOL:
            return
        if kind == _OPT_NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            return
        size = buf[pos + 1]
        if size < 2 or pos + size > end:
            return
        if kind == _OPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            blocks = []
            for at in range(pos + 2, pos + size, 8):
                left, right = _SEQ_ACK.unpack_from(buf, at)
                lpos = record.unmapped(left, False)
                rpos = record.unmapped(right, True)
                if lpos < rpos:
                    blocks.append((lpos, rpos))
            # The blocks that still say something, then NOPs where the others were.
            buf[pos + 1] = 2 + 8 * len(blocks) if blocks else size
            for i, (lpos, rpos) in enumerate(blocks):
                _SEQ_ACK.pack_into(
                    buf, pos + 2 + 8 * i, (record.anchor + lpos) & _MASK,
                    (record.anchor + rpos) & _MASK,
                )  # fmt: skip
            if not blocks:  # nothing left: the whole option becomes NOPs
                buf[pos : pos + size] = bytes((_OPT_NOP,)) * size
            else:
                tail = pos + 2 + 8 * len(blocks)
                buf[tail : pos + size] = bytes((_OPT_NOP,)) * (pos + size - tail)
        pos += size


def clamp_mss(packet: PipelinePacket, growth: int) -> bool:
    """Lower the MSS option (RFC 9293 3.7.1) of a SYN or SYN-ACK by ``growth`` bytes, so that
    a full segment grown by a rewrite still fits the path. True when it changed."""
    buf = packet.buf
    pos = packet.l4_offset + 20
    end = packet.payload_offset
    while pos < end:
        kind = buf[pos]
        if kind == _OPT_EOL:
            return False
        if kind == _OPT_NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            return False
        size = buf[pos + 1]
        if size < 2 or pos + size > end:
            return False
        if kind == 2 and size == 4:
            mss = (buf[pos + 2] << 8) | buf[pos + 3]
            # RFC 9293 3.7.1: every host accepts 536 bytes; never clamp below that.
            clamped = max(536, mss - growth)
            if clamped >= mss:
                return False
            buf[pos + 2], buf[pos + 3] = clamped >> 8, clamped & 0xFF
            packet.modified = True
            return True
        pos += size
    return False


def tcp_reset_forward(packet: PipelinePacket, shift: int) -> bytearray:
    """A RST from the packet's sender to its receiver, at the packet's sequence number moved by
    ``shift`` (the last shift of the direction whose record was lost), in a copy of its
    frame: the other half of resetting a connection whose rewrite state is lost."""
    copy = Packet.parse(bytearray(packet.data))
    buf = copy.buf
    l4 = copy.l4_offset
    seq = _U32.unpack_from(buf, l4 + 4)[0]
    _U32.pack_into(buf, l4 + 4, (seq + shift) & _MASK)
    buf[l4 + 13] = _TCP_RST | (buf[l4 + 13] & _TCP_ACK)
    copy._resize_tcp_payload(b"")
    out = bytearray(copy.reply())
    return out
