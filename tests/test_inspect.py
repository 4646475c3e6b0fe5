"""geneve.inspect: the ClientHello, HTTP request head and DNS query parsers.

Round trips over messages built with known fields (support.messages), every strict prefix
incomplete, random and mutated bytes raising only InspectError, the captures as tshark reads
them, and hellos, requests and queries sent at test time by openssl, curl and dig.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.messages import client_hello, dns_query, http_request, split_records

from geneve import GeneveError, Packet
from geneve._pcap import ip_offset, read_capture
from geneve.inspect import (
    MAX_HEAD,
    RCODE_REFUSED,
    ClientHello,
    DnsQuery,
    DnsQuestion,
    HttpRequest,
    Incomplete,
    InspectError,
    Malformed,
    dns_refused,
    looks_like_http,
    looks_like_tls,
    parse_client_hello,
    parse_dns_query,
    parse_http_request,
)

T = TypeVar("T")

labels = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}", fullmatch=True)
host_names = st.lists(labels, min_size=1, max_size=5).map(".".join)
tokens = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True)


def raises_only_inspect_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    """Any outcome but an exception outside InspectError."""
    try:
        parse(data)
    except InspectError as err:
        assert isinstance(err, Incomplete | Malformed) and isinstance(err, GeneveError)


def mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid message truncated, with bits flipped, or with a 1-2 byte field overwritten."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "field", "cut", "insert"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if kind == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "field":
                width = min(2, len(data) - at)
                data[at : at + width] = draw(st.binary(min_size=width, max_size=width))
            elif kind == "cut":
                del data[at:]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=3))
        return bytes(data)

    return mutate()


def assert_prefixes_incomplete(
    parse: Callable[[bytes], object], data: bytes, exact_needed: bool = False
) -> None:
    for cut in range(len(data)):
        with pytest.raises(Incomplete) as info:
            parse(data[:cut])
        needed = info.value.needed
        if needed is not None:
            assert cut < needed <= len(data), (cut, needed)
            if exact_needed:
                assert needed == len(data)


# -- TLS ----------------------------------------------------------------------------------------

hellos = st.builds(
    lambda sni, alpn, versions, key_share, record: client_hello(
        sni, alpn=alpn, supported_versions=versions, key_share=key_share, max_record=record
    ),
    st.none() | host_names,
    st.lists(st.binary(min_size=1, max_size=12), max_size=3).map(tuple),
    st.lists(st.integers(0, 0xFFFF), max_size=4).map(tuple),
    st.sampled_from([0, 32, 1216]),
    st.sampled_from([1 << 14, 1 << 14, 300, 7]),
)


@given(
    st.none() | host_names,
    st.lists(st.binary(min_size=1, max_size=20), max_size=4).map(tuple),
    st.lists(st.integers(0, 0xFFFF), max_size=6).map(tuple),
    st.sampled_from([0x0301, 0x0302, 0x0303]),
    st.integers(1, 1 << 14),
    st.binary(max_size=8),
)
def test_client_hello_round_trip(
    sni: str | None,
    alpn: tuple[bytes, ...],
    versions: tuple[int, ...],
    legacy: int,
    record: int,
    tail: bytes,
) -> None:
    data = client_hello(
        sni, alpn=alpn, supported_versions=versions, legacy_version=legacy, max_record=record
    )
    hello = parse_client_hello(data + tail)  # what follows the hello is not read
    assert hello == ClientHello(
        sni.lower() if sni else None,
        tuple(p.decode("latin-1") for p in alpn),
        legacy,
        versions,
        len(data),
    )
    assert looks_like_tls(data) and all(looks_like_tls(data[:i]) for i in range(1, 7))


def test_client_hello_from_a_memoryview_and_a_bytearray() -> None:
    data = client_hello("a.example", key_share=1216)
    assert len(data) > 1400
    expected = parse_client_hello(data)
    assert parse_client_hello(bytearray(data)) == expected
    assert parse_client_hello(memoryview(bytearray(b"xx" + data))[2:]) == expected


@settings(max_examples=60)
@given(hellos)
def test_every_strict_prefix_of_a_hello_is_incomplete(data: bytes) -> None:
    assert_prefixes_incomplete(parse_client_hello, data)


def test_needed_is_exact_for_a_hello_in_one_record() -> None:
    data = client_hello("example.com", key_share=1216)
    for cut in range(9, len(data)):  # once the record and handshake headers are in
        with pytest.raises(Incomplete) as info:
            parse_client_hello(data[:cut])
        assert info.value.needed == len(data)
    with pytest.raises(Incomplete) as info:
        parse_client_hello(data[:4])
    assert info.value.needed is None


def test_needed_over_several_records_is_a_lower_bound_that_grows() -> None:
    data = client_hello("example.com", max_record=100)
    seen = []
    for cut in range(9, len(data)):
        with pytest.raises(Incomplete) as info:
            parse_client_hello(data[:cut])
        assert info.value.needed is not None and cut < info.value.needed <= len(data)
        seen.append(info.value.needed)
    assert seen == sorted(seen) and seen[-1] == len(data)


def _hello_message(**kwargs: Any) -> bytes:
    return client_hello(**kwargs)[5:]  # one record: the handshake message after its header


def _with_extensions(extensions: bytes) -> bytes:
    """A hello whose extension block is exactly ``extensions``."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    return split_records(b"\x01" + len(body).to_bytes(3, "big") + body, 1 << 14)


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _sni(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in entries)
    return _ext(0, struct.pack("!H", len(names)) + names)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x17\x03\x03\x00\x05hello", "application data, not a handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP"),
        (b"\x16\x02\x00", "record version 2.0"),
        (b"\x16\x03\x01\x00\x00", "an empty handshake record"),
        (b"\x16\x03\x01\x40\x01", "a record over 2^14"),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x46", "a ServerHello"),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x10", "a hello shorter than its fields"),
        (b"\x16\x03\x01\x00\x04\x01\x03\x00\x00", "a hello longer than its vectors allow"),
        (_with_extensions(_sni((0, b"a.com")) + _sni((0, b"b.com"))), "a repeated extension"),
        (_with_extensions(_sni((0, b"a.com"), (0, b"b.com"))), "two host names"),
        (_with_extensions(_sni((1, b"a.com"))), "an unknown name type"),
        (_with_extensions(_sni((0, "bücher.de".encode()))), "a non-ASCII name"),
        (_with_extensions(_sni((0, b"a..com"))), "an empty label"),
        (_with_extensions(_sni((0, b"a.com."))), "a trailing dot"),
        (_with_extensions(_sni((0, b""))), "an empty name"),
        (_with_extensions(_sni((0, b"a b.com"))), "a space in the name"),
        (_with_extensions(_sni((0, b"x" * 64 + b".com"))), "a label over 63"),
        (_with_extensions(_ext(0, b"\x00\x00")), "an empty server name list"),
        (_with_extensions(_ext(16, b"\x00\x03\x03h2")), "an ALPN name past its list"),
        (_with_extensions(_ext(16, b"\x00\x01\x00")), "an empty protocol name"),
        (_with_extensions(_ext(43, b"\x03\x03\x04\x03")), "an odd versions length"),
        (_with_extensions(_ext(43, b"")), "an empty supported_versions"),
        (_with_extensions(b"\x00\x00\x00\x05ab"), "an extension past the block"),
        (_with_extensions(b"\x00"), "an extension header cut short"),
        (client_hello(session_id=bytes(33)), "a session id over 32 bytes"),
        (client_hello(legacy_version=0x0200), "a body version 2.0"),
        (
            split_records(_hello_message(), 100)[:105] + b"\x17\x03\x03\x00\x01x",
            "a record of another type inside the hello",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_hellos(data: bytes, why: str) -> None:
    with pytest.raises(Malformed):
        parse_client_hello(data)


def test_the_malformed_cases_are_otherwise_valid() -> None:
    # The builder of the cases above makes hellos that parse when nothing is wrong.
    hello = parse_client_hello(_with_extensions(_sni((0, b"A.com")) + _ext(16, b"\x00\x03\x02h2")))
    assert hello.sni == "a.com" and hello.alpn == ("h2",) and hello.supported_versions == ()


def test_hello_without_extensions() -> None:
    hello = parse_client_hello(client_hello(extensions=False))
    assert hello.sni is None and hello.alpn == () and hello.supported_versions == ()


def test_looks_like_tls() -> None:
    assert not looks_like_tls(b"")
    assert not looks_like_tls(b"GET / HTTP/1.1\r\n")
    assert not looks_like_tls(b"\x16\x03\x03\x00\x10\x02")  # a ServerHello
    assert not looks_like_tls(b"\x16\x03\x03\x00\x00\x01")  # an empty record
    assert looks_like_tls(b"\x16\x03\x01\x02\x00\x01\x00")


# -- HTTP ---------------------------------------------------------------------------------------


@given(
    st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]) | tokens,
    st.from_regex(r"/[A-Za-z0-9/._~%?=&-]{0,40}", fullmatch=True),
    st.none() | host_names,
    st.none() | st.integers(0, 65535),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.lists(st.tuples(tokens, st.from_regex(r"[ -~]{0,30}", fullmatch=True)), max_size=5),
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=20),
)
def test_http_request_round_trip(
    method: str,
    target: str,
    host: str | None,
    port: int | None,
    version: str,
    fields: list[tuple[str, str]],
    newline: bytes,
    body: bytes,
) -> None:
    fields = [(n, v.strip()) for n, v in fields if n.lower() != "host"]
    host_field = None if host is None else host + ("" if port is None else f":{port}")
    data = http_request(method, target, host_field, version=version, fields=tuple(fields),
                        newline=newline)  # fmt: skip
    request = parse_http_request(data + body)
    assert request == HttpRequest(method, target, version, host and host.lower(), len(data))
    assert_prefixes_incomplete(parse_http_request, data)


@pytest.mark.parametrize(
    ("method", "target", "host"),
    [
        ("GET", "http://Example.COM/a?b", "example.com"),
        ("GET", "http://user@example.com:8080", "example.com"),
        ("GET", "https://[2001:DB8::1]:443/", "[2001:db8::1]"),
        ("CONNECT", "Example.com:443", "example.com"),
        ("OPTIONS", "*", "other.test"),
        ("GET", "/a://b", "other.test"),
    ],
)
def test_the_target_authority_wins_over_host(method: str, target: str, host: str) -> None:
    request = parse_http_request(http_request(method, target, "other.test"))
    assert request.host == host and request.target == target


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x16\x03\x01\x02\x00\x01", "TLS"),
        (b"GET / HTTP/2.0\r\n", "HTTP/2"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "the HTTP/2 preface"),
        (b"GET /\r\n", "HTTP/0.9"),
        (b"GET  / HTTP/1.1\r\n\r\n", "two spaces"),
        (b"G(T / HTTP/1.1\r\n\r\n", "a method that is not a token"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Host fields"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "a space before the colon"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", "a folded line"),
        (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "a bare CR"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "a space in Host"),
        (b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", "a port that is not digits"),
        (b"GET ht!tp://a/ HTTP/1.1\r\n\r\n", "a malformed scheme"),
        (b"GET http://a@b@c/ HTTP/1.1\r\n\r\n", "two @ in the authority"),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", "an empty line first"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_http(data: bytes, why: str) -> None:
    with pytest.raises(Malformed):
        parse_http_request(data)


def test_a_bad_field_line_is_malformed_before_the_head_ends() -> None:
    start = b"GET / HTTP/1.1\r\nHost: a.example\r\n"
    with pytest.raises(Incomplete):
        parse_http_request(start + b"Accept: */")
    for rest in (b"\x16\x03\x01", b"Accept : x", b" folded", b"X: a\rb"):
        with pytest.raises(Malformed):
            parse_http_request(start + rest)


def test_no_host_and_an_empty_host() -> None:
    assert parse_http_request(b"GET / HTTP/1.0\r\n\r\n").host is None
    assert parse_http_request(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host is None


def test_the_head_is_capped() -> None:
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * MAX_HEAD
    with pytest.raises(Malformed):
        parse_http_request(start)
    with pytest.raises(Malformed):
        parse_http_request(start + b"\r\n\r\n")
    with pytest.raises(Incomplete):
        parse_http_request(start[: MAX_HEAD - 1])
    fits = b"GET / HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD - 40) + b"\r\n\r\n"
    assert parse_http_request(fits + bytes(MAX_HEAD)).length == len(fits)


def test_looks_like_http() -> None:
    assert looks_like_http(b"G") and looks_like_http(b"GET ") and looks_like_http(b"OPTIONS *")
    assert looks_like_http(b"CONNECT a:443 HTTP/1.1")
    assert (
        not looks_like_http(b"") and not looks_like_http(b"GETX") and not looks_like_http(b"\x16")
    )
    assert not looks_like_http(b"get /")


# -- DNS ----------------------------------------------------------------------------------------

questions = st.lists(
    st.tuples(st.just("") | host_names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    min_size=0,
    max_size=3,
).map(tuple)


@given(questions, st.integers(0, 0xFFFF), st.integers(0, 0x7FFF), st.booleans(), st.booleans())
def test_dns_query_round_trip(
    qs: tuple[tuple[str, int, int], ...], ident: int, flags: int, edns: bool, tcp: bool
) -> None:
    data = dns_query(qs, ident=ident, flags=flags, edns=edns, tcp=tcp)
    query = parse_dns_query(data + b"\0" * tcp, tcp=tcp)  # over TCP, what follows is not read
    expected = tuple(DnsQuestion(n.lower(), t, c) for n, t, c in qs)
    assert query == DnsQuery(ident, flags, expected, len(data))
    assert query.opcode == flags >> 11 & 0xF
    if tcp:
        assert_prefixes_incomplete(lambda d: parse_dns_query(d, tcp=True), data, False)
        with pytest.raises(Incomplete) as info:
            parse_dns_query(data[:3], tcp=True)
        assert info.value.needed == len(data)
    else:
        questions_end = len(data) - 11 * edns
        assert_prefixes_incomplete(parse_dns_query, data[:questions_end])


@given(questions, st.integers(0, 0xFFFF), st.integers(0, 0x7FFF), st.booleans())
def test_dns_refused(
    qs: tuple[tuple[str, int, int], ...], ident: int, flags: int, tcp: bool
) -> None:
    data = dns_query(qs, ident=ident, flags=flags, edns=True, tcp=tcp)
    answer = dns_refused(data, tcp=tcp)
    message = answer[2:] if tcp else answer
    if tcp:
        assert struct.unpack("!H", answer[:2])[0] == len(message)
    got_id, got_flags, qd, an, ns, ar = struct.unpack("!6H", message[:12])
    assert (got_id, qd, an, ns, ar) == (ident, len(qs), 0, 0, 0)
    assert got_flags == 0x8000 | (flags & 0x7900) | RCODE_REFUSED  # QR, opcode, RD, REFUSED
    question_bytes = (data[2:] if tcp else data)[12:-11]  # without the OPT record
    assert message[12:] == question_bytes
    with pytest.raises(Malformed):  # the answer is a response, not a query
        parse_dns_query(answer, tcp=tcp)


def test_dns_refused_is_what_scapy_reads() -> None:
    from scapy.layers.dns import DNS

    answer = DNS(dns_refused(dns_query((("Www.Example.com", 28, 1),), ident=77, edns=True)))
    assert (answer.id, answer.qr, answer.rcode, answer.rd, answer.ra) == (77, 1, 5, 1, 0)
    assert answer.qd[0].qname == b"Www.Example.com." and answer.qd[0].qtype == 28
    assert answer.ancount == answer.nscount == answer.arcount == 0


def _header(count: int = 1) -> bytes:
    return struct.pack("!6H", 1, 0x0100, count, 0, 0, 0)


def test_backward_pointers_are_followed() -> None:
    # The second question's name is "www" then a pointer to the first's "example.com".
    data = _header(2) + b"\x07example\x03com\x00\x00\x01\x00\x01"
    data += b"\x03www\xc0\x0c\x00\x1c\x00\x01"
    query = parse_dns_query(data)
    assert query.questions == (
        DnsQuestion("example.com", 1, 1),
        DnsQuestion("www.example.com", 28, 1),
    )
    assert dns_refused(data)[12:] == data[12:]  # the pointer still lands on the same bytes


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_header() + b"\xc0\x0c\x00\x01\x00\x01", "a pointer at itself"),
        (_header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "a pointer loop"),
        (
            _header(2) + b"\x01a\x00\x00\x01\x00\x01\x01b\xc0\x13\x00\x01\x00\x01",
            "a loop via a later name",
        ),
        (_header() + b"\xc0\x20\x00\x01\x00\x01" + bytes(30), "a pointer ahead"),
        (_header() + b"\xc0\x02\x00\x01\x00\x01", "a pointer into the header"),
        (_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "a label of 64"),
        (_header() + b"\x80\x00\x00\x01\x00\x01", "a reserved label type"),
        (_header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "a name of 257"),
        (struct.pack("!6H", 1, 0x8180, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", "a response"),
        (b"\x00\x01\x81", "a response, from its third byte"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_dns(data: bytes, why: str) -> None:
    with pytest.raises(Malformed):
        parse_dns_query(data)
    with pytest.raises(Malformed):
        parse_dns_query(struct.pack("!H", len(data)) + data, tcp=True)


def test_longest_name_is_accepted() -> None:
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"  # 255 bytes on the wire
    assert len(name) == 255
    query = parse_dns_query(_header() + name + b"\x00\x01\x00\x01")
    assert len(query.questions[0].name) == 253


def test_dns_over_tcp_lengths() -> None:
    data = dns_query(tcp=True)
    with pytest.raises(Incomplete) as info:
        parse_dns_query(data[:1], tcp=True)
    assert info.value.needed is None
    with pytest.raises(Malformed):  # shorter than a header
        parse_dns_query(b"\x00\x0b" + bytes(11), tcp=True)
    with pytest.raises(Malformed):  # the questions run past the message the prefix gives
        parse_dns_query(struct.pack("!H", len(data) - 3) + data[2:-1], tcp=True)
    with pytest.raises(Malformed):  # a response, told before the rest of it arrives
        parse_dns_query(b"\x00\x40\x12\x34\x81\x80", tcp=True)


def test_odd_bytes_in_names_are_escaped() -> None:
    data = _header() + b"\x04a.B\xff\x03com\x00\x00\x01\x00\x01"
    assert parse_dns_query(data).questions[0].name == "a\\046b\\255.com"


# -- any input: only InspectError -----------------------------------------------------------

requests = st.builds(http_request, tokens, st.just("/x"), host_names)
queries = st.builds(dns_query, questions, edns=st.booleans())
tcp_queries = st.builds(dns_query, questions, edns=st.booleans(), tcp=st.just(True))
PARSERS: dict[str, tuple[Callable[[bytes], object], bytes, st.SearchStrategy[bytes]]] = {
    # name: (the parser, a valid start that takes random bytes deeper, valid messages)
    "tls": (parse_client_hello, b"\x16\x03\x01", hellos),
    "http": (parse_http_request, b"GET ", requests),
    "dns": (parse_dns_query, _header(2), queries),
    "dns-tcp": (lambda d: parse_dns_query(d, tcp=True), b"\x00\x40", tcp_queries),
    "dns-refused": (dns_refused, _header(2), queries),
    "dns-refused-tcp": (lambda d: dns_refused(d, tcp=True), b"\x00\x40", tcp_queries),
}


@pytest.mark.parametrize("name", PARSERS)
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_inspect_errors(name: str, data: bytes) -> None:
    parse, start, _valid = PARSERS[name]
    raises_only_inspect_errors(parse, data)
    raises_only_inspect_errors(parse, start + data)


@pytest.mark.parametrize("name", PARSERS)
@settings(max_examples=300)
@given(data=st.data())
def test_mutated_messages_raise_only_inspect_errors(name: str, data: st.DataObject) -> None:
    parse, _start, valid = PARSERS[name]
    raises_only_inspect_errors(parse, data.draw(mutations(valid)))


@given(st.binary(max_size=8))
def test_looks_like_takes_any_bytes(data: bytes) -> None:
    assert isinstance(looks_like_tls(data), bool) and isinstance(looks_like_http(data), bool)


# -- the captures, as tshark reads them ---------------------------------------------------------

TLS_CAPTURE = "zeek__geneve-47101.pcap"  # a curl-like ClientHello to www.kernel.org
DNS_CAPTURE = "zeek__geneve-vxlan-dns-truncated.pcap"  # Geneve, then VXLAN, then DNS


def _tshark_rows(tshark: str, path: Path, fields: list[str], where: str = "") -> list[list[str]]:
    cmd = [tshark, "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=,", *(["-Y", where] if where else [])]  # fmt: skip
    for field in fields:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def _frames(path: Path) -> Iterator[tuple[int, Packet]]:
    """(frame number, parsed packet) for each record; a record cut by the capture's snap length
    is padded to its original length, so that Packet.parse checks the lengths its headers give
    (the caller keeps to the bytes that were captured)."""
    with path.open("rb") as f:
        _info, records = read_capture(f)
        for number, record in enumerate(records, 1):
            data = record.data + bytes(record.orig_len - len(record.data))
            yield number, Packet.parse(bytearray(data[ip_offset(record.linktype, data) :]))


def test_the_capture_hello_parses_as_tshark_reads_it(vectors: Path, tshark: str) -> None:
    fields = ["frame.number", "tls.handshake.extensions_server_name",
              "tls.handshake.extensions_alpn_str", "tls.handshake.version",
              "tls.handshake.extensions.supported_version", "tls.record.length"]  # fmt: skip
    rows = _tshark_rows(tshark, vectors / TLS_CAPTURE, fields, "tls.handshake.type == 1")
    assert len(rows) == 1
    number, sni, alpn, version, versions, record_length = rows[0]
    payload = dict(_frames(vectors / TLS_CAPTURE))[int(number)].payload
    assert payload is not None and looks_like_tls(payload)
    hello = parse_client_hello(payload)
    assert hello.sni == sni == "www.kernel.org"
    assert hello.alpn == tuple(alpn.split(","))
    assert hello.legacy_version == int(version, 16)
    assert hello.supported_versions == tuple(int(v, 16) for v in versions.split(","))
    assert hello.length == 5 + int(record_length) == len(payload)


def _vxlan_udp_payload(inner: memoryview) -> bytes:
    """The UDP payload inside VXLAN (RFC 7348: 8 bytes, then Ethernet) inside Geneve's UDP."""
    eth = inner[8:]
    assert struct.unpack("!H", eth[12:14])[0] == 0x0800
    ip = eth[14:]
    assert ip[9] == 17
    return bytes(ip[(ip[0] & 0xF) * 4 + 8 :])


def test_the_capture_dns_parses_as_tshark_reads_it(vectors: Path, tshark: str) -> None:
    fields = ["frame.number", "dns.id", "dns.flags", "dns.qry.name", "dns.qry.type",
              "dns.qry.class", "dns.flags.response", "frame.len", "frame.cap_len"]  # fmt: skip
    rows = _tshark_rows(tshark, vectors / DNS_CAPTURE, fields, "dns")
    frames = dict(_frames(vectors / DNS_CAPTURE))
    assert len(rows) == 2
    for number, ident, flags, name, qtype, qclass, response, length, cap_len in rows:
        packet = frames[int(number)]
        assert packet.payload is not None and packet.ports is not None and packet.ports[1] == 4789
        # Only the bytes captured: the query's EDNS record is cut, its question is whole.
        padded = _vxlan_udp_payload(packet.payload)
        message = padded[: len(padded) - (int(length) - int(cap_len))]
        assert 0 < len(message) < len(padded)
        if response == "1":
            with pytest.raises(Malformed):
                parse_dns_query(message)
            continue
        query = parse_dns_query(message)
        assert (query.id, query.flags) == (int(ident, 16), int(flags, 16))
        assert query.questions == (DnsQuestion(name, int(qtype), int(qclass, 16)),)
        assert name == "corelight.com" and query.length == len(message)


# -- real clients, at test time -----------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh installs it)")
    return path


def _read_until_parsed(conn: socket.socket, parse: Callable[[bytes], T]) -> tuple[T, bytes]:
    """What a stream reader does: read on while the start is Incomplete."""
    conn.settimeout(10)
    data = b""
    while True:
        try:
            return parse(data), data
        except Incomplete:
            pass
        chunk = conn.recv(65536)
        assert chunk, f"the client closed after {len(data)} bytes"
        data += chunk


def _from_tcp_client(
    argv: Callable[[int], list[str]],
    parse: Callable[[bytes], T],
    reply: Callable[[bytes], bytes] | None = None,
) -> tuple[T, bytes, str]:
    """Run a client against a loopback listener: what it sent, parsed; and its output."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        proc = subprocess.Popen(
            argv(server.getsockname()[1]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            conn, _ = server.accept()
            with conn:
                parsed, data = _read_until_parsed(conn, parse)
                if reply is not None:
                    conn.sendall(reply(data))
            out = proc.communicate(timeout=10)[0] if reply is not None else ""
        finally:
            proc.kill()
            proc.wait()
    return parsed, data, out


def test_openssl_s_client_hello() -> None:
    openssl = _tool("openssl")
    argv = [openssl, "s_client", "-servername", "Filter.Example", "-alpn", "h2,http/1.1"]
    hello, data, _ = _from_tcp_client(
        lambda port: [*argv, "-connect", f"127.0.0.1:{port}"], parse_client_hello
    )
    assert hello.sni == "filter.example"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.legacy_version == 0x0303 and 0x0304 in hello.supported_versions
    assert hello.length == len(data)


def test_openssl_s_client_tls12_hello() -> None:
    openssl = _tool("openssl")
    argv = [openssl, "s_client", "-tls1_2", "-servername", "old.example"]
    hello, _, _ = _from_tcp_client(
        lambda port: [*argv, "-connect", f"127.0.0.1:{port}"], parse_client_hello
    )
    assert hello.sni == "old.example" and hello.alpn == ()
    assert 0x0304 not in hello.supported_versions


def test_curl_hello() -> None:
    curl = _tool("curl")
    hello, data, _ = _from_tcp_client(
        lambda port: [curl, "-sk", "--max-time", "10", "--resolve",
                      f"allowed.example:{port}:127.0.0.1", f"https://allowed.example:{port}/"],
        parse_client_hello,
    )  # fmt: skip
    assert hello.sni == "allowed.example"
    assert "http/1.1" in hello.alpn and 0x0304 in hello.supported_versions
    assert hello.length == len(data) and 400 < len(data) < 2000


def test_curl_http_request() -> None:
    curl = _tool("curl")
    request, data, out = _from_tcp_client(
        lambda port: [curl, "-s", "--max-time", "10", "--resolve", f"web.example:{port}:127.0.0.1",
                      f"http://Web.Example:{port}/path?q=1"],
        parse_http_request,
        lambda _data: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    )  # fmt: skip
    assert (request.method, request.target, request.version) == ("GET", "/path?q=1", "HTTP/1.1")
    assert request.host == "web.example" and request.length == len(data)
    assert out == "ok\n"


def test_curl_through_a_proxy_sends_an_absolute_target() -> None:
    curl = _tool("curl")
    request, _, _ = _from_tcp_client(
        lambda port: [curl, "-s", "--max-time", "10", "-x", f"http://127.0.0.1:{port}",
                      "http://Proxied.Example/x"],
        parse_http_request,
    )  # fmt: skip
    assert request.target == "http://Proxied.Example/x" and request.host == "proxied.example"


def test_dig_over_udp_is_parsed_and_refused() -> None:
    dig = _tool("dig")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        argv = [dig, "@127.0.0.1", "-p", str(port), "+tries=1", "+timeout=5",
                "Query.Example.ORG", "AAAA"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            data, client = server.recvfrom(65535)
            query = parse_dns_query(data)
            server.sendto(dns_refused(data), client)
            out = proc.communicate(timeout=10)[0]
        finally:
            proc.kill()
            proc.wait()
    assert query.questions == (DnsQuestion("query.example.org", 28, 1),)
    assert query.flags & 0x0100 and query.length == len(data)
    assert "status: REFUSED" in out and f"id: {query.id}" in out


def test_dig_over_tcp_is_parsed_and_refused() -> None:
    dig = _tool("dig")
    query, data, out = _from_tcp_client(
        lambda port: [dig, "@127.0.0.1", "-p", str(port), "+tcp", "+tries=1", "+timeout=5",
                      "tcp.example.net", "MX"],
        lambda data: parse_dns_query(data, tcp=True),
        lambda data: dns_refused(data, tcp=True),
    )  # fmt: skip
    assert query.questions == (DnsQuestion("tcp.example.net", 15, 1),)
    assert query.length == len(data)
    assert "status: REFUSED" in out and f"id: {query.id}" in out
