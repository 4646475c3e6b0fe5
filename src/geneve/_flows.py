"""Flows: the state a pipeline keeps for every inner connection, both directions together.

Sans-I/O like the rest of the pipeline: time is the caller's (``now``, seconds on any clock that
does not run backwards: wall-clock time in the appliance, capture time in the replay), so the
same packets at the same times give the same flows, timeouts and hook calls every time.

Strategy. A flow is found by a compact ``bytes`` key built with one ``struct`` pack from the
inner packet: the GWLB endpoint id, the protocol, then the two (address, port) ends in sorted
order, so both directions give the same key. The packet's direction is whether its source is
the end that sent the flow's first packet. Per packet the table pays one dict lookup and a few
slot writes; nothing is sorted or scanned. Timeouts are kept lazily in a heap of deadlines: a
flow is pushed when it is made and when it starts to linger, and a sweep that pops one whose
last packet came later pushes it back at its real deadline, so each flow costs O(log n) once
per timeout period rather than anything per packet. A packet that finds a flow past its
deadline (a sweep had not come yet) ends it first, so that what happens does not depend on how
often the caller sweeps. Flows that never saw a reply sit in an insertion-ordered dict too:
the early-drop candidates, oldest first.

:class:`FlowTable`'s public methods are the contract a compiled table can provide later; this
one stays as the pure-Python fallback and the reference.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from . import checksum as _checksum
from ._headers import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from ._packet import Packet, ReceiveBuffer
from ._seq import record_edits

if TYPE_CHECKING:
    from ._pipeline import Stats, Verdict

__all__ = [
    "LINGER_SECONDS",
    "OTHER_TIMEOUT",
    "TCP_TIMEOUT",
    "TOMBSTONE_SECONDS",
    "CFlow",
    "CFlowTable",
    "EndReason",
    "Flow",
    "FlowTable",
    "PipelinePacket",
    "PyFlowTable",
]

#: GWLB's default TCP idle timeout (``tcp.idle_timeout.seconds``, 60-6000 s).
TCP_TIMEOUT = 350.0
#: GWLB's idle timeout for every other protocol.
OTHER_TIMEOUT = 120.0
#: How long a TCP flow stays after FIN in both directions or a RST, for the last ACKs and
#: retransmissions (conntrack's CLOSE state lasts 10 s too). Its packets still count.
LINGER_SECONDS = 10.0
#: How long a flow that a verdict was discarding (DROP) is remembered after it ends idle: a
#: packet carrying its cookie in that time is dropped rather than taken for a new flow seen
#: mid-stream. GWLB gives a new flow a new cookie, so only stragglers of the old one match.
TOMBSTONE_SECONDS = 60.0
#: The default bound on live flows.
MAX_FLOWS = 1_000_000

EndReason = Literal["fin", "rst", "idle", "evicted", "shutdown"]

IPPROTO_SCTP = 132
_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10
# ICMP echo request/reply (RFC 792) and ICMPv6 echo request/reply (RFC 4443): their identifier
# is the flow's "port".
_ECHO = {(IPPROTO_ICMP, 8), (IPPROTO_ICMP, 0), (IPPROTO_ICMPV6, 128), (IPPROTO_ICMPV6, 129)}
_PORTED = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))

# Keys: endpoint id (8), protocol (1), then the lower (address, port) end's address, the other
# end's address, the lower end's port, the other's: 21 bytes for IPv4, 45 for IPv6.
_KEY4 = struct.Struct("!QB4s4sHH")
_KEY6 = struct.Struct("!QB16s16sHH")
_pack4, _pack6 = _KEY4.pack, _KEY6.pack
_ADDRS4 = struct.Struct("!4s4s").unpack_from
_ADDRS6 = struct.Struct("!16s16s").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_heappush, _heappop = heapq.heappush, heapq.heappop

#: What :meth:`FlowTable.track` returns instead of a flow for a packet to drop.
DROP_TOMBSTONE = "flow"
DROP_TABLE_FULL = "flow-table-full"


class PipelinePacket(Packet):
    """The packet a :class:`Pipeline` hands its modifier: a :class:`Packet` with two more slots.

    :attr:`flow` is the packet's :class:`Flow` (None for a non-IP inner packet, and when the
    pipeline tracks no flows); :attr:`timestamp` the caller's time for this frame.
    """

    __slots__ = ("flow", "grown", "max_growth", "streams", "timestamp")

    flow: Flow | None
    timestamp: float
    streams: Any  # the pipeline's StreamBudget (geneve.stream_start)
    max_growth: int  # the modifier's declared growth of a TCP segment (0: none declared)
    grown: int  # how much the rewrites of this TCP segment grew it so far

    def _tcp_length_change(self, edits: list[tuple[int, int, bytes]]) -> int:
        # With a flow, the rewrite is recorded and applied as the packet leaves the pipeline,
        # sequence numbers adjusted (geneve._seq); without one, the codec's refusal.
        return record_edits(self, edits)


class Flow:
    """One inner connection, both directions, as the flow table sees it.

    ``key`` is direction-independent (see :class:`FlowTable`); ``direction`` is the current
    packet's (``"original"``: the direction of the flow's first packet seen; ``"reply"``).
    ``packets``, ``bytes`` (inner IP bytes) and ``cookies`` (the latest GWLB flow cookie, None
    before one was seen) are ``(original, reply)`` pairs. ``state`` is a dict for the user.
    ``tcp_state`` (TCP only, else None) is one of ``"syn_sent"``, ``"syn_recv"``,
    ``"established"``, ``"fin_wait"`` (a FIN one way), ``"time_wait"`` (FIN both ways) or
    ``"close"`` (a RST). Setting ``verdict`` to ``Verdict.FORWARD`` or ``Verdict.DROP`` decides
    every later packet of the flow without the modifier.
    """

    __slots__ = (
        "_bytes_o",
        "_bytes_r",
        "_cookie_o",
        "_cookie_r",
        "_end_at",
        "_fins",
        "_gone",
        "_highs",
        "_orig_low",
        "_packets_o",
        "_packets_r",
        "_reason",
        "_replied",
        "_seq",
        "_state",
        "_timeout",
        "direction",
        "first_seen",
        "key",
        "last_seen",
        "tcp_state",
        "verdict",
    )

    key: bytes
    direction: Literal["original", "reply"]
    first_seen: float
    last_seen: float
    tcp_state: str | None
    verdict: Verdict | None

    def __init__(self, key: bytes, orig_low: bool, now: float, timeout: float) -> None:
        self.key = key
        self._orig_low = orig_low  # the original direction's source is the key's first end
        self.direction = "original"
        self.first_seen = self.last_seen = now
        self._packets_o = self._packets_r = self._bytes_o = self._bytes_r = 0
        self._cookie_o: int | None = None
        self._cookie_r: int | None = None
        self._state: dict[str, Any] | None = None  # made on first use: most flows never need it
        self.tcp_state = None
        self.verdict = None
        self._fins = 0  # bit 1: FIN seen in the original direction, bit 2: in the reply
        self._end_at = -1.0  # when FIN both ways or a RST ended it (it lingers); -1: not yet
        self._reason: EndReason = "idle"
        self._timeout = timeout
        self._replied = False
        self._gone = False
        self._seq: Any = None  # sequence adjustment, per direction (geneve._seq)
        # The end of the TCP data forwarded so far, per direction (None: none yet), which a
        # first rewrite must not reach behind (geneve._seq).
        self._highs: list[int | None] | None = None

    @property
    def packets(self) -> tuple[int, int]:
        return self._packets_o, self._packets_r

    @property
    def bytes(self) -> tuple[int, int]:
        return self._bytes_o, self._bytes_r

    @property
    def cookies(self) -> tuple[int | None, int | None]:
        return self._cookie_o, self._cookie_r

    @property
    def state(self) -> dict[str, Any]:
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @property
    def deadline(self) -> float:
        """When the flow ends if no packet comes: idle timeout, or the end of its linger."""
        if self._end_at >= 0:
            return self._end_at + LINGER_SECONDS
        return self.last_seen + self._timeout

    # -- for humans (each call decodes the key) ------------------------------------------------

    @property
    def endpoint_id(self) -> int:
        """The GWLB endpoint id of the flow (0 without GWLB options)."""
        value: int = struct.unpack_from("!Q", self.key)[0]
        return value

    @property
    def protocol(self) -> int:
        return self.key[8]

    def _ends(self) -> tuple[tuple[str, int], tuple[str, int]]:
        key = self.key
        size = 4 if len(key) == _KEY4.size else 16
        a, b = key[9 : 9 + size], key[9 + size : 9 + 2 * size]
        pa, pb = _PORTS(key, 9 + 2 * size)
        low = (str(ipaddress.ip_address(a)), pa)
        high = (str(ipaddress.ip_address(b)), pb)
        return (low, high) if self._orig_low else (high, low)

    @property
    def src(self) -> str:
        """The original direction's source address."""
        return self._ends()[0][0]

    @property
    def dst(self) -> str:
        return self._ends()[1][0]

    @property
    def ports(self) -> tuple[int, int]:
        """The original direction's (source, destination) ports; the echo id twice for ICMP
        echo; 0s for other protocols and for fragments."""
        (_s, sport), (_d, dport) = self._ends()
        return sport, dport

    def as_dict(self) -> dict[str, Any]:
        """The flow as plain data (what a flow log writes)."""
        (src, sport), (dst, dport) = self._ends()
        return {
            "endpoint_id": self.endpoint_id,
            "cookies": list(self.cookies),
            "protocol": self.protocol,
            "src": src,
            "dst": dst,
            "sport": sport,
            "dport": dport,
            "packets": list(self.packets),
            "bytes": list(self.bytes),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "tcp_state": self.tcp_state,
        }

    def _set_holding(self, holding: bool) -> None:
        """Whether the pipeline holds frames of this flow (a C table then decides none of its
        packets in the fast path); nothing to do for a Python flow."""

    # What flow_record reads, whichever table the flow is in.
    def _end_at_value(self) -> float:
        return self._end_at

    def _reason_value(self) -> EndReason:
        return self._reason

    def _fins_value(self) -> int:
        return self._fins

    def _replied_value(self) -> bool:
        return self._replied

    def _set_seq_adjusted(self) -> None:
        """The flow's TCP segments have their sequence numbers adjusted (geneve._seq): a C
        table then maps what it can in the fast path (:meth:`_seq_push`) and hands the rest to
        Python, and keeps a tombstone when the flow ends idle; nothing to do for a Python
        flow."""

    def _seq_pull(self, state: Any) -> None:
        """Bring the record up to the data forwarded without it (and, for a C table's flow, to
        what the fast path forwarded and saw acknowledged)."""
        highs = self._highs
        if highs is not None:
            for d in (0, 1):
                record, high = state[d], highs[d]
                if record is not None and high is not None:
                    record.raise_high(high)

    def _note_high(self, d: int, end: int) -> None:
        """TCP data up to sequence number ``end`` of direction ``d`` was forwarded."""
        highs = self._highs
        if highs is None:
            highs = self._highs = [None, None]
        high = highs[d]
        if high is None or 0 < (end - high) & 0xFFFFFFFF < 0x80000000:
            highs[d] = end

    def _seq_push(self, state: Any) -> None:
        """Give the fast path what it needs of the record (a C table's flow)."""

    def __repr__(self) -> str:
        (src, sport), (dst, dport) = self._ends()
        return (
            f"<Flow proto={self.protocol} {src}:{sport} -> {dst}:{dport} "
            f"packets={self.packets} tcp_state={self.tcp_state}>"
        )


def flow_key(packet: Packet) -> tuple[bytes, bool]:
    """The flow key of an inner IPv4/IPv6 packet, and whether its source is the key's first end.

    For humans and tests: what :meth:`FlowTable.track` makes, from a table of its own.
    """
    flow = FlowTable(max_flows=1).track(packet, 0.0)
    assert isinstance(flow, Flow)  # a new table has room and no tombstones
    return flow.key, flow._orig_low


class FlowTable:
    """Live flows by key, their timeouts, and the bound on their number.

    - Key: the GWLB endpoint id (0 without GWLB options, so overlapping client ranges behind
      different endpoints never share a flow), the protocol, the two addresses and, for
      TCP/UDP/SCTP, the two ports (ICMP/ICMPv6 echo: the identifier; otherwise and for
      fragments: 0).
    - Idle timeouts as GWLB's: ``tcp_timeout`` (350 s), ``other_timeout`` (120 s).
    - TCP: a flow first seen without a SYN is established (conntrack's ``tcp_loose``); FIN in
      both directions or a RST ends it after :data:`LINGER_SECONDS`, reason ``"fin"`` /
      ``"rst"``. A SYN (without ACK) whose cookie differs from the latest of its direction, a
      SYN on a lingering flow, or any packet with a different cookie on a lingering flow,
      starts a new flow (the old one ends with its reason, ``"idle"`` when it had none: GWLB
      gave a new cookie because it had let the old flow go).
    - A flow ended idle while its verdict discarded its packets leaves a tombstone for
      :data:`TOMBSTONE_SECONDS`: its packets (no cookie, or a cookie it had) are dropped.
    - At ``max_flows``, the oldest flow that never saw a reply is ended (``"evicted"``) for a
      new one; without one, the new flow's packet is refused (:data:`DROP_TABLE_FULL`).

    A :class:`Pipeline` binds the table to its counters and hooks (:meth:`bind`); it then
    calls :meth:`track` per packet, :meth:`sweep` per tick and :meth:`end_all` at the stop.
    """

    __slots__ = (
        "_flows",
        "_heap",
        "_on_end",
        "_seq",
        "_stats",
        "_tombstones",
        "_unreplied",
        "max_flows",
        "other_timeout",
        "tcp_timeout",
    )

    def __new__(cls, **options: Any) -> FlowTable:
        # FlowTable(...) is the C table when the module is built; PyFlowTable(...) never is.
        if cls is FlowTable and _c is not None:
            return object.__new__(CFlowTable)
        return object.__new__(cls)

    def __init__(
        self,
        *,
        tcp_timeout: float = TCP_TIMEOUT,
        other_timeout: float = OTHER_TIMEOUT,
        max_flows: int = MAX_FLOWS,
    ) -> None:
        if not tcp_timeout > 0 or not other_timeout > 0:
            raise ValueError("flow timeouts must be positive")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.tcp_timeout = float(tcp_timeout)
        self.other_timeout = float(other_timeout)
        self.max_flows = max_flows
        self._flows: dict[bytes, Flow] = {}
        self._unreplied: OrderedDict[bytes, Flow] = OrderedDict()
        self._tombstones: OrderedDict[bytes, tuple[float, tuple[int | None, int | None]]] = (
            OrderedDict()
        )
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = itertools.count()
        self._stats: Stats | None = None
        self._on_end: Callable[[Flow, EndReason], None] | None = None

    def bind(self, stats: Stats, on_end: Callable[[Flow, EndReason], None] | None) -> None:
        """Count into ``stats`` and call ``on_end(flow, reason)`` for each flow that ends."""
        self._stats = stats
        self._on_end = on_end

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, key: bytes) -> Flow | None:
        return self._flows.get(key)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    # -- per packet ------------------------------------------------------------------------------

    def track(self, packet: Packet, now: float) -> Flow | str:
        """Count an inner IPv4/IPv6 packet into its flow (made if new); the flow.

        Or, for a packet to drop before any modifier sees it, the drop reason:
        :data:`DROP_TOMBSTONE` or :data:`DROP_TABLE_FULL`.
        """
        # The key (see the module's top comment), built inline: no call, no tuple.
        buf = packet.buf
        proto = packet.l4_protocol
        l4 = packet.l4_offset
        ip_end = packet.ip_end
        sport = dport = flags = 0
        tcp = proto == IPPROTO_TCP
        if l4 >= 0:
            if proto in _PORTED:
                if l4 + 4 <= ip_end:
                    sport, dport = _PORTS(buf, l4)
                    if tcp and l4 + 14 <= ip_end:
                        flags = buf[l4 + 13]
            elif l4 + 8 <= ip_end and (proto, buf[l4]) in _ECHO:
                sport = dport = _U16(buf, l4 + 4)[0]
        endpoint, cookie = packet.gwlb_ids()
        ip = packet.ip_offset
        if packet.ip_version == 4:
            src, dst = _ADDRS4(buf, ip + 12)
            pack = _pack4
        else:
            src, dst = _ADDRS6(buf, ip + 8)
            pack = _pack6
        low = src < dst or (src == dst and sport <= dport)
        if low:
            key = pack(endpoint, proto, src, dst, sport, dport)
        else:
            key = pack(endpoint, proto, dst, src, dport, sport)
        syn = flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN
        flow = self._flows.get(key)
        if flow is not None:
            original = low is flow._orig_low
            if flow._end_at >= 0:  # ended by FIN or RST, lingering
                seen = flow._cookie_o if original else flow._cookie_r
                if (
                    now >= flow._end_at + LINGER_SECONDS
                    or syn
                    or (cookie is not None and seen is not None and cookie != seen)
                ):
                    self._end(flow, flow._reason)
                    flow = None
            elif now >= flow.last_seen + flow._timeout:
                self._end(flow, "idle")
                flow = None
            elif syn and cookie is not None:
                seen = flow._cookie_o if original else flow._cookie_r
                if seen is not None and cookie != seen:
                    self._end(flow, "idle")
                    flow = None
        if flow is None:
            tombstone = self._tombstones.get(key)
            if tombstone is not None:
                expires, cookies = tombstone
                if now < expires and (cookie is None or cookie in cookies):
                    return DROP_TOMBSTONE
                del self._tombstones[key]
            if len(self._flows) >= self.max_flows:
                if not self._unreplied:
                    return DROP_TABLE_FULL
                victim = self._unreplied.popitem(last=False)[1]
                victim._replied = True  # out of _unreplied already
                self._stats_of().flows_early_dropped += 1
                self._end(victim, "evicted")
            flow = Flow(key, low, now, self.tcp_timeout if tcp else self.other_timeout)
            if tcp:
                flow.tcp_state = "syn_sent" if syn else "established"
            self._flows[key] = flow
            self._unreplied[key] = flow
            _heappush(self._heap, (now + flow._timeout, next(self._seq), flow))
            stats = self._stats_of()
            stats.flows_created += 1
            stats.flows_active += 1
            original = True
        length = ip_end - ip
        if original:
            flow.direction = "original"
            flow._packets_o += 1
            flow._bytes_o += length
            if cookie is not None:
                flow._cookie_o = cookie
        else:
            flow.direction = "reply"
            flow._packets_r += 1
            flow._bytes_r += length
            if cookie is not None:
                flow._cookie_r = cookie
            if not flow._replied:
                flow._replied = True
                del self._unreplied[key]
        if now > flow.last_seen:
            flow.last_seen = now
        if tcp and flags and flow._end_at < 0:
            self._tcp(flow, flags, original, now)
        return flow

    def _tcp(self, flow: Flow, flags: int, original: bool, now: float) -> None:
        if flags & _TCP_RST:
            flow.tcp_state = "close"
            self._linger(flow, "rst", now)
        elif flags & _TCP_FIN:
            flow._fins |= 1 if original else 2
            if flow._fins == 3:
                flow.tcp_state = "time_wait"
                self._linger(flow, "fin", now)
            else:
                flow.tcp_state = "fin_wait"
        else:
            handshake = flags & (_TCP_SYN | _TCP_ACK)
            state = flow.tcp_state
            if state == "syn_sent" and not original and handshake == _TCP_SYN | _TCP_ACK:
                flow.tcp_state = "syn_recv"
            elif state == "syn_recv" and original and handshake == _TCP_ACK:
                flow.tcp_state = "established"

    def _linger(self, flow: Flow, reason: EndReason, now: float) -> None:
        flow._end_at = now
        flow._reason = reason
        _heappush(self._heap, (now + LINGER_SECONDS, next(self._seq), flow))

    # -- ends --------------------------------------------------------------------------------------

    def _stats_of(self) -> Stats:
        stats = self._stats
        if stats is None:  # a table used on its own counts into a Stats of its own
            from ._pipeline import Stats

            stats = self._stats = Stats()
        return stats

    def _end(self, flow: Flow, reason: EndReason) -> None:
        key = flow.key
        del self._flows[key]
        if not flow._replied:
            del self._unreplied[key]
        flow._gone = True
        stats = self._stats_of()
        stats.flows_active -= 1
        ended = stats.flows_ended
        ended[reason] = ended.get(reason, 0) + 1
        verdict = flow.verdict
        # A verdict that discards (DROP) leaves a tombstone when GWLB may still send stragglers;
        # so does a flow whose sequence numbers were adjusted (its next packets are reset).
        if (reason == "idle" and verdict is not None and verdict.name != "FORWARD") or (
            reason in ("idle", "evicted") and flow._seq is not None
        ):
            tombstones = self._tombstones
            tombstones[key] = (flow.deadline + TOMBSTONE_SECONDS, flow.cookies)
            if len(tombstones) > self.max_flows:
                tombstones.popitem(last=False)
        if len(self._heap) > 2 * len(self._flows) + 1024:
            self._compact()
        on_end = self._on_end
        if on_end is not None:
            on_end(flow, reason)

    def _compact(self) -> None:
        # Entries of ended flows wait for their deadline; drop them once they outnumber the rest.
        heap = [entry for entry in self._heap if not entry[2]._gone]
        heapq.heapify(heap)
        self._heap = heap

    def sweep(self, now: float) -> int:
        """End every flow whose deadline is at or before ``now``; how many ended."""
        heap = self._heap
        ended = 0
        while heap and heap[0][0] <= now:
            flow = _heappop(heap)[2]
            if flow._gone:
                continue
            deadline = flow.deadline
            if deadline > now:  # a packet came since: wait for its real deadline
                _heappush(heap, (deadline, next(self._seq), flow))
                continue
            self._end(flow, flow._reason)
            ended += 1
            heap = self._heap  # _end may have compacted it
        tombstones = self._tombstones
        while tombstones:
            key, (expires, _cookies) = next(iter(tombstones.items()))
            if expires > now:
                break
            del tombstones[key]
        return ended

    # -- a handover (an upgrade: docs/appliance.md) ----------------------------------------------

    def export(self) -> list[dict[str, Any]]:
        """Every live flow as plain data (:func:`flow_record`), for :meth:`restore` in another
        table, of either kind, in another process. The table is left as it was."""
        return [flow_record(flow) for flow in self._flows.values()]

    def restore(self, records: list[dict[str, Any]], now: float) -> int:
        """Make live the flows of :meth:`export` records, as they were: no hook, no count of
        a flow started. Returns how many were taken: a record whose key is live already, or
        for which the table has no room (nothing is evicted for one), is left out."""
        taken = 0
        for record in records:
            key = record["key"]
            if key in self._flows or len(self._flows) >= self.max_flows:
                continue
            tcp = key[8] == IPPROTO_TCP
            flow = Flow(key, record["orig_low"], record["first_seen"],
                        self.tcp_timeout if tcp else self.other_timeout)  # fmt: skip
            _restore_fields(flow, record)
            self._tombstones.pop(key, None)
            self._flows[key] = flow
            if not flow._replied:
                self._unreplied[key] = flow
            _heappush(self._heap, (flow.deadline, next(self._seq), flow))
            taken += 1
        stats = self._stats_of()
        stats.flows_active += taken
        return taken

    def export_flows(self) -> dict[str, Any]:
        """Every live flow for :meth:`restore_flows` in another table, in another process:
        ``"states"`` maps a flow's key to its non-empty ``state``; the rest is bytes,
        numbers and strings. A C table gives its entries as they are (one copy), with the
        layout that decodes them; this one, :meth:`export` records."""
        records = self.export()
        states = {}
        for record in records:
            if record["state"]:
                states[record["key"]] = record["state"]
            record["state"] = None
        return {
            "records": records,
            "states": states,
            "seqs": _seqs_of(self._flows.values()),
            "tombstones": self.export_tombstones(),
        }

    def export_tombstones(self) -> list[tuple[bytes, float, int | None, int | None]]:
        """The tombstones, oldest first: (key, when it expires, the cookies it had)."""
        return [(key, expires, *cookies) for key, (expires, cookies) in self._tombstones.items()]

    def restore_tombstones(
        self, tombstones: list[tuple[bytes, float, int | None, int | None]], now: float
    ) -> int:
        """Keep the tombstones of :meth:`export_tombstones` not expired by ``now`` whose key
        is not live here; how many."""
        kept = 0
        for key, expires, cookie_o, cookie_r in tombstones:
            if expires <= now or key in self._flows or key in self._tombstones:
                continue
            self._tombstones[key] = (expires, (cookie_o, cookie_r))
            kept += 1
            if len(self._tombstones) > self.max_flows:
                self._tombstones.popitem(last=False)
        return kept

    def restore_flows(self, exported: dict[str, Any], now: float) -> int:
        """:meth:`restore` the flows of an :meth:`export_flows`, of either kind of table,
        with their states; how many were taken."""
        records = exported.get("records")
        if records is None:  # a C table's entries: read with the layout they came with
            records = decode_entries(exported["entries"], exported["layout"])
        taken = self.restore(records, now)
        self._restore_extras(exported, now)
        return taken

    def _restore_extras(self, exported: dict[str, Any], now: float) -> None:
        """What goes beside the flows: tombstones, states, sequence adjustment records."""
        self.restore_tombstones(exported.get("tombstones", []), now)
        for key, state in exported.get("states", {}).items():
            flow = self.get(key)
            if flow is not None:
                flow._state = state
        for key, (seq, highs) in exported.get("seqs", {}).items():
            flow = self.get(key)
            if flow is None:
                continue
            if highs is not None and flow._highs is None:
                flow._highs = highs
            if seq is not None:
                flow._seq = seq
                flow._set_seq_adjusted()
                flow._seq_push(seq)

    def end_all(self, reason: EndReason = "shutdown") -> int:
        """End every live flow with ``reason`` (oldest first); how many ended."""
        flows = list(self._flows.values())
        self._heap = []  # every entry is about to be stale
        self._tombstones.clear()
        for flow in flows:
            self._end(flow, reason)
        return len(flows)


def _seqs_of(flows: Any) -> dict[bytes, tuple[Any, Any]]:
    """The sequence adjustment records (geneve._seq) and high marks of the flows that have
    them, by key: they go beside the flows at a handover."""
    return {
        flow.key: (flow._seq, flow._highs)
        for flow in flows
        if flow._seq is not None or flow._highs is not None
    }


def flow_record(flow: Flow) -> dict[str, Any]:
    """A live flow as plain data (bytes, numbers, strings, its ``state`` dict): what
    :meth:`FlowTable.restore` takes, whichever kind of table made it."""
    cookie_o, cookie_r = flow.cookies
    verdict = flow.verdict
    return {
        "key": flow.key,
        "orig_low": bool(flow._orig_low),
        "first_seen": flow.first_seen,
        "last_seen": flow.last_seen,
        "end_at": flow._end_at_value(),
        "reason": flow._reason_value(),
        "fins": flow._fins_value(),
        "replied": flow._replied_value(),
        "tcp_state": flow.tcp_state,
        "packets": flow.packets,
        "bytes": flow.bytes,
        "cookies": (cookie_o, cookie_r),
        "verdict": None if verdict is None else verdict.name,
        "state": flow._state,
    }


# What decode_entries needs of a C entry, by field: (offset, struct format), and its size.
_ENTRY_FIELDS = {
    "key": "48s",
    "first_seen": "d",
    "last_seen": "d",
    "end_at": "d",
    "packets": "2Q",
    "bytes": "2Q",
    "cookie": "2I",
    "key_len": "B",
    "orig_low": "B",
    "verdict": "B",
    "tcp_state": "B",
    "fins": "B",
    "reason": "B",
    "flags": "B",
}


def entry_layout() -> dict[str, Any] | None:
    """Where each field is in this build's C entry (None without the C table): what goes
    with exported entries, so that a process built otherwise can still read them."""
    if _c is None:
        return None
    ffi = _c.ffi
    return {
        "size": ffi.sizeof("struct geneve_flow"),
        "fields": {
            name: (ffi.offsetof("struct geneve_flow", name), kind)
            for name, kind in _ENTRY_FIELDS.items()
        },
    }


def decode_entries(raw: bytes, layout: dict[str, Any]) -> list[dict[str, Any]]:
    """Records (see :func:`flow_record`) of C entries exported by a table of ``layout``."""
    size = layout["size"]
    readers = [
        (name, offset, struct.Struct("=" + kind))
        for name, (offset, kind) in layout["fields"].items()
    ]
    verdicts = ("None", "FORWARD", "DROP", "REJECT")
    records = []
    for base in range(0, len(raw) - size + 1, size):
        e: dict[str, Any] = {}
        for name, offset, reader in readers:
            values = reader.unpack_from(raw, base + offset)
            e[name] = values[0] if len(values) == 1 else values
        flags = e["flags"]
        if e["key_len"] not in (21, 45) or e["verdict"] > 3:
            continue  # not an entry this code knows how to read
        if e["tcp_state"] >= len(_TCP_STATES) or e["reason"] >= len(_REASONS):
            continue
        records.append(
            {
                "key": e["key"][: e["key_len"]],
                "orig_low": bool(e["orig_low"]),
                "first_seen": e["first_seen"],
                "last_seen": e["last_seen"],
                "end_at": e["end_at"],
                "reason": _REASONS[e["reason"]],
                "fins": e["fins"],
                "replied": bool(flags & 4),
                "tcp_state": _TCP_STATES[e["tcp_state"]],
                "packets": tuple(e["packets"]),
                "bytes": tuple(e["bytes"]),
                "cookies": (
                    e["cookie"][0] if flags & 1 else None,
                    e["cookie"][1] if flags & 2 else None,
                ),
                "verdict": None if e["verdict"] == 0 else verdicts[e["verdict"]],
                "state": None,
            }
        )
    return records


def _restore_fields(flow: Flow, record: dict[str, Any]) -> None:
    """Set a new Python flow's fields from a record (see :func:`flow_record`)."""
    flow.last_seen = float(record["last_seen"])
    flow._end_at = float(record["end_at"])
    flow._reason = record["reason"]
    flow._fins = int(record["fins"])
    flow._replied = bool(record["replied"])
    flow.tcp_state = record["tcp_state"]
    flow._packets_o, flow._packets_r = record["packets"]
    flow._bytes_o, flow._bytes_r = record["bytes"]
    flow._cookie_o, flow._cookie_r = record["cookies"]
    name = record["verdict"]
    flow.verdict = None if name is None else _verdict_by_name(name)
    flow._state = record["state"]


def _verdict_by_name(name: str) -> Verdict:
    from ._pipeline import Verdict

    return Verdict[name]


# -- the C table ---------------------------------------------------------------------------------
#
# The same rules in compact memory (_flowtable.c): entries of 184 bytes in one array, a hash
# index, a timer wheel for the timeouts. Python keeps only the views it has made
# (:class:`CFlow`) of the flows it has seen, by entry index. A flow that ends waits in C until
# Python has copied it for its view and its ``on_flow_end`` call, then its entry is reused.

_c: Any
if os.environ.get("GENEVE_PURE_PYTHON", "") not in ("", "0"):
    _c = None
else:
    try:
        from . import _flows_cffi as _c
    except ImportError:  # built without a compiler: the pure-Python table
        _c = None

_NEED_IDS = -5 if _c is None else _c.lib.GENEVE_FLOW_NEED_IDS
_HOLDING = 64 if _c is None else _c.lib.GENEVE_FLOW_HOLDING
_REPLIED = 4 if _c is None else _c.lib.GENEVE_FLOW_REPLIED

_SEQ_ADJUSTED, _SEQ_RECORD, _SEQ_HIGH, _SEQ_ACKED = (
    (1, 2, 8, 32)
    if _c is None
    else (
        _c.lib.GENEVE_SEQ_ADJUSTED,
        _c.lib.GENEVE_SEQ_RECORD,
        _c.lib.GENEVE_SEQ_HIGH,
        _c.lib.GENEVE_SEQ_ACKED,
    )
)
# Whether ReceiveBuffer._target is a C view of the buffer (the C checksum module's).
_TARGETS = _checksum.IMPLEMENTATION == "c"
#: The most flows one C table holds (the bound is per table: per worker in the appliance).
C_MAX_FLOWS = 1 << 24
#: Flows a sweep or an ``end_all`` ends per call into C before Python takes them.
_CHUNK = 1024
_TCP_STATES = (None, "syn_sent", "syn_recv", "established", "fin_wait", "time_wait", "close")
_REASONS: tuple[EndReason, ...] = ("idle", "fin", "rst", "evicted", "shutdown")
_REASON_CODES = {reason: code for code, reason in enumerate(_REASONS)}
_TCP_STATE_CODES = {state: code for code, state in enumerate(_TCP_STATES)}
_LAYOUT: dict[str, Any] | None = None  # entry_layout(), once the function exists (below)
_verdict_codes: dict[Any, int] = {}
_verdicts: list[Any] = []


def _verdict_codes_by_name() -> dict[str, int]:
    return {v.name: code for code, v in enumerate(_verdict_table()) if v is not None}


def _verdict_table() -> list[Any]:
    # Verdict lives in the pipeline, which imports this module: looked up on first use.
    if not _verdicts:
        from ._pipeline import Verdict

        _verdicts.extend((None, Verdict.FORWARD, Verdict.DROP, Verdict.REJECT))
        _verdict_codes.update({v: code for code, v in enumerate(_verdicts)})
    return _verdicts


class CFlow(Flow):
    """A flow of the C table: a view of its entry while it lives, of a copy once it ended.

    The same attributes as :class:`Flow`, read from C on each access.
    """

    __slots__ = ("_e", "_table", "_verdict")

    def __init__(self, entry: Any, table: Any = None) -> None:  # the entry holds the data
        self._e = entry
        # The C table the entry lives in, kept alive as long as the view reads it (None for
        # a view of a copy: a flow that ended).
        self._table = table
        self._state = None
        self._seq = None
        self._highs = None
        self.direction = "original"
        # Only Python sets a verdict (C reads it): kept here too, so reading it is cheap.
        self._verdict = _verdict_table()[entry.verdict]

    @property
    def key(self) -> bytes:  # type: ignore[override]
        e = self._e
        return bytes(_c.ffi.buffer(e.key, e.key_len)) if _c is not None else b""

    @property
    def _orig_low(self) -> bool:  # type: ignore[override]
        return bool(self._e.orig_low)

    @property
    def first_seen(self) -> float:  # type: ignore[override]
        return float(self._e.first_seen)

    @property
    def last_seen(self) -> float:  # type: ignore[override]
        return float(self._e.last_seen)

    @property
    def tcp_state(self) -> str | None:  # type: ignore[override]
        return _TCP_STATES[self._e.tcp_state]

    @property
    def verdict(self) -> Verdict | None:
        verdict: Verdict | None = self._verdict
        return verdict

    @verdict.setter
    def verdict(self, value: Verdict | None) -> None:
        code = _verdict_codes.get(value)
        if code is None:
            raise TypeError(f"flow.verdict must be a Verdict or None, not {value!r}")
        self._e.verdict = code
        self._verdict = value

    def _set_holding(self, holding: bool) -> None:
        e = self._e
        e.flags = (e.flags | _HOLDING) if holding else (e.flags & ~_HOLDING & 0xFF)

    def _set_seq_adjusted(self) -> None:
        self._e.seq_adjusted |= _SEQ_ADJUSTED

    def _note_high(self, d: int, end: int) -> None:
        e = self._e
        bit = _SEQ_HIGH << d
        c = e.seq[d]
        if not e.seq_adjusted & bit or 0 < (end - c.high) & 0xFFFFFFFF < 0x80000000:
            c.high = end
            e.seq_adjusted |= bit

    def _seq_pull(self, state: Any) -> None:
        e = self._e
        bits = e.seq_adjusted
        for d in (0, 1):
            record = state[d]
            if record is not None:
                if bits & (_SEQ_HIGH << d):
                    record.raise_high(e.seq[d].high)
                if bits & (_SEQ_ACKED << d):
                    record.acknowledged(record.unmapped(e.seq[d].acked, True))

    def _seq_push(self, state: Any) -> None:
        e = self._e
        bits = e.seq_adjusted
        for d in (0, 1):
            record = state[d]
            if record is not None:
                c = e.seq[d]
                c.after, c.shift, c.high = record.fast_path()
                bits |= (_SEQ_RECORD | _SEQ_HIGH) << d
        e.seq_adjusted = bits

    @property
    def packets(self) -> tuple[int, int]:
        p = self._e.packets
        return int(p[0]), int(p[1])

    @property
    def bytes(self) -> tuple[int, int]:
        b = self._e.bytes
        return int(b[0]), int(b[1])

    @property
    def cookies(self) -> tuple[int | None, int | None]:
        e = self._e
        flags = e.flags
        return (
            int(e.cookie[0]) if flags & 1 else None,
            int(e.cookie[1]) if flags & 2 else None,
        )

    def _end_at_value(self) -> float:
        return float(self._e.end_at)

    def _reason_value(self) -> EndReason:
        reason: EndReason = _REASONS[self._e.reason]
        return reason

    def _fins_value(self) -> int:
        return int(self._e.fins)

    def _replied_value(self) -> bool:
        return bool(self._e.flags & _REPLIED)

    @property
    def deadline(self) -> float:
        e = self._e
        if e.end_at >= 0:
            return float(e.end_at) + LINGER_SECONDS
        timeout = self._table_timeouts[0 if e.tcp else 1]
        return float(e.last_seen) + timeout

    _table_timeouts: tuple[float, float] = (TCP_TIMEOUT, OTHER_TIMEOUT)


class CFlowTable(FlowTable):
    """:class:`FlowTable` in C (``_flowtable.c``): what ``FlowTable(...)`` makes when built.

    The same rules and methods; a flow is a :class:`CFlow` view. The appliance's C fast path
    counts frames into the same table (:meth:`c_address`).
    """

    __slots__ = ("_entry", "_flow_class", "_from_buffer", "_t", "_track", "_views")

    _t: Any
    _track: Any
    _entry: Any
    _from_buffer: Any
    _flow_class: type[CFlow]

    def __init__(self, **options: Any) -> None:  # FlowTable's keywords, checked there
        super().__init__(**options)
        if _c is None:
            raise RuntimeError("the C flow table is not built")
        max_flows, tcp_timeout, other_timeout = self.max_flows, self.tcp_timeout, self.other_timeout
        if max_flows > C_MAX_FLOWS:
            raise ValueError(f"max_flows must be at most {C_MAX_FLOWS} per table")
        lib, ffi = _c.lib, _c.ffi
        table = lib.geneve_flow_table_new(max_flows, self.tcp_timeout, self.other_timeout)
        if table == ffi.NULL:
            raise MemoryError(f"cannot allocate a flow table for {max_flows} flows")
        self._t = ffi.gc(table, lib.geneve_flow_table_free)
        self._track = lib.geneve_flow_track
        self._entry = lib.geneve_flow_entry
        self._from_buffer = ffi.from_buffer
        self._views: dict[int, CFlow] = {}
        # Each table's views know its timeouts (for Flow.deadline).
        self._flow_class = type(
            "CFlow", (CFlow,), {"__slots__": (), "_table_timeouts": (tcp_timeout, other_timeout)}
        )

    def c_address(self) -> int:
        """The table's address, for C code that shares it (the fast path)."""
        assert _c is not None
        return int(_c.ffi.cast("uintptr_t", self._t))

    def __len__(self) -> int:
        assert _c is not None
        return int(_c.lib.geneve_flow_count(self._t, _c.lib.GENEVE_FLOW_COUNT_LIVE))

    @property
    def tombstones(self) -> int:
        assert _c is not None
        return int(_c.lib.geneve_flow_count(self._t, _c.lib.GENEVE_FLOW_COUNT_TOMBSTONES))

    @property
    def memory(self) -> int:
        """Bytes of the table touched so far: its entries in use and its index."""
        assert _c is not None
        return int(_c.lib.geneve_flow_count(self._t, _c.lib.GENEVE_FLOW_COUNT_BYTES))

    def _view(self, index: int) -> CFlow:
        view = self._views.get(index)
        if view is None:
            view = self._views[index] = self._flow_class(self._entry(self._t, index), self._t)
        return view

    def __iter__(self) -> Iterator[Flow]:
        assert _c is not None
        found: list[Flow] = []
        index = _c.lib.geneve_flow_next(self._t, 0)
        while index >= 0:
            found.append(self._view(index))
            index = _c.lib.geneve_flow_next(self._t, index + 1)
        return iter(found)

    def get(self, key: bytes) -> Flow | None:
        assert _c is not None
        if len(key) not in (21, 45):
            return None
        index = _c.lib.geneve_flow_lookup(self._t, _c.ffi.new("uint8_t[]", key), len(key))
        return None if index < 0 else self._view(index)

    def track(self, packet: Packet, now: float) -> Flow | str:
        buf = packet.buf
        # A receive buffer has its C view made once (geneve.checksum's, a char array).
        target = buf._target if type(buf) is ReceiveBuffer and _TARGETS else self._from_buffer(buf)
        at = packet.udp_offset + 16  # GWLB's options, usually: C reads them there
        ip, l4, end, proto = packet.ip_offset, packet.l4_offset, packet.ip_end, packet.l4_protocol
        version = packet.ip_version
        if packet.inner_offset - at == 32:
            result = self._track(self._t, target, len(buf), version, ip, l4, end, proto, at, 0,
                                 -1, now)  # fmt: skip
        else:
            result = _NEED_IDS
        if result == _NEED_IDS:
            endpoint, cookie = packet.gwlb_ids()
            result = self._track(self._t, target, len(buf), version, ip, l4, end, proto, -1,
                                 endpoint, -1 if cookie is None else cookie, now)  # fmt: skip
        if result < 0:
            self.drain()  # the packet may have ended the flow it would have had
            if result == -1:
                return DROP_TOMBSTONE
            if result == -2:
                return DROP_TABLE_FULL
            raise ValueError(f"geneve_flow_track refused the packet's offsets ({result})")
        if result & 16:  # flows ended on the way (timeout, a new cookie, an eviction)
            self.drain()
        if result & 8:
            stats = self._stats_of()
            stats.flows_created += 1
            stats.flows_active += 1
        view = self._views.get(result >> 5)
        if view is None:
            view = self._view(result >> 5)
        view.direction = "original" if result & 4 else "reply"
        return view

    def set_syn_to_python(self, on: bool) -> None:
        """Whether the fast path hands every TCP SYN to Python (to clamp its MSS: geneve._seq)."""
        assert _c is not None
        _c.lib.geneve_flow_set_syn_to_python(self._t, 1 if on else 0)

    def count_created(self, count: int) -> None:
        """``count`` flows the fast path made."""
        stats = self._stats_of()
        stats.flows_created += count
        stats.flows_active += count

    def drain(self) -> None:
        """Take every flow that ended in C: count it, freeze its view, call the end hook."""
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        t = self._t
        stats = self._stats_of()
        ended = stats.flows_ended
        on_end = self._on_end
        while True:
            index = lib.geneve_flow_pop_ended(t)
            if index < 0:
                return
            entry = self._entry(t, index)
            reason = _REASONS[entry.reason]
            view = self._views.pop(index, None)
            if view is not None or on_end is not None:
                copy = ffi.new("struct geneve_flow *")
                ffi.memmove(copy, entry, ffi.sizeof("struct geneve_flow"))
                if view is None:
                    view = self._flow_class(copy)
                else:
                    view._e = copy
                    view._table = None
            lib.geneve_flow_release(t, index)
            stats.flows_active -= 1
            ended[reason] = ended.get(reason, 0) + 1
            if reason == "evicted":
                stats.flows_early_dropped += 1
            if on_end is not None:
                assert view is not None
                on_end(view, reason)

    def sweep(self, now: float) -> int:
        assert _c is not None
        total = 0
        while True:
            ended: int = _c.lib.geneve_flow_sweep(self._t, now, _CHUNK)
            if ended < 0:
                raise ValueError(f"geneve_flow_sweep refused now={now!r}")
            total += ended
            self.drain()
            if ended < _CHUNK:
                return total

    def export(self) -> list[dict[str, Any]]:
        return [flow_record(flow) for flow in self]

    def export_flows(self) -> dict[str, Any]:
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        live = len(self)
        entries = ffi.new("struct geneve_flow[]", max(1, live))
        copied = lib.geneve_flow_export(self._t, entries, live)
        states = {view.key: view._state for view in self._views.values() if view._state}
        return {
            "entries": bytes(ffi.buffer(entries, copied * ffi.sizeof("struct geneve_flow"))),
            "layout": _LAYOUT,
            "states": states,
            "seqs": _seqs_of(self._views.values()),
            "tombstones": self.export_tombstones(),
        }

    def export_tombstones(self) -> list[tuple[bytes, float, int | None, int | None]]:
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        count = self.tombstones
        entries = ffi.new("struct geneve_flow[]", max(1, count))
        copied = lib.geneve_flow_export_tombstones(self._t, entries, count)
        found = []
        for i in range(copied):
            e = entries[i]
            found.append((
                bytes(ffi.buffer(e.key, e.key_len)),
                float(e.expires),
                int(e.cookie[0]) if e.flags & 1 else None,
                int(e.cookie[1]) if e.flags & 2 else None,
            ))  # fmt: skip
        return found

    def restore_tombstones(
        self, tombstones: list[tuple[bytes, float, int | None, int | None]], now: float
    ) -> int:
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        entry = ffi.new("struct geneve_flow *")
        kept = 0
        for key, expires, cookie_o, cookie_r in tombstones:
            if len(key) not in (21, 45):
                continue
            ffi.memmove(entry, bytes(ffi.sizeof("struct geneve_flow")), ffi.sizeof(entry[0]))
            ffi.memmove(entry.key, key, len(key))
            entry.key[47] = entry.key_len = len(key)
            entry.expires = expires
            flags = 0
            if cookie_o is not None:
                entry.cookie[0], flags = cookie_o, flags | 1
            if cookie_r is not None:
                entry.cookie[1], flags = cookie_r, flags | 2
            entry.flags = flags
            if lib.geneve_flow_restore_tombstone(self._t, entry, now) >= 0:
                kept += 1
        return kept

    def restore_flows(self, exported: dict[str, Any], now: float) -> int:
        if exported.get("layout") != _LAYOUT:  # records, or another build's entries
            return super().restore_flows(exported, now)
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        raw = exported["entries"]
        count = len(raw) // ffi.sizeof("struct geneve_flow")
        if count:
            entries = ffi.from_buffer("struct geneve_flow[]", raw)
            taken = int(lib.geneve_flow_restore_many(self._t, entries, count, now))
        else:
            taken = 0
        self._stats_of().flows_active += max(0, taken)
        self._restore_extras(exported, now)
        return max(0, taken)

    def restore(self, records: list[dict[str, Any]], now: float) -> int:
        assert _c is not None
        ffi, lib = _c.ffi, _c.lib
        entry = ffi.new("struct geneve_flow *")
        states = _TCP_STATE_CODES
        taken = 0
        for record in records:
            key = record["key"]
            if len(key) not in (21, 45):
                continue
            ffi.memmove(entry, bytes(ffi.sizeof("struct geneve_flow")), ffi.sizeof(entry[0]))
            ffi.memmove(entry.key, key, len(key))
            entry.key[47] = entry.key_len = len(key)
            entry.orig_low = bool(record["orig_low"])
            entry.first_seen = record["first_seen"]
            entry.last_seen = record["last_seen"]
            entry.end_at = record["end_at"]
            entry.packets[0], entry.packets[1] = record["packets"]
            entry.bytes[0], entry.bytes[1] = record["bytes"]
            cookie_o, cookie_r = record["cookies"]
            flags = 0
            if cookie_o is not None:
                entry.cookie[0], flags = cookie_o, flags | 1
            if cookie_r is not None:
                entry.cookie[1], flags = cookie_r, flags | 2
            if record["replied"]:
                flags |= _REPLIED
            entry.flags = flags
            name = record["verdict"]
            entry.verdict = 0 if name is None else _verdict_codes_by_name()[name]
            entry.tcp = key[8] == IPPROTO_TCP
            entry.tcp_state = states.get(record["tcp_state"], 0)
            entry.fins = record["fins"]
            entry.reason = _REASON_CODES[record["reason"]]
            index = lib.geneve_flow_restore(self._t, entry, now)
            if index < 0:
                continue
            taken += 1
            if record["state"] is not None:
                self._view(index)._state = record["state"]
        stats = self._stats_of()
        stats.flows_active += taken
        return taken

    def end_all(self, reason: EndReason = "shutdown") -> int:
        assert _c is not None
        total = 0
        while True:
            ended: int = _c.lib.geneve_flow_end_all(self._t, _REASON_CODES[reason], _CHUNK)
            total += ended
            self.drain()
            if ended < _CHUNK:
                return total


class PyFlowTable(FlowTable):
    """The pure-Python :class:`FlowTable`, whether or not the C one is built (the reference)."""

    __slots__ = ()

_LAYOUT = entry_layout()
