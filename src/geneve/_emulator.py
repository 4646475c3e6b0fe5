"""A local GWLB emulator: network namespaces, a tun device and a strict Geneve peer.

Topology (one set of namespaces per emulator; the names carry the pid and a counter, so
parallel runs never clash)::

    client 10.200.1.2 ──veth── gwlb ──veth── server 10.200.2.2
                                │  tun: client<->server traffic, by incoming interface
                                └──veth── appliance 10.200.3.2 (the appliance under test)

Strategy. The gwlb namespace routes every packet that arrives from the client for the server
(and back) into a tun device, by policy routing on the incoming interface. The data plane, a
thread of this process whose tun and sockets were opened inside the gwlb namespace (``setns``),
reads each inner packet, wraps it as GWLB does (outer IPv4 | UDP to 6081 | Geneve with the
three AWS options) and sends it to the appliance. It captures what comes back on the appliance
link with a packet socket, so it sees every byte the appliance sent (even frames whose outer
checksums the kernel would drop), checks each reply as strictly as GWLB expects and writes the
inner packet back into the tun, from where the kernel routes it on to its destination.

Encapsulation and checking are written here from the protocol facts (docs/emulator.md) and
share no code with the codec: a checker built on the code under test would share its bugs.
Checksums use one big-integer remainder: 2**16 is 1 modulo 0xFFFF, so ``int.from_bytes(data)
% 0xFFFF`` is the one's-complement sum of the 16-bit words of ``data``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import http.client
import ipaddress
import itertools
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Literal

from ._headers import ETH_P_IPV4, ETH_P_IPV6, GENEVE_PORT, GWLB_OPTION_CLASS

__all__ = [
    "NETNS_PREFIX",
    "Addressing",
    "Check",
    "DataPlane",
    "DemoResult",
    "Emulator",
    "EmulatorConfig",
    "EmulatorError",
    "Expected",
    "Names",
    "check_inner",
    "check_reply",
    "cleanup",
    "encapsulate",
    "flow_key",
    "format_summary",
    "geneve_header",
    "netns",
    "netns_list",
    "run_demo",
]

#: Every namespace this module creates is named ``geneve-emu-<pid>-<n>-<role>``.
NETNS_PREFIX = "geneve-emu"
ROLES = ("client", "gwlb", "server", "appliance")
Role = Literal["client", "gwlb", "server", "appliance"]
_NAME_RE = re.compile(rf"^{NETNS_PREFIX}-(\d+)-(\d+)-(client|gwlb|server|appliance)$")

# Interface names (each namespace has its own, so they never clash between runs).
TUN_NAME = "gwlb-tun"
GWLB_TO = {"client": "to-client", "server": "to-server", "appliance": "to-appliance"}
PEER_IFNAME = "eth0"
#: The routing table the gwlb namespace diverts client<->server traffic into.
DIVERT_TABLE = 100

#: The demo's UDP source port on the client (one flow for both messages, see run_demo).
DEMO_CLIENT_PORT = 40000
DEMO_SERVER_PORT = 3000

_U16 = struct.Struct("!H")
_OUTER = struct.Struct("!BBHHHBBH4s4sHHHH")  # outer IPv4 (20 bytes) + UDP (8 bytes)
_GWLB_GENEVE = struct.Struct("!BBHIHBBQHBBQHBBI")  # header + the three options
#: Geneve header (8) + GWLB options (32): what an appliance must echo byte for byte.
GWLB_GENEVE_LENGTH = _GWLB_GENEVE.size
_COOKIE_AT = 8 + 4 + 8 + 4 + 8 + 4  # flow cookie data, from the start of the Geneve header

_IPPROTO_ICMP = 1
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_IPPROTO_ICMPV6 = 58
_PROTO_NAMES = {_IPPROTO_ICMP: "icmp", _IPPROTO_TCP: "tcp", _IPPROTO_UDP: "udp", 58: "icmpv6"}

Buffer = bytes | bytearray | memoryview


class EmulatorError(Exception):
    """The emulator could not build, run or tear down its environment."""


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Addressing:
    """Addresses of the topology. Namespaces are private, so every run may use the same ones."""

    client: str = "10.200.1.2"
    client_gateway: str = "10.200.1.1"
    server: str = "10.200.2.2"
    server_gateway: str = "10.200.2.1"
    appliance: str = "10.200.3.2"
    gwlb: str = "10.200.3.1"  # the GWLB node address the appliance sees and replies to
    prefix_length: int = 24
    client6: str = "fd00:200:1::2"
    client6_gateway: str = "fd00:200:1::1"
    server6: str = "fd00:200:2::2"
    server6_gateway: str = "fd00:200:2::1"
    prefix6_length: int = 64

    def network(self, address: str) -> str:
        plen = self.prefix6_length if ":" in address else self.prefix_length
        return str(ipaddress.ip_interface(f"{address}/{plen}").network)


@dataclass(frozen=True)
class EmulatorConfig:
    """What the emulated GWLB looks like to the appliance."""

    addressing: Addressing = field(default_factory=Addressing)
    endpoint_id: int = 0x0E1B2C3D4E5F6071  # GWLB endpoint (VPC endpoint ENI) id, option type 1
    attachment_id: int = 0x0A77AC4ED00D0001  # attachment id, option type 2
    #: GWLB's outer UDP checksum is often 0; True sends a correct one, which an appliance that
    #: edits packets must then fix or zero.
    outer_udp_checksum: bool = False
    inner_mtu: int = 1500  # client, server and tun links (GWLB carries up to 8500)
    appliance_mtu: int = 9001  # the appliance link: inner + 68 bytes must fit
    ipv6: bool = True
    seed: int | None = None  # flow cookies and source ports; None: random


class Names:
    """The namespace names of one emulator: ``geneve-emu-<pid>-<n>-<role>``."""

    _counter = itertools.count()

    def __init__(self, pid: int | None = None, index: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.index = next(self._counter) if index is None else index
        self.base = f"{NETNS_PREFIX}-{self.pid}-{self.index}"

    def __getitem__(self, role: Role) -> str:
        return f"{self.base}-{role}"

    @property
    def client(self) -> str:
        return self["client"]

    @property
    def gwlb(self) -> str:
        return self["gwlb"]

    @property
    def server(self) -> str:
        return self["server"]

    @property
    def appliance(self) -> str:
        return self["appliance"]

    def all(self) -> list[str]:
        return [f"{self.base}-{role}" for role in ROLES]


# -- namespaces, tun, ethtool: the Linux plumbing ------------------------------------------------

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17
_ETH_P_IP = 0x0800
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
_SO_RCVBUFFORCE = 33

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name``.

    Only the calling thread moves (network namespaces are per thread), and it moves back
    afterwards. Sockets and tun devices opened inside stay in ``name`` for their lifetime, and
    ``/proc/sys/net`` shows ``name``'s settings.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(home)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _sysctl(path: str, value: str | int) -> None:
    """Write ``/proc/sys/<path>`` in the current thread's namespace."""
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(f"{value}\n")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise EmulatorError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def netns_list() -> list[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise EmulatorError(f"ip netns list: {proc.stderr.strip()}")
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _open_tun(name: str) -> int:
    """Create tun ``name`` in the current namespace; it disappears when the fd is closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class _EthtoolValue(ctypes.Structure):
    _fields_ = (("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32))


class _IfReq(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char * 16),
        ("data", ctypes.c_void_p),
        ("pad", ctypes.c_char * 16),
    )


def _tx_checksum(ifname: str, enable: bool | None = None) -> bool:
    """Read (and with ``enable`` set) tx checksum offload of ``ifname``: ``ethtool -K tx``.

    Over veth a UDP socket's packet can leave with only the pseudo-header checksum filled in
    (GWLB.md); with tx offload off the kernel completes it before the packet leaves.
    """
    value = _EthtoolValue(
        _ETHTOOL_GTXCSUM if enable is None else _ETHTOOL_STXCSUM, int(bool(enable))
    )
    req = _IfReq(ifname.encode(), ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, req)
        if enable is not None:
            value.cmd, value.data = _ETHTOOL_GTXCSUM, 0
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, req)
    return bool(value.data)


def _die_with_parent() -> None:
    """preexec_fn: a child gets SIGTERM if the emulator dies, even by SIGKILL."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cleanup(*, everything: bool = False) -> list[str]:
    """Delete namespaces left by emulators that died; returns the names deleted.

    A namespace counts as stale when the pid in its name is no longer running;
    ``everything=True`` deletes every ``geneve-emu-*`` namespace, also of live runs.
    """
    removed = []
    for name in netns_list():
        m = _NAME_RE.match(name)
        if m is None or (not everything and _pid_alive(int(m.group(1)))):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        removed.append(name)
    return removed


def _leftover_pids(name: str) -> list[int]:
    proc = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    )
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


# -- checksums, flows, encapsulation, checking: pure functions -------------------------------


def _ones(data: Buffer) -> int:
    """The one's-complement sum of ``data``'s 16-bit words, modulo 0xFFFF."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return int.from_bytes(data, "big") % 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` plus a partial sum (``_ones`` of a pseudo-header)."""
    return -(_ones(data) + initial) % 0xFFFF


def checksum_ok(data: Buffer, initial: int = 0) -> bool:
    """A region that holds its correct checksum sums to 0xFFFF, which is 0 modulo 0xFFFF."""
    return (_ones(data) + initial) % 0xFFFF == 0


def _pseudo(addresses: Buffer, protocol: int, length: int) -> int:
    # IPv4 and IPv6 pseudo-headers: both addresses, the protocol and the L4 length (RFC 768,
    # RFC 8200 8.1); the zero bytes add nothing and 2**16 = 1 (mod 0xFFFF) folds the length.
    return _ones(addresses) + protocol + length


#: (ip version, protocol, lower address, its port, higher address, its port)
FlowKey = tuple[int, int, bytes, int, bytes, int]
#: (ip version, protocol, source, source port, destination, destination port)
FiveTuple = tuple[int, int, bytes, int, bytes, int]


def five_tuple(inner: Buffer) -> FiveTuple | None:
    """The inner packet's 5-tuple; ICMP echo uses its identifier as both ports."""
    n = len(inner)
    if n < 20:
        return None
    version = inner[0] >> 4
    if version == 4:
        ihl = (inner[0] & 0x0F) << 2
        proto = inner[9]
        src, dst = bytes(inner[12:16]), bytes(inner[16:20])
        l4 = -1 if _U16.unpack_from(inner, 6)[0] & 0x3FFF else ihl  # a fragment has no ports
        icmp, echo = _IPPROTO_ICMP, (0, 8)
    elif version == 6 and n >= 40:
        proto = inner[6]
        src, dst = bytes(inner[8:24]), bytes(inner[24:40])
        l4 = 40
        icmp, echo = _IPPROTO_ICMPV6, (128, 129)
    else:
        return None
    sport = dport = 0
    if 0 <= l4 <= n - 8:
        if proto in (_IPPROTO_TCP, _IPPROTO_UDP):
            sport, dport = struct.unpack_from("!HH", inner, l4)
        elif proto == icmp and inner[l4] in echo:
            sport = dport = _U16.unpack_from(inner, l4 + 4)[0]
    return (version, proto, src, sport, dst, dport)


def flow_key(inner: Buffer) -> FlowKey | None:
    """The 5-tuple with its two ends in a fixed order, so both directions share one key."""
    t = five_tuple(inner)
    if t is None:
        return None
    version, proto, src, sport, dst, dport = t
    if (src, sport) <= (dst, dport):
        return (version, proto, src, sport, dst, dport)
    return (version, proto, dst, dport, src, sport)


def geneve_header(
    protocol_type: int, endpoint_id: int, attachment_id: int, flow_cookie: int
) -> bytes:
    """Geneve header + the three GWLB options, exactly as GWLB sends them (40 bytes).

    Version 0, Opt Len 8 words, no O or C bit, VNI 0; then class 0x0108 type 1 (endpoint id,
    2 words), type 2 (attachment id, 2 words), type 3 (flow cookie, 1 word).
    """
    o = GWLB_OPTION_CLASS
    return _GWLB_GENEVE.pack(
        8, 0, protocol_type, 0,
        o, 1, 2, endpoint_id,
        o, 2, 2, attachment_id,
        o, 3, 1, flow_cookie,
    )  # fmt: skip


def encapsulate(
    inner: Buffer,
    geneve: bytes,
    *,
    src: bytes,
    dst: bytes,
    source_port: int,
    identification: int = 0,
    udp_checksum: bool = False,
) -> bytearray:
    """outer IPv4 (``src`` -> ``dst``, 4-byte addresses) | UDP -> 6081 | ``geneve`` | ``inner``."""
    ulen = 8 + len(geneve) + len(inner)
    total = 20 + ulen
    frame = bytearray(total)
    _OUTER.pack_into(
        frame, 0, 0x45, 0, total, identification & 0xFFFF, 0, 64, _IPPROTO_UDP, 0, src, dst,
        source_port, GENEVE_PORT, ulen, 0,
    )  # fmt: skip
    frame[28 : 28 + len(geneve)] = geneve
    frame[28 + len(geneve) :] = inner
    _U16.pack_into(frame, 10, checksum(memoryview(frame)[:20]))
    if udp_checksum:
        c = checksum(memoryview(frame)[20:], _pseudo(src + dst, _IPPROTO_UDP, ulen))
        _U16.pack_into(frame, 26, c or 0xFFFF)  # 0 on the wire means "no checksum"
    return frame


@dataclass(frozen=True)
class Expected:
    """What a correct reply of one flow looks like from the outside."""

    gwlb: bytes  # the GWLB address (4 bytes): the reply's outer destination
    appliance: bytes  # the appliance address: the reply's outer source
    source_port: int  # GWLB's outer UDP source port for the flow, kept in the reply
    geneve: bytes  # the Geneve header with options, echoed byte for byte


def check_reply(frame: Buffer, expected: Expected) -> str | None:
    """None if ``frame`` (an outer IPv4 packet) is a correct reply, else why it is not.

    GWLB.md, "What the appliance must send back": addresses swapped, UDP source port kept and
    destination 6081, Geneve header and options unchanged, every length consistent and every
    checksum valid (the outer UDP one may be 0).
    """
    reason = check_outer(frame, expected)
    if reason is not None:
        return reason
    start = ((frame[0] & 0x0F) << 2) + 8 + len(expected.geneve)
    ptype = _U16.unpack_from(expected.geneve, 2)[0]
    return check_inner(memoryview(frame)[start : _U16.unpack_from(frame, 2)[0]], ptype)


def check_outer(frame: Buffer, expected: Expected) -> str | None:
    """:func:`check_reply` up to the inner packet: outer IPv4, UDP and the Geneve bytes."""
    n = len(frame)
    if n < 28:
        return "outer-truncated"
    if frame[0] >> 4 != 4:
        return "outer-version"
    ihl = (frame[0] & 0x0F) << 2
    total = _U16.unpack_from(frame, 2)[0]
    if ihl < 20 or total < ihl + 8:
        return "outer-length"
    if total > n:
        return "outer-truncated"
    if total < n and n > 46:  # only Ethernet's minimum-frame padding may follow the packet
        return "outer-length"
    frame = memoryview(frame)[:total]
    if not checksum_ok(frame[:ihl]):
        return "outer-ipv4-checksum"
    if frame[9] != _IPPROTO_UDP:
        return "outer-protocol"
    if frame[12:16] != expected.appliance or frame[16:20] != expected.gwlb:
        return "outer-addresses"
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", frame, ihl)
    if sport != expected.source_port or dport != GENEVE_PORT:
        return "outer-udp-ports"
    if ulen != total - ihl:
        return "outer-udp-length"
    # RFC 768: 0 means no checksum (allowed over IPv4); any other value must be right.
    if ucsum and not checksum_ok(frame[ihl:], _pseudo(frame[12:20], _IPPROTO_UDP, ulen)):
        return "outer-udp-checksum"
    g = ihl + 8
    if frame[g : g + len(expected.geneve)] != expected.geneve:
        return "geneve-changed"
    return None


def check_inner(packet: Buffer, protocol_type: int = ETH_P_IPV4) -> str | None:
    """None if the inner IPv4/IPv6 ``packet`` has consistent lengths and valid checksums."""
    n = len(packet)
    if protocol_type == ETH_P_IPV4:
        if n < 20:
            return "inner-truncated"
        if packet[0] >> 4 != 4:
            return "inner-version"
        ihl = (packet[0] & 0x0F) << 2
        total = _U16.unpack_from(packet, 2)[0]
        if ihl < 20 or total < ihl or total != n:
            return "inner-length"
        if not checksum_ok(memoryview(packet)[:ihl]):
            return "inner-ipv4-checksum"
        if _U16.unpack_from(packet, 6)[0] & 0x3FFF:
            return None  # a fragment: its L4 checksum covers bytes that are not here
        proto = packet[9]
        l4 = memoryview(packet)[ihl:]
        return _check_l4(proto, l4, _pseudo(packet[12:20], proto, len(l4)), v6=False)
    if protocol_type == ETH_P_IPV6:
        if n < 40:
            return "inner-truncated"
        if packet[0] >> 4 != 6:
            return "inner-version"
        if 40 + _U16.unpack_from(packet, 4)[0] != n:
            return "inner-length"
        proto = packet[6]
        l4 = memoryview(packet)[40:]
        return _check_l4(proto, l4, _pseudo(packet[8:40], proto, len(l4)), v6=True)
    return None  # not IP: nothing here to check


def _check_l4(proto: int, l4: memoryview, pseudo: int, *, v6: bool) -> str | None:
    n = len(l4)
    if proto == _IPPROTO_UDP:
        if n < 8:
            return "inner-truncated"
        if _U16.unpack_from(l4, 4)[0] != n:
            return "inner-udp-length"
        if _U16.unpack_from(l4, 6)[0] == 0:
            return "inner-udp-checksum" if v6 else None  # RFC 8200 8.1: mandatory over IPv6
        return None if checksum_ok(l4, pseudo) else "inner-udp-checksum"
    if proto == _IPPROTO_TCP:
        if n < 20:
            return "inner-truncated"
        if not 20 <= (l4[12] >> 4) << 2 <= n:
            return "inner-tcp-offset"
        return None if checksum_ok(l4, pseudo) else "inner-tcp-checksum"
    if proto == _IPPROTO_ICMP and not v6:
        if n < 4:
            return "inner-truncated"
        return None if checksum_ok(l4) else "inner-icmp-checksum"  # no pseudo-header
    if proto == _IPPROTO_ICMPV6 and v6:
        if n < 4:
            return "inner-truncated"
        return None if checksum_ok(l4, pseudo) else "inner-icmp-checksum"
    return None  # another protocol (or an IPv6 extension header): not checked


def _identity(inner: Buffer) -> bytes:
    """Bytes that identify a packet even after an appliance edits its payload.

    The source address (an echo reply has its request's id and sequence: the direction tells
    them apart), the IPv4 ID, and for TCP the sequence number, for ICMP the echo identifier and
    sequence. Used to pair an edited reply with its request; UDP over IPv6 has only the source.
    """
    if len(inner) < 28:
        return b""
    if inner[0] >> 4 == 4:
        ihl = (inner[0] & 0x0F) << 2
        ident, proto, l4 = bytes(inner[12:16]) + bytes(inner[4:6]), inner[9], ihl
    else:
        ident, proto, l4 = bytes(inner[8:24]), inner[6], 40
    if proto in (_IPPROTO_TCP, _IPPROTO_ICMP, _IPPROTO_ICMPV6) and len(inner) >= l4 + 8:
        return ident + bytes(inner[l4 + 4 : l4 + 8])
    return ident


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


# -- the data plane ---------------------------------------------------------------------------

#: Requests kept per flow waiting for their reply; older ones count as not returned. Also how
#: many answered replies per flow are remembered to recognise a duplicate, and how many
#: requests pushed out are remembered to pair a late reply with.
MAX_PENDING = 4096
#: Frames read from one fd before looking at the others: under a flood from the tun the
#: replies must still be read, or the capture socket overflows (the emulator's own loss).
DRAIN_BATCH = 64


class Pending:
    """A flow's requests waiting for their reply, oldest first, and the replies already paired.

    Every lookup is O(1) whatever the backlog: an appliance that drops many packets leaves up
    to MAX_PENDING requests waiting, and each reply must still be paired at line rate. Requests
    are numbered; the indexes by hash of the bytes and by identity hold the numbers, oldest
    first (OrderedDict: its first item is found in O(1) after many deletions, a dict's is not).
    """

    __slots__ = (
        "_answered",
        "_answered_identity",
        "_by_hash",
        "_by_identity",
        "_expired",
        "_next",
        "_requests",
    )

    def __init__(self) -> None:
        self._requests: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # (inner, identity)
        self._by_hash: dict[int, OrderedDict[int, None]] = {}
        self._by_identity: dict[bytes, OrderedDict[int, None]] = {}
        # hash(reply) -> hash(request) of the last MAX_PENDING pairs. Hashes, not the packets,
        # to keep memory small; a false match needs a 64-bit collision with a recent reply.
        self._answered: OrderedDict[int, int] = OrderedDict()
        self._answered_identity: OrderedDict[bytes, None] = OrderedDict()
        self._expired: OrderedDict[int, None] = OrderedDict()  # hash(request) of those pushed out
        self._next = 0

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, inner: bytes) -> None:
        if len(self._requests) >= MAX_PENDING:
            self._expired[hash(self._remove(next(iter(self._requests))))] = None
            if len(self._expired) > MAX_PENDING:
                self._expired.popitem(last=False)
        n = self._next
        self._next += 1
        identity = _identity(inner)
        self._requests[n] = (inner, identity)
        self._by_hash.setdefault(hash(inner), OrderedDict())[n] = None
        self._by_identity.setdefault(identity, OrderedDict())[n] = None

    def take(self, inner: bytes) -> bool:
        """Forget the oldest request with exactly these bytes; False if none waits."""
        for n in self._by_hash.get(hash(inner), ()):
            if self._requests[n][0] == inner:  # nearly always the first: hashes seldom collide
                self._remove(n)
                return True
        return False

    def take_late(self, inner: bytes) -> bool:
        """Whether these are the bytes of a request pushed out by newer ones; forget it if so.

        A reply more than MAX_PENDING requests late is still a reply, not an edit of another.
        """
        if hash(inner) not in self._expired:
            return False
        del self._expired[hash(inner)]
        return True

    def repeated(self, reply: bytes) -> bool:
        """Whether ``reply`` repeats one already paired whose request is not waiting again.

        A request sent twice (a retransmission) may be answered twice; a reply sent twice may
        not, and must not take another request's place.
        """
        request = self._answered.get(hash(reply))
        return request is not None and request not in self._by_hash

    def take_edited(self, reply: bytes) -> bytes | None:
        """Forget and return the request an edited ``reply`` answers; None if it answers none.

        By identity (source, IPv4 ID, TCP sequence, ICMP echo id and sequence) if a waiting
        request has the reply's. None if only an answered one had it: a changed copy of a
        reply (say, a flipped IPv6 flow label, which no checksum covers). Else the oldest, for
        an appliance that rewrites the IPv4 ID.
        """
        identity = _identity(reply)
        numbers = self._by_identity.get(identity)
        if numbers:
            n = next(iter(numbers))
        elif identity and identity in self._answered_identity:
            return None
        elif self._requests:
            n = next(iter(self._requests))
        else:
            return None
        return self._remove(n)

    def answered(self, request: bytes, reply: bytes) -> None:
        """Remember a pair (the last MAX_PENDING), to recognise copies of the reply."""
        key, identity = hash(reply), _identity(reply)
        self._answered[key] = hash(request)
        self._answered.move_to_end(key)
        if len(self._answered) > MAX_PENDING:
            self._answered.popitem(last=False)
        self._answered_identity[identity] = None
        self._answered_identity.move_to_end(identity)
        if len(self._answered_identity) > MAX_PENDING:
            self._answered_identity.popitem(last=False)

    def _remove(self, n: int) -> bytes:
        inner, identity = self._requests.pop(n)
        same_bytes = self._by_hash[hash(inner)]
        del same_bytes[n]
        if not same_bytes:
            del self._by_hash[hash(inner)]
        same_identity = self._by_identity[identity]
        del same_identity[n]
        if not same_identity:
            del self._by_identity[identity]
        return inner


class Flow:
    """One flow as GWLB sees it: a cookie and an outer source port for both directions."""

    __slots__ = (
        "expected",
        "failed",
        "flow_cookie",
        "initiator",
        "key",
        "modified",
        "pending",
        "returned",
        "sent",
        "source_port",
    )

    def __init__(
        self,
        key: FlowKey,
        initiator: FiveTuple,
        flow_cookie: int,
        source_port: int,
        expected: Expected,
    ) -> None:
        self.key = key
        self.initiator = initiator  # the first packet's 5-tuple: who spoke first
        self.flow_cookie = flow_cookie
        self.source_port = source_port
        self.expected = expected
        self.sent = self.returned = self.modified = self.failed = 0
        self.pending = Pending()

    def describe(self) -> str:
        version, proto, src, sport, dst, dport = self.initiator
        name = _PROTO_NAMES.get(proto, f"proto {proto}")
        a, b = _address(src), _address(dst)
        if version == 6:
            a, b = f"[{a}]", f"[{b}]"
        if proto in (_IPPROTO_ICMP, _IPPROTO_ICMPV6):
            return f"{name} {a} <-> {b}" + (f" id {sport}" if sport else "")
        if proto in (_IPPROTO_TCP, _IPPROTO_UDP):
            return f"{name} {a}:{sport} <-> {b}:{dport}"
        return f"{name} {a} <-> {b}"

    def as_dict(self) -> dict[str, Any]:
        version, proto, src, sport, dst, dport = self.initiator
        return {
            "flow": self.describe(),
            "ip_version": version,
            "protocol": _PROTO_NAMES.get(proto, str(proto)),
            "src": _address(src),
            "src_port": sport,
            "dst": _address(dst),
            "dst_port": dport,
            "flow_cookie": f"0x{self.flow_cookie:08x}",
            "source_port": self.source_port,
            "sent": self.sent,
            "returned": self.returned,
            "modified": self.modified,
            "failed": self.failed,
            "not_returned": self.sent - self.returned,
        }


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
    ) -> None:
        a = config.addressing
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
        self.flows: dict[FlowKey, Flow] = {}
        self._by_cookie: dict[int, Flow] = {}
        self._ports: set[int] = set()
        self.sent = self.received = self.returned = self.verified = 0
        self.modified = self.delivered = self.passed_through_invalid = 0
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
                tun = _open_tun(TUN_NAME)
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
        flow = self.flows.get(key)
        if flow is None:
            flow = self._new_flow(key, t, ptype)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        frame = encapsulate(
            packet,
            flow.expected.geneve,
            src=self._gwlb,
            dst=self._appliance,
            source_port=flow.source_port,
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

    def _new_flow(self, key: FlowKey, initiator: FiveTuple, ptype: int) -> Flow:
        rnd = self._random
        cookie = rnd.getrandbits(32)
        while cookie == 0 or cookie in self._by_cookie:
            cookie = rnd.getrandbits(32)
        port = rnd.randrange(32768, 61000)  # GWLB's source ports seen in captures are high
        while port in self._ports:
            port = rnd.randrange(32768, 61000)
        c = self.config
        geneve = geneve_header(ptype, c.endpoint_id, c.attachment_id, cookie)
        flow = Flow(
            key, initiator, cookie, port, Expected(self._gwlb, self._appliance, port, geneve)
        )
        self.flows[key] = flow
        self._by_cookie[cookie] = flow
        self._ports.add(port)
        return flow

    # -- appliance -> GWLB ---------------------------------------------------------------------

    def _from_appliance(self, frame: bytes) -> None:
        if len(frame) < 28 or frame[0] >> 4 != 4 or frame[9] != _IPPROTO_UDP:
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
        expected = flow.expected
        reason = check_outer(frame, expected)
        if reason is not None:
            self._fail(flow, reason)
            return
        inner = frame[ihl + 8 + GWLB_GENEVE_LENGTH : _U16.unpack_from(frame, 2)[0]]
        reason = check_inner(inner, _U16.unpack_from(expected.geneve, 2)[0])
        if reason is None and flow_key(inner) != flow.key:
            reason = "inner-flow-changed"
        # Only a reply that passes, or one that is its request's own bytes, answers a request:
        # a broken or repeated one takes nothing, so the genuine replies still pair right.
        pending = flow.pending
        if pending.take(inner) or pending.take_late(inner):
            request, changed = inner, False
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
        try:
            os.write(self._tun, inner)
        except OSError as err:
            self._count(self.errors, f"tun-{errno.errorcode.get(err.errno or 0, err.errno)}")
            return
        self.delivered += 1

    def _flow_of_reply(self, frame: bytes, ihl: int) -> Flow | None:
        at = ihl + 8 + _COOKIE_AT
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
                "passed_through_invalid": self.passed_through_invalid,
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
                "flows": [flow.as_dict() for flow in self.flows.values()],
            }


def format_summary(summary: dict[str, Any]) -> str:
    """The data plane's summary as a few readable lines."""
    s = summary
    lines = [
        f"emulator: sent {s['sent']} to the appliance, {s['returned']} returned "
        f"({s['modified']} modified), {s['not_returned']} not returned (dropped"
        + (", or only failed replies" if s["failed"] else "")
        + f"), {s['verified']} passed every check, {s['failed']} failed"
    ]
    if s["failures"]:
        lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in s["failures"].items()))
    if s["passed_through_invalid"]:
        lines.append(
            f"  passed through invalid: {s['passed_through_invalid']} (already bad from the "
            "tun and returned unchanged: not the appliance's failure)"
        )
    if s["capture_dropped"]:
        lines.append(
            f"  lost by the emulator: {s['capture_dropped']} frames from the appliance "
            "overflowed its capture socket (counted as not returned, not as the appliance's)"
        )
    for key, label in (
        ("tun_invalid", "bad packets from the tun"),
        ("errors", "errors"),
    ):
        if s[key]:
            lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in s[key].items()))
    if s["data_plane_error"]:
        lines.append(f"  data plane died: {s['data_plane_error']}")
    for f in s["flows"]:
        lines.append(
            f"  {f['flow']}: cookie {f['flow_cookie']}, udp src {f['source_port']}; "
            f"sent {f['sent']}, returned {f['returned']}, modified {f['modified']}, "
            f"failed {f['failed']}"
        )
    return "\n".join(lines)


# -- the emulator: topology + data plane + processes -------------------------------------------


@dataclass
class HealthResult:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


class Emulator:
    """The whole local GWLB: namespaces, routing, data plane, and the processes run inside.

    Use as a context manager; everything created is removed on exit, whatever happened::

        with Emulator() as emu:
            emu.start_appliance()
            emu.wait_healthy()
            emu.run("client", ["ping", "-c", "3", emu.addressing.server])
            print(format_summary(emu.summary()))
    """

    def __init__(self, config: EmulatorConfig | None = None, names: Names | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.addressing = self.config.addressing
        self.names = names or Names()
        self.data_plane: DataPlane | None = None
        self.appliance: subprocess.Popen[bytes] | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self.tx_checksum_offload: bool | None = None  # of the appliance's interface, after setup
        self.final_summary: dict[str, Any] | None = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        except EmulatorError as err:
            if exc is None:
                raise
            print(f"geneve.emulator: {err}", file=sys.stderr)  # do not hide the first error

    # -- bring up -----------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._build()
            self.data_plane = DataPlane.open(self.config, self.names.gwlb)
            self._divert()
            self.data_plane.start()
        except BaseException:
            self.stop()
            raise

    def _build(self) -> None:
        a, n, c = self.addressing, self.names, self.config
        plen, plen6 = str(a.prefix_length), str(a.prefix6_length)
        for name in n.all():
            # Recorded first: a signal while (or right after) ip runs must not orphan it.
            self._created.append(name)
            _ip("netns", "add", name)
            with netns(name):
                # No duplicate address detection: addresses usable at once (isolated links).
                for scope in ("all", "default"):
                    _sysctl(f"net/ipv6/conf/{scope}/accept_dad", 0)
        with netns(n.gwlb):
            _sysctl("net/ipv4/ip_forward", 1)
            _sysctl("net/ipv6/conf/all/forwarding", int(c.ipv6))
            # Strict reverse-path filtering drops what re-enters through the address-less tun
            # (GWLB.md); a new namespace may inherit it from the host, so set it here.
            for scope in ("all", "default"):
                _sysctl(f"net/ipv4/conf/{scope}/rp_filter", 0)
        links = (
            ("client", n.client, a.client_gateway, a.client, a.client6_gateway, a.client6),
            ("server", n.server, a.server_gateway, a.server, a.server6_gateway, a.server6),
            ("appliance", n.appliance, a.gwlb, a.appliance, "", ""),
        )
        for role, ns, gw, addr, gw6, addr6 in links:
            mtu = str(c.appliance_mtu if role == "appliance" else c.inner_mtu)
            ifname = GWLB_TO[role]
            _ip("-n", n.gwlb, "link", "add", ifname, "mtu", mtu, "type", "veth",
                "peer", "name", PEER_IFNAME, "mtu", mtu, "netns", ns)  # fmt: skip
            _ip("-n", n.gwlb, "addr", "add", f"{gw}/{plen}", "dev", ifname)
            _ip("-n", ns, "addr", "add", f"{addr}/{plen}", "dev", PEER_IFNAME)
            if c.ipv6 and addr6:
                _ip("-n", n.gwlb, "addr", "add", f"{gw6}/{plen6}", "dev", ifname, "nodad")
                _ip("-n", ns, "addr", "add", f"{addr6}/{plen6}", "dev", PEER_IFNAME, "nodad")
            for where, dev in ((n.gwlb, ifname), (ns, PEER_IFNAME), (ns, "lo")):
                _ip("-n", where, "link", "set", dev, "up")
            if role != "appliance":
                _ip("-n", ns, "route", "add", "default", "via", gw)
                if c.ipv6:
                    _ip("-n", ns, "-6", "route", "add", "default", "via", gw6)
        _ip("-n", n.gwlb, "link", "set", "lo", "up")
        with netns(n.gwlb):
            for ifname in GWLB_TO.values():
                _sysctl(f"net/ipv4/conf/{ifname}/rp_filter", 0)
            # The tun gets no IPv6 link-local address, so it sends no chatter of its own.
            _sysctl("net/ipv6/conf/default/addr_gen_mode", 1)
        with netns(n.appliance):
            try:
                self.tx_checksum_offload = _tx_checksum(PEER_IFNAME, False)
            except OSError:
                self.tx_checksum_offload = None  # no ethtool ioctl here: replies are checked anyway

    def _divert(self) -> None:
        """Route client<->server packets through the tun (and so through the data plane)."""
        a, n, c = self.addressing, self.names, self.config
        table = str(DIVERT_TABLE)
        with netns(n.gwlb):
            _sysctl(f"net/ipv4/conf/{TUN_NAME}/rp_filter", 0)
        _ip("-n", n.gwlb, "link", "set", TUN_NAME, "mtu", str(c.inner_mtu), "up")
        families = [("-4", a.client, a.server)]
        if c.ipv6:
            families.append(("-6", a.client6, a.server6))
        for family, client, server in families:
            _ip("-n", n.gwlb, family, "route", "add", "default", "dev", TUN_NAME, "table", table)
            for ifname, to in ((GWLB_TO["client"], server), (GWLB_TO["server"], client)):
                _ip("-n", n.gwlb, family, "rule", "add", "iif", ifname,
                    "to", a.network(to), "lookup", table, "pref", "100")  # fmt: skip

    # -- processes inside the namespaces --------------------------------------------------------

    def command(self, role: Role, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the ``role`` namespace."""
        return ["ip", "netns", "exec", self.names[role], *argv]

    def run(
        self, role: Role, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace to completion (stdout and stderr captured as text)."""
        proc = subprocess.run(
            self.command(role, argv),
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
            preexec_fn=_die_with_parent,
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def spawn(self, role: Role, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a command in a namespace; it is stopped (by pid) when the emulator stops."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.command(role, argv), preexec_fn=_die_with_parent, **kwargs
        )
        self._processes.append(proc)
        return proc

    def appliance_command(self, rules: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        argv = [sys.executable, "-m", "geneve.appliance", "--health-host", "0.0.0.0",
                "--allow-from", f"{self.addressing.gwlb}/32"]  # fmt: skip
        if rules:
            argv += ["--rules", rules]
        return argv + list(extra)

    def start_appliance(
        self, argv: Sequence[str] | None = None, *, log: Any = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """Start the appliance under test (default ``python -m geneve.appliance``)."""
        self.appliance = self.spawn(
            "appliance", argv or self.appliance_command(), stdout=log, stderr=subprocess.STDOUT
        )
        return self.appliance

    def http_get(self, path: str = "/", port: int = 8080, timeout: float = 2.0) -> HealthResult:
        """GET ``path`` on the appliance, from the gwlb namespace (as GWLB's health checks)."""
        host = self.addressing.appliance
        t0 = time.monotonic()
        with netns(self.names.gwlb):
            sock = socket.create_connection((host, port), timeout=timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return HealthResult(resp.status, body, time.monotonic() - t0)

    def wait_healthy(self, port: int = 8080, timeout: float = 15.0) -> HealthResult:
        """Poll ``GET /`` until it answers 200; raise if the appliance exits or time runs out."""
        t0 = time.monotonic()
        last = "no answer"
        while time.monotonic() - t0 < timeout:
            if self.appliance is not None and self.appliance.poll() is not None:
                raise EmulatorError(f"the appliance {describe_exit(self.appliance.returncode)}")
            try:
                result = self.http_get("/", port, timeout=1.0)
            except OSError as err:
                last = str(err)
            else:
                if result.status == 200:
                    result.seconds = time.monotonic() - t0
                    return result
                last = f"HTTP {result.status}"
            time.sleep(0.1)
        raise EmulatorError(f"the appliance was not healthy after {timeout:.0f} s ({last})")

    def stop_appliance(self, timeout: float = 5.0) -> tuple[int | None, float]:
        """SIGTERM the appliance; returns its exit status (None: had to be killed) and seconds."""
        proc = self.appliance
        if proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.terminate()
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            rc = None
        return rc, time.monotonic() - t0

    def udp_port_bound(self, role: Role, port: int) -> bool:
        """Whether a socket in ``role``'s namespace is bound to UDP ``port``."""
        lines: list[str] = []
        with netns(self.names[role]):
            for table in ("udp", "udp6"):
                with open(f"/proc/thread-self/net/{table}") as f:
                    lines += f.read().splitlines()[1:]
        # "sl local_address rem_address ...": the local address is hex "ADDR:PORT".
        return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in lines)

    def summary(self) -> dict[str, Any]:
        if self.data_plane is None:
            return self.final_summary or {}
        return self.data_plane.summary()

    # -- tear down ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process started here (by pid), the data plane, and delete the namespaces.

        Idempotent, and safe after a partial start. Signals that arrive meanwhile are held
        until the end, so a second Ctrl-C cannot leave half a topology behind.
        """
        with _signals_held():
            for proc in self._processes:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 3
            for proc in self._processes:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self._processes.clear()
            if self.data_plane is not None:
                self.data_plane.stop()
                self.final_summary = self.data_plane.summary()
                self.data_plane = None
            problems = []
            for name in self._created:
                leftover = _leftover_pids(name)
                deleted = subprocess.run(
                    ["ip", "netns", "del", name], capture_output=True, text=True, check=False
                )
                # A name recorded whose ip netns add never ran is not a problem.
                if deleted.returncode and os.path.lexists(f"/run/netns/{name}"):
                    problems.append(f"{name}: {deleted.stderr.strip()}")
                elif leftover:
                    # Not ours (we stopped ours above): say so, and leave them running.
                    print(
                        f"geneve.emulator: deleted {name}, but pids {leftover} still run in it",
                        file=sys.stderr,
                    )
            self._created.clear()
        if problems:
            raise EmulatorError("teardown: " + "; ".join(problems))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP for the block (main thread only), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        for signum in caught[:1]:
            signal.raise_signal(signum)


# -- the demo ---------------------------------------------------------------------------------


@dataclass
class Check:
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.text}"


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "checks": [{"ok": c.ok, "text": c.text} for c in self.checks],
            "summary": self.summary,
        }


_PING_REPLY = re.compile(r"bytes from .*icmp_seq=(\d+)")


def run_demo(
    config: EmulatorConfig | None = None,
    *,
    appliance: Sequence[str] | None = None,
    rules: str | None = None,
    out: Callable[[str], None] | None = None,
) -> DemoResult:
    """The original GWLB blog demo, with real tools, through the emulator and the appliance.

    ``ping`` loses seq 5 and 10; ``drop me`` over UDP port 3000 never arrives; ``weakly typed
    programming language`` arrives as ``strongly typed programming language``; the health
    endpoint answers 200 with JSON. ``out`` receives each check as it is decided.
    """
    result = DemoResult()
    say = out or (lambda line: None)
    t0 = time.monotonic()

    def check(ok: bool, text: str) -> None:
        result.checks.append(Check(ok, text))
        say(result.checks[-1].line())

    emu = Emulator(config)
    a = emu.addressing
    # The appliance's output goes to a temporary file, shown if something went wrong.
    with tempfile.TemporaryFile() as log_file:
        try:
            with emu:
                say(
                    f"topology: client {a.client} -> gwlb (tun, Geneve to {a.appliance}:"
                    f"{GENEVE_PORT}) -> server {a.server}; namespaces {emu.names.base}-*"
                )
                emu.start_appliance(appliance or emu.appliance_command(rules), log=log_file)
                health = emu.wait_healthy()
                say(f"appliance healthy after {health.seconds:.1f} s")
                _demo_ping(emu, check)
                _demo_udp(emu, check)
                _demo_health(emu, check)
                time.sleep(0.2)  # let the last replies come back before counting
                _demo_summary(emu.summary(), check)
                rc, seconds = emu.stop_appliance()
                check(
                    rc == 0 and seconds <= 2.0,
                    f"appliance stopped on SIGTERM: exit status {rc} after {seconds:.1f} s "
                    "(expected 0 within 2 s)",
                )
        except (EmulatorError, OSError, subprocess.SubprocessError) as err:
            result.error = f"{type(err).__name__}: {err}"
            say(f"✗ demo failed: {result.error}")
        if not result.ok:
            log_file.seek(0)
            text = log_file.read().decode(errors="replace").strip()
            if text:
                say("appliance output:\n  " + "\n  ".join(text.splitlines()[-20:]))
    if emu.final_summary:
        result.summary = emu.final_summary
    result.seconds = time.monotonic() - t0
    return result


def _demo_ping(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    server = emu.addressing.server
    proc = emu.run("client", ["ping", "-n", "-c", "10", "-i", "0.2", "-W", "1", server], timeout=15)
    answered = sorted({int(m.group(1)) for m in _PING_REPLY.finditer(proc.stdout)})
    lost = sorted(set(range(1, 11)) - set(answered))
    check(
        lost == [5, 10],
        f"ping -c 10 {server}: {len(answered)} of 10 answered, lost seq "
        f"{', '.join(map(str, lost)) or 'none'} (expected 5 and 10)",
    )


def _demo_udp(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    server, port = emu.addressing.server, DEMO_SERVER_PORT
    listener = emu.spawn(
        "server", ["nc", "-u", "-l", str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 3
    while not emu.udp_port_bound("server", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    # One client port for both messages: nc -l answers only the first peer it hears from.
    send = ["nc", "-u", "-q", "0", "-p", str(DEMO_CLIENT_PORT), server, str(port)]
    emu.run("client", send, input=b"drop me\n", timeout=5)
    time.sleep(0.3)
    emu.run("client", send, input=b"weakly typed programming language\n", timeout=5)
    assert listener.stdout is not None
    os.set_blocking(listener.stdout.fileno(), False)
    got = b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and b"language" not in got:
        chunk = listener.stdout.read()
        if chunk:
            got += chunk
        time.sleep(0.05)
    time.sleep(0.2)  # anything else in flight
    got += listener.stdout.read() or b""
    listener.terminate()
    listener.wait(5)
    text = got.decode(errors="replace")
    check(
        "drop me" not in text,
        f"nc -u {server} {port} 'drop me': "
        + ("dropped, the server received nothing" if "drop me" not in text else "DELIVERED"),
    )
    lines = [line for line in text.splitlines() if line]
    check(
        lines == ["strongly typed programming language"],
        f"nc -u {server} {port} 'weakly typed programming language': server received {lines!r}",
    )


def _demo_health(emu: Emulator, check: Callable[[bool, str], None]) -> None:
    url = f"http://{emu.addressing.appliance}:8080/"
    try:
        result = emu.http_get("/")
        body: Any = result.json()
    except (OSError, ValueError, http.client.HTTPException) as err:
        check(False, f"health GET {url}: {err}")
        return
    text = json.dumps(body, sort_keys=True)
    if len(text) > 300:
        text = text[:297] + "..."
    check(result.status == 200, f"health GET {url}: {result.status} {text}")


def _demo_summary(summary: dict[str, Any], check: Callable[[bool, str], None]) -> None:
    failures = summary["failures"]
    check(
        summary["failed"] == 0 and summary["returned"] > 0 and not summary["data_plane_error"],
        f"emulator: {summary['verified']} of {summary['returned']} replies passed every check"
        + (f" (failures: {failures})" if failures else "")
        + (" (the appliance returned nothing)" if not summary["returned"] else ""),
    )


# -- the long-running mode ----------------------------------------------------------------------


def serve(
    emu: Emulator,
    *,
    duration: float | None,
    out: Callable[[str], None],
    wait_health: bool,
) -> None:
    """Print how to use the running emulator, then wait for a signal or ``duration``.

    Raises :class:`EmulatorError` if the appliance exits (or never gets healthy): the run has
    then failed, whatever the appliance's exit status.
    """
    a, n = emu.addressing, emu.names
    out(f"GWLB emulator up (namespaces {n.base}-*)")
    out(f"  client     {n.client}  {a.client} {a.client6 if emu.config.ipv6 else ''}")
    out(f"  server     {n.server}  {a.server} {a.server6 if emu.config.ipv6 else ''}")
    out(f"  appliance  {n.appliance}  {a.appliance}, GWLB at {a.gwlb} sends to UDP {GENEVE_PORT}")
    out("try:")
    out(f"  ip netns exec {n.client} ping {a.server}")
    out(f"  ip netns exec {n.server} nc -u -l {DEMO_SERVER_PORT}")
    if emu.appliance is None:
        out(f"  ip netns exec {n.appliance} {sys.executable} -m geneve.appliance  # yours")
    if wait_health:
        health = emu.wait_healthy()
        out(f"appliance healthy after {health.seconds:.1f} s: {health.body.decode()[:200]}")
    out("Ctrl-C to stop" + (f" (stopping after {duration:g} s)" if duration else ""))
    end = None if duration is None else time.monotonic() + duration
    while True:
        # Checked once more at the end, so a death in the last moments is not missed.
        if emu.appliance is not None and emu.appliance.poll() is not None:
            raise EmulatorError(f"the appliance {describe_exit(emu.appliance.returncode)}")
        left = 0.2 if end is None else min(0.2, end - time.monotonic())
        if left <= 0:
            return
        time.sleep(left)


def describe_exit(returncode: int) -> str:
    """A child's exit as words: ``exited with status 1``, ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"
