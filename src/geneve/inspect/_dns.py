"""The DNS query: its id, flags and questions, over UDP or TCP, and the refusal of one.

Strategy: one pass over the header (RFC 1035 4.1.1) and the question section (4.1.2); the
records after it (a query's EDNS OPT record) are not read, since the questions are what a
filter decides on: a UDP query cut after its questions still parses. Names are read label by
label with every compression pointer made to point strictly before the last one followed, so
that a name can neither loop nor point ahead; labels come out lower-cased and, outside the
letters, digits, hyphen and underscore, escaped as master files write them (\\DDD, RFC 1035 5.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import Incomplete, Malformed

__all__ = ["RCODE_REFUSED", "DnsQuery", "DnsQuestion", "dns_refused", "parse_dns_query"]

Buffer = bytes | bytearray | memoryview

HEADER_LENGTH = 12  # RFC 1035 4.1.1
FLAG_QR = 0x8000  # a response
FLAG_OPCODE = 0x7800
FLAG_RD = 0x0100  # recursion desired
RCODE_REFUSED = 5  # RFC 1035 4.1.1: "The name server refuses to perform the specified operation"
MAX_LABEL = 63  # RFC 1035 2.3.4: "labels 63 octets or less"
MAX_NAME = 255  # RFC 1035 2.3.4: "names 255 octets or less" (on the wire, length octets too)
_PLAIN_LABEL = re.compile(rb"[a-z0-9_-]*\Z", re.I)


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """One question: ``name`` lower-cased without the trailing dot ("" for the root)."""

    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """A DNS query's header fields and questions.

    ``length``: bytes of data the message took: over TCP the length prefix and the message,
    over UDP the whole datagram (records after the questions are not read).
    """

    id: int
    flags: int
    questions: tuple[DnsQuestion, ...]
    length: int

    @property
    def opcode(self) -> int:
        return (self.flags & FLAG_OPCODE) >> 11


def _message(data: Buffer, tcp: bool) -> tuple[bytes | bytearray, int, int]:
    """The buffer, and where its message starts and ends (after a TCP length prefix)."""
    buf = data if isinstance(data, bytes | bytearray) else bytes(data)
    if not tcp:
        return buf, 0, len(buf)
    # RFC 7766 8 (RFC 1035 4.2.2): over TCP "the message is prefixed with a two byte length
    # field which gives the message length, excluding the two byte length field".
    if len(buf) < 2:
        raise Incomplete("DNS-over-TCP length prefix cut short")
    size = buf[0] << 8 | buf[1]
    if size < HEADER_LENGTH:
        raise Malformed(f"DNS-over-TCP message of {size} bytes is shorter than a header")
    if len(buf) < 2 + size:
        if len(buf) >= 5 and buf[4] & 0x80:  # the QR bit, when it has arrived
            raise Malformed("a DNS response is not a query")
        raise Incomplete("DNS-over-TCP message cut short", 2 + size)
    return buf, 2, 2 + size


def parse_dns_query(data: Buffer, *, tcp: bool = False) -> DnsQuery:
    """Parse a DNS query: a UDP datagram, or with ``tcp`` a length-prefixed TCP message.

    Raises :class:`Incomplete` for a valid start (over TCP until the whole message is in, with
    ``needed`` its total length), :class:`Malformed` for a response, a bad name or lengths.
    """
    query, _qend = _parse(data, tcp)
    return query


def _parse(data: Buffer, tcp: bool) -> tuple[DnsQuery, int]:
    buf, start, end = _message(data, tcp)
    # Over TCP the whole message is in, so a read past its end is malformed; over UDP the
    # datagram so far may be a prefix.
    short: type[Incomplete | Malformed] = Malformed if tcp else Incomplete
    if end - start < 4:
        if end - start >= 3 and buf[start + 2] & 0x80:
            raise Malformed("a DNS response is not a query")
        raise short("DNS header cut short")
    flags = buf[start + 2] << 8 | buf[start + 3]
    if flags & FLAG_QR:
        raise Malformed("a DNS response is not a query")
    if end - start < HEADER_LENGTH:
        raise short("DNS header cut short")
    count = buf[start + 4] << 8 | buf[start + 5]
    questions = []
    p = start + HEADER_LENGTH
    for _ in range(count):
        name, p = _name(buf, p, start, end, short)
        if p + 4 > end:
            raise short("DNS question cut short")
        questions.append(DnsQuestion(name, buf[p] << 8 | buf[p + 1], buf[p + 2] << 8 | buf[p + 3]))
        p += 4
    ident = buf[start] << 8 | buf[start + 1]
    return DnsQuery(ident, flags, tuple(questions), end), p


def _name(
    buf: bytes | bytearray, p: int, start: int, end: int, short: type[Incomplete | Malformed]
) -> tuple[str, int]:
    """The name at p, and where the question goes on (after the name's first pointer)."""
    labels: list[bytes] = []
    wire = 1  # the root label's length octet
    after = -1  # where the question goes on, once a pointer has been followed
    limit = p  # a pointer must point strictly before the last place it came from
    while True:
        if p >= end:
            raise short("DNS name cut short")
        size = buf[p]
        if size == 0:
            p += 1
            break
        if size >= 0xC0:  # RFC 1035 4.1.4: a pointer, "11" then a 14-bit offset
            if p + 2 > end:
                raise short("DNS name pointer cut short")
            target = start + ((size & 0x3F) << 8 | buf[p + 1])
            if after < 0:
                after = p + 2
            if not start + HEADER_LENGTH <= target < limit:
                raise Malformed("DNS name pointer points ahead, at itself or into the header")
            p = limit = target
            continue
        if size > MAX_LABEL:  # 0x40 and 0x80 are reserved label types (RFC 6891 5, RFC 2673)
            raise Malformed(f"DNS label of {size} bytes, or of a reserved type")
        wire += 1 + size
        if wire > MAX_NAME:
            raise Malformed("DNS name longer than 255 bytes")
        if p + 1 + size > end:
            raise short("DNS label cut short")
        labels.append(bytes(buf[p + 1 : p + 1 + size]))
        p += 1 + size
    if after < 0:
        after = p
    if _PLAIN_LABEL.match(b"".join(labels)) is None:  # a dot inside a label is escaped too
        return ".".join(_escaped(label) for label in labels), after
    return b".".join(labels).decode("ascii").lower(), after


def _escaped(label: bytes) -> str:
    """A label as a master file writes it: \\DDD for bytes outside letters, digits, - and _."""
    return "".join(
        chr(c).lower() if _PLAIN_LABEL.match(bytes((c,))) else f"\\{c:03d}" for c in label
    )


def dns_refused(query_bytes: Buffer, *, tcp: bool = False) -> bytes:
    """The answer an egress filter sends for a denied query: rcode REFUSED, nothing answered.

    Same id; QR set; opcode and RD copied; AA, TC, RA and the rest clear; the question section
    echoed byte for byte; no answer, authority or additional records. With ``tcp``, length
    prefixed. Raises what :func:`parse_dns_query` raises for ``query_bytes``.
    """
    query, qend = _parse(query_bytes, tcp)
    buf = bytes(query_bytes)
    start = 2 if tcp else 0
    flags = FLAG_QR | (query.flags & (FLAG_OPCODE | FLAG_RD)) | RCODE_REFUSED
    header = bytes(
        (query.id >> 8, query.id & 0xFF, flags >> 8, flags & 0xFF,
         buf[start + 4], buf[start + 5], 0, 0, 0, 0, 0, 0)
    )  # fmt: skip
    message = header + buf[start + HEADER_LENGTH : qend]
    if tcp:
        return len(message).to_bytes(2, "big") + message
    return message
