"""Internet checksums (RFC 1071, RFC 1624) and the fused fix-up of a whole GWLB frame.

The implementation is picked once, at import: the cffi-compiled ``_checksum.c`` when it was
built, else the pure-Python fallback (with a warning). ``GENEVE_PURE_PYTHON=1`` in the
environment forces the fallback. :data:`IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

import os
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

IMPLEMENTATION: Literal["c", "python"]
# The compiled module's cffi objects (for tests and benchmarks), or None without C.
ffi: Any = None
lib: Any = None
# For the codec's hot path (geneve.Packet.fix_checksums), which calls them directly to save a
# Python-level call per packet: the C fix-up and cffi's buffer wrapper, or None without C.
_c_fix: Callable[[FFI.CData, int, int, int, int, int], int] | None = None
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
        rc: int = _fix(
            _from_buffer(_U8_ARRAY, buf, True), length, ip_off, l4_off, l4_proto, outer_udp_mode
        )
        return rc

else:

    def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not inverted)."""
        _check_initial(initial)
        return _pychecksum.ones_sum(data, initial)

    def internet_checksum(data: Buffer, initial: int = 0) -> int:
        """RFC 1071 checksum of ``data``; ``initial`` is a partial sum such as a pseudo-header's."""
        _check_initial(initial)
        return ~_pychecksum.ones_sum(data, initial) & 0xFFFF

    _fix_frame = _pychecksum.fix


def _check_initial(initial: int) -> None:
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
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


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
    return rc == 0


def _raise_fix_error(rc: int) -> None:
    if rc == _pychecksum.FIX_TRUNCATED:
        raise TruncatedError("frame shorter than its length fields")
    raise MalformedError("frame fields disagree; checksums not fixed")
