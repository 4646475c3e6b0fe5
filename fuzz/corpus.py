"""Seed corpora for the libFuzzer targets in fuzz/ (run with the project's venv: it reads the
captures with geneve's own reader and takes the usual layout from geneve._layout).

``python fuzz/corpus.py synthetic`` rewrites fuzz/seeds/<target>/ (committed): small frames
built here, valid and damaged. ``python fuzz/corpus.py build OUT [VECTORS]`` fills
OUT/<target>/ with those seeds plus seeds made at run time from the IPv4 frames of the pcap and
pcapng captures in VECTORS (default ../shared/vectors); the captures themselves, and bytes taken
from them, are never committed. Each target reads its own input format (see the top comment of
fuzz/<target>.c); ``wrap`` makes one from a frame.
"""

from __future__ import annotations

import hashlib
import pathlib
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
TARGETS = ("fuzz_sum", "fuzz_fix", "fuzz_fast_forward", "fuzz_batch", "fuzz_flows", "fuzz_tun")
# The atheris targets of geneve.inspect (fuzz/<target>.py): seeded at build time only, with the
# messages tests/support/messages.py builds and the payloads of the captures.
INSPECT_TARGETS = ("fuzz_tls", "fuzz_http", "fuzz_dns")
PER_CAPTURE = 40  # frames taken from one capture at most: seeds, not a copy of the captures


# -- frames -------------------------------------------------------------------------------------


def checksum(data: bytes, initial: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(proto: int, body: bytes, *, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(body), 1, frag, 64, proto, 0,
        bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]),
    ) + options  # fmt: skip
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + body


def ipv6(nh: int, body: bytes) -> bytes:
    src, dst = (
        bytes.fromhex("20010db8" + "00" * 11 + "01"),
        bytes.fromhex("20010db8" + "00" * 11 + "02"),
    )
    return struct.pack("!IHBB", 0x60000000, len(body), nh, 64) + src + dst + body


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 0x50, 0x18, 512, 0, 0) + payload


def gwlb(inner: bytes, ptype: int = 0x0800) -> bytes:
    """GWLB's frame around ``inner``: outer IPv4, UDP to 6081, Geneve with the three options."""
    options = (
        struct.pack("!HBBQ", 0x0108, 1, 2, 0x0123456789ABCDEF)
        + struct.pack("!HBBQ", 0x0108, 2, 2, 0x0FEDCBA987654321)
        + struct.pack("!HBBI", 0x0108, 3, 1, 0x11223344)
    )
    geneve = struct.pack("!BBHI", len(options) // 4, 0, ptype, 0) + options
    outer_udp = udp(50000, 6081, geneve + inner)
    frame = ipv4(17, outer_udp)
    return frame[:12] + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + frame[20:]


def synthetic_frames() -> dict[str, bytes]:
    """Frames that reach every branch of the targets: the usual ones, the rarer, the broken."""
    frames = {
        "udp4": gwlb(ipv4(17, udp(40000, 3000, b"weakly typed, drop me"))),
        "tcp4": gwlb(ipv4(6, tcp(40000, 443, b"\x16\x03\x01 hello"))),
        "icmp4": gwlb(ipv4(1, struct.pack("!BBHHH", 8, 0, 0, 7, 5) + b"ping")),
        "udp6": gwlb(ipv6(17, udp(53, 40000, b"dns answer")), 0x86DD),
        "tcp6": gwlb(ipv6(6, tcp(80, 40000, b"HTTP/1.1 200")), 0x86DD),
        "hop6": gwlb(ipv6(0, bytes([17, 0]) + bytes(6) + udp(9, 9, b"x")), 0x86DD),
        "frag4": gwlb(ipv4(17, udp(1, 2, b"first"), frag=0x2000)),
        "options4": gwlb(ipv4(17, udp(5, 3000, b"opt"), options=b"\x01\x01\x01\x00")),
        "arp": gwlb(bytes(28), 0x0806),
    }
    usual = bytearray(frames["udp4"])
    usual[29] |= 0x80  # the O bit: a control packet
    frames["control"] = bytes(usual)
    usual = bytearray(frames["udp4"])
    usual[38] |= 0x80  # a critical option
    frames["critical"] = bytes(usual)
    frames["truncated"] = frames["tcp4"][:90]
    return frames


# -- each target's input -------------------------------------------------------------------------


def wrap(target: str, frame: bytes, variant: int = 0) -> bytes:
    if target == "fuzz_sum":
        return struct.pack("<I", variant * 0x1234) + frame
    if target == "fuzz_fix":
        # Outer UDP mode, length delta, IP and L4 offset deltas, protocol (0: the frame's).
        return bytes([variant % 3, 0, 0, 0, 0]) + frame
    if target == "fuzz_fast_forward":
        # Admitted, tables with port 3000, the needle "drop" (variant 1: no content filter,
        # counted into a flow table).
        flags = 1 | 2 | 8 | (4 if variant == 0 else 128)
        head = struct.pack("!BHHBBB", flags, 8500, 3000, 1, 3, 0) + b"drop"
        return head + struct.pack("!H", len(frame)) + frame
    if target == "fuzz_batch":
        # Four slots of 9000 bytes, the Geneve port; what a UDP socket receives (no outer
        # IPv4 and UDP headers), then send lengths.
        datagram = frame[28:]
        head = struct.pack("!bHHB", 4, 9000 + 64, 6081, 0)
        return (
            head + struct.pack("!H", len(datagram)) + datagram + struct.pack("!4h", 96, 0, 20, -1)
        )
    if target == "fuzz_flows":
        # A bound of 2 flows; the inner packet tracked (its offsets where the usual layout has
        # them), again 5 s later from the other endpoint, then a sweep, a walk, the end.
        inner = frame[68 : 68 + 255]
        proto = inner[9] if len(inner) > 9 else 0
        track = bytes([0, 0, 20, len(inner), proto, variant, 1, 1, len(inner)]) + inner
        again = bytes([0, 0, 20, len(inner), proto, 1, 2, 5, len(inner)]) + inner
        return bytes([1]) + track + again + bytes([1, 30, 4, 2])
    if target == "fuzz_tun":
        # A bound of 2 (variant 1: 200); the frame twice, then its inner packet alone, looked
        # up after 68 bytes (where the usual layout puts the inner packet).
        inner = frame[68:]
        body = b"".join(struct.pack("!H", len(f)) + f for f in (frame, frame, inner))
        return bytes([2 if variant == 0 else 200, 68]) + body
    raise ValueError(target)


def write_synthetic() -> None:
    for target in TARGETS:
        folder = SEEDS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, frame in synthetic_frames().items():
            for variant in (0, 1) if target in ("fuzz_fix", "fuzz_fast_forward") else (0,):
                (folder / f"{name}-{variant}").write_bytes(wrap(target, frame, variant))


# -- captures -------------------------------------------------------------------------------------


def capture_frames(path: pathlib.Path) -> list[bytes]:
    """The IPv4 packets of a pcap or pcapng file, read by the project's own capture reader."""
    from geneve._pcap import CaptureError, ip_offset, read_capture

    found: list[bytes] = []
    try:
        with path.open("rb") as stream:
            _info, records = read_capture(stream)
            for record in records:
                at = ip_offset(record.linktype, record.data)
                packet = record.data[at:] if at >= 0 else b""
                if len(packet) >= 20 and packet[0] >> 4 == 4:
                    total = struct.unpack_from("!H", packet, 2)[0]
                    found.append(bytes(packet[: total or len(packet)]))
                if len(found) >= PER_CAPTURE:
                    break
    except CaptureError as err:  # a damaged capture (some are, on purpose): what was read
        print(f"corpus: {path.name}: {err}", file=sys.stderr)
    return found


def as_gwlb(frame: bytes) -> bytes | None:
    """A capture's Geneve frame with three options of GWLB's shape given GWLB's class."""
    from geneve import _layout

    at = _layout.GWLB_OPTION_OFFSETS
    if len(frame) < _layout.INNER_OFFSET or frame[0] != 0x45:
        return None
    if frame[_layout.GENEVE_OFFSET] != _layout.GENEVE_BYTE0:
        return None
    shape = [frame[pos + 2 : pos + 4] for pos in at]
    wanted = [word.to_bytes(4, "big")[2:] for word in _layout.GWLB_OPTION_WORDS]
    if [(s[0], s[1] & 0x1F) for s in shape] != [(w[0], w[1]) for w in wanted]:
        return None
    out = bytearray(frame)
    for pos, word in zip(at, _layout.GWLB_OPTION_WORDS, strict=True):
        out[pos : pos + 2] = (word >> 16).to_bytes(2, "big")
    return bytes(out)


def build(out: pathlib.Path, vectors: pathlib.Path) -> None:
    frames: list[bytes] = []
    if vectors.is_dir():
        for path in sorted(vectors.iterdir()):
            if path.suffix in (".pcap", ".pcapng"):
                frames += capture_frames(path)
        print(f"corpus: {len(frames)} IPv4 frames from the captures in {vectors}", file=sys.stderr)
    else:
        print(f"corpus: no captures at {vectors}; synthetic seeds only", file=sys.stderr)
    frames += [g for g in map(as_gwlb, frames) if g]
    for target in TARGETS:
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for seed in (SEEDS / target).iterdir():
            (folder / seed.name).write_bytes(seed.read_bytes())
        for frame in frames:
            for variant in (0, 1):
                data = wrap(target, frame, variant)
                name = "capture-" + hashlib.sha1(data).hexdigest()[:16]
                (folder / name).write_bytes(data)
    for target, seeds in inspect_seeds(frames).items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for data in seeds:
            (folder / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def inspect_seeds(frames: list[bytes]) -> dict[str, list[bytes]]:
    """Seeds for the atheris targets: valid messages, and what the captures carry."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.messages import client_hello, dns_query, http_request

    from geneve import GeneveError, Packet

    payloads = []
    for frame in frames:
        try:
            payload = Packet.parse(bytearray(frame)).payload
        except GeneveError:
            continue
        if payload:
            payloads.append(bytes(payload))
    questions = (("example.com", 1, 1), ("www.example.org", 28, 1))
    return {
        "fuzz_tls": [
            client_hello("example.com"),
            client_hello(None, extensions=False),
            client_hello("a.example", key_share=1216, max_record=400),
            *payloads,
        ],
        "fuzz_http": [
            http_request(),
            http_request("CONNECT", "example.com:443"),
            http_request("GET", "http://user@example.com:8080/x", None, newline=b"\n"),
            *payloads,
        ],
        "fuzz_dns": [
            b"\0" + dns_query(questions),
            b"\0" + dns_query(edns=True),
            b"\1" + dns_query(questions, tcp=True),
            *(b"\0" + p for p in payloads),
        ],
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["synthetic"]:
        write_synthetic()
    elif sys.argv[1:2] == ["build"] and len(sys.argv) in (3, 4):
        default = HERE.parent.parent / "shared" / "vectors"
        build(
            pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]) if len(sys.argv) == 4 else default
        )
    else:
        sys.exit("usage: corpus.py synthetic | corpus.py build OUT [VECTORS]")
