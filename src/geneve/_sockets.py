"""The appliance's sockets, and the host's own addresses.

Each worker owns a UDP socket bound to the Geneve port (``SO_REUSEPORT``: the kernel spreads
flows over workers; ``IP_PKTINFO``: the local address each datagram was sent to) and a raw
``IP_HDRINCL`` socket to send replies through, since a reply must keep GWLB's source port and
go to port 6081, which a socket bound to 6081 cannot send. Binding 6081 also stops the kernel
answering with ICMP port-unreachable. In raw receive mode a raw ``IPPROTO_UDP`` socket receives
instead, and the UDP socket only holds the port (a filter drops everything it would get).
With several workers, :func:`steer` makes the kernel pick a worker by the inner addresses
(``geneve._steering``), so that both directions of a flow reach the same one.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Literal

from . import _steering

__all__ = [
    "IP_PKTINFO",
    "ReceiveMode",
    "Sockets",
    "broadcast_addresses",
    "local_addresses",
    "own_addresses",
    "steer",
]

ReceiveMode = Literal["udp", "raw"]

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 does not export it
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)


class Sockets:
    """One worker's sockets: where it receives, and the raw socket it sends replies through.

    ``receiver`` (the UDP socket, or the raw one in raw mode) waits at most ``timeout`` seconds
    per receive, so that the worker can beat its heartbeat on an idle link.
    """

    def __init__(
        self, mode: ReceiveMode, bind: str, port: int, *, reuse: bool, timeout: float
    ) -> None:
        self.mode = mode
        self.port = port
        self.timeout = timeout
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.raw_send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw_recv: socket.socket | None = None
        # Tun mode: the geneve._tun.TunBridge whose receiver and sender the worker uses.
        self.tun: Any = None
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
            self.receiver.settimeout(timeout)
        except BaseException:
            self.close()
            raise

    @classmethod
    def adopt(
        cls, mode: ReceiveMode, port: int, fds: list[int], *, timeout: float
    ) -> Sockets:
        """The sockets another process opened (an upgrade), from their descriptors in the
        order of :meth:`fds`: used as they are, bound and set up already."""
        self = cls.__new__(cls)
        self.mode = mode
        self.port = port
        self.timeout = timeout
        self.udp = socket.socket(fileno=fds[0])
        self.raw_send = socket.socket(fileno=fds[1])
        self.raw_recv = socket.socket(fileno=fds[2]) if len(fds) > 2 else None
        self.receiver = self.raw_recv if self.raw_recv is not None else self.udp
        self.receiver.settimeout(timeout)
        self.tun = None  # an upgrade never hands over a tun bridge
        return self

    def fds(self) -> list[int]:
        """The descriptors to hand to another process, in the order :meth:`adopt` takes."""
        socks = [self.udp, self.raw_send] + ([self.raw_recv] if self.raw_recv else [])
        return [sock.fileno() for sock in socks]

    def close(self) -> None:
        for sock in (self.udp, self.raw_send, self.raw_recv):
            if sock is not None:
                sock.close()


def steer(group: list[socket.socket]) -> None:
    """Steer each datagram to a worker by its inner addresses: ``group[i]`` gets index ``i``.

    Call once every socket is bound: the index the program returns is a socket's position in
    bind order. The program is attached to one socket; the kernel applies it to the whole
    ``SO_REUSEPORT`` group. Raises ``OSError`` where the kernel refuses it.
    """
    code = _steering.encode(_steering.program(len(group)))
    _attach_classic_bpf(group[0], SO_ATTACH_REUSEPORT_CBPF, code)


def _drop_all(sock: socket.socket) -> None:
    """Attach a classic BPF filter that accepts nothing: the socket exists only to hold the port."""
    _attach_classic_bpf(sock, SO_ATTACH_FILTER, struct.pack("HBBI", 0x06, 0, 0, 0))  # ret #0


def _attach_classic_bpf(sock: socket.socket, option: int, code: bytes) -> None:
    """Attach a classic BPF program (``struct sock_filter`` array) with a ``SOL_SOCKET`` option.

    The kernel copies the program during setsockopt, so the buffer need not outlive the call.
    """
    import ctypes

    buf = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, option, prog)


def local_addresses() -> frozenset[str]:
    """IPv4 addresses of this host (this network namespace), from /proc/net/fib_trie."""
    return _addresses()[0]


def broadcast_addresses() -> frozenset[str]:
    """IPv4 broadcast addresses of this host's subnets (this network namespace)."""
    return _addresses()[1]


def own_addresses() -> tuple[frozenset[bytes], frozenset[bytes]]:
    """:func:`local_addresses` and :func:`broadcast_addresses` as 4-byte addresses, in one read."""
    local, broadcast = _addresses()
    aton = socket.inet_aton
    return frozenset(map(aton, local)), frozenset(map(aton, broadcast))


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
