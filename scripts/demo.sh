#!/usr/bin/env bash
# Set up, then run the live demo: namespaces (client, GWLB emulator, server, appliance), the
# reference daemon, and the original blog's checks with real ping and nc. Tears down after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m geneve.emulator demo "$@"
