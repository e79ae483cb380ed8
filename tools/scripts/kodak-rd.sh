#!/usr/bin/env bash
# Kodak rate–distortion through the CLI: for each caec quality, every Kodak image is
# compressed and decompressed with `caec`, and the whole-file bpp and RGB PSNR are averaged
# (mean of per-image PSNR). With --jpeg, the same for libjpeg-turbo's cjpeg (4:2:0, the
# libjpeg default) at qualities 5..95 step 5. Needs: a built caec (CAEC=path), CAEC_CORPUS,
# and for --jpeg the Debian packages libjpeg-turbo-progs and netpbm.
# Usage: tools/scripts/kodak-rd.sh [--jpeg] [QUALITY...]   (default: every caec quality)
set -euo pipefail
caec=${CAEC:-target/release/caec}
kodak=${CAEC_CORPUS:?set CAEC_CORPUS to the corpus folder}/kodak
jpeg=0
if [ "${1:-}" = "--jpeg" ]; then jpeg=1; shift; fi
qualities=${*:-1 2 3 4}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mean() { awk '{b+=$1; p+=$2; n++} END {printf "%.4f %.3f %d\n", b/n, p/n, n}'; }
echo "codec quality mean_bpp mean_psnr images"
for q in $qualities; do
  for f in "$kodak"/kodim*.png; do
    "$caec" compress -q "$q" --force "$f" "$tmp/x.cae"
    "$caec" decompress --force "$tmp/x.cae" "$tmp/x.png"
    px=$("$caec" info "$tmp/x.cae" | awk '/^size:/ {split($2,a,"x"); print a[1]*a[2]}')
    bytes=$(stat -c %s "$tmp/x.cae")
    psnr=$("$caec" compare "$f" "$tmp/x.png" | awk '{print $2}')
    echo "$(awk -v b="$bytes" -v p="$px" 'BEGIN {print b*8/p}') $psnr"
  done | mean | sed "s/^/caec $q /"
done
if [ $jpeg = 1 ]; then
  for q in $(seq 5 5 95); do
    for f in "$kodak"/kodim*.png; do
      pngtopnm "$f" > "$tmp/in.ppm" 2>/dev/null
      cjpeg -quality "$q" -outfile "$tmp/x.jpg" "$tmp/in.ppm"
      djpeg -outfile "$tmp/x.ppm" "$tmp/x.jpg"
      bytes=$(stat -c %s "$tmp/x.jpg")
      psnr=$("$caec" compare "$tmp/in.ppm" "$tmp/x.ppm" | awk '{print $2}')
      echo "$(awk -v b="$bytes" 'BEGIN {print b*8/(768*512)}') $psnr"
    done | mean | sed "s/^/jpeg $q /"
  done
fi
