#!/usr/bin/env bash
# Writes include/aiolock.h from ffi/src with the pinned cbindgen (installed if missing).
# Usage: ffi/gen-header.sh [output]   (default: include/aiolock.h; ffi/test.sh writes
# to a temporary file and diffs it against the committed header)
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.4
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
  cargo install --locked cbindgen --version "$CBINDGEN_VERSION"
fi
out=${1:-include/aiolock.h}
cbindgen --quiet --config ffi/cbindgen.toml --crate aiolock-ffi --output "$out" ffi
