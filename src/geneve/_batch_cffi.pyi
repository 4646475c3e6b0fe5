# Types of the module cffi compiles from _batch.c (see _batch_build.py), so that mypy checks
# every call into C. Keep in step with _batch.h: pointer arguments take cdata made by ffi.new
# or ffi.from_buffer; C ints are Python ints.
from typing import Final

from _cffi_backend import FFI

ffi: FFI

class _Lib:
    GENEVE_BATCH_MAX: Final[int]
    GENEVE_RECV_TOO_LONG: Final[int]
    GENEVE_RECV_NOT_UNICAST: Final[int]
    GENEVE_BATCH_BAD_ARGUMENT: Final[int]
    @staticmethod
    def geneve_recv_batch(
        fd: int,
        slots: FFI.CData,
        slot_size: int,
        n: int,
        port: int,
        lens: FFI.CData,
        sources: FFI.CData,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_send_batch(
        fd: int,
        frames: FFI.CData,
        slot_size: int,
        lens: FFI.CData,
        n: int,
        last_errno: FFI.CData,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_fast_forward(
        slots: FFI.CData,
        slot_size: int,
        lens: FFI.CData,
        sources: FFI.CData,
        n: int,
        admitted: FFI.CData,
        n_admitted: int,
        udp_interest: FFI.CData,
        udp_interest_size: int,
        tcp_interest: FFI.CData,
        tcp_interest_size: int,
        needles: FFI.CData,
        needles_size: int,
        needle_lens: FFI.CData,
        n_needles: int,
        max_inner: int,
        port: int,
        out: FFI.CData,
        todo: FFI.CData,
        fast: FFI.CData,
        flows: FFI.CData,
        now: float,
        counts: FFI.CData,
        /,
    ) -> int: ...

lib: _Lib
