"""geneve.rules and the reference rules, exactly as GWLB.md describes them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Packet as ScapyPacket
from support.frames import check_frame, make_inner, naive_checksum

from geneve import Packet, Stats, Verdict, build_frame, process, rules
from geneve.rules import reference


def through_reference(inner: bytes, **kwargs: Any) -> tuple[bytes, Packet | None, Stats]:
    frame = build_frame(inner, **kwargs)
    original = bytes(frame)
    stats = Stats()
    packet = process(frame, len(frame), reference.modifier, stats)
    return original, packet, stats


def unchanged(original: bytes, packet: Packet | None) -> None:
    assert packet is not None
    out = bytes(packet.data)
    assert out[12:16] == original[16:20] and out[16:20] == original[12:16]
    assert out[:12] + out[20:] == original[:12] + original[20:]


# -- UDP port 3000 ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("sport", "dport"), [(40000, 3000), (3000, 40000), (3000, 3000)])
def test_drop_me_on_port_3000_is_dropped(version: int, sport: int, dport: int) -> None:
    inner = make_inner(version, "udp", b"please drop me now", sport=sport, dport=dport)
    _, packet, stats = through_reference(inner)
    assert packet is None and stats.drops == {"rule": 1}


@pytest.mark.parametrize("port", [2999, 3001, 30000, 300])
def test_other_ports_are_untouched(port: int) -> None:
    payload = b"drop me, weakly typed"
    original, packet, stats = through_reference(make_inner(4, "udp", payload, sport=1, dport=port))
    unchanged(original, packet)
    assert stats.forwarded == 1 and stats.modified == 0


def test_tcp_port_3000_is_not_udp() -> None:
    inner = make_inner(4, "tcp", b"drop me weakly typed", sport=1, dport=3000)
    original, packet, _ = through_reference(inner)
    unchanged(original, packet)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("udp_checksum", [False, True])
@pytest.mark.parametrize("occurrences", [1, 2, 5])
def test_weakly_typed_becomes_strongly_typed(
    version: int, udp_checksum: bool, occurrences: int
) -> None:
    payload = b"<" + b"weakly typed, " * occurrences + b">"
    inner = make_inner(version, "udp", payload, sport=55555, dport=3000)
    original, packet, stats = through_reference(inner, udp_checksum=udp_checksum)
    assert packet is not None
    assert len(packet.data) == len(original) + 2 * occurrences
    facts = check_frame(packet.data)
    assert facts.payload == b"<" + b"strongly typed, " * occurrences + b">"
    assert (facts.outer_udp_checksum != 0) == udp_checksum
    assert facts.geneve == original[28:68]
    assert stats.forwarded == 1 and stats.modified == 1


@given(
    st.lists(st.sampled_from([b"weakly typed", b"weakly", b" typed", b"x", b"\0"]), max_size=20),
    st.booleans(),
)
def test_replacement_count_and_growth(pieces: list[bytes], from_port: bool) -> None:
    payload = b"".join(pieces)
    sport, dport = (3000, 1234) if from_port else (1234, 3000)
    inner = make_inner(4, "udp", payload, sport=sport, dport=dport)
    original, packet, stats = through_reference(inner)
    n = payload.count(b"weakly typed")
    assert packet is not None
    assert len(packet.data) == len(original) + 2 * n
    assert check_frame(packet.data).payload == payload.replace(b"weakly typed", b"strongly typed")
    assert stats.modified == (1 if n else 0)


def test_drop_me_wins_over_the_replacement() -> None:
    inner = make_inner(4, "udp", b"weakly typed drop me", dport=3000)
    _, packet, stats = through_reference(inner)
    assert packet is None and stats.drops == {"rule": 1}


def fragments_of(version: int, datagram: ScapyPacket) -> list[bytes]:
    """A datagram as the sender's kernel fragments it for a 1500-byte (IPv6: 1280) link."""
    if version == 4:
        return [bytes(f) for f in fragment(datagram, fragsize=1480)]  # type: ignore[no-untyped-call]
    ip6 = datagram[IPv6]  # fragment6 cuts where a fragment header stands
    whole = IPv6(src=ip6.src, dst=ip6.dst) / IPv6ExtHdrFragment(id=9) / ip6.payload
    return [bytes(f) for f in fragment6(whole, 1280)]  # type: ignore[no-untyped-call]


def datagram(version: int, layer: ScapyPacket) -> ScapyPacket:
    if version == 4:
        return IP(src="192.0.2.10", dst="198.51.100.20") / layer
    return IPv6(src="2001:db8::10", dst="2001:db8:1::20") / layer


@pytest.mark.parametrize("version", [4, 6])
def test_a_fragmented_datagram_is_dropped_by_its_first_fragment(version: int) -> None:
    # The first fragment carries the UDP header and the start of the payload: "drop me" there
    # drops it, and with it the datagram (the receiver cannot reassemble the rest).
    big = datagram(version, UDP(sport=40000, dport=3000) / (b"drop me " + b"x" * 3000))
    frags = fragments_of(version, big)
    assert len(frags) >= 3
    first = Packet.parse(build_frame(frags[0]))
    assert first.is_fragment and first.l4_protocol == 17 and first.l4_offset == -1
    assert first.first_fragment_l4_offset == first.ip_offset + (20 if version == 4 else 48)
    _, packet, stats = through_reference(frags[0])
    assert packet is None and stats.drops == {"rule": 1}
    for later in frags[1:]:  # no ports, no payload start: they pass as they are
        assert Packet.parse(build_frame(later)).first_fragment_l4_offset == -1
        original, packet, _ = through_reference(later)
        unchanged(original, packet)


def test_an_ipv6_first_fragment_behind_destination_options_is_matched() -> None:
    # The fragment header's Next Header is destination options; the UDP header follows it,
    # still in the first fragment: the datagram's protocol is UDP, its port 3000.
    whole = (
        IPv6(src="2001:db8::10", dst="2001:db8:1::20")
        / IPv6ExtHdrFragment(id=9)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=40000, dport=3000)
        / (b"drop me " + b"x" * 3000)
    )
    frags = [bytes(f) for f in fragment6(whole, 1280)]  # type: ignore[no-untyped-call]
    first = Packet.parse(build_frame(frags[0]))
    assert first.l4_protocol == 17
    assert first.first_fragment_l4_offset == first.ip_offset + 40 + 8 + 8
    _, packet, stats = through_reference(frags[0])
    assert packet is None and stats.drops == {"rule": 1}
    later = Packet.parse(build_frame(frags[1]))
    assert later.first_fragment_l4_offset == -1


@pytest.mark.parametrize("version", [4, 6])
def test_fragments_are_never_rewritten(version: int) -> None:
    big = datagram(version, UDP(sport=40000, dport=3000) / (b"weakly typed " + b"x" * 3000))
    for frag in fragments_of(version, big):
        original, packet, stats = through_reference(frag)
        unchanged(original, packet)
        assert stats.modified == 0


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("seq", "dropped"), [(5, True), (6, False)])
def test_a_large_ping_loses_its_fifth_echo(version: int, seq: int, dropped: bool) -> None:
    # ping -s 3000: each echo is fragmented; its first fragment carries type and sequence.
    echo = ICMP(type=8, id=7, seq=seq) if version == 4 else ICMPv6EchoRequest(id=7, seq=seq)
    frags = fragments_of(version, datagram(version, echo / (b"p" * 3000)))
    _, packet, _ = through_reference(frags[0])
    assert (packet is None) == dropped
    for later in frags[1:]:
        original, packet, _ = through_reference(later)
        unchanged(original, packet)


def test_other_ports_in_a_first_fragment_are_left_alone() -> None:
    big = datagram(4, UDP(sport=40000, dport=53) / (b"drop me " + b"x" * 3000))
    original, packet, _ = through_reference(fragments_of(4, big)[0])
    unchanged(original, packet)


# -- ICMP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("icmp_type", [8, 0])
@pytest.mark.parametrize("seq", [0, 5, 10, 15, 500, 65535])
def test_echo_with_sequence_multiple_of_5_is_dropped(icmp_type: int, seq: int) -> None:
    inner = make_inner(4, "icmp", b"ping data", icmp_type=icmp_type, icmp_seq=seq)
    _, packet, stats = through_reference(inner)
    assert packet is None and stats.drops == {"rule": 1}


@pytest.mark.parametrize("icmp_type", [8, 0])
@pytest.mark.parametrize("seq", [1, 4, 6, 11, 499, 65534])
def test_other_echo_sequences_are_forwarded(icmp_type: int, seq: int) -> None:
    inner = make_inner(4, "icmp", b"ping data", icmp_type=icmp_type, icmp_seq=seq)
    original, packet, _ = through_reference(inner)
    unchanged(original, packet)


@pytest.mark.parametrize(("icmp_type", "code"), [(3, 3), (11, 0), (5, 1), (13, 0)])
def test_other_icmp_types_with_bytes_6_7_equal_5_are_forwarded(icmp_type: int, code: int) -> None:
    # Destination unreachable & co. with bytes 6-7 = 5: the original blog rule dropped these.
    quoted = bytes(IP(src="198.51.100.20", dst="192.0.2.10") / ICMP())[:28]
    icmp = ICMP(type=icmp_type, code=code)
    raw = bytearray(bytes(IP(src="192.0.2.1", dst="192.0.2.10") / icmp / quoted))
    raw[20 + 6 : 20 + 8] = (5).to_bytes(2, "big")
    rebuilt = IP(bytes(raw))
    del rebuilt[ICMP].chksum
    original, packet, _ = through_reference(bytes(rebuilt))
    unchanged(original, packet)


@pytest.mark.parametrize("icmp_type", [128, 129])
@pytest.mark.parametrize("seq", [0, 5, 10, 65535])
def test_icmpv6_echo_with_sequence_multiple_of_5_is_dropped(icmp_type: int, seq: int) -> None:
    inner = make_inner(6, "icmp", b"ping data", icmp_type=icmp_type, icmp_seq=seq)
    _, packet, stats = through_reference(inner)
    assert packet is None and stats.drops == {"rule": 1}


@pytest.mark.parametrize("icmp_type", [128, 129])
@pytest.mark.parametrize("seq", [1, 4, 6, 65534])
def test_other_icmpv6_echo_sequences_are_forwarded(icmp_type: int, seq: int) -> None:
    inner = make_inner(6, "icmp", b"ping data", icmp_type=icmp_type, icmp_seq=seq)
    original, packet, _ = through_reference(inner)
    unchanged(original, packet)


def test_icmpv6_that_is_not_echo_is_forwarded() -> None:
    # A neighbour solicitation and a packet-too-big with bytes 6-7 = 5.
    ns = bytes(IPv6(src="fe80::1", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="fe80::2"))
    ptb = bytearray(bytes(IPv6(src="2001:db8::1", dst="2001:db8::10") / ICMPv6PacketTooBig()))
    ptb[40 + 6 : 40 + 8] = (5).to_bytes(2, "big")
    rebuilt = IPv6(bytes(ptb))
    del rebuilt[ICMPv6PacketTooBig].cksum
    for inner in (ns, bytes(rebuilt)):
        original, packet, _ = through_reference(inner)
        unchanged(original, packet)


def test_icmp_over_the_wrong_ip_version_is_not_echo() -> None:
    # Protocol 1 inside IPv6 or 58 inside IPv4 is not what ping sends: left alone.
    v4 = bytearray(make_inner(4, "icmp", icmp_seq=5))
    v4[9] = 58
    v4[10:12] = b"\0\0"
    v4[10:12] = naive_checksum(bytes(v4[:20])).to_bytes(2, "big")
    assert rules.icmp_echo_sequence(packet_of(bytes(v4))) is None


def test_a_ping_sequence_loses_every_fifth() -> None:
    forwarded = []
    for seq in range(1, 21):
        _, packet, _ = through_reference(make_inner(4, "icmp", b"x" * 56, icmp_seq=seq))
        if packet is not None:
            forwarded.append(seq)
    assert forwarded == [s for s in range(1, 21) if s % 5]


# -- the helpers ------------------------------------------------------------------------------


def packet_of(inner: bytes) -> Packet:
    """A freshly parsed packet: the inner headers are not parsed yet."""
    return Packet.parse(build_frame(inner))


def test_rules_work_on_a_packet_not_yet_inner_parsed() -> None:
    # Modifiers may be called directly (tests, other pipelines), not only through process().
    p = packet_of(make_inner(4, "udp", b"drop me", dport=3000))
    assert reference.modifier(p) is Verdict.DROP
    p = packet_of(make_inner(4, "udp", b"weakly typed", dport=3000))
    assert reference.modifier(p) is None and p.modified
    assert rules.udp_port(3000)(packet_of(make_inner(4, "udp", dport=3000)))
    assert rules.icmp_echo_sequence(packet_of(make_inner(4, "icmp", icmp_seq=9))) == 9


def test_port_predicates() -> None:
    udp = packet_of(make_inner(4, "udp", sport=53, dport=40000))
    tcp = packet_of(make_inner(6, "tcp", sport=40000, dport=443))
    icmp = packet_of(make_inner(4, "icmp"))
    assert rules.udp_port(53)(udp) and rules.udp_port(1, 40000)(udp)
    assert not rules.udp_port(443)(tcp) and not rules.udp_port(53)(icmp)
    assert rules.tcp_port(443)(tcp) and not rules.tcp_port(53)(udp)
    assert not rules.udp_port()(udp)


def test_icmp_echo_sequence_and_every() -> None:
    assert rules.icmp_echo_sequence(packet_of(make_inner(4, "icmp", icmp_type=0, icmp_seq=3))) == 3
    assert rules.icmp_echo_sequence(packet_of(make_inner(4, "icmp", icmp_type=3))) is None
    assert rules.icmp_echo_sequence(packet_of(make_inner(4, "udp"))) is None
    assert rules.icmp_echo_sequence(packet_of(make_inner(6, "icmp", icmp_seq=11))) == 11
    assert rules.icmp_echo_sequence(packet_of(make_inner(6, "udp"))) is None
    every3 = rules.icmp_echo_every(3, lambda p: Verdict.FORWARD)
    assert every3(packet_of(make_inner(4, "icmp", icmp_seq=6))) is Verdict.FORWARD
    assert every3(packet_of(make_inner(4, "icmp", icmp_seq=7))) is None
    for bad in (0, -1):
        with pytest.raises(ValueError):
            rules.icmp_echo_every(bad)


def test_chain_when_drop_and_replace() -> None:
    calls: list[str] = []

    def note(name: str, verdict: Verdict | None = None) -> Any:
        def modifier(p: Packet) -> Verdict | None:
            calls.append(name)
            return verdict

        return modifier

    chained = rules.chain(note("a"), note("b", Verdict.FORWARD), note("c", Verdict.DROP), note("d"))
    assert chained(packet_of(make_inner())) is Verdict.DROP
    assert calls == ["a", "b", "c"]
    calls.clear()
    guarded = rules.when(lambda p: False, note("never", Verdict.DROP))
    assert guarded(packet_of(make_inner())) is None and calls == []
    assert rules.drop(packet_of(make_inner())) is Verdict.DROP
    contains = rules.drop_if_contains(b"needle")
    assert contains(packet_of(make_inner(4, "udp", b"hayneedlehay"))) is Verdict.DROP
    assert contains(packet_of(make_inner(4, "udp", b"hay"))) is None
    p = packet_of(make_inner(4, "udp", b"aXbXc"))
    assert rules.replace(b"X", b"YY")(p) is None
    assert p.payload is not None and bytes(p.payload) == b"aYYbYYc"


def test_interest_of_the_reference_rules() -> None:
    from geneve import Interest, interest_of
    from geneve.rules.reference import modifier as reference_modifier

    assert interest_of(reference_modifier) == Interest(
        frozenset({3000}), frozenset(), frozenset({b"drop me", b"weakly typed"})
    )


def test_interest_algebra_never_narrows() -> None:
    from geneve import ALL_PACKETS, Interest, declare_interest, interest_of

    a = Interest(frozenset({1}), frozenset(), frozenset({b"x"}))
    b = Interest(frozenset({2}), None, None)
    assert (a | b) == Interest(frozenset({1, 2}), None, None)
    assert (a & b) == Interest(frozenset(), frozenset(), frozenset())  # no common UDP port
    assert (a & ALL_PACKETS) == a and (a | ALL_PACKETS) == ALL_PACKETS
    assert interest_of(lambda p: None) == ALL_PACKETS
    assert interest_of(rules.drop_if_contains(b"q")) == Interest(needles=frozenset({b"q"}))
    assert interest_of(rules.when(lambda p: True, rules.drop)) == ALL_PACKETS
    assert interest_of(rules.icmp_echo_every(5)).udp_ports == frozenset()
    with pytest.raises(ValueError):
        declare_interest(lambda p: None, udp_ports=[70000])
    with pytest.raises(ValueError):
        declare_interest(lambda p: None, payload_contains=[b""])
