"""Valid TLS ClientHellos, HTTP request heads and DNS queries with known fields, built here.

Written from RFC 8446 4.1.2 / 6066 / 7301, RFC 9112 and RFC 1035 without the parsers under test,
for round trips, prefixes and mutations, the benchmark and the fuzz seeds.
"""

from __future__ import annotations

import struct

__all__ = ["client_hello", "dns_query", "http_request", "split_records"]


def _vec16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _vec8(data: bytes) -> bytes:
    return bytes((len(data),)) + data


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _vec16(body)


def client_hello(
    sni: str | bytes | None = "example.com",
    *,
    alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
    legacy_version: int = 0x0303,
    supported_versions: tuple[int, ...] = (0x0304, 0x0303),
    key_share: int = 32,
    padding: int = 0,
    session_id: bytes = b"\x5a" * 32,
    suites: int = 16,
    extensions: bool = True,
    record_version: int = 0x0301,
    max_record: int = 1 << 14,
) -> bytes:
    """The records of a ClientHello with these fields; ``key_share`` bytes of one key share
    (1216 for an X25519MLKEM768 share), split into records of at most ``max_record`` bytes."""
    exts = b""
    if sni is not None:
        name = sni.encode() if isinstance(sni, str) else sni
        exts += _ext(0, _vec16(b"\x00" + _vec16(name)))
    exts += _ext(10, _vec16(b"\x00\x1d\x00\x17\x00\x18"))  # supported_groups
    exts += _ext(11, b"\x01\x00")  # ec_point_formats
    exts += _ext(13, _vec16(b"\x04\x03\x08\x04\x04\x01\x05\x03"))  # signature_algorithms
    if alpn:
        exts += _ext(16, _vec16(b"".join(_vec8(p) for p in alpn)))
    exts += _ext(23, b"")  # extended_master_secret
    if supported_versions:
        exts += _ext(43, _vec8(b"".join(struct.pack("!H", v) for v in supported_versions)))
    exts += _ext(45, b"\x01\x01")  # psk_key_exchange_modes
    if key_share:
        exts += _ext(51, _vec16(struct.pack("!H", 0x11EC) + _vec16(b"\x42" * key_share)))
    if padding:
        exts += _ext(21, b"\x00" * padding)
    body = (
        struct.pack("!H", legacy_version)
        + bytes(range(32))
        + _vec8(session_id)
        + _vec16(b"".join(struct.pack("!H", 0x1301 + i) for i in range(suites)))
        + b"\x01\x00"
        + (_vec16(exts) if extensions else b"")
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return split_records(message, max_record, record_version)


def split_records(message: bytes, size: int, record_version: int = 0x0301) -> bytes:
    """A handshake message as handshake records of at most ``size`` bytes each."""
    return b"".join(
        struct.pack("!BHH", 22, record_version, len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )


def http_request(
    method: str = "GET",
    target: str = "/",
    host: str | None = "example.com",
    *,
    version: str = "HTTP/1.1",
    fields: tuple[tuple[str, str], ...] = (("User-Agent", "test/1.0"), ("Accept", "*/*")),
    newline: bytes = b"\r\n",
) -> bytes:
    lines = [f"{method} {target} {version}".encode()]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    lines += [f"{name}: {value}".encode() for name, value in fields]
    return newline.join(lines) + newline + newline


def _name(name: str) -> bytes:
    labels = [label.encode() for label in name.split(".") if label]
    return b"".join(_vec8(label) for label in labels) + b"\x00"


def dns_query(
    questions: tuple[tuple[str, int, int], ...] = (("example.com", 1, 1),),
    *,
    ident: int = 0x1234,
    flags: int = 0x0100,
    edns: bool = False,
    tcp: bool = False,
) -> bytes:
    """A query with these (name, qtype, qclass) questions; ``edns`` adds an OPT record."""
    message = struct.pack("!HHHHHH", ident, flags, len(questions), 0, 0, int(edns))
    for name, qtype, qclass in questions:
        message += _name(name) + struct.pack("!HH", qtype, qclass)
    if edns:
        message += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return _vec16(message) if tcp else message
