#!/usr/bin/env bash
# Builds libaiolock (release) and installs it with its header and pkg-config file:
#   PREFIX/lib/libaiolock.{so,a}, PREFIX/include/aiolock.h, PREFIX/lib/pkgconfig/aiolock.pc
# Usage: ffi/install.sh PREFIX [cargo build options, e.g. --features redis]
# Then: cc app.c $(pkg-config --cflags --libs aiolock)            (shared)
#       cc app.c -IPREFIX/include PREFIX/lib/libaiolock.a -lpthread -ldl -lm   (static)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: ffi/install.sh PREFIX [cargo build options]}
shift
cargo build -q --release -p aiolock-ffi --lib "$@"
lib=${CARGO_TARGET_DIR:-$PWD/target}/release
version=$(awk -F'"' '/^version *=/ { print $2; exit }' ffi/Cargo.toml)
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 755 "$lib/libaiolock.so" "$prefix/lib/"
install -m 644 "$lib/libaiolock.a" "$prefix/lib/"
install -m 644 include/aiolock.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" ffi/aiolock.pc.in >"$prefix/lib/pkgconfig/aiolock.pc"
echo "installed libaiolock $version into $prefix"
