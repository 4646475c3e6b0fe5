"""REJECT: the TCP RST or ICMP error that tells a sender its packet was refused.

:func:`reject_frame` builds, from a parsed :class:`Packet`, a new GWLB frame that carries the
refusal back: the same outer headers and Geneve header (options and flow cookie byte for byte),
the outer addresses swapped as in any reply (GWLB's source port kept, destination 6081), and an
inner packet from the original destination to the original source, TTL / hop limit 64. Every
offset comes from the parsed packet; every length is written here and every checksum by the
fused fix-up (:func:`geneve.fix_frame`), as for any edited frame. Sans-I/O: bytes in, bytes out.

What is sent:

- TCP (RFC 9293 3.10.7.1, "reset generation"): when the segment carried no ACK, RST|ACK with
  sequence 0 and acknowledgment = its sequence + its length (SYN and FIN count one each);
  otherwise RST with sequence = its acknowledgment number.
- Anything else (UDP, ICMP queries, other protocols, a first fragment): ICMP destination
  unreachable, code 13 "communication administratively prohibited" (RFC 1812 5.2.7.1) over
  IPv4, quoting the IP header and as much of its data as keeps the ICMP datagram within 576
  bytes (RFC 792 asks for 64 bits of data at least; RFC 1812 4.3.2.3 allows up to 576); over
  IPv6, ICMPv6 destination unreachable code 1 "communication with destination administratively
  prohibited", quoting as much as keeps the ICMPv6 packet within the IPv6 minimum MTU, 1280
  bytes (RFC 4443 2.4 (c)).

When nothing may be sent, the answer is None (the caller drops the packet instead):

- a TCP segment with RST set (RFC 9293: "a reset is never sent in response to a reset"),
- an ICMP error message (types 3, 4, 5, 11, 12, 31 and 40; RFC 1122 3.2.2) or an ICMPv6 one
  (types 0-127; RFC 4443 2.4 (e)),
- a fragment other than the first (RFC 1122 3.2.2), or one whose L4 header cannot be found,
- a destination that is not one host: IPv4 224.0.0.0/4 or 255.255.255.255, IPv6 ff00::/8
  (RFC 1122 3.2.2, RFC 4443 2.4 (e)), and likewise a source that names no single host (the
  refusal would go to it): those, 0.0.0.0 and ::.
- a frame whose inner packet is not IP.
"""

from __future__ import annotations

import struct

from ._fixup import fix_frame
from ._headers import ETH_P_TEB, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP
from ._packet import Packet

__all__ = [
    "ICMPV6_ADMIN_PROHIBITED",
    "ICMPV6_QUOTE_LIMIT",
    "ICMP_ADMIN_PROHIBITED",
    "ICMP_QUOTE_LIMIT",
    "REJECT_TTL",
    "reject_frame",
]

#: ICMP type 3 (destination unreachable), code 13 (communication administratively prohibited).
ICMP_ADMIN_PROHIBITED = (3, 13)
#: ICMPv6 type 1 (destination unreachable), code 1 (administratively prohibited).
ICMPV6_ADMIN_PROHIBITED = (1, 1)
#: The longest ICMP datagram (IPv4 header included) a REJECT sends (RFC 1812 4.3.2.3).
ICMP_QUOTE_LIMIT = 576
#: The longest ICMPv6 packet (IPv6 header included) a REJECT sends (RFC 4443 2.4 (c)).
ICMPV6_QUOTE_LIMIT = 1280
#: TTL / hop limit of the injected packet.
REJECT_TTL = 64

# ICMP error messages: destination unreachable, source quench, redirect, time exceeded,
# parameter problem (RFC 792, the errors RFC 1122 3.2.2 names), and the later datagram
# conversion error (31, RFC 1475) and Photuris security failure (40, RFC 2521), which quote a
# datagram too. Every other type is a query, an answer or an announcement.
_ICMP_ERRORS = frozenset((3, 4, 5, 11, 12, 31, 40))
# ICMPv6: types 0-127 are error messages, 128-255 informational (RFC 4443 2.1).
_ICMPV6_FIRST_INFO = 128

_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10
_SEQ_ACK = struct.Struct("!II")
_TCP = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, data offset, flags, window, csum, urgent
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")


def _single_host(buf: bytearray, ip: int, v6: bool, *, source: bool) -> bool:
    """Whether the inner source (or destination) address names one host."""
    if v6:
        at = ip + (8 if source else 24)
        if buf[at] == 0xFF:  # ff00::/8, multicast
            return False
        return not source or any(buf[at : at + 16])  # :: as a source
    at = ip + (12 if source else 16)
    if buf[at] & 0xF0 == 0xE0:  # 224.0.0.0/4, multicast
        return False
    addr = buf[at : at + 4]
    if addr == b"\xff\xff\xff\xff":  # limited broadcast
        return False
    return not source or addr != b"\0\0\0\0"


def reject_frame(packet: Packet) -> bytearray | None:
    """The frame that refuses ``packet`` (a RST or an ICMP error, see the module), or None.

    ``packet`` is a parsed frame as received (a malformed inner packet raises its
    :class:`GeneveError`). It is not changed. The new frame is a complete reply: send it to
    GWLB as it is. A packet a modifier edited before refusing it is quoted as edited.
    """
    version = packet.ip_version
    if version != 4 and version != 6:
        return None
    buf = packet.buf
    ip = packet.ip_offset
    ip_end = packet.ip_end
    v6 = version == 6
    if not _single_host(buf, ip, v6, source=False) or not _single_host(buf, ip, v6, source=True):
        return None
    proto = packet.l4_protocol
    l4 = packet.l4_offset
    fragment = l4 < 0
    if fragment:
        l4 = packet.first_fragment_l4_offset  # -1 for a later fragment
        if l4 < 0:
            return None
    if proto == IPPROTO_TCP:
        if ip_end - l4 < 14 or buf[l4 + 13] & _TCP_RST:
            return None
        if not fragment:
            return _tcp_reset(packet)
    elif proto == (IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP):
        if ip_end <= l4:
            return None  # no type to tell an error from a query
        icmp_type = buf[l4]
        if (icmp_type < _ICMPV6_FIRST_INFO) if v6 else (icmp_type in _ICMP_ERRORS):
            return None
    return _icmp_unreachable(packet)


def _frame(packet: Packet, inner_length: int) -> tuple[bytearray, int]:
    """A new frame with ``packet``'s headers up to its inner IP header, room for the inner
    packet after them, every outer length set and the outer addresses swapped."""
    buf = packet.buf
    ip = packet.ip_offset
    total = ip + inner_length
    frame = bytearray(total)
    frame[:ip] = buf[:ip]
    _U16.pack_into(frame, 2, total)
    udp = packet.udp_offset
    _U16.pack_into(frame, udp + 4, total - udp)
    frame[12:16], frame[16:20] = buf[16:20], buf[12:16]
    inner = packet.inner_offset
    if packet.protocol_type == ETH_P_TEB:  # an inner Ethernet header: swap its addresses too
        frame[inner : inner + 6], frame[inner + 6 : inner + 12] = (
            buf[inner + 6 : inner + 12],
            buf[inner : inner + 6],
        )
    return frame, ip


def _ip_header(packet: Packet, frame: bytearray, ip: int, proto: int, length: int) -> int:
    """Write the inner IP header, addresses reversed; return where its payload starts."""
    buf = packet.buf
    src = packet.ip_offset
    if packet.ip_version == 6:
        _IP6.pack_into(
            frame, ip, 0x60000000, length - 40, proto, REJECT_TTL,
            bytes(buf[src + 24 : src + 40]), bytes(buf[src + 8 : src + 24]),
        )  # fmt: skip
        return ip + 40
    _IP4.pack_into(
        frame, ip, 0x45, 0, length, 0, 0, REJECT_TTL, proto, 0,
        bytes(buf[src + 16 : src + 20]), bytes(buf[src + 12 : src + 16]),
    )  # fmt: skip
    return ip + 20


def _tcp_reset(packet: Packet) -> bytearray:
    buf = packet.buf
    l4 = packet.l4_offset
    sport, dport = _U16.unpack_from(buf, l4)[0], _U16.unpack_from(buf, l4 + 2)[0]
    seq, ack = _SEQ_ACK.unpack_from(buf, l4 + 4)
    flags = buf[l4 + 13]
    if flags & _TCP_ACK:
        # RFC 9293 3.10.7.1: "<SEQ=SEG.ACK><CTL=RST>"
        rst_seq, rst_ack, rst_flags = ack, 0, _TCP_RST
    else:
        # "<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>"; SYN and FIN each occupy one number.
        length = packet.ip_end - packet.payload_offset
        length += (flags & _TCP_SYN) >> 1
        length += flags & _TCP_FIN
        rst_seq, rst_ack, rst_flags = 0, (seq + length) & 0xFFFFFFFF, _TCP_RST | _TCP_ACK
    inner_length = (40 if packet.ip_version == 6 else 20) + 20
    frame, ip = _frame(packet, inner_length)
    at = _ip_header(packet, frame, ip, IPPROTO_TCP, inner_length)
    _TCP.pack_into(frame, at, dport, sport, rst_seq, rst_ack, 5 << 4, rst_flags, 0, 0, 0)
    fix_frame(frame, ip, at, IPPROTO_TCP)
    return frame


def _icmp_unreachable(packet: Packet) -> bytearray:
    buf = packet.buf
    src = packet.ip_offset
    if packet.ip_version == 6:
        header, proto, limit = 40, IPPROTO_ICMPV6, ICMPV6_QUOTE_LIMIT
        itype, code = ICMPV6_ADMIN_PROHIBITED
    else:
        header, proto, limit = 20, IPPROTO_ICMP, ICMP_QUOTE_LIMIT
        itype, code = ICMP_ADMIN_PROHIBITED
    quote = min(packet.ip_end - src, limit - header - 8)
    inner_length = header + 8 + quote
    frame, ip = _frame(packet, inner_length)
    at = _ip_header(packet, frame, ip, proto, inner_length)
    frame[at] = itype
    frame[at + 1] = code  # checksum and the unused word stay 0 until the fix-up
    frame[at + 8 :] = buf[src : src + quote]
    fix_frame(frame, ip, at, proto)
    return frame
