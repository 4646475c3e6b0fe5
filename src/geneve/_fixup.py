"""The fix-up of a whole GWLB frame: every checksum after an edit, in one call.

The codec's last step before a frame goes back to GWLB. One fused routine (C, or its
pure-Python twin: :mod:`geneve.checksum` chose which at import) recomputes the outer IPv4
header checksum, the inner IPv4 header checksum, the inner UDP/TCP/ICMP/ICMPv6 checksum and
the outer UDP checksum (kept 0 when it was 0). One crossing into C per packet is the point: at
GWLB sizes the crossing costs as much as the sums.

What the fused routine does not know, this module adds: an inner packet with a route still to
follow (an IPv4 source route, an IPv6 Routing header with segments left) has its L4 checksum
over the final destination, not the header's (RFC 8200 8.1, RFC 768, RFC 9293 3.1).
"""

from __future__ import annotations

import struct
from typing import Literal

from . import _pychecksum
from ._errors import MalformedError, TruncatedError
from ._headers import IPV6_EXTENSION_HEADERS
from .checksum import _fix, _fix_target, _fix_target_checked, internet_checksum, ones_complement_sum
from .checksum import _fold as fold

__all__ = [
    "OUTER_MODES",
    "OuterUdpPolicy",
    "fix_checksums",
    "fix_frame",
    "fix_routed",
    "fix_routine",
    "fix_target",
    "raise_fix_error",
]

#: The fused routine, as geneve.checksum chose it (C or Python), and what it takes for a buffer.
#: Packet.reply() calls it directly for the usual frame: the one shortcut past fix_checksums.
fix_routine = _fix
fix_target = _fix_target

OuterUdpPolicy = Literal["keep", "zero", "compute"]
#: The fused routine's outer UDP modes, by policy name.
OUTER_MODES = {
    "keep": _pychecksum.OUTER_KEEP,
    "zero": _pychecksum.OUTER_ZERO,
    "compute": _pychecksum.OUTER_COMPUTE,
}
_L4_PROTOCOLS = frozenset((1, 6, 17, 58))  # ICMP, TCP, UDP, ICMPv6: the checksums fix_frame knows
_U16 = struct.Struct("!H")


def fix_frame(
    buf: bytearray | memoryview,
    ip_offset: int,
    l4_offset: int = -1,
    l4_protocol: int = 0,
    *,
    length: int | None = None,
    outer_udp: OuterUdpPolicy = "keep",
) -> bool:
    """Recompute every checksum of a GWLB frame in one call (with C: one crossing into C).

    ``ip_offset`` is where the inner IPv4/IPv6 header starts (0: the frame carries no inner IP
    packet; the outer checksums only), ``l4_offset`` where its UDP (17),
    TCP (6), ICMP (1) or ICMPv6 (58) header starts (``-1``: no L4 to fix), ``l4_protocol`` which
    one. Fixes the outer IPv4 header checksum, the inner IPv4 header checksum and the L4
    checksum; the outer UDP checksum stays 0 when it was 0 and is recomputed otherwise
    (``outer_udp="zero"`` or ``"compute"`` forces either). Lengths are not touched. Returns False
    when the inner IPv4 packet is a fragment, whose L4 checksum cannot be recomputed (its header
    checksum still is). Raises :class:`TruncatedError` or :class:`MalformedError` when offsets and
    length fields disagree, before writing anything at the inner level.
    """
    n = len(buf) if length is None else length
    if not 0 <= n <= len(buf):
        raise TruncatedError("length beyond the buffer")
    if not 0 <= ip_offset < n:
        raise TruncatedError("inner IP offset outside the frame")
    # Clamp what the routines treat alike anyway (any negative L4 offset: none; any past the
    # frame: malformed; an unknown protocol: left alone), so that no Python int, however large,
    # reaches C's fixed-width arguments.
    if l4_offset < 0:
        l4_offset = -1
    elif l4_offset > n:
        l4_offset = n + 1
    if l4_protocol not in _L4_PROTOCOLS:
        l4_protocol = 0
    mode = OUTER_MODES.get(outer_udp)
    if mode is None:
        raise ValueError(f"outer_udp must be 'keep', 'zero' or 'compute', not {outer_udp!r}")
    target = _fix_target_checked(buf)
    return fix_checksums(buf, target, n, ip_offset, l4_offset, l4_protocol, mode)


def fix_checksums(
    buf: bytearray | memoryview,
    target: object,
    length: int,
    ip: int,
    l4: int,
    proto: int,
    mode: int,
) -> bool:
    """Every checksum of the frame ``buf[:length]``: the one place that finishes a frame.

    ``target`` is what the fused routine takes for ``buf`` (:data:`fix_target`; a
    ReceiveBuffer keeps one). ``ip`` <= 0: no inner IP packet, the outer checksums only.
    The routine checks ``length`` against the buffer's real size and every offset against
    the frame before it writes. False when the inner IPv4 packet is a fragment (its L4 checksum
    cannot be recomputed; the caller knows an IPv6 fragment by its missing L4 offset).
    """
    rc: int = _fix(target, len(buf), length, ip if ip > 0 else 0, l4, proto, mode)
    if rc < 0:
        raise_fix_error(rc)
    if rc == 0 and l4 - ip > 20:  # IPv4 options or IPv6 extension headers: a route?
        fix_routed(buf, ip, l4, proto)
    return rc == 0


def raise_fix_error(rc: int) -> None:
    """Raise the codec's error for a negative result of the fused routine."""
    if rc == _pychecksum.FIX_TRUNCATED:
        raise TruncatedError("frame shorter than its length fields")
    raise MalformedError("frame fields disagree; checksums not fixed")


# Where the pseudo-header's destination is not the IP header's: the address a packet is still
# to be routed to, last. IPv4 source route options (RFC 791 3.1): loose 131, strict 137.
_SOURCE_ROUTES = (131, 137)


def final_destination(buf: bytearray | memoryview, ip: int, l4: int) -> bytes | None:
    """The final destination's address when routing headers name one still to be reached.

    RFC 8200 8.1: "If the IPv6 packet contains a Routing header, the Destination Address used in
    the pseudo-header is that of the final destination", the Routing header's last address
    while Segments Left is not 0: the last of type 0's list, type 2's only one, Segment List[0]
    of a Segment Routing Header (type 4, RFC 8754 4.3.1.1, listed in reverse), and Address[n]
    of an RPL Source Route Header (type 3, RFC 6554 3), whose first CmprE bytes are those of the
    IPv6 destination. RFC 9293 3.1 and RFC 768 say the same of an IPv4 source route still in
    progress: its last address. None where the header's own destination is the final one.
    """
    final: bytes | None = None
    if buf[ip] >> 4 == 4:
        pos = ip + 20
        while pos < l4:
            kind = buf[pos]
            if kind == 0:  # end of options
                break
            if kind == 1:  # no-operation
                pos += 1
                continue
            size = buf[pos + 1] if pos + 1 < l4 else 0
            if size < 2 or pos + size > l4:
                break
            # The pointer (1-based) is past the route once every address was used.
            if kind in _SOURCE_ROUTES and size >= 7 and buf[pos + 2] <= size:
                last = pos + 3 + ((size - 3) // 4 - 1) * 4
                final = bytes(buf[last : last + 4])
            pos += size
        return final
    pos, nh = ip + 40, buf[ip + 6]
    while nh in IPV6_EXTENSION_HEADERS and pos + 8 <= l4:
        words = buf[pos + 1]
        if nh == 43 and buf[pos + 3] and pos + 8 + words * 8 <= l4:  # segments left
            kind = buf[pos + 2]
            if kind == 0 and words >= 2:
                last = pos + 8 + ((words // 2) - 1) * 16
                final = bytes(buf[last : last + 16])
            elif kind in (2, 4) and words >= 2:
                final = bytes(buf[pos + 8 : pos + 24])
            elif kind == 3:
                cmpr_i, cmpr_e, pad = buf[pos + 4] >> 4, buf[pos + 4] & 0x0F, buf[pos + 5] >> 4
                rest = words * 8 - pad - (16 - cmpr_e)
                if rest >= 0 and rest % (16 - cmpr_i) == 0:
                    last = pos + 8 + rest  # Address[n], after n - 1 addresses of 16 - CmprI
                    prefix = bytes(buf[ip + 24 : ip + 24 + cmpr_e])
                    final = prefix + bytes(buf[last : last + 16 - cmpr_e])
        nh, pos = buf[pos], pos + ((words + 1) << 3)
    return final


def fix_routed(buf: bytearray | memoryview, ip: int, l4: int, proto: int) -> None:
    """Redo the L4 checksum (fixed over the header's destination) for a final destination.

    Runs after the fused fix-up, only where the inner header has options or extension headers;
    the outer UDP checksum covers the inner packet, so a non-zero one is redone too.
    """
    v6 = buf[ip] >> 4 == 6
    if l4 - ip <= (40 if v6 else 20) or proto not in ((17, 6, 58) if v6 else (17, 6)):
        return
    final = final_destination(buf, ip, l4)
    if final is None:
        return
    view = memoryview(buf).cast("B")
    source = view[ip + 8 : ip + 24] if v6 else view[ip + 12 : ip + 16]
    end = (
        ip + 40 + _U16.unpack_from(buf, ip + 4)[0] if v6 else ip + _U16.unpack_from(buf, ip + 2)[0]
    )
    pseudo = ones_complement_sum(source) + ones_complement_sum(final) + proto + (end - l4)
    at = l4 + (6 if proto == 17 else 16 if proto == 6 else 2)
    view[at : at + 2] = b"\0\0"
    csum = internet_checksum(view[l4:end], fold(pseudo))
    _U16.pack_into(buf, at, (csum or 0xFFFF) if proto == 17 else csum)
    udp = (buf[0] & 0x0F) << 2
    if view[udp + 6] or view[udp + 7]:  # the outer UDP checksum, when there is one
        total = _U16.unpack_from(buf, 2)[0]
        view[udp + 6 : udp + 8] = b"\0\0"
        outer = ones_complement_sum(view[12:20]) + 17 + (total - udp)
        csum = internet_checksum(view[udp:total], fold(outer))
        _U16.pack_into(buf, udp + 6, csum or 0xFFFF)
