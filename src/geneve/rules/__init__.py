"""Small composable pieces for writing a modifier.

A modifier is any ``Callable[[Packet], Verdict | None]``. These helpers build the common ones, so
a rule reads like its description::

    from geneve import rules
    modifier = rules.chain(
        rules.when(rules.udp_port(53), rules.drop_if_contains(b"evil.example")),
        rules.icmp_echo_every(5, rules.drop),
    )

Helpers never copy a packet that they do not change.
"""

from __future__ import annotations

from collections.abc import Callable

from .._headers import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from .._packet import Packet
from .._pipeline import Modifier, Verdict

__all__ = [
    "Predicate",
    "chain",
    "drop",
    "drop_if_contains",
    "icmp_echo_every",
    "icmp_echo_sequence",
    "replace",
    "tcp_port",
    "udp_port",
    "when",
]

Predicate = Callable[[Packet], bool]

_DROP = Verdict.DROP
# ICMP (IPv4) echo reply and echo request (RFC 792).
_ICMP_ECHO_TYPES = (0, 8)


def drop(packet: Packet) -> Verdict:
    """A modifier that drops every packet it sees."""
    return _DROP


def _port_predicate(protocol: int, ports: tuple[int, ...]) -> Predicate:
    wanted = frozenset(ports)

    def match(packet: Packet) -> bool:
        if packet.l4_protocol != protocol:
            return False
        pair = packet.ports
        return pair is not None and (pair[0] in wanted or pair[1] in wanted)

    return match


def udp_port(*ports: int) -> Predicate:
    """True for inner UDP whose source or destination port is one of ``ports``."""
    return _port_predicate(IPPROTO_UDP, ports)


def tcp_port(*ports: int) -> Predicate:
    """True for inner TCP whose source or destination port is one of ``ports``."""
    return _port_predicate(IPPROTO_TCP, ports)


def icmp_echo_sequence(packet: Packet) -> int | None:
    """The sequence number of an inner ICMP echo request or reply, else None."""
    icmp = packet.icmp
    if icmp is None or packet.l4_protocol != IPPROTO_ICMP or icmp.type not in _ICMP_ECHO_TYPES:
        return None
    return icmp.sequence


def icmp_echo_every(n: int, action: Modifier = drop) -> Modifier:
    """Apply ``action`` to ICMP echo requests/replies whose sequence is a multiple of ``n``."""
    if n < 1:
        raise ValueError("n must be at least 1")

    def modifier(packet: Packet) -> Verdict | None:
        seq = icmp_echo_sequence(packet)
        if seq is not None and seq % n == 0:
            return action(packet)
        return None

    return modifier


def drop_if_contains(needle: bytes) -> Modifier:
    """Drop a packet whose inner L4 payload contains ``needle``."""

    def modifier(packet: Packet) -> Verdict | None:
        return _DROP if packet.payload_find(needle) >= 0 else None

    return modifier


def replace(old: bytes, new: bytes) -> Modifier:
    """Replace every ``old`` in the inner payload by ``new`` (lengths and checksums follow).

    Fragments are left alone: they are never rewritten.
    """

    def modifier(packet: Packet) -> None:
        if not packet.is_fragment:
            packet.replace_in_payload(old, new)

    return modifier


def chain(*modifiers: Modifier) -> Modifier:
    """Run modifiers in order; the first DROP stops the chain."""

    def modifier(packet: Packet) -> Verdict | None:
        for step in modifiers:
            if step(packet) is _DROP:
                return _DROP
        return None

    return modifier


def when(predicate: Predicate, *modifiers: Modifier) -> Modifier:
    """Run ``modifiers`` (as :func:`chain`) only on packets for which ``predicate`` is true."""
    inner = chain(*modifiers)

    def modifier(packet: Packet) -> Verdict | None:
        return inner(packet) if predicate(packet) else None

    return modifier
