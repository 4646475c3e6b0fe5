"""The one error hierarchy of the codec.

Every malformed, truncated or unsupported frame raises a subclass of :class:`GeneveError`
(itself a ``ValueError``), never ``IndexError`` or ``struct.error``. Each error carries a short
``reason`` slug that the pipeline and the appliance use as a counter label.
"""

from __future__ import annotations

__all__ = [
    "FragmentError",
    "GeneveError",
    "MalformedError",
    "NotGeneveError",
    "PacketTooLargeError",
    "TruncatedError",
    "UnsupportedError",
]


class GeneveError(ValueError):
    """Base class of every error the codec raises for bad input."""

    reason: str = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TruncatedError(GeneveError):
    """The buffer ends before a header or a length field says it should."""

    reason = "truncated"


class MalformedError(GeneveError):
    """A field holds a value the protocol does not allow (bad IHL, lengths that disagree...)."""

    reason = "malformed"


class UnsupportedError(GeneveError):
    """Well-formed but not something an endpoint may process (Geneve version, critical option)."""

    reason = "unsupported"


class NotGeneveError(GeneveError):
    """A valid IPv4 packet that is not Geneve (not UDP, or not to the Geneve port)."""

    reason = "not-geneve"


class FragmentError(UnsupportedError):
    """An edit was asked of a fragmented inner packet; fragments are never rewritten."""

    reason = "fragment"


class PacketTooLargeError(GeneveError):
    """An edit would grow the packet past its buffer or the configured inner MTU."""

    reason = "too-large"
