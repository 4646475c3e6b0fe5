"""Modifiers for benchmarks/appliance.py's rewrite rows (``--rules seq_rules:NAME``).

- ``grow``: ``http://`` -> ``https://`` in TCP port 8080's payloads, one byte longer a match
  (sequence adjustment, docs/codec.md), declaring ``max_growth`` as ``geneve.rules.replace``
  does;
- ``same``: ``http://`` -> ``HTTP://``, the same length (the in-place rewrite): the baseline.

Both declare interest in port 8080 and payloads with ``http://``, so every frame of loadgen's
``rewrite`` mixes goes through Python and the modifier; only the replacement differs.
"""

from __future__ import annotations

from geneve import Packet, declare_interest

PORT = 8080


def _grow(packet: Packet) -> None:
    packet.replace_in_payload(b"http://", b"https://")


def _same(packet: Packet) -> None:
    packet.replace_in_payload(b"http://", b"HTTP://")


grow = declare_interest(_grow, tcp_ports=[PORT], payload_contains=[b"http://"], max_growth=40)
same = declare_interest(_same, tcp_ports=[PORT], payload_contains=[b"http://"])
