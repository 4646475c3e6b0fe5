"""The real captures in ../shared/vectors: read by replay, parsed as tshark dissects them, and
round-tripped through the appliance pipeline into frames that tshark finds correct."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader
from support.frames import check_frame
from support.vectors import REPO_ROOT, vector_files, vector_params

from geneve import GeneveError, Packet, Verdict
from geneve._pcap import ip_offset, read_capture
from geneve.replay import replay
from geneve.rules import reference

GWLB_CAPTURE = "tx-gwlb-for-demo__geneve.pcap"
GCP_CAPTURE = "tcpdump__geneve-gcp.pcap"
# Packet counts from the folder's README (tshark's own count is used when tshark is present).
README_COUNTS = {
    GWLB_CAPTURE: 18,
    "zeek__geneve.pcap": 6,
    "zeek__geneve-many-options.pcap": 10,
    "zeek__geneve-ipv6.pcap": 2,
    "zeek__geneve-inner-tcp-bad-checksum.pcap": 1,
    "zeek__geneve-47101.pcap": 24,
    "zeek__geneve-tagged-udp-packet.pcap": 4,
    "zeek__geneve-arp.pcap": 1,
    "tcpdump__geneve.pcap": 39,
    "opflex__geneve.pcap": 9,
}
# Wireshark's checksum verdicts (proto.h): 0 bad, 1 good, 2 unverified, 3 not present.
CHECKSUM_BAD, CHECKSUM_GOOD, CHECKSUM_NOT_PRESENT = 0, 1, 3

FIELDS = [
    "frame.number",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "udp.srcport",
    "udp.dstport",
    "geneve.version",
    "geneve.vni",
    "geneve.proto_type",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.length",
    "tcp.srcport",
    "tcp.dstport",
    "icmp.type",
    "icmp.seq",
    "ip.checksum.status",
    "udp.checksum.status",
    "tcp.checksum.status",
    "icmp.checksum.status",
]


def tshark_fields(tshark: str, path: Path) -> list[dict[str, list[str]]]:
    """One dict per frame: field name -> every occurrence (outer first, then inner)."""
    cmd = [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "separator=/t"]
    cmd += ["-E", "occurrence=a", "-E", "aggregator=,"]
    cmd += ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]
    cmd += ["-o", "tcp.check_checksum:TRUE"]
    for field in FIELDS:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = []
    for line in out.splitlines():
        values = line.split("\t")
        assert len(values) == len(FIELDS), line
        rows.append({f: v.split(",") if v else [] for f, v in zip(FIELDS, values, strict=True)})
    return rows


def frames_of(path: Path) -> list[bytes]:
    """The IPv4 packets of a capture, read by scapy's reader (not the module under test)."""
    reader = RawPcapReader(str(path))
    try:
        out = []
        for data, _meta in reader:
            off = ip_offset(reader.linktype, data)
            out.append(bytes(data[off:]) if off >= 0 else b"")
        return out
    finally:
        reader.close()


def vector(vectors: Path, name: str) -> Path:
    path = vectors / name
    if not path.exists():
        pytest.skip(f"{name} is not in {vectors}")
    return path


def test_the_folder_holds_the_gwlb_captures(vectors: Path) -> None:
    names = {p.name for p in vector_files()}
    assert {GWLB_CAPTURE, GCP_CAPTURE} <= names
    assert all(p.parent == vectors for p in vector_files())


# -- every capture ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", vector_params())
def test_replay_reads_every_capture(path: Path, tmp_path: Path) -> None:
    with path.open("rb") as src, (tmp_path / "out.pcap").open("wb") as dst:
        result = replay(src, dst, reference.modifier)
    stats = result.stats
    assert result.read >= 1
    assert stats.received <= result.read
    assert stats.forwarded + stats.dropped + stats.malformed + stats.skipped == stats.received
    if shutil.which("tshark"):
        frames = subprocess.run(
            ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
        assert result.read == len(frames)
    elif path.name in README_COUNTS:
        assert result.read == README_COUNTS[path.name]
    # The written capture reads back with as many records as were forwarded.
    with (tmp_path / "out.pcap").open("rb") as f:
        assert len(list(read_capture(f)[1])) == stats.forwarded


@pytest.mark.parametrize("path", vector_params())
def test_every_record_parses_or_raises_a_codec_error(path: Path) -> None:
    with path.open("rb") as f:
        _, records = read_capture(f)
        for record in records:
            off = ip_offset(record.linktype, record.data)
            if off < 0:
                continue
            try:
                packet = Packet.parse(record.data[off:])
                packet.parse_inner()
            except GeneveError:
                continue
            for name in ("gwlb", "vni", "inner_ip", "ports", "payload", "icmp", "tcp", "udp"):
                getattr(packet, name)
            with contextlib.suppress(GeneveError):
                list(packet.geneve.options())
            repr(packet)


def test_critical_options_in_the_tcpdump_capture_are_refused(vectors: Path) -> None:
    # tcpdump__geneve.pcap carries a critical option of class 0x0000 type 0x80 (README).
    path = vector(vectors, "tcpdump__geneve.pcap")
    with path.open("rb") as src:
        result = replay(src, io.BytesIO(), lambda p: None)
    assert result.stats.malformed_reasons.get("critical-option", 0) >= 1


# -- field values as tshark reports them ------------------------------------------------------


@pytest.mark.parametrize("name", [GWLB_CAPTURE, GCP_CAPTURE])
def test_gwlb_captures_parse_as_tshark_reports(vectors: Path, tshark: str, name: str) -> None:
    path = vector(vectors, name)
    rows = tshark_fields(tshark, path)
    frames = frames_of(path)
    assert len(rows) == len(frames) >= 1
    for row, frame in zip(rows, frames, strict=True):
        p = Packet.parse(frame)
        p.parse_inner()
        assert p.outer.src == row["ip.src"][0] and p.outer.dst == row["ip.dst"][0]
        assert p.outer_udp.src_port == int(row["udp.srcport"][0])
        assert p.outer_udp.dst_port == int(row["udp.dstport"][0]) == 6081
        assert p.geneve.version == int(row["geneve.version"][0]) == 0
        assert p.vni == int(row["geneve.vni"][0], 16)
        assert p.protocol_type == int(row["geneve.proto_type"][0], 16)
        options = list(p.geneve.options())
        classes = [int(c, 16) for c in row["geneve.option.class"]]
        types = [int(t, 16) for t in row["geneve.option.type"]]
        lengths = [int(n) for n in row["geneve.option.length"]]
        # tshark names the header's total options length and each option's length (header
        # included) with the same field: the first value is the former.
        assert len(lengths) == len(classes) + 1
        assert lengths[0] == p.geneve.options_length == p.inner_offset - p.geneve_offset - 8
        assert [o.option_class for o in options] == classes
        assert [o.type for o in options] == types
        assert [o.length + 4 for o in options] == lengths[1:]
        # The inner packet.
        assert p.inner_src == row["ip.src"][1] and p.inner_dst == row["ip.dst"][1]
        assert p.l4_protocol == int(row["ip.proto"][1])
        if p.l4_protocol == 6:
            assert p.ports == (int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0]))
        elif p.l4_protocol == 1:
            icmp = p.icmp
            assert icmp is not None
            assert icmp.type == int(row["icmp.type"][0])
            assert icmp.sequence == int(row["icmp.seq"][0])
        # GWLB metadata: the Tencent capture uses the AWS layout under class 0x0167.
        meta = p.gwlb
        if name == GWLB_CAPTURE:
            assert meta is not None and meta.option_class == 0x0167
            assert [o.length for o in options] == [8, 8, 4]
            assert meta.endpoint_id == int.from_bytes(options[0].data, "big")
            assert meta.attachment_id == int.from_bytes(options[1].data, "big")
            assert meta.flow_cookie == p.flow_cookie == int.from_bytes(options[2].data, "big")
        else:
            assert meta is None  # GCP's class 0x0132 is not GWLB metadata


# -- round trip through replay ----------------------------------------------------------------


def run_replay_cli(src: Path, dst: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "geneve.replay", str(src), str(dst)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout.strip()


def assert_round_trip(
    tshark: str, src: Path, dst: Path, kept: list[int], payload_grew: int = 0
) -> None:
    """``dst`` holds packets ``kept`` of ``src``, replied: swapped, same ports and Geneve."""
    before, after = tshark_fields(tshark, src), tshark_fields(tshark, dst)
    frames_in, frames_out = frames_of(src), frames_of(dst)
    assert len(after) == len(frames_out) == len(kept)
    for i, row, frame in zip(kept, after, frames_out, strict=True):
        orig, orig_frame = before[i], frames_in[i]
        assert row["ip.src"][0] == orig["ip.dst"][0] and row["ip.dst"][0] == orig["ip.src"][0]
        assert row["udp.srcport"][0] == orig["udp.srcport"][0]  # GWLB's source port is kept
        assert row["udp.dstport"][0] == orig["udp.dstport"][0] == "6081"
        assert row["ip.src"][1:] == orig["ip.src"][1:] and row["ip.dst"][1:] == orig["ip.dst"][1:]
        g_in = Packet.parse(orig_frame)
        assert frame[28 : g_in.inner_offset] == orig_frame[28 : g_in.inner_offset]
        assert len(frame) == len(orig_frame) + payload_grew
        # tshark's verdicts: every IPv4 and inner L4 checksum good, outer UDP good or absent.
        assert row["ip.checksum.status"] and {int(s) for s in row["ip.checksum.status"]} == {
            CHECKSUM_GOOD
        }
        udp = [int(s) for s in row["udp.checksum.status"]]
        assert udp[0] in (CHECKSUM_GOOD, CHECKSUM_NOT_PRESENT)
        assert all(s == CHECKSUM_GOOD for s in udp[1:])
        for field in ("tcp.checksum.status", "icmp.checksum.status"):
            assert all(int(s) == CHECKSUM_GOOD for s in row[field]), (field, row[field])
        check_frame(frame)  # and our own verifier agrees


def test_gwlb_capture_round_trip_through_replay(vectors: Path, tshark: str, tmp_path: Path) -> None:
    src = vector(vectors, GWLB_CAPTURE)
    dst = tmp_path / "out.pcap"
    summary = run_replay_cli(src, dst)
    rows = tshark_fields(tshark, src)
    # The reference rules drop the echo requests whose sequence is a multiple of 5.
    dropped = [i for i, r in enumerate(rows) if r["icmp.seq"] and int(r["icmp.seq"][0]) % 5 == 0]
    assert dropped, "the capture has pings with sequence numbers that are multiples of 5"
    kept = [i for i in range(len(rows)) if i not in dropped]
    assert summary.startswith(
        f"read {len(rows)}, forwarded {len(kept)}, modified 0, dropped {len(dropped)}, "
        "skipped 0, malformed 0"
    )
    assert_round_trip(tshark, src, dst, kept)


def test_gcp_capture_round_trip_through_replay(vectors: Path, tshark: str, tmp_path: Path) -> None:
    src = vector(vectors, GCP_CAPTURE)
    dst = tmp_path / "out.pcap"
    summary = run_replay_cli(src, dst)
    assert summary.startswith("read 1, forwarded 1, modified 0,")
    assert_round_trip(tshark, src, dst, [0])


def test_gwlb_capture_round_trip_with_rewrites(vectors: Path, tshark: str, tmp_path: Path) -> None:
    # A modifier that grows every ICMP payload: the lengths and checksums of real traffic must
    # come out right for tshark (TCP SYNs pass unchanged).
    src = vector(vectors, GWLB_CAPTURE)
    dst = tmp_path / "grown.pcap"

    def grow_icmp(p: Packet) -> Verdict | None:
        payload = p.payload
        if p.icmp is not None and payload is not None:
            p.replace_payload(bytes(payload) + b"via geneve")
        return None

    with src.open("rb") as fin, dst.open("wb") as fout:
        result = replay(fin, fout, grow_icmp)
    rows = tshark_fields(tshark, src)
    icmp = [i for i, r in enumerate(rows) if r["icmp.type"]]
    assert result.stats.modified == len(icmp) > 0
    after = tshark_fields(tshark, dst)
    frames_in, frames_out = frames_of(src), frames_of(dst)
    for i, row in enumerate(after):
        grew = 10 if i in icmp else 0
        assert len(frames_out[i]) == len(frames_in[i]) + grew
        assert {int(s) for s in row["ip.checksum.status"]} == {CHECKSUM_GOOD}
        assert all(int(s) == CHECKSUM_GOOD for s in row["icmp.checksum.status"])
        assert all(int(s) == CHECKSUM_GOOD for s in row["tcp.checksum.status"])
        assert frames_out[i][28:68] == frames_in[i][28:68]
        facts = check_frame(frames_out[i])
        if grew:
            assert facts.payload.endswith(b"via geneve")


# -- the same capture in other file formats ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcapng", "nsecpcap"])
def test_other_formats_of_the_gwlb_capture_read_the_same(
    vectors: Path, tmp_path: Path, fmt: str
) -> None:
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap (Wireshark) is not installed")
    src = vector(vectors, GWLB_CAPTURE)
    converted = tmp_path / f"converted.{fmt}"
    subprocess.run([editcap, "-F", fmt, str(src), str(converted)], check=True, timeout=60)
    with src.open("rb") as a, converted.open("rb") as b:
        info_a, rec_a = read_capture(a)
        info_b, rec_b = read_capture(b)
        first, second = list(rec_a), list(rec_b)
    assert info_b.format == ("pcapng" if fmt == "pcapng" else "pcap")
    assert info_b.linktype == info_a.linktype
    assert [(r.ts_ns, r.data, r.orig_len) for r in first] == [
        (r.ts_ns, r.data, r.orig_len) for r in second
    ]
