"""Reading and writing capture files: classic pcap (both byte orders, µs and ns) and pcapng.

Only what replaying a capture needs: records with their timestamps, the link type, and where
the IPv4 header starts in each record for the link types GWLB traffic is captured on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "CaptureError",
    "PcapWriter",
    "Record",
    "ip_offset",
    "link_header",
    "read_capture",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_SHB_BYTES = b"\x0a\x0d\x0d\x0a"  # a palindrome: the same in either byte order
_PCAPNG_BOM = 0x1A2B3C4D


class CaptureError(Exception):
    """Not a capture this module can read, cut short, or a timestamp pcap cannot hold."""


@dataclass(slots=True)
class Record:
    """One captured packet: timestamp in nanoseconds, link type, bytes, original length."""

    ts_ns: int
    linktype: int
    data: bytes
    orig_len: int


@dataclass(slots=True)
class CaptureInfo:
    linktype: int
    nanosecond: bool
    format: str  # "pcap" or "pcapng"


def read_capture(stream: BinaryIO) -> tuple[CaptureInfo, Iterator[Record]]:
    """Open a pcap or pcapng stream: its first link type and an iterator over its records."""
    head = stream.read(24)
    if len(head) < 4:
        raise CaptureError("file is too short to be a capture")
    (magic_le,) = struct.unpack("<I", head[:4])
    if magic_le == _PCAPNG_SHB:
        return _read_pcapng(stream, head)
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", head[:4])
        if magic in (_MAGIC_US, _MAGIC_NS):
            break
    else:
        raise CaptureError(f"unknown capture magic 0x{magic_le:08x}")
    if len(head) < 24:
        raise CaptureError("pcap global header is cut short")
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
    nano = magic == _MAGIC_NS
    info = CaptureInfo(linktype, nano, "pcap")
    return info, _pcap_records(stream, order, nano, linktype)


def _pcap_records(stream: BinaryIO, order: str, nano: bool, linktype: int) -> Iterator[Record]:
    rec = struct.Struct(order + "IIII")
    scale = 1 if nano else 1000
    while True:
        head = stream.read(16)
        if not head:
            return
        if len(head) < 16:
            raise CaptureError("record header cut short")
        sec, frac, incl, orig = rec.unpack(head)
        if incl > 0x40000:
            raise CaptureError(f"record length {incl} is not plausible")
        data = stream.read(incl)
        if len(data) < incl:
            raise CaptureError("record data cut short")
        yield Record(sec * 1_000_000_000 + frac * scale, linktype, data, orig)


def _read_pcapng(stream: BinaryIO, head: bytes) -> tuple[CaptureInfo, Iterator[Record]]:
    interfaces: list[_Interface] = []
    order = _section_header(stream, head, interfaces)
    blocks = _pcapng_blocks(stream, order, interfaces)
    # Read ahead to the first interface so the caller learns the link type.
    pending: list[Record] = []
    for item in blocks:
        pending.append(item)
        break
    linktype = interfaces[0].linktype if interfaces else LINKTYPE_ETHERNET
    info = CaptureInfo(linktype, True, "pcapng")

    def records() -> Iterator[Record]:
        yield from pending
        yield from blocks

    return info, records()


@dataclass(slots=True)
class _Interface:
    linktype: int
    per_sec: int  # if_tsresol: timestamp ticks per second
    offset_ns: int  # if_tsoffset, in nanoseconds


_MAX_BLOCK = 0x100000


def _section_header(stream: BinaryIO, head: bytes, interfaces: list[_Interface]) -> str:
    """Read the rest of a Section Header Block whose first bytes are ``head``; its byte order.

    Each section has its own byte order and its own interfaces (ids start again at 0), so a
    file may hold sections written on machines of either endianness.
    """
    if len(head) < 12:
        head += stream.read(12 - len(head))
    if len(head) < 12:
        raise CaptureError("pcapng section header cut short")
    for order in ("<", ">"):
        if struct.unpack(order + "I", head[8:12])[0] == _PCAPNG_BOM:
            break
    else:
        raise CaptureError("pcapng byte-order magic is wrong")
    total = struct.unpack(order + "I", head[4:8])[0]
    if total < 28 or total % 4 or total > _MAX_BLOCK:
        raise CaptureError("pcapng section header length is wrong")
    rest = total - len(head)
    if len(stream.read(rest)) < rest:
        raise CaptureError("pcapng section header cut short")
    interfaces.clear()
    return order


def _pcapng_blocks(stream: BinaryIO, order: str, interfaces: list[_Interface]) -> Iterator[Record]:
    while True:
        head = stream.read(8)
        if not head:
            return
        if len(head) < 8:
            raise CaptureError("pcapng block header cut short")
        if head[:4] == _PCAPNG_SHB_BYTES:  # a new section, which may change the byte order
            order = _section_header(stream, head, interfaces)
            continue
        btype, blen = struct.unpack(order + "II", head)
        if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
            raise CaptureError(f"pcapng block length {blen} is wrong")
        body = stream.read(blen - 8)
        if len(body) < blen - 8:
            raise CaptureError("pcapng block cut short")
        body = body[:-4]
        if btype == 1:  # Interface Description Block
            if len(body) < 8:
                raise CaptureError("pcapng interface block cut short")
            linktype = struct.unpack(order + "H", body[:2])[0]
            interfaces.append(_interface(linktype, body[8:], order))
        elif btype == 6:  # Enhanced Packet Block
            if len(body) < 20:
                raise CaptureError("pcapng packet block cut short")
            ifid, ts_hi, ts_lo, incl, orig = struct.unpack(order + "IIIII", body[:20])
            if ifid >= len(interfaces):
                raise CaptureError(f"pcapng packet names unknown interface {ifid}")
            iface = interfaces[ifid]
            ticks = (ts_hi << 32) | ts_lo
            data = body[20 : 20 + incl]
            if len(data) < incl:
                raise CaptureError("pcapng packet data cut short")
            ts_ns = ticks * 1_000_000_000 // iface.per_sec + iface.offset_ns
            yield Record(ts_ns, iface.linktype, data, orig)
        elif btype == 3:  # Simple Packet Block
            if not interfaces or len(body) < 4:
                raise CaptureError("pcapng simple packet block without an interface")
            orig = struct.unpack(order + "I", body[:4])[0]
            data = body[4 : 4 + orig]
            yield Record(0, interfaces[0].linktype, data, orig)  # an SPB has no timestamp


def _interface(linktype: int, options: bytes, order: str) -> _Interface:
    per_sec, offset_s = 1_000_000, 0  # the defaults when the options are absent
    pos = 0
    while pos + 4 <= len(options):
        code, olen = struct.unpack(order + "HH", options[pos : pos + 4])
        if code == 0:  # opt_endofopt
            break
        value = options[pos + 4 : pos + 4 + olen]
        if len(value) < olen:
            raise CaptureError(f"pcapng interface option {code} runs past its block")
        if code == 9 and olen >= 1:  # if_tsresol: 10^-v, or 2^-v if the high bit is set
            v = value[0]
            per_sec = int(2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F))
        elif code == 14 and olen == 8:  # if_tsoffset: seconds added to every timestamp
            offset_s = struct.unpack(order + "q", value)[0]
        pos += 4 + ((olen + 3) & ~3)
    return _Interface(linktype, per_sec, offset_s * 1_000_000_000)


def ip_offset(linktype: int, data: bytes | bytearray) -> int:
    """Offset of an IPv4 header in a record of this link type, or -1 if it carries none."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0 if data[:1] and data[0] >> 4 == 4 else -1
    if linktype == LINKTYPE_ETHERNET:
        off, etype = 12, -1
        while off + 2 <= len(data):
            etype = (data[off] << 8) | data[off + 1]
            if etype in (0x8100, 0x88A8):
                off += 4
                continue
            break
        return off + 2 if etype == 0x0800 else -1
    if linktype == LINKTYPE_LINUX_SLL:
        return 16 if len(data) >= 16 and data[14:16] == b"\x08\x00" else -1
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20 if len(data) >= 20 and data[0:2] == b"\x08\x00" else -1
    if linktype == LINKTYPE_NULL:
        # Host-order AF_INET (2) in the first 4 bytes.
        return 4 if len(data) >= 4 and data[:4] in (b"\x02\0\0\0", b"\0\0\0\x02") else -1
    return -1


_ARPHRD_NONE = 0xFFFE  # a link without link-layer addresses (a tun device)
_PACKET_OUTGOING = 4
# What goes in front of an IPv4 packet for each link type this module can write one to.
_LINK_HEADERS = {
    LINKTYPE_RAW: b"",
    LINKTYPE_IPV4: b"",
    LINKTYPE_ETHERNET: bytes(12) + b"\x08\x00",  # no MAC addresses known: zeros
    LINKTYPE_NULL: b"\x02\0\0\0",  # AF_INET, little-endian host order
    LINKTYPE_LINUX_SLL: struct.pack("!HHH8sH", _PACKET_OUTGOING, _ARPHRD_NONE, 0, b"", 0x0800),
    LINKTYPE_LINUX_SLL2: struct.pack(
        "!HHIHBB8s", 0x0800, 0, 0, _ARPHRD_NONE, _PACKET_OUTGOING, 0, b""
    ),
}


def link_header(linktype: int) -> bytes | None:
    """A link-layer header that carries an IPv4 packet on ``linktype``; None if unknown."""
    return _LINK_HEADERS.get(linktype)


class PcapWriter:
    """Writes classic little-endian pcap with a given link type and timestamp resolution."""

    def __init__(self, stream: BinaryIO, linktype: int, *, nanosecond: bool = False) -> None:
        self.stream = stream
        self.linktype = linktype
        self.nanosecond = nanosecond
        magic = _MAGIC_NS if nanosecond else _MAGIC_US
        stream.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 0x40000, linktype))

    def write(self, data: bytes | bytearray | memoryview, ts_ns: int = 0) -> None:
        """Append one record; CaptureError if its timestamp does not fit (nothing written)."""
        sec, frac = divmod(ts_ns, 1_000_000_000)
        if not 0 <= sec <= 0xFFFFFFFF:
            # A pcap record's seconds are unsigned 32-bit: 1970 to 2106. A pcapng timestamp
            # (64-bit, plus if_tsoffset) can lie outside.
            raise CaptureError(
                f"timestamp {sec} s is outside what classic pcap can hold (0 to 2^32-1 s)"
            )
        if not self.nanosecond:
            frac //= 1000
        self.stream.write(struct.pack("<IIII", sec, frac, len(data), len(data)))
        self.stream.write(data)
