"""Inspection parsers: what the first bytes of a flow say about where it goes.

Pure functions over bytes (the codec layer: no I/O): the TLS ClientHello (server name, ALPN,
versions), the HTTP/1.x request head (request line, Host) and the DNS query (names and types,
over UDP and TCP), plus the REFUSED answer to a denied query. Each raises only
:class:`InspectError`: :class:`Incomplete` when more bytes could complete the message,
:class:`Malformed` when none can. See docs/inspection.md.
"""

from __future__ import annotations

from ._dns import RCODE_REFUSED, DnsQuery, DnsQuestion, dns_refused, parse_dns_query
from ._errors import Incomplete, InspectError, Malformed
from ._http import MAX_HEAD, HttpRequest, looks_like_http, parse_http_request
from ._tls import ClientHello, looks_like_tls, parse_client_hello

__all__ = [
    "MAX_HEAD",
    "RCODE_REFUSED",
    "ClientHello",
    "DnsQuery",
    "DnsQuestion",
    "HttpRequest",
    "Incomplete",
    "InspectError",
    "Malformed",
    "dns_refused",
    "looks_like_http",
    "looks_like_tls",
    "parse_client_hello",
    "parse_dns_query",
    "parse_http_request",
]
