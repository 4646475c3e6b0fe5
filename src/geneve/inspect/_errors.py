"""The errors of the inspection parsers: a prefix that needs more bytes, or bytes that never parse.

A stream reader tells the two apart: on :class:`Incomplete` it waits for more of the stream (up
to ``needed`` bytes when the parser knows the total, and never past its own cap); on
:class:`Malformed` it stops waiting, since no further byte can make the start parse.
"""

from __future__ import annotations

from .._errors import GeneveError

__all__ = ["Incomplete", "InspectError", "Malformed"]


class InspectError(GeneveError):
    """Base class of every error an inspection parser raises for bad or short input."""

    reason = "inspect"


class Incomplete(InspectError):
    """The bytes so far are a valid prefix, but more are needed.

    ``needed`` is the total length of data the message needs when a length field has told it
    (a TLS record or handshake length, a DNS-over-TCP length prefix), else ``None``. When a
    ClientHello spans records whose headers have not arrived yet, it is the least total that
    could complete it (exact when the rest comes in one record).
    """

    reason = "incomplete"

    def __init__(self, message: str, needed: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed


class Malformed(InspectError):
    """The bytes can never parse: another protocol, a wrong type, lengths that disagree."""

    reason = "malformed"
