"""The TLS ClientHello: server name, ALPN and versions, from the first bytes a client sends.

Strategy: two phases. The first walks the TLS records (RFC 8446 5.1) and gathers the handshake
message, which may span several records; only this phase can answer "incomplete", since only
here can more bytes help. The second parses the ClientHello body (RFC 8446 4.1.2) over a buffer
that holds all of it, so anything that runs past an end there is malformed. The common case, a
hello in one record, is parsed in place at offsets; a hello over several records is joined once.
Extensions other than the three read here are skipped by their length, not rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import Incomplete, Malformed

__all__ = ["ClientHello", "looks_like_tls", "parse_client_hello"]

Buffer = bytes | bytearray | memoryview

CONTENT_TYPE_HANDSHAKE = 22  # RFC 8446 5.1, ContentType.handshake
HANDSHAKE_CLIENT_HELLO = 1  # RFC 8446 4, HandshakeType.client_hello
EXT_SERVER_NAME = 0  # RFC 6066 3
EXT_ALPN = 16  # RFC 7301 3.1, application_layer_protocol_negotiation
EXT_SUPPORTED_VERSIONS = 43  # RFC 8446 4.2.1
NAME_TYPE_HOST_NAME = 0  # RFC 6066 3

# RFC 8446 5.1: "The length MUST NOT exceed 2^14 bytes."
MAX_FRAGMENT = 1 << 14
# The largest body the ClientHello's own vectors allow: version 2, random 32, session id 1+32,
# cipher suites 2+(2^16-2), compression methods 1+(2^8-1), extensions 2+(2^16-1).
MAX_HELLO_BODY = 2 + 32 + 33 + 65536 + 256 + 65537
# The smallest: no session id, one cipher suite, one compression method, no extensions.
MIN_HELLO_BODY = 2 + 32 + 1 + 4 + 2
# A host name as RFC 6066 3 sends it: ASCII, dot-separated labels, no trailing dot. Letters,
# digits, hyphen and underscore; labels of 1 to 63 (RFC 1035 2.3.4), at most 253 in all.
_HOST_NAME = re.compile(rb"(?=.{1,253}\Z)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\Z", re.I | re.S)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello says about the connection it opens.

    ``sni``: the host_name of the server_name extension, lower-cased, or None without one.
    ``alpn``: the offered protocols in the client's order (bytes read as Latin-1: RFC 7301
    allows any octets). ``legacy_version``: the body's version field (0x0303 from a TLS 1.3
    client). ``supported_versions``: the extension's list in the client's order, GREASE
    values included; empty when absent. ``length``: bytes of data the records holding the
    hello took, from the first record header to the end of the record with its last byte.
    """

    sni: str | None
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    length: int


def looks_like_tls(data: Buffer) -> bool:
    """True when the first bytes (up to 6) begin a TLS handshake record carrying a ClientHello.

    Cheap: no length beyond the record header is checked. An empty buffer is not TLS.
    """
    n = len(data)
    if n == 0 or data[0] != CONTENT_TYPE_HANDSHAKE:
        return False
    if n >= 3 and (data[1] != 3 or data[2] > 4):
        return False
    if n == 2 and data[1] != 3:
        return False
    if n >= 5 and not 0 < (data[3] << 8 | data[4]) <= MAX_FRAGMENT:
        return False
    return n < 6 or data[5] == HANDSHAKE_CLIENT_HELLO


def _check_record_start(buf: Buffer, pos: int, n: int) -> None:
    """Malformed unless buf[pos:n] (shorter than a header) can begin a handshake record."""
    if n > pos and buf[pos] != CONTENT_TYPE_HANDSHAKE:
        raise Malformed("not a TLS handshake record")
    if n > pos + 1 and buf[pos + 1] != 3:
        raise Malformed("TLS record version is not 3.x")
    if n > pos + 2 and buf[pos + 2] > 4:
        raise Malformed("TLS record version is not 3.x")
    if n > pos + 3 and buf[pos + 3] > MAX_FRAGMENT >> 8:
        raise Malformed("TLS record longer than 2^14 bytes")


def parse_client_hello(data: Buffer) -> ClientHello:
    """Parse the ClientHello at the start of ``data`` (the first bytes a TLS client sends).

    Raises :class:`Incomplete` when ``data`` is a valid start that needs more bytes, and
    :class:`Malformed` when it can never be a ClientHello.
    """
    buf = data if isinstance(data, bytes | bytearray) else bytes(data)
    n = len(buf)
    pos = 0
    have = 0  # handshake bytes gathered
    total = -1  # 4 + the handshake length, once the handshake header is in
    spans: list[tuple[int, int]] = []  # (start, end) of each record's fragment
    while total < 0 or have < total:
        if n - pos < 5:
            _check_record_start(buf, pos, n)
            needed = None if total < 0 else pos + 5 + total - have
            raise Incomplete("TLS record header cut short", needed)
        _check_record_start(buf, pos, pos + 4)
        rec_len = buf[pos + 3] << 8 | buf[pos + 4]
        if rec_len == 0:
            # RFC 8446 5.1: "Implementations MUST NOT send zero-length fragments of Handshake
            # types."
            raise Malformed("empty TLS handshake record")
        if rec_len > MAX_FRAGMENT:
            raise Malformed("TLS record longer than 2^14 bytes")
        start = pos + 5
        end = start + rec_len
        if total < 0:
            total = _handshake_total(buf, spans, start, min(end, n))
        if end > n:
            if total < 0:
                needed = None
            elif total - have <= rec_len:
                needed = end
            else:
                needed = end + 5 + total - have - rec_len
            raise Incomplete("TLS record cut short", needed)
        spans.append((start, end))
        have += rec_len
        pos = end
    if len(spans) == 1:
        body, p = buf, spans[0][0] + 4
    else:
        body, p = b"".join(buf[s:e] for s, e in spans), 4
    return _parse_body(body, p, p + total - 4, pos)


def _handshake_total(buf: Buffer, spans: list[tuple[int, int]], start: int, stop: int) -> int:
    """4 + the handshake length once its 4-byte header is in (it may span records), else -1."""
    # Only the first 4 bytes: the spans so far hold fewer, or the header would be known.
    head = buf[start : min(stop, start + 4)]
    if spans:
        head = b"".join(buf[s:e] for s, e in spans) + head
    if len(head) >= 1 and head[0] != HANDSHAKE_CLIENT_HELLO:
        raise Malformed("TLS handshake message is not a ClientHello")
    if len(head) < 4:
        return -1
    length = head[1] << 16 | head[2] << 8 | head[3]
    if not MIN_HELLO_BODY <= length <= MAX_HELLO_BODY:
        raise Malformed(f"ClientHello length {length} is out of range")
    return 4 + length


def _parse_body(b: Buffer, p: int, end: int, length: int) -> ClientHello:
    # Every read below is checked against `end`, the end of the hello: all of it is in `b`.
    legacy_version = b[p] << 8 | b[p + 1]
    if b[p] != 3:
        raise Malformed(f"ClientHello version 0x{legacy_version:04x} is not 3.x")
    p += 34  # legacy_version, random
    session_id = b[p]
    if session_id > 32:  # legacy_session_id<0..32>
        raise Malformed("ClientHello session id longer than 32 bytes")
    p += 1 + session_id
    if p + 2 > end:
        raise Malformed("ClientHello ends in its session id")
    suites = b[p] << 8 | b[p + 1]
    if suites < 2 or suites & 1:  # cipher_suites<2..2^16-2>, two bytes each
        raise Malformed("ClientHello cipher suites length is not a positive even number")
    p += 2 + suites
    if p + 1 > end:
        raise Malformed("ClientHello ends in its cipher suites")
    methods = b[p]
    if methods < 1:  # legacy_compression_methods<1..2^8-1>
        raise Malformed("ClientHello has no compression method")
    p += 1 + methods
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if p == end:  # a hello without extensions (TLS 1.2 and before allow it)
        return ClientHello(sni, alpn, legacy_version, versions, length)
    if p + 2 > end:
        raise Malformed("ClientHello ends in its compression methods")
    if p + 2 + (b[p] << 8 | b[p + 1]) != end:
        raise Malformed("ClientHello extensions do not fill the hello")
    p += 2
    seen = set()
    while p < end:
        if p + 4 > end:
            raise Malformed("ClientHello extension header cut short")
        kind = b[p] << 8 | b[p + 1]
        start = p + 4
        p = start + (b[p + 2] << 8 | b[p + 3])
        if p > end:
            raise Malformed("ClientHello extension runs past the hello")
        # RFC 8446 4.2: "There MUST NOT be more than one extension of the same type in a given
        # extension block."
        if kind in seen:
            raise Malformed(f"ClientHello repeats extension {kind}")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            sni = _server_name(b, start, p)
        elif kind == EXT_ALPN:
            alpn = _alpn(b, start, p)
        elif kind == EXT_SUPPORTED_VERSIONS:
            versions = _supported_versions(b, start, p)
    return ClientHello(sni, alpn, legacy_version, versions, length)


def _vector_end(b: Buffer, p: int, end: int, what: str) -> int:
    """The start of a vector with a 2-byte length at p that must fill up to `end`, non-empty."""
    if p + 2 > end or p + 2 + (b[p] << 8 | b[p + 1]) != end or p + 2 == end:
        raise Malformed(f"{what} list length does not fill its extension")
    return p + 2


def _server_name(b: Buffer, p: int, end: int) -> str:
    p = _vector_end(b, p, end, "server_name")  # server_name_list<1..2^16-1>
    name: str | None = None
    while p < end:
        if p + 3 > end:
            raise Malformed("server_name entry cut short")
        # RFC 6066 3: a name type other than host_name has no length a reader could skip by.
        if b[p] != NAME_TYPE_HOST_NAME:
            raise Malformed(f"server_name type {b[p]} is not host_name")
        # "The ServerNameList MUST NOT contain more than one name of the same name_type."
        if name is not None:
            raise Malformed("server_name holds two host names")
        n_end = p + 3 + (b[p + 1] << 8 | b[p + 2])
        if n_end > end:
            raise Malformed("server_name host name runs past its extension")
        raw = bytes(b[p + 3 : n_end])
        # "HostName contains the fully qualified DNS hostname ... represented as a byte string
        # using ASCII encoding without a trailing dot."
        if _HOST_NAME.match(raw) is None:
            raise Malformed("server_name host name is not an ASCII DNS name")
        name = raw.decode("ascii").lower()
        p = n_end
    assert name is not None  # the list is non-empty and every entry sets it or raises
    return name


def _alpn(b: Buffer, p: int, end: int) -> tuple[str, ...]:
    p = _vector_end(b, p, end, "ALPN")  # protocol_name_list<2..2^16-1>
    names = []
    while p < end:
        size = b[p]
        p += 1
        if size == 0 or p + size > end:  # ProtocolName<1..2^8-1>
            raise Malformed("ALPN protocol name is empty or runs past its extension")
        names.append(bytes(b[p : p + size]).decode("latin-1"))
        p += size
    return tuple(names)


def _supported_versions(b: Buffer, p: int, end: int) -> tuple[int, ...]:
    size = b[p] if p < end else 0
    # ClientHello: ProtocolVersion versions<2..254>, two bytes each.
    if size < 2 or size & 1 or p + 1 + size != end:
        raise Malformed("supported_versions length does not fill its extension")
    return tuple(b[i] << 8 | b[i + 1] for i in range(p + 1, end, 2))
