#!/usr/bin/env bash
# Refreshes the committed include/aiolock.h: cargo's build of aiolock-ffi generates the
# header from ffi/src into its OUT_DIR (ffi/build.rs, with the cbindgen version pinned
# in ffi/Cargo.toml); this copies it. The test `header_is_fresh` (cargo nextest, or
# cargo test -p aiolock-ffi) fails while the committed header differs.
# Usage: ffi/gen-header.sh [output]   (default: include/aiolock.h)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-include/aiolock.h}
# The build script's OUT_DIR, from cargo's own report of running it.
dir=$(cargo check -q -p aiolock-ffi --lib --message-format=json |
  sed -n 's/^{"reason":"build-script-executed","package_id":"[^"]*#aiolock-ffi@[^"]*".*"out_dir":"\([^"]*\)".*/\1/p')
[ -f "$dir/aiolock.h" ] || { echo "ffi/gen-header.sh: cargo did not report aiolock-ffi's generated header" >&2; exit 1; }
cp "$dir/aiolock.h" "$out"
echo "wrote $out"
