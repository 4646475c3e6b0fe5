"""Header views: every field reads what scapy decodes and writes in place, nothing more."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP as SICMP
from scapy.layers.inet import IP as SIP
from scapy.layers.inet import TCP as STCP
from scapy.layers.inet import UDP as SUDP
from scapy.layers.inet import IPOption
from scapy.layers.inet6 import IPv6 as SIPv6
from support.frames import ipv4_addresses, ipv6_addresses, make_inner

from geneve import (
    ICMP,
    TCP,
    UDP,
    Geneve,
    GeneveOption,
    GwlbMetadata,
    IPv4,
    IPv6,
    MalformedError,
    Packet,
    TruncatedError,
    build_frame,
)
from geneve._headers import GWLB_OPTION_CLASS, GWLB_OPTION_CLASSES

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def same(a: object, b: object) -> bool:
    """Equal values; addresses compared as addresses (``::1:0`` is ``::0.1.0.0``)."""
    if isinstance(a, str) and isinstance(b, str):
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    return a == b


def write_and_check(view: Any, name: str, value: Any, changed: slice) -> None:
    """Set ``view.name`` and check it reads back and that only bytes in ``changed`` moved."""
    before = bytes(view.buf)
    setattr(view, name, value)
    assert same(getattr(view, name), value)
    after = bytes(view.buf)
    assert after[: changed.start] == before[: changed.start]
    assert after[changed.stop :] == before[changed.stop :]


# -- IPv4 -------------------------------------------------------------------------------------


@given(
    u8,
    u16,
    u16,
    st.integers(0, 7),
    st.integers(0, 0x1FFF),
    u8,
    u8,
    ipv4_addresses,
    ipv4_addresses,
    st.integers(0, 10),
)
def test_ipv4_reads_like_scapy(
    tos: int, ident: int, total: int, flags: int, frag: int, ttl: int, proto: int,
    src: str, dst: str, option_words: int,
) -> None:  # fmt: skip
    pkt = SIP(
        tos=tos, id=ident, flags=flags, frag=frag, ttl=ttl, proto=proto, src=src, dst=dst,
        options=[IPOption(b"\x01" * (4 * option_words))] if option_words else [],
    )  # fmt: skip
    raw = bytearray(bytes(pkt))
    decoded = SIP(bytes(raw))
    ip = IPv4(raw)
    assert ip.version == 4
    assert ip.ihl == decoded.ihl == 5 + option_words
    assert ip.header_length == 20 + 4 * option_words
    assert ip.tos == decoded.tos
    assert ip.total_length == decoded.len
    assert ip.identification == decoded.id
    assert ip.dont_fragment == bool(decoded.flags.DF)
    assert ip.more_fragments == bool(decoded.flags.MF)
    assert ip.fragment_offset == decoded.frag
    assert ip.is_fragment == bool(decoded.flags.MF or decoded.frag)
    assert ip.ttl == decoded.ttl
    assert ip.protocol == decoded.proto
    assert ip.checksum == decoded.chksum
    assert same(ip.src, decoded.src) and same(ip.dst, decoded.dst)
    assert bytes(ip.options) == b"\x01" * (4 * option_words)


@given(u8, u16, st.integers(0, 0x1FFF), u8, u8, ipv4_addresses, ipv4_addresses, st.booleans())
def test_ipv4_writes_in_place(
    tos: int, ident: int, frag: int, ttl: int, proto: int, src: str, dst: str, flag: bool
) -> None:
    raw = bytearray(b"\xaa" * 4 + bytes(SIP(src="1.2.3.4", dst="5.6.7.8")) + b"\xbb" * 4)
    ip = IPv4(raw, 4)
    write_and_check(ip, "tos", tos, slice(5, 6))
    write_and_check(ip, "identification", ident, slice(8, 10))
    write_and_check(ip, "fragment_offset", frag, slice(10, 12))
    write_and_check(ip, "dont_fragment", flag, slice(10, 11))
    write_and_check(ip, "more_fragments", not flag, slice(10, 11))
    write_and_check(ip, "ttl", ttl, slice(12, 13))
    write_and_check(ip, "protocol", proto, slice(13, 14))
    write_and_check(ip, "src", src, slice(16, 20))
    write_and_check(ip, "dst", dst, slice(20, 24))
    write_and_check(ip, "checksum", 0xBEEF, slice(14, 16))
    decoded = SIP(bytes(raw[4:-4]))
    assert (decoded.tos, decoded.id, decoded.frag, decoded.ttl, decoded.proto) == (
        tos, ident, frag, ttl, proto
    )  # fmt: skip
    assert bool(decoded.flags.DF) == flag and bool(decoded.flags.MF) == (not flag)
    assert same(decoded.src, src) and same(decoded.dst, dst) and decoded.chksum == 0xBEEF
    assert raw[:4] == b"\xaa" * 4 and raw[-4:] == b"\xbb" * 4


def test_ipv4_version_and_ihl_share_a_byte() -> None:
    raw = bytearray(bytes(SIP()))
    ip = IPv4(raw)
    ip.ihl = 15
    assert raw[0] == 0x4F and ip.version == 4
    ip.version = 6
    assert raw[0] == 0x6F and ip.ihl == 15
    ip.dont_fragment = True
    ip.fragment_offset = 0x1FFF
    assert raw[6:8] == b"\x5f\xff"
    ip.fragment_offset = 0
    assert raw[6:8] == b"\x40\x00" and ip.dont_fragment and not ip.is_fragment
    ip.more_fragments = True
    assert ip.is_fragment


def test_ipv4_address_as_bytes() -> None:
    raw = bytearray(20)
    ip = IPv4(raw)
    ip.src = b"\x0a\x00\x00\x01"
    ip.dst = bytearray(b"\xc0\xa8\x01\x02")
    assert ip.src == "10.0.0.1" and ip.dst == "192.168.1.2"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ttl", 256),
        ("ttl", -1),
        ("tos", 300),
        ("protocol", 256),
        ("total_length", 0x10000),
        ("identification", -1),
        ("checksum", 0x10000),
        ("ihl", 16),
        ("ihl", -1),
        ("version", 16),
        ("fragment_offset", 0x2000),
        ("fragment_offset", -1),
        ("src", "10.0.0.256"),
        ("src", "not an address"),
        ("src", "2001:db8::1"),
        ("dst", b"\x01\x02\x03"),
        ("dst", b"\x01\x02\x03\x04\x05"),
    ],
)
def test_ipv4_setters_reject_out_of_range(name: str, value: Any) -> None:
    raw = bytearray(bytes(SIP(src="1.2.3.4", dst="5.6.7.8")))
    before = bytes(raw)
    with pytest.raises(ValueError):
        setattr(IPv4(raw), name, value)
    assert bytes(raw) == before


def test_setters_reject_non_integers_without_writing() -> None:
    raw = bytearray(bytes(SIP(src="1.2.3.4", dst="5.6.7.8", ttl=64)))
    before = bytes(raw)
    for name, value in (("ttl", 1.5), ("ihl", 5.0), ("identification", "7"), ("src", 167772161)):
        with pytest.raises(TypeError):
            setattr(IPv4(raw), name, value)
    assert bytes(raw) == before


# -- IPv6 -------------------------------------------------------------------------------------


@given(u8, st.integers(0, 0xFFFFF), u16, u8, u8, ipv6_addresses, ipv6_addresses)
def test_ipv6_reads_and_writes_like_scapy(
    tc: int, fl: int, plen: int, nh: int, hlim: int, src: str, dst: str
) -> None:
    pkt = SIPv6(tc=tc, fl=fl, plen=plen, nh=nh, hlim=hlim, src=src, dst=dst)
    raw = bytearray(bytes(pkt))
    ip = IPv6(raw)
    decoded = SIPv6(bytes(raw))
    assert ip.version == 6 and ip.header_length == 40
    assert ip.traffic_class == decoded.tc
    assert ip.flow_label == decoded.fl
    assert ip.payload_length == decoded.plen
    assert ip.next_header == decoded.nh
    assert ip.hop_limit == decoded.hlim
    assert same(ip.src, decoded.src) and same(ip.dst, decoded.dst)
    # Write different values and let scapy read them back.
    buf = bytearray(40)
    view = IPv6(buf)
    view.version = 6
    write_and_check(view, "traffic_class", tc, slice(0, 2))
    write_and_check(view, "flow_label", fl, slice(1, 4))
    write_and_check(view, "payload_length", plen, slice(4, 6))
    write_and_check(view, "next_header", nh, slice(6, 7))
    write_and_check(view, "hop_limit", hlim, slice(7, 8))
    write_and_check(view, "src", src, slice(8, 24))
    write_and_check(view, "dst", dst, slice(24, 40))
    assert bytes(buf) == bytes(pkt)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("traffic_class", 256),
        ("flow_label", 0x100000),
        ("payload_length", 0x10000),
        ("hop_limit", -1),
        ("src", "1.2.3.4"),
        ("dst", "2001:db8::g"),
        ("dst", b"\0" * 4),
    ],
)
def test_ipv6_setters_reject_out_of_range(name: str, value: Any) -> None:
    raw = bytearray(bytes(SIPv6()))
    before = bytes(raw)
    with pytest.raises(ValueError):
        setattr(IPv6(raw), name, value)
    assert bytes(raw) == before


# -- UDP, TCP, ICMP ---------------------------------------------------------------------------


@given(u16, u16, u16, u16)
def test_udp_reads_and_writes(sport: int, dport: int, length: int, csum: int) -> None:
    raw = bytearray(bytes(SUDP(sport=sport, dport=dport, len=length, chksum=csum)))
    udp = UDP(raw)
    assert (udp.src_port, udp.dst_port, udp.length, udp.checksum) == (sport, dport, length, csum)
    assert udp.header_length == 8
    udp.src_port, udp.dst_port = dport, sport
    udp.length, udp.checksum = csum, length
    decoded = SUDP(bytes(raw))
    assert (decoded.sport, decoded.dport, decoded.len, decoded.chksum) == (
        dport, sport, csum, length
    )  # fmt: skip


@pytest.mark.parametrize("name", ["src_port", "dst_port", "length", "checksum"])
@pytest.mark.parametrize("value", [-1, 0x10000])
def test_udp_setters_reject_out_of_range(name: str, value: int) -> None:
    raw = bytearray(8)
    with pytest.raises(ValueError):
        setattr(UDP(raw), name, value)
    assert raw == bytearray(8)


@given(u16, u16, u32, u32, st.integers(5, 15), u8, u16, u16)
def test_tcp_reads_like_scapy(
    sport: int, dport: int, seq: int, ack: int, doff: int, flags: int, win: int, urg: int
) -> None:
    pkt = STCP(
        sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=win, urgptr=urg,
        options=[("NOP", None)] * (4 * (doff - 5)),
    )  # fmt: skip
    raw = bytearray(bytes(pkt))
    tcp = TCP(raw)
    decoded = STCP(bytes(raw))
    assert (tcp.src_port, tcp.dst_port) == (decoded.sport, decoded.dport)
    assert (tcp.seq, tcp.ack) == (decoded.seq, decoded.ack)
    assert tcp.data_offset == decoded.dataofs == doff
    assert tcp.header_length == 4 * doff
    assert tcp.flags == int(decoded.flags)
    assert tcp.window == decoded.window
    assert tcp.checksum == decoded.chksum
    assert tcp.urgent_pointer == decoded.urgptr
    # In place: a new window and flags, read back by scapy.
    write_and_check(tcp, "window", win ^ 0xFFFF, slice(14, 16))
    write_and_check(tcp, "flags", flags ^ 0xFF, slice(13, 14))
    write_and_check(tcp, "data_offset", 5, slice(12, 13))
    write_and_check(tcp, "seq", seq ^ 0xFFFFFFFF, slice(4, 8))
    again = STCP(bytes(raw))
    assert again.window == win ^ 0xFFFF and int(again.flags) == flags ^ 0xFF
    assert again.dataofs == 5 and again.seq == seq ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    ("name", "value"), [("data_offset", 16), ("seq", 2**32), ("ack", -1), ("flags", 256)]
)
def test_tcp_setters_reject_out_of_range(name: str, value: int) -> None:
    raw = bytearray(bytes(STCP()))
    before = bytes(raw)
    with pytest.raises(ValueError):
        setattr(TCP(raw), name, value)
    assert bytes(raw) == before


@given(u8, u8, u16, u16, u16)
def test_icmp_reads_and_writes(itype: int, code: int, csum: int, ident: int, seq: int) -> None:
    raw = bytearray(bytes(SICMP(type=itype, code=code, chksum=csum, id=ident, seq=seq)))
    icmp = ICMP(raw)
    # scapy decodes bytes 4-7 as id/seq for echo; the view always reads them so.
    assert (icmp.type, icmp.code, icmp.checksum) == (itype, code, csum)
    assert (icmp.identifier, icmp.sequence) == struct.unpack("!HH", raw[4:8])
    write_and_check(icmp, "sequence", seq ^ 0xFFFF, slice(6, 8))
    write_and_check(icmp, "identifier", ident ^ 0xFFFF, slice(4, 6))
    write_and_check(icmp, "type", 8, slice(0, 1))
    decoded = SICMP(bytes(raw))
    assert (decoded.type, decoded.id, decoded.seq) == (8, ident ^ 0xFFFF, seq ^ 0xFFFF)


def test_icmp_setters_reject_out_of_range() -> None:
    raw = bytearray(8)
    for name, value in (("type", 256), ("code", -1), ("sequence", 0x10000)):
        with pytest.raises(ValueError):
            setattr(ICMP(raw), name, value)
    assert raw == bytearray(8)


# -- Geneve and its options -------------------------------------------------------------------

option_strategy = st.tuples(u16, st.integers(0, 0x7F), st.booleans(), st.integers(0, 4)).map(
    lambda t: (t[0], t[1] | (0x80 if t[2] else 0), bytes(range(4 * t[3])))
)


@given(
    st.booleans(),
    st.booleans(),
    u16,
    st.integers(0, 0xFFFFFF),
    st.lists(option_strategy, max_size=5),
)
def test_geneve_reads_like_scapy(
    oam: bool, critical: bool, proto: int, vni: int, options: list[tuple[int, int, bytes]]
) -> None:
    pkt = GENEVE(
        oam=int(oam),
        critical=int(critical),
        proto=proto,
        vni=vni,
        options=[
            GeneveOptions(classid=c, type=t, length=len(d) // 4, data=d) for c, t, d in options
        ],
    )
    raw = bytearray(bytes(pkt))
    decoded = GENEVE(bytes(raw))
    g = Geneve(raw)
    assert g.version == decoded.version == 0
    assert g.opt_len == decoded.optionlen
    assert g.options_length == 4 * decoded.optionlen
    assert g.header_length == 8 + 4 * decoded.optionlen == len(raw)
    assert g.oam == bool(decoded.oam) == oam
    assert g.critical == bool(decoded.critical) == critical
    assert g.protocol_type == decoded.proto
    assert g.vni == decoded.vni == vni
    got = [(o.option_class, o.type, o.critical, o.length, bytes(o.data)) for o in g.options()]
    want = [(o.classid, o.type, bool(o.type & 0x80), o.length * 4, o.data) for o in decoded.options]
    assert got == want
    for option_class, otype, _data in options:
        found = g.find_option(option_class, otype & 0x7F)
        assert found is not None
        assert found.option_class == option_class and found.type & 0x7F == otype & 0x7F


@given(st.integers(0, 0xFFFFFF), st.booleans(), st.booleans(), u16, st.integers(0, 3))
def test_geneve_writes_in_place(
    vni: int, oam: bool, critical: bool, proto: int, version: int
) -> None:
    raw = bytearray(bytes(GENEVE(proto=0x0800, vni=0x123456, reserved2=0x5A)))
    g = Geneve(raw)
    write_and_check(g, "vni", vni, slice(4, 7))
    assert raw[7] == 0x5A  # the reserved byte after the VNI is not the VNI's
    write_and_check(g, "oam", oam, slice(1, 2))
    write_and_check(g, "critical", critical, slice(1, 2))
    write_and_check(g, "protocol_type", proto, slice(2, 4))
    write_and_check(g, "version", version, slice(0, 1))
    write_and_check(g, "opt_len", 0, slice(0, 1))
    decoded = GENEVE(bytes(raw))
    assert (decoded.vni, decoded.oam, decoded.critical, decoded.proto, decoded.version) == (
        vni, int(oam), int(critical), proto, version
    )  # fmt: skip
    assert decoded.reserved2 == 0x5A


@pytest.mark.parametrize(
    ("name", "value"),
    [("vni", 1 << 24), ("vni", -1), ("version", 4), ("opt_len", 64), ("protocol_type", 0x10000)],
)
def test_geneve_setters_reject_out_of_range(name: str, value: int) -> None:
    raw = bytearray(bytes(GENEVE(proto=0x0800, vni=7)))
    before = bytes(raw)
    with pytest.raises(ValueError):
        setattr(Geneve(raw), name, value)
    assert bytes(raw) == before


def test_geneve_option_fields_write_in_place() -> None:
    raw = bytearray(bytes(GeneveOptions(classid=0x0108, type=1, length=2, data=b"A" * 8)))
    raw[3] |= 0xE0  # the three reserved bits before the length
    opt = GeneveOption(raw)
    assert opt.length_words == 2 and opt.length == 8 and bytes(opt.data) == b"A" * 8
    opt.critical = True
    assert raw[2] == 0x81 and opt.type == 0x81
    opt.critical = False
    write_and_check(opt, "option_class", 0x0167, slice(0, 2))
    write_and_check(opt, "length_words", 1, slice(3, 4))
    assert raw[3] == 0xE1  # reserved bits kept
    assert bytes(opt.data) == b"A" * 4
    with pytest.raises(ValueError):
        opt.length_words = 32
    with pytest.raises(ValueError):
        opt.type = 256


def test_geneve_options_running_past_raise() -> None:
    # Opt Len says 2 words but the buffer holds 1.
    raw = bytearray(struct.pack("!BBHI", 2, 0, 0x0800, 0) + b"\x01\x08\x01\x00")
    with pytest.raises(TruncatedError) as info:
        list(Geneve(raw).options())
    assert info.value.reason == "geneve-options"
    # An option whose length runs past Opt Len.
    raw = bytearray(struct.pack("!BBHI", 2, 0, 0x0800, 0) + b"\x01\x08\x01\x02" + b"\0" * 4)
    with pytest.raises(MalformedError) as minfo:
        list(Geneve(raw).options())
    assert minfo.value.reason == "geneve-options"


# -- GWLB metadata ----------------------------------------------------------------------------


def gwlb_options(option_class: int, values: dict[int, tuple[int, int]]) -> bytes:
    out = b""
    for otype, (value, size) in values.items():
        out += struct.pack("!HBB", option_class, otype, size // 4) + value.to_bytes(size, "big")
    return out


def geneve_with(options: bytes) -> Geneve:
    return Geneve(bytearray(struct.pack("!BBHI", len(options) // 4, 0, 0x0800, 0) + options))


@given(st.sampled_from(GWLB_OPTION_CLASSES), st.integers(0, 2**64 - 1), u32, st.booleans())
def test_gwlb_metadata_from_options(
    option_class: int, ident: int, cookie: int, extra: bool
) -> None:
    opts = gwlb_options(option_class, {1: (ident, 8), 2: (ident ^ 1, 8), 3: (cookie, 4)})
    if extra:  # an unrelated option before them changes nothing
        opts = struct.pack("!HBB", 0xFFFF, 9, 1) + b"zzzz" + opts
    meta = geneve_with(opts).gwlb
    assert meta == GwlbMetadata(ident, ident ^ 1, cookie, option_class)
    assert meta is not None and meta.option_class == option_class
    assert hash(meta) == hash(GwlbMetadata(ident, ident ^ 1, cookie, option_class))
    assert f"0x{cookie:08x}" in repr(meta)


def test_gwlb_metadata_partial_wrong_size_and_other_classes() -> None:
    assert geneve_with(b"").gwlb is None
    assert geneve_with(gwlb_options(0x0132, {1: (5, 8)})).gwlb is None
    # Only the cookie: the ids are None.
    only_cookie = geneve_with(gwlb_options(GWLB_OPTION_CLASS, {3: (0xABCD, 4)})).gwlb
    assert only_cookie == GwlbMetadata(None, None, 0xABCD)
    # A cookie of the wrong size is not a cookie.
    assert geneve_with(gwlb_options(GWLB_OPTION_CLASS, {3: (1, 8)})).gwlb is None
    # The first occurrence wins; a second class is ignored once one has been found.
    opts = gwlb_options(GWLB_OPTION_CLASS, {3: (1, 4)}) + gwlb_options(0x0167, {1: (2, 8)})
    opts += gwlb_options(GWLB_OPTION_CLASS, {3: (9, 4)})
    assert geneve_with(opts).gwlb == GwlbMetadata(None, None, 1, GWLB_OPTION_CLASS)
    assert GwlbMetadata(1, 2, 3) != GwlbMetadata(1, 2, 3, 0x0167)
    assert GwlbMetadata(1, 2, 3) != (1, 2, 3)


# -- construction and ownership ---------------------------------------------------------------


@pytest.mark.parametrize("view", [IPv4, IPv6, UDP, TCP, ICMP, Geneve, GeneveOption])
def test_view_on_a_short_buffer_is_truncated(view: type[Any]) -> None:
    size = view.MIN_LENGTH
    view(bytearray(size))  # exactly enough is fine
    view(bytearray(size + 3), 3)
    with pytest.raises(TruncatedError):
        view(bytearray(size - 1))
    with pytest.raises(TruncatedError):
        view(bytearray(size + 2), 3)
    with pytest.raises(TruncatedError):
        view(bytearray(size + 8), -1)
    with pytest.raises(TruncatedError):
        view(bytearray(0))


def test_views_write_through_a_memoryview() -> None:
    backing = bytearray(30)
    ip = IPv4(memoryview(backing)[5:], 0)
    ip.ttl = 99
    ip.src = "1.2.3.4"
    assert backing[13] == 99 and backing[17:21] == bytes([1, 2, 3, 4])


def test_writing_through_a_packet_view_marks_it_modified() -> None:
    packet = Packet.parse(build_frame(make_inner(4, "udp", b"x")))
    assert not packet.modified
    _ = packet.outer.ttl, packet.geneve.vni  # reading does not
    assert not packet.modified
    udp = packet.udp
    assert udp is not None
    udp.dst_port = 53
    assert packet.modified and packet.ports == (40000, 53)
    packet.modified = False
    packet.geneve.oam = False
    assert packet.modified


@pytest.mark.parametrize(
    "view",
    [
        IPv4(bytearray(bytes(SIP()))),
        IPv6(bytearray(bytes(SIPv6()))),
        UDP(bytearray(8)),
        TCP(bytearray(bytes(STCP()))),
        ICMP(bytearray(8)),
        Geneve(bytearray(8)),
        GeneveOption(bytearray(4)),
    ],
)
def test_repr_names_the_fields(view: Any) -> None:
    text = repr(view)
    assert text.startswith(type(view).__name__ + "(")
    assert "buf" not in text
