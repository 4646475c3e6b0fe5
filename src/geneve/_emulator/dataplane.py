"""The data plane: tun -> encapsulate -> appliance -> capture -> check -> tun, in one thread.

Its tun and sockets are opened inside the gwlb namespace (``setns``). It captures what comes
back on the appliance link with a packet socket, so it sees every byte the appliance sent (even
frames whose outer checksums the kernel would drop), checks each reply as strictly as GWLB
expects and writes the inner packet back into the tun, from where the kernel routes it on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .checker import (
    COOKIE_AT,
    ETH_P_IPV4,
    ETH_P_IPV6,
    GENEVE_PORT,
    GWLB_GENEVE_LENGTH,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Expected,
    FiveTuple,
    FlowKey,
    answers_refused,
    check_inner,
    check_outer,
    encapsulate,
    five_tuple,
    flow_key,
    geneve_header,
    one_hop_back,
    refuses,
)
from .flows import Flow
from .namespaces import netns, open_tun
from .topology import GWLB_TO, TUN_NAME, EmulatorConfig

_U16 = struct.Struct("!H")
_ETH_P_IP = 0x0800
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
_SO_RCVBUFFORCE = 33

#: Frames read from one fd before looking at the others: under a flood from the tun the
#: replies must still be read, or the capture socket overflows (the emulator's own loss).
DRAIN_BATCH = 64


class DataPlane:
    """Tun -> encapsulate -> appliance -> capture -> check -> tun, in one thread.

    Build it with :meth:`open` (inside the gwlb namespace), then :meth:`start`; :meth:`stop`
    closes everything (the tun device goes with its fd). Counters are read with :meth:`summary`.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        tun: int,
        capture: socket.socket,
        sender: socket.socket,
        holder: socket.socket,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        a = config.addressing
        self._clock = clock  # idle timeouts; tests pass their own
        self.config = config
        self._tun = tun
        self._capture = capture
        self._sender = sender
        self._holder = holder
        self._gwlb = socket.inet_aton(a.gwlb)
        self._appliance = socket.inet_aton(a.appliance)
        self._random = random.Random(config.seed)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._ip_id = self._random.getrandbits(16)
        self.error: BaseException | None = None
        self.flows: dict[FlowKey, Flow] = {}  # the current instance of each 5-tuple
        self.instances: list[Flow] = []  # every flow instance, oldest first (the summary)
        self._by_cookie: dict[int, Flow] = {}
        self._ports: set[int] = set()
        self.sent = self.received = self.returned = self.verified = 0
        self.modified = self.delivered = self.passed_through_invalid = 0
        self.injected = 0
        self.routed = 0  # replies that are their requests with the TTL or hop limit one less
        self.expired_dropped = 0  # non-SYN packets of a TCP flow past its idle timeout
        self.failures: dict[str, int] = {}
        self.tun_ignored = 0
        self.tun_invalid: dict[str, int] = {}
        self.capture_dropped = 0
        self.other_from_appliance = 0
        self.errors: dict[str, int] = {}

    @classmethod
    def open(cls, config: EmulatorConfig, gwlb_netns: str) -> DataPlane:
        """Create the tun device and the sockets inside ``gwlb_netns``."""
        opened: list[socket.socket] = []
        tun = -1
        try:
            with netns(gwlb_netns):
                tun = open_tun(TUN_NAME)
                capture = socket.socket(
                    socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP)
                )
                opened.append(capture)
                capture.bind((GWLB_TO["appliance"], _ETH_P_IP))
                # Not our own requests (Linux 4.20+): half the work, and every drop the kernel
                # counts on this socket is then a frame from the appliance (summary()).
                with contextlib.suppress(OSError):
                    capture.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
                try:  # root may exceed net.core.rmem_max
                    capture.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 4 << 20)
                except OSError:
                    capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                opened.append(sender)
                # Bound so the kernel answers the appliance's replies with no ICMP
                # port-unreachable (GWLB.md); their bytes are read from the capture socket.
                holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                opened.append(holder)
                holder.bind(("0.0.0.0", GENEVE_PORT))
            for s in opened:
                s.setblocking(False)
        except BaseException:
            for s in opened:
                s.close()
            if tun >= 0:
                os.close(tun)
            raise
        return cls(config, tun, capture, sender, holder)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gwlb-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the tun and every socket (idempotent)."""
        if self._closed:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            self._read_capture_drops()
        self._closed = True
        for s in (self._capture, self._sender, self._holder):
            s.close()
        for fd in (self._tun, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        poller = select.poll()
        tun, capture, holder = self._tun, self._capture.fileno(), self._holder.fileno()
        for fd in (tun, capture, holder, self._wake_r):
            poller.register(fd, select.POLLIN)
        try:
            while not self._stopping:
                for fd, _events in poller.poll(500):
                    if fd == tun:
                        self._drain_tun()
                    elif fd == capture:
                        self._drain_capture()
                    elif fd == holder:
                        self._drain_holder()
        except BaseException as exc:  # kept for the caller: a dead data plane must be visible
            self.error = exc

    def _drain_tun(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                packet = os.read(self._tun, 65535)
            except BlockingIOError:
                return
            with self._lock:
                self._from_tun(packet)

    def _drain_capture(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frame, address = self._capture.recvfrom(65535)
            except BlockingIOError:
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # our own requests on their way out
            with self._lock:
                self._from_appliance(frame)

    def _drain_holder(self) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                self._holder.recv(65535)
            except BlockingIOError:
                return

    def _count(self, table: dict[str, int], reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    # -- GWLB -> appliance ---------------------------------------------------------------------

    def _from_tun(self, packet: bytes) -> None:
        t = five_tuple(packet)
        if t is None:
            self.tun_ignored += 1
            return
        if t[0] == 6 and (t[2][:2] == b"\xfe\x80" or t[4][0] == 0xFF):
            self.tun_ignored += 1  # the gwlb namespace's own link-local/multicast chatter
            return
        ptype = ETH_P_IPV6 if t[0] == 6 else ETH_P_IPV4
        # What the kernel routed into the tun should be correct; if not, say so (offload).
        bad = check_inner(packet, ptype)
        if bad:
            self._count(self.tun_invalid, bad)
        key = flow_key(packet)
        assert key is not None
        now = self._clock()
        flow = self.flows.get(key)
        syn = _syn(packet, t)
        if flow is not None and self._expired(flow, now):
            if t[1] == IPPROTO_TCP and not syn:
                # GWLB.md: after a TCP flow's idle timeout GWLB drops its non-SYN packets.
                flow.expired_dropped += 1
                self.expired_dropped += 1
                return
            flow = None  # a SYN, or another protocol: a new flow
        elif flow is not None and syn and flow.ended():
            flow = None  # the 5-tuple reused after FIN both ways or RST
        if flow is None:
            flow = self._new_flow(key, t, ptype, now)
        elif t not in flow.directions:
            flow.directions.add(t)
        flow.last_seen = now
        if t[1] == IPPROTO_TCP:
            _tcp_end(flow, packet, t)
        source_port = flow.port_from(t[2], t[3])
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        frame = encapsulate(
            packet,
            flow.expected.geneve,
            src=self._gwlb,
            dst=self._appliance,
            source_port=source_port,
            identification=self._ip_id,
            udp_checksum=self.config.outer_udp_checksum,
        )
        try:
            self._sender.sendto(frame, (self.config.addressing.appliance, 0))
        except OSError as err:
            self._count(self.errors, f"send-{errno.errorcode.get(err.errno or 0, err.errno)}")
            return
        self.sent += 1
        flow.sent += 1
        flow.pending.add(packet)

    def _expired(self, flow: Flow, now: float) -> bool:
        c = self.config
        timeout = c.tcp_idle_timeout if flow.key[1] == IPPROTO_TCP else c.other_idle_timeout
        return flow.superseded or now - flow.last_seen > timeout

    def _new_flow(self, key: FlowKey, initiator: FiveTuple, ptype: int, now: float) -> Flow:
        """A new flow instance: GWLB issues a new cookie per flow, also for a reused 5-tuple."""
        rnd = self._random
        cookie = rnd.getrandbits(32)
        while cookie == 0 or cookie in self._by_cookie:
            cookie = rnd.getrandbits(32)
        port = self._new_port()
        reply_port = self._new_port() if self.config.per_direction_ports else port
        c = self.config
        geneve = geneve_header(ptype, c.endpoint_id, c.attachment_id, cookie)
        expected = Expected(self._gwlb, self._appliance, port, geneve)
        flow = Flow(key, initiator, cookie, port, expected, reply_port, now)
        old = self.flows.get(key)
        if old is not None:
            old.superseded = True  # its cookie stays known: a reply carrying it is stale
        self.flows[key] = flow
        self.instances.append(flow)
        self._by_cookie[cookie] = flow
        return flow

    def _new_port(self) -> int:
        rnd = self._random
        port = rnd.randrange(32768, 61000)  # GWLB's source ports seen in captures are high
        while port in self._ports:
            port = rnd.randrange(32768, 61000)
        self._ports.add(port)
        return port

    # -- appliance -> GWLB ---------------------------------------------------------------------

    def _from_appliance(self, frame: bytes) -> None:
        if len(frame) < 28 or frame[0] >> 4 != 4 or frame[9] != IPPROTO_UDP:
            self.other_from_appliance += 1
            return
        ihl = (frame[0] & 0x0F) << 2
        if len(frame) < ihl + 8 or GENEVE_PORT not in struct.unpack_from("!HH", frame, ihl):
            self.other_from_appliance += 1
            return
        self.received += 1
        flow = self._flow_of_reply(frame, ihl)
        if flow is None:
            self._count(self.failures, "unknown-flow")
            return
        sport = _U16.unpack_from(frame, ihl)[0]
        expected = flow.expected_for(sport)
        reason = check_outer(frame, expected)
        if reason is not None:
            self._fail(flow, reason)
            return
        if self._expired(flow, self._clock()):
            # GWLB drops a reply whose cookie names a flow instance that is gone.
            self._fail(flow, "stale-cookie")
            return
        inner = frame[ihl + 8 + GWLB_GENEVE_LENGTH : _U16.unpack_from(frame, 2)[0]]
        reason = check_inner(inner, _U16.unpack_from(expected.geneve, 2)[0])
        # With a port per direction, a reply keeps its request's port: the port of its own
        # direction; a refusal (sent against the flow) the port of the packet it refuses.
        t = five_tuple(inner)
        forward = t is None or sport == flow.port_from(t[2], t[3])
        against = t is not None and sport == flow.port_from(t[4], t[5])
        # Only a reply that passes, or one that is its request's own bytes, answers a request:
        # a broken or repeated one takes nothing, so the genuine replies still pair right.
        pending = flow.pending
        if not forward:
            if against and self._refusal(flow, inner):
                self._injected(flow, inner, reason)
            else:
                self._fail(flow, "outer-udp-ports")
            return
        if pending.take(inner) or pending.take_late(inner):
            request, changed = inner, False
        elif (routed := one_hop_back(inner)) is not None and (
            pending.take(routed) or pending.take_late(routed)
        ):
            # Routed by the appliance's kernel (a tun bridge): one hop less, nothing else.
            request, changed = routed, False
            self.routed += 1
        elif self._refusal(flow, inner):
            if not against:
                self._fail(flow, "outer-udp-ports")
                return
            self._injected(flow, inner, reason)
            return
        elif reason is None and flow_key(inner) != flow.key:
            self._fail(flow, "inner-flow-changed")
            return
        elif pending.repeated(inner):
            self._fail(flow, "unsolicited")
            return
        elif reason is not None:
            self._fail(flow, reason)
            return  # a checking receiver drops it: never delivered
        else:
            taken = pending.take_edited(inner)
            if taken is None:
                self._fail(flow, "unsolicited")
                return
            request, changed = taken, True
        pending.answered(request, inner)
        flow.returned += 1
        self.returned += 1
        if reason is None:
            self.verified += 1
        else:
            # The request was just as bad on the tun (tun_invalid): the client's or server's
            # own packet, echoed unchanged. GWLB forwards it; its receiver drops it.
            self.passed_through_invalid += 1
        if changed:
            flow.modified += 1
            self.modified += 1
        self._deliver(inner)

    @staticmethod
    def _refusal(flow: Flow, inner: bytes) -> bool:
        """Whether ``inner`` refuses a packet of ``flow``: a RST, an ICMP error, a DNS REFUSED."""
        pending = flow.pending
        return refuses(inner, flow.directions, pending.quoted) or answers_refused(
            inner, flow.directions, pending.requests
        )

    def _injected(self, flow: Flow, inner: bytes, reason: str | None) -> None:
        """A refusal the appliance injected (REJECT): checked like a reply, then delivered."""
        if reason is not None:
            self._fail(flow, reason)
            return
        flow.injected += 1
        self.injected += 1
        self._deliver(inner)

    def _deliver(self, inner: bytes) -> None:
        """Write an inner packet into the tun, from where the kernel routes it on."""
        try:
            os.write(self._tun, inner)
        except OSError as err:
            self._count(self.errors, f"tun-{errno.errorcode.get(err.errno or 0, err.errno)}")
            return
        self.delivered += 1

    def _flow_of_reply(self, frame: bytes, ihl: int) -> Flow | None:
        at = ihl + 8 + COOKIE_AT
        if len(frame) >= at + 4:
            flow = self._by_cookie.get(struct.unpack_from("!I", frame, at)[0])
            if flow is not None:
                return flow
        key = flow_key(frame[ihl + 8 + GWLB_GENEVE_LENGTH :])
        return None if key is None else self.flows.get(key)

    def _read_capture_drops(self) -> None:
        """Add what the kernel dropped on the capture socket since the last call (lock held).

        Replies the emulator was too slow to read under overload: the appliance did return
        them, but they count in not_returned, as the emulator cannot tell which ones they were.
        """
        if self._closed:
            return
        try:
            stats = self._capture.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        except OSError:
            return  # not a packet socket (tests)
        self.capture_dropped += struct.unpack("II", stats)[1]  # reading resets the counters

    def _fail(self, flow: Flow, reason: str) -> None:
        flow.failed += 1
        self._count(self.failures, reason)

    # -- reporting --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Everything seen so far, as plain JSON-ready data."""
        with self._lock:
            self._read_capture_drops()
            return {
                "sent": self.sent,
                "received": self.received,
                "returned": self.returned,
                "verified": self.verified,
                "modified": self.modified,
                "routed": self.routed,
                "passed_through_invalid": self.passed_through_invalid,
                "injected": self.injected,
                "expired_dropped": self.expired_dropped,
                "delivered": self.delivered,
                "not_returned": self.sent - self.returned,
                "failed": sum(self.failures.values()),
                "failures": dict(sorted(self.failures.items())),
                "capture_dropped": self.capture_dropped,
                "tun_ignored": self.tun_ignored,
                "tun_invalid": dict(sorted(self.tun_invalid.items())),
                "other_from_appliance": self.other_from_appliance,
                "errors": dict(sorted(self.errors.items())),
                "data_plane_error": None if self.error is None else repr(self.error),
                "flows": [flow.as_dict() for flow in self.instances],
            }


_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10


def _tcp_flags(packet: bytes, t: FiveTuple) -> int:
    """The TCP flags of ``packet`` (0 if not TCP, a fragment or too short)."""
    if t[1] != IPPROTO_TCP or not t[3]:
        return 0  # a fragment has ports 0 (five_tuple): no TCP header here
    l4 = (packet[0] & 0x0F) << 2 if t[0] == 4 else 40
    return packet[l4 + 13] if len(packet) >= l4 + 20 else 0


def _syn(packet: bytes, t: FiveTuple) -> bool:
    """A TCP SYN opening a connection (not the SYN|ACK answering one)."""
    return _tcp_flags(packet, t) & (_TCP_SYN | _TCP_ACK) == _TCP_SYN


def _tcp_end(flow: Flow, packet: bytes, t: FiveTuple) -> None:
    """Note a FIN (per direction) or a RST: FIN both ways or a RST ends a TCP flow."""
    flags = _tcp_flags(packet, t)
    if flags & _TCP_RST:
        flow.rst = True
    if flags & _TCP_FIN:
        flow.fins.add((t[2], t[3]) == (flow.initiator[2], flow.initiator[3]))
