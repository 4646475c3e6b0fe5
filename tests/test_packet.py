"""Packet: parse, lazy inner parse, every error path, and edits that keep lengths and checksums."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import (
    IP,
    TCP,
    UDP,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_SSRR,
)
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from support.frames import (
    check_frame,
    frame_of,
    gwlb_frames,
    inner_packets,
    make_inner,
    naive_sum,
    scapy_rebuilds_identically,
    sized_bytes,
)

import geneve
from geneve import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    FragmentError,
    GeneveError,
    GwlbMetadata,
    MalformedError,
    NotGeneveError,
    Packet,
    PacketTooLargeError,
    ReceiveBuffer,
    TruncatedError,
    UnsupportedError,
    build_frame,
)

ENDPOINT, ATTACHMENT, COOKIE = 0x0123456789ABCDEF, 0x0FEDCBA987654321, 0x11223344


def gwlb_udp(payload: bytes = b"hello, weakly typed world", **kwargs: Any) -> bytearray:
    return build_frame(make_inner(4, "udp", payload), **kwargs)


def raises(frame: bytes | bytearray, error: type[GeneveError], reason: str, **kw: Any) -> None:
    """Packet.parse followed by the inner parse raises ``error`` with ``reason``."""
    with pytest.raises(error) as info:
        Packet.parse(bytearray(frame), **kw).parse_inner()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.reason == reason, str(info.value)


def set_u16(frame: bytearray, at: int, value: int) -> bytearray:
    struct.pack_into("!H", frame, at, value)
    return frame


def with_lengths(frame: bytearray, total: int) -> bytearray:
    """``frame[:total]`` with the outer IPv4 and UDP lengths saying ``total``."""
    f = bytearray(frame[:total])
    if total >= 4:
        set_u16(f, 2, total)
    if total >= 26:
        set_u16(f, 24, total - 20)
    return f


# -- parsing ----------------------------------------------------------------------------------


def test_parse_a_gwlb_frame() -> None:
    frame = gwlb_udp(src="10.1.2.3", dst="10.9.8.7", src_port=12345)
    p = Packet.parse(frame)
    assert p.buf is frame  # a bytearray is used in place
    assert len(p) == p.length == len(frame)
    assert (p.udp_offset, p.geneve_offset, p.inner_offset) == (20, 28, 68)
    assert p.protocol_type == ETH_P_IPV4 and p.vni == 0 and not p.is_control
    assert p.outer.src == "10.1.2.3" and p.outer.dst == "10.9.8.7"
    assert (p.outer_udp.src_port, p.outer_udp.dst_port) == (12345, 6081)
    assert p.gwlb == GwlbMetadata(ENDPOINT, ATTACHMENT, COOKIE)
    assert p.flow_cookie == COOKIE
    assert p.geneve.gwlb == p.gwlb  # the fast path and the generic walk agree
    assert p.inner_src == "192.0.2.10" and p.inner_dst == "198.51.100.20"
    assert p.ports == (40000, 3000)
    assert p.payload is not None and bytes(p.payload) == b"hello, weakly typed world"
    assert p.payload_find(b"weakly") == 7 and p.payload_contains(b"world")
    assert p.payload_find(b"strongly") == -1 and not p.payload_contains(b"strongly")
    assert p.inner_length == len(frame) - 68
    assert bytes(p) == bytes(p.data) == bytes(frame)
    assert p.inner_ipv4 is not None and p.inner_ipv6 is None and p.tcp is None
    assert p.icmp is None and p.udp is not None and p.udp.length == 8 + 25
    assert "ipv4 proto=17" in repr(p)


def test_parse_copies_what_is_not_a_bytearray() -> None:
    frame = gwlb_udp()
    for kind in (bytes, memoryview):
        p = Packet.parse(kind(frame))
        assert isinstance(p.buf, bytearray) and p.buf == frame
        p.outer.ttl = 1
        assert frame[8] == 64  # the caller's object is untouched


def test_parse_a_prefix_of_a_larger_buffer() -> None:
    frame = gwlb_udp()
    buf = bytearray(frame) + b"\xee" * 500  # a receive buffer with stale bytes after the frame
    p = Packet.parse(buf, len(frame))
    assert bytes(p.data) == bytes(frame) and p.length == len(frame)
    assert p.payload is not None and bytes(p.payload).endswith(b"world")
    assert Packet.parse(bytes(buf), len(frame)).length == len(frame)
    with pytest.raises(ValueError):
        Packet.parse(bytearray(frame), len(frame) + 1)
    with pytest.raises(ValueError):
        Packet.parse(bytearray(frame), -1)


def test_ethernet_padding_after_the_inner_packet_is_not_payload() -> None:
    inner = make_inner(4, "udp", b"abc")
    frame = build_frame(inner + b"\0" * 6)  # padding inside the UDP datagram, after inner IP
    p = Packet.parse(frame)
    assert p.payload is not None and bytes(p.payload) == b"abc"
    assert p.ip_end == p.length - 6


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("l4", ["udp", "tcp", "icmp"])
def test_parse_every_inner_kind(version: int, l4: str) -> None:
    p = Packet.parse(build_frame(make_inner(version, l4, b"PAYLOAD", icmp_seq=77)))
    assert p.protocol_type == (ETH_P_IPV4 if version == 4 else ETH_P_IPV6)
    p.parse_inner()
    assert p.ip_version == version
    assert (p.inner_ipv4 is not None) == (version == 4)
    assert (p.inner_ipv6 is not None) == (version == 6)
    assert p.payload is not None and bytes(p.payload) == b"PAYLOAD"
    assert (p.udp is not None) == (l4 == "udp")
    assert (p.tcp is not None) == (l4 == "tcp")
    assert (p.ports is not None) == (l4 != "icmp")
    icmp = p.icmp
    if l4 == "icmp":
        assert icmp is not None and icmp.sequence == 77 and icmp.identifier == 7
        assert icmp.type == (8 if version == 4 else 128)
    else:
        assert icmp is None


def test_build_frame_matches_scapy() -> None:
    inner = make_inner(6, "udp", b"x" * 33)
    frame = build_frame(
        inner,
        src="10.0.0.9",
        dst="10.0.0.10",
        src_port=4242,
        vni=0xABCDEF,
        options=struct.pack("!HBB", 0xFFFF, 5, 1) + b"abcd",
        udp_checksum=True,
        ttl=17,
        identification=999,
    )
    check_frame(frame)
    pkt = scapy_rebuilds_identically(frame)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].id) == ("10.0.0.9", "10.0.0.10", 17, 999)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (4242, 6081)
    g = pkt[GENEVE]
    assert (g.version, g.optionlen, g.proto, g.vni) == (0, 10, ETH_P_IPV6, 0xABCDEF)
    opts = [(o.classid, o.type, o.length, bytes(o.data)) for o in g.options]
    assert opts == [
        (0x0108, 1, 2, ENDPOINT.to_bytes(8, "big")),
        (0x0108, 2, 2, ATTACHMENT.to_bytes(8, "big")),
        (0x0108, 3, 1, COOKIE.to_bytes(4, "big")),
        (0xFFFF, 5, 1, b"abcd"),
    ]
    assert bytes(g.payload) == inner
    p = Packet.parse(frame)
    assert p.vni == 0xABCDEF and p.gwlb == GwlbMetadata(ENDPOINT, ATTACHMENT, COOKIE)


def test_build_frame_rejects_bad_options_and_sizes() -> None:
    with pytest.raises(ValueError):
        build_frame(b"", options=b"abc")
    with pytest.raises(ValueError):
        build_frame(b"", endpoint_id=None, attachment_id=None, flow_cookie=None, options=b"a" * 256)
    with pytest.raises(PacketTooLargeError):
        build_frame(b"\0" * 0xFFFF)


def test_gwlb_options_partly_absent_or_absent() -> None:
    p = Packet.parse(gwlb_udp(endpoint_id=None, attachment_id=None))
    assert p.gwlb == GwlbMetadata(None, None, COOKIE)
    none = Packet.parse(gwlb_udp(endpoint_id=None, attachment_id=None, flow_cookie=None))
    assert none.gwlb is None and none.flow_cookie is None and none.inner_offset == 36


def test_inner_ethernet_and_vlan() -> None:
    inner = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=5, dport=6) / b"hi")
    p = Packet.parse(build_frame(inner, protocol_type=ETH_P_TEB))
    assert p.inner_src == "1.1.1.1" and p.ports == (5, 6) and p.ip_offset == 68 + 14
    tagged = bytes(Ether() / Dot1Q(vlan=7) / IP(dst="3.3.3.3") / UDP(sport=1, dport=2) / b"x")
    q = Packet.parse(build_frame(tagged, protocol_type=ETH_P_TEB))
    assert q.inner_dst == "3.3.3.3" and q.ip_offset == 68 + 18
    q.replace_payload(b"longer payload")
    q.fix_checksums()
    out = Ether(bytes(q.data)[68:])
    assert bytes(out[UDP].payload) == b"longer payload"
    assert out[IP].len == 20 + 8 + 14 and out[UDP].len == 8 + 14
    # 802.1ad: a service tag, then a customer tag (QinQ); and two 802.1Q tags.
    for outer_tag in (0x88A8, 0x8100):
        qinq = Ether(type=outer_tag) / Dot1Q(vlan=100) / Dot1Q(vlan=7) / IP(dst="4.4.4.4")
        r = Packet.parse(
            build_frame(bytes(qinq / UDP(sport=1, dport=3000) / b"y"), protocol_type=ETH_P_TEB)
        )
        assert r.inner_dst == "4.4.4.4" and r.ip_offset == 68 + 22 and r.ports == (1, 3000)


def test_inner_arp_has_no_ip() -> None:
    p = Packet.parse(build_frame(bytes(Ether() / ARP()), protocol_type=ETH_P_TEB))
    assert p.inner_ip is None and p.inner_src is None and p.ports is None
    assert p.payload is None and p.payload_find(b"x") == -1 and p.udp is None
    assert p.replace_in_payload(b"a", b"b") == 0
    with pytest.raises(UnsupportedError):
        p.replace_payload(b"x")


def test_fix_checksums_without_an_inner_ip_fixes_the_outer_header() -> None:
    # A modifier may edit a non-IP inner packet (or the outer header) and mark it modified:
    # the outer checksums must still come out right, not raise.
    frame = build_frame(bytes(Ether() / ARP()), protocol_type=ETH_P_TEB, udp_checksum=True)
    p = Packet.parse(frame)
    p.outer.ttl = 5
    p.buf[p.inner_offset] ^= 0xFF  # an edit of the inner Ethernet destination
    p.mark_modified()
    p.fix_checksums()
    out = bytes(p.data)
    pkt = IP(out)
    rebuilt = pkt.copy()
    del rebuilt.chksum
    del rebuilt[UDP].chksum
    assert bytes(rebuilt) == out


def test_inner_ipv6_extension_headers() -> None:
    inner = bytes(
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)
        / b"data"
    )  # fmt: skip
    p = Packet.parse(build_frame(inner))
    assert p.l4_protocol == 17 and p.l4_offset == 68 + 48 and p.ports == (1, 2)
    p.replace_payload(b"a much longer piece of data")
    p.fix_checksums()
    inner_udp = scapy_rebuilds_identically(p.data)[GENEVE].payload[UDP]
    assert bytes(inner_udp.payload) == b"a much longer piece of data"


def test_modified_flag() -> None:
    p = Packet.parse(gwlb_udp())
    assert not p.modified
    p.swap_outer()  # checksums stay valid: not a modification
    assert not p.modified
    p.mark_modified()
    assert p.modified
    p.fix_checksums()
    assert not p.modified


def test_parse_on_a_control_packet() -> None:
    frame = gwlb_udp()
    frame[29] |= 0x80
    assert Packet.parse(frame).is_control


# -- lazy inner parse -------------------------------------------------------------------------


def test_inner_is_parsed_only_when_asked() -> None:
    frame = gwlb_udp()
    set_u16(frame, 68 + 20 + 4, 9)  # inner UDP length is wrong
    p = Packet.parse(frame)  # the outer headers are fine
    assert p.gwlb is not None and p.vni == 0 and p.outer.src == "10.0.0.1"
    for access in (
        lambda: p.udp,
        lambda: p.payload,
        lambda: p.ports,
        p.parse_inner,
        lambda: p.replace_payload(b""),
        lambda: p.fix_checksums(),
    ):
        with pytest.raises(MalformedError) as info:
            access()
        assert info.value.reason == "inner-udp-length"
    assert "malformed (inner-udp-length)" in repr(p)


def test_a_damaged_inner_packet_keeps_the_outer_readable_and_the_buffer_reusable() -> None:
    good = gwlb_udp()
    bad = set_u16(bytearray(good), 68 + 20 + 4, 9)  # inner UDP length is wrong
    receive = ReceiveBuffer(len(good) + 16)
    receive[: len(bad)] = bad
    p = Packet.parse(receive, len(bad))
    assert isinstance(p, Packet) and p.flow_cookie == 0x11223344
    for name in ("ip_offset", "l4_protocol", "payload_offset"):
        with pytest.raises(MalformedError):
            getattr(p, name)
    # An unedited frame can still be sent back as it came (addresses swapped).
    assert bytes(p.reply()[12:20]) == bytes(bad[16:20] + bad[12:16])
    p.mark_modified()
    with pytest.raises(MalformedError):
        p.reply()
    # The next frame in the same buffer is sound: the same packet, sound again.
    receive[: len(good)] = good
    q = Packet.parse(receive, len(good))
    assert q is p and type(q) is Packet
    assert (q.ip_offset, q.l4_protocol, q.payload_offset) == (68, 17, 96)


def test_a_subclass_parses_damaged_and_sound_frames() -> None:
    class Mine(Packet):
        __slots__ = ("note",)
        note: str

    bad = set_u16(gwlb_udp(), 68 + 20 + 4, 9)
    damaged = Mine.parse(bad)
    assert isinstance(damaged, Mine)
    with pytest.raises(MalformedError):
        damaged.parse_inner()
    damaged.note = "kept"  # the subclass's own slots still work
    sound = Mine.parse(gwlb_udp())
    assert type(sound) is Mine and sound.l4_offset == 88


INNER_FIELDS = (
    "ip_offset", "ip_version", "ip_end", "is_fragment", "l4_offset", "l4_protocol",
    "payload_offset",
)  # fmt: skip


@pytest.mark.parametrize(
    "inner",
    [
        make_inner(4, "udp", b"x"),
        make_inner(4, "udp", b"x", ip_options=b"\x01" * 4),
        make_inner(6, "tcp", b"x"),
        make_inner(4, "icmp"),
        make_inner(4, "udp", b"x" * 8, flags=1),
    ],
)
def test_inner_fields_can_be_read_first(inner: bytes) -> None:
    # Modifiers read p.l4_protocol or p.is_fragment straight away: that must parse, not fail.
    parsed = Packet.parse(build_frame(inner))
    parsed.parse_inner()
    for name in INNER_FIELDS:
        fresh = Packet.parse(build_frame(inner))
        assert getattr(fresh, name) == getattr(parsed, name)
    broken = build_frame(inner)
    broken[68] = 0x41
    for name in INNER_FIELDS:
        with pytest.raises(MalformedError):
            getattr(Packet.parse(bytearray(broken)), name)


# -- error paths ------------------------------------------------------------------------------


def test_truncation_at_every_byte() -> None:
    frame = gwlb_udp(udp_checksum=True)
    for cut in range(len(frame)):
        raises(frame[:cut], TruncatedError, "outer-truncated")


def test_truncation_with_consistent_outer_lengths() -> None:
    # The outer lengths say the truncated size: each layer reports its own truncation.
    frame = gwlb_udp()
    inner_total = len(frame) - 68
    for cut in range(len(frame)):
        f = with_lengths(frame, cut)
        if cut < 28:
            raises(f, TruncatedError, "outer-truncated")
        elif cut < 36:
            raises(f, TruncatedError, "geneve-truncated")
        elif cut < 68:
            raises(f, TruncatedError, "geneve-options")
        elif cut < 68 + inner_total:
            raises(f, TruncatedError, "inner-truncated")
    Packet.parse(with_lengths(frame, len(frame))).parse_inner()


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_outer_ihl_below_five(ihl: int) -> None:
    frame = gwlb_udp()
    frame[0] = 0x40 | ihl
    raises(frame, MalformedError, "outer-ihl")


def test_outer_header_errors() -> None:
    frame = gwlb_udp()
    raises(bytes([0x60]) + frame[1:], NotGeneveError, "not-ipv4")
    raises(set_u16(bytearray(frame), 2, 19), MalformedError, "outer-length")
    raises(set_u16(bytearray(frame), 2, len(frame) + 1), TruncatedError, "outer-truncated")
    tcp = bytearray(frame)
    tcp[9] = 6
    raises(tcp, NotGeneveError, "not-udp")
    raises(set_u16(bytearray(frame), 22, 4789), NotGeneveError, "not-geneve")
    raises(set_u16(bytearray(frame), 6, 0x2000), UnsupportedError, "outer-fragment")  # MF
    raises(set_u16(bytearray(frame), 6, 0x0001), UnsupportedError, "outer-fragment")  # offset
    Packet.parse(set_u16(bytearray(frame), 6, 0x4000))  # DF alone is fine
    raises(set_u16(bytearray(frame), 24, len(frame) - 19), TruncatedError, "udp-length")
    raises(set_u16(bytearray(frame), 24, len(frame) - 21), MalformedError, "udp-length")
    raises(set_u16(bytearray(frame), 2, 27), TruncatedError, "outer-truncated")
    # Another port when asked for one.
    moved = set_u16(bytearray(frame), 22, 6082)
    assert Packet.parse(moved, port=6082).length == len(frame)
    raises(frame, NotGeneveError, "not-geneve", port=6082)


def test_other_traffic_cut_short_is_not_geneve() -> None:
    # A capture's snaplen cuts packets short: their IPv4 total length says more than there is.
    # Other traffic is still "not Geneve" (replay skips it); Geneve cut short is truncated.
    dns = build_frame(make_inner(4, "udp", b"x" * 200), dst_port=53)
    tcp = bytearray(dns)
    tcp[9] = 6
    for cut in (24, 40, 96):
        raises(dns[:cut], NotGeneveError, "not-geneve")
        raises(tcp[:cut], NotGeneveError, "not-udp")
        raises(gwlb_udp(b"x" * 200)[:cut], TruncatedError, "outer-truncated")
    # A later fragment carries no UDP header: its bytes are not read as a port.
    later = set_u16(bytearray(dns), 6, 0x0010)
    raises(later, UnsupportedError, "outer-fragment")


def test_outer_ipv4_options_are_skipped() -> None:
    frame = gwlb_udp()
    with_opts = bytearray([0x46]) + frame[1:20] + b"\x01\x01\x01\x00" + frame[20:]
    set_u16(with_opts, 2, len(with_opts))
    p = Packet.parse(with_opts)
    assert (p.udp_offset, p.geneve_offset, p.inner_offset) == (24, 32, 72)
    assert p.gwlb == GwlbMetadata(ENDPOINT, ATTACHMENT, COOKIE) and p.ports == (40000, 3000)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_geneve_version_not_zero(version: int) -> None:
    frame = gwlb_udp()
    frame[28] |= version << 6
    raises(frame, UnsupportedError, "geneve-version")


def test_geneve_option_errors() -> None:
    frame = gwlb_udp()
    # Opt Len past the end of the datagram.
    short = build_frame(b"", endpoint_id=None, attachment_id=None, flow_cookie=None)
    short[28] = 1
    raises(short, TruncatedError, "geneve-options")
    # An option whose length runs past Opt Len (the cookie claims 2 words).
    past = bytearray(frame)
    past[28 + 8 + 24 + 3] = 2
    raises(past, MalformedError, "geneve-options")
    # An unknown critical option; the same option non-critical is skipped over.
    crit = build_frame(make_inner(4, "udp", b"x"), options=struct.pack("!HBB", 0x0999, 0x81, 0))
    raises(crit, UnsupportedError, "critical-option")
    ok = build_frame(make_inner(4, "udp", b"x"), options=struct.pack("!HBB", 0x0999, 0x01, 0))
    Packet.parse(ok).parse_inner()
    # A GWLB option marked critical is not GWLB's layout: the generic walk rejects it.
    gwlb_crit = bytearray(frame)
    gwlb_crit[28 + 8 + 2] |= 0x80
    raises(gwlb_crit, UnsupportedError, "critical-option")


@pytest.mark.parametrize("ptype", [ETH_P_IPV4, ETH_P_IPV6])
def test_inner_version_mismatch(ptype: int) -> None:
    inner = make_inner(6 if ptype == ETH_P_IPV4 else 4, "udp", b"x" * 40)
    raises(build_frame(inner, protocol_type=ptype), MalformedError, "inner-version")


def test_inner_header_errors() -> None:
    frame = gwlb_udp()
    ip = 68
    for ihl in (0, 4):
        bad = bytearray(frame)
        bad[ip] = 0x40 | ihl
        raises(bad, MalformedError, "inner-length")
    raises(set_u16(bytearray(frame), ip + 2, 19), MalformedError, "inner-length")
    past = set_u16(bytearray(frame), ip + 2, len(frame) - ip + 1)
    raises(past, TruncatedError, "inner-truncated")
    raises(set_u16(bytearray(frame), ip + 2, 24), TruncatedError, "inner-l4-truncated")
    raises(set_u16(bytearray(frame), ip + 24, 8), MalformedError, "inner-udp-length")
    tcp = build_frame(make_inner(4, "tcp", b"x"))
    for doff in (0x40, 0xF0):  # 4 words, and 15 words (past the segment)
        bad = bytearray(tcp)
        bad[ip + 20 + 12] = doff
        raises(bad, MalformedError, "inner-tcp-offset")
    raises(set_u16(bytearray(tcp), ip + 2, 39), TruncatedError, "inner-l4-truncated")
    icmp = build_frame(make_inner(4, "icmp", b""))
    raises(set_u16(bytearray(icmp), ip + 2, 23), TruncatedError, "inner-l4-truncated")
    v6 = build_frame(make_inner(6, "udp", b"abc"))
    raises(set_u16(bytearray(v6), ip + 4, 100), TruncatedError, "inner-truncated")
    raises(build_frame(make_inner(6, "udp")[:39]), TruncatedError, "inner-truncated")
    # A hop-by-hop header that claims more bytes than the packet has.
    hbh = bytes(IPv6() / IPv6ExtHdrHopByHop() / UDP())
    bad = bytearray(hbh)
    bad[41] = 5
    raises(build_frame(bytes(bad)), TruncatedError, "inner-truncated")
    short_eth = build_frame(bytes(Ether())[:10], protocol_type=ETH_P_TEB)
    raises(short_eth, TruncatedError, "inner-truncated")


def test_short_icmp_has_no_icmp_view() -> None:
    frame = build_frame(make_inner(4, "icmp", b"")[:24])  # 4 bytes of ICMP: type, code, sum
    set_u16(frame, 68 + 2, 24)
    p = Packet.parse(frame)
    assert p.icmp is None and p.payload is not None and bytes(p.payload) == b""


@pytest.mark.parametrize(
    "inner",
    [
        make_inner(4, "udp", b"x" * 16, flags=1),  # more fragments
        make_inner(4, "udp", b"x" * 16, frag=3),  # a later fragment
        bytes(IPv6() / IPv6ExtHdrFragment(m=1) / UDP(dport=3000) / (b"x" * 16)),
    ],
)
def test_inner_fragments_are_never_rewritten(inner: bytes) -> None:
    frame = build_frame(inner)
    p = Packet.parse(bytearray(frame))
    assert p.is_fragment and p.udp is None and p.ports is None and p.payload is None
    with pytest.raises(FragmentError) as info:
        p.replace_payload(b"y" * 16)
    assert info.value.reason == "fragment" and isinstance(info.value, UnsupportedError)
    assert p.replace_in_payload(b"x", b"yy") == 0
    assert p.buf == frame and not p.modified
    # Checksum fixing leaves the L4 bytes alone and says so.
    p.mark_modified()
    assert p.fix_checksums() is False
    assert p.buf == frame


# -- properties -------------------------------------------------------------------------------


@given(gwlb_frames())
def test_swap_outer_twice_is_the_identity(frame: bytearray) -> None:
    original = bytes(frame)
    p = Packet.parse(frame)
    p.swap_outer()
    assert frame[12:16] == original[16:20] and frame[16:20] == original[12:16]
    p.swap_outer()
    assert bytes(frame) == original


@given(gwlb_frames())
def test_swap_outer_keeps_every_checksum_valid(frame: bytearray) -> None:
    before = check_frame(frame)
    p = Packet.parse(frame)
    p.swap_outer()
    after = check_frame(p.data)  # checksums valid without fixing anything
    assert (after.outer_src, after.outer_dst) == (before.outer_dst, before.outer_src)
    assert (after.src_port, after.dst_port) == (before.src_port, before.dst_port)
    assert after.geneve == before.geneve and after.inner == before.inner
    assert after.outer_udp_checksum == before.outer_udp_checksum


@given(gwlb_frames(l4s=("udp", "icmp")), sized_bytes(2000))
def test_replace_payload_any_length(frame: bytearray, new: bytes) -> None:
    before = check_frame(frame)
    p = Packet.parse(frame)
    p.replace_payload(new)
    assert p.modified
    p.fix_checksums()
    out = bytes(p.data)
    facts = check_frame(out)  # every length and checksum right, outer UDP never stale
    assert facts.payload == new
    assert (facts.outer_udp_checksum == 0) == (before.outer_udp_checksum == 0)
    assert facts.geneve == before.geneve and facts.outer_src == before.outer_src
    scapy_rebuilds_identically(out)
    again = Packet.parse(out)
    assert again.payload is not None and bytes(again.payload) == new


@given(
    inner_packets(l4s=("udp", "icmp"), max_payload=100),
    st.integers(1, 16),
    st.sampled_from([-3, 0, 1, 2]),
    st.booleans(),
)
def test_replace_payload_after_padding(inner: bytes, pad: int, grow: int, whole: bool) -> None:
    # Bytes after the inner IP packet (padding) are dropped by an edit, and every length
    # follows, also when the payload grows by exactly the padding (then the frame keeps its
    # length while the inner packet's changes).
    p = Packet.parse(frame_of(inner + b"\xee" * pad))
    old = bytes(p.payload or b"")
    new = old + b"n" * (pad * grow) if grow >= 0 else old[: max(0, len(old) + grow)]
    if whole:
        p.replace_payload(new)
    elif old:
        p.replace_in_payload(old, new)
    else:
        return
    p.fix_checksums()
    facts = check_frame(p.data)  # every length right, no padding left
    assert facts.payload == new
    scapy_rebuilds_identically(p.data)


@given(gwlb_frames(l4s=("tcp",)), st.data())
def test_replace_tcp_payload_same_length_only(frame: bytearray, data: st.DataObject) -> None:
    p = Packet.parse(frame)
    assert p.payload is not None
    old = bytes(p.payload)
    new = data.draw(st.binary(min_size=len(old), max_size=len(old)))
    p.replace_payload(new)
    p.fix_checksums()
    assert check_frame(p.data).payload == new
    with pytest.raises(UnsupportedError):
        p.replace_payload(new + b"x")
    assert check_frame(p.data).payload == new


tokens = st.sampled_from([b"weakly typed", b"strongly typed", b"ab", b"a", b"x" * 40, b"\0", b""])


@given(
    gwlb_frames(l4s=("udp", "icmp"), max_payload=0),
    st.lists(tokens, max_size=30).map(b"".join),
    tokens.filter(bool),
    tokens,
    st.sampled_from([-1, -1, 0, 1, 2]),
)
def test_replace_in_payload(
    frame: bytearray, payload: bytes, old: bytes, new: bytes, count: int
) -> None:
    p = Packet.parse(frame)
    p.replace_payload(payload)
    p.fix_checksums()
    found = p.replace_in_payload(old, new, count)
    expected = payload.replace(old, new, count)
    n = payload.count(old)
    assert found == (n if count < 0 else min(n, count))
    p.fix_checksums()
    facts = check_frame(p.data)
    assert facts.payload == expected
    scapy_rebuilds_identically(p.data)


def test_replace_payload_up_to_the_limit() -> None:
    p = Packet.parse(gwlb_udp(b""))
    room = 0xFFFF - p.length
    with pytest.raises(PacketTooLargeError):
        p.replace_payload(b"z" * (room + 1))
    assert not p.modified and p.length == len(gwlb_udp(b""))
    p.replace_payload(b"z" * room)
    p.fix_checksums()
    assert p.length == 0xFFFF
    check_frame(p.data)


def test_replace_payload_while_a_view_of_the_buffer_is_alive() -> None:
    # A modifier may hold packet.payload (a memoryview of the buffer) while it grows the packet.
    p = Packet.parse(gwlb_udp(b"abc"))
    view = p.payload
    assert view is not None
    p.replace_payload(bytes(view) + b" and more")
    p.fix_checksums()
    assert check_frame(p.data).payload == b"abc and more"
    data = p.data
    p.replace_in_payload(b"more", b"much more")
    p.fix_checksums()
    assert check_frame(p.data).payload == b"abc and much more"
    del view, data


@given(
    gwlb_frames(l4s=("udp", "tcp", "icmp")),
    st.sampled_from([b"a", b"weakly typed", b"\0"]),
    st.sampled_from([b"", b"b", b"strongly typed"]),
)
def test_a_receive_buffer_gives_the_same_bytes_as_a_bytearray(
    frame: bytearray, old: bytes, new: bytes
) -> None:
    replies = []
    for buf in (bytearray(len(frame) + 64), ReceiveBuffer(len(frame) + 64)):
        buf[: len(frame)] = frame
        p = Packet.parse(buf, len(frame))
        assert p.buf is buf  # in place, no copy
        p.swap_outer()
        with contextlib.suppress(GeneveError):  # TCP refuses a length change
            p.replace_in_payload(old, new)
        p.fix_checksums()
        replies.append(bytes(p.data))
    assert replies[0] == replies[1]
    check_frame(replies[1])


def test_a_receive_buffer_is_never_resized() -> None:
    frame = gwlb_udp(b"grow me")
    rb = ReceiveBuffer(len(frame))
    assert len(rb) == len(frame) and len(ReceiveBuffer()) == geneve.MAX_FRAME_LENGTH
    rb[:] = frame
    p = Packet.parse(rb)
    p.replace_in_payload(b"grow", b"grow a lot")  # past the buffer's end: on a copy
    p.fix_checksums()
    assert p.buf is not rb and bytes(rb) == bytes(frame)
    assert check_frame(p.data).payload == b"grow a lot me"
    with pytest.raises(BufferError):  # its C view (or, without C, a memoryview) pins it
        rb.append(0)


def describe(p: Packet) -> tuple[object, ...]:
    """What a packet says of its frame, through the public API (None where it refuses)."""
    try:
        p.parse_inner()
        inner: tuple[object, ...] = (
            p.ip_version, p.ip_offset, p.ip_end, p.is_fragment, p.l4_offset, p.l4_protocol,
            p.payload_offset, p.ports, None if p.payload is None else bytes(p.payload),
        )  # fmt: skip
    except GeneveError as err:
        inner = (type(err).__name__,)
    return (
        p.length, p.udp_offset, p.geneve_offset, p.inner_offset, p.protocol_type, p.vni,
        p.gwlb, p.modified, p.max_inner_length, bytes(p.data), inner,
    )  # fmt: skip


@given(
    st.lists(
        st.one_of(
            gwlb_frames(),
            gwlb_frames(l4s=("udp",), versions=(4,)),
            # Not the usual layout: an extra option, a VNI, a damaged inner header.
            gwlb_frames().map(lambda f: frame_of(bytes(f[68:]), options=b"\x01\x09\x02\x00")),
            gwlb_frames().map(lambda f: frame_of(bytes(f[68:]), vni=7)),
            gwlb_frames().map(lambda f: f[:68] + b"\x46" + f[69:]),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_a_receive_buffer_refills_one_packet(frames: list[bytearray]) -> None:
    # Frame after frame in one ReceiveBuffer: the same Packet comes back, and it says of each
    # frame exactly what a packet parsed from a copy of that frame says.
    rb = ReceiveBuffer(9000)
    first = None

    def edit(p: Packet) -> object:
        # Edits first, before anything else parses the inner packet: they must do it.
        try:
            return p.replace_in_payload(b"a", b"bc"), p.fix_checksums()
        except GeneveError as err:
            return type(err)

    for frame in frames:
        rb[: len(frame)] = frame
        p = Packet.parse(rb, len(frame))
        first = first or p
        assert p is first and p.buf is rb
        fresh = Packet.parse(bytes(frame))
        assert edit(p) == edit(fresh)
        assert describe(p) == describe(fresh)
        # An edit that outgrows the buffer onto a copy lasts until the next frame only.
        with contextlib.suppress(GeneveError):
            p.replace_in_payload(b"\0", b"\0" * 9000)
        p.max_inner_length = 100


def test_a_receive_buffer_parse_that_fails_leaves_the_next_one_whole() -> None:
    good = gwlb_udp(b"weakly typed")
    rb = ReceiveBuffer()
    rb[: len(good)] = good
    p = Packet.parse(rb, len(good))
    rb[:20] = bytes(20)  # not IPv4
    with pytest.raises(GeneveError):
        Packet.parse(rb, len(good))
    rb[: len(good)] = good
    assert Packet.parse(rb, len(good)) is p and bytes(p.data) == bytes(good)

    fresh = ReceiveBuffer()  # its first parse fails, then a good frame comes
    with pytest.raises(GeneveError):
        Packet.parse(fresh, len(good))
    fresh[: len(good)] = good
    assert bytes(Packet.parse(fresh, len(good)).reply())[16:20] == bytes(good[12:16])

    class Mine(Packet):
        __slots__ = ()

    mine = Mine.parse(rb, len(good))  # a subclass gets a packet of its own class
    assert type(mine) is Mine and mine is not p and bytes(mine.data) == bytes(good)


@given(
    gwlb_frames(),
    st.sampled_from([bytearray, ReceiveBuffer]),
    st.sampled_from([None, (b"a", b"bc"), (b"\0", b""), (b"a", b"b")]),
)
def test_reply_is_fix_checksums_swap_outer_and_data(
    frame: bytearray, buffer: type[bytearray], edit: tuple[bytes, bytes] | None
) -> None:
    # reply() against the three calls it stands for, on a copy of the same frame.
    replies = []
    for one_call in (True, False):
        buf = buffer(len(frame) + 16)
        buf[: len(frame)] = frame
        p = Packet.parse(buf, len(frame))
        if edit is not None:
            with contextlib.suppress(GeneveError):  # TCP refuses a length change
                p.replace_in_payload(*edit)
        if one_call:
            replies.append(bytes(p.reply()))
        else:
            if p.modified:
                p.fix_checksums()
            p.swap_outer()
            replies.append(bytes(p.data))
        assert not p.modified
    assert replies[0] == replies[1]
    facts = check_frame(replies[0])
    assert replies[0][12:16] == frame[16:20] and replies[0][16:20] == frame[12:16]
    if edit is None:  # nothing edited: the frame as received, but for the swap
        assert replies[0][20:] == frame[20:] and replies[0][:12] == frame[:12]
    # An outer UDP checksum of 0 stays 0; any other is valid (check_frame checked it).
    assert (facts.outer_udp_checksum == 0) == (frame[26:28] == b"\0\0")


def test_reply_refuses_a_broken_length_and_swaps_nothing() -> None:
    frame = gwlb_udp(b"weakly typed")
    for buf in (bytearray(frame), ReceiveBuffer(len(frame))):
        buf[:] = frame
        p = Packet.parse(buf)
        p.replace_in_payload(b"weakly", b"strongly")
        set_u16(p.buf, 70, 0xFFF0)  # a direct edit breaks the inner IPv4 total length
        before = bytes(p.data)
        with pytest.raises(TruncatedError):
            p.reply()
        assert bytes(p.data) == before and p.modified


def routed_inners() -> list[tuple[str, bytes, str | None]]:
    """Inner packets with a route still to follow, and the final destination it names."""
    seg = ["2001:db8:9::1", "2001:db8:9::2"]
    v6 = IPv6(src="2001:db8::10", dst="2001:db8:5::77")
    udp, tcp = UDP(sport=1000, dport=3000), TCP(sport=1000, dport=80, flags="PA")
    srh, rh0 = IPv6ExtHdrSegmentRouting, IPv6ExtHdrRouting
    hbh = IPv6ExtHdrHopByHop()
    v4 = IP(src="192.0.2.10", dst="198.51.100.20")
    lsrr = v4.copy()
    lsrr.options = [IPOption_LSRR(routers=["10.9.9.9", "10.8.8.7"])]
    ssrr = v4.copy()
    ssrr.options = [IPOption_NOP(), IPOption_SSRR(routers=["10.9.9.7"])]
    done = v4.copy()  # the pointer past the route: every address used, dst is the final one
    done.options = [IPOption_LSRR(routers=["10.9.9.7"], pointer=8)]
    echo = ICMPv6EchoRequest(data=b"ab")
    return [  # (name, inner packet, the final destination, None where it is the header's)
        ("rpl", rpl(cmpr=0), "2001:db8:9::4"),
        ("rpl-compressed", rpl(cmpr=8), "2001:db8:5::4"),  # the first 8 bytes: the dst's
        ("srh", bytes(v6 / srh(addresses=seg, segleft=1) / udp / b"ab"), seg[0]),  # reversed
        ("srh-done", bytes(v6 / srh(addresses=seg, segleft=0) / udp / b"ab"), None),
        ("rh0", bytes(v6 / rh0(addresses=seg, segleft=2) / tcp / b"ab"), seg[-1]),
        ("rh0-icmpv6", bytes(v6 / rh0(addresses=seg, segleft=1) / echo), seg[-1]),
        ("hbh-rh0", bytes(v6 / hbh / rh0(addresses=seg, segleft=1) / udp / b"ab"), seg[-1]),
        ("lsrr", bytes(lsrr / udp / b"ab"), "10.8.8.7"),
        ("ssrr", bytes(ssrr / tcp / b"ab"), "10.9.9.7"),
        ("lsrr-done", bytes(done / udp / b"ab"), None),
    ]


def rpl(cmpr: int) -> bytes:
    """IPv6 with an RPL Source Route Header (RFC 6554, type 3): 2 hops left, CmprI = CmprE."""
    hops = [socket.inet_pton(socket.AF_INET6, a)[cmpr:] for a in ("2001:db8:9::3", "2001:db8:9::4")]
    body = b"".join(hops)
    pad = -len(body) % 8
    header = bytes([17, (len(body) + pad) // 8, 3, 2, cmpr << 4 | cmpr, pad << 4, 0, 0])
    header += body + bytes(pad)
    udp = struct.pack("!HHHH", 1000, 3000, 10, 0) + b"ab"
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in ("2001:db8::10", "2001:db8:5::77"))
    fixed = struct.pack("!IHBB16s16s", 0x60000000, len(header) + len(udp), 43, 64, src, dst)
    return fixed + header + udp


def scapy_l4_checksum(inner: bytes) -> int:
    """The L4 checksum scapy computes for ``inner`` (it follows routing headers to the end)."""
    ip = IPv6(inner) if inner[0] >> 4 == 6 else IP(inner)
    kind = next(k for k in (UDP, TCP, ICMPv6EchoRequest) if ip.haslayer(k))
    layer = ip.getlayer(kind)
    field = "cksum" if kind is ICMPv6EchoRequest else "chksum"
    delattr(layer, field)
    rebuilt = IPv6(bytes(ip)) if inner[0] >> 4 == 6 else IP(bytes(ip))
    value = getattr(rebuilt.getlayer(kind), field)
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize(
    ("name", "inner", "final"), routed_inners(), ids=[r[0] for r in routed_inners()]
)
@pytest.mark.parametrize("how", ["fix_checksums", "reply", "fix_frame"])
def test_the_pseudo_header_takes_the_final_destination(
    name: str, inner: bytes, final: str | None, how: str
) -> None:
    # RFC 8200 8.1 (Routing header) and RFC 768 / RFC 9293 3.1 (IPv4 source route): while a
    # route is still to be followed, the L4 checksum covers its final destination.
    p = Packet.parse(build_frame(inner, udp_checksum=True))
    p.replace_payload(b"zz")  # the same length: TCP allows no other
    if how == "fix_checksums":
        p.fix_checksums()
    elif how == "reply":
        p.reply()
        p.swap_outer()
    else:
        geneve.fix_frame(p.buf, p.ip_offset, p.l4_offset, p.l4_protocol, length=p.length)
    out = bytes(p.data)
    got = out[p.ip_offset :]
    assert got[: p.l4_offset - p.ip_offset] == inner[: p.l4_offset - p.ip_offset]  # untouched
    v6 = got[0] >> 4 == 6
    src, dst = (got[8:24], got[24:40]) if v6 else (got[12:16], got[16:20])
    if final is not None:
        dst = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, final)
        at = p.l4_offset - p.ip_offset + {17: 6, 6: 16, 58: 2}[p.l4_protocol]
        if not name.startswith("rpl"):  # scapy does not read RPL headers
            assert int.from_bytes(got[at : at + 2], "big") == scapy_l4_checksum(got)
    segment = got[p.l4_offset - p.ip_offset :]
    assert naive_sum(segment, naive_sum(src + dst) + p.l4_protocol + len(segment)) == 0xFFFF
    # The outer UDP checksum covers the inner packet: still right after the redo.
    udp = out[20:]
    assert naive_sum(udp, naive_sum(out[12:20]) + 17 + len(udp)) == 0xFFFF


@given(gwlb_frames(l4s=("udp",)), st.booleans())
def test_outer_udp_checksum_policies(frame: bytearray, zero: bool) -> None:
    p = Packet.parse(frame)
    p.replace_payload(b"new")
    p.fix_checksums(outer_udp="zero" if zero else "compute")
    facts = check_frame(p.data)
    assert (facts.outer_udp_checksum == 0) == zero


# -- robustness -------------------------------------------------------------------------------


def touch_everything(p: Packet) -> None:
    """Every accessor and edit of a parsed packet; only GeneveError may come out."""
    for name in (
        "outer", "outer_udp", "geneve", "is_control", "vni", "gwlb", "flow_cookie",
        "inner_ipv4", "inner_ipv6", "inner_ip", "inner_src", "inner_dst", "udp", "tcp",
        "icmp", "ports", "payload", "inner_length", "data",
    ):  # fmt: skip
        with contextlib.suppress(GeneveError):
            getattr(p, name)
    for call in (
        p.parse_inner,
        lambda: p.payload_find(b"a"),
        lambda: p.payload_contains(b"\0"),
        lambda: repr(p),
        lambda: bytes(p),
        lambda: list(p.geneve.options()),
        lambda: p.replace_in_payload(b"\0", b"\0\0"),
        lambda: p.replace_payload(b"12345"),
        lambda: p.fix_checksums(),
        p.swap_outer,
    ):
        with contextlib.suppress(GeneveError):
            call()


@given(st.binary(max_size=200))
def test_parse_random_bytes(data: bytes) -> None:
    try:
        p = Packet.parse(data)
    except GeneveError:
        return
    touch_everything(p)


@given(gwlb_frames(max_payload=100), st.randoms(use_true_random=False), st.integers(1, 6))
def test_parse_mutated_frames(frame: bytearray, rng: random.Random, edits: int) -> None:
    data = bytearray(frame)
    for _ in range(edits):
        op = rng.randrange(3)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif data:
            del data[min(pos, len(data) - 1)]
    # Half the time, make the outer lengths agree so the parse gets past the outer header.
    if rng.random() < 0.5 and len(data) >= 28:
        set_u16(data, 2, len(data))
        set_u16(data, 24, len(data) - 20)
    try:
        p = Packet.parse(data)
    except GeneveError:
        return
    touch_everything(p)


@given(inner_packets(max_payload=60), st.randoms(use_true_random=False))
def test_inner_mutations_never_escape(inner: bytes, rng: random.Random) -> None:
    # Mutate only the inner packet: the outer headers stay valid, so the inner parse runs.
    data = bytearray(inner)
    for _ in range(rng.randrange(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    frame = build_frame(bytes(data)[: rng.randrange(len(data) + 1)])
    p = Packet.parse(frame)
    touch_everything(p)


def test_every_error_is_a_value_error() -> None:
    for cls in (
        TruncatedError, MalformedError, UnsupportedError, NotGeneveError, FragmentError,
        PacketTooLargeError,
    ):  # fmt: skip
        assert issubclass(cls, GeneveError) and issubclass(cls, ValueError)
        assert cls("x").reason and cls("x", "custom").reason == "custom"
    assert geneve.MAX_FRAME_LENGTH == 8500 + 68


def test_unknown_outer_udp_policy_is_a_value_error() -> None:
    from geneve import fix_frame

    p = Packet.parse(gwlb_udp(b"abc"))
    with pytest.raises(ValueError, match="outer_udp"):
        p.fix_checksums(outer_udp="bogus")  # type: ignore[arg-type]
    # Also without an inner IP packet, where only the outer checksums are fixed.
    arp = Packet.parse(build_frame(bytes(Ether() / ARP()), protocol_type=ETH_P_TEB))
    with pytest.raises(ValueError, match="outer_udp"):
        arp.fix_checksums("bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outer_udp"):
        fix_frame(p.buf, p.ip_offset, p.l4_offset, 17, outer_udp="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("l4", ["udp", "tcp", "icmp"])
@pytest.mark.parametrize("call", ["fix_checksums", "reply"])
@pytest.mark.parametrize("keep", [0, 20, 40, 69, 100, 120])
def test_a_buffer_shortened_under_the_frame_is_truncated(
    version: int, l4: str, call: str, keep: int
) -> None:
    # A modifier that cuts packet.buf below packet.length: both implementations raise the same
    # TruncatedError (C checks the length against the buffer's size, never reading past it).
    frame = frame_of(make_inner(version, l4, b"x" * 200, dport=4000))
    packet = Packet.parse(bytearray(frame))
    del packet.buf[keep:]
    packet.mark_modified()
    with pytest.raises(TruncatedError):
        getattr(packet, call)()
    assert len(packet.buf) == keep


@pytest.mark.parametrize("call", ["fix_checksums", "reply"])
@pytest.mark.parametrize("keep", [0, 25, 40, 60])
def test_a_frame_without_inner_ip_cut_under_its_length_is_truncated(call: str, keep: int) -> None:
    # The outer-only fix-up (ARP inside) goes through the same routine and the same size check.
    frame = build_frame(bytes(Ether() / ARP()), protocol_type=ETH_P_TEB, udp_checksum=True)
    packet = Packet.parse(bytearray(frame))
    assert packet.ip_version == 0
    del packet.buf[keep:]
    packet.mark_modified()
    with pytest.raises(TruncatedError):
        getattr(packet, call)()


@given(gwlb_frames(max_payload=200), st.data())
def test_any_cut_of_the_buffer_raises_only_codec_errors(
    frame: bytearray, data: st.DataObject
) -> None:
    packet = Packet.parse(frame)
    if data.draw(st.booleans()):
        packet.parse_inner()
    keep = data.draw(st.integers(0, len(frame) - 1))
    del packet.buf[keep:]
    packet.mark_modified()
    with pytest.raises(TruncatedError):
        packet.fix_checksums()
