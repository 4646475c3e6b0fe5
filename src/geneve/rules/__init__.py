"""Small composable pieces for writing a modifier.

A modifier is any ``Callable[[Packet], Verdict | None]``. These helpers build the common ones, so
a rule reads like its description::

    from geneve import rules
    modifier = rules.chain(
        rules.when(rules.udp_port(53), rules.drop_if_contains(b"evil.example")),
        rules.icmp_echo_every(5, rules.drop),
    )

Helpers never copy a packet that they do not change. Each declares which inner packets it can
act on (see :class:`geneve.Interest`): ``when(udp_port(53), ...)`` only ever needs UDP port 53,
so the appliance forwards all other UDP and TCP without calling Python at all.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from .._headers import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from .._loader import modifier_factory
from .._packet import Packet
from .._pipeline import Drop, Interest, Modifier, Verdict, declare_interest, interest_of

__all__ = [
    "Interest",
    "Predicate",
    "chain",
    "declare_interest",
    "drop",
    "drop_if_contains",
    "icmp_echo_every",
    "icmp_echo_sequence",
    "modifier_factory",
    "reject",
    "replace",
    "tcp_port",
    "udp_port",
    "when",
]

Predicate = Callable[[Packet], bool]
_T = TypeVar("_T", bound=Callable[..., object])

_DROP = Verdict.DROP
_REJECT = Verdict.REJECT
_FORWARD = Verdict.FORWARD
_NO_UDP_NO_TCP = Interest(frozenset(), frozenset())
_NOTHING = Interest(frozenset(), frozenset(), frozenset())  # the identity of |


def _declared(function: _T, interest: Interest) -> _T:
    return declare_interest(function, interest=interest)


_ICMP_ECHO_TYPES = (0, 8)  # echo reply, echo request (RFC 792)
_ICMPV6_ECHO_TYPES = (128, 129)  # echo request, echo reply (RFC 4443)
_ICMP_PROTOCOLS = (IPPROTO_ICMP, IPPROTO_ICMPV6)


def drop(packet: Packet) -> Verdict:
    """A modifier that drops every packet it sees."""
    return _DROP


def reject(packet: Packet) -> Verdict:
    """A modifier that rejects every packet it sees: a TCP RST or an ICMP error goes back to
    the sender instead (see :class:`geneve.Verdict`), e.g. ``when(tcp_port(23), reject)``."""
    return _REJECT


_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")


# The helpers below run once per packet. They use the packet's public offsets (plain slots
# that Packet.parse filled; a packet whose inner packet is malformed raises on the first read)
# and build no header views, so a packet a rule does not match costs a few attribute reads:
# a modifier of your own can be written just as fast.
#
# The ones that match or drop also see the first fragment of a fragmented datagram, which
# carries the L4 header (ports, ICMP type and sequence) and the start of the payload: dropping
# it drops the datagram. Later fragments carry neither and pass; nothing rewrites a fragment.


def _first_fragment_l4(packet: Packet, room: int) -> int:
    """The L4 header of a first fragment with ``room`` bytes of it present, else -1."""
    l4 = packet.first_fragment_l4_offset
    return l4 if l4 >= 0 and packet.ip_end - l4 >= room else -1


_L4_HEADER_ROOM = {IPPROTO_UDP: 8, IPPROTO_TCP: 20, IPPROTO_ICMP: 8, IPPROTO_ICMPV6: 8}


def _first_fragment_payload(packet: Packet) -> int:
    """Where the payload starts in a first fragment, else -1."""
    proto = packet.l4_protocol
    room = _L4_HEADER_ROOM.get(proto, 0)
    l4 = _first_fragment_l4(packet, room)
    if l4 >= 0 and proto == IPPROTO_TCP:
        return min(l4 + ((packet.buf[l4 + 12] >> 4) << 2), packet.ip_end)
    return l4 + room if l4 >= 0 else -1


def _port_predicate(protocol: int, ports: tuple[int, ...]) -> Predicate:
    for port in ports:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} is out of range")
    unpack = _PORTS.unpack_from
    # The predicate can only be true for these ports of this protocol.
    interest = Interest(
        frozenset(ports) if protocol == IPPROTO_UDP else frozenset(),
        frozenset(ports) if protocol == IPPROTO_TCP else frozenset(),
    )
    if len(ports) == 1:
        (only,) = ports

        def match_one(packet: Packet) -> bool:
            if packet.l4_protocol != protocol:
                return False
            l4 = packet.l4_offset
            if l4 < 0 and (l4 := _first_fragment_l4(packet, 4)) < 0:
                return False
            src, dst = unpack(packet.buf, l4)
            return bool(src == only or dst == only)

        return _declared(match_one, interest)
    wanted = frozenset(ports)

    def match(packet: Packet) -> bool:
        if packet.l4_protocol != protocol:
            return False
        l4 = packet.l4_offset
        if l4 < 0 and (l4 := _first_fragment_l4(packet, 4)) < 0:
            return False
        src, dst = unpack(packet.buf, l4)
        return bool(src in wanted or dst in wanted)

    return _declared(match, interest)


def udp_port(*ports: int) -> Predicate:
    """True for inner UDP whose source or destination port is one of ``ports``."""
    return _port_predicate(IPPROTO_UDP, ports)


def tcp_port(*ports: int) -> Predicate:
    """True for inner TCP whose source or destination port is one of ``ports``."""
    return _port_predicate(IPPROTO_TCP, ports)


def icmp_echo_sequence(packet: Packet) -> int | None:
    """The sequence number of an inner echo request or reply, else None.

    ICMP over IPv4 and ICMPv6 over IPv6 alike: ``ping`` and ``ping -6`` both count, and so
    does the first fragment of a large one (``ping -s 3000``).
    """
    proto = packet.l4_protocol
    if proto == IPPROTO_ICMP:
        echo = _ICMP_ECHO_TYPES
        version = 4
    elif proto == IPPROTO_ICMPV6:
        echo = _ICMPV6_ECHO_TYPES
        version = 6
    else:
        return None
    l4 = packet.l4_offset
    if l4 < 0:
        l4 = _first_fragment_l4(packet, 8)
    # ICMP over IPv4 and ICMPv6 over IPv6 only: the other pairing is no echo of either.
    if l4 < 0 or packet.ip_end - l4 < 8 or packet.ip_version != version:
        return None
    if packet.buf[l4] not in echo:
        return None
    seq: int = _U16.unpack_from(packet.buf, l4 + 6)[0]
    return seq


def icmp_echo_every(n: int, action: Modifier = drop) -> Modifier:
    """Apply ``action`` to ICMP echo requests/replies whose sequence is a multiple of ``n``."""
    if n < 1:
        raise ValueError("n must be at least 1")

    def modifier(packet: Packet) -> Verdict | Drop | None:
        # Most packets are not ICMP: one attribute read settles it.
        if packet.l4_protocol not in _ICMP_PROTOCOLS:
            return None
        seq = icmp_echo_sequence(packet)
        if seq is not None and seq % n == 0:
            return action(packet)
        return None

    return _declared(modifier, _NO_UDP_NO_TCP)  # it acts on ICMP only


def drop_if_contains(needle: bytes) -> Modifier:
    """Drop a packet whose inner L4 payload contains ``needle``.

    In a fragmented datagram, only the part of the payload in its first fragment is searched.
    """
    if not needle:
        raise ValueError("needle must not be empty")

    def modifier(packet: Packet) -> Verdict | Drop | None:
        start = packet.payload_offset
        if start < 0:
            start = _first_fragment_payload(packet)
        if start >= 0 and packet.buf.find(needle, start, packet.ip_end) >= 0:
            return _DROP
        return None

    return _declared(modifier, Interest(needles=frozenset((needle,))))


def replace(old: bytes, new: bytes, *, max_growth: int = 0) -> Modifier:
    """Replace every ``old`` in the inner payload by ``new`` (lengths and checksums follow).

    Fragments are left alone: they are never rewritten. On TCP a length change needs flows
    (sequence numbers follow); ``max_growth`` declares the most bytes it adds to one TCP
    segment, by which the MSS of TCP flows is clamped (:class:`geneve.Interest`).
    """
    if not old:
        raise ValueError("old must not be empty")

    def modifier(packet: Packet) -> None:
        # One search when ``old`` is absent; fragments have no payload to rewrite.
        packet.replace_in_payload(old, new)

    return _declared(modifier, Interest(needles=frozenset((old,)), max_growth=max_growth))


def chain(*modifiers: Modifier) -> Modifier:
    """Run modifiers in order; the first verdict other than FORWARD (DROP, REJECT, HOLD, a
    ``Verdict.drop(reason)``) stops the chain and is its verdict."""
    if len(modifiers) == 1:
        return modifiers[0]
    interest = _NOTHING
    for step in modifiers:
        interest = interest | interest_of(step)
    if len(modifiers) == 2:
        first, second = modifiers

        def pair(packet: Packet) -> Verdict | Drop | None:
            verdict = first(packet)
            if verdict is not None and verdict is not _FORWARD:
                return verdict
            verdict = second(packet)
            return None if verdict is _FORWARD else verdict

        return _declared(pair, interest)

    def modifier(packet: Packet) -> Verdict | Drop | None:
        for step in modifiers:
            verdict = step(packet)
            if verdict is not None and verdict is not _FORWARD:
                return verdict
        return None

    return _declared(modifier, interest)


def when(predicate: Predicate, *modifiers: Modifier) -> Modifier:
    """Run ``modifiers`` (as :func:`chain`) only on packets for which ``predicate`` is true."""
    inner = chain(*modifiers)

    def modifier(packet: Packet) -> Verdict | Drop | None:
        return inner(packet) if predicate(packet) else None

    # Nothing happens unless the predicate holds and the modifiers would act.
    return _declared(modifier, interest_of(predicate) & interest_of(inner))
