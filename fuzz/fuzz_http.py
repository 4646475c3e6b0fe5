"""Atheris target: parse_http_request and looks_like_http on any bytes raise nothing but
InspectError (any other exception is a finding). Run by scripts/fuzz.sh."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["geneve.inspect"]):
    from geneve.inspect import MAX_HEAD, InspectError, looks_like_http, parse_http_request


def test_one_input(data: bytes) -> None:
    looks_like_http(data)
    try:
        request = parse_http_request(data)
    except InspectError:
        return
    assert 0 < request.length <= min(len(data), MAX_HEAD)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
