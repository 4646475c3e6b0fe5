"""Test helpers, imported as ``support.<module>`` (pytest and mypy put tests/ on the path).

- ``frames``: scapy and hypothesis builders of inner packets and GWLB frames, and an
  independent verifier of their lengths and checksums;
- ``vectors``: the real captures; ``pcapng``: hand-built capture blocks;
- ``netns``: namespace pairs for the live appliance tests (plumbing from the emulator's);
- ``gwlb_client``: a minimal GWLB stand-in sending frames into a pair;
- ``docs``: the runnable examples of docs/*.md;
- ``malformed``: the malformed-frame corpus.
"""
