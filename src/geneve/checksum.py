"""Internet checksums (RFC 1071, RFC 1624) and the fused fix-up of a whole GWLB frame.

The implementation is picked once, at import: the cffi-compiled ``_checksum.c`` when it was
built, else the pure-Python fallback (with a warning). ``GENEVE_PURE_PYTHON=1`` in the
environment forces the fallback. :data:`IMPLEMENTATION` says which one is in use.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

from . import _pychecksum
from ._errors import MalformedError, TruncatedError
from ._pychecksum import Buffer

__all__ = [
    "IMPLEMENTATION",
    "fix_frame",
    "incremental_update",
    "internet_checksum",
    "ones_complement_sum",
]

OuterUdpPolicy = Literal["keep", "zero", "compute"]
_OUTER_MODES = {"keep": 0, "zero": 1, "compute": 2}

IMPLEMENTATION: Literal["c", "python"]
ffi: Any = None
lib: Any = None

if os.environ.get("GENEVE_PURE_PYTHON", "") not in ("", "0"):
    IMPLEMENTATION = "python"
else:
    try:
        from ._checksum_cffi import ffi, lib  # type: ignore[no-redef]

        IMPLEMENTATION = "c"
    except ImportError:  # built without a compiler
        warnings.warn(
            "geneve: the C checksum module is not available; using the slower pure-Python one",
            RuntimeWarning,
            stacklevel=2,
        )
        IMPLEMENTATION = "python"


if IMPLEMENTATION == "c":
    _from_buffer = ffi.from_buffer
    _sum = lib.geneve_sum
    _fix = lib.geneve_fix

    def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not inverted)."""
        return int(_sum(_from_buffer(data), len(data), initial))

    def internet_checksum(data: Buffer, initial: int = 0) -> int:
        """RFC 1071 checksum of ``data``; ``initial`` is a partial sum such as a pseudo-header's."""
        return ~int(_sum(_from_buffer(data), len(data), initial)) & 0xFFFF

    def _fix_frame(
        buf: bytearray | memoryview,
        length: int,
        ip_off: int,
        l4_off: int,
        l4_proto: int,
        outer_udp_mode: int,
    ) -> int:
        return int(_fix(_from_buffer(buf, True), length, ip_off, l4_off, l4_proto, outer_udp_mode))

else:

    def ones_complement_sum(data: Buffer, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not inverted)."""
        return _pychecksum.ones_sum(data, initial)

    def internet_checksum(data: Buffer, initial: int = 0) -> int:
        """RFC 1071 checksum of ``data``; ``initial`` is a partial sum such as a pseudo-header's."""
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
    if n > len(buf) or ip_offset < 0:
        raise TruncatedError("length beyond the buffer")
    rc = _fix_frame(buf, n, ip_offset, l4_offset, l4_protocol, _OUTER_MODES[outer_udp])
    if rc < 0:
        if rc == _pychecksum.FIX_TRUNCATED:
            raise TruncatedError("frame shorter than its length fields")
        raise MalformedError("frame fields disagree; checksums not fixed")
    return rc == 0
