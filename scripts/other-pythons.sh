#!/usr/bin/env bash
# The codec, pipeline, flow and rule tests on every other CPython this machine has that
# pyproject's requires-python (>= 3.10) admits: pyenv's 3.10, 3.12 and 3.13 beside the
# system's 3.11. Each gets a virtualenv of its own (.venv-3.X), kept between runs. A Python
# that is not installed is said and skipped; one that fails its tests fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(tests/test_checksum.py tests/test_packet.py tests/test_pipeline.py tests/test_flows.py
       tests/test_flows_c.py tests/test_hold.py tests/test_rules.py tests/test_reject.py
       tests/test_replay.py tests/test_inspect.py tests/test_rule_reasons.py)
for version in 3.10 3.12 3.13; do
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$python" ]; then
    echo "other-pythons: no CPython $version on this machine: skipped"
    continue
  fi
  venv=".venv-$version"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
         "$venv/bin/python" -m pip install -q -e . pytest hypothesis scapy; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "other-pythons: installing into $venv failed" >&2
    exit 1
  fi
  impl=$("$venv/bin/python" -c 'import geneve.checksum as c, geneve._flows as f; print(c.IMPLEMENTATION, "C flows" if f._c else "Python flows")')
  echo "other-pythons: CPython $version ($impl)"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" | tail -1
done
