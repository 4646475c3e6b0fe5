"""Frames in and out of a worker's sockets, a batch at a time: one receiver and one sender per mode.

Every receiver fills the same :class:`Slots`: a receive buffer per frame, and for each its
length (or a negative status: :data:`TOO_LONG`, :data:`NOT_UNICAST`) and its outer source (a
hashable key; :meth:`address_of` gives the 4 bytes). ``receive()`` returns how many slots it
filled, 0 when the wait timed out. The worker runs the pipeline over the batch; with the batch
sender it writes in ``slots.out[i]`` how many bytes of slot i to send back, and the sender
sends them all in one call. Receivers:

- :class:`UdpBatchReceiver`: a batch per ``recvmmsg`` call, in C (``_batch_cffi``), which also
  writes the 28-byte outer header the kernel stripped;
- :class:`UdpReceiver`: one datagram per ``recvmsg`` call, in Python (no C module, or batch 1),
  writing the same header with :func:`outer_header`;
- :class:`RawReceiver`: whole frames from a raw socket, one per call (outer UDP unchecked).

Senders: :class:`BatchSender` (``sendmmsg``, in C, with the C receiver) and
:class:`FrameSender` (``sendto`` per frame). Both send a frame from anywhere (``send``),
addressed by its bytes 16:20.
:class:`FastPath` forwards, in C over a whole batch, the frames outside the modifier's interest
before Python sees any frame of the batch.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._flows import CFlowTable, FlowTable
from ._packet import ReceiveBuffer
from ._pipeline import Interest
from ._sockets import IP_PKTINFO, Sockets

if TYPE_CHECKING:
    from _cffi_backend import FFI

try:
    from . import _batch_cffi as _batch
except ImportError:  # built without a compiler: one packet per system call
    _batch = None  # type: ignore[assignment]

__all__ = [
    "BUFFER_SIZE",
    "NOT_UNICAST",
    "TOO_LONG",
    "BatchSender",
    "FastPath",
    "FrameSender",
    "RawReceiver",
    "Receiver",
    "Slots",
    "UdpBatchReceiver",
    "UdpReceiver",
    "open_transport",
    "outer_header",
]

#: Receive buffer capacity: any UDP datagram fits, so nothing is ever truncated.
BUFFER_SIZE = 65535 + 28
#: Frames per recvmmsg/sendmmsg call at most (the C module's limit).
BATCH_MAX = 64
#: slots.lens[i] of a datagram that is not a frame to process (the values _batch.h gives C).
TOO_LONG = -1  # longer than any IPv4 packet can be: malformed, "oversized"
NOT_UNICAST = -2  # to a broadcast or multicast address, which every socket on the port gets
#: Admitted sources the C fast path knows (GWLB nodes: a handful); others go through Python.
TRUSTED_MAX = 64

_OUTER_HEADER = struct.Struct("!BBHHHBBH4s4sHHHH")
_PKTINFO_ADDR = struct.Struct("=i4s4s")
_ADDRESS_AT = struct.Struct("=I")
_NATIVE = sys.byteorder
# What each C entry point returns for arguments that disagree (a count, a size): a bug of ours.
_BAD_ARGUMENT = None if _batch is None else _batch.lib.GENEVE_BATCH_BAD_ARGUMENT
_SOL_IP = int(socket.SOL_IP)
_MSG_TRUNC = int(socket.MSG_TRUNC)  # an int: "flags & socket.MSG_TRUNC" takes the enum's slow way


def outer_header(
    buf: bytearray, length: int, source: bytes, source_port: int, local: bytes, port: int
) -> None:
    """Write in ``buf[:28]`` the outer IPv4 and UDP headers of a datagram a UDP socket received.

    ``length`` is the whole frame's (28 + the datagram's). The header is the one GWLB sent, as
    far as the pipeline cares: source GWLB, destination the local address, GWLB's source port,
    the Geneve port, UDP checksum 0 (the kernel checked it), IPv4 checksum 0 (the kernel fills
    it on sending). The Python twin of the header ``geneve_recv_batch`` writes in
    ``_batch.c``, for the receiver without it; a test checks both write the same bytes.
    """
    _OUTER_HEADER.pack_into(buf, 0, 0x45, 0, length, 0, 0, 64, 17, 0, source, local,
                            source_port, port, length - 20, 0)  # fmt: skip


class Slots:
    """A batch of receive buffers; for each, what the receiver found and what to send back.

    ``lens[i]``: the frame's length, or :data:`TOO_LONG` / :data:`NOT_UNICAST`; ``sources[i]``:
    its outer source as the receiver keys it; ``out[i]``: bytes of ``bufs[i]`` to send (0:
    none). With ``c``, the arrays live in C memory (``c_slots``, ``c_lens``, ... for the C
    calls) and Python reads them through memoryviews; else they are lists.
    """

    def __init__(self, size: int, *, c: bool = False) -> None:
        self.size = size
        self.bufs = [ReceiveBuffer(BUFFER_SIZE) for _ in range(size)]
        self.views = [memoryview(b) for b in self.bufs]
        self.lens: list[int] | memoryview
        self.sources: Any  # a list of keys (str, bytes), or C's uint32 array through a view
        self.out: list[int] | memoryview
        if not c:
            self.lens, self.sources, self.out = [0] * size, [None] * size, [0] * size
            return
        assert _batch is not None
        ffi = _batch.ffi
        # Every buffer and cffi pointer is made once; the loop allocates nothing for I/O.
        self._cviews = [ffi.from_buffer("uint8_t[]", b, require_writable=True) for b in self.bufs]
        self.c_slots = ffi.new("uint8_t *[]", self._cviews)
        self.c_lens = ffi.new("int32_t[]", size)
        self.c_sources = ffi.new("uint32_t[]", size)
        self.c_out = ffi.new("int32_t[]", size)
        # Python reads and writes the arrays through memoryviews: faster than cdata indexing.
        self.lens = memoryview(ffi.buffer(self.c_lens)).cast("i")
        self.sources = memoryview(ffi.buffer(self.c_sources)).cast("I")
        self.out = memoryview(ffi.buffer(self.c_out)).cast("i")


class Receiver:
    """What the worker needs of a receiver (see the module docstring)."""

    slots: Slots
    #: No kernel UDP socket checked the outer UDP checksum: the pipeline must.
    verify_outer_udp = False
    #: Broadcast destinations, for a receiver that must tell unicast itself (raw); the worker
    #: refreshes them with its own addresses.
    broadcast: frozenset[bytes] = frozenset()

    def receive(self) -> int:
        raise NotImplementedError

    def address_of(self, source: Any) -> bytes:
        """The 4-byte outer source address of ``slots.sources[i]``."""
        raise NotImplementedError


class UdpBatchReceiver(Receiver):
    """A batch of datagrams per ``recvmmsg`` call, outer headers written in C."""

    def __init__(self, sock: socket.socket, port: int, size: int) -> None:
        assert _batch is not None
        self.slots = Slots(min(size, BATCH_MAX, _batch.lib.GENEVE_BATCH_MAX), c=True)
        self._recv = _batch.lib.geneve_recv_batch
        self._fd = sock.fileno()
        self._port = port
        # Blocking with a kernel timeout (Python's settimeout would make the fd non-blocking).
        timeout = sock.gettimeout() or 0.0
        sock.setblocking(True)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, int(timeout * 1e6))
        )

    def receive(self) -> int:
        s = self.slots
        got = self._recv(self._fd, s.c_slots, BUFFER_SIZE, s.size, self._port, s.c_lens,
                         s.c_sources)  # fmt: skip
        if got < 0:
            if got == _BAD_ARGUMENT:
                raise ValueError("geneve_recv_batch: the batch's arguments disagree")
            if -got in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(-got, os.strerror(-got))
        return got

    def address_of(self, source: int) -> bytes:
        return source.to_bytes(4, _NATIVE)  # s_addr as C read it: network order in memory


class UdpReceiver(Receiver):
    """One datagram per ``recvmsg`` call, in Python; the outer header by :func:`outer_header`."""

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.slots = s = Slots(1)
        self._buf, self._lens, self._sources = s.bufs[0], s.lens, s.sources
        self._recvmsg_into = sock.recvmsg_into
        self._payload = [memoryview(self._buf)[28:]]
        self._anc_size = socket.CMSG_SPACE(_PKTINFO_ADDR.size)
        self._port = port
        self._aton: dict[str, bytes] = {}

    def receive(self) -> int:
        try:
            n, anc, flags, (host, source_port) = self._recvmsg_into(self._payload, self._anc_size)
        except (TimeoutError, InterruptedError):
            return 0
        self._sources[0] = host
        local = spec_dst = b"\0\0\0\0"
        for level, kind, data in anc:
            if level == _SOL_IP and kind == IP_PKTINFO:
                _ifindex, spec_dst, local = _PKTINFO_ADDR.unpack_from(data)
        if flags & _MSG_TRUNC or n + 28 > 0xFFFF:
            self._lens[0] = TOO_LONG
        elif local != spec_dst:
            # The kernel gives a datagram to one of our addresses that address as spec_dst,
            # and a broadcast or multicast one the address of the interface instead.
            self._lens[0] = NOT_UNICAST
        else:
            source = self._aton.get(host) or self.address_of(host)
            outer_header(self._buf, n + 28, source, source_port, local, self._port)
            self._lens[0] = n + 28
        return 1

    def address_of(self, source: str) -> bytes:
        aton = self._aton
        if len(aton) >= 4096:  # spoofed sources must not grow memory
            aton.clear()
        address = aton[source] = socket.inet_aton(source)
        return address


class RawReceiver(Receiver):
    """Whole frames from a raw socket, one per call: datagrams to the Geneve port only."""

    verify_outer_udp = True  # a raw socket also gets datagrams whose UDP checksum is wrong

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.slots = Slots(1)
        self._recv_into = sock.recv_into
        self._port = port

    def receive(self) -> int:
        s = self.slots
        buf = s.bufs[0]
        try:
            n = self._recv_into(buf)
        except (TimeoutError, InterruptedError):
            return 0
        if n < 28:
            return 0
        ihl = (buf[0] & 0x0F) * 4
        # A raw socket sees every UDP datagram of the host: keep the Geneve port only.
        if ihl < 20 or n < ihl + 4 or (buf[ihl + 2] << 8 | buf[ihl + 3]) != self._port:
            return 0
        s.sources[0] = bytes(buf[12:16])
        unicast = not 224 <= buf[16] <= 239 and bytes(buf[16:20]) not in self.broadcast
        s.lens[0] = n if unicast else NOT_UNICAST
        return 1

    def address_of(self, source: bytes) -> bytes:
        return source


class FrameSender:
    """Replies one ``sendto`` each. ``error``: the last refusal (the send calls count them)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sendto = sock.sendto
        self.error: OSError | None = None
        # Destination addresses as sendto() wants them, by their 4 bytes: inet_ntoa costs more
        # than a look-up, and replies go to a handful of GWLB addresses.
        self._names: dict[tuple[int], str] = {}

    def send(self, frame: memoryview) -> int:
        """Send one frame to the address in its bytes 16:20; 1 if the kernel refused it."""
        key = _ADDRESS_AT.unpack_from(frame, 16)
        name = self._names.get(key) or self._name(frame, key)
        try:
            self._sendto(frame, (name, 0))
        except OSError as err:
            self.error = err
            return 1
        return 0

    def _name(self, frame: memoryview, key: tuple[int]) -> str:
        if len(self._names) >= 4096:  # whatever frames say, memory stays bounded
            self._names.clear()
        name = self._names[key] = socket.inet_ntoa(frame[16:20])
        return name


class BatchSender(FrameSender):
    """Replies a batch per ``sendmmsg`` call, in C, from their slots; others by ``sendto``."""

    def __init__(self, sock: socket.socket, slots: Slots) -> None:
        super().__init__(sock)
        assert _batch is not None
        self.slots = slots
        self._send_batch = _batch.lib.geneve_send_batch
        self._fd = sock.fileno()
        self._errno = _batch.ffi.new("int32_t *")

    def send_slots(self, count: int) -> int:
        """Send ``slots.out[i]`` bytes of each of the first ``count`` slots; how many failed."""
        s = self.slots
        failed: int = self._send_batch(
            self._fd, s.c_slots, BUFFER_SIZE, s.c_out, count, self._errno
        )
        if failed < 0:
            raise ValueError("geneve_send_batch: the batch's arguments disagree")
        if failed:
            err = self._errno[0]
            self.error = OSError(err, os.strerror(err))
        return failed


class FastPath:
    """The C fast path: frames outside the modifier's interest forwarded over a whole batch.

    Such a frame is checked, swapped and marked for sending in C (``geneve_fast_forward``)
    when its source is one Python has admitted (:meth:`trust`); Python sees only the rest.
    """

    def __init__(
        self,
        slots: Slots,
        interest: Interest,
        max_inner: int,
        port: int,
        flows: CFlowTable | None = None,
    ) -> None:
        assert _batch is not None
        ffi = _batch.ffi
        self._forward = _batch.lib.geneve_fast_forward
        self.slots = slots
        self.max_inner = max_inner
        self.port = port
        self._tables = _interest_tables(ffi, interest)
        self._todo = ffi.new("int32_t[]", slots.size)
        self._todo_of = memoryview(ffi.buffer(self._todo)).cast("i")
        self._done = ffi.new("int32_t *")
        # Sources Python has admitted (allowed, not our own): only their frames take the C path.
        self._trusted = ffi.new("uint32_t[]", TRUSTED_MAX)
        self._n_trusted = 0
        # The pipeline's C flow table, shared: each frame decided here is counted into its flow
        # (the table outlives this object: the pipeline holds it).
        self.flows = flows
        self._table = (
            ffi.NULL
            if flows is None
            else ffi.cast("struct geneve_flow_table *", flows.c_address())
        )
        self._counts = ffi.new("int32_t[]", 4)
        #: Of the last batch: forwarded by a flow verdict, dropped by one, flows made, and
        #: whether flows ended (evicted) and wait for the pipeline.
        self.counts = memoryview(ffi.buffer(self._counts)).cast("i")

    def forward(self, count: int, now: float = 0.0) -> tuple[int, memoryview]:
        """Forward what it can of the first ``count`` slots: (how many, the slots left).

        With a flow table, ``now`` is the batch's time and a frame whose flow has a verdict
        is decided by it (dropped ones are in neither part: see :attr:`counts`).
        """
        s = self.slots
        left = self._forward(s.c_slots, BUFFER_SIZE, s.c_lens, s.c_sources, count,
                             self._trusted, self._n_trusted, *self._tables, self.max_inner,
                             self.port, s.c_out, self._todo, self._done, self._table, now,
                             self._counts)  # fmt: skip
        if left < 0:
            raise ValueError("geneve_fast_forward: the batch's arguments disagree")
        return self._done[0], self._todo_of[:left]

    def set_interest(self, interest: Interest) -> None:
        """Decide by a new interest from the next batch on (the modifier was reloaded)."""
        assert _batch is not None
        self._tables = _interest_tables(_batch.ffi, interest)

    def trust(self, source: int) -> None:
        """Let frames from ``source`` (just admitted by Python) take the C path."""
        if self._n_trusted < TRUSTED_MAX:
            self._trusted[self._n_trusted] = source
            self._n_trusted += 1

    def keep_trusting(self, still: Callable[[int], bool]) -> None:
        """Keep only the sources for which ``still`` is true (after the own addresses changed)."""
        keep = [t for t in (self._trusted[k] for k in range(self._n_trusted)) if still(t)]
        for k, t in enumerate(keep):
            self._trusted[k] = t
        self._n_trusted = len(keep)


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


def open_transport(
    sockets: Sockets,
    batch: int,
    interest: Interest | None = None,
    max_inner: int = 0,
    flows: FlowTable | None = None,
) -> tuple[Receiver, FrameSender, FastPath | None]:
    """The receiver and sender for ``sockets``' mode, and the fast path when it can run.

    UDP receive takes batches in C when the module is built and ``batch`` > 1; ``interest``
    (None: no fast path) is what the modifier declared. ``flows`` is the pipeline's table
    (None: no tracking). The fast path runs on the C receiver only: when the interest is not
    every packet, or when the table is the C one (flow verdicts are then decided in C); never
    beside a pure-Python table, which it could not count into.
    """
    receiver: Receiver
    if sockets.mode == "raw":
        assert sockets.raw_recv is not None
        receiver = RawReceiver(sockets.raw_recv, sockets.port)
        return receiver, FrameSender(sockets.raw_send), None
    if _batch is None or batch <= 1:
        receiver = UdpReceiver(sockets.udp, sockets.port)
        return receiver, FrameSender(sockets.raw_send), None
    if sockets.tun is not None:  # tun mode (geneve._tun): its wait also serves the tuns
        receiver = sockets.tun.receiver(sockets.udp, sockets.port, batch)
    else:
        receiver = UdpBatchReceiver(sockets.udp, sockets.port, batch)
    fast = None
    table = flows if isinstance(flows, CFlowTable) else None
    if (
        interest is not None
        and (table is not None or not interest.everything)
        and (flows is None or table is not None)
    ):
        fast = FastPath(receiver.slots, interest, max_inner, sockets.port, table)
    if sockets.tun is not None:  # tun mode: forwarded frames go into the tuns
        sender: BatchSender = sockets.tun.sender(sockets.raw_send, receiver.slots)
        return receiver, sender, fast
    return receiver, BatchSender(sockets.raw_send, receiver.slots), fast
