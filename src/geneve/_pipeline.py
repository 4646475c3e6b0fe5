"""The pipeline: what takes a received frame to the frames to send back.

parse -> modifier -> verdict -> reply (fix-up when edited, outer swap), each step a call down to
:class:`Packet`. :class:`Pipeline` binds a modifier and its policies once and runs frame after
frame; :func:`process` runs one. Shared by the appliance and the replay, so what the replay
shows on a capture is what the appliance does on the wire. Sans-I/O: it reads and writes a
caller's buffer and a :class:`Stats` object, nothing else, and it is the one writer of those
counters.
"""

from __future__ import annotations

import enum
import inspect
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from ._errors import GeneveError, NotGeneveError, PacketTooLargeError
from ._flows import (
    DROP_TOMBSTONE,
    TOMBSTONE_SECONDS,
    CFlowTable,
    EndReason,
    Flow,
    FlowTable,
    PipelinePacket,
)
from ._headers import GENEVE_PORT, IPPROTO_TCP, IPPROTO_UDP
from ._packet import MAX_INNER_LENGTH, Packet
from ._reject import reject_frame
from ._seq import ADJUSTED, GAP, adjust, clamp_mss, note_forwarded, tcp_reset_forward
from ._stream import STATE_KEY as STREAM_STATE_KEY
from ._stream import StreamBudget, release_streams

__all__ = [
    "ALL_PACKETS",
    "Drop",
    "ErrorPolicy",
    "Flow",
    "FlowTable",
    "Interest",
    "Modifier",
    "Pipeline",
    "PipelinePacket",
    "Stats",
    "Verdict",
    "count",
    "declare_interest",
    "interest_of",
    "process",
    "rule_counters",
]


class Verdict(enum.Enum):
    """What a modifier decides for a packet. Returning None means FORWARD.

    REJECT drops the packet and tells its sender: a TCP RST, or an ICMP / ICMPv6 "administratively
    prohibited" unreachable, sent back to GWLB in the packet's own Geneve encapsulation
    (:func:`geneve.reject_frame`). Where none may be sent (a RST, an ICMP error, a later
    fragment, a multicast destination) or the flow's rate is spent, it is a DROP.
    """

    FORWARD = "forward"
    DROP = "drop"
    REJECT = "reject"
    #: Keep the packet in its flow, unsent, until the flow is decided: when ``flow.verdict`` is
    #: set (FORWARD: the held frames go, in order, before the packet that decided; DROP or
    #: REJECT: they are dropped), or else by the next packet of their direction the modifier
    #: does not hold (its verdict decides them too). Bounded (:data:`HOLD_FLOW_BYTES`,
    #: :data:`HOLD_SECONDS`, :data:`HOLD_TOTAL_BYTES`); past a bound the pipeline's
    #: ``on_hold_limit`` decides ("drop": they are dropped and the flow's verdict becomes
    #: DROP; "forward": they are sent and it becomes FORWARD). Without a flow (flows off, a
    #: non-IP packet) HOLD is a drop (``hold-limit``).
    HOLD = "hold"

    @staticmethod
    def drop(reason: str) -> Drop:
        """A DROP counted under a reason of the modifier's own: ``rule:<reason>`` in
        ``Stats.drops`` and ``/metrics`` (the prefix keeps it apart from the pipeline's own
        reasons). ``reason``: 1-48 letters, digits, ``_``, ``-`` or ``.``. Make it once
        (``DENIED = Verdict.drop("denied")``) and return it. At most :data:`MAX_RULE_REASONS`
        distinct reasons are counted apart per worker; later ones count as ``rule:other``."""
        return Drop(reason)


_REASON_OK = re.compile(r"[A-Za-z0-9_.-]{1,48}\Z")


class Drop:
    """What :meth:`Verdict.drop` returns: a DROP with its reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not _REASON_OK.match(reason):
            raise ValueError(
                f"a drop reason is 1-48 letters, digits, '_', '-' or '.', not {reason!r}"
            )
        self.reason = "rule:" + reason

    def __repr__(self) -> str:
        return f"Verdict.drop({self.reason[5:]!r})"


#: Distinct reasons of a modifier's own (Verdict.drop) counted apart per pipeline.
MAX_RULE_REASONS = 64

# Counters a modifier keeps (count()): per process, so per worker; the appliance sums them.
_RULE_COUNTERS: dict[str, int] = {}
#: Distinct counter names kept at most; more are refused (ValueError) rather than grow.
MAX_RULE_COUNTERS = 256


def check_modifier(modifier: object) -> None:
    """Refuse, with one line, what cannot be called as ``modifier(packet)``."""
    if not callable(modifier):
        raise TypeError(f"the modifier must be callable, not {type(modifier).__name__}")
    try:
        signature = inspect.signature(modifier)
    except (TypeError, ValueError):  # a callable without one (a builtin): cannot tell
        return
    try:
        signature.bind(None)
    except TypeError:
        name = getattr(modifier, "__qualname__", type(modifier).__name__)
        raise TypeError(
            f"the modifier {name}{signature} must take one argument, the packet"
        ) from None


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the modifier's own counter ``name`` (made at first use).

    Exported by the appliance as ``geneve_rule_counter_total{name="..."}`` in ``/metrics`` and
    under ``"rule_counters"`` in the health JSON, summed over the workers. ``name``: as a
    :meth:`Verdict.drop` reason. Counters live per process (each worker its own).
    """
    counters = _RULE_COUNTERS
    if name not in counters:
        if not isinstance(name, str) or not _REASON_OK.match(name):
            raise ValueError(
                f"a counter name is 1-48 letters, digits, '_', '-' or '.', not {name!r}"
            )
        if len(counters) >= MAX_RULE_COUNTERS:
            raise ValueError(f"more than {MAX_RULE_COUNTERS} counters: {name!r} refused")
        counters[name] = 0
    counters[name] += n


def rule_counters() -> dict[str, int]:
    """A copy of this process's modifier counters (:func:`count`)."""
    return dict(_RULE_COUNTERS)


Modifier = Callable[[Packet], "Verdict | Drop | None"]
ErrorPolicy = Literal["drop", "forward"]


@dataclass(frozen=True)
class Interest:
    """Which inner packets a modifier wants to see (the rest it would forward untouched).

    An inner UDP or TCP packet, over IPv4 or IPv6, is of interest when a source or destination
    port is in ``udp_ports`` / ``tcp_ports`` (``None``: every port) **and**, where ``needles``
    is given, its payload contains at least one of them (each a non-empty byte string).
    Anything else (ICMP, IPv6 extension headers, fragments, non-IP) is always of interest.
    The appliance forwards a packet of no interest without calling the
    modifier at all (checked, swapped and sent in C, in batches), which is what makes traffic
    that no rule touches cheap. A modifier that declares nothing sees every packet.

    ``max_growth``: the most bytes the modifier adds to one TCP segment (a rewrite that changes
    the length, docs/codec.md, "TCP rewrites that change the length"). With flows on, the
    pipeline lowers the MSS option of the SYN and SYN-ACK of every TCP flow on the ports of
    interest by that much, so that a full-size segment still fits the path once grown (GWLB
    does not fragment). 0 (the default): the modifier never grows a TCP segment.

    ``|`` combines the interests of modifiers run one after another (their growths add up),
    ``&`` narrows one by a condition; both may over-approximate (send Python a packet it did
    not need), never the other way.
    """

    udp_ports: frozenset[int] | None = None
    tcp_ports: frozenset[int] | None = None
    needles: frozenset[bytes] | None = None
    max_growth: int = 0

    def __post_init__(self) -> None:
        # An empty needle is in every payload: it would make needles mean nothing.
        if self.needles is not None and not all(self.needles):
            raise ValueError("needles must be non-empty byte strings")
        # A port outside 0-65535 matches nothing in Python and has no place in C's tables.
        for ports in (self.udp_ports, self.tcp_ports):
            if ports is not None and not all(type(p) is int and 0 <= p <= 0xFFFF for p in ports):
                raise ValueError("ports must be integers from 0 to 65535")
        # With no UDP or TCP port of interest the needles can never apply: make that explicit,
        # so that combining with another interest does not widen its needles.
        if self.udp_ports == frozenset() and self.tcp_ports == frozenset():
            object.__setattr__(self, "needles", frozenset())
        if type(self.max_growth) is not int or not 0 <= self.max_growth <= 0xFFFF:
            raise ValueError("max_growth must be an integer from 0 to 65535")

    def __or__(self, other: Interest) -> Interest:
        def union(a: frozenset[Any] | None, b: frozenset[Any] | None) -> frozenset[Any] | None:
            return None if a is None or b is None else a | b

        return Interest(
            union(self.udp_ports, other.udp_ports),
            union(self.tcp_ports, other.tcp_ports),
            union(self.needles, other.needles),
            min(self.max_growth + other.max_growth, 0xFFFF),
        )

    def __and__(self, other: Interest) -> Interest:
        def meet(a: frozenset[int] | None, b: frozenset[int] | None) -> frozenset[int] | None:
            return b if a is None else a if b is None else a & b

        # A packet must contain a needle of each side: containing one of either is necessary.
        a, b = self.needles, other.needles
        needles = b if a is None else a if b is None else a | b
        return Interest(
            meet(self.udp_ports, other.udp_ports),
            meet(self.tcp_ports, other.tcp_ports),
            needles,
            max(self.max_growth, other.max_growth),
        )

    @property
    def everything(self) -> bool:
        return self.udp_ports is None and self.tcp_ports is None and self.needles is None


#: The interest of a modifier that declares none: every packet.
ALL_PACKETS = Interest()
_INTEREST_ATTR = "geneve_interest"


def interest_of(modifier: object) -> Interest:
    """What ``modifier`` declared with :func:`declare_interest` (or the geneve.rules helpers)."""
    interest = getattr(modifier, _INTEREST_ATTR, ALL_PACKETS)
    return interest if isinstance(interest, Interest) else ALL_PACKETS


_F = TypeVar("_F", bound=Callable[..., object])


def declare_interest(
    modifier: _F,
    *,
    udp_ports: Iterable[int] | None = None,
    tcp_ports: Iterable[int] | None = None,
    payload_contains: Iterable[bytes] | None = None,
    interest: Interest | None = None,
    max_growth: int = 0,
) -> _F:
    """Say that ``modifier`` only needs some inner UDP/TCP packets (and all the others).

    ``udp_ports`` / ``tcp_ports``: ``None`` means every port, an empty list none.
    ``payload_contains``: the modifier acts only on payloads containing one of these.
    ``max_growth``: the most bytes it adds to one TCP segment (see :class:`Interest`). Or give
    an :class:`Interest` made already (``interest=``), alone. Returns the same callable, so
    ``modifier = declare_interest(fn, udp_ports=[53])`` works. The promise is the modifier's:
    a packet outside its interest is forwarded as if it returned None without changing
    anything.
    """
    if interest is None:
        needles = (
            None if payload_contains is None else frozenset(bytes(n) for n in payload_contains)
        )
        if needles is not None and not all(needles):
            raise ValueError("payload_contains needs non-empty byte strings")
        interest = Interest(
            None if udp_ports is None else frozenset(udp_ports),
            None if tcp_ports is None else frozenset(tcp_ports),
            needles,
            max_growth,
        )
    elif (
        udp_ports is not None
        or tcp_ports is not None
        or payload_contains is not None
        or max_growth
    ):
        raise ValueError("give interest= alone, or the ports and payload_contains")
    setattr(modifier, _INTEREST_ATTR, interest)
    return modifier


class Stats:
    """Counters per outcome. Plain attributes, so the hot path pays one add each.

    ``received`` counts every frame a :class:`Pipeline` was handed or told of (``handle()``,
    ``process()``, and the ``count_*`` methods for frames decided before it); each then ends
    in exactly one of ``forwarded`` (of which ``modified`` were edited), ``rejected`` (refused
    with a RST or ICMP error sent back), ``dropped`` (by reason in ``drops``), ``malformed``
    (by reason in ``malformed_reasons``) or ``skipped`` (not Geneve).

    With flows on: ``flow_verdict_packets`` of those were decided by their flow's verdict
    (or a tombstone) without the modifier; ``flows_active`` is a gauge, ``flows_created``
    and ``flows_ended`` (by reason) count since the start, ``flows_early_dropped`` counts
    flows that never saw a reply, ended to make room for new ones. ``held`` counts frames a
    modifier held (:attr:`Verdict.HOLD`), ``held_released`` those sent later, ``held_bytes``
    is a gauge of the bytes held now; held frames that are not sent are dropped as ``hold``
    (their flow was dropped, rejected or ended) or ``hold-limit`` (a bound was reached).
    ``stream_flow_limits`` / ``stream_total_limits`` count the stream starts
    (:func:`geneve.stream_start`) that reached their cap per direction / the pipeline's.
    ``seq_adjusted`` counts TCP segments whose sequence or acknowledgment numbers the pipeline
    shifted for a rewrite that changed a length (those the appliance's C fast path shifts are
    counted as forwarded only), ``seq_resets`` the connections reset (a RST
    both ways) because their rewrite state was lost (the flow ended idle, or too many rewrites
    waited for an acknowledgment).
    """

    __slots__ = (
        "dropped",
        "drops",
        "first_error",
        "flow_verdict_packets",
        "flows_active",
        "flows_created",
        "flows_early_dropped",
        "flows_ended",
        "forwarded",
        "held",
        "held_bytes",
        "held_released",
        "last_error",
        "malformed",
        "malformed_reasons",
        "modified",
        "modifier_errors",
        "received",
        "rejected",
        "seq_adjusted",
        "seq_resets",
        "skipped",
        "stream_flow_limits",
        "stream_total_limits",
        "too_large_forwarded",
    )

    def __init__(self) -> None:
        self.received = 0
        self.rejected = 0
        self.forwarded = 0
        self.modified = 0
        self.dropped = 0
        self.malformed = 0
        self.skipped = 0
        self.modifier_errors = 0
        self.too_large_forwarded = 0
        self.flow_verdict_packets = 0
        self.held = 0
        self.held_released = 0
        self.held_bytes = 0
        self.stream_flow_limits = 0
        self.stream_total_limits = 0
        self.seq_adjusted = 0
        self.seq_resets = 0
        self.flows_active = 0
        self.flows_created = 0
        self.flows_early_dropped = 0
        self.flows_ended: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.malformed_reasons: dict[str, int] = {}
        self.last_error: BaseException | None = None
        self.first_error: BaseException | None = None

    def note_error(self, error: BaseException) -> None:
        """Keep the first and the latest modifier error (their tracebacks name the rule)."""
        if self.first_error is None:
            self.first_error = error
        self.last_error = error

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "rejected": self.rejected,
            "forwarded": self.forwarded,
            "modified": self.modified,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "skipped": self.skipped,
            "modifier_errors": self.modifier_errors,
            "too_large_forwarded": self.too_large_forwarded,
            "flow_verdict_packets": self.flow_verdict_packets,
            "flows_active": self.flows_active,
            "flows_created": self.flows_created,
            "flows_early_dropped": self.flows_early_dropped,
            "held": self.held,
            "held_released": self.held_released,
            "held_bytes": self.held_bytes,
            "stream_flow_limits": self.stream_flow_limits,
            "stream_total_limits": self.stream_total_limits,
            "seq_adjusted": self.seq_adjusted,
            "seq_resets": self.seq_resets,
            "drops": dict(self.drops),
            "malformed_reasons": dict(self.malformed_reasons),
            "flows_ended": dict(self.flows_ended),
        }

    #: The integer counters (the three dicts of reasons come on top).
    COUNTERS = (
        "received",
        "forwarded",
        "rejected",
        "modified",
        "dropped",
        "malformed",
        "skipped",
        "modifier_errors",
        "too_large_forwarded",
        "flow_verdict_packets",
        "flows_active",
        "flows_created",
        "flows_early_dropped",
        "held",
        "held_released",
        "held_bytes",
        "stream_flow_limits",
        "stream_total_limits",
        "seq_adjusted",
        "seq_resets",
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """The inverse of :meth:`as_dict` (for counters sent between processes)."""
        stats = cls()
        for name in cls.COUNTERS:
            setattr(stats, name, int(data.get(name, 0)))
        stats.drops = dict(data.get("drops", {}))
        stats.malformed_reasons = dict(data.get("malformed_reasons", {}))
        stats.flows_ended = dict(data.get("flows_ended", {}))
        return stats

    def merge(self, other: Stats) -> None:
        """Add another worker's counters into these."""
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in (
            (self.drops, other.drops),
            (self.malformed_reasons, other.malformed_reasons),
            (self.flows_ended, other.flows_ended),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value


_FORWARD = Verdict.FORWARD
_DROP = Verdict.DROP
_REJECT = Verdict.REJECT
_HOLD = Verdict.HOLD

#: REJECTs sent per flow (inner addresses, ports and protocol, either direction) per second;
#: past it a REJECT is a DROP. Enough to refuse a connection and its retries at once, too few
#: for a flood of refused packets to become a flood of replies.
#: Bytes of frames one flow may hold (:attr:`Verdict.HOLD`): a ClientHello of 1.8 KB in
#: small segments, with their retransmissions, fits many times over.
HOLD_FLOW_BYTES = 65536
#: Seconds a flow may hold frames before the pipeline decides for it (``on_hold_limit``).
HOLD_SECONDS = 5.0
#: Bytes of held frames in one pipeline (one worker) at most.
HOLD_TOTAL_BYTES = 32 * 1024 * 1024
REJECTS_PER_SECOND = 5
#: Connections whose rewrite state was lost that the pipeline remembers, to reset them at their
#: next packet (the oldest is forgotten first).
LOST_FLOWS = 4096
#: Flows the rate limit remembers; when full, the one rejected longest ago is forgotten.
REJECT_FLOWS = 4096
# Packet.parse makes a packet of the class it is called on.
_parse = cast(Callable[[bytearray, int, int], PipelinePacket], PipelinePacket.parse)


class Pipeline:
    """A modifier and its policies, bound once: a received frame in, the frames to send out.

    :meth:`handle` takes one received frame and returns the frames to send for it, each a
    whole outer IPv4 datagram addressed by its bytes 16:20 (usually the frame itself turned
    into GWLB's reply, in the caller's buffer; none when it is dropped). It is a tuple rather
    than one frame because a frame may answer with more than itself (a reply injected beside
    it, segments held earlier released with it). Every outcome is counted in :attr:`stats`,
    here and nowhere else: a receiver that refuses a datagram before the pipeline sees it
    says so through the ``count_*`` methods.

    The policies are those of :func:`process`. :attr:`interest` is what the modifier declared
    (:func:`declare_interest`): a caller may forward frames outside it without the pipeline,
    as the appliance's C fast path does, and count them with :meth:`count_fast_forwarded`.

    ``flows``: a :class:`FlowTable` (or True for one with GWLB's defaults) tracks the flows
    of the frames handled (docs/flows.md); None (the default) tracks none. The modifier sees a
    :class:`PipelinePacket`: its ``flow`` and ``timestamp`` (``now`` of :meth:`handle`). A flow
    whose ``verdict`` is set has its later packets forwarded or dropped without the modifier.
    The hooks the modifier object has (``on_start()``, ``on_stop()``, ``on_tick(now)``,
    ``on_flow_end(flow, reason)``) run from :meth:`start`, :meth:`stop`, :meth:`tick` and the
    table; one that raises is counted in ``modifier_errors`` and stops nothing.
    """

    __slots__ = (
        "_growth",
        "_held",
        "_lost",
        "_on_flow_end",
        "_rejects",
        "_released",
        "_streams",
        "flows",
        "interest",
        "max_inner_length",
        "modifier",
        "on_error",
        "on_hold_limit",
        "on_too_large",
        "port",
        "stats",
        "verify_outer_udp",
    )

    def __init__(
        self,
        modifier: Modifier,
        stats: Stats | None = None,
        *,
        on_error: ErrorPolicy = "drop",
        on_too_large: ErrorPolicy = "drop",
        max_inner_length: int = MAX_INNER_LENGTH,
        port: int = GENEVE_PORT,
        verify_outer_udp: bool = False,
        flows: FlowTable | bool | None = None,
        on_hold_limit: ErrorPolicy = "drop",
    ) -> None:
        if on_hold_limit not in ("drop", "forward"):
            raise ValueError(f"on_hold_limit must be 'drop' or 'forward', not {on_hold_limit!r}")
        check_modifier(modifier)
        self.on_hold_limit = on_hold_limit
        # Frames held per flow (Verdict.HOLD): flow -> [when the first was held, their bytes,
        # their direction, the frames...].
        self._held: dict[Flow, list[Any]] = {}
        # Held frames to send before the frame handle() is answering, when a flow is released.
        self._released: list[bytes] | None = None
        self.modifier = modifier
        self.stats = Stats() if stats is None else stats
        # What the stream starts of this pipeline's flows hold (geneve.stream_start).
        self._streams = StreamBudget(self.stats)
        self.on_error = on_error
        self.on_too_large = on_too_large
        self.max_inner_length = max_inner_length
        self.port = port
        self.verify_outer_udp = verify_outer_udp
        self.interest = interest_of(modifier)
        self._on_flow_end: Callable[[Flow, EndReason], object] | None = getattr(
            modifier, "on_flow_end", None
        )
        # (not "flows or None": an empty table is falsy)
        table = FlowTable() if flows is True else None if flows is False else flows
        if table is not None:
            table.bind(self.stats, self._flow_ended)
        self.flows: FlowTable | None = table
        # REJECT's rate limit: flow key -> (start of its one-second window, REJECTs in it).
        self._rejects: dict[bytes, tuple[float, int]] = {}
        # Sequence adjustment (geneve._seq): flows whose rewrite state was lost, by
        # _flow_key -> (until when, {source end: its direction's last shift}).
        self._lost: dict[bytes, tuple[float, dict[bytes, int]]] = {}
        self._growth = 0
        self._set_growth()

    def _set_growth(self) -> None:
        """The modifier's declared growth of a TCP segment: the MSS clamp of its SYNs."""
        self._growth = self.interest.max_growth if self.flows is not None else 0
        if isinstance(self.flows, CFlowTable):
            self.flows.set_syn_to_python(self._growth > 0)

    def handle(self, buf: bytearray, length: int, now: float = 0.0) -> tuple[memoryview, ...]:
        """The frames to send for the received frame ``buf[:length]``: ``()`` or its reply.

        For a REJECT, the injected refusal (a new frame) instead of the frame itself. ``now``
        is the caller's time for the frame, in seconds (``packet.timestamp``; the clock of the
        flow table and of REJECT's rate limit: a caller that always passes the same time gets
        :data:`REJECTS_PER_SECOND` REJECTs per flow and then only drops). Never raises for a
        bad frame or a failing modifier (see :func:`process`).
        """
        packet = self._decide(buf, length, now)
        released = self._released
        if released is not None:  # a flow's held frames go first, in the order they came
            self._released = None
            out = self._answer(packet)
            return (*(memoryview(frame) for frame in released), *out)
        if packet is None:
            return ()
        if type(packet) is memoryview:
            return (packet,)
        reply = self._reply(packet)
        return () if reply is None else (reply,)

    def _answer(self, packet: Packet | memoryview | None) -> tuple[memoryview, ...]:
        if packet is None:
            return ()
        if type(packet) is memoryview:
            return (packet,)
        assert isinstance(packet, Packet)
        reply = self._reply(packet)
        return () if reply is None else (reply,)

    def packet(self, buf: bytearray, length: int, now: float = 0.0) -> Packet | None:
        """One frame as :func:`process` runs it: the packet turned into its reply, or None.

        None also for a REJECT: the refusal sent in its place is a frame of its own, which
        :meth:`handle` returns.
        """
        packet = self._decide(buf, length, now)
        if packet is None or type(packet) is memoryview or self._reply(packet) is None:
            return None
        return packet

    def set_modifier(self, modifier: Modifier) -> None:
        """Run ``modifier`` from the next frame on (a reload): its interest and hooks too.

        Flows, their state and verdicts, held frames and counters stay as they are.
        """
        self.modifier = modifier
        self.interest = interest_of(modifier)
        self._on_flow_end = getattr(modifier, "on_flow_end", None)
        self._set_growth()

    # -- the life cycle and the clock ----------------------------------------------------------

    def start(self) -> None:
        """Call the modifier's ``on_start()``, if it has one (once, before the first frame)."""
        self._hook("on_start")

    def tick(self, now: float) -> tuple[memoryview, ...]:
        """End the flows idle (or lingering) past their time, decide the holds past
        :data:`HOLD_SECONDS` (:meth:`expire_holds`), then call ``on_tick(now)``.

        About once a second on the caller's clock; the cost is that of the flows ending.
        Returns the held frames a ``"forward"`` hold limit releases, for the caller to send.
        """
        if self.flows is not None:
            self.flows.sweep(now)
        released = self.expire_holds(now)
        self._hook("on_tick", now)
        return released

    def expire_holds(self, now: float) -> tuple[memoryview, ...]:
        """Decide every flow that has held frames for :data:`HOLD_SECONDS` by ``now``.

        ``on_hold_limit="drop"`` (the default) drops them and gives the flow a DROP verdict;
        ``"forward"`` sends them (returned here, to send) and lets the flow go on.
        :meth:`tick` calls it.
        """
        if not self._held:
            return ()
        out: list[memoryview] = []
        for flow, entry in list(self._held.items()):
            if now - entry[0] >= HOLD_SECONDS:
                out += self._hold_limit(flow)
        return tuple(out)

    def stop(self, now: float) -> None:
        """End every live flow (reason ``"shutdown"``), then call ``on_stop()``."""
        if self.flows is not None:
            self.flows.sweep(now)  # those already over end for their own reason
            self.flows.end_all("shutdown")
        self._hook("on_stop")

    # -- a handover: another process goes on where this pipeline stops (an upgrade) ----------

    def hand_over(self) -> dict[str, Any]:
        """What :meth:`take_over` in another process needs to go on with this pipeline's
        flows: each live flow (its counts, verdict and ``state``) and the frames held, as
        bytes. Nothing here changes: after it, either :meth:`retire` (the new pipeline took
        over) or go on handling frames (it did not).

        A flow whose ``state`` does not pickle goes without it (``"states_lost"`` counts them).
        """
        table = self.flows
        exported = table.export_flows() if table is not None else {"records": [], "states": {}}
        states = exported.pop("states")
        seqs = exported.pop("seqs", {})
        try:
            packed_seqs = pickle.dumps(seqs, pickle.HIGHEST_PROTOCOL)
        except Exception:  # cannot happen with geneve._seq's records; never fail a handover
            packed_seqs = pickle.dumps({}, pickle.HIGHEST_PROTOCOL)
        lost = 0
        try:
            packed_states = pickle.dumps(states, pickle.HIGHEST_PROTOCOL)
        except Exception:  # a state the user put there that cannot travel: leave those
            kept = {}
            for key, state in states.items():
                try:
                    pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
                except Exception:
                    lost += 1
                    continue
                kept[key] = state
            packed_states = pickle.dumps(kept, pickle.HIGHEST_PROTOCOL)
        held = [
            (flow.key, entry[0], entry[1], entry[2], list(entry[3:]))
            for flow, entry in self._held.items()
        ]
        return {
            "flows": pickle.dumps(exported, pickle.HIGHEST_PROTOCOL),
            "count": len(table) if table is not None else 0,
            "states": packed_states,
            "seqs": packed_seqs,
            "held": held,
            "states_lost": lost,
        }

    def take_over(self, handed: dict[str, Any], now: float) -> int:
        """Make the flows and held frames of another pipeline's :meth:`hand_over` this one's,
        as they were (no ``on_flow_end`` there, no flow started here); before the first frame.
        Returns how many flows were taken (a table with less room takes fewer)."""
        table = self.flows
        if table is None:
            return 0
        exported = pickle.loads(handed["flows"])
        exported["states"] = states = pickle.loads(handed["states"])
        exported["seqs"] = pickle.loads(handed.get("seqs", pickle.dumps({})))
        taken = table.restore_flows(exported, now)
        for key, state in states.items():
            starts = state.get(STREAM_STATE_KEY)
            if starts and table.get(key) is not None:
                for start in starts.values():
                    start.budget = self._streams
                    self._streams.used += start.held()
        for key, when, size, direction, frames in handed["held"]:
            flow = table.get(key)
            if flow is None:  # no room for its flow here: its frames are dropped, counted
                for _ in frames:
                    self.stats.drop("hold")
                continue
            self._held[flow] = [when, size, direction, *frames]
            flow._set_holding(True)
            self.stats.held_bytes += size
        return taken

    def retire(self) -> None:
        """Stop after :meth:`hand_over` went to a pipeline that took over: the flows do not
        end (they live on there); the modifier's ``on_handover()``, then ``on_stop()``."""
        self._hook("on_handover")
        self._hook("on_stop")

    def _hook(self, name: str, *args: object) -> None:
        hook = getattr(self.modifier, name, None)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:  # a user's bug must not stop the appliance
            self.stats.modifier_errors += 1
            self.stats.note_error(exc)

    def _flow_ended(self, flow: Flow, reason: EndReason) -> None:
        if flow._seq is not None and reason in ("idle", "evicted"):
            self._remember_lost(flow)
        if self._held:
            self._discard(flow, "hold")
        if self._streams.used:
            release_streams(flow)
        hook = self._on_flow_end
        if hook is None:
            return
        try:
            hook(flow, reason)
        except Exception as exc:
            self.stats.modifier_errors += 1
            self.stats.note_error(exc)

    def _decide(self, buf: bytearray, length: int, now: float) -> Packet | memoryview | None:
        """Parse and check the frame, run the modifier: the packet to send back, the refusal
        to send instead (REJECT), or None."""
        stats = self.stats
        stats.received += 1
        max_inner_length = self.max_inner_length
        try:
            packet = _parse(buf, length, self.port)  # positional: CPython specialises it
            if type(packet) is not PipelinePacket:  # its inner packet is malformed: raise it
                packet.parse_inner()
        except NotGeneveError:
            stats.skipped += 1
            return None
        except GeneveError as err:
            self._malformed(err.reason)
            return None
        # GWLB never sends more than max_inner_length bytes after the Geneve header.
        if packet.length - packet.inner_offset > max_inner_length:
            self._malformed("oversized")
            return None
        if self.verify_outer_udp and not packet.outer_udp_checksum_ok():
            self._malformed("outer-udp-checksum")
            return None
        # RFC 8926 3.4: a control (O bit) packet's payload must not be forwarded as data.
        if packet.is_control:
            stats.drop("control")
            return None
        packet.timestamp = now
        packet.streams = self._streams
        packet.max_growth = self._growth
        packet.grown = 0
        flows = self.flows
        if flows is None or not packet.ip_version:
            packet.flow = None
        else:
            flow = flows.track(packet, now)
            if isinstance(flow, str):
                packet.flow = None
                if flow is DROP_TOMBSTONE:
                    stats.flow_verdict_packets += 1
                    if self._lost and packet.l4_protocol == IPPROTO_TCP:
                        return self._reset_lost(packet, now)
                stats.drop(flow)
                return None
            packet.flow = flow
            if self._growth and packet.l4_protocol == IPPROTO_TCP:
                self._clamp(packet)
            decided = flow.verdict
            if decided is not None:
                stats.flow_verdict_packets += 1
                if self._held:
                    self._settle(flow, decided)
                if decided is _FORWARD:
                    if packet.l4_protocol == IPPROTO_TCP:
                        if flow._seq is not None:
                            return self._adjust(packet, now)
                        note_forwarded(packet)
                    return packet
                if decided is _REJECT:
                    return self._reject(packet, now)
                stats.drop("flow")
                return None
        packet.max_inner_length = max_inner_length
        try:
            verdict = self.modifier(packet)
            if (
                verdict is not None
                and verdict is not _FORWARD
                and verdict is not _DROP
                and verdict is not _REJECT
                and verdict is not _HOLD
                and type(verdict) is not Drop
            ):
                raise TypeError(f"modifier returned {verdict!r}, not a Verdict or None")
        except PacketTooLargeError:
            # A rewrite past the inner MTU was refused before it changed anything.
            if self.on_too_large != "forward" or packet.modified:
                stats.drop("too-large")
                return None
            stats.too_large_forwarded += 1
            verdict = _FORWARD
        except Exception as exc:  # a user's bug must not stop the appliance
            stats.modifier_errors += 1
            stats.note_error(exc)
            # "forward" means forward unchanged; an edit already made cannot be undone: drop.
            if self.on_error != "forward" or packet.modified:
                stats.drop("modifier-error")
                return None
            verdict = _FORWARD
        if verdict is _HOLD:
            self._hold(packet, now)
            return None
        if self._streams.used:
            flow_ = packet.flow
            if flow_ is not None and flow_.verdict is not None:
                release_streams(flow_)  # decided: its stream starts are read for good
        if self._held:
            flow_ = packet.flow
            if flow_ is not None:
                # Held frames follow the flow's verdict when the modifier set one, else the
                # verdict of the next packet of their direction that is not held.
                decided = flow_.verdict
                if decided is None:
                    entry = self._held.get(flow_)
                    if entry is not None and entry[2] == flow_.direction:
                        self._settle(flow_, verdict or _FORWARD)
                else:
                    self._settle(flow_, decided)
        if verdict is _DROP:
            stats.drop("rule")
            return None
        if verdict is _REJECT:
            return self._reject(packet, now)
        if type(verdict) is Drop:
            reason = verdict.reason
            drops = stats.drops
            if reason not in drops and sum(k[:5] == "rule:" for k in drops) >= MAX_RULE_REASONS:
                reason = "rule:other"
            stats.drop(reason)
            return None
        flow_ = packet.flow
        if flow_ is not None and packet.l4_protocol == IPPROTO_TCP:
            if flow_._seq is not None:
                return self._adjust(packet, now)
            note_forwarded(packet)
        if packet.modified and packet.length - packet.inner_offset > max_inner_length:
            stats.drop("too-large")
            return None
        return packet

    # -- sequence adjustment (geneve._seq) -----------------------------------------------------

    def _clamp(self, packet: PipelinePacket) -> None:
        """Lower the MSS of a SYN or SYN-ACK on the ports of interest by the declared growth."""
        l4 = packet.l4_offset
        if l4 < 0 or packet.payload_offset - l4 <= 20 or not packet.buf[l4 + 13] & 0x02:
            return
        ports = self.interest.tcp_ports
        if ports is not None:
            sport, dport = packet.ports or (0, 0)
            if sport not in ports and dport not in ports:
                return
        clamp_mss(packet, self._growth)

    def _adjust(self, packet: PipelinePacket, now: float) -> Packet | memoryview | None:
        """A TCP segment of a flow with a rewrite record, mapped through it as it leaves."""
        stats = self.stats
        try:
            done = adjust(packet)
        except PacketTooLargeError:  # a retransmission that carries its replacements grew
            stats.drop("too-large")
            return None
        if done == GAP:  # data beyond a gap: sent again once the gap is filled
            stats.drop("seq-gap")
            return None
        if done != ADJUSTED:  # too many rewrites waited for an acknowledgment: the state is lost
            flow = packet.flow
            assert flow is not None
            flow.verdict = _DROP
            state = flow._seq
            d = 0 if flow.direction == "original" else 1
            record = state[d]
            shift = 0 if record is None else record.shift_at_end()
            return self._reset(packet, now, shift)
        stats.seq_adjusted += 1
        if packet.length - packet.inner_offset > self.max_inner_length:
            stats.drop("too-large")
            return None
        return packet

    def _remember_lost(self, flow: Flow) -> None:
        """A flow with a rewrite record ended idle or evicted: reset the connection at its
        next packet."""
        key = flow.key
        size = 4 if len(key) == 21 else 16
        low = key[9 : 9 + size] + key[9 + 2 * size : 11 + 2 * size]
        high = key[9 + size : 9 + 2 * size] + key[11 + 2 * size : 13 + 2 * size]
        original, reply = (low, high) if flow._orig_low else (high, low)
        shifts = {}
        for end, record in zip((original, reply), flow._seq, strict=True):
            shifts[end] = 0 if record is None else record.shift_at_end()
        lost = self._lost
        if len(lost) >= LOST_FLOWS:
            del lost[next(iter(lost))]
        lost[bytes((key[8],)) + low + high] = (flow.deadline + TOMBSTONE_SECONDS, shifts)

    def _reset_lost(self, packet: PipelinePacket, now: float) -> memoryview | None:
        """A packet of a connection whose rewrite state was lost: reset it, once."""
        entry = self._lost.pop(_flow_key(packet), None)
        if entry is None or now >= entry[0]:
            self.stats.drop(DROP_TOMBSTONE)
            return None
        buf = packet.buf
        ip, l4 = packet.ip_offset, packet.l4_offset
        src = buf[ip + 8 : ip + 24] if packet.ip_version == 6 else buf[ip + 12 : ip + 16]
        return self._reset(packet, now, entry[1].get(bytes(src + buf[l4 : l4 + 2]), 0))

    def _reset(self, packet: PipelinePacket, now: float, shift: int) -> memoryview | None:
        """RST both ways: back to the packet's sender, and on to its receiver (its sequence
        number moved by ``shift``, the last known shift of its direction)."""
        stats = self.stats
        stats.seq_resets += 1
        frame = reject_frame(packet)
        if frame is None or not self._may_reject(packet, now):
            stats.drop("seq-lost")
            return None
        self._released = [bytes(tcp_reset_forward(packet, shift)), *(self._released or ())]
        stats.rejected += 1
        return memoryview(frame)

    # -- HOLD ---------------------------------------------------------------------------------

    def _hold(self, packet: Packet, now: float) -> None:
        """Keep ``packet``'s reply in its flow until the flow is decided."""
        stats = self.stats
        flow = getattr(packet, "flow", None)
        if flow is None:  # nowhere to keep it
            stats.drop("hold-limit")
            return None
        if flow._seq is not None and packet.l4_protocol == IPPROTO_TCP:
            done = adjust(cast(PipelinePacket, packet))
            if done == GAP:
                stats.drop("seq-gap")
                return None
            if done != ADJUSTED:  # lost: what it holds goes with the flow's DROP
                flow.verdict = _DROP
                self._discard(flow, "seq-lost")
                stats.drop("seq-lost")
                return None
        try:
            data = bytes(packet.reply())  # as it will be sent: outer addresses swapped
        except GeneveError as err:  # the modifier broke a length field
            stats.modifier_errors += 1
            stats.note_error(err)
            stats.drop("modifier-error")
            return None
        entry = self._held.get(flow)
        if entry is None:
            entry = self._held[flow] = [now, 0, flow.direction]
            flow._set_holding(True)  # the fast path leaves the flow to Python meanwhile
        if (
            entry[1] + len(data) > HOLD_FLOW_BYTES
            or stats.held_bytes + len(data) > HOLD_TOTAL_BYTES
        ):
            entry.append(data)  # decided with the rest
            entry[1] += len(data)
            stats.held += 1
            stats.held_bytes += len(data)
            self._released = self._hold_limit(flow, as_bytes=True)
            return None
        entry.append(data)
        entry[1] += len(data)
        stats.held += 1
        stats.held_bytes += len(data)
        return None

    def _settle(self, flow: Flow, verdict: Verdict | Drop) -> None:
        """Release (FORWARD) or drop (otherwise) what ``flow`` holds, if anything."""
        if flow not in self._held:
            return
        if verdict is _FORWARD:
            self._released = self._release(flow)
        else:
            self._discard(flow, "hold")

    def _release(self, flow: Flow) -> list[bytes]:
        """What ``flow`` holds, to send now, counted as forwarded."""
        entry = self._held.pop(flow)
        flow._set_holding(False)
        frames: list[bytes] = entry[3:]
        stats = self.stats
        stats.held_bytes -= entry[1]
        stats.held_released += len(frames)
        stats.forwarded += len(frames)
        return frames

    def _discard(self, flow: Flow, reason: str) -> None:
        entry = self._held.pop(flow, None)
        if entry is None:
            return
        flow._set_holding(False)
        stats = self.stats
        stats.held_bytes -= entry[1]
        for _ in entry[3:]:
            stats.drop(reason)

    def _hold_limit(self, flow: Flow, as_bytes: bool = False) -> list[Any]:
        """A flow's hold reached a bound: ``on_hold_limit`` decides; the frames to send."""
        if self.on_hold_limit == "forward":  # fail open: the flow goes on, undecided no more
            frames = self._release(flow)
            flow.verdict = _FORWARD
            return frames if as_bytes else [memoryview(f) for f in frames]
        self._discard(flow, "hold-limit")
        flow.verdict = _DROP
        return []

    def _reply(self, packet: Packet) -> memoryview | None:
        """Turn a packet to forward into GWLB's reply (:meth:`Packet.reply`); its bytes."""
        stats = self.stats
        modified = packet.modified
        try:
            reply = packet.reply()  # checksums fixed when edited, outer addresses swapped
        except GeneveError as err:  # the modifier broke a length field
            stats.modifier_errors += 1
            stats.note_error(err)
            stats.drop("modifier-error")
            return None
        if modified:
            stats.modified += 1
        stats.forwarded += 1
        return reply

    def _reject(self, packet: Packet, now: float) -> memoryview | None:
        """The refusal of ``packet``, counted; None (a DROP) where none may be sent."""
        stats = self.stats
        frame = reject_frame(packet)
        if frame is None or not self._may_reject(packet, now):
            stats.drop("rule")
            return None
        stats.rejected += 1
        return memoryview(frame)

    def _may_reject(self, packet: Packet, now: float) -> bool:
        """Whether the flow of ``packet`` may have one more REJECT at ``now`` (and count it)."""
        key = _flow_key(packet)
        table = self._rejects
        start, count = table.pop(key, (now, 0))
        if not 0.0 <= now - start < 1.0:  # a new second (or a clock that went back)
            start, count = now, 0
        if count >= REJECTS_PER_SECOND:
            table[key] = (start, count)
            return False
        if len(table) >= REJECT_FLOWS:
            del table[next(iter(table))]  # the flow rejected longest ago
        table[key] = (start, count + 1)  # (re)inserted last: the table is in order of use
        return True

    def _malformed(self, reason: str) -> None:
        stats = self.stats
        stats.malformed += 1
        reasons = stats.malformed_reasons
        reasons[reason] = reasons.get(reason, 0) + 1

    # -- outcomes decided before the pipeline saw the frame ----------------------------------

    def count_not_unicast(self) -> None:
        """A datagram to a broadcast or multicast address (every socket got it): not answered."""
        self.stats.received += 1
        self.stats.drop("not-unicast")

    def count_too_long(self) -> None:
        """A datagram the receiver could not take whole (longer than any IPv4 packet)."""
        self.stats.received += 1
        self._malformed("oversized")

    def count_fast_forwarded(self, count: int) -> None:
        """``count`` frames outside :attr:`interest`, forwarded unchanged without the pipeline."""
        self.stats.received += count
        self.stats.forwarded += count

    def count_fast_path(
        self,
        forwarded: int,
        verdict_forwarded: int = 0,
        verdict_dropped: int = 0,
        created: int = 0,
        ended: bool = False,
    ) -> None:
        """What the C fast path did with a batch, counting into the C flow table as it went.

        ``forwarded`` frames sent back (``verdict_forwarded`` of them by their flow's verdict,
        the rest outside :attr:`interest`), ``verdict_dropped`` dropped by their flow's verdict;
        ``created`` flows made; ``ended``: flows ended (evicted for new ones) wait for their
        ``on_flow_end``.
        """
        stats = self.stats
        stats.received += forwarded + verdict_dropped
        stats.forwarded += forwarded
        if verdict_forwarded or verdict_dropped:
            stats.flow_verdict_packets += verdict_forwarded + verdict_dropped
            if verdict_dropped:
                stats.dropped += verdict_dropped
                stats.drops["flow"] = stats.drops.get("flow", 0) + verdict_dropped
        flows = self.flows
        if (created or ended) and isinstance(flows, CFlowTable):
            flows.count_created(created)
            flows.drain()


def _flow_key(packet: Packet) -> bytes:
    """The inner addresses, ports (TCP and UDP) and protocol, the same in both directions."""
    buf = packet.buf
    ip = packet.ip_offset
    if packet.ip_version == 6:
        a, b = bytes(buf[ip + 8 : ip + 24]), bytes(buf[ip + 24 : ip + 40])
    else:
        a, b = bytes(buf[ip + 12 : ip + 16]), bytes(buf[ip + 16 : ip + 20])
    l4 = packet.l4_offset
    if l4 >= 0 and packet.l4_protocol in (IPPROTO_TCP, IPPROTO_UDP):
        a += bytes(buf[l4 : l4 + 2])
        b += bytes(buf[l4 + 2 : l4 + 4])
    if a > b:
        a, b = b, a
    return bytes((packet.l4_protocol,)) + a + b


def process(
    buf: bytearray,
    length: int,
    modifier: Modifier,
    stats: Stats,
    *,
    on_error: ErrorPolicy = "drop",
    max_inner_length: int = MAX_INNER_LENGTH,
    port: int = GENEVE_PORT,
    on_too_large: ErrorPolicy = "drop",
    verify_outer_udp: bool = False,
) -> Packet | None:
    """Run one received frame ``buf[:length]`` through ``modifier``.

    A rewrite that would make the inner packet longer than ``max_inner_length`` is refused
    (:class:`PacketTooLargeError` inside the modifier); the packet is then dropped, or with
    ``on_too_large="forward"`` forwarded unchanged when the modifier had changed nothing yet.

    Returns the packet to send back (its bytes are ``packet.data``, in ``buf`` or in a grown
    copy of it) or None when nothing is to be sent. With ``verify_outer_udp``, a frame whose
    outer UDP checksum is neither 0 nor right is malformed (``outer-udp-checksum``): what the
    kernel checks before a UDP socket sees a datagram, and a raw socket does not (a checksum
    a local sender left to offload, the pseudo-header's sum, passes as the kernel lets it).

    Never raises for a bad frame or a failing
    modifier: every outcome is counted in ``stats``. (A ``length`` outside ``buf`` is the
    caller's mistake, not the frame's: ``ValueError``.) For frame after frame with the same
    modifier, bind them once in a :class:`Pipeline`: this is ``Pipeline(...).packet(buf, length)``.
    """
    pipeline = Pipeline(
        modifier,
        stats,
        on_error=on_error,
        on_too_large=on_too_large,
        max_inner_length=max_inner_length,
        port=port,
        verify_outer_udp=verify_outer_udp,
    )
    return pipeline.packet(buf, length)
