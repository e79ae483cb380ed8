#!/usr/bin/env bash
# Fetch the 24 Kodak images from their public home (r0k.us) into DIR (default: ./kodak)
# and check each against kodak.manifest (size and SHA-256). Then point the tests and
# benches at the parent folder:  export CAEC_CORPUS=$(dirname DIR)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-kodak}
base=${KODAK_URL:-http://r0k.us/graphics/kodak/kodak}
mkdir -p "$dir"
grep -v '^#' "$here/kodak.manifest" | while read -r name size sha; do
  out="$dir/$name"
  if [ ! -f "$out" ] || [ "$(sha256sum "$out" | cut -d' ' -f1)" != "$sha" ]; then
    echo "fetching $name"
    curl -fsSL --retry 3 -o "$out.part" "$base/$name"
    mv "$out.part" "$out"
  fi
  actual_size=$(stat -c %s "$out")
  actual_sha=$(sha256sum "$out" | cut -d' ' -f1)
  if [ "$actual_size" != "$size" ] || [ "$actual_sha" != "$sha" ]; then
    echo "error: $out does not match the manifest (size $actual_size, sha256 $actual_sha)" >&2
    exit 1
  fi
done
echo "all 24 Kodak images present and verified in $dir"
