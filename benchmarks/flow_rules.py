"""Modifiers for benchmarks/appliance.py's flow rows (``--rules flow_rules:NAME``).

- ``first_packet_forward``: sets ``flow.verdict = Verdict.FORWARD`` on each flow's first packet,
  so that every later packet of the flow is forwarded by the C fast path without Python;
- ``every_packet``: the same decision (forward) taken in Python for every packet.
"""

from __future__ import annotations

from geneve import Packet, PipelinePacket, Verdict


def first_packet_forward(packet: Packet) -> None:
    flow = packet.flow if isinstance(packet, PipelinePacket) else None
    if flow is not None:
        flow.verdict = Verdict.FORWARD


def every_packet(packet: Packet) -> None:
    return None
