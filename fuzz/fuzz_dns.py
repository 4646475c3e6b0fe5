"""Atheris target: parse_dns_query and dns_refused on any bytes, over UDP and over TCP (the
input's first byte chooses), raise nothing but InspectError (any other exception is a
finding); a refusal parses as a response. Run by scripts/fuzz.sh."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["geneve.inspect"]):
    from geneve.inspect import InspectError, Malformed, dns_refused, parse_dns_query


def test_one_input(data: bytes) -> None:
    tcp = bool(data[:1]) and data[0] & 1 == 1
    message = data[1:]
    try:
        query = parse_dns_query(message, tcp=tcp)
        answer = dns_refused(message, tcp=tcp)
    except InspectError:
        return
    assert 0 < query.length <= len(message)
    try:
        parse_dns_query(answer, tcp=tcp)
    except Malformed:
        return
    raise AssertionError("a refusal parsed as a query")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
