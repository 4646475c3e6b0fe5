"""The independent reply checker, and encapsulation as GWLB does it.

Encapsulation and checking are written here from the protocol facts (docs/emulator.md) and
share no code with the codec: a checker built on the code under test would share its bugs.
Checksums use one big-integer remainder: 2**16 is 1 modulo 0xFFFF, so ``int.from_bytes(data)
% 0xFFFF`` is the one's-complement sum of the 16-bit words of ``data``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

# The protocol facts, stated here rather than imported from the codec (tests/test_layers.py
# keeps this module free of geneve imports; tests/test_emulator.py compares the values).
GENEVE_PORT = 6081  # RFC 8926 3.3: the IANA-assigned UDP destination port
GWLB_OPTION_CLASS = 0x0108  # AWS GWLB: the option class of its three TLVs
ETH_P_IPV4 = 0x0800  # Geneve Protocol Type (an EtherType, RFC 8926 3.4)
ETH_P_IPV6 = 0x86DD

_U16 = struct.Struct("!H")
_OUTER = struct.Struct("!BBHHHBBH4s4sHHHH")  # outer IPv4 (20 bytes) + UDP (8 bytes)
_GWLB_GENEVE = struct.Struct("!BBHIHBBQHBBQHBBI")  # header + the three options
#: Geneve header (8) + GWLB options (32): what an appliance must echo byte for byte.
GWLB_GENEVE_LENGTH = _GWLB_GENEVE.size
COOKIE_AT = 8 + 4 + 8 + 4 + 8 + 4  # flow cookie data, from the start of the Geneve header

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

Buffer = bytes | bytearray | memoryview


def _ones(data: Buffer) -> int:
    """The one's-complement sum of ``data``'s 16-bit words, modulo 0xFFFF."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` plus a partial sum (``_ones`` of a pseudo-header)."""
    return -(_ones(data) + initial) % 0xFFFF


def checksum_ok(data: Buffer, initial: int = 0) -> bool:
    """A region that holds its correct checksum sums to 0xFFFF, which is 0 modulo 0xFFFF."""
    return (_ones(data) + initial) % 0xFFFF == 0


def _pseudo(addresses: Buffer, protocol: int, length: int) -> int:
    # IPv4 and IPv6 pseudo-headers: both addresses, the protocol and the L4 length (RFC 768,
    # RFC 8200 8.1); the zero bytes add nothing and 2**16 = 1 (mod 0xFFFF) folds the length.
    return _ones(addresses) + protocol + length


#: (ip version, protocol, lower address, its port, higher address, its port)
FlowKey = tuple[int, int, bytes, int, bytes, int]
#: (ip version, protocol, source, source port, destination, destination port)
FiveTuple = tuple[int, int, bytes, int, bytes, int]


def five_tuple(inner: Buffer) -> FiveTuple | None:
    """The inner packet's 5-tuple; ICMP echo uses its identifier as both ports."""
    n = len(inner)
    if n < 20:
        return None
    version = inner[0] >> 4
    if version == 4:
        ihl = (inner[0] & 0x0F) << 2
        proto = inner[9]
        src, dst = bytes(inner[12:16]), bytes(inner[16:20])
        l4 = -1 if _U16.unpack_from(inner, 6)[0] & 0x3FFF else ihl  # a fragment has no ports
        icmp, echo = IPPROTO_ICMP, (0, 8)
    elif version == 6 and n >= 40:
        proto = inner[6]
        src, dst = bytes(inner[8:24]), bytes(inner[24:40])
        l4 = 40
        icmp, echo = IPPROTO_ICMPV6, (128, 129)
    else:
        return None
    sport = dport = 0
    if 0 <= l4 <= n - 8:
        if proto in (IPPROTO_TCP, IPPROTO_UDP):
            sport, dport = struct.unpack_from("!HH", inner, l4)
        elif proto == icmp and inner[l4] in echo:
            sport = dport = _U16.unpack_from(inner, l4 + 4)[0]
    return (version, proto, src, sport, dst, dport)


def flow_key(inner: Buffer) -> FlowKey | None:
    """The 5-tuple with its two ends in a fixed order, so both directions share one key."""
    t = five_tuple(inner)
    if t is None:
        return None
    version, proto, src, sport, dst, dport = t
    if (src, sport) <= (dst, dport):
        return (version, proto, src, sport, dst, dport)
    return (version, proto, dst, dport, src, sport)


_TCP_RST = 0x04
_ICMP_UNREACHABLE = 3  # RFC 792
_ICMPV6_UNREACHABLE = 1  # RFC 4443 3.1


def refuses(
    inner: Buffer, directions: Collection[FiveTuple], quoted: Callable[[Buffer], bool]
) -> bool:
    """Whether ``inner`` is a refusal an appliance injected against a flow (a REJECT).

    A TCP RST travelling against one of the flow's ``directions`` (the 5-tuples its packets
    were sent with), or an ICMP / ICMPv6 destination unreachable from the quoted packet's
    destination to its source, quoting its IP header and at least 8 bytes more (RFC 792,
    RFC 4443 3.1) of a packet the flow sent and that has not come back: ``quoted(quote)``
    says whether one such waits. Lengths and checksums are :func:`check_inner`'s to judge.
    """
    t = five_tuple(inner)
    if t is None:
        return False
    version, proto, src, sport, dst, dport = t
    if version == 4:
        if _U16.unpack_from(inner, 6)[0] & 0x3FFF:
            return False  # a fragment: no refusal is one
        l4, icmp, unreachable, least = (inner[0] & 0x0F) << 2, IPPROTO_ICMP, _ICMP_UNREACHABLE, 28
    else:
        l4, icmp, unreachable, least = 40, IPPROTO_ICMPV6, _ICMPV6_UNREACHABLE, 48
    if len(inner) < l4 + 8:
        return False
    if proto == IPPROTO_TCP:
        if len(inner) < l4 + 20 or not inner[l4 + 13] & _TCP_RST:
            return False
        return (version, proto, dst, dport, src, sport) in directions
    if proto != icmp or inner[l4] != unreachable:
        return False
    quote = memoryview(inner)[l4 + 8 :]
    q = five_tuple(quote) if len(quote) >= least else None
    return q is not None and q in directions and (q[2], q[4]) == (dst, src) and quoted(quote)


_DNS_PORT = 53  # RFC 1035 4.2.1
_DNS_HEADER = 12  # RFC 1035 4.1.1
_DNS_REFUSED = 5  # RCODE 5, "Refused"


def _udp_payload(inner: Buffer) -> memoryview | None:
    """The payload of an unfragmented UDP packet (IPv4, or IPv6 without extension headers)."""
    if inner[0] >> 4 == 4:
        if _U16.unpack_from(inner, 6)[0] & 0x3FFF:
            return None
        l4 = (inner[0] & 0x0F) << 2
    else:
        l4 = 40
    return memoryview(inner)[l4 + 8 :] if len(inner) >= l4 + 8 else None


def answers_refused(
    inner: Buffer, directions: Collection[FiveTuple], requests: Callable[[], Iterable[bytes]]
) -> bool:
    """Whether ``inner`` is a DNS answer REFUSED that an appliance sent back for a query of the
    flow in the query's place (an egress filter's refusal, RFC 1035 4.1.1).

    UDP from port 53, travelling against one of the flow's ``directions``; QR set, RCODE 5,
    no answer, authority or additional record; its id, opcode and question section those of
    one of ``requests()`` (the flow's packets that have not come back) sent the other way.
    """
    t = five_tuple(inner)
    if t is None or t[1] != IPPROTO_UDP or t[3] != _DNS_PORT:
        return False
    version, proto, src, sport, dst, dport = t
    if (version, proto, dst, dport, src, sport) not in directions:
        return False
    answer = _udp_payload(inner)
    if answer is None or len(answer) < _DNS_HEADER:
        return False
    if not answer[2] & 0x80 or answer[3] & 0x0F != _DNS_REFUSED or any(answer[6:12]):
        return False
    for request in requests():
        if five_tuple(request) != (version, proto, dst, dport, src, sport):
            continue
        query = _udp_payload(request)
        if (
            query is not None
            and len(query) >= len(answer)
            and query[:2] == answer[:2]
            and query[2] & 0x78 == answer[2] & 0x78  # the opcode
            and query[4:6] == answer[4:6]  # QDCOUNT
            and query[_DNS_HEADER : len(answer)] == answer[_DNS_HEADER:]
        ):
            return True
    return False


def geneve_header(
    protocol_type: int, endpoint_id: int, attachment_id: int, flow_cookie: int
) -> bytes:
    """Geneve header + the three GWLB options, exactly as GWLB sends them (40 bytes).

    Version 0, Opt Len 8 words, no O or C bit, VNI 0; then class 0x0108 type 1 (endpoint id,
    2 words), type 2 (attachment id, 2 words), type 3 (flow cookie, 1 word).
    """
    o = GWLB_OPTION_CLASS
    return _GWLB_GENEVE.pack(
        8, 0, protocol_type, 0,
        o, 1, 2, endpoint_id,
        o, 2, 2, attachment_id,
        o, 3, 1, flow_cookie,
    )  # fmt: skip


def encapsulate(
    inner: Buffer,
    geneve: bytes,
    *,
    src: bytes,
    dst: bytes,
    source_port: int,
    identification: int = 0,
    udp_checksum: bool = False,
) -> bytearray:
    """outer IPv4 (``src`` -> ``dst``, 4-byte addresses) | UDP -> 6081 | ``geneve`` | ``inner``."""
    ulen = 8 + len(geneve) + len(inner)
    total = 20 + ulen
    frame = bytearray(total)
    _OUTER.pack_into(
        frame, 0, 0x45, 0, total, identification & 0xFFFF, 0, 64, IPPROTO_UDP, 0, src, dst,
        source_port, GENEVE_PORT, ulen, 0,
    )  # fmt: skip
    frame[28 : 28 + len(geneve)] = geneve
    frame[28 + len(geneve) :] = inner
    _U16.pack_into(frame, 10, checksum(memoryview(frame)[:20]))
    if udp_checksum:
        c = checksum(memoryview(frame)[20:], _pseudo(src + dst, IPPROTO_UDP, ulen))
        _U16.pack_into(frame, 26, c or 0xFFFF)  # 0 on the wire means "no checksum"
    return frame


@dataclass(frozen=True)
class Expected:
    """What a correct reply of one flow looks like from the outside."""

    gwlb: bytes  # the GWLB address (4 bytes): the reply's outer destination
    appliance: bytes  # the appliance address: the reply's outer source
    source_port: int  # GWLB's outer UDP source port for the flow, kept in the reply
    geneve: bytes  # the Geneve header with options, echoed byte for byte


def one_hop_back(inner: Buffer) -> bytes | None:
    """``inner`` as it was one router earlier: its TTL (IPv4, header checksum made right
    again) or hop limit (IPv6) one more; None if it is not IP or already at 255.

    An appliance that routes the inner packets through its kernel (a tun bridge) sends each
    one back with one hop less: a reply that is its request but for that is not an edit.
    """
    packet = bytearray(inner)
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) << 2
        if packet[8] == 255 or ihl < 20 or len(packet) < ihl:
            return None
        packet[8] += 1
        _U16.pack_into(packet, 10, 0)
        _U16.pack_into(packet, 10, checksum(packet[:ihl]))
        return bytes(packet)
    if len(packet) >= 40 and packet[0] >> 4 == 6 and packet[7] < 255:
        packet[7] += 1
        return bytes(packet)
    return None


def check_reply(frame: Buffer, expected: Expected) -> str | None:
    """None if ``frame`` (an outer IPv4 packet) is a correct reply, else why it is not.

    GWLB.md, "What the appliance must send back": addresses swapped, UDP source port kept and
    destination 6081, Geneve header and options unchanged, every length consistent and every
    checksum valid (the outer UDP one may be 0).
    """
    reason = check_outer(frame, expected)
    if reason is not None:
        return reason
    start = ((frame[0] & 0x0F) << 2) + 8 + len(expected.geneve)
    ptype = _U16.unpack_from(expected.geneve, 2)[0]
    return check_inner(memoryview(frame)[start : _U16.unpack_from(frame, 2)[0]], ptype)


def check_outer(frame: Buffer, expected: Expected) -> str | None:
    """:func:`check_reply` up to the inner packet: outer IPv4, UDP and the Geneve bytes."""
    n = len(frame)
    if n < 28:
        return "outer-truncated"
    if frame[0] >> 4 != 4:
        return "outer-version"
    ihl = (frame[0] & 0x0F) << 2
    total = _U16.unpack_from(frame, 2)[0]
    if ihl < 20 or total < ihl + 8:
        return "outer-length"
    if total > n:
        return "outer-truncated"
    if total < n and n > 46:  # only Ethernet's minimum-frame padding may follow the packet
        return "outer-length"
    frame = memoryview(frame)[:total]
    if not checksum_ok(frame[:ihl]):
        return "outer-ipv4-checksum"
    if frame[9] != IPPROTO_UDP:
        return "outer-protocol"
    if frame[12:16] != expected.appliance or frame[16:20] != expected.gwlb:
        return "outer-addresses"
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", frame, ihl)
    if sport != expected.source_port or dport != GENEVE_PORT:
        return "outer-udp-ports"
    if ulen != total - ihl:
        return "outer-udp-length"
    # RFC 768: 0 means no checksum (allowed over IPv4); any other value must be right.
    if ucsum and not checksum_ok(frame[ihl:], _pseudo(frame[12:20], IPPROTO_UDP, ulen)):
        return "outer-udp-checksum"
    g = ihl + 8
    if frame[g : g + len(expected.geneve)] != expected.geneve:
        return "geneve-changed"
    return None


def check_inner(packet: Buffer, protocol_type: int = ETH_P_IPV4) -> str | None:
    """None if the inner IPv4/IPv6 ``packet`` has consistent lengths and valid checksums."""
    n = len(packet)
    if protocol_type == ETH_P_IPV4:
        if n < 20:
            return "inner-truncated"
        if packet[0] >> 4 != 4:
            return "inner-version"
        ihl = (packet[0] & 0x0F) << 2
        total = _U16.unpack_from(packet, 2)[0]
        if ihl < 20 or total < ihl or total != n:
            return "inner-length"
        if not checksum_ok(memoryview(packet)[:ihl]):
            return "inner-ipv4-checksum"
        if _U16.unpack_from(packet, 6)[0] & 0x3FFF:
            return None  # a fragment: its L4 checksum covers bytes that are not here
        proto = packet[9]
        l4 = memoryview(packet)[ihl:]
        return _check_l4(proto, l4, _pseudo(packet[12:20], proto, len(l4)), v6=False)
    if protocol_type == ETH_P_IPV6:
        if n < 40:
            return "inner-truncated"
        if packet[0] >> 4 != 6:
            return "inner-version"
        if 40 + _U16.unpack_from(packet, 4)[0] != n:
            return "inner-length"
        proto = packet[6]
        l4 = memoryview(packet)[40:]
        return _check_l4(proto, l4, _pseudo(packet[8:40], proto, len(l4)), v6=True)
    return None  # not IP: nothing here to check


def _check_l4(proto: int, l4: memoryview, pseudo: int, *, v6: bool) -> str | None:
    n = len(l4)
    if proto == IPPROTO_UDP:
        if n < 8:
            return "inner-truncated"
        if _U16.unpack_from(l4, 4)[0] != n:
            return "inner-udp-length"
        if _U16.unpack_from(l4, 6)[0] == 0:
            return "inner-udp-checksum" if v6 else None  # RFC 8200 8.1: mandatory over IPv6
        return None if checksum_ok(l4, pseudo) else "inner-udp-checksum"
    if proto == IPPROTO_TCP:
        if n < 20:
            return "inner-truncated"
        if not 20 <= (l4[12] >> 4) << 2 <= n:
            return "inner-tcp-offset"
        return None if checksum_ok(l4, pseudo) else "inner-tcp-checksum"
    if proto == IPPROTO_ICMP and not v6:
        if n < 4:
            return "inner-truncated"
        return None if checksum_ok(l4) else "inner-icmp-checksum"  # no pseudo-header
    if proto == IPPROTO_ICMPV6 and v6:
        if n < 4:
            return "inner-truncated"
        return None if checksum_ok(l4, pseudo) else "inner-icmp-checksum"
    return None  # another protocol (or an IPv6 extension header): not checked
