"""REJECT: the refusal frames (geneve.reject_frame); the pipeline's verdict, counts and limit."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw
from support.frames import check_frame, frame_of, gwlb_frames, make_inner

import geneve
from geneve import Packet, Pipeline, Stats, Verdict, reject_frame, rules
from geneve._appliance import _flows_report, _prometheus
from geneve._pcap import LINKTYPE_RAW, PcapWriter, read_capture
from geneve._pipeline import REJECT_FLOWS, REJECTS_PER_SECOND
from geneve.replay import replay

GWLB = "10.0.0.1"  # build_frame's outer source: GWLB
APPLIANCE = "10.0.0.2"
C4, S4 = "192.0.2.10", "198.51.100.20"  # inner client and server
C6, S6 = "2001:db8::10", "2001:db8:1::20"


def frame(inner: ScapyPacket | bytes, **kwargs: object) -> bytearray:
    return frame_of(bytes(inner), src_port=41234, **kwargs)


def refuse(inner: ScapyPacket | bytes, **kwargs: object) -> bytearray | None:
    return reject_frame(Packet.parse(frame(inner, **kwargs)))


def refusal(inner: ScapyPacket | bytes, **kwargs: object) -> tuple[bytearray, ScapyPacket]:
    """The refusal of ``inner``, checked as a reply to its frame; and its inner packet."""
    request = frame(inner, **kwargs)
    out = reject_frame(Packet.parse(request))
    assert out is not None
    facts = check_frame(out)  # every length and checksum, by a naive sum
    # Outer addresses swapped, GWLB's source port kept, to 6081; the Geneve header unchanged.
    assert (facts.outer_src, facts.outer_dst) == (bytes(request[16:20]), bytes(request[12:16]))
    assert (facts.src_port, facts.dst_port) == (41234, 6081)
    assert facts.geneve == bytes(request[28 : Packet.parse(request).inner_offset])
    parsed = Packet.parse(out)
    parsed.parse_inner()
    assert parsed.gwlb == Packet.parse(request).gwlb
    return out, IP(bytes(out))[UDP].payload.payload


def ip4(ident: int = 1) -> IP:
    return IP(src=C4, dst=S4, id=ident)


def ip6() -> IPv6:
    return IPv6(src=C6, dst=S6)


# -- TCP: RST ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "payload", "seq", "ack", "want_flags", "want_seq", "want_ack"),
    [
        ("S", b"", 1000, 0, "RA", 0, 1001),  # SYN counts one
        ("S", b"early data", 1000, 0, "RA", 0, 1011),  # SYN and its payload
        ("F", b"", 1000, 0, "RA", 0, 1001),  # FIN counts one
        ("SF", b"ab", 0xFFFFFFFF, 0, "RA", 0, 3),  # both, and the wrap at 2**32
        ("", b"xyz", 500, 0, "RA", 0, 503),  # no flag at all
        ("A", b"", 1000, 7777, "R", 7777, 0),  # an ACK: its acknowledgment is the sequence
        ("PA", b"GET / HTTP/1.1\r\n", 1000, 9, "R", 9, 0),
        ("SA", b"", 1000, 42, "R", 42, 0),
        ("FA", b"", 1000, 43, "R", 43, 0),
    ],
)
@pytest.mark.parametrize("version", [4, 6])
def test_a_tcp_segment_is_refused_with_a_reset(
    version: int,
    flags: str,
    payload: bytes,
    seq: int,
    ack: int,
    want_flags: str,
    want_seq: int,
    want_ack: int,
) -> None:
    ip = ip4() if version == 4 else ip6()
    segment = ip / TCP(sport=40000, dport=8081, flags=flags, seq=seq, ack=ack) / Raw(payload)
    _, inner = refusal(segment)
    rst = inner[TCP]
    assert (rst.sport, rst.dport) == (8081, 40000)
    assert str(rst.flags) == want_flags
    assert (rst.seq, rst.ack) == (want_seq, want_ack)
    assert rst.dataofs == 5 and rst.window == 0 and not bytes(rst.payload)
    if version == 4:
        assert (inner.src, inner.dst, inner.ttl, inner.len) == (S4, C4, 64, 40)
    else:
        assert (inner.src, inner.dst, inner.hlim, inner.plen) == (S6, C6, 64, 20)


def test_a_reset_is_never_answered() -> None:
    for flags in ("R", "RA", "RS"):
        assert refuse(ip4() / TCP(flags=flags, seq=5, ack=6)) is None
        assert refuse(ip6() / TCP(flags=flags)) is None


# -- everything else: ICMP destination unreachable, administratively prohibited ---------------


@pytest.mark.parametrize("size", [0, 20, 520, 521, 1400, 8000])
def test_ipv4_quotes_the_packet_within_576_bytes(size: int) -> None:
    offending = bytes(ip4(77) / UDP(sport=5353, dport=9999) / Raw(b"q" * size))
    out, inner = refusal(offending)
    assert (inner.src, inner.dst, inner.ttl, inner.proto) == (S4, C4, 64, 1)
    assert (inner[ICMP].type, inner[ICMP].code) == (3, 13)
    quoted = bytes(inner)[28:]  # (scapy would read past 128 bytes as RFC 4884 extensions)
    # RFC 792: the IP header and at least 64 bits of data; all of it while 576 is not passed.
    assert len(quoted) == min(len(offending), 576 - 28)
    assert len(quoted) >= 28
    assert quoted == offending[: len(quoted)]
    assert inner.len == 28 + len(quoted) <= 576
    assert len(out) == 68 + inner.len


def test_ipv4_quotes_the_options_too() -> None:
    offending = bytes(
        make_inner(4, "udp", b"data", src=C4, dst=S4, ip_options=b"\x01" * 8, dport=9999)
    )
    _, inner = refusal(offending)
    assert bytes(inner)[28:] == offending  # 28 + 8 bytes of header: quoted whole


@pytest.mark.parametrize("size", [0, 100, 1184, 1185, 3000, 8400])
def test_ipv6_quotes_the_packet_within_1280_bytes(size: int) -> None:
    offending = bytes(ip6() / UDP(sport=5353, dport=9999) / Raw(b"q" * size))
    out, inner = refusal(offending)
    assert (inner.src, inner.dst, inner.hlim, inner.nh) == (S6, C6, 64, 58)
    unreach = inner[ICMPv6DestUnreach]
    assert (unreach.type, unreach.code) == (1, 1)
    quoted = bytes(inner)[48:]
    # RFC 4443 2.4 (c): as much as fits without the ICMPv6 packet exceeding 1280 bytes.
    assert len(quoted) == min(len(offending), 1280 - 48)
    assert quoted == offending[: len(quoted)]
    assert len(bytes(inner)) <= 1280
    assert len(out) == 68 + 48 + len(quoted)


@pytest.mark.parametrize(
    "inner",
    [
        IP(src=C4, dst=S4) / ICMP(type=8, id=3, seq=1) / Raw(b"ping"),
        IP(src=C4, dst=S4) / ICMP(type=0, id=3, seq=1),  # an echo reply is a query's answer
        IP(src=C4, dst=S4) / ICMP(type=13),  # timestamp
        IP(src=C4, dst=S4, proto=47) / Raw(b"\0" * 24),  # GRE: no L4 this codec knows
        IPv6(src=C6, dst=S6) / ICMPv6EchoReply(id=3, seq=1),
        IPv6(src=C6, dst=S6, nh=132) / Raw(b"\0" * 16),  # SCTP
    ],
    ids=["echo", "echo-reply", "timestamp", "gre", "echo6-reply", "sctp6"],
)
def test_other_protocols_get_an_unreachable(inner: ScapyPacket) -> None:
    _, answer = refusal(inner)
    if inner.version == 4:
        assert (answer[ICMP].type, answer[ICMP].code) == (3, 13)
    else:
        assert (answer[ICMPv6DestUnreach].type, answer[ICMPv6DestUnreach].code) == (1, 1)


# -- never a refusal --------------------------------------------------------------------------


@pytest.mark.parametrize("icmp_type", [3, 4, 5, 11, 12, 31, 40])
def test_an_icmp_error_is_never_answered(icmp_type: int) -> None:
    quoted = bytes(ip4() / UDP(dport=53))
    assert refuse(IP(src=S4, dst=C4) / ICMP(type=icmp_type, code=1) / Raw(quoted)) is None


@pytest.mark.parametrize(
    "error",
    [ICMPv6DestUnreach(code=1), ICMPv6PacketTooBig(mtu=1280), ICMPv6TimeExceeded()],
)
def test_an_icmpv6_error_is_never_answered(error: ScapyPacket) -> None:
    quoted = bytes(ip6() / UDP(dport=53))
    assert refuse(IPv6(src=S6, dst=C6) / error / Raw(quoted)) is None
    # Types 0-127 are errors (RFC 4443 2.1), known or not.
    assert refuse(IPv6(src=S6, dst=C6, nh=58) / Raw(b"\x7f\0\0\0\0\0\0\0")) is None
    assert refuse(IPv6(src=S6, dst=C6, nh=58) / Raw(b"\x80\0\0\0\0\0\0\0")) is not None


@pytest.mark.parametrize(
    "inner",
    [
        IP(src=C4, dst="224.0.0.251") / UDP(dport=5353),
        IP(src=C4, dst="239.255.255.250") / UDP(dport=1900),
        IP(src=C4, dst="255.255.255.255") / UDP(dport=67),
        IP(src=C4, dst="224.0.0.1") / TCP(flags="S"),
        IP(src="0.0.0.0", dst=S4) / UDP(dport=67),
        IP(src="224.1.2.3", dst=S4) / UDP(dport=67),
        IPv6(src=C6, dst="ff02::fb") / UDP(dport=5353),
        IPv6(src=C6, dst="ff0e::1") / TCP(flags="S"),
        IPv6(src="::", dst=S6) / UDP(dport=547),
    ],
)
def test_no_refusal_to_or_from_a_group(inner: ScapyPacket) -> None:
    assert refuse(inner) is None


def test_just_below_the_multicast_range_is_refused() -> None:
    assert refuse(IP(src=C4, dst="223.255.255.255") / UDP(dport=9)) is not None
    assert refuse(IPv6(src=C6, dst="fe80::1") / UDP(dport=9)) is not None


def fragments(datagram: ScapyPacket) -> list[bytes]:
    if datagram.version == 4:
        return [bytes(f) for f in fragment(datagram, fragsize=1480)]  # type: ignore[no-untyped-call]
    ip6_ = datagram[IPv6]
    whole = IPv6(src=ip6_.src, dst=ip6_.dst) / IPv6ExtHdrFragment(id=9) / ip6_.payload
    return [bytes(f) for f in fragment6(whole, 1280)]  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("l4", ["udp", "tcp"])
@pytest.mark.parametrize("version", [4, 6])
def test_only_a_first_fragment_is_refused_and_with_an_unreachable(version: int, l4: str) -> None:
    ip = ip4() if version == 4 else ip6()
    transport = UDP(dport=9999) if l4 == "udp" else TCP(dport=8081, flags="PA")
    first, *later = fragments(ip / transport / Raw(b"f" * 3000))
    assert later
    for piece in later:
        assert refuse(piece) is None
    _, inner = refusal(first)
    # A fragment's segment length is unknown: an unreachable, even for TCP.
    if version == 4:
        assert (inner[ICMP].type, inner[ICMP].code) == (3, 13)
        assert bytes(inner)[28:] == first[: 576 - 28]
    else:
        assert (inner[ICMPv6DestUnreach].type, inner[ICMPv6DestUnreach].code) == (1, 1)
        assert bytes(inner)[48:] == first[: 1280 - 48]


def test_a_non_ip_inner_frame_is_not_refused() -> None:
    arp = bytes(14) + b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20)
    assert refuse(arp, protocol_type=geneve.ETH_P_TEB) is None
    assert refuse(b"\x00" * 28, protocol_type=0x0806) is None


def test_an_inner_ethernet_header_is_kept_with_its_addresses_swapped() -> None:
    ether = bytes.fromhex("020000000002" "020000000001" "0800")
    request = frame(ether + bytes(ip4() / UDP(dport=9999)), protocol_type=geneve.ETH_P_TEB)
    out = reject_frame(Packet.parse(request))
    assert out is not None
    assert out[68:82] == bytes.fromhex("020000000001" "020000000002" "0800")
    parsed = Packet.parse(out)
    assert parsed.ip_offset == 82 and parsed.l4_protocol == 1
    assert parsed.fix_checksums() and bytes(parsed.data) == bytes(out)  # they were right


def test_the_outer_udp_checksum_is_computed_when_the_request_had_one() -> None:
    out = refuse(ip4() / UDP(dport=9999), udp_checksum=True)
    assert out is not None and out[26:28] != b"\0\0"
    check_frame(out)  # verifies a non-zero outer UDP checksum
    out = refuse(ip4() / UDP(dport=9999))
    assert out is not None and out[26:28] == b"\0\0"


def test_the_request_is_left_as_it_was() -> None:
    request = frame(ip4() / TCP(flags="S"))
    before = bytes(request)
    reject_frame(Packet.parse(request))
    assert bytes(request) == before


# -- independent checks: scapy, tshark, and random packets ------------------------------------


@settings(max_examples=300, deadline=None)
@given(gwlb_frames(max_payload=1600))
def test_every_refusal_parses_with_the_same_geneve_header_and_right_checksums(
    request: bytearray,
) -> None:
    packet = Packet.parse(request)
    geneve_header = bytes(request[20 : packet.inner_offset])
    out = reject_frame(packet)
    if out is None:  # a group address, an ICMP error: nothing else is refused silently
        return
    facts = check_frame(out)
    parsed = Packet.parse(out)
    parsed.parse_inner()
    assert bytes(out[28 : parsed.inner_offset]) == geneve_header[8:]
    assert out[20:22] == request[20:22] and out[22:24] == b"\x17\xc1"  # 6081
    assert (facts.outer_src, facts.outer_dst) == (bytes(request[16:20]), bytes(request[12:16]))
    assert parsed.l4_protocol in (6, 1, 58)
    inner = IP(bytes(out))[UDP].payload.payload
    if parsed.l4_protocol == 6:
        assert inner[TCP].flags.R
    # scapy agrees with every length and checksum the codec wrote.
    rebuilt = inner.copy()
    if inner.version == 4:
        del rebuilt.len, rebuilt.chksum
    else:
        del rebuilt.plen
    l4 = rebuilt.payload
    delattr(l4, "cksum" if any(f.name == "cksum" for f in l4.fields_desc) else "chksum")
    assert bytes(rebuilt) == bytes(inner)


def test_tshark_finds_every_checksum_right(tmp_path: Path, tshark: str) -> None:
    inners = [
        ip4() / TCP(dport=8081, flags="S", seq=1),
        ip4() / TCP(dport=8081, flags="PA", seq=1, ack=2) / Raw(b"x" * 100),
        ip6() / TCP(dport=8081, flags="S"),
        ip4() / UDP(dport=9999) / Raw(b"u" * 1000),
        ip6() / UDP(dport=9999) / Raw(b"u" * 3000),
        ip4() / ICMP(type=8) / Raw(b"p" * 56),
    ]
    path = tmp_path / "refusals.pcap"
    with path.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_RAW)
        for i, inner in enumerate(inners):
            out = refuse(inner, udp_checksum=bool(i % 2))
            assert out is not None
            writer.write(out, i)
    fields = ["ip.checksum.status", "udp.checksum.status", "tcp.checksum.status",
              "icmp.checksum.status", "icmpv6.checksum.status"]  # fmt: skip
    proc = subprocess.run(
        [tshark, "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE", "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = proc.stdout.splitlines()
    assert len(rows) == len(inners)
    for row, inner in zip(rows, inners, strict=True):
        cells = row.split("\t")
        statuses = [s for cell in cells for s in cell.split(",") if s]
        # 1 good, 0 bad, 2 unverified (a quoted packet's own UDP checksum, cut short).
        assert "0" not in statuses, (inner.summary(), row)
        ip_status, _, tcp, icmp, icmp6 = cells
        assert ip_status.startswith("1")  # the outer IPv4 header
        assert "1" in (tcp + icmp + icmp6).split(","), (inner.summary(), row)


# -- the pipeline: verdict, counts, rate limit ------------------------------------------------


def syn(sport: int = 40000, dport: int = 8081, version: int = 4) -> bytearray:
    ip = ip4() if version == 4 else ip6()
    return frame(ip / TCP(sport=sport, dport=dport, flags="S", seq=1))


def test_handle_returns_the_refusal_and_counts_it() -> None:
    pipeline = Pipeline(rules.when(rules.tcp_port(8081), rules.reject))
    request = syn()
    (out,) = pipeline.handle(request, len(request), 10.0)
    assert isinstance(out, memoryview) and out.obj is not request
    assert bytearray(out) == reject_frame(Packet.parse(syn()))
    assert out[16:20] == request[12:16] == bytes([10, 0, 0, 1])  # to GWLB
    other = syn(dport=22)
    (forwarded,) = pipeline.handle(other, len(other), 10.0)
    assert forwarded.obj is other
    stats = pipeline.stats
    assert (stats.received, stats.rejected, stats.forwarded, stats.dropped) == (2, 1, 1, 0)
    assert stats.as_dict()["rejected"] == 1
    assert Stats.from_dict(stats.as_dict()).rejected == 1


def test_a_refusal_that_may_not_be_sent_is_a_drop_by_rule() -> None:
    pipeline = Pipeline(rules.reject)
    rst = frame(ip4() / TCP(flags="R"))
    assert pipeline.handle(rst, len(rst), 0.0) == ()
    stats = pipeline.stats
    assert (stats.rejected, stats.dropped, stats.drops) == (0, 1, {"rule": 1})


def test_process_shows_no_refusal() -> None:
    stats = Stats()
    request = syn()
    assert geneve.process(request, len(request), rules.reject, stats) is None
    assert stats.rejected == 1


def test_reject_is_a_verdict_and_stops_a_chain() -> None:
    seen: list[int] = []

    def after(packet: Packet) -> None:
        seen.append(1)

    for modifier in (rules.chain(rules.reject, after), rules.chain(after, rules.reject, after)):
        assert modifier(Packet.parse(syn())) is Verdict.REJECT
    assert rules.chain(after, after)(Packet.parse(syn())) is None
    assert seen == [1, 1, 1]
    assert geneve.interest_of(rules.reject) == geneve.interest_of(rules.drop)
    telnet = rules.when(rules.tcp_port(23), rules.reject)
    assert geneve.interest_of(telnet).tcp_ports == frozenset({23})


def test_the_rate_limit_is_per_flow_and_per_second() -> None:
    pipeline = Pipeline(rules.reject)

    def sent(request: bytearray, now: float) -> int:
        return len(pipeline.handle(request, len(request), now))

    # The limit, then drops, for one flow in a second; in both directions alike.
    assert [sent(syn(), 100.0) for _ in range(REJECTS_PER_SECOND)] == [1] * REJECTS_PER_SECOND
    answer = frame(IP(src=S4, dst=C4) / TCP(sport=8081, dport=40000, flags="S"))
    assert sent(answer, 100.5) == 0
    assert sent(syn(), 100.999) == 0
    # Another flow (another port, another protocol) has its own.
    assert sent(syn(sport=40001), 100.5) == 1
    assert sent(frame(ip4() / UDP(sport=40000, dport=8081)), 100.5) == 1
    # A second later, the first flow may be refused again.
    assert sent(syn(), 101.0) == 1
    # A clock that went back starts a new window rather than blocking the flow.
    assert sent(syn(), 50.0) == 1
    stats = pipeline.stats
    assert stats.drops == {"rule": 2}
    assert stats.rejected == REJECTS_PER_SECOND + 4


def test_the_rate_limit_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import geneve._pipeline as pipeline_module

    assert REJECT_FLOWS >= 1024
    monkeypatch.setattr(pipeline_module, "REJECT_FLOWS", 3)
    pipeline = Pipeline(rules.reject)

    def sent(port: int) -> int:
        request = syn(sport=port)
        return len(pipeline.handle(request, len(request), 0.0))

    assert [sent(1) for _ in range(REJECTS_PER_SECOND + 1)][-2:] == [1, 0]  # flow 1 is spent
    assert [sent(port) for port in (2, 3, 4)] == [1, 1, 1]
    assert len(pipeline._rejects) == 3  # flow 1, rejected longest ago, is forgotten
    assert sent(1) == 1


def test_a_modifier_returning_something_else_is_still_an_error() -> None:
    pipeline = Pipeline(lambda packet: "reject")  # type: ignore[arg-type, return-value]
    request = syn()
    assert pipeline.handle(request, len(request), 0.0) == ()
    assert pipeline.stats.modifier_errors == 1


def test_metrics_count_rejects() -> None:
    counters = {**Stats().as_dict(), "rejected": 3, "not_allowed": 0, "send_errors": 0}
    flows = _flows_report(counters, True, 10)
    text = _prometheus(counters, True, {"uptime_seconds": 1.0, "flows": flows})
    assert "# TYPE geneve_rejects_total counter" in text
    assert "\ngeneve_rejects_total 3\n" in text
    assert "\ngeneve_flows_rejects_total 3\n" in text


def test_the_ipv6_syn_is_refused_through_the_pipeline() -> None:
    request = syn(version=6)
    (out,) = Pipeline(rules.reject).handle(request, len(request), 0.0)
    inner = IP(bytes(out))[UDP].payload.payload
    assert inner[TCP].flags == "RA" and inner[TCP].ack == 2
    assert struct.unpack_from("!H", out, 2)[0] == len(out) == 68 + 60


def test_replay_writes_the_refusals_and_limits_them_by_capture_time(tmp_path: Path) -> None:
    # Seven SYNs of one flow: six within one second of capture time, the last a second later.
    times = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.2]
    source = tmp_path / "in.pcap"
    with source.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_RAW)
        for t in times:
            writer.write(syn(), 1_700_000_000_000_000_000 + int(t * 1e9))
    output = tmp_path / "out.pcap"
    with source.open("rb") as src, output.open("wb") as dst:
        result = replay(src, dst, rules.reject)
    with output.open("rb") as f:
        written = [bytes(r.data) for r in read_capture(f)[1]]
    refusal = reject_frame(Packet.parse(syn()))
    assert refusal is not None
    assert written == [bytes(refusal)] * (REJECTS_PER_SECOND + 1)
    assert result.stats.rejected == REJECTS_PER_SECOND + 1
    assert result.stats.drops == {"rule": len(times) - REJECTS_PER_SECOND - 1}
    assert result.summary().endswith(f", rejected {REJECTS_PER_SECOND + 1} (a RST or ICMP error "
                                     "written instead)")  # fmt: skip
