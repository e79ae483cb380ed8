#!/usr/bin/env bash
# Decoding must not depend on the thread count or on burn-flex's SIMD kernels: a file
# encoded once must entropy-decode to identical symbols (and table indices) and to pixels
# within one level with RAYON_NUM_THREADS=1/2/4, in a debug build with `simd`, one without,
# a release build, the release build on the convolutions' im2col path, and on the AVX2 tile
# and on the AVX-512 tiles without the lane layout where the CPU has AVX-512 (those two to
# identical pixels: each output is the same chain of FMAs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin caec
cargo build --quiet --bin caec --no-default-features --target-dir target/nosimd
cargo build --quiet --release --bin caec
simd=target/debug/caec
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ -n "${CAEC_CORPUS:-}" ]; then
  input="$CAEC_CORPUS/kodak/kodim05.png"
else
  # A generated 300x200 test image.
  input="$tmp/in.ppm"
  awk 'BEGIN { print "P3\n300 200\n255"; for (y = 0; y < 200; y++) for (x = 0; x < 300; x++)
       printf "%d %d %d\n", (x * 255 / 299), (y * 255 / 199), int(128 + 100 * sin(x / 9.0) * cos(y / 7.0)) }' > "$input"
fi
"$simd" compress "$input" "$tmp/x.cae"
ref=""
# "im2col": the convolutions' im2col path instead of the direct product's SIMD kernels;
# "avx2": the direct product's AVX2 tile instead of the AVX-512 ones; "tiles": AVX-512 without
# the lane layout (output channels in the vector lanes).
for build in debug:target/debug/caec nosimd:target/nosimd/debug/caec release:target/release/caec im2col:target/release/caec avx2:target/release/caec tiles:target/release/caec; do
  name=${build%%:*}; bin=${build#*:}
  env=(); [ "$name" = im2col ] && env=(CAEC_NO_DIRECT_CONV=1); [ "$name" = avx2 ] && env=(CAEC_NO_AVX512=1); [ "$name" = tiles ] && env=(CAEC_NO_LANES=1)
  for t in 1 2 4; do
    sym=$(env ${env[@]+"${env[@]}"} RAYON_NUM_THREADS=$t "$bin" digest "$tmp/x.cae" | awk '/^symbols/ {print $2}')
    out="$tmp/$t-$name.png"
    env ${env[@]+"${env[@]}"} RAYON_NUM_THREADS=$t "$bin" decompress "$tmp/x.cae" "$out"
    if [ -z "$ref" ]; then ref=$sym; first=$out; fi
    if [ "$sym" != "$ref" ]; then
      echo "determinism: FAILED: symbols differ for $bin with $t threads" >&2; exit 1
    fi
  done
done
for png in "$tmp"/*-*.png; do
  diff=$("$simd" compare "$first" "$png" | awk '{print $4}')
  if [ "$diff" -gt 1 ]; then
    echo "determinism: FAILED: $(basename "$png") differs by $diff levels" >&2; exit 1
  fi
  echo "determinism: $(basename "$png"): symbols identical, max pixel difference $diff"
done
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  for t in 1 2 4; do
    cmp -s "$tmp/$t-release.png" "$tmp/$t-avx2.png" || { echo "determinism: FAILED: the AVX2 and AVX-512 tiles decode to different pixels ($t threads)" >&2; exit 1; }
    cmp -s "$tmp/$t-release.png" "$tmp/$t-tiles.png" || { echo "determinism: FAILED: the lane layout and the tiles decode to different pixels ($t threads)" >&2; exit 1; }
  done
  echo "determinism: AVX-512 lanes, AVX-512 tiles and AVX2 tiles: identical pixels"
else
  echo "determinism: no AVX-512 on this CPU: the AVX2 / AVX-512 / lanes comparison ran one tile thrice"
fi
echo "determinism: 1 passed, 0 failed"
