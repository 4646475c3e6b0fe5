"""How fast is the codec? One GWLB cycle per packet, compared with hand-written code and others.

    python benchmarks/codec.py           # under a minute on an idle machine
    python benchmarks/codec.py --quick   # a few seconds, rougher numbers

The cycle is what an appliance does to every packet it rewrites: parse the frame, swap the outer
IPv4 addresses, replace ``weakly typed`` by ``strongly typed`` in the inner UDP payload (the
packet grows by 2 bytes), fix every checksum (inner IPv4 header, inner UDP, outer IPv4 header;
the outer UDP checksum stays 0) and get the bytes to send. It runs on a 156-byte and a
1500-byte GWLB frame (geneve.build_frame, with the three AWS options), in:

- geneve with its C checksum, parsing in place in a ``geneve.ReceiveBuffer`` (which makes the
  cffi view of itself once) and in a plain ``bytearray`` (a cffi view per packet), and geneve
  with its pure-Python fallback (run in a child process with GENEVE_PURE_PYTHON=1, since the
  choice is made at import). geneve's cycle is ``Packet.parse``, ``replace_in_payload`` and
  ``reply`` (fix the checksums, swap the outer addresses, return the bytes); one more row
  calls ``swap_outer``, ``fix_checksums`` and ``data`` one at a time instead of ``reply``;
- the floor: one flat function per variant, written for this benchmark, with struct and slicing
  and no objects, as fast as this author could make Python do the cycle. It checks GWLB's frame
  layout with one unpack and then works at constant offsets (as geneve's own fast path does).
  Its checksums are either geneve's fused C fix-up called through cffi, with the cffi view
  and the memoryview of the fixed receive buffer made once (as a careful receive loop would,
  and as a ReceiveBuffer does) or made per packet (as geneve must with a bytearray), or its own
  pure-Python checksum (the floor for the fallback). One more flat function reads every offset
  from the headers instead, to show what knowing the layout is worth;
- dpkt and scapy, written the way their documentation suggests.

geneve and the floor copy the frame into a preallocated receive buffer first (what recv_into
does, so it is counted); dpkt and scapy parse the ``bytes`` that recv() would return. geneve and
the floor hand back a memoryview of that buffer, which socket.sendto accepts; dpkt and scapy
return ``bytes``. Before any timing, every implementation's output is checked to be the same
bytes as a reply built independently, whose checksums this file computes with its own RFC 1071
routine.

Timing: each round runs every implementation once, in a rotating order, as a batch of calls
lasting a few milliseconds timed with time.perf_counter_ns; the cost of an empty batch of the
same length is subtracted. The table shows the median over the rounds of µs per packet, then the
ratios between those medians. Garbage collection stays on, as in an appliance. On a shared or
busy machine the numbers move; the ratios, measured in the same rounds, move less.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import geneve
from geneve import GENEVE_PORT, Packet, ReceiveBuffer, build_frame
from geneve.checksum import internet_checksum

OLD = b"weakly typed"
NEW = b"strongly typed"
FRAME_SIZES = (156, 1500)
CHECKSUM_SIZES = (64, 1500, 9000)
GWLB_ADDRESS = "10.0.0.1"  # the outer source of what GWLB sends
APPLIANCE_ADDRESS = "10.0.0.2"
RECEIVE_BUFFER = 9216  # an appliance receives into one fixed buffer larger than any frame

Cycle = Callable[[], Any]

# -- frames, and an independent idea of the right answer ------------------------------------


def reference_checksum(data: bytes) -> int:
    """RFC 1071, the plain way: add 16-bit big-endian words, fold the carries, complement."""
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inner_udp(payload: bytes) -> bytes:
    """An inner IPv4/UDP packet to port 3000 (the reference rules' port), checksums right."""
    src, dst = bytes((192, 168, 1, 10)), bytes((172, 16, 0, 20))
    ulen = 8 + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 7, 0x4000, 63, 17, 0, src, dst))
    ip[10:12] = reference_checksum(bytes(ip)).to_bytes(2, "big")
    udp = bytearray(struct.pack("!HHHH", 40000, 3000, ulen, 0) + payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    udp[6:8] = (reference_checksum(pseudo + bytes(udp)) or 0xFFFF).to_bytes(2, "big")
    return bytes(ip + udp)


def payload_for(frame_size: int) -> bytes:
    """A payload that makes a frame of ``frame_size`` bytes with one ``weakly typed`` inside."""
    room = frame_size - 68 - 28
    text = b"this field is " + OLD + b", says the linter."
    filler = bytes(ord("a") + i % 26 for i in range(room - len(text)))
    half = len(filler) // 2
    return filler[:half] + text + filler[half:]


def request_and_reply(frame_size: int) -> tuple[bytes, bytes]:
    """What GWLB sends, and the reply the cycle must produce, built independently of it."""
    payload = payload_for(frame_size)
    request = bytes(build_frame(inner_udp(payload), src=GWLB_ADDRESS, dst=APPLIANCE_ADDRESS))
    reply = bytes(
        build_frame(inner_udp(payload.replace(OLD, NEW)), src=APPLIANCE_ADDRESS, dst=GWLB_ADDRESS)
    )
    assert len(request) == frame_size and len(reply) == frame_size + len(NEW) - len(OLD)
    # Checked here rather than trusted: the outer header checksum that build_frame wrote.
    for frame in (request, reply):
        assert reference_checksum(frame[:20]) == 0 and frame[26:28] == b"\0\0"
    return request, reply


# -- the implementations: each factory returns a zero-argument cycle over one request --------


def geneve_cycle(request: bytes, buffer: Callable[[int], bytearray] = bytearray) -> Cycle:
    """The cycle through geneve's public API, in a ``bytearray`` or a ``geneve.ReceiveBuffer``.

    ``Packet.reply()`` is the last three steps in one call: fix the checksums of the edited
    frame, swap the outer addresses, return the bytes to send.
    """
    n = len(request)
    buf = buffer(RECEIVE_BUFFER)
    parse = Packet.parse

    def cycle() -> object:
        buf[:n] = request
        packet = parse(buf, n)
        packet.replace_in_payload(OLD, NEW)
        return packet.reply()

    return cycle


def geneve_steps_cycle(request: bytes) -> Cycle:
    """The same cycle in a ReceiveBuffer, one call per step (swap_outer, fix_checksums, data)."""
    n = len(request)
    buf = ReceiveBuffer(RECEIVE_BUFFER)
    parse = Packet.parse

    def cycle() -> object:
        buf[:n] = request
        packet = parse(buf, n)
        packet.swap_outer()
        packet.replace_in_payload(OLD, NEW)
        packet.fix_checksums()
        return packet.data

    return cycle


def geneve_process_cycle(request: bytes) -> Cycle:
    """The appliance's own path: a geneve.Pipeline, reference rules (drop/replace/ICMP)."""
    from geneve import Pipeline
    from geneve.rules.reference import modifier

    n = len(request)
    buf = ReceiveBuffer(RECEIVE_BUFFER)
    handle = Pipeline(modifier).handle

    def cycle() -> object:
        buf[:n] = request
        (frame,) = handle(buf, n)
        return frame

    return cycle


_OUTER = struct.Struct("!BxHxxHxB")
_UDP_GENEVE = struct.Struct("!2xHH2xBBH")
_SWAP = struct.Struct("!II")
_U16 = struct.Struct("!H")
_PSEUDO = struct.Struct("!HHHH")
# What GWLB sends, read in one unpack: outer IPv4 (version/IHL, total length, fragment field,
# protocol), UDP (destination port, length), Geneve (byte 0, byte 1, protocol type), the three
# option headers, inner IPv4 (the same four fields) and inner UDP length.
_LAYOUT = struct.Struct("!BxHxxHxB10x" + "2xHH2xBBH4xI8xI8xI4x" + "BxHxxHxB10x4xH2x")


def floor_cycle(request: bytes, *, views_once: bool = True) -> Cycle:
    """The floor: flat code for GWLB's frame layout + geneve's fused C fix-up through cffi.

    GWLB always sends the same layout (outer IPv4 without options, the three GWLB options,
    here an inner IPv4/UDP packet without options), so the fastest flat code checks that layout
    with one unpack and then works at constant offsets, as geneve's own fast path does; a
    frame of any other layout is refused. With ``views_once`` the cffi view and the memoryview
    of the receive buffer are made once, as a careful receive loop would (the buffer never
    changes size); otherwise per packet.
    """
    from geneve.checksum import ffi, lib

    n = len(request)
    buf = bytearray(RECEIVE_BUFFER)
    fix = lib.geneve_fix
    from_buffer = ffi.from_buffer
    cbuf, view = from_buffer(buf), memoryview(buf)
    layout = _LAYOUT.unpack_from
    swap_unpack, swap_pack, u16 = _SWAP.unpack_from, _SWAP.pack_into, _U16.pack_into

    def cycle() -> object:
        buf[:n] = request
        (vihl, total, frag, proto, dport, ulen, b0, b1, ptype, _o1, _o2, _o3,
         ivihl, itotal, ifrag, iproto, iulen) = layout(buf)  # fmt: skip
        # Version 0 with 8 words of options, none critical (the C bit) and not a control
        # packet (the O bit): the options can be skipped unread (RFC 8926 3.4).
        if not (
            vihl == 0x45 and proto == 17 and dport == 6081 and 68 <= total <= n
            and ulen == total - 20 and not frag & 0x3FFF and b0 == 8 and not b1 & 0xC0
            and ptype == 0x0800 and ivihl == 0x45 and iproto == 17 and not ifrag & 0x3FFF
            and 28 <= itotal <= total - 68 and iulen == itotal - 20
        ):  # fmt: skip
            raise ValueError("not a GWLB frame with inner IPv4/UDP")
        end = 68 + itotal
        src, dst = swap_unpack(buf, 12)
        swap_pack(buf, 12, dst, src)
        if buf.find(OLD, 96, end) >= 0:
            data = buf[96:end].replace(OLD, NEW)
            end = 96 + len(data)
            buf[96:end] = data
            u16(buf, 70, end - 68)  # inner IPv4 total length
            u16(buf, 92, end - 88)  # inner UDP length
            u16(buf, 2, end)  # outer IPv4 total length
            u16(buf, 24, end - 20)  # outer UDP length
        if views_once:
            if fix(cbuf, len(buf), end, 68, 88, 17, 0) != 0:
                raise ValueError("checksums not fixed")
            return view[:end]
        if fix(from_buffer(buf), len(buf), end, 68, 88, 17, 0) != 0:
            raise ValueError("checksums not fixed")
        return memoryview(buf)[:end]

    return cycle


def floor_header_walk_cycle(request: bytes) -> Cycle:
    """Flat code that reads every offset from the headers (IHL, Geneve Opt Len), views once.

    Slower than the floor by the extra unpacks and arithmetic: it shows what knowing GWLB's
    layout is worth.
    """
    from geneve.checksum import ffi, lib

    n = len(request)
    buf = bytearray(RECEIVE_BUFFER)
    fix = lib.geneve_fix
    cbuf, view = ffi.from_buffer(buf), memoryview(buf)
    outer_unpack, udp_unpack, swap_unpack = (
        _OUTER.unpack_from,
        _UDP_GENEVE.unpack_from,
        _SWAP.unpack_from,
    )
    swap_pack, u16 = _SWAP.pack_into, _U16.pack_into

    def cycle() -> object:
        buf[:n] = request
        vihl, total, frag, proto = outer_unpack(buf, 0)
        ihl = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or ihl < 20 or total > n or proto != 17 or frag & 0x3FFF:
            raise ValueError("not a Geneve frame")
        dport, ulen, b0, b1, ptype = udp_unpack(buf, ihl)
        inner = ihl + 16 + ((b0 & 0x3F) << 2)
        # Version 0; no critical option (the C bit) and not a control packet (the O bit).
        if dport != 6081 or ulen != total - ihl or b0 >> 6 or b1 & 0xC0 or ptype != 0x0800:
            raise ValueError("not a Geneve frame this appliance handles")
        if inner + 20 > total:
            raise ValueError("truncated")
        ivihl, itotal, ifrag, iproto = outer_unpack(buf, inner)
        l4 = inner + ((ivihl & 0x0F) << 2)
        end = inner + itotal
        if ivihl >> 4 != 4 or end > total or l4 + 8 > end or iproto != 17 or ifrag & 0x3FFF:
            raise ValueError("not inner UDP")
        src, dst = swap_unpack(buf, 12)
        swap_pack(buf, 12, dst, src)
        start = l4 + 8
        if buf.find(OLD, start, end) >= 0:
            data = buf[start:end].replace(OLD, NEW)
            end = start + len(data)
            buf[start:end] = data
            u16(buf, inner + 2, end - inner)
            u16(buf, l4 + 4, end - l4)
            u16(buf, 2, end)
            u16(buf, ihl + 4, end - ihl)
        if fix(cbuf, len(buf), end, inner, l4, 17, 0) != 0:
            raise ValueError("checksums not fixed")
        return view[:end]

    return cycle


class _Bare:
    """A packet object reduced to what the cycle touches: geneve's shape without its checks.

    Not a codec: it takes this benchmark's frame only and checks nothing an edit could get
    wrong (empty needles, size limits, other protocols, a buffer that must grow). It shows what
    the shape alone costs in this interpreter, an object and three calls (parse,
    replace_in_payload, reply), as geneve's public API has: geneve cannot be faster than this,
    so its ratio to the floor cannot go below this row's.
    """

    __slots__ = ("buf", "cview", "fix", "ip_end", "length", "view")
    buf: bytearray
    cview: Any
    fix: Callable[..., int]
    view: memoryview
    length: int
    ip_end: int

    @classmethod
    def parse(cls, buf: bytearray, n: int, reuse: _Bare) -> _Bare:
        (vihl, total, frag, proto, dport, ulen, b0, b1, ptype, _o1, _o2, _o3,
         ivihl, itotal, ifrag, iproto, iulen) = _LAYOUT.unpack_from(buf)  # fmt: skip
        if not (
            vihl == 0x45 and proto == 17 and dport == 6081 and 68 <= total <= n
            and ulen == total - 20 and not frag & 0x3FFF and b0 == 8 and not b1 & 0xC0
            and ptype == 0x0800 and ivihl == 0x45 and iproto == 17 and not ifrag & 0x3FFF
            and 28 <= itotal <= total - 68 and iulen == itotal - 20
        ):  # fmt: skip
            raise ValueError("not a GWLB frame with inner IPv4/UDP")
        reuse.length = total
        reuse.ip_end = 68 + itotal
        return reuse

    def replace_in_payload(self, old: bytes, new: bytes) -> None:
        buf, end = self.buf, self.ip_end
        if buf.find(old, 96, end) >= 0:
            data = buf[96:end].replace(old, new)
            end = 96 + len(data)
            buf[96:end] = data
            u16 = _U16.pack_into
            u16(buf, 70, end - 68)
            u16(buf, 92, end - 88)
            u16(buf, 2, end)
            u16(buf, 24, end - 20)
            self.length = self.ip_end = end

    def reply(self) -> memoryview:
        if self.fix(self.cview, len(self.buf), self.length, 68, 88, 17, 0) != 0:
            raise ValueError("checksums not fixed")
        buf = self.buf
        src, dst = _SWAP.unpack_from(buf, 12)
        _SWAP.pack_into(buf, 12, dst, src)
        return self.view[: self.length]


def bare_object_cycle(request: bytes) -> Cycle:
    """The cycle through _Bare, one object per buffer re-filled per frame (as geneve does)."""
    from geneve.checksum import ffi, lib

    n = len(request)
    buf = bytearray(RECEIVE_BUFFER)
    packet = object.__new__(_Bare)
    packet.buf, packet.view = buf, memoryview(buf)
    packet.cview, packet.fix = ffi.from_buffer(buf), lib.geneve_fix
    parse = _Bare.parse

    def cycle() -> object:
        buf[:n] = request
        p = parse(buf, n, packet)
        p.replace_in_payload(OLD, NEW)
        return p.reply()

    return cycle


def ones_sum(data: bytes | bytearray, initial: int = 0) -> int:
    """One's-complement sum of an even number of bytes: the big integer modulo 0xFFFF.

    2**16 is 1 modulo 0xFFFF, so the words of a big-endian integer add up modulo 0xFFFF; the
    arithmetic runs in C inside CPython. A non-zero multiple of 0xFFFF sums to 0xFFFF.
    """
    value = int.from_bytes(data, "big") + initial
    return value and (value % 0xFFFF or 0xFFFF)


def floor_pure_python_cycle(request: bytes) -> Cycle:
    """The floor's flat code with its own pure-Python checksums: the floor for the fallback.

    Up to the checksums it repeats floor_cycle line for line rather than sharing a helper:
    a floor is flat code, and a call would add its own cost to it.
    """
    n = len(request)
    buf = bytearray(RECEIVE_BUFFER)
    layout = _LAYOUT.unpack_from
    swap_unpack, swap_pack = _SWAP.unpack_from, _SWAP.pack_into
    u16, pseudo_unpack = _U16.pack_into, _PSEUDO.unpack_from

    def cycle() -> object:
        buf[:n] = request
        (vihl, total, frag, proto, dport, ulen, b0, b1, ptype, _o1, _o2, _o3,
         ivihl, itotal, ifrag, iproto, iulen) = layout(buf)  # fmt: skip
        if not (
            vihl == 0x45 and proto == 17 and dport == 6081 and 68 <= total <= n
            and ulen == total - 20 and not frag & 0x3FFF and b0 == 8 and not b1 & 0xC0
            and ptype == 0x0800 and ivihl == 0x45 and iproto == 17 and not ifrag & 0x3FFF
            and 28 <= itotal <= total - 68 and iulen == itotal - 20
        ):  # fmt: skip
            raise ValueError("not a GWLB frame with inner IPv4/UDP")
        end = 68 + itotal
        src, dst = swap_unpack(buf, 12)
        swap_pack(buf, 12, dst, src)
        if buf.find(OLD, 96, end) >= 0:
            data = buf[96:end].replace(OLD, NEW)
            end = 96 + len(data)
            buf[96:end] = data
            u16(buf, 70, end - 68)
            u16(buf, 92, end - 88)
            u16(buf, 2, end)
            u16(buf, 24, end - 20)
        # Inner IPv4 header, inner UDP (pseudo-header: addresses, protocol, length), outer.
        u16(buf, 78, 0)
        u16(buf, 78, ~ones_sum(buf[68:88]) & 0xFFFF)
        a, b, c, d = pseudo_unpack(buf, 80)
        u16(buf, 94, 0)
        segment = buf[88:end]
        if len(segment) % 2:
            segment.append(0)
        u16(buf, 94, (~ones_sum(segment, a + b + c + d + 17 + end - 88) & 0xFFFF) or 0xFFFF)
        u16(buf, 10, 0)
        u16(buf, 10, ~ones_sum(buf[:20]) & 0xFFFF)
        return memoryview(buf)[:end]

    return cycle


def dpkt_cycle(request: bytes) -> Cycle:
    import dpkt

    ip_class = dpkt.ip.IP
    in_cksum = dpkt.in_cksum

    def cycle() -> object:
        outer = ip_class(request)
        udp = outer.data
        if udp.dport != GENEVE_PORT:
            raise ValueError("not Geneve")
        geneve_bytes = udp.data  # dpkt has no Geneve class: its header is read by hand
        header_length = 8 + ((geneve_bytes[0] & 0x3F) << 2)
        inner = ip_class(geneve_bytes[header_length:])
        inner_udp = inner.data
        inner_udp.data = inner_udp.data.replace(OLD, NEW)
        inner_udp.ulen = 8 + len(inner_udp.data)
        inner_udp.sum = 0  # a zero sum makes dpkt compute the IP length and both checksums
        inner.sum = 0
        outer.src, outer.dst = outer.dst, outer.src
        udp.data = geneve_bytes[:header_length] + bytes(inner)
        udp.ulen = 8 + len(udp.data)
        # A zero outer sum would also make dpkt fill in the outer UDP checksum, which must stay
        # 0 here: compute the header checksum with dpkt's own routine instead.
        outer.len = len(outer)
        outer.sum = 0
        outer.sum = in_cksum(outer.pack_hdr() + bytes(outer.opts))
        return bytes(outer)

    return cycle


def scapy_cycle(request: bytes) -> Cycle:
    from scapy.contrib.geneve import GENEVE
    from scapy.layers.inet import IP, UDP

    def cycle() -> object:
        outer = IP(request)
        outer.src, outer.dst = outer.dst, outer.src
        inner = outer[GENEVE].payload
        inner_udp = inner[UDP]
        raw = inner_udp.payload
        raw.load = raw.load.replace(OLD, NEW)
        # Deleted fields are computed again when the packet is built; the outer UDP checksum,
        # dissected as 0, stays 0.
        del inner.len, inner.chksum, inner_udp.len, inner_udp.chksum
        del outer.len, outer.chksum, outer[UDP].len
        return bytes(outer)

    return cycle


def noop_cycle(request: bytes) -> Cycle:
    def cycle() -> object:
        return None

    return cycle


# -- timing ------------------------------------------------------------------------------------


def batch_size(cycle: Cycle, batch_ms: float) -> int:
    """Calls that take about ``batch_ms`` milliseconds."""
    calls = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(calls):
            cycle()
        elapsed = time.perf_counter_ns() - start
        if elapsed > 2e5 or calls > 1 << 20:
            return max(1, int(calls * batch_ms * 1e6 / elapsed))
        calls *= 4


def time_rounds(cycles: dict[str, Cycle], rounds: int, batch_ms: float) -> dict[str, float]:
    """Median ns per call of each cycle, net of an empty call's cost, over ``rounds`` rounds."""
    cycles = {"(empty)": noop_cycle(b""), **cycles}
    sizes = {name: batch_size(cycle, batch_ms) for name, cycle in cycles.items()}
    samples: dict[str, list[float]] = {name: [] for name in cycles}
    names = list(cycles)
    gc.collect()
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            cycle, calls = cycles[name], sizes[name]
            start = time.perf_counter_ns()
            for _ in range(calls):
                cycle()
            samples[name].append((time.perf_counter_ns() - start) / calls)
    empty = statistics.median(samples.pop("(empty)"))
    return {name: statistics.median(values) - empty for name, values in samples.items()}


def checksum_data(size: int) -> bytearray:
    return bytearray((i * 7 + 3) & 0xFF for i in range(size))


def checksum_cycles() -> dict[str, Cycle]:
    def one(data: bytearray) -> Cycle:
        return lambda: internet_checksum(data)

    return {str(size): one(checksum_data(size)) for size in CHECKSUM_SIZES}


# -- the child process: geneve's pure-Python fallback -------------------------------------------


def worker(rounds: int, batch_ms: float) -> None:
    """Time geneve (whichever checksum the environment selects); print JSON for the parent."""
    requests = {size: request_and_reply(size)[0] for size in FRAME_SIZES}
    cycles = {str(size): geneve_cycle(request) for size, request in requests.items()}
    outputs = {name: bytes(cycle()).hex() for name, cycle in cycles.items()}
    result = {
        "implementation": geneve.checksum.IMPLEMENTATION,
        "outputs": outputs,
        "cycle": time_rounds(cycles, rounds, batch_ms),
        "checksum": time_rounds(checksum_cycles(), rounds, batch_ms),
        "checksum_values": {
            str(size): internet_checksum(checksum_data(size)) for size in CHECKSUM_SIZES
        },
    }
    print(json.dumps(result))


def run_fallback(rounds: int, batch_ms: float) -> dict[str, Any]:
    env = dict(os.environ, GENEVE_PURE_PYTHON="1")
    argv = [sys.executable, os.path.abspath(__file__), "--worker"]
    argv += ["--rounds", str(rounds), "--batch-ms", str(batch_ms)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    if result["implementation"] != "python":
        raise SystemExit("the child process did not use the pure-Python fallback")
    return result


# -- the report ----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    versions = [f"geneve {geneve.__version__}"]
    for name in ("dpkt", "scapy", "cffi"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), "
        f"{platform.system()} {platform.release()}",
        f"python:  {platform.python_implementation()} {platform.python_version()}; "
        + ", ".join(versions),
        f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average at start {load}",
    ]


ROWS = (
    ("floor", "floor: flat code, C fix-up, views made once"),
    ("floor-per-packet", "floor: the same, views made per packet"),
    ("floor-header-walk", "flat code reading offsets from headers, views once"),
    ("floor-python", "floor: flat code, pure-Python checksums"),
    ("bare-object", "bound: geneve's object and three calls, no checks"),
    ("geneve-rb", "geneve, C, in a geneve.ReceiveBuffer"),
    ("geneve", "geneve, C, in a bytearray"),
    ("geneve-steps", "geneve, C, ReceiveBuffer, a call per step"),
    ("geneve-python", "geneve, pure-Python fallback (GENEVE_PURE_PYTHON=1)"),
    ("geneve-process", "geneve.Pipeline + reference rules, C"),
    ("dpkt", "dpkt"),
    ("scapy", "scapy"),
)
# Like with like: a ReceiveBuffer makes its views once, as the first floor does; a plain
# bytearray needs them per packet, as the second floor does. dpkt and scapy are compared with
# the slower of the two geneve rows.
RATIOS = (
    ("geneve C ReceiveBuffer / floor, views once", "geneve-rb", "floor", "<= 1.3"),
    ("geneve C bytearray / floor, views per packet", "geneve", "floor-per-packet", "<= 1.3"),
    ("geneve C ReceiveBuffer / header-walking flat code", "geneve-rb", "floor-header-walk", ""),
    ("geneve C ReceiveBuffer, a call per step / floor", "geneve-steps", "floor", ""),
    ("bound (object, three calls, no checks) / floor, views once", "bare-object", "floor", ""),
    ("geneve fallback / floor, pure-Python checksums", "geneve-python", "floor-python", ""),
    ("dpkt / geneve C bytearray", "dpkt", "geneve", ">= 6"),
    ("scapy / geneve C bytearray", "scapy", "geneve", ">= 150"),
)


def table(
    cycle_ns: dict[str, dict[int, float]],
    checksum_ns: dict[str, dict[int, float]],
    rounds: int,
) -> list[str]:
    width = 60
    sizes = "".join(f"{f'{size} B':>10}" for size in FRAME_SIZES)
    out = [
        f"{'GWLB cycle, median µs per packet':{width}}{sizes}",
        "-" * (width + 10 * len(FRAME_SIZES) + 10),
    ]
    for key, label in ROWS:
        cells = "".join(f"{cycle_ns[key][size] / 1000:10.2f}" for size in FRAME_SIZES)
        out.append(f"{label:{width}}{cells}")
    out.append("")
    out.append(f"{'ratios of those medians':{width}}{sizes}{'target':>10}{'met':>6}")
    for label, top, bottom, target in RATIOS:
        ratios = [cycle_ns[top][size] / cycle_ns[bottom][size] for size in FRAME_SIZES]
        met = ""
        if target:
            bound = float(target.split()[1])
            ok = all(r <= bound if target.startswith("<=") else r >= bound for r in ratios)
            met = "yes" if ok else "no"
        cells = "".join(f"{r:10.2f}" for r in ratios)
        out.append(f"{label:{width}}{cells}{target:>10}{met:>6}")
    out.append("")
    sums = "".join(f"{f'{size} B':>10}" for size in CHECKSUM_SIZES)
    out.append(f"{'geneve.checksum.internet_checksum(bytearray)':{width}}{sums}")
    for key, label in (("c", "C"), ("python", "pure-Python fallback")):
        ns = checksum_ns[key]
        out.append(
            f"{label + ', GB/s':{width}}" + "".join(f"{size / ns[size]:10.2f}" for size in ns)
        )
        out.append(
            f"{label + ', ns per call':{width}}" + "".join(f"{v:10.0f}" for v in ns.values())
        )
    out.append("")
    out.append(f"{rounds} rounds; each value is the median over rounds, net of an empty call.")
    out.append("floor: one flat function written for this benchmark (struct, slicing, no objects)")
    out.append("for GWLB's frame layout; 'C fix-up' is geneve's fused C routine through cffi;")
    out.append("'views': the cffi view and the memoryview of the receive buffer.")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, rougher numbers")
    parser.add_argument("--rounds", type=int, help="rounds per measurement")
    parser.add_argument("--batch-ms", type=float, help="milliseconds per timed batch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (15 if args.quick else 200)
    batch_ms = args.batch_ms or (2.0 if args.quick else 8.0)
    if args.worker:
        worker(rounds, batch_ms)
        return 0
    if geneve.checksum.IMPLEMENTATION != "c":
        raise SystemExit("geneve's C checksum is not in use here (built? GENEVE_PURE_PYTHON?)")

    for line in machine():
        print(line)
    print(f"command: python benchmarks/codec.py{' --quick' if args.quick else ''}")
    print()

    factories: dict[str, Callable[[bytes], Cycle]] = {
        "floor": floor_cycle,
        "floor-per-packet": lambda r: floor_cycle(r, views_once=False),
        "floor-header-walk": floor_header_walk_cycle,
        "floor-python": floor_pure_python_cycle,
        "bare-object": bare_object_cycle,
        "geneve-rb": lambda r: geneve_cycle(r, ReceiveBuffer),
        "geneve": geneve_cycle,
        "geneve-steps": geneve_steps_cycle,
        "geneve-process": geneve_process_cycle,
        "dpkt": dpkt_cycle,
        "scapy": scapy_cycle,
    }
    cycle_ns: dict[str, dict[int, float]] = {key: {} for key, _ in ROWS}
    replies = {}
    for size in FRAME_SIZES:
        request, reply = request_and_reply(size)
        replies[size] = reply
        cycles = {key: make(request) for key, make in factories.items()}
        for key, cycle in cycles.items():  # same bytes as the independent reply, or no timing
            got = bytes(cycle())
            assert got == reply, f"{key} on {size} bytes: wrong output"
        for key, ns in time_rounds(cycles, rounds, batch_ms).items():
            cycle_ns[key][size] = ns
    checksum_c = time_rounds(checksum_cycles(), rounds, batch_ms)
    checksum_ns = {"c": {int(size): ns for size, ns in checksum_c.items()}}

    fallback = run_fallback(rounds, batch_ms)
    for size in FRAME_SIZES:
        assert bytes.fromhex(fallback["outputs"][str(size)]) == replies[size], "fallback output"
        cycle_ns["geneve-python"][size] = fallback["cycle"][str(size)]
    for size in CHECKSUM_SIZES:
        expected = internet_checksum(checksum_data(size))
        assert fallback["checksum_values"][str(size)] == expected, "fallback checksum"
    checksum_ns["python"] = {int(k): v for k, v in fallback["checksum"].items()}

    print("every output checked: the same bytes as the reply built independently")
    print()
    for line in table(cycle_ns, checksum_ns, rounds):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
