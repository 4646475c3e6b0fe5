"""A corpus of bad GWLB frames, each with the outcome the pipeline must give it.

Built from one valid frame by targeted damage, so each entry names exactly one fault. The
expected outcome is ``("malformed", reason)``, ``("drop", reason)``, ``("skipped", "")`` or
``("forward", "")`` for inputs that are odd but legitimate (inner fragments, inner IPv6).
"""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from geneve import build_frame

Case = tuple[str, bytes, tuple[str, str]]


def _inner(payload: bytes = b"hello world") -> bytes:
    return bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1111, dport=2222) / payload)


def valid_frame(payload: bytes = b"hello world") -> bytearray:
    return build_frame(_inner(payload), src="10.201.0.1", dst="10.201.0.2", src_port=41000)


def _set16(frame: bytearray, at: int, value: int) -> bytearray:
    struct.pack_into("!H", frame, at, value)
    return frame


def corpus() -> list[Case]:
    base = valid_frame()
    n = len(base)
    cases: list[Case] = []
    # Truncation at every byte offset: the IPv4 total length still claims the full frame.
    for cut in range(n):
        reason = "outer-truncated"
        cases.append((f"truncated-at-{cut}", bytes(base[:cut]), ("malformed", reason)))

    f = bytearray(base)
    f[0] = 0x44  # IHL 4
    cases.append(("outer-ihl-4", bytes(f), ("malformed", "outer-ihl")))
    f = bytearray(base)
    f[0] = 0x4F  # IHL 15: 60 bytes of "options" swallow UDP and Geneve
    cases.append(("outer-ihl-15", bytes(f), ("skipped", "")))
    cases.append(("outer-total-too-big", bytes(_set16(bytearray(base), 2, n + 40)),
                  ("malformed", "outer-truncated")))  # fmt: skip
    cases.append(("outer-total-below-ihl", bytes(_set16(bytearray(base), 2, 12)),
                  ("malformed", "outer-length")))  # fmt: skip
    cases.append(("udp-length-beyond-data", bytes(_set16(bytearray(base), 24, n)),
                  ("malformed", "udp-length")))  # fmt: skip
    cases.append(("udp-length-short", bytes(_set16(bytearray(base), 24, 20)),
                  ("malformed", "udp-length")))  # fmt: skip
    for version in (1, 2, 3):
        f = bytearray(base)
        f[28] = (version << 6) | (f[28] & 0x3F)
        cases.append((f"geneve-version-{version}", bytes(f), ("malformed", "geneve-version")))
    f = bytearray(base)
    f[28] = (f[28] & 0xC0) | 0x3F  # opt len 63 words: past the end
    cases.append(("geneve-opt-len-past-end", bytes(f), ("malformed", "geneve-options")))
    f = bytearray(base)
    f[36 + 3] = 0x1F  # first option claims 124 data bytes
    cases.append(("geneve-option-past-header", bytes(f), ("malformed", "geneve-options")))
    f = bytearray(base)
    f[29] |= 0x80  # O bit
    cases.append(("geneve-control-packet", bytes(f), ("drop", "control")))
    crit = build_frame(_inner(), src="10.201.0.1", dst="10.201.0.2",
                       options=struct.pack("!HBB", 0x0123, 0x85, 1) + b"\0\0\0\0")  # fmt: skip
    crit[29] |= 0x40  # C bit, as a sender of a critical option sets it
    cases.append(("geneve-unknown-critical-option", bytes(crit), ("malformed", "critical-option")))

    inner_off = 68
    f = bytearray(base)
    f[inner_off] = 0x43  # inner IHL 3
    cases.append(("inner-ihl-3", bytes(f), ("malformed", "inner-length")))
    f = bytearray(base)
    f[inner_off] = 0x4F  # inner IHL 15 > inner total
    cases.append(("inner-ihl-15", bytes(f), ("malformed", "inner-length")))
    cases.append(("inner-total-too-big",
                  bytes(_set16(bytearray(base), inner_off + 2, n - inner_off + 10)),
                  ("malformed", "inner-truncated")))  # fmt: skip
    cases.append(("inner-udp-length-wrong",
                  bytes(_set16(bytearray(base), inner_off + 20 + 4, 9)),
                  ("malformed", "inner-udp-length")))  # fmt: skip
    f = bytearray(base)
    f[inner_off] = 0x50  # version 5 where IPv4 was announced
    cases.append(("inner-version-5", bytes(f), ("malformed", "inner-version")))

    frag = bytes(IP(src="192.0.2.1", dst="192.0.2.2", flags="MF", frag=0) / UDP(dport=3000)
                 / b"weakly typed")  # fmt: skip
    cases.append(("inner-first-fragment", bytes(build_frame(frag)), ("forward", "")))
    frag = bytes(IP(src="192.0.2.1", dst="192.0.2.2", frag=100, proto=17) / b"drop me!")
    cases.append(("inner-later-fragment", bytes(build_frame(frag)), ("forward", "")))
    v6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=6) / b"six")
    cases.append(("inner-ipv6", bytes(build_frame(v6)), ("forward", "")))

    zero = bytearray(base[:28])
    _set16(zero, 2, 28)
    _set16(zero, 24, 8)
    cases.append(("zero-length-datagram", bytes(zero), ("malformed", "geneve-truncated")))
    big = build_frame(_inner(b"x" * 9000))
    cases.append(("oversized-datagram", bytes(big), ("malformed", "oversized")))
    return cases
