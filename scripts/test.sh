#!/usr/bin/env bash
# Set up, then run every test (codec, pipeline, appliance in network namespaces), the checksum
# tests again under the pure-Python fallback, the type and lint checks, every fuzz target
# for 25 s (any finding fails), and the codec, pipeline and flow tests on the other CPythons
# the machine has (scripts/other-pythons.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
GENEVE_PURE_PYTHON=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_checksum.py tests/test_packet.py tests/test_pipeline.py tests/test_flows.py tests/test_hold.py
.venv/bin/mypy --strict src
.venv/bin/mypy --strict tests benchmarks fuzz
.venv/bin/ruff check src tests benchmarks fuzz
bash scripts/fuzz.sh 25
bash scripts/other-pythons.sh
