"""The appliance: the only code with sockets, workers, signals and the health endpoint.

Receive path (default ``receive="udp"``, the design of AWS's own tunnel handler): each worker
owns a UDP socket bound to the Geneve port with ``SO_REUSEPORT`` (the kernel spreads flows over
workers by hash, so no packet is handled twice) and ``IP_PKTINFO`` (the local address the frame
was sent to). The kernel has already checked and stripped the outer IPv4 and UDP headers; the
worker writes an equivalent 28-byte header in front of the Geneve bytes, so the shared pipeline
sees exactly the frame GWLB sent. Replies leave through a raw ``IP_HDRINCL`` socket, because a
reply must keep GWLB's source port and go to port 6081, which a UDP socket bound to 6081 cannot
send. Binding 6081 also stops the kernel answering with ICMP port-unreachable.

``receive="raw"`` (the original blog design) reads whole frames from a raw socket. Every raw
socket gets a copy of every UDP datagram, so it allows only one worker; the bound UDP socket is
kept (with a filter that drops everything) only to silence the ICMP port-unreachable.
See docs/appliance.md for the measurements behind the default.

Workers are a thread when there is one (so a modifier can share state with the embedding
program) and forked processes when there are several (one core each). Each publishes a
snapshot of its counters and a heartbeat twice a second; the health endpoint reports 503 when a
worker died or its heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.popen_fork  # now: workers are forked after --user may bar the way to it
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ._headers import GENEVE_PORT
from ._health import HealthReport, HealthServer
from ._packet import MAX_INNER_LENGTH, Packet, ReceiveBuffer
from ._pipeline import ErrorPolicy, Interest, Modifier, Stats, interest_of, process

if TYPE_CHECKING:
    from _cffi_backend import FFI

__all__ = ["Appliance", "ApplianceError", "ReceiveMode", "local_addresses"]

log = logging.getLogger("geneve.appliance")

ReceiveMode = Literal["udp", "raw"]

try:
    from . import _batch_cffi as _batch
except ImportError:  # built without a compiler: one packet per system call
    _batch = None  # type: ignore[assignment]

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 does not export it
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: Receive buffer capacity: any UDP datagram fits, so nothing is ever truncated.
BUFFER_SIZE = 65535 + 28
#: How often a worker publishes counters and heartbeats, and how stale is dead.
HEARTBEAT = 0.5
STALE_AFTER = 3.0
#: Frames per recvmmsg/sendmmsg call when the C batch module is built.
BATCH = 64
#: Modifier errors logged at most this often per worker (the rest are counted).
ERROR_LOG_INTERVAL = 1.0

_IP_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_PKTINFO_ADDR = struct.Struct("=i4s4s")


class ApplianceError(Exception):
    """A start-up problem (port taken, no permission, bad option): one line, no traceback."""


def local_addresses() -> frozenset[str]:
    """IPv4 addresses of this host (this network namespace), from /proc/net/fib_trie."""
    return _addresses()[0]


def broadcast_addresses() -> frozenset[str]:
    """IPv4 broadcast addresses of this host's subnets (this network namespace)."""
    return _addresses()[1]


def _addresses() -> tuple[frozenset[str], frozenset[str]]:
    """This namespace's local (/32) and broadcast addresses, in one read of fib_trie."""
    local, broadcast = {"127.0.0.1"}, {"255.255.255.255"}
    # thread-self: /proc/net follows the main thread, whose namespace may differ from ours.
    path = "/proc/thread-self/net/fib_trie"
    if not os.path.exists(path):
        path = "/proc/net/fib_trie"
    try:
        with open(path) as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text.startswith("/32 host LOCAL") and last:
                    local.add(last)
                elif text.startswith("/32 link BROADCAST") and last:
                    broadcast.add(last)
    except OSError:
        pass
    return frozenset(local), frozenset(broadcast)


def _port_table(ffi: FFI, ports: frozenset[int] | None) -> tuple[FFI.CData, int]:
    """65536 flags, one per port, for the C fast path, and their size; NULL: every port."""
    if ports is None:
        return ffi.NULL, 0
    table = ffi.new("uint8_t[]", 65536)
    for port in ports:
        table[port] = 1
    return table, 65536


_Tables = tuple["FFI.CData", int, "FFI.CData", int, "FFI.CData", int, "FFI.CData", int]


def _interest_tables(ffi: FFI, interest: Interest) -> _Tables:
    """The arguments of geneve_fast_forward that state ``interest``, in its order.

    Each port table (NULL: every port) and its size, then the needles (concatenated), their
    size, their lengths and their count (-1: no content filter).
    """
    udp = _port_table(ffi, interest.udp_ports)
    tcp = _port_table(ffi, interest.tcp_ports)
    needle_list = sorted(interest.needles) if interest.needles is not None else []
    joined = b"".join(needle_list)
    needles = ffi.new("uint8_t[]", joined or b"\0")
    needle_lens = ffi.new("int32_t[]", [len(x) for x in needle_list] or [0])
    n_needles = -1 if interest.needles is None else len(needle_list)
    return (*udp, *tcp, needles, len(joined), needle_lens, n_needles)


def _raw_addresses() -> tuple[frozenset[bytes], frozenset[bytes]]:
    local, broadcast = _addresses()
    aton = socket.inet_aton
    return frozenset(map(aton, local)), frozenset(map(aton, broadcast))


_OWN = b"own"
_DENIED = b"denied"
#: Sources whose admission is cached at once (the cache is emptied when full).
ADMIT_CACHE = 4096
#: Admitted sources the C fast path knows (GWLB nodes: a handful); others go through Python.
TRUSTED_MAX = 64


class _Sockets:
    """One worker's sockets: where it receives, and the raw socket it sends replies through."""

    def __init__(self, mode: ReceiveMode, bind: str, port: int, reuse: bool) -> None:
        self.mode = mode
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.raw_send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw_recv: socket.socket | None = None
        try:
            if reuse:
                self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.udp.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.udp.bind((bind, port))
            self.raw_send.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            self.raw_send.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if mode == "raw":
                _drop_all(self.udp)
                self.raw_recv = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
                self.raw_recv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.receiver = self.raw_recv if self.raw_recv is not None else self.udp
            self.receiver.settimeout(HEARTBEAT / 2)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in (self.udp, self.raw_send, self.raw_recv):
            if sock is not None:
                sock.close()


def _drop_all(sock: socket.socket) -> None:
    """Attach a classic BPF filter that accepts nothing: the socket exists only to hold the port.

    The kernel copies the program during setsockopt, so the buffer need not outlive the call.
    """
    import ctypes

    insn = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: drop
    buf = ctypes.create_string_buffer(insn)
    prog = struct.pack("HL", 1, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


class _Worker:
    """The receive-process-send loop of one worker (runs in a thread or a forked process)."""

    def __init__(
        self,
        index: int,
        sockets: _Sockets,
        modifier: Modifier,
        *,
        port: int,
        on_error: ErrorPolicy,
        on_too_large: ErrorPolicy = "drop",
        max_inner_length: int,
        publish: Any,
        allow_from: tuple[ipaddress.IPv4Network, ...] = (),
        batch: int = BATCH,
        fast_path: bool = True,
    ) -> None:
        self.index = index
        self.batch = batch
        self.fast_path = fast_path
        self.allow = tuple((int(net.network_address), int(net.netmask)) for net in allow_from)
        self.not_allowed = 0
        self.sockets = sockets
        self.modifier = modifier
        self.port = port
        self.on_error = on_error
        self.on_too_large = on_too_large
        self.max_inner_length = max_inner_length
        self.publish = publish
        self.parent = os.getpid()  # made in the daemon; a forked worker watches it
        self.stats = Stats()
        self.send_errors = 0
        self.own_replies = 0
        self.stop = threading.Event()
        self.failed: str | None = None
        self.heartbeat = time.monotonic()
        self.own: frozenset[bytes] = frozenset()
        self.broadcast: frozenset[bytes] = frozenset()  # raw receive only: what not to answer

    def run(self) -> None:
        try:
            if self.sockets.mode == "raw":
                self._loop_raw()
            elif _batch is not None and self.batch > 1:
                self._loop_udp_batch()
            else:
                self._loop_udp()
        except Exception as err:
            self.failed = f"{type(err).__name__}: {err}"
            log.error("worker %d stopped: %s", self.index, self.failed)
        finally:
            self._publish(final=True)

    def _publish(self, final: bool = False) -> None:
        self.heartbeat = time.monotonic()
        if self.publish is not None:
            # A worker process whose daemon died (SIGKILL, the OOM killer) was given to another
            # parent: it must not go on answering GWLB and holding the port.
            if os.getppid() != self.parent and not self.stop.is_set():
                log.error("worker %d: the daemon is gone, stopping", self.index)
                self.stop.set()
            with contextlib.suppress(OSError, ValueError):
                self.publish(self.snapshot(final))

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        return {
            "index": self.index,
            "stats": self.stats.as_dict(),
            "send_errors": self.send_errors,
            "own_replies": self.own_replies,
            "not_allowed": self.not_allowed,
            "failed": self.failed,
            "final": final,
            "time": time.time(),
        }

    def _log_error(self, last_logged: float, logged_count: int) -> tuple[float, int]:
        now = time.monotonic()
        if now - last_logged >= ERROR_LOG_INTERVAL:
            err = self.stats.last_error
            suppressed = self.stats.modifier_errors - logged_count - 1
            log.warning(
                "modifier error (%s policy): %s: %s%s",
                self.on_error,
                type(err).__name__,
                err,
                f" ({suppressed} more not logged)" if suppressed > 0 else "",
            )
            return now, self.stats.modifier_errors
        return last_logged, logged_count

    def _admit(self, cache: dict[Any, bytes], key: object, src: bytes) -> bytes:
        """Decide (on a cache miss) whether Geneve from ``src`` may be processed.

        Returns ``src`` when it may, else _OWN or _DENIED, and caches the answer under ``key``
        (each receive path keys the cache by what it has at hand without allocating).
        """
        if len(cache) >= ADMIT_CACHE:  # spoofed sources must not grow memory
            cache.clear()
        verdict = src
        if src in self.own:
            verdict = _OWN  # a reply of ours that looped back: never process it
        elif self.allow:
            value = int.from_bytes(src, "big")
            if not any(value & mask == net for net, mask in self.allow):
                verdict = _DENIED  # not a GWLB we serve: never bounce its packets anywhere
        cache[key] = verdict
        return verdict

    def _beat(self, cache: dict[Any, bytes]) -> float:
        """Twice a second: publish counters, re-read our own addresses; the next beat's time."""
        self.own, self.broadcast = _raw_addresses()
        cache.clear()
        self._publish()
        return time.monotonic() + HEARTBEAT

    def _settings(self) -> tuple[Modifier, ErrorPolicy, int, int, ErrorPolicy]:
        return self.modifier, self.on_error, self.max_inner_length, self.port, self.on_too_large

    def _refused(self, verdict: bytes) -> None:
        if verdict is _OWN:
            self.own_replies += 1
        else:
            self.not_allowed += 1

    def _loop_udp(self) -> None:
        socks = self.sockets
        recvmsg_into = socks.udp.recvmsg_into
        sendto = socks.raw_send.sendto
        stats = self.stats
        modifier, on_error, max_inner, port, too_large = self._settings()
        buf = ReceiveBuffer(BUFFER_SIZE)
        payload = memoryview(buf)[28:]
        pack_header = _IP_UDP.pack_into
        unpack_pktinfo = _PKTINFO_ADDR.unpack_from
        anc_size = socket.CMSG_SPACE(_PKTINFO_ADDR.size)
        aton = socket.inet_aton
        admitted: dict[str, bytes] = {}
        next_beat = self._beat(admitted)
        last_logged, logged = 0.0, 0
        stop = self.stop
        while not stop.is_set():
            try:
                n, anc, _flags, src = recvmsg_into([payload], anc_size)
            except TimeoutError:
                n = -1
            except InterruptedError:
                continue
            if n >= 0:
                gwlb = src[0]
                gwlb_raw = admitted.get(gwlb) or self._admit(admitted, gwlb, aton(gwlb))
                local = spec_dst = b"\0\0\0\0"
                for level, kind, data in anc:
                    if level == socket.SOL_IP and kind == IP_PKTINFO:
                        _ifindex, spec_dst, local = unpack_pktinfo(data)
                if len(gwlb_raw) != 4:
                    self._refused(gwlb_raw)
                elif local != spec_dst:
                    # To a broadcast or multicast address, which every socket on the port
                    # receives: the kernel says so by a spec_dst other than the destination.
                    stats.received += 1
                    stats.drop("not-unicast")
                else:
                    # The frame as GWLB sent it; the kernel checked its UDP checksum already.
                    pack_header(buf, 0, 0x45, 0, n + 28, 0, 0, 64, 17, 0, gwlb_raw, local,
                                src[1], port, n + 8, 0)  # fmt: skip
                    packet = process(
                        buf,
                        n + 28,
                        modifier,
                        stats,
                        on_error=on_error,
                        max_inner_length=max_inner,
                        port=port,
                        on_too_large=too_large,
                    )
                    if packet is not None:
                        self._send_one(sendto, packet, gwlb)
                    if stats.modifier_errors != logged:
                        last_logged, logged = self._log_error(last_logged, logged)
            if time.monotonic() >= next_beat:
                next_beat = self._beat(admitted)

    def _loop_udp_batch(self) -> None:
        """The UDP receive path, a batch per system call each way (recvmmsg/sendmmsg in C)."""
        assert _batch is not None
        ffi, lib = _batch.ffi, _batch.lib
        socks = self.sockets
        n = min(self.batch, lib.GENEVE_BATCH_MAX)
        # Every buffer and cffi pointer is made once; the loop allocates nothing for I/O.
        bufs = [ReceiveBuffer(BUFFER_SIZE) for _ in range(n)]
        views = [ffi.from_buffer("uint8_t[]", b, require_writable=True) for b in bufs]
        slots = ffi.new("uint8_t *[]", views)
        lens = ffi.new("int32_t[]", n)
        out = ffi.new("int32_t[]", n)
        sources = ffi.new("uint32_t[]", n)
        # Python reads and writes the arrays through memoryviews: faster than cdata indexing.
        lens_of, out_of = (
            memoryview(ffi.buffer(lens)).cast("i"),
            memoryview(ffi.buffer(out)).cast("i"),
        )
        source_of = memoryview(ffi.buffer(sources)).cast("I")
        last_errno = ffi.new("int32_t *")
        recv_batch, send_batch = lib.geneve_recv_batch, lib.geneve_send_batch
        udp_fd, raw_fd = socks.udp.fileno(), socks.raw_send.fileno()
        # Blocking with a kernel timeout (Python's settimeout would make the fd non-blocking).
        socks.udp.setblocking(True)
        timeout = struct.pack("ll", 0, int(HEARTBEAT / 2 * 1e6))
        socks.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        stats = self.stats
        reasons = stats.malformed_reasons
        not_unicast = lib.GENEVE_RECV_NOT_UNICAST
        modifier, on_error, max_inner, port, too_large = self._settings()
        native = sys.byteorder
        admitted: dict[int, bytes] = {}
        # The C fast path: frames the modifier declared no interest in (geneve.Interest) are
        # checked, swapped and queued for sending in C; Python sees only the rest (todo).
        interest = interest_of(modifier)
        fast_path = self.fast_path and not interest.everything
        fast_forward = lib.geneve_fast_forward
        tables = _interest_tables(ffi, interest)
        todo = ffi.new("int32_t[]", n)
        todo_of = memoryview(ffi.buffer(todo)).cast("i")
        fast = ffi.new("int32_t *")
        # Sources Python has admitted (allowed, not our own): only their frames take the C path.
        trusted = ffi.new("uint32_t[]", TRUSTED_MAX)
        n_trusted = 0
        next_beat = self._beat(admitted)
        last_logged, logged = 0.0, 0
        stop = self.stop
        while not stop.is_set():
            got = recv_batch(udp_fd, slots, BUFFER_SIZE, n, port, lens, sources)
            if got < 0:
                if got == lib.GENEVE_BATCH_BAD_ARGUMENT:
                    raise ValueError("geneve_recv_batch: the batch's arguments disagree")
                if -got not in (errno.EAGAIN, errno.EINTR):
                    raise OSError(-got, os.strerror(-got))
                got = 0
            indices: Iterable[int] = range(got)
            if fast_path and got:
                left = fast_forward(slots, BUFFER_SIZE, lens, sources, got, trusted, n_trusted,
                                    *tables, max_inner, port, out, todo, fast)  # fmt: skip
                if left < 0:
                    raise ValueError("geneve_fast_forward: the batch's arguments disagree")
                done = fast[0]
                stats.received += done
                stats.forwarded += done
                indices = todo_of[:left]
            for i in indices:
                out_of[i] = 0
                length = lens_of[i]
                src = source_of[i]
                verdict = admitted.get(src)
                if verdict is None:
                    verdict = self._admit(admitted, src, src.to_bytes(4, native))
                    if len(verdict) == 4 and n_trusted < TRUSTED_MAX:
                        trusted[n_trusted] = src
                        n_trusted += 1
                if len(verdict) != 4:
                    self._refused(verdict)
                    continue
                if length < 0:
                    stats.received += 1
                    if length == not_unicast:  # to a broadcast or multicast address
                        stats.drop("not-unicast")
                        continue
                    stats.malformed += 1  # longer than any IPv4 packet can be
                    reasons["oversized"] = reasons.get("oversized", 0) + 1
                    continue
                packet = process(
                    bufs[i],
                    length,
                    modifier,
                    stats,
                    on_error=on_error,
                    max_inner_length=max_inner,
                    port=port,
                    on_too_large=too_large,
                )
                if packet is not None and packet.buf is bufs[i]:
                    out_of[i] = packet.length
            if got:
                failed = send_batch(raw_fd, slots, BUFFER_SIZE, out, got, last_errno)
                if failed < 0:
                    raise ValueError("geneve_send_batch: the batch's arguments disagree")
                if failed:
                    err = last_errno[0]
                    self._send_failed(OSError(err, os.strerror(err)), failed)
                if stats.modifier_errors != logged:
                    last_logged, logged = self._log_error(last_logged, logged)
            if time.monotonic() >= next_beat:
                next_beat = self._beat(admitted)
                # Keep only the sources still admitted against the fresh own addresses.
                keep = [trusted[k] for k in range(n_trusted)]
                keep = [
                    t for t in keep if len(self._admit(admitted, t, t.to_bytes(4, native))) == 4
                ]
                for k, t in enumerate(keep):
                    trusted[k] = t
                n_trusted = len(keep)

    def _loop_raw(self) -> None:
        socks = self.sockets
        assert socks.raw_recv is not None
        recv_into = socks.raw_recv.recv_into
        sendto = socks.raw_send.sendto
        stats = self.stats
        modifier, on_error, max_inner, port, too_large = self._settings()
        buf = ReceiveBuffer(BUFFER_SIZE)
        ntoa = socket.inet_ntoa
        admitted: dict[bytes, bytes] = {}
        next_beat = self._beat(admitted)
        last_logged, logged = 0.0, 0
        stop = self.stop
        while not stop.is_set():
            try:
                n = recv_into(buf)
            except TimeoutError:
                n = -1
            except InterruptedError:
                continue
            if n >= 28:
                ihl = (buf[0] & 0x0F) * 4
                # A raw socket sees every UDP datagram of the host: keep the Geneve port only.
                if ihl >= 20 and n >= ihl + 4 and (buf[ihl + 2] << 8 | buf[ihl + 3]) == port:
                    src = bytes(buf[12:16])
                    verdict = admitted.get(src) or self._admit(admitted, src, src)
                    if len(verdict) != 4:
                        self._refused(verdict)
                    elif 224 <= buf[16] <= 239 or bytes(buf[16:20]) in self.broadcast:
                        stats.received += 1
                        stats.drop("not-unicast")
                    else:
                        packet = process(
                            buf,
                            n,
                            modifier,
                            stats,
                            on_error=on_error,
                            max_inner_length=max_inner,
                            port=port,
                            on_too_large=too_large,
                            # No kernel UDP socket checked it: a bad checksum stops here.
                            verify_outer_udp=True,
                        )
                        if packet is not None:
                            self._send_one(sendto, packet, ntoa(packet.buf[16:20]))
                        if stats.modifier_errors != logged:
                            last_logged, logged = self._log_error(last_logged, logged)
            if time.monotonic() >= next_beat:
                next_beat = self._beat(admitted)

    def _send_one(self, sendto: Any, packet: Packet, destination: str) -> None:
        """Send one reply (the one-frame-per-call paths); a refusal is counted, never fatal."""
        try:
            sendto(packet.data, (destination, 0))
        except OSError as err:
            self._send_failed(err)

    def _send_failed(self, err: OSError, count: int = 1) -> None:
        before = self.send_errors
        self.send_errors += count
        if before == 0 or before // 1000 != self.send_errors // 1000:
            log.warning("send failed (%d so far): %s", self.send_errors, err)


def _user_entry(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise ApplianceError(f"--user: no such user {user!r}") from None


def _drop_privileges(user: str) -> None:
    """Become ``user`` (and its primary group) for good; the open sockets keep working."""
    entry = _user_entry(user)
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise ApplianceError(f"--user {user}: cannot switch user (not root?)") from None
    log.info("running as %s (uid %d) from now on", user, entry.pw_uid)


def _process_main(worker: _Worker, conn: multiprocessing.connection.Connection) -> None:
    """Entry of a forked worker process: stop on SIGTERM/SIGINT, report through ``conn``."""

    def on_signal(signum: int, frame: object) -> None:
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent stops on it, and then stops us
    worker.publish = conn.send
    worker.run()
    conn.close()


class Appliance:
    """A GWLB appliance: sockets, workers running ``modifier``, and a health endpoint.

    ``run()`` blocks until SIGTERM/SIGINT; ``start()``/``stop()`` (or ``with``) embed it.
    """

    def __init__(
        self,
        modifier: Modifier,
        *,
        port: int = GENEVE_PORT,
        bind: str = "0.0.0.0",
        health_host: str = "0.0.0.0",
        health_port: int | None = 8080,
        workers: int = 1,
        on_error: ErrorPolicy = "drop",
        receive: ReceiveMode = "udp",
        max_inner_length: int = MAX_INNER_LENGTH,
        on_too_large: ErrorPolicy = "drop",
        allow_from: Sequence[str] = (),
        user: str | None = None,
        batch: int = BATCH,
        fast_path: bool = True,
    ) -> None:
        if not callable(modifier):
            raise ApplianceError("the modifier must be callable")
        if workers < 1:
            raise ApplianceError("workers must be at least 1")
        if not 1 <= batch <= 64:
            raise ApplianceError("batch must be 1 (one frame per system call) to 64")
        if receive not in ("udp", "raw"):
            raise ApplianceError(f"receive must be 'udp' or 'raw', not {receive!r}")
        if receive == "raw" and workers != 1:
            raise ApplianceError(
                "receive='raw' takes one worker: each raw socket sees every packet"
            )
        for name, policy in (("on_error", on_error), ("on_too_large", on_too_large)):
            if policy not in ("drop", "forward"):
                raise ApplianceError(f"{name} must be 'drop' or 'forward', not {policy!r}")
        if not 0 < port < 65536:
            raise ApplianceError(f"port {port} is out of range")
        # The 68 bytes of encapsulation around the inner packet must still fit in IPv4.
        if not 0 < max_inner_length <= 0xFFFF - 68:
            raise ApplianceError(f"max_inner_length must be 1 to {0xFFFF - 68}")
        self.modifier = modifier
        self.port = port
        self.bind = bind
        self.health_host = health_host
        self.health_port = health_port
        self.workers = workers
        self.on_error = on_error
        self.on_too_large = on_too_large
        self.receive = receive
        self.max_inner_length = max_inner_length
        try:
            self.allow_from = tuple(ipaddress.IPv4Network(c, strict=False) for c in allow_from)
        except ValueError as err:
            raise ApplianceError(f"--allow-from: {err}") from None
        if user is not None:
            _user_entry(user)  # a user that does not exist stops us before any socket opens
        self.user = user
        self.batch = batch
        self.fast_path = fast_path
        self._started = 0.0
        self._threads: list[threading.Thread] = []
        self._local_workers: list[_Worker] = []
        self._processes: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self._snapshots: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._health: HealthServer | None = None
        self._stopped = threading.Event()
        self._running = False

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open every socket and start the workers and the health endpoint."""
        if self._running:
            raise ApplianceError("already started")
        self._check_port_free()
        sockets: list[_Sockets] = []
        try:
            for _ in range(self.workers):
                sockets.append(_Sockets(self.receive, self.bind, self.port, reuse=True))
        except PermissionError as err:
            for s in sockets:
                s.close()
            raise ApplianceError(
                f"cannot open raw sockets ({err.strerror}): run as root or with CAP_NET_RAW"
            ) from None
        except OSError as err:
            for s in sockets:
                s.close()
            raise ApplianceError(f"cannot open sockets on port {self.port}: {err}") from None
        self._started = time.monotonic()
        self._stopped.clear()
        try:
            if self.health_port is not None:
                try:
                    self._health = HealthServer(self.health_host, self.health_port, self.report)
                except OSError as err:
                    raise ApplianceError(
                        f"cannot open the health endpoint {self.health_host}:{self.health_port}: "
                        f"{err.strerror or err}"
                    ) from None
            if self.user is not None:
                _drop_privileges(self.user)
            if not self.allow_from:
                log.warning(
                    "no --allow-from: Geneve from any source is answered; a spoofed sender "
                    "could use this appliance to bounce packets"
                )
            if self.workers == 1:
                worker = self._make_worker(0, sockets[0], None)
                self._local_workers.append(worker)
                thread = threading.Thread(target=worker.run, name="geneve-worker-0", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                ctx = multiprocessing.get_context("fork")
                for i, socks in enumerate(sockets):
                    parent, child = ctx.Pipe(duplex=False)
                    worker = self._make_worker(i, socks, None)
                    proc = ctx.Process(
                        target=_process_main, args=(worker, child), name=f"geneve-worker-{i}"
                    )
                    proc.start()
                    child.close()
                    socks.close()  # the child holds its own copies
                    self._processes.append((proc, parent))
                reader = threading.Thread(target=self._collect, name="geneve-stats", daemon=True)
                self._threads.append(reader)
                reader.start()
            if self._health is not None:
                self._health.start()
        except BaseException:
            self._running = True
            self._stop(summary=False)  # nothing ran: the error says it all
            raise
        self._running = True
        log.info(
            "listening on %s:%d (%s receive, %d worker%s), health on %s",
            self.bind,
            self.port,
            self.receive,
            self.workers,
            "" if self.workers == 1 else "s",
            f"{self.health_host}:{self.health_address[1]}" if self._health else "off",
        )

    def _make_worker(self, index: int, socks: _Sockets, publish: Any) -> _Worker:
        return _Worker(
            index,
            socks,
            self.modifier,
            port=self.port,
            on_error=self.on_error,
            on_too_large=self.on_too_large,
            max_inner_length=self.max_inner_length,
            publish=publish,
            allow_from=self.allow_from,
            batch=self.batch,
            fast_path=self.fast_path,
        )

    def _check_port_free(self) -> None:
        """Fail if anyone holds the port, even another SO_REUSEPORT user (bind would share it)."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((self.bind, self.port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ApplianceError(f"UDP port {self.port} is already in use") from None
            raise ApplianceError(f"cannot bind {self.bind}:{self.port}: {err.strerror}") from None
        finally:
            probe.close()

    def _collect(self) -> None:
        conns = {parent: proc for proc, parent in self._processes}
        while conns and not self._stopped.is_set():
            try:
                ready = multiprocessing.connection.wait(list(conns), timeout=HEARTBEAT)
            except OSError:
                return
            for conn in ready:
                assert isinstance(conn, multiprocessing.connection.Connection)
                try:
                    snap = conn.recv()
                except (EOFError, OSError):
                    conns.pop(conn, None)
                    continue
                snap["received_at"] = time.monotonic()
                with self._lock:
                    self._snapshots[snap["index"]] = snap

    def stop(self, timeout: float = 1.5) -> None:
        """Stop the workers (each finishes the packet in hand) and the health endpoint."""
        self._stop(timeout)

    def _stop(self, timeout: float = 1.5, summary: bool = True) -> None:
        if not self._running:
            return
        self._running = False
        deadline = time.monotonic() + timeout
        for worker in self._local_workers:
            worker.stop.set()
        for proc, _conn in self._processes:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for thread in self._threads:
            if thread.name.startswith("geneve-worker"):
                thread.join(max(0.0, deadline - time.monotonic()))
        for proc, _conn in self._processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(0.2)
        # Let the collector read the final snapshots before it goes.
        time.sleep(0.05)
        self._stopped.set()
        for thread in self._threads:
            if not thread.name.startswith("geneve-worker"):
                thread.join(0.5)
        for worker in self._local_workers:
            worker.sockets.close()
        if self._health is not None:
            self._health.stop()
        if summary:
            log.info("stopped: %s", self._summary_line())

    def run(self) -> None:
        """Start, then block until SIGTERM, SIGINT or SIGHUP (call from the main thread)."""
        self.start()
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            if not stop.is_set():
                log.info("%s received, stopping", signal.Signals(signum).name)
            stop.set()

        stopping = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, on_signal) for s in stopping}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            try:
                self.stop()  # a second signal meanwhile changes nothing
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def __enter__(self) -> Appliance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def health_address(self) -> tuple[str, int]:
        if self._health is None:
            raise ApplianceError("the health endpoint is off")
        return self._health.address

    def _worker_states(self) -> Iterator[dict[str, Any]]:
        now = time.monotonic()
        for worker in self._local_workers:
            snap = worker.snapshot()
            alive = any(
                t.is_alive() for t in self._threads if t.name == f"geneve-worker-{worker.index}"
            )
            snap["alive"] = alive and worker.failed is None
            snap["stale"] = now - worker.heartbeat > STALE_AFTER
            yield snap
        with self._lock:
            snaps = dict(self._snapshots)
        for i, (proc, _conn) in enumerate(self._processes):
            snap = snaps.get(
                i,
                {
                    "index": i,
                    "stats": Stats().as_dict(),
                    "send_errors": 0,
                    "own_replies": 0,
                    "failed": None,
                    "received_at": self._started,
                },
            )
            snap = dict(snap)
            snap["alive"] = proc.is_alive() and not snap.get("failed")
            snap["stale"] = now - snap["received_at"] > STALE_AFTER
            yield snap

    def stats(self) -> dict[str, Any]:
        """Counters summed over the workers, plus send errors and looped-back replies ignored."""
        total = Stats()
        send_errors = own = not_allowed = 0
        for snap in self._worker_states():
            part = Stats.from_dict(snap["stats"])
            total.merge(part)
            send_errors += snap["send_errors"]
            own += snap["own_replies"]
            not_allowed += snap.get("not_allowed", 0)
        result = total.as_dict()
        result["not_allowed"] = not_allowed
        result["send_errors"] = send_errors
        result["own_replies_ignored"] = own
        return result

    def problems(self) -> list[str]:
        """Why the data path is not working, or an empty list when it is."""
        if not self._running:
            return ["stopped"]
        found = []
        for snap in self._worker_states():
            if snap.get("failed"):
                found.append(f"worker {snap['index']} failed: {snap['failed']}")
            elif not snap["alive"]:
                found.append(f"worker {snap['index']} is not running")
            elif snap["stale"]:
                found.append(f"worker {snap['index']} is not making progress")
        return found

    def report(self) -> HealthReport:
        problems = self.problems()
        counters = self.stats()
        body: dict[str, object] = {
            "status": "ok" if not problems else "unhealthy",
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "workers": self.workers,
            "counters": counters,
        }
        if problems:
            body["problems"] = problems
        return HealthReport(not problems, body, _prometheus(counters, not problems, body))

    def _summary_line(self) -> str:
        s = self.stats()
        return (
            f"received {s['received']}, forwarded {s['forwarded']}, modified {s['modified']}, "
            f"dropped {s['dropped']}, malformed {s['malformed']}, "
            f"modifier errors {s['modifier_errors']}, send errors {s['send_errors']}"
        )


def _prometheus(counters: dict[str, Any], healthy: bool, body: dict[str, object]) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{labels} {value}")

    def total(key: str) -> list[tuple[str, float]]:
        return [("", counters[key])]

    metric("geneve_up", "gauge", "1 while the data path works, else 0.", [("", int(healthy))])
    metric("geneve_uptime_seconds", "gauge", "Seconds since the appliance started.",
           [("", float(body["uptime_seconds"]))])  # type: ignore[arg-type]  # fmt: skip
    metric("geneve_received_total", "counter", "Frames received on the Geneve port.",
           total("received"))  # fmt: skip
    metric("geneve_forwarded_total", "counter", "Frames sent back to GWLB.", total("forwarded"))
    metric("geneve_modified_total", "counter", "Forwarded frames the modifier changed.",
           total("modified"))  # fmt: skip
    metric("geneve_dropped_total", "counter", "Frames dropped, by reason.",
           [(f'{{reason="{k}"}}', v) for k, v in sorted(counters["drops"].items())])  # fmt: skip
    metric("geneve_malformed_total", "counter", "Malformed frames dropped, by reason.",
           [(f'{{reason="{k}"}}', v)
            for k, v in sorted(counters["malformed_reasons"].items())])  # fmt: skip
    metric("geneve_skipped_total", "counter", "Datagrams that were not Geneve.", total("skipped"))
    metric("geneve_modifier_errors_total", "counter", "Exceptions raised by the modifier.",
           total("modifier_errors"))  # fmt: skip
    metric("geneve_not_allowed_total", "counter", "Geneve from sources outside --allow-from.",
           total("not_allowed"))  # fmt: skip
    metric("geneve_send_errors_total", "counter", "Replies the kernel refused to send.",
           total("send_errors"))  # fmt: skip
    return "\n".join(out) + "\n"
