"""Pure-Python checksum routines: the fallback for ``_checksum.c``, with the same results.

The one's-complement sum of 16-bit big-endian words equals the big integer of the bytes taken
modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), except that a non-zero sum congruent to 0 is 0xFFFF.
``int.from_bytes`` and one modulo are C loops inside CPython, so this is far faster than a
Python loop over words.
"""

from __future__ import annotations

Buffer = bytes | bytearray | memoryview

FIX_FRAGMENT = 1
FIX_TRUNCATED = -1
FIX_MALFORMED = -2
OUTER_KEEP = 0
OUTER_ZERO = 1
OUTER_COMPUTE = 2


def ones_sum(data: Buffer, initial: int = 0) -> int:
    mv = memoryview(data).cast("B")
    n = len(mv)
    value = int.from_bytes(mv, "big")
    if n & 1:
        value <<= 8
    value += initial
    if value == 0:
        return 0
    s = value % 0xFFFF
    return s if s else 0xFFFF


def _store(
    buf: bytearray | memoryview, start: int, end: int, at: int, pseudo: int, udp: bool
) -> None:
    buf[at] = 0
    buf[at + 1] = 0
    c = ~ones_sum(buf[start:end], pseudo) & 0xFFFF
    if udp and c == 0:
        c = 0xFFFF
    buf[at] = c >> 8
    buf[at + 1] = c & 0xFF


def _fix_l4(
    buf: bytearray | memoryview, l4: int, n: int, proto: int, addr_sum: int, v6: bool
) -> int:
    pseudo = addr_sum + proto + n
    if proto == 17:
        if n < 8:
            return FIX_TRUNCATED
        _store(buf, l4, l4 + n, l4 + 6, pseudo, True)
    elif proto == 6:
        if n < 20:
            return FIX_TRUNCATED
        _store(buf, l4, l4 + n, l4 + 16, pseudo, False)
    elif proto == 1 and not v6:
        if n < 4:
            return FIX_TRUNCATED
        _store(buf, l4, l4 + n, l4 + 2, 0, False)
    elif proto == 58 and v6:
        if n < 4:
            return FIX_TRUNCATED
        _store(buf, l4, l4 + n, l4 + 2, pseudo, False)
    return 0


# Bytes of the L4 header whose checksum _fix_l4 writes, by (protocol, over IPv6).
_L4_MIN = {
    (17, False): 8,
    (17, True): 8,
    (6, False): 20,
    (6, True): 20,
    (1, False): 4,
    (58, True): 4,
}


def _fix_inner(buf: bytearray | memoryview, total: int, ip: int, l4: int, proto: int) -> int:
    # Every check comes before the first write: an error leaves the frame as it was.
    if ip >= total:
        return FIX_TRUNCATED
    version = buf[ip] >> 4
    if version == 4:
        if total - ip < 20:
            return FIX_TRUNCATED
        ihl = (buf[ip] & 0x0F) * 4
        end = ip + ((buf[ip + 2] << 8) | buf[ip + 3])
        if ihl < 20 or end < ip + ihl:
            return FIX_MALFORMED
        if end > total:
            return FIX_TRUNCATED
        fragment = ((buf[ip + 6] << 8) | buf[ip + 7]) & 0x3FFF
        if not fragment and l4 >= 0:
            if l4 < ip + ihl or l4 > end:
                return FIX_MALFORMED
            if end - l4 < _L4_MIN.get((proto, False), 0):
                return FIX_TRUNCATED
        _store(buf, ip, ip + ihl, ip + 10, 0, False)
        if fragment:
            return FIX_FRAGMENT
        if l4 < 0:
            return 0
        return _fix_l4(buf, l4, end - l4, proto, ones_sum(buf[ip + 12 : ip + 20]), False)
    if version == 6:
        if total - ip < 40:
            return FIX_TRUNCATED
        end = ip + 40 + ((buf[ip + 4] << 8) | buf[ip + 5])
        if end > total:
            return FIX_TRUNCATED
        if l4 < 0:
            return 0
        if l4 < ip + 40 or l4 > end:
            return FIX_MALFORMED
        if end - l4 < _L4_MIN.get((proto, True), 0):
            return FIX_TRUNCATED
        return _fix_l4(buf, l4, end - l4, proto, ones_sum(buf[ip + 8 : ip + 40]), True)
    return FIX_MALFORMED


def fix(
    buf: bytearray | memoryview,
    size: int,
    length: int,
    ip_off: int,
    l4_off: int,
    l4_proto: int,
    outer_udp_mode: int,
) -> int:
    """Same contract as ``geneve_fix`` in _checksum.c (``size``: the buffer's, at most)."""
    if length < 28 or length > size or len(buf) < length:
        return FIX_TRUNCATED
    ihl = (buf[0] & 0x0F) * 4
    total = (buf[2] << 8) | buf[3]
    if buf[0] >> 4 != 4 or ihl < 20:
        return FIX_MALFORMED
    if total > length or ihl + 8 > total:
        return FIX_TRUNCATED
    ulen = (buf[ihl + 4] << 8) | buf[ihl + 5]
    if ulen < 8 or ihl + ulen > total:
        return FIX_MALFORMED
    # ip_off 0 (the outer header's place): no inner IP packet, the outer checksums only.
    rc = 0 if ip_off == 0 else _fix_inner(buf, total, ip_off, l4_off, l4_proto)
    if rc not in (0, FIX_FRAGMENT):
        return rc
    _store(buf, 0, ihl, 10, 0, False)
    zero = buf[ihl + 6] == 0 and buf[ihl + 7] == 0
    if outer_udp_mode == OUTER_ZERO or (outer_udp_mode == OUTER_KEEP and zero):
        buf[ihl + 6] = 0
        buf[ihl + 7] = 0
    else:
        pseudo = ones_sum(buf[12:20]) + 17 + ulen
        _store(buf, ihl, ihl + ulen, ihl + 6, pseudo, True)
    return rc
