# Types of the module cffi compiles from _tun.c (see _tun_build.py), so that mypy checks every
# call into C. Keep in step with _tun.h. Pointer arguments take cdata made by this module's ffi.
from typing import Final

from _cffi_backend import FFI

ffi: FFI

class _Lib:
    GENEVE_TUN_ENDPOINTS_MAX: Final[int]
    GENEVE_TUN_BATCH: Final[int]
    GENEVE_TUN_TEMPLATE_MAX: Final[int]
    GENEVE_TUN_EP_IN: Final[int]
    GENEVE_TUN_EP_IN_BYTES: Final[int]
    GENEVE_TUN_EP_OUT: Final[int]
    GENEVE_TUN_EP_OUT_BYTES: Final[int]
    GENEVE_TUN_EP_MISSES: Final[int]
    GENEVE_TUN_EP_WRITE_ERRORS: Final[int]
    GENEVE_TUN_EP_SEND_ERRORS: Final[int]
    GENEVE_TUN_EP_NOT_IP: Final[int]
    GENEVE_TUN_EP_EARLY: Final[int]
    GENEVE_TUN_EP_COUNTERS: Final[int]
    GENEVE_TUN_NO_ENDPOINT: Final[int]
    GENEVE_TUN_EVICTED: Final[int]
    GENEVE_TUN_LONG_HEADER: Final[int]
    GENEVE_TUN_ENTRIES: Final[int]
    GENEVE_TUN_CAPACITY: Final[int]
    GENEVE_TUN_COUNTERS: Final[int]
    GENEVE_TUN_BAD_ARGUMENT: Final[int]
    @staticmethod
    def geneve_tun_new(
        max_flows: int, tcp_timeout: float, other_timeout: float, seed: int, /
    ) -> FFI.CData: ...
    @staticmethod
    def geneve_tun_free(t: FFI.CData, /) -> None: ...
    @staticmethod
    def geneve_tun_add_endpoint(
        t: FFI.CData, id: int, fd_in: int, fd_out: int, ready: int, now: float, /
    ) -> int: ...
    @staticmethod
    def geneve_tun_endpoint_ready(t: FFI.CData, id: int, /) -> int: ...
    @staticmethod
    def geneve_tun_remove_endpoint(t: FFI.CData, id: int, /) -> int: ...
    @staticmethod
    def geneve_tun_idle_endpoints(
        t: FFI.CData, now: float, idle: float, ids: FFI.CData, max_ids: int, /
    ) -> int: ...
    @staticmethod
    def geneve_tun_endpoint_counts(
        t: FFI.CData, id: int, counts: FFI.CData, last_seen: FFI.CData, /
    ) -> int: ...
    @staticmethod
    def geneve_tun_counts(t: FFI.CData, counts: FFI.CData, /) -> None: ...
    @staticmethod
    def geneve_tun_decap(
        t: FFI.CData,
        slots: FFI.CData,
        slot_size: int,
        out: FFI.CData,
        n: int,
        now: float,
        unknown: FFI.CData,
        max_unknown: int,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_tun_encap(
        t: FFI.CData,
        id: int,
        inner: FFI.CData,
        len: int,
        now: float,
        frame: FFI.CData,
        frame_size: int,
        /,
    ) -> int: ...
    @staticmethod
    def geneve_tun_wait(
        t: FFI.CData, udp_fd: int, send_fd: int, timeout_ms: int, now: float, /
    ) -> int: ...
    @staticmethod
    def geneve_tun_flow_key(inner: FFI.CData, len: int, key: FFI.CData, /) -> int: ...

lib: _Lib
