"""Internet checksum arithmetic (RFC 1071, RFC 1624), in C or in pure Python.

The implementation is picked once, here, at import: the cffi-compiled ``_checksum.c`` when it
was built, else the pure-Python fallback (with a warning). ``GENEVE_PURE_PYTHON=1`` in the
environment forces the fallback. :data:`IMPLEMENTATION` says which one is in use. Nothing else
in the package chooses again: the frame fix-up (``geneve._fixup``, ``Packet.reply``) calls the
fused routine picked here, :data:`_fix`, on what :data:`_fix_target` makes of its buffer.
This module knows sums, not headers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from . import _pychecksum
from ._pychecksum import Buffer

if TYPE_CHECKING:
    from _cffi_backend import FFI

__all__ = [
    "IMPLEMENTATION",
    "incremental_update",
    "internet_checksum",
    "ones_complement_sum",
]

IMPLEMENTATION: Literal["c", "python"]
# The compiled module's cffi objects (for tests and benchmarks), or None without C.
ffi: Any = None
lib: Any = None
# The fused frame fix-up (geneve_fix in _checksum.c, or _pychecksum.fix) and what it takes for
# a buffer (cffi's view of it, or the buffer itself): the codec calls them directly, one call
# per packet, and keeps a ReceiveBuffer's target made once. Same arguments, same results.
# _fix_target is for a bytearray (always writable; with C, cffi's own function, no Python
# call in between); _fix_target_checked for any buffer, refusing one it must not write.
_fix: Callable[[Any, int, int, int, int, int, int], int]
_fix_target: Callable[[bytearray], Any]
_fix_target_checked: Callable[[bytearray | memoryview], Any]

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

    _fix_target = _from_buffer

    def _fix_target_checked(buf: bytearray | memoryview) -> FFI.CData:
        # require_writable (positional: the keyword form is twice as slow) refuses a read-only
        # memoryview rather than writing into an immutable object.
        return _from_buffer(_U8_ARRAY, buf, True)

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

    _fix = _pychecksum.fix

    def _fix_target(buf: bytearray) -> bytearray:
        return buf

    def _fix_target_checked(buf: bytearray | memoryview) -> bytearray | memoryview:
        _check_buffer(buf, True)
        return buf


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


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
