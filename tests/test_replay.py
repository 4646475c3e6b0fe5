"""python -m geneve.replay: the pipeline over a capture, its summary line and its errors."""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.frames import check_frame, make_inner
from support.pcapng import epb, idb, shb
from support.vectors import REPO_ROOT

from geneve import Packet, Verdict, build_frame
from geneve._pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapWriter,
    read_capture,
)
from geneve.replay import replay
from geneve.rules import reference

SUMMARY = re.compile(
    r"^read (\d+), forwarded (\d+), modified (\d+), dropped (\d+), skipped (\d+), "
    r"malformed (\d+)( \(.*\))?$"
)
MAC_A, MAC_B = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"


def ethernet(frame: bytes | bytearray, ethertype: bytes = b"\x08\x00") -> bytes:
    return MAC_A + MAC_B + ethertype + bytes(frame)


def sample_frames() -> list[bytes]:
    """One of each outcome under the reference rules, in Ethernet framing."""
    weak = build_frame(make_inner(4, "udp", b"weakly typed", dport=3000), udp_checksum=True)
    bad = build_frame(make_inner(4, "udp", b"x"))
    bad[28] |= 0xC0  # Geneve version 3
    return [
        ethernet(build_frame(make_inner(4, "udp", b"plain", dport=80))),  # forwarded
        ethernet(weak),  # modified
        ethernet(build_frame(make_inner(4, "icmp", b"ping", icmp_seq=5))),  # dropped
        ethernet(build_frame(make_inner(6, "udp", b"drop me", dport=3000))),  # dropped
        ethernet(bad),  # malformed
        ethernet(b"\0" * 28, b"\x08\x06"),  # ARP: not IPv4, skipped
        ethernet(make_inner(4, "udp", b"not geneve", dport=53)),  # skipped
    ]


def write_pcap(path: Path, frames: list[bytes], linktype: int = LINKTYPE_ETHERNET) -> None:
    with path.open("wb") as f:
        writer = PcapWriter(f, linktype)
        for i, frame in enumerate(frames):
            writer.write(frame, 1_000_000_000 * (i + 1) + 1000 * i)


def run_replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "geneve.replay", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        timeout=120,
    )


def test_replay_cli_summary_and_output(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, sample_frames())
    proc = run_replay(str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    match = SUMMARY.match(lines[0])
    assert match is not None, lines[0]
    assert lines[0] == (
        "read 7, forwarded 2, modified 1, dropped 2, skipped 2, malformed 1 (geneve-version 1)"
    )
    with dst.open("rb") as f:
        info, records = read_capture(f)
        out = list(records)
    assert info.linktype == LINKTYPE_ETHERNET and len(out) == 2
    originals = sample_frames()
    stamps = (1_000_000_000, 2_000_001_000)
    for record, original, ts in zip(out, originals[:2], stamps, strict=True):
        assert record.ts_ns == ts
        assert record.data[:6] == MAC_B and record.data[6:12] == MAC_A  # MACs swapped
        assert record.data[12:14] == b"\x08\x00"
        facts = check_frame(record.data[14:])
        assert facts.outer_src == original[14 + 16 : 14 + 20]
        assert facts.outer_dst == original[14 + 12 : 14 + 16]
        assert facts.geneve == original[14 + 28 : 14 + 68]
    assert check_frame(out[1].data[14:]).payload == b"strongly typed"


def test_replay_cli_custom_rules(tmp_path: Path) -> None:
    (tmp_path / "myrules.py").write_text(
        "from geneve import Verdict\n"
        "def drop_all(packet):\n"
        "    return Verdict.DROP\n"
        "def shout(packet):\n"
        "    if packet.payload is not None and packet.l4_protocol == 17:\n"
        "        packet.replace_payload(bytes(packet.payload).upper() + b'!')\n"
        "modifier = shout\n"
    )
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, sample_frames()[:2])
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_replay(str(src), str(dst), "--rules", "myrules:drop_all", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("read 2, forwarded 0, modified 0, dropped 2,")
    proc = run_replay(str(src), str(dst), "--rules", "myrules", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("read 2, forwarded 2, modified 2,")
    with dst.open("rb") as f:
        payloads = [check_frame(r.data[14:]).payload for r in read_capture(f)[1]]
    assert payloads == [b"PLAIN!", b"WEAKLY TYPED!"]


def test_replay_cli_on_error_forward(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text("def modifier(packet):\n    raise RuntimeError('bug')\n")
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, sample_frames()[:2])
    env = {"PYTHONPATH": str(tmp_path)}
    proc = run_replay(str(src), str(dst), "--rules", "buggy", env=env)
    assert proc.returncode == 1 and "forwarded 0," in proc.stdout and "dropped 2," in proc.stdout
    assert "modifier errors 2" in proc.stdout
    # The first error's traceback names the rule's own line.
    assert "Traceback" in proc.stderr and "RuntimeError: bug" in proc.stderr
    assert "buggy.py" in proc.stderr
    proc = run_replay(str(src), str(dst), "--rules", "buggy", "--on-error", "forward", env=env)
    assert proc.returncode == 1 and "forwarded 2," in proc.stdout


def test_replay_warns_when_the_capture_holds_the_replies_too(tmp_path: Path) -> None:
    frames = sample_frames()[:2]
    reply = bytearray(frames[0])  # Ethernet: the outer IPv4 addresses at 14 + 12 and 14 + 16
    reply[26:30], reply[30:34] = frames[0][30:34], frames[0][26:30]
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, frames)
    proc = run_replay(str(src), str(dst))
    assert proc.returncode == 0 and "warning" not in proc.stdout
    write_pcap(src, [*frames, bytes(reply)])
    proc = run_replay(str(src), str(dst))
    assert proc.returncode == 0 and "warning: Geneve goes both ways between" in proc.stdout


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("geneve.replay: ")
    for needle in needles:
        assert needle in lines[0]


def test_replay_cli_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pcap"
    proc = run_replay(str(missing), str(tmp_path / "out.pcap"))
    assert_one_line_error(proc, "No such file", "nope.pcap")
    assert not (tmp_path / "out.pcap").exists()


def test_replay_cli_output_not_writable(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, sample_frames()[:1])
    proc = run_replay(str(src), str(tmp_path / "no-such-dir" / "out.pcap"))
    assert_one_line_error(proc, "no-such-dir")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not a capture file",
        b"\xd4\xc3\xb2\xa1" + b"\0" * 8,  # pcap header cut short
        bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000") + b"\0" * 10,
    ],
)
def test_replay_cli_corrupt_file(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "corrupt.pcap"
    src.write_bytes(content)
    proc = run_replay(str(src), str(tmp_path / "out.pcap"))
    assert_one_line_error(proc)


def test_replay_cli_timestamp_past_what_pcap_holds(tmp_path: Path) -> None:
    # pcapng timestamps are 64-bit; a classic pcap record's seconds are 32-bit.
    frame = bytes(build_frame(make_inner(4, "udp", b"plain", dport=80)))
    src, dst = tmp_path / "late.pcapng", tmp_path / "out.pcap"
    src.write_bytes(
        shb("<") + idb("<", LINKTYPE_RAW, 9)
        + epb("<", 0, 1, frame)
        + epb("<", 0, 2**32 * 1_000_000_000 + 5, frame)
    )  # fmt: skip
    proc = run_replay(str(src), str(dst))
    assert_one_line_error(proc, "timestamp", "classic pcap")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.pcapng"]  # no OUT, no temporary


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "other spelling"])
def test_replay_cli_refuses_to_overwrite_its_input(tmp_path: Path, how: str) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, sample_frames())
    before = src.read_bytes()
    dst = {"same path": src, "other spelling": tmp_path / "." / "in.pcap"}.get(how)
    if dst is None:
        dst = tmp_path / "out.pcap"
        if how == "symlink":
            dst.symlink_to(src)
        else:
            os.link(src, dst)
    proc = run_replay(str(src), str(dst))
    assert_one_line_error(proc, "same file")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({src.name, dst.name})


def test_replay_cli_failure_leaves_out_as_it_was(tmp_path: Path) -> None:
    # A capture cut short after packets that were forwarded: OUT keeps what it held before
    # (or does not appear), never a partial capture.
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, sample_frames())
    src.write_bytes(src.read_bytes()[:-5])
    proc = run_replay(str(src), str(dst))
    assert_one_line_error(proc, "cut short")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]
    dst.write_bytes(b"an older OUT")
    proc = run_replay(str(src), str(dst))
    assert_one_line_error(proc, "cut short")
    assert dst.read_bytes() == b"an older OUT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap", "out.pcap"]


def test_replay_cli_replaces_out_whole(tmp_path: Path) -> None:
    src, dst, fresh = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "fresh"
    write_pcap(src, sample_frames())
    dst.write_bytes(b"x" * 100_000)  # longer than the new OUT: no stale tail may remain
    with fresh.open("wb"):
        pass  # the mode a file made with open() gets under this umask
    proc = run_replay(str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert len(list(read_capture(io.BytesIO(dst.read_bytes()))[1])) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "in.pcap", "out.pcap"]
    dst.unlink()
    proc = run_replay(str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(dst.stat().st_mode) == stat.S_IMODE(fresh.stat().st_mode)


def test_replay_cli_out_through_a_symlink_and_to_a_device(tmp_path: Path) -> None:
    # A symlink OUT keeps pointing where it did; a device or pipe cannot be renamed onto, so
    # it is written directly.
    src, real, link = tmp_path / "in.pcap", tmp_path / "real.pcap", tmp_path / "link.pcap"
    write_pcap(src, sample_frames())
    link.symlink_to(real)
    proc = run_replay(str(src), str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and len(list(read_capture(io.BytesIO(real.read_bytes()))[1])) == 2
    proc = run_replay(str(src), os.devnull)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("read 7, forwarded 2,")


@pytest.mark.parametrize(
    ("rules", "needle"),
    [
        ("no_such_module_anywhere:modifier", "no_such_module_anywhere"),
        ("geneve.rules.reference:no_such_attr", "no_such_attr"),
        ("geneve.rules.reference:DEMO_PORT", "not callable"),
        (":modifier", "MODULE:CALLABLE"),
        ("geneve.rules.reference:modifier.nope", "modifier.nope"),
    ],
)
def test_replay_cli_bad_rules(tmp_path: Path, rules: str, needle: str) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, sample_frames()[:1])
    proc = run_replay(str(src), str(tmp_path / "out.pcap"), "--rules", rules)
    assert_one_line_error(proc, needle)


def test_replay_cli_rules_module_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise ImportError('half-written module')\n")
    src = tmp_path / "in.pcap"
    write_pcap(src, sample_frames()[:1])
    proc = run_replay(
        str(src), str(tmp_path / "out.pcap"), "--rules", "broken",
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert_one_line_error(proc, "broken", "half-written module")


def test_replay_in_process_raw_linktype() -> None:
    frames = [bytes(build_frame(make_inner(4, "udp", b"weakly typed", dport=3000)))]
    src, dst = io.BytesIO(), io.BytesIO()
    write_pcap_stream(src, frames, LINKTYPE_RAW)
    src.seek(0)
    result = replay(src, dst, reference.modifier)
    assert result.read == 1 and result.stats.modified == 1
    assert result.summary().startswith("read 1, forwarded 1, modified 1,")
    dst.seek(0)
    info, records = read_capture(dst)
    (record,) = list(records)
    assert info.linktype == LINKTYPE_RAW
    assert check_frame(record.data).payload == b"strongly typed"


def write_pcap_stream(stream: io.BytesIO, frames: list[bytes], linktype: int) -> None:
    writer = PcapWriter(stream, linktype)
    for frame in frames:
        writer.write(frame)


def test_replay_keeps_input_order_and_skips_dropped() -> None:
    frames = [
        ethernet(build_frame(make_inner(4, "udp", i.to_bytes(2, "big"), dport=80)))
        for i in range(10)
    ]
    src, dst = io.BytesIO(), io.BytesIO()
    write_pcap_stream(src, frames, LINKTYPE_ETHERNET)
    src.seek(0)

    def odd_only(p: Packet) -> Verdict | None:
        payload = p.payload
        assert payload is not None
        return None if payload[1] % 2 else Verdict.DROP

    result = replay(src, dst, odd_only)
    assert (result.read, result.stats.forwarded, result.stats.dropped) == (10, 5, 5)
    dst.seek(0)
    _, records = read_capture(dst)
    assert [check_frame(r.data[14:]).payload[1] for r in records] == [1, 3, 5, 7, 9]


@pytest.mark.parametrize(
    ("first", "expected_header"),
    [(LINKTYPE_RAW, b""), (LINKTYPE_ETHERNET, bytes(12) + b"\x08\x00")],
)
def test_replay_of_a_pcapng_with_mixed_link_types(
    tmp_path: Path, tshark: str, first: int, expected_header: bytes
) -> None:
    # One link type per pcapng interface; the pcap written takes the first forwarded packet's
    # and gives the others a header of that type.
    frame = bytes(build_frame(make_inner(4, "udp", b"weakly typed", dport=3000)))
    sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, MAC_A)
    by_type = {LINKTYPE_RAW: frame, LINKTYPE_ETHERNET: ethernet(frame)}
    other = LINKTYPE_ETHERNET if first == LINKTYPE_RAW else LINKTYPE_RAW
    capture = (
        shb("<")
        + idb("<", 127)  # radiotap: no IPv4 here, so never the output's link type
        + idb("<", first)
        + idb("<", LINKTYPE_LINUX_SLL2)
        + idb("<", other)
        + epb("<", 0, 1, b"\0" * 8)
        + epb("<", 1, 2, by_type[first])
        + epb("<", 2, 3, sll2 + frame)
        + epb("<", 3, 4, by_type[other])
    )
    src, out = tmp_path / "mixed.pcapng", tmp_path / "out.pcap"
    src.write_bytes(capture)
    proc = run_replay(str(src), str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("read 4, forwarded 3, modified 3,")
    info, records = read_capture(io.BytesIO(out.read_bytes()))
    rows = list(records)
    assert info.linktype == first and len(rows) == 3
    header = 14 if first == LINKTYPE_ETHERNET else 0
    swapped = MAC_B + MAC_A + b"\x08\x00"  # an Ethernet record keeps its header, MACs swapped
    assert rows[0].data[:header] == swapped[:header]
    assert [r.data[:header] for r in rows[1:]] == [expected_header] * 2
    for r in rows:
        assert check_frame(r.data[header:]).payload == b"strongly typed"
    # tshark decodes every record as IPv4/UDP/Geneve on the written link type.
    protocols = subprocess.run(
        [tshark, "-n", "-r", str(out), "-T", "fields", "-e", "frame.protocols"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(protocols) == 3 and all(":ip:udp:geneve:ip:udp" in p for p in protocols)
