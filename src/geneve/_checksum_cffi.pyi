# Types of the module cffi compiles from _checksum.c (see _checksum_build.py), so that mypy
# checks every call into C. Keep in step with _checksum.h: a pointer argument takes the cdata
# of ffi.from_buffer(...); C ints are Python ints (cffi raises OverflowError out of range).
from typing import Final

from _cffi_backend import FFI

ffi: FFI

class _Lib:
    GENEVE_FIX_FRAGMENT: Final[int]
    GENEVE_FIX_TRUNCATED: Final[int]
    GENEVE_FIX_MALFORMED: Final[int]
    GENEVE_OUTER_KEEP: Final[int]
    GENEVE_OUTER_ZERO: Final[int]
    GENEVE_OUTER_COMPUTE: Final[int]
    @staticmethod
    def geneve_sum(data: FFI.CData, len: int, initial: int, /) -> int: ...
    @staticmethod
    def geneve_fix(
        frame: FFI.CData,
        size: int,
        len: int,
        ip_off: int,
        l4_off: int,
        l4_proto: int,
        outer_udp_mode: int,
        /,
    ) -> int: ...

lib: _Lib
