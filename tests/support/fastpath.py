"""One frame through the appliance's path without sockets: the C fast path, then the pipeline."""

from __future__ import annotations

from typing import Any

from geneve import Pipeline


def through_fast_path(
    fast: Any, slots: Any, pipeline: Pipeline, frame: bytes | bytearray, source: int, now: float
) -> tuple[bool, list[bytes]]:
    """Whether C sent ``frame`` itself, and the frames sent for it (C's, or the pipeline's)."""
    slots.bufs[0][: len(frame)] = frame
    slots.lens[0], slots.sources[0] = len(frame), source
    done, todo = fast.forward(1, now)
    c = fast.counts
    pipeline.count_fast_path(done, c[0], c[1], c[2], bool(c[3]))
    if done:
        return True, [bytes(slots.bufs[0][: slots.out[0]])]
    return False, [
        bytes(f) for i in todo for f in pipeline.handle(slots.bufs[i], slots.lens[i], now)
    ]
