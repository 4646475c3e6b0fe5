"""geneve._pcap: classic pcap in both byte orders and resolutions, pcapng, and the writer."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader
from support.pcapng import block, epb, idb, shb, spb

from geneve._pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureError,
    PcapWriter,
    Record,
    ip_offset,
    read_capture,
)

PACKETS = [
    (1_700_000_000_123_456_789, b"\x45" + bytes(range(1, 60))),
    (1_700_000_001_000_000_001, b""),
    (5, b"\xff" * 1500),
]


def pcap_bytes(
    order: str, nano: bool, packets: list[tuple[int, bytes]], linktype: int = 1, orig_extra: int = 0
) -> bytes:
    """A classic pcap file written by hand (not by the module under test)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, data in packets:
        sec, ns = divmod(ts, 1_000_000_000)
        frac = ns if nano else ns // 1000
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data) + orig_extra) + data
    return out


def expected_ts(ts: int, nano: bool) -> int:
    return ts if nano else ts - ts % 1000


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_read_pcap(tmp_path: Path, order: str, nano: bool) -> None:
    path = tmp_path / "in.pcap"
    path.write_bytes(pcap_bytes(order, nano, PACKETS, linktype=LINKTYPE_RAW, orig_extra=7))
    with path.open("rb") as f:
        info, records = read_capture(f)
        got = list(records)
    assert (info.linktype, info.nanosecond, info.format) == (LINKTYPE_RAW, nano, "pcap")
    assert got == [
        Record(expected_ts(ts, nano), LINKTYPE_RAW, data, len(data) + 7) for ts, data in PACKETS
    ]


def test_linktype_fcs_bits_are_ignored() -> None:
    raw = bytearray(pcap_bytes("<", False, PACKETS[:1]))
    struct.pack_into("<I", raw, 20, 0x10000000 | LINKTYPE_ETHERNET)
    info, records = read_capture(io.BytesIO(bytes(raw)))
    assert info.linktype == LINKTYPE_ETHERNET and next(records).linktype == LINKTYPE_ETHERNET


def test_empty_pcap_has_no_records() -> None:
    info, records = read_capture(io.BytesIO(pcap_bytes(">", True, [])))
    assert info.format == "pcap" and list(records) == []


@pytest.mark.parametrize("nano", [False, True])
def test_writer_round_trip(tmp_path: Path, nano: bool) -> None:
    path = tmp_path / "out.pcap"
    with path.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_ETHERNET, nanosecond=nano)
        for ts, data in PACKETS:
            writer.write(data, ts)
        writer.write(memoryview(b"view"), 0)
    with path.open("rb") as fin:
        info, records = read_capture(fin)
        got = [(r.ts_ns, r.data, r.orig_len) for r in records]
    assert info.linktype == LINKTYPE_ETHERNET and info.nanosecond == nano
    want = [(expected_ts(ts, nano), data, len(data)) for ts, data in PACKETS]
    assert got == [*want, (0, b"view", 4)]
    # An independent reader agrees on bytes and timestamps.
    reader = RawPcapReader(str(path))
    theirs = [(data, meta.sec, meta.usec) for data, meta in reader]
    reader.close()
    assert [d for d, _, _ in theirs] == [d for _, d, _ in got]
    assert [s * 1_000_000_000 + f * (1 if nano else 1000) for _, s, f in theirs] == [
        t for t, _, _ in got
    ]


@pytest.mark.parametrize("ts", [2**32 * 1_000_000_000, -1])
@pytest.mark.parametrize("nano", [False, True])
def test_writer_refuses_a_timestamp_pcap_cannot_hold(nano: bool, ts: int) -> None:
    # A pcap record's seconds are an unsigned 32-bit field; pcapng's go past 2106 (and an
    # if_tsoffset can take them before 1970).
    out = io.BytesIO()
    writer = PcapWriter(out, LINKTYPE_RAW, nanosecond=nano)
    writer.write(b"ok", 2**32 * 1_000_000_000 - 1)
    size = len(out.getvalue())
    with pytest.raises(CaptureError, match="classic pcap"):
        writer.write(b"too late", ts)
    assert len(out.getvalue()) == size  # nothing of the refused record was written


# -- pcapng -----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_pcapng(order: str) -> None:
    data = (
        shb(order)
        + idb(order, LINKTYPE_ETHERNET)  # default resolution: microseconds
        + idb(order, LINKTYPE_RAW, 9)  # nanoseconds
        + idb(order, LINKTYPE_LINUX_SLL, 0x80 | 10)  # 2^-10 seconds
        + block(order, 0x0BAD, b"an unknown block is skipped")
        + epb(order, 0, 1_700_000_000_123_456, b"abc", orig=100)
        + epb(order, 1, 1_700_000_000_123_456_789, b"defgh")
        + epb(order, 2, 3 * 1024 + 512, b"x" * 7)
        + spb(order, b"simple")
    )
    info, records = read_capture(io.BytesIO(data))
    assert info.format == "pcapng" and info.linktype == LINKTYPE_ETHERNET
    assert list(records) == [
        Record(1_700_000_000_123_456_000, LINKTYPE_ETHERNET, b"abc", 100),
        Record(1_700_000_000_123_456_789, LINKTYPE_RAW, b"defgh", 5),
        Record(3_500_000_000, LINKTYPE_LINUX_SLL, b"x" * 7, 7),
        Record(0, LINKTYPE_ETHERNET, b"simple", 6),
    ]


def test_pcapng_second_section_starts_new_interfaces() -> None:
    data = (
        shb("<") + idb("<", LINKTYPE_ETHERNET) + epb("<", 0, 0, b"one")
        + shb("<") + idb("<", LINKTYPE_RAW) + epb("<", 0, 0, b"two")
    )  # fmt: skip
    _, records = read_capture(io.BytesIO(data))
    assert [(r.linktype, r.data) for r in records] == [
        (LINKTYPE_ETHERNET, b"one"), (LINKTYPE_RAW, b"two")
    ]  # fmt: skip


@pytest.mark.parametrize(("first", "second"), [("<", ">"), (">", "<")])
def test_pcapng_each_section_has_its_own_byte_order(first: str, second: str) -> None:
    data = (
        shb(first) + idb(first, LINKTYPE_ETHERNET, 9) + epb(first, 0, 5, b"one")
        + shb(second) + idb(second, LINKTYPE_RAW) + epb(second, 0, 7, b"two")
        + spb(second, b"three")
        + shb(first) + idb(first, LINKTYPE_NULL) + epb(first, 0, 9, b"four")
    )  # fmt: skip
    info, records = read_capture(io.BytesIO(data))
    assert info.linktype == LINKTYPE_ETHERNET
    assert list(records) == [
        Record(5, LINKTYPE_ETHERNET, b"one", 3),
        Record(7000, LINKTYPE_RAW, b"two", 3),
        Record(0, LINKTYPE_RAW, b"three", 5),
        Record(9000, LINKTYPE_NULL, b"four", 4),
    ]


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def idb_with(order: str, linktype: int, *options: bytes) -> bytes:
    """An Interface Description Block with these options and the end-of-options marker."""
    body = struct.pack(order + "HHI", linktype, 0, 0) + b"".join(options)
    return block(order, 1, body + option(order, 0, b""))


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_if_tsoffset_is_added_to_the_interface_timestamps(order: str) -> None:
    def tsoffset(seconds: int) -> bytes:
        return option(order, 14, struct.pack(order + "q", seconds))

    data = (
        shb(order)
        + idb_with(order, LINKTYPE_RAW, option(order, 2, b"eth0"), tsoffset(1_700_000_000))
        + idb_with(order, LINKTYPE_RAW, tsoffset(-10), option(order, 9, b"\x09"))
        + idb(order, LINKTYPE_ETHERNET)  # no offset
        + idb_with(order, LINKTYPE_RAW, option(order, 14, b"\x01\0\0\0"))  # not 8 bytes: ignored
        + epb(order, 0, 1_500_000, b"a")
        + epb(order, 1, 25_000_000_123, b"b")
        + epb(order, 2, 1_500_000, b"c")
        + epb(order, 3, 1_500_000, b"d")
        + shb(order)  # a new section, new interfaces: the offset is gone with them
        + idb(order, LINKTYPE_RAW)
        + epb(order, 0, 1_500_000, b"e")
    )
    _, records = read_capture(io.BytesIO(data))
    assert [(r.ts_ns, r.data) for r in records] == [
        (1_700_000_001_500_000_000, b"a"),
        (15_000_000_123, b"b"),
        (1_500_000_000, b"c"),
        (1_500_000_000, b"d"),
        (1_500_000_000, b"e"),
    ]


def test_pcapng_timestamps_agree_with_tshark(tmp_path: Path, tshark: str) -> None:
    # Sections of both byte orders, if_tsresol and if_tsoffset: tshark's epoch times are ours.
    def tsoffset(order: str, seconds: int) -> bytes:
        return option(order, 14, struct.pack(order + "q", seconds))

    path = tmp_path / "sections.pcapng"
    path.write_bytes(
        shb("<") + idb_with("<", LINKTYPE_RAW, tsoffset("<", 1_600_000_000))
        + epb("<", 0, 1_500_000, b"\x45" + bytes(19))
        + shb(">") + idb_with(">", LINKTYPE_RAW, option(">", 9, b"\x09"), tsoffset(">", -5))
        + epb(">", 0, 1_700_000_005_123_456_789, b"\x45" + bytes(19))
        + shb("<") + idb("<", LINKTYPE_RAW, 0x80 | 10)
        + epb("<", 0, 1_700_000_000 * 1024 + 512, b"\x45" + bytes(19))
    )  # fmt: skip
    with path.open("rb") as f:
        ours = [r.ts_ns for r in read_capture(f)[1]]
    theirs = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert ours == [1_600_000_001_500_000_000, 1_700_000_000_123_456_789, 1_700_000_000_500_000_000]
    assert [int(t.replace(".", "")) for t in theirs] == ours


def test_pcapng_without_packets() -> None:
    info, records = read_capture(io.BytesIO(shb("<") + idb("<", LINKTYPE_RAW)))
    assert info.linktype == LINKTYPE_RAW and list(records) == []


# -- errors -----------------------------------------------------------------------------------

GOOD = pcap_bytes("<", False, PACKETS[:1])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xd4\xc3\xb2",
        b"not a capture file at all, really",
        GOOD[:20],
        GOOD[:30],  # record header cut short
        GOOD[:-1],  # record data cut short
        GOOD[:24] + struct.pack("<IIII", 0, 0, 0x40001, 0x40001),  # implausible length
    ],
)
def test_pcap_errors(data: bytes) -> None:
    with pytest.raises(CaptureError):
        _, records = read_capture(io.BytesIO(data))
        list(records)


def bad_bom() -> bytes:
    raw = bytearray(shb("<"))
    raw[8:12] = b"\0\0\0\0"
    return bytes(raw)


@pytest.mark.parametrize(
    "data",
    [
        shb("<")[:10],
        bad_bom(),
        struct.pack("<II", 0x0A0D0D0A, 26) + struct.pack("<I", 0x1A2B3C4D) + b"\0" * 14,
        shb("<")[:-2],  # section header cut short
        shb("<") + struct.pack("<II", 6, 13) + b"\0" * 5,  # block length not a multiple of 4
        shb("<") + struct.pack("<II", 6, 8),  # block length below 12
        shb("<") + idb("<", 1)[:-4],  # block cut short
        shb("<") + idb("<", 1) + b"\x06\0\0",  # block header cut short
        shb("<") + idb("<", 1) + epb("<", 1, 0, b"x"),  # unknown interface
        shb("<") + spb("<", b"x"),  # simple packet before any interface
        shb("<") + block("<", 1, b"\x01\0"),  # interface block cut short
        shb("<") + idb("<", 1) + block("<", 6, b"\0" * 12),  # packet block cut short
        shb("<") + idb("<", 1) + block("<", 6, struct.pack("<IIIII", 0, 0, 0, 99, 99) + b"ab"),
        # an option that runs past the end of its block (tshark refuses the file too)
        shb("<") + block("<", 1, struct.pack("<HHIHH", 1, 0, 0, 9, 1)),
        shb("<") + block("<", 1, struct.pack("<HHIHH", 1, 0, 0, 2, 200) + b"eth0"),
        shb("<") + block("<", 1, struct.pack("<HHIHH", 1, 0, 0, 14, 8) + b"\0" * 4),
        shb("<") + idb("<", 1) + shb(">")[:10],  # a later section header cut short
        shb("<") + idb("<", 1) + shb(">")[:-2],
        shb("<") + idb("<", 1) + bad_bom(),
        shb("<") + idb("<", 1) + shb(">") + epb(">", 0, 0, b"x"),  # interfaces of the last section
    ],
)
def test_pcapng_errors(data: bytes) -> None:
    with pytest.raises(CaptureError):
        _, records = read_capture(io.BytesIO(data))
        list(records)


# -- where the IPv4 header starts -------------------------------------------------------------

ETH = b"\x02" * 6 + b"\x04" * 6


@pytest.mark.parametrize(
    ("linktype", "data", "offset"),
    [
        (LINKTYPE_RAW, b"\x45\0", 0),
        (LINKTYPE_RAW, b"\x60\0", -1),
        (LINKTYPE_RAW, b"", -1),
        (LINKTYPE_IPV4, b"\x45", 0),
        (LINKTYPE_ETHERNET, ETH + b"\x08\x00\x45", 14),
        (LINKTYPE_ETHERNET, ETH + b"\x81\x00\x00\x07\x08\x00\x45", 18),
        (LINKTYPE_ETHERNET, ETH + b"\x88\xa8\x00\x01\x81\x00\x00\x07\x08\x00\x45", 22),
        (LINKTYPE_ETHERNET, ETH + b"\x08\x06", -1),
        (LINKTYPE_ETHERNET, ETH + b"\x86\xdd", -1),
        (LINKTYPE_ETHERNET, ETH[:13], -1),
        (LINKTYPE_ETHERNET, ETH + b"\x81\x00\x00", -1),
        (LINKTYPE_LINUX_SLL, b"\0" * 14 + b"\x08\x00\x45", 16),
        (LINKTYPE_LINUX_SLL, b"\0" * 14 + b"\x86\xdd", -1),
        (LINKTYPE_LINUX_SLL2, b"\x08\x00" + b"\0" * 18 + b"\x45", 20),
        (LINKTYPE_LINUX_SLL2, b"\x08\x00" + b"\0" * 10, -1),
        (LINKTYPE_NULL, b"\x02\0\0\0\x45", 4),
        (LINKTYPE_NULL, b"\0\0\0\x02\x45", 4),
        (LINKTYPE_NULL, b"\x18\0\0\0\x60", -1),
        (147, b"\x45" * 40, -1),
    ],
)
def test_ip_offset(linktype: int, data: bytes, offset: int) -> None:
    assert ip_offset(linktype, data) == offset
