#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each (default 1800), seeded with the golden
# .cae files; prints executions and crashes per target. Crashes land in fuzz/artifacts/TARGET/;
# each one found becomes a regression test in tests/corrupt.rs.
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds=${1:-1800}
for t in header decompress roundtrip; do
  mkdir -p "corpus/$t"
  seeds=()
  [ "$t" != roundtrip ] && seeds=(../tests/golden)
  log="$(mktemp)"
  status=0
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -print_final_stats=1 > "$log" 2>&1 || status=$?
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: $execs executions in ${seconds}s, exit $status, $crashes crash files"
  [ "$status" = 0 ] || tail -40 "$log"
  rm -f "$log"
done
