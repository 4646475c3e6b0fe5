"""The pipeline: one function that takes a received frame to the frame to send back.

parse -> modifier -> verdict -> swap -> fix. Shared by the appliance and the replay, so what the
replay shows on a capture is what the appliance does on the wire. Sans-I/O: it reads and writes
a caller's buffer and a :class:`Stats` object, nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Literal

from ._errors import GeneveError, NotGeneveError, PacketTooLargeError
from ._headers import GENEVE_PORT
from ._packet import MAX_INNER_LENGTH, Packet

__all__ = ["ErrorPolicy", "Modifier", "Stats", "Verdict", "process"]


class Verdict(enum.Enum):
    """What a modifier decides for a packet. Returning None means FORWARD."""

    FORWARD = "forward"
    DROP = "drop"


Modifier = Callable[[Packet], "Verdict | None"]
ErrorPolicy = Literal["drop", "forward"]


class Stats:
    """Counters per outcome. Plain attributes, so the hot path pays one add each.

    ``received`` counts every frame handed to :func:`process`; each then ends in exactly one of
    ``forwarded`` (of which ``modified`` were edited), ``dropped`` (by reason in ``drops``),
    ``malformed`` (by reason in ``malformed_reasons``) or ``skipped`` (not Geneve).
    """

    __slots__ = (
        "dropped",
        "drops",
        "forwarded",
        "last_error",
        "malformed",
        "malformed_reasons",
        "modified",
        "modifier_errors",
        "received",
        "skipped",
        "too_large_forwarded",
    )

    def __init__(self) -> None:
        self.received = 0
        self.forwarded = 0
        self.modified = 0
        self.dropped = 0
        self.malformed = 0
        self.skipped = 0
        self.modifier_errors = 0
        self.too_large_forwarded = 0
        self.drops: dict[str, int] = {}
        self.malformed_reasons: dict[str, int] = {}
        self.last_error: BaseException | None = None

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "modified": self.modified,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "skipped": self.skipped,
            "modifier_errors": self.modifier_errors,
            "too_large_forwarded": self.too_large_forwarded,
            "drops": dict(self.drops),
            "malformed_reasons": dict(self.malformed_reasons),
        }

    #: The integer counters (the two dicts of reasons come on top).
    COUNTERS = (
        "received",
        "forwarded",
        "modified",
        "dropped",
        "malformed",
        "skipped",
        "modifier_errors",
        "too_large_forwarded",
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """The inverse of :meth:`as_dict` (for counters sent between processes)."""
        stats = cls()
        for name in cls.COUNTERS:
            setattr(stats, name, int(data.get(name, 0)))
        stats.drops = dict(data.get("drops", {}))
        stats.malformed_reasons = dict(data.get("malformed_reasons", {}))
        return stats

    def merge(self, other: Stats) -> None:
        """Add another worker's counters into these."""
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in (
            (self.drops, other.drops),
            (self.malformed_reasons, other.malformed_reasons),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value


_FORWARD = Verdict.FORWARD
_DROP = Verdict.DROP


def process(
    buf: bytearray,
    length: int,
    modifier: Modifier,
    stats: Stats,
    *,
    on_error: ErrorPolicy = "drop",
    max_inner_length: int = MAX_INNER_LENGTH,
    port: int = GENEVE_PORT,
    on_too_large: ErrorPolicy = "drop",
) -> Packet | None:
    """Run one received frame ``buf[:length]`` through ``modifier``.

    A rewrite that would make the inner packet longer than ``max_inner_length`` is refused
    (:class:`PacketTooLargeError` inside the modifier); the packet is then dropped, or with
    ``on_too_large="forward"`` forwarded unchanged when the modifier had changed nothing yet.

    Returns the packet to send back (its bytes are ``packet.data``, in ``buf`` or in a grown
    copy of it) or None when nothing is to be sent. Never raises for bad input or a failing
    modifier: every outcome is counted in ``stats``.
    """
    stats.received += 1
    try:
        packet = Packet.parse(buf, length, port=port)
        packet._parse_inner()
    except NotGeneveError:
        stats.skipped += 1
        return None
    except GeneveError as err:
        stats.malformed += 1
        reasons = stats.malformed_reasons
        reasons[err.reason] = reasons.get(err.reason, 0) + 1
        return None
    # GWLB never sends more than max_inner_length bytes after the Geneve header.
    if packet.length - packet.inner_offset > max_inner_length:
        stats.malformed += 1
        reasons = stats.malformed_reasons
        reasons["oversized"] = reasons.get("oversized", 0) + 1
        return None
    # RFC 8926 3.4: a control (O bit) packet's payload must not be forwarded as data.
    if buf[packet.geneve_offset + 1] & 0x80:
        stats.drop("control")
        return None
    packet.max_inner_length = max_inner_length
    try:
        verdict = modifier(packet)
        if verdict is not None and verdict is not _FORWARD and verdict is not _DROP:
            raise TypeError(f"modifier returned {verdict!r}, not a Verdict or None")
    except PacketTooLargeError:
        # A rewrite past the inner MTU was refused before it changed anything.
        if on_too_large != "forward" or packet.modified:
            stats.drop("too-large")
            return None
        stats.too_large_forwarded += 1
        verdict = _FORWARD
    except Exception as exc:  # a user's bug must not stop the appliance
        stats.modifier_errors += 1
        stats.last_error = exc
        # "forward" means forward unchanged; an edit already made cannot be undone, so drop.
        if on_error != "forward" or packet.modified:
            stats.drop("modifier-error")
            return None
        verdict = _FORWARD
    if verdict is _DROP:
        stats.drop("rule")
        return None
    if packet.modified:
        if packet.length - packet.inner_offset > max_inner_length:
            stats.drop("too-large")
            return None
        try:
            packet.fix_checksums()
        except GeneveError as err:  # the modifier broke a length field
            stats.modifier_errors += 1
            stats.last_error = err
            stats.drop("modifier-error")
            return None
        stats.modified += 1
    packet.swap_outer()
    stats.forwarded += 1
    return packet
