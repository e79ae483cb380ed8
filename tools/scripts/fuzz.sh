#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECONDS each (default 1800), all at once (one
# process each, one rayon thread each), seeded with the golden .cae files; prints executions
# and crashes per target. Crashes land in fuzz/artifacts/TARGET/; each one found becomes a
# regression test in tests/corrupt.rs. Logs: fuzz/logs/TARGET.log.
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds=${1:-1800}
targets=(header decompress roundtrip)
pids=()
cargo +nightly fuzz build
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ "$t" != roundtrip ] && seeds=(../tests/golden)
  # -rss_limit_mb: libFuzzer fails the run if a single input makes the process grow past it,
  # so an allocation that escapes the decoding limits is a crash.
  RAYON_NUM_THREADS=1 cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" \
    -rss_limit_mb=2048 -timeout=60 -len_control=0 -print_final_stats=1 > "logs/$t.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
for t in "${targets[@]}"; do
  execs=$(grep -aEo 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -Eo '[0-9]+$' || echo "?")
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  cov=$(grep -aEo 'cov: [0-9]+' "logs/$t.log" | tail -1 || true)
  echo "$t: $execs executions in ${seconds}s, $cov, $crashes crash files"
done
exit "$status"
