#!/usr/bin/env bash
# Build the libFuzzer targets in fuzz/ (clang, -fsanitize=fuzzer,address,undefined) and run
# each, then the atheris targets of the inspection parsers (fuzz/fuzz_{tls,http,dns}.py), for
# the given number of seconds each (default 60) on a corpus built from fuzz/seeds and the
# captures in ../shared/vectors. Fails on any finding; the input that found it is kept in
# build/fuzz/artifacts/. A line per target gives its executions and coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]* | 0) echo "fuzz.sh: seconds per target must be a positive integer, not '$seconds'" >&2; exit 2 ;;
esac
command -v clang >/dev/null || { echo "fuzz.sh: clang is missing: run scripts/setup.sh" >&2; exit 2; }
out=build/fuzz
mkdir -p "$out/artifacts"
rm -rf "$out/corpus"
.venv/bin/python fuzz/corpus.py build "$out/corpus"
flags=(-g -O1 -std=c99 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Isrc/geneve)
declare -A sources=(
  [fuzz_sum]=src/geneve/_checksum.c
  [fuzz_fix]=src/geneve/_checksum.c
  [fuzz_fast_forward]="src/geneve/_batch.c src/geneve/_flowtable.c"
  [fuzz_batch]="src/geneve/_batch.c src/geneve/_flowtable.c"
  [fuzz_flows]=src/geneve/_flowtable.c
  [fuzz_tun]=src/geneve/_tun.c
)
failed=0
# Run one target (the command after its name) on its corpus for $seconds; report executions and
# coverage, or what it found.
run_target() {
  local target="$1"; shift
  local log="$out/$target.log"
  if "$@" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$out/artifacts/$target-" "$out/corpus/$target" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz: $target: $runs executions in ${seconds} s, $cov (edges), no finding"
  else
    failed=1
    echo "fuzz: $target FOUND something (log: $log):" >&2
    grep -E -A8 'ERROR|SUMMARY|runtime error|deadly signal|Uncaught Python exception|Test unit written' \
      "$log" | head -30 >&2
  fi
}
for target in fuzz_sum fuzz_fix fuzz_fast_forward fuzz_batch fuzz_flows fuzz_tun; do
  # _GNU_SOURCE for memmem and recvmmsg (each source file defines it where it needs it).
  clang "${flags[@]}" -o "$out/$target" "fuzz/$target.c" ${sources[$target]} 2>"$out/$target.build.log" \
    || { cat "$out/$target.build.log" >&2; exit 1; }
  run_target "$target" env ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$out/$target"
done
# The atheris targets of the inspection parsers: pure Python, where any exception but
# InspectError is a finding.
for target in fuzz_tls fuzz_http fuzz_dns; do
  run_target "$target" .venv/bin/python "fuzz/$target.py"
done
exit "$failed"
