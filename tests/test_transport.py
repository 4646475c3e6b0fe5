"""The appliance's receivers and senders (geneve._transport) on real sockets in a namespace.

The C receiver (recvmmsg, geneve_recv_batch) and the Python one (recvmsg + outer_header) must
hand the worker the same frame for the same datagram: byte for byte, with the same status.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from support.netns import Pair, in_netns, netns_unavailable, pair

from geneve import Packet, build_frame
from geneve._sockets import Sockets
from geneve._transport import (
    NOT_UNICAST,
    TOO_LONG,
    FrameSender,
    RawReceiver,
    Receiver,
    UdpReceiver,
    open_transport,
    outer_header,
)

_why = netns_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=_why or "")]
PORT = 6081


@pytest.fixture
def ns() -> Iterator[Pair]:
    with pair() as p:
        yield p


def inner() -> bytes:
    frame = build_frame(b"\x45" + bytes(19), src="10.0.0.1", dst="10.0.0.2")  # any inner bytes
    return bytes(frame[28:])


def receive_one(receiver: Receiver) -> tuple[int, bytes, bytes]:
    """(status or length, the frame's bytes, its source address) of the next datagram."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if receiver.receive():
            s = receiver.slots
            length = s.lens[0]
            data = bytes(s.bufs[0][: max(length, 0)])
            return length, data, receiver.address_of(s.sources[0])
    raise AssertionError("nothing received")


def test_the_c_and_python_udp_receivers_write_the_same_frame(ns: Pair) -> None:
    pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")
    socks = in_netns(ns.ap, lambda: Sockets("udp", "0.0.0.0", PORT, reuse=False, timeout=0.2))
    sender = ns.gw_socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        in_netns(ns.gw, lambda: sender.bind((ns.gw_addr, 50001)))
        batch_receiver, _sender, _fast = open_transport(socks, 64)
        python_receiver = UdpReceiver(socks.udp, PORT)
        payload = inner()
        results = []
        for receiver in (batch_receiver, python_receiver):
            sender.sendto(payload, (ns.ap_addr, PORT))
            results.append(receive_one(receiver))
            sender.sendto(payload, ("10.201.0.255", PORT))
            assert receive_one(receiver)[0] == NOT_UNICAST
        assert results[0] == results[1]
        length, frame, source = results[0]
        assert length == len(payload) + 28 and frame[28:] == payload
        assert source == socket.inet_aton(ns.gw_addr)
        expected = bytearray(28)
        outer_header(expected, length, source, 50001, socket.inet_aton(ns.ap_addr), PORT)
        assert frame[:28] == expected
        packet = Packet.parse(bytearray(frame))
        assert (packet.outer.src, packet.outer.dst) == (ns.gw_addr, ns.ap_addr)
        assert packet.outer_udp.src_port == 50001 and packet.outer_udp.dst_port == PORT
    finally:
        sender.close()
        socks.close()


def test_the_statuses_are_the_c_modules() -> None:
    batch = pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")
    assert (TOO_LONG, NOT_UNICAST) == (
        batch.lib.GENEVE_RECV_TOO_LONG,
        batch.lib.GENEVE_RECV_NOT_UNICAST,
    )


def test_raw_receiver_keeps_the_geneve_port_and_sends_back(ns: Pair) -> None:
    socks = in_netns(ns.ap, lambda: Sockets("raw", "0.0.0.0", PORT, reuse=False, timeout=0.2))
    sender = ns.gw_socket(socket.AF_INET, socket.SOCK_DGRAM)
    back = ns.gw_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        receiver, frame_sender, fast = open_transport(socks, 64)
        assert isinstance(receiver, RawReceiver) and receiver.verify_outer_udp and fast is None
        sender.sendto(b"not geneve", (ns.ap_addr, 4000))  # another port: not handed over
        sender.sendto(inner(), (ns.ap_addr, PORT))
        length, frame, source = receive_one(receiver)
        assert frame[28:] == inner() and source == socket.inet_aton(ns.gw_addr)
        # The sender sends a frame to the address in its bytes 16:20.
        buf = receiver.slots.bufs[0]
        buf[12:16], buf[16:20] = buf[16:20], buf[12:16]
        assert frame_sender.send(memoryview(buf)[:length]) == 0
        back.settimeout(2.0)
        while True:
            got = back.recv(65535)
            if got[28:] == inner():
                break
        assert got[12:16] == socket.inet_aton(ns.ap_addr)
    finally:
        for s in (sender, back):
            s.close()
        socks.close()


def test_a_refused_send_is_counted_not_raised() -> None:
    class Refusing:
        def sendto(self, data: object, address: object) -> int:
            raise OSError(90, "Message too long")

    sender = FrameSender(Refusing())  # type: ignore[arg-type]
    frame = build_frame(b"\x45" + bytes(19))
    assert sender.send(memoryview(frame)) == 1
    assert isinstance(sender.error, OSError) and sender.error.errno == 90
