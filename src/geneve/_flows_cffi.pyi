# Types of the module cffi compiles from _flowtable.c (see _flows_build.py), so that mypy checks
# every call into C. Keep in step with _flowtable.h. Pointer arguments take cdata made by this
# module's ffi (or any cdata for the frame, a void *); C ints are Python ints.
from typing import Final

from _cffi_backend import FFI

ffi: FFI

class _Lib:
    GENEVE_FLOW_DROP_TOMBSTONE: Final[int]
    GENEVE_FLOW_DROP_FULL: Final[int]
    GENEVE_FLOW_BAD_ARGUMENT: Final[int]
    GENEVE_FLOW_IDLE: Final[int]
    GENEVE_FLOW_FIN: Final[int]
    GENEVE_FLOW_RST: Final[int]
    GENEVE_FLOW_EVICTED: Final[int]
    GENEVE_FLOW_SHUTDOWN: Final[int]
    GENEVE_FLOW_UNDECIDED: Final[int]
    GENEVE_FLOW_FORWARD: Final[int]
    GENEVE_FLOW_DROP: Final[int]
    GENEVE_FLOW_REJECT: Final[int]
    GENEVE_FLOW_COOKIE_O: Final[int]
    GENEVE_FLOW_COOKIE_R: Final[int]
    GENEVE_FLOW_REPLIED: Final[int]
    GENEVE_FLOW_LIVE: Final[int]
    GENEVE_FLOW_TOMB: Final[int]
    GENEVE_FLOW_PENDING: Final[int]
    GENEVE_FLOW_HOLDING: Final[int]
    GENEVE_FLOW_POPPED: Final[int]
    GENEVE_FLOW_LINGER: Final[int]
    GENEVE_FLOW_TOMBSTONE: Final[int]
    GENEVE_FLOW_COUNT_LIVE: Final[int]
    GENEVE_FLOW_COUNT_TOMBSTONES: Final[int]
    GENEVE_FLOW_COUNT_PENDING: Final[int]
    GENEVE_FLOW_COUNT_BYTES: Final[int]
    GENEVE_FLOW_SLOW: Final[int]
    GENEVE_FLOW_NEED_IDS: Final[int]
    GENEVE_FLOW_EXISTS: Final[int]
    GENEVE_SEQ_ADJUSTED: Final[int]
    GENEVE_SEQ_RECORD: Final[int]
    GENEVE_SEQ_HIGH: Final[int]
    GENEVE_SEQ_ACKED: Final[int]
    @staticmethod
    def geneve_flow_table_new(
        max_flows: int, tcp_timeout: float, other_timeout: float, /
    ) -> FFI.CData: ...
    @staticmethod
    def geneve_flow_table_free(t: FFI.CData, /) -> None: ...
    @staticmethod
    def geneve_flow_track(
        t: FFI.CData,
        frame: FFI.CData,
        size: int,
        version: int,
        ip_off: int,
        l4_off: int,
        ip_end: int,
        proto: int,
        gwlb_at: int,
        endpoint: int,
        cookie: int,
        now: float,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_flow_pop_ended(t: FFI.CData, /) -> int: ...
    @staticmethod
    def geneve_flow_release(t: FFI.CData, index: int, /) -> int: ...
    @staticmethod
    def geneve_flow_sweep(t: FFI.CData, now: float, max_ends: int, /) -> int: ...
    @staticmethod
    def geneve_flow_end_all(t: FFI.CData, reason: int, max_ends: int, /) -> int: ...
    @staticmethod
    def geneve_flow_restore(t: FFI.CData, src: FFI.CData, now: float, /) -> int: ...
    @staticmethod
    def geneve_flow_restore_many(t: FFI.CData, src: FFI.CData, n: int, now: float, /) -> int: ...
    @staticmethod
    def geneve_flow_export(t: FFI.CData, out: FFI.CData, capacity: int, /) -> int: ...
    @staticmethod
    def geneve_flow_export_tombstones(t: FFI.CData, out: FFI.CData, capacity: int, /) -> int: ...
    @staticmethod
    def geneve_flow_restore_tombstone(t: FFI.CData, src: FFI.CData, now: float, /) -> int: ...
    @staticmethod
    def geneve_flow_lookup(t: FFI.CData, key: FFI.CData, key_len: int, /) -> int: ...
    @staticmethod
    def geneve_flow_next(t: FFI.CData, start: int, /) -> int: ...
    @staticmethod
    def geneve_flow_entry(t: FFI.CData, index: int, /) -> FFI.CData: ...
    @staticmethod
    def geneve_flow_count(t: FFI.CData, what: int, /) -> int: ...
    @staticmethod
    def geneve_flow_fast(
        t: FFI.CData,
        key: FFI.CData,
        key_len: int,
        low: int,
        tcp_flags: int,
        cookie: int,
        length: int,
        create_flow: int,
        now: float,
        tcp: FFI.CData,
        tcp_room: int,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_flow_set_syn_to_python(t: FFI.CData, on: int, /) -> int: ...
    @staticmethod
    def geneve_seq_fast(f: FFI.CData, original: int, tcp: FFI.CData, tcp_room: int, /) -> int: ...

lib: _Lib
