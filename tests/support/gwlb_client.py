"""Test helper: a minimal GWLB stand-in that sends frames into a namespace pair and reads replies.

It checks each reply the way GWLB would need it, with scapy as the independent decoder for
checksums and lengths.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP

from geneve import build_frame

from .netns import Pair, in_netns

INNER_SRC = "198.51.100.10"
INNER_DST = "198.51.100.20"


def inner_udp(payload: bytes, sport: int = 40000, dport: int = 3000, ident: int = 1) -> bytes:
    return bytes(
        IP(src=INNER_SRC, dst=INNER_DST, id=ident) / UDP(sport=sport, dport=dport) / payload
    )


def inner_icmp_echo(seq: int, ident: int = 7, kind: int = 8) -> bytes:
    return bytes(IP(src=INNER_SRC, dst=INNER_DST) / ICMP(type=kind, id=ident, seq=seq) / b"ping!")


def checksums_valid(frame: bytes) -> bool:
    """Every checksum and length of a GWLB frame checked by scapy (outer UDP may be 0)."""
    outer = IP(frame)
    if outer.len != len(frame):
        return False
    copy = IP(frame)
    del copy.chksum
    if IP(bytes(copy)).chksum != outer.chksum:
        return False
    udp = outer[UDP]
    if udp.len != len(frame) - outer.ihl * 4:
        return False
    if udp.chksum != 0:
        c = IP(frame)
        del c[UDP].chksum
        if IP(bytes(c))[UDP].chksum != udp.chksum:
            return False
    inner_off = outer.ihl * 4 + 8 + 8 + (frame[outer.ihl * 4 + 8] & 0x3F) * 4
    return inner_checksums_valid(frame[inner_off:])


def inner_checksums_valid(data: bytes) -> bool:
    pkt = IP(data)
    if pkt.len != len(data):
        return False
    fresh = IP(data)
    del fresh.chksum
    for layer in (UDP, TCP, ICMP):
        if layer in fresh:
            del fresh[layer].chksum
    rebuilt = IP(bytes(fresh))
    if rebuilt.chksum != pkt.chksum:
        return False
    for layer in (UDP, TCP, ICMP):
        if layer in pkt and rebuilt[layer].chksum != pkt[layer].chksum:
            return False
    return not (UDP in pkt and pkt[UDP].len != len(data) - pkt.ihl * 4)


@dataclass
class Reply:
    frame: bytes
    sent: bytes


class GwlbClient:
    """Sends GWLB frames from the ``gw`` namespace to the appliance and collects replies."""

    def __init__(self, pair: Pair, port: int = 6081) -> None:
        self.pair = pair
        self.port = port
        self.tx = pair.gw_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.rx = pair.gw_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        # Holding the port in the gw namespace keeps the kernel from answering with ICMP.
        self.hold = pair.gw_socket(socket.AF_INET, socket.SOCK_DGRAM)
        in_netns(pair.gw, lambda: self.hold.bind(("0.0.0.0", port)))
        self.ap_raw = socket.inet_aton(pair.ap_addr)

    def frame(self, inner: bytes, src_port: int = 50000, cookie: int = 0x11223344) -> bytearray:
        return build_frame(
            inner,
            src=self.pair.gw_addr,
            dst=self.pair.ap_addr,
            src_port=src_port,
            flow_cookie=cookie,
        )

    def send(self, frame: bytes | bytearray) -> None:
        self.tx.sendto(frame, (self.pair.ap_addr, 0))

    def replies(self, timeout: float = 1.0, want: int | None = None) -> list[bytes]:
        """Frames coming back from the appliance until ``want`` arrived or ``timeout`` passed."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while want is None or len(got) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.rx.settimeout(left)
            try:
                data = self.rx.recv(65535)
            except TimeoutError:
                break
            if data[12:16] == self.ap_raw and struct.unpack_from("!H", data, 22)[0] == self.port:
                got.append(data)
        return got

    def exchange(self, inner: bytes, src_port: int = 50000, timeout: float = 1.0) -> bytes | None:
        frame = self.frame(inner, src_port)
        self.send(frame)
        got = self.replies(timeout, want=1)
        return got[0] if got else None

    def close(self) -> None:
        for s in (self.tx, self.rx, self.hold):
            s.close()


def http(pair: Pair, request: bytes, port: int = 8080, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the appliance's health port from the gw namespace; the whole answer."""
    sock = pair.gw_socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((pair.ap_addr, port))
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def wait_healthy(pair: Pair, port: int = 8080, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            answer = http(pair, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", port, timeout=1.0)
            if answer.startswith(b"HTTP/1.1 200"):
                return answer
        except OSError as err:
            last = err
        time.sleep(0.1)
    raise TimeoutError(f"appliance not healthy in {timeout} s ({last})")
