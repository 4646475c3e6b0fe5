"""Frame builders and an independent frame verifier, for the codec tests.

The builders make inner packets with scapy, so the codec is checked against an implementation it
shares no code with. :func:`check_frame` re-derives every length and checksum of a GWLB frame
with a naive word-by-word sum (no ``geneve`` code) and fails the test on the first wrong one.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import strategies as st

# Scapy only for tests; its contrib Geneve layer binds UDP/6081 so frames decode whole.
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

import geneve
from geneve._flows import CFlowTable, PyFlowTable
from geneve._flows import _c as flows_c_module

# -- a naive reference checksum and an independent frame verifier -----------------------------


def naive_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """One's-complement sum of 16-bit big-endian words, the RFC 1071 way: a loop and a fold."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    total = initial
    for i in range(0, len(raw), 2):
        total += (raw[i] << 8) | raw[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return ~naive_sum(data, initial) & 0xFFFF


def _valid(data: bytes, pseudo: int = 0) -> bool:
    # A correct checksum makes the sum over the covered bytes (checksum included) all ones.
    return naive_sum(data, pseudo) == 0xFFFF


@dataclass
class FrameFacts:
    """What :func:`check_frame` found in a frame."""

    outer_src: bytes
    outer_dst: bytes
    src_port: int
    dst_port: int
    outer_udp_checksum: int
    geneve: bytes  # the Geneve header with its options
    protocol_type: int
    inner: bytes  # the inner packet (IP header onwards), exactly its length fields' bytes
    l4_protocol: int
    payload: bytes


def check_frame(frame: bytes | bytearray | memoryview) -> FrameFacts:
    """Assert every length and checksum of a GWLB frame (inner IPv4/IPv6, UDP/TCP/ICMP)."""
    f = bytes(frame)
    assert len(f) >= 28, "shorter than IPv4 + UDP"
    assert f[0] >> 4 == 4, "outer is not IPv4"
    ihl = (f[0] & 0x0F) * 4
    total = struct.unpack_from("!H", f, 2)[0]
    assert total == len(f), f"outer IPv4 total length {total} != frame length {len(f)}"
    assert _valid(f[:ihl]), "outer IPv4 header checksum is wrong"
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", f, ihl)
    assert ulen == total - ihl, "outer UDP length is wrong"
    if ucsum:
        pseudo = naive_sum(f[12:20]) + 17 + ulen
        assert _valid(f[ihl:], pseudo), "outer UDP checksum is stale"
    g = ihl + 8
    opt_len = (f[g] & 0x3F) * 4
    ptype = struct.unpack_from("!H", f, g + 2)[0]
    inner_off = g + 8 + opt_len
    inner = f[inner_off:]
    l4_proto = -1
    payload = b""
    if ptype == geneve.ETH_P_IPV4:
        assert inner[0] >> 4 == 4
        iihl = (inner[0] & 0x0F) * 4
        assert struct.unpack_from("!H", inner, 2)[0] == len(inner), "inner IPv4 total length"
        assert _valid(inner[:iihl]), "inner IPv4 header checksum is wrong"
        l4_proto = inner[9]
        l4 = inner[iihl:]
        pseudo = naive_sum(inner[12:20]) + l4_proto + len(l4)
        fragment = struct.unpack_from("!H", inner, 6)[0] & 0x3FFF
        if not fragment:
            payload = _check_l4(l4, l4_proto, pseudo, v6=False)
    elif ptype == geneve.ETH_P_IPV6:
        assert inner[0] >> 4 == 6
        assert struct.unpack_from("!H", inner, 4)[0] == len(inner) - 40, "IPv6 payload length"
        l4_proto = inner[6]
        l4 = inner[40:]
        pseudo = naive_sum(inner[8:40]) + l4_proto + len(l4)
        payload = _check_l4(l4, l4_proto, pseudo, v6=True)
    return FrameFacts(
        f[12:16], f[16:20], sport, dport, ucsum, f[g:inner_off], ptype, inner, l4_proto, payload
    )


def _check_l4(l4: bytes, proto: int, pseudo: int, *, v6: bool) -> bytes:
    if proto == 17:
        assert struct.unpack_from("!H", l4, 4)[0] == len(l4), "inner UDP length is wrong"
        assert _valid(l4, pseudo), "inner UDP checksum is wrong"
        return l4[8:]
    if proto == 6:
        assert _valid(l4, pseudo), "inner TCP checksum is wrong"
        return l4[(l4[12] >> 4) * 4 :]
    if proto == 1 and not v6:
        assert _valid(l4), "inner ICMP checksum is wrong"
        return l4[8:]
    if proto == 58 and v6:
        assert _valid(l4, pseudo), "inner ICMPv6 checksum is wrong"
        return l4[8:]
    return l4


def scapy_rebuilds_identically(frame: bytes | bytearray | memoryview) -> ScapyPacket:
    """Decode with scapy, let it recompute every length and checksum, and compare the bytes.

    The outer UDP checksum is recomputed only when it is non-zero (zero means "none").
    """
    raw = bytes(frame)
    pkt = IP(raw)
    rebuilt = pkt.copy()
    del rebuilt[IP].len
    del rebuilt[IP].chksum
    del rebuilt[UDP].len
    if pkt[UDP].chksum:
        del rebuilt[UDP].chksum
    inner = rebuilt[GENEVE].payload
    if isinstance(inner, IP):
        del inner.len
        del inner.chksum
    elif isinstance(inner, IPv6):
        del inner.plen
    l4 = inner.payload
    if isinstance(l4, (UDP, TCP, ICMP)):
        if isinstance(l4, UDP):
            del l4.len
        del l4.chksum
    elif isinstance(l4, (ICMPv6EchoRequest, ICMPv6EchoReply)):
        del l4.cksum
    assert bytes(rebuilt) == raw, "scapy computes different lengths or checksums"
    return pkt


# -- builders ---------------------------------------------------------------------------------


def make_inner(
    version: int = 4,
    l4: str = "udp",
    payload: bytes = b"",
    *,
    src: str | None = None,
    dst: str | None = None,
    sport: int = 40000,
    dport: int = 3000,
    icmp_type: int | None = None,
    icmp_seq: int = 1,
    ip_options: bytes = b"",
    flags: int = 0,
    frag: int = 0,
    ident: int = 1,
) -> bytes:
    """An inner IPv4/IPv6 packet with a UDP, TCP or ICMP(v6) header, built by scapy."""
    ip: ScapyPacket
    if version == 4:
        ip = IP(
            src=src or "192.0.2.10",
            dst=dst or "198.51.100.20",
            id=ident,
            flags=flags,
            frag=frag,
            options=[IPOption(ip_options)] if ip_options else [],
        )
    else:
        ip = IPv6(src=src or "2001:db8::10", dst=dst or "2001:db8:1::20")
    layer: ScapyPacket
    if l4 == "udp":
        layer = UDP(sport=sport, dport=dport)
    elif l4 == "tcp":
        layer = TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=2000)
    elif version == 4:
        layer = ICMP(type=8 if icmp_type is None else icmp_type, id=7, seq=icmp_seq)
    elif icmp_type in (None, 128):
        layer = ICMPv6EchoRequest(id=7, seq=icmp_seq)
    else:
        layer = ICMPv6EchoReply(id=7, seq=icmp_seq)
    return bytes(ip / layer / Raw(payload)) if payload else bytes(ip / layer)


def frame_of(inner: bytes, **kwargs: Any) -> bytearray:
    return geneve.build_frame(inner, **kwargs)


# -- hypothesis strategies --------------------------------------------------------------------

ipv4_addresses = st.builds(
    lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")), st.integers(1, 2**32 - 1)
)
ipv6_addresses = st.builds(
    lambda n: ipaddress.IPv6Address(n).compressed, st.integers(1, 2**128 - 1)
)


def sized_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes of any length up to ``max_size``: hypothesis picks the length and a seed."""

    def expand(args: tuple[int, int, str]) -> bytes:
        n, seed, kind = args
        if kind == "zeros":
            return bytes(n)
        if kind == "ones":
            return b"\xff" * n
        return random.Random(seed).randbytes(n)

    return st.one_of(
        st.binary(max_size=min(max_size, 64)),
        st.tuples(
            st.integers(0, max_size),
            st.integers(0, 2**32),
            st.sampled_from(["random", "random", "zeros", "ones"]),
        ).map(expand),
    )


@st.composite
def inner_packets(
    draw: Callable[..., Any],
    versions: tuple[int, ...] = (4, 6),
    l4s: tuple[str, ...] = ("udp", "tcp", "icmp"),
    max_payload: int = 600,
) -> bytes:
    version = draw(st.sampled_from(versions))
    l4 = draw(st.sampled_from(l4s))
    options = b""
    if version == 4 and draw(st.booleans()):
        # Record Route-like filler: any option bytes of a multiple of 4 keep IHL exact.
        options = b"\x01" * (4 * draw(st.integers(1, 10)))
    return make_inner(
        version,
        l4,
        draw(sized_bytes(max_payload)),
        src=draw(ipv4_addresses if version == 4 else ipv6_addresses),
        dst=draw(ipv4_addresses if version == 4 else ipv6_addresses),
        sport=draw(st.integers(0, 0xFFFF)),
        dport=draw(st.integers(0, 0xFFFF)),
        icmp_seq=draw(st.integers(0, 0xFFFF)),
        ip_options=options,
        ident=draw(st.integers(0, 0xFFFF)),
    )


@st.composite
def gwlb_frames(
    draw: Callable[..., Any],
    versions: tuple[int, ...] = (4, 6),
    l4s: tuple[str, ...] = ("udp", "tcp", "icmp"),
    max_payload: int = 600,
) -> bytearray:
    """A GWLB frame as GWLB sends it, with a random inner packet, ids and outer checksum."""
    inner = draw(inner_packets(versions, l4s, max_payload))
    return geneve.build_frame(
        inner,
        src=draw(ipv4_addresses),
        dst=draw(ipv4_addresses),
        src_port=draw(st.integers(1, 0xFFFF)),
        endpoint_id=draw(st.integers(0, 2**64 - 1)),
        attachment_id=draw(st.integers(0, 2**64 - 1)),
        flow_cookie=draw(st.integers(0, 2**32 - 1)),
        udp_checksum=draw(st.booleans()),
        ttl=draw(st.integers(1, 255)),
        identification=draw(st.integers(0, 0xFFFF)),
    )


# -- plain inner packets for flow tests (quick: no scapy, checksums left 0) ------------------

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
#: Both flow tables, to parametrize a test by (the C one when it was built).
FLOW_TABLES = [pytest.param(PyFlowTable, id="python")] + (
    [pytest.param(CFlowTable, id="c")] if flows_c_module is not None else []
)


def flow_frame(
    src: str,
    dst: str,
    proto: str = "tcp",
    sport: int = 40000,
    dport: int = 80,
    *,
    flags: int = TCP_ACK,
    payload: bytes = b"",
    cookie: int | None = 0x11223344,
    endpoint_id: int | None = 0x0123456789ABCDEF,
    icmp_type: int | None = None,
) -> bytearray:
    """A GWLB frame around an inner TCP, UDP or ICMP(v6) echo packet, built with struct.

    The inner checksums are 0 (no pipeline check reads them); ``sport`` is the echo id for
    ICMP. IPv6 when ``src`` has a colon.
    """
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = a.version == 6
    if proto == "tcp":
        number = 6
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 8192, 0, 0)
    elif proto == "udp":
        number = 17
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    else:
        number = 58 if v6 else 1
        kind = icmp_type if icmp_type is not None else (128 if v6 else 8)
        l4 = struct.pack("!BBHHH", kind, 0, 0, sport, 1)
    body = l4 + payload
    if v6:
        inner = struct.pack("!IHBB", 0x60000000, len(body), number, 64) + a.packed + b.packed
    else:
        inner = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, number, 0)
        inner += a.packed + b.packed
    return geneve.build_frame(inner + body, endpoint_id=endpoint_id, flow_cookie=cookie)


def tcp_segment(
    client: str,
    server: str,
    payload: bytes = b"",
    seq: int = 1000,
    flags: int = TCP_PSH | TCP_ACK,
    *,
    reply: bool = False,
    sport: int = 40000,
    dport: int = 443,
) -> bytearray:
    """A GWLB frame around one TCP segment of client:sport <-> server:dport (the server's with
    ``reply``), at sequence number ``seq``; inner checksums 0. IPv6 when ``client`` has a colon."""
    a, b = ipaddress.ip_address(client).packed, ipaddress.ip_address(server).packed
    ports = (dport, sport) if reply else (sport, dport)
    body = struct.pack("!HHIIBBHHH", *ports, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    src, dst = (b, a) if reply else (a, b)
    if len(a) == 16:
        ip = struct.pack("!IHBB", 0x60000000, len(body), 6, 64) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, 6, 0) + src + dst
    return geneve.build_frame(ip + body, endpoint_id=5, flow_cookie=9)
