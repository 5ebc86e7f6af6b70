#!/usr/bin/env bash
# Builds libaiolock (release) and installs it with its header and pkg-config file:
#   PREFIX/lib/libaiolock.{so,a}, PREFIX/include/aiolock.h, PREFIX/lib/pkgconfig/aiolock.pc
# Usage: ffi/install.sh PREFIX [cargo build options, e.g. --no-default-features]
#   DESTDIR=/stage ffi/install.sh /usr   stages the files under /stage/usr (for a package);
#   aiolock.pc still names /usr.
# Then: cc app.c $(pkg-config --cflags --libs aiolock)            (shared)
#       cc app.c $(pkg-config --cflags aiolock) PREFIX/lib/libaiolock.a \
#         $(pkg-config --static --libs-only-l aiolock | sed 's/-laiolock//')   (static)
# The Go module (aiolock.dev/ffi/go) and the Ruby gem (ffi/ruby) find it by pkg-config;
# with a PREFIX outside pkg-config's search path, set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig.
set -euo pipefail
prefix=${1:?usage: ffi/install.sh PREFIX [cargo build options]}
shift
# Relative to where the caller stands, not to the checkout this script moves into.
prefix=$(realpath -m -- "$prefix")
cd "$(dirname "$0")/.."
cargo build -q --release -p aiolock-ffi --lib "$@"
lib=$(realpath -m -- "${CARGO_TARGET_DIR:-target}")/release
version=$(awk -F'"' '/^version *=/ { print $2; exit }' ffi/Cargo.toml)
dest=${DESTDIR:-}$prefix
install -d "$dest/lib/pkgconfig" "$dest/include"
install -m 755 "$lib/libaiolock.so" "$dest/lib/"
install -m 644 "$lib/libaiolock.a" "$dest/lib/"
install -m 644 include/aiolock.h "$dest/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" ffi/aiolock.pc.in >"$dest/lib/pkgconfig/aiolock.pc"
echo "installed libaiolock $version into $dest"
