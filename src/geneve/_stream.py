"""Stream starts: the first bytes of each direction of a TCP flow, in sequence order.

What a modifier needs to read a TLS ClientHello or an HTTP request head that spans several
segments: ``geneve.stream_start(packet)`` adds the packet's segment to its flow's reassembly of
that direction and returns the contiguous bytes from the start of the direction so far. With
``Verdict.HOLD`` the segments wait unsent until the bytes are enough to decide.

Policy, stated:

- The start of a direction is the sequence number after its SYN; without a SYN seen (the flow
  picked up mid-stream) it is the first segment seen.
- In order by sequence number. A segment after a gap waits (within the cap) until the gap is
  filled; a segment or part of one before the start, or after the cap, is ignored.
- Overlaps and retransmissions: the bytes that arrived first win; a retransmission carrying
  other bytes for the same sequence numbers changes nothing (as the kernel keeps what it
  acknowledged).
- Caps: ``limit`` bytes per direction (:data:`STREAM_LIMIT` by default), counted in
  ``Stats.stream_flow_limits`` when a direction reaches it; and :data:`STREAM_TOTAL_BYTES` per
  pipeline for every direction of every flow together, counted in ``Stats.stream_total_limits``
  when a segment is refused for it. A capped direction keeps what it has (``.full``).
- A flow's reassembly lives in ``flow.state`` and goes with the flow (and its bytes back to the
  pipeline's budget) when the flow ends.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ._headers import IPPROTO_TCP

if TYPE_CHECKING:
    from ._flows import Flow
    from ._packet import Packet
    from ._pipeline import Stats

__all__ = ["STREAM_LIMIT", "STREAM_TOTAL_BYTES", "StreamBudget", "StreamStart", "stream_start"]

#: Bytes kept of each direction's start by default: a post-quantum ClientHello (1.5-1.8 KB)
#: or a long HTTP request head fit many times.
STREAM_LIMIT = 16384
#: Bytes of stream starts one pipeline (one worker) keeps at most, all flows together.
STREAM_TOTAL_BYTES = 64 * 1024 * 1024
#: Where a flow keeps its reassembly, in flow.state.
STATE_KEY = "geneve.stream"

_SEQ = struct.Struct("!I").unpack_from
_MOD = 1 << 32
_TCP_SYN = 0x02


class StreamBudget:
    """The bytes every stream start of one pipeline holds, against a bound; counted."""

    __slots__ = ("stats", "total", "used")

    def __init__(self, stats: Stats, total: int = STREAM_TOTAL_BYTES) -> None:
        self.stats = stats
        self.total = total
        self.used = 0


class StreamStart:
    """One direction's start: contiguous bytes from its first sequence number (see the module)."""

    __slots__ = ("_base", "_pending", "_pending_bytes", "budget", "data", "full", "limit")

    def __init__(self, limit: int = STREAM_LIMIT, budget: StreamBudget | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 byte")
        self.limit = limit
        self.budget = budget
        self.data = bytearray()
        self.full = False
        self._base: int | None = None
        self._pending: dict[int, bytes] = {}  # offset -> bytes, after a gap
        self._pending_bytes = 0

    def add(self, seq: int, syn: bool, payload: bytes | memoryview) -> None:
        """Add a segment: its sequence number, whether it is a SYN, its payload."""
        if self._base is None:
            self._base = (seq + 1) % _MOD if syn else seq
        if syn:
            seq = (seq + 1) % _MOD
        if not payload or self.full:
            return
        offset = (seq - self._base) % _MOD
        if offset >= _MOD // 2:  # before the start: keep the part after it, if any
            skip = _MOD - offset
            if skip >= len(payload):
                return
            payload, offset = payload[skip:], 0
        if offset >= self.limit:
            return
        payload = bytes(payload[: self.limit - offset])
        data = self.data
        if offset > len(data):  # after a gap: it waits (the first copy of an offset stays)
            if offset not in self._pending and self._take(len(payload)):
                self._pending[offset] = payload
                self._pending_bytes += len(payload)
            return
        self._append(payload[len(data) - offset :])
        pending = self._pending
        while pending:
            ready = [o for o in pending if o <= len(data)]
            if not ready:
                break
            for o in sorted(ready):
                piece = pending.pop(o)
                self._pending_bytes -= len(piece)
                self._give(len(piece))
                self._append(piece[len(data) - o :])  # empty when data already covers it
        if len(data) >= self.limit and not self.full:
            self.full = True
            if self.budget is not None:
                self.budget.stats.stream_flow_limits += 1

    def _append(self, new: bytes) -> None:
        if new and self._take(len(new)):
            self.data += new

    def _take(self, size: int) -> bool:
        budget = self.budget
        if budget is None:
            return True
        if budget.used + size > budget.total:
            budget.stats.stream_total_limits += 1
            return False
        budget.used += size
        return True

    def _give(self, size: int) -> None:
        if self.budget is not None:
            self.budget.used -= size

    def held(self) -> int:
        """Bytes it holds against its budget."""
        return len(self.data) + self._pending_bytes

    # Pickled without its budget (a handover to another process: the pipeline there
    # gives it its own).
    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "budget"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.budget = None
        for name, value in state.items():
            setattr(self, name, value)

    def release(self) -> None:
        """Give every byte back to the budget (the flow ended, or was decided)."""
        if self.budget is not None:
            self.budget.used -= len(self.data) + self._pending_bytes
        self.data = bytearray()
        self._pending.clear()
        self._pending_bytes = 0
        self.full = True


def stream_start(packet: Packet, *, limit: int = STREAM_LIMIT) -> bytes:
    """Add ``packet``'s TCP segment to its flow's start of its direction; the bytes so far.

    ``packet`` is the one a :class:`Pipeline` with flows on gave the modifier (it has a
    ``flow``). The bytes are those of the direction ``packet`` travels
    (``packet.flow.direction``), from its first byte, contiguous: feeding the same segment
    twice changes nothing. ``limit`` applies when the direction's reassembly is made (its
    first call). Raises ``ValueError`` for a packet that is not TCP with a flow.
    """
    flow: Flow | None = getattr(packet, "flow", None)
    if flow is None or packet.l4_protocol != IPPROTO_TCP or packet.l4_offset < 0:
        raise ValueError("stream_start needs a TCP packet of a flow (a Pipeline with flows on)")
    starts: dict[str, StreamStart] = flow.state.setdefault(STATE_KEY, {})
    start = starts.get(flow.direction)
    if start is None:
        budget: StreamBudget | None = getattr(packet, "streams", None)
        start = starts[flow.direction] = StreamStart(limit, budget)
    buf = packet.buf
    l4 = packet.l4_offset
    if l4 + 14 > packet.ip_end:  # a header cut short: nothing to add
        return bytes(start.data)
    seq = _SEQ(buf, l4 + 4)[0]
    syn = bool(buf[l4 + 13] & _TCP_SYN)
    payload = memoryview(buf)[packet.payload_offset : packet.ip_end]
    start.add(seq, syn, payload)
    return bytes(start.data)


def release_streams(flow: Any) -> None:
    """Give back what a flow's stream starts hold (the pipeline calls it when the flow ends)."""
    state = getattr(flow, "_state", None)
    if state:
        starts = state.get(STATE_KEY)
        if starts:
            for start in starts.values():
                start.release()
