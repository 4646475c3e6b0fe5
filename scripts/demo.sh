#!/usr/bin/env bash
# Set up, then run the demo: the real cloud GWLB capture through the reference rules.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
vectors=${GENEVE_VECTORS:-../shared/vectors}
out=$(mktemp --suffix=.pcap)
trap 'rm -f "$out"' EXIT
.venv/bin/python -m geneve.replay "$vectors/tx-gwlb-for-demo__geneve.pcap" "$out"
