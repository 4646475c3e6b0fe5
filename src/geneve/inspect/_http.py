"""The HTTP/1.x request head: request line and Host, from the first bytes a client sends.

Strategy: find the end of the head (the first empty line) within a cap; until it comes, check
that the bytes so far can still begin a request line, so that another protocol is refused at
once rather than waited for. Once it is in, a few compiled patterns check the request line and
every field line, and the Host field is read. The checks are the ones RFC 9112 makes a server
reject with 400, since a filter must read the head as the server will.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import Incomplete, Malformed

__all__ = ["MAX_HEAD", "HttpRequest", "looks_like_http", "parse_http_request"]

Buffer = bytes | bytearray | memoryview

MAX_HEAD = 16 * 1024  # bytes of request line and fields at most; a longer head is refused

# RFC 9110 5.6.2: token = 1*tchar.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# RFC 9112 2.2: "a recipient MAY recognize a single LF as a line terminator and ignore any
# preceding CR." The head ends at the first empty line.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# RFC 9112 3: request-line = method SP request-target SP HTTP-version. The target holds no
# whitespace or control characters; HTTP-version = "HTTP/" DIGIT "." DIGIT, major version 1 here.
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([^\x00-\x20\x7f]+) (HTTP/1\.[0-9])\r?\n")
# The same line, cut anywhere: what may come before the rest of a request line arrives.
_VERSION_START = rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?"
_REQUEST_LINE_START = re.compile(
    _TCHAR + rb"+(?: [^\x00-\x20\x7f]*(?: " + _VERSION_START + rb")?)?\Z"
)
# RFC 9112 5: field-line = field-name ":" OWS field-value OWS; no whitespace before the colon
# (5.1), no line folding (5.2), no bare CR or other control character but HTAB in the value.
_FIELD_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_FIELD_LINE = _TCHAR + rb"+:" + _FIELD_VALUE + rb"\r?\n"
_FIELD_LINES = re.compile(rb"(?:" + _FIELD_LINE + rb")*\r?\n")
# The same, cut anywhere: whole field lines, then the start of one or of the empty line.
_FIELD_LINES_START = re.compile(
    rb"(?:" + _FIELD_LINE + rb")*(?:" + _TCHAR + rb"+(?::" + _FIELD_VALUE + rb"\r?)?|\r)?\Z"
)
_HOST_FIELD = re.compile(rb"^host:[ \t]*(.*?)[ \t]*\r?$", re.I | re.M)
# RFC 3986 3.2.2: host = IP-literal / IPv4address / reg-name, then an optional ":" port.
_HOST = re.compile(rb"(\[[0-9a-f:.]+\]|[a-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z", re.I)
_KNOWN_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                  b"TRACE")  # fmt: skip


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP/1.x request head.

    ``method``, ``target`` and ``version`` as the request line has them (``target`` read as
    Latin-1). ``host``: the authority's host, port stripped and lower-cased, from the target
    when it is in absolute form (or CONNECT's authority form, RFC 9112 3.2.2-3), else from the
    Host field; None when there is none or it is empty. ``length``: bytes of the head, the
    empty line included.
    """

    method: str
    target: str
    version: str
    host: str | None
    length: int


def looks_like_http(data: Buffer) -> bool:
    """True when the first bytes begin a common request method and a space ("GET ", ...)."""
    head = bytes(data[:8])
    if not head:
        return False
    for method in _KNOWN_METHODS:
        word = method + b" "
        if head.startswith(word) if len(head) >= len(word) else word.startswith(head):
            return True
    return False


def parse_http_request(data: Buffer) -> HttpRequest:
    """Parse the HTTP/1.x request head at the start of ``data``.

    Raises :class:`Incomplete` until the empty line that ends the head has arrived (while the
    bytes so far can still begin a request), :class:`Malformed` for anything else, a head past
    :data:`MAX_HEAD` included.
    """
    buf = bytes(data[: MAX_HEAD + 4]) if len(data) > MAX_HEAD + 4 else bytes(data)
    end_match = _HEAD_END.search(buf)
    if end_match is None or end_match.end() > MAX_HEAD:
        if len(buf) >= MAX_HEAD:
            raise Malformed(f"HTTP request head longer than {MAX_HEAD} bytes")
        first, newline, _ = buf.partition(b"\n")
        if newline:
            line_end = _request_line(first + newline).end()
            if _FIELD_LINES_START.match(buf, line_end) is None:
                raise Malformed("HTTP request has a malformed field line")
        elif first and _REQUEST_LINE_START.match(first) is None:
            raise Malformed("not an HTTP/1.x request line")
        raise Incomplete("HTTP request head has no empty line yet")
    head_len = end_match.end()
    line = _request_line(buf[:head_len])
    method, target, version = line.groups()
    if _FIELD_LINES.fullmatch(buf, line.end(), head_len) is None:
        raise Malformed("HTTP request has a malformed field line")
    host = _target_host(method, target)
    if host is None:
        hosts = _HOST_FIELD.findall(buf, line.end(), head_len)
        # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to any
        # HTTP/1.1 request message that lacks a Host header field and to any request message
        # that contains more than one Host header field line or a Host header field with an
        # invalid field value."
        if len(hosts) > 1:
            raise Malformed("HTTP request has two Host fields")
        host = _host(hosts[0]) if hosts else None
    return HttpRequest(
        method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), host, head_len
    )


def _request_line(buf: bytes) -> re.Match[bytes]:
    match = _REQUEST_LINE.match(buf)
    if match is None:
        raise Malformed("not an HTTP/1.x request line")
    return match


def _target_host(method: bytes, target: bytes) -> str | None:
    """The host of an absolute-form target, or of CONNECT's authority-form one, else None."""
    if method == b"CONNECT":
        return _host(target) or None
    scheme, sep, rest = target.partition(b"://")
    if not sep or target[:1] == b"/":
        return None
    if re.fullmatch(rb"[a-z][a-z0-9+\-.]*", scheme, re.I) is None:
        raise Malformed("HTTP request target has a malformed scheme")
    authority = re.split(rb"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, host = authority.rpartition(b"@")
    if at and b"@" in userinfo:
        raise Malformed("HTTP request target has a malformed authority")
    # RFC 9112 3.2.2: with an absolute-form target the Host field is ignored.
    return _host(host if at else authority)


def _host(value: bytes) -> str | None:
    match = _HOST.match(value)
    if match is None:
        raise Malformed("HTTP Host is not a valid host[:port]")
    host = match.group(1)
    return host.decode("ascii").lower() if host else None
