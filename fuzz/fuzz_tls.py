"""Atheris target: parse_client_hello and looks_like_tls on any bytes raise nothing but
InspectError (any other exception is a finding). Run by scripts/fuzz.sh."""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["geneve.inspect"]):
    from geneve.inspect import InspectError, looks_like_tls, parse_client_hello


def test_one_input(data: bytes) -> None:
    looks_like_tls(data)
    try:
        hello = parse_client_hello(data)
    except InspectError:
        return
    assert 0 < hello.length <= len(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
