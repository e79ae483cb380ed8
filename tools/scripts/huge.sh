#!/usr/bin/env bash
# Large photos (issue 6): a 6000x4000 mosaic of the Kodak images is compressed and
# decompressed through the CLI under /usr/bin/time -v (peak memory, wall time); the decoded
# image's PSNR near the tile borders is compared with the rest; and every Kodak image is coded
# whole and in tiles of 256 px to measure what tiling costs in bpp and PSNR.
# Needs CAEC_CORPUS and release builds of caec and of the tiling example:
#   cargo build --release --bin caec --example tiling
# Usage: tools/scripts/huge.sh [OUT_DIR]   (default target/huge)
set -euo pipefail
caec=${CAEC:-target/release/caec}
tiling=${TILING:-target/release/examples/tiling}
kodak=${CAEC_CORPUS:?set CAEC_CORPUS to the corpus folder}/kodak
out=${1:-target/huge}
mkdir -p "$out"

"$tiling" mosaic "$kodak" 6000 4000 "$out/huge.png"
run() {
  local what=$1; shift
  /usr/bin/time -v "$@" 2> "$out/time-$what.txt" || { cat "$out/time-$what.txt"; exit 1; }
  awk -v w="$what" '/Maximum resident set size/ {mib = $6 / 1024} /Elapsed \(wall clock\)/ {t = $8}
    END {printf "%-10s peak %.0f MiB, wall %s\n", w, mib, t}' "$out/time-$what.txt"
}
run compress "$caec" compress --force "$out/huge.png" "$out/huge.cae"
run decompress "$caec" decompress --force --max-memory-mib 1024 "$out/huge.cae" "$out/huge.back.png"
"$caec" info "$out/huge.cae" | grep -E '^(size|bpp)'
"$tiling" seams "$out/huge.png" "$out/huge.back.png" 1024
"$tiling" kodak "$kodak" 256 | tee "$out/kodak-tiling.csv" | tail -2
