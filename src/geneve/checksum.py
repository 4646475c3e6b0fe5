"""Internet checksums (RFC 1071, RFC 1624) and the fused fix-up of a whole GWLB frame.

The implementation is picked once, at import: the cffi-compiled ``_checksum.c`` when it was
built, else the pure-Python fallback (with a warning). ``GENEVE_PURE_PYTHON=1`` in the
environment forces the fallback. :data:`IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from . import _pychecksum
from ._errors import MalformedError, TruncatedError
from ._pychecksum import Buffer

if TYPE_CHECKING:
    from _cffi_backend import FFI

__all__ = [
    "IMPLEMENTATION",
    "fix_frame",
    "incremental_update",
    "internet_checksum",
    "ones_complement_sum",
]

OuterUdpPolicy = Literal["keep", "zero", "compute"]
_L4_PROTOCOLS = frozenset((1, 6, 17, 58))  # ICMP, TCP, UDP, ICMPv6: the checksums fix_frame knows
_OUTER_MODES = {"keep": 0, "zero": 1, "compute": 2}
_U16 = struct.Struct("!H")

IMPLEMENTATION: Literal["c", "python"]
# The compiled module's cffi objects (for tests and benchmarks), or None without C.
ffi: Any = None
lib: Any = None
# For the codec's hot path (geneve.Packet.fix_checksums), which calls them directly to save a
# Python-level call per packet: the C fix-up and cffi's buffer wrapper, or None without C.
_c_fix: Callable[[FFI.CData, int, int, int, int, int, int], int] | None = None
_c_from_buffer: Callable[[bytearray], FFI.CData] | None = None

if os.environ.get("GENEVE_PURE_PYTHON", "") not in ("", "0"):
    IMPLEMENTATION = "python"
else:
    try:
        from . import _checksum_cffi as _c

        IMPLEMENTATION = "c"
    except ImportError:  # built without a compiler
        warnings.warn(
            "geneve: the C checksum module is not available; using the slower pure-Python one",
            RuntimeWarning,
            stacklevel=2,
        )
        IMPLEMENTATION = "python"


if IMPLEMENTATION == "c":
    # Through _c, not ffi and lib, so that mypy checks the calls against _checksum_cffi.pyi.
    ffi, lib = _c.ffi, _c.lib
    _from_buffer = _c.ffi.from_buffer
    _U8_ARRAY = _c.ffi.typeof("uint8_t[]")
    _sum = _c.lib.geneve_sum
    _fix = _c.lib.geneve_fix
    _c_fix = _fix
    _c_from_buffer = _from_buffer

    # len() of the cdata, not of ``data``: a memoryview's len() counts items, not bytes.
    # An ``initial`` outside uint32_t makes cffi raise OverflowError: reported as ValueError,
    # as the pure-Python version does.
    def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not inverted)."""
        raw = _from_buffer(data)
        try:
            total: int = _sum(raw, len(raw), initial)  # cffi returns an int: no int() needed
        except OverflowError:
            _check_initial(initial)
            raise
        return total

    def internet_checksum(data: Buffer, initial: int = 0) -> int:
        """RFC 1071 checksum of ``data``; ``initial`` is a partial sum such as a pseudo-header's."""
        raw = _from_buffer(data)
        try:
            total: int = _sum(raw, len(raw), initial)
        except OverflowError:
            _check_initial(initial)
            raise
        return ~total & 0xFFFF

    def _fix_frame(
        buf: bytearray | memoryview,
        length: int,
        ip_off: int,
        l4_off: int,
        l4_proto: int,
        outer_udp_mode: int,
    ) -> int:
        # require_writable (positional: the keyword form is twice as slow) refuses a read-only
        # memoryview rather than writing into an immutable object.
        raw = _from_buffer(_U8_ARRAY, buf, True)
        rc: int = _fix(raw, len(raw), length, ip_off, l4_off, l4_proto, outer_udp_mode)
        return rc

else:
    # The same errors as cffi raises for the C routines: BufferError for a buffer they cannot
    # use, TypeError for an initial sum that is not an int, both before anything is written.

    def _check_buffer(data: Buffer, writable: bool) -> None:
        view = memoryview(data)
        if not view.c_contiguous:
            raise BufferError("memoryview: underlying buffer is not C-contiguous")
        if writable and view.readonly:
            raise BufferError("the buffer is not writable")

    def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not inverted)."""
        _check_initial(initial)
        _check_buffer(data, False)
        return _pychecksum.ones_sum(data, initial)

    def internet_checksum(data: Buffer, initial: int = 0) -> int:
        """RFC 1071 checksum of ``data``; ``initial`` is a partial sum such as a pseudo-header's."""
        _check_initial(initial)
        _check_buffer(data, False)
        return ~_pychecksum.ones_sum(data, initial) & 0xFFFF

    def _fix_frame(
        buf: bytearray | memoryview,
        length: int,
        ip_off: int,
        l4_off: int,
        l4_proto: int,
        outer_udp_mode: int,
    ) -> int:
        _check_buffer(buf, True)
        return _pychecksum.fix(buf, length, ip_off, l4_off, l4_proto, outer_udp_mode)


def _check_initial(initial: int) -> None:
    if not isinstance(initial, int):
        raise TypeError("an integer is required")
    if not 0 <= initial <= 0xFFFFFFFF:
        raise ValueError("initial must be a partial sum in 0..0xFFFFFFFF")


def incremental_update(checksum: int, old: Buffer, new: Buffer) -> int:
    """RFC 1624 eqn. 3: the checksum after 16-bit-aligned bytes ``old`` became ``new``.

    ``HC' = ~(~HC + ~m + m')``; ``old`` and ``new`` must have the same even length.
    """
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("old and new must have the same even length")
    # ~m summed word by word equals ~(sum of m) in one's-complement arithmetic.
    total = (~checksum & 0xFFFF) + (~ones_complement_sum(old) & 0xFFFF) + ones_complement_sum(new)
    return ~_fold(total) & 0xFFFF


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

    ``ip_offset`` is where the inner IPv4/IPv6 header starts, ``l4_offset`` where its UDP (17),
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
    mode = _OUTER_MODES.get(outer_udp)
    if mode is None:
        raise ValueError(f"outer_udp must be 'keep', 'zero' or 'compute', not {outer_udp!r}")
    rc = _fix_frame(buf, n, ip_offset, l4_offset, l4_protocol, mode)
    if rc < 0:
        _raise_fix_error(rc)
    if rc == 0 and l4_offset >= 0:
        _fix_routed(buf, ip_offset, l4_offset, l4_protocol)
    return rc == 0


# Where the pseudo-header's destination is not the IP header's: the address a packet is still
# to be routed to, last. IPv4 source route options (RFC 791 3.1): loose 131, strict 137.
_SOURCE_ROUTES = (131, 137)
# IPv6 extension headers that may stand before the L4 header, each (byte 1 + 1) * 8 bytes long
# (RFC 8200 4.1): hop-by-hop, routing, destination options.
_IP6_EXT = frozenset((0, 43, 60))


def _final_destination(buf: Buffer, ip: int, l4: int) -> bytes | None:
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
    while nh in _IP6_EXT and pos + 8 <= l4:
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


def _fix_routed(buf: Buffer, ip: int, l4: int, proto: int) -> None:
    """Redo the L4 checksum (fixed over the header's destination) for a final destination.

    Runs after the fused fix-up, only for inner headers with options or extension headers; the
    outer UDP checksum covers the inner packet, so a non-zero one is redone too.
    """
    v6 = buf[ip] >> 4 == 6
    if l4 - ip <= (40 if v6 else 20) or proto not in ((17, 6, 58) if v6 else (17, 6)):
        return
    final = _final_destination(buf, ip, l4)
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
    csum = internet_checksum(view[l4:end], _fold(pseudo))
    _U16.pack_into(buf, at, (csum or 0xFFFF) if proto == 17 else csum)
    udp = (buf[0] & 0x0F) << 2
    if view[udp + 6] or view[udp + 7]:  # the outer UDP checksum, when there is one
        total = _U16.unpack_from(buf, 2)[0]
        view[udp + 6 : udp + 8] = b"\0\0"
        outer = ones_complement_sum(view[12:20]) + 17 + (total - udp)
        csum = internet_checksum(view[udp:total], _fold(outer))
        _U16.pack_into(buf, udp + 6, csum or 0xFFFF)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _raise_fix_error(rc: int) -> None:
    if rc == _pychecksum.FIX_TRUNCATED:
        raise TruncatedError("frame shorter than its length fields")
    raise MalformedError("frame fields disagree; checksums not fixed")
