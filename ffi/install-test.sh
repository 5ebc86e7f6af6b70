#!/usr/bin/env bash
# Installs libaiolock, the Go module and the Ruby gem the way their users do, into a
# temporary prefix, and builds one consumer of each from a copy outside the repository
# (ffi/consumers): a C program linked through pkg-config (shared, and static from the
# installed .a with pkg-config --static's libraries), a Go program that adds the module
# by its path (go get aiolock.dev/ffi/go@vVERSION, served from a module proxy in a
# folder: no network), and a Ruby script that uses the built and installed gem, which
# finds the library by pkg-config. Each takes, holds and releases a lock on the memory
# backend and checks the library's version.
# Needs gcc, pkg-config, go, ruby with the ffi gem, python3 (scripts/test installs them).
# Usage: ffi/install-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(awk -F'"' '/^version *=/ { print $2; exit }' ffi/Cargo.toml)
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
work=$tmp/consumers
cp -R ffi/consumers "$work"

echo "== install: ffi/install.sh $version into a temporary prefix"
ffi/install.sh "$prefix" >/dev/null
for file in lib/libaiolock.so lib/libaiolock.a include/aiolock.h lib/pkgconfig/aiolock.pc; do
  [ -f "$prefix/$file" ] || { echo "ffi/install.sh did not install $file" >&2; exit 1; }
done
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion aiolock)" = "$version" ] ||
  { echo "aiolock.pc says $(pkg-config --modversion aiolock), the crate $version" >&2; exit 1; }
# Only what was installed: no library, header or package from the checkout or the system.
unset AIOLOCK_LIB LD_LIBRARY_PATH CGO_CFLAGS CGO_LDFLAGS RUBYLIB

links() { # program, expected: does the program load libaiolock.so from the prefix?
  if [ "$2" = shared ]; then
    ldd "$1" | grep -q "=> $prefix/lib/libaiolock.so" || { ldd "$1" >&2; echo "$1 does not load the installed libaiolock.so" >&2; exit 1; }
  elif ldd "$1" | grep -q libaiolock; then
    ldd "$1" >&2; echo "$1 should have libaiolock linked in statically" >&2; exit 1
  fi
}
cflags=(-std=c11 -Wall -Wextra -Werror)

echo "-- C: cc main.c \$(pkg-config --cflags --libs aiolock)"
# shellcheck disable=SC2046 # pkg-config prints several words
gcc "${cflags[@]}" "$work/c/main.c" $(pkg-config --cflags --libs aiolock) -Wl,-rpath,"$prefix/lib" -o "$work/c/shared"
links "$work/c/shared" shared
"$work/c/shared" "$version"

echo "-- C: the installed libaiolock.a with pkg-config --static's libraries"
private=()
for flag in $(pkg-config --static --libs-only-l aiolock); do
  [ "$flag" = -laiolock ] || private+=("$flag")
done
# shellcheck disable=SC2046
gcc "${cflags[@]}" "$work/c/main.c" $(pkg-config --cflags aiolock) "$prefix/lib/libaiolock.a" \
  "${private[@]}" -o "$work/c/static"
links "$work/c/static" static
"$work/c/static" "$version"

echo "-- Go: go get aiolock.dev/ffi/go@v$version (module proxy in a folder), go build"
# The module zip as the Go tools make it from a tag (ffi/go/v$version): the module's
# files under MODULE@VERSION/.
module=aiolock.dev/ffi/go
proxy=$tmp/goproxy/$module/@v
mkdir -p "$proxy"
echo "v$version" >"$proxy/list"
printf '{"Version":"v%s","Time":"%s"}\n' "$version" "$(git log -1 --format=%cI -- ffi/go)" >"$proxy/v$version.info"
cp ffi/go/go.mod "$proxy/v$version.mod"
git ls-files ffi/go | python3 -c '
import sys, zipfile
prefix, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for path in sys.stdin.read().split():
        z.write(path, prefix + path[len("ffi/go/"):])
' "$module@v$version/" "$proxy/v$version.zip"
(
  cd "$work/go"
  export GOPROXY="file://$tmp/goproxy" GOSUMDB=off GOFLAGS=-modcacherw GOMODCACHE="$tmp/gomodcache"
  go get "$module@v$version" 2>&1 | { grep -v '^go: \(downloading\|added\)' || true; }
  grep -q "^require $module v$version" go.mod || { cat go.mod >&2; echo "go get did not require $module" >&2; exit 1; }
  CGO_LDFLAGS="-Wl,-rpath,$prefix/lib" go build -o consumer .
  links consumer shared
  ./consumer "$version"
)

echo "-- Ruby: gem build, gem install --local, require \"aiolock\" (libaiolock by pkg-config)"
gems=$tmp/gems
mkdir "$tmp/gem-src"
cp -R ffi/ruby/aiolock.gemspec ffi/ruby/README.md ffi/ruby/lib "$tmp/gem-src/"
# (The gemspec names no homepage yet: gem build's warning about it is not shown.)
(cd "$tmp/gem-src" && gem build aiolock.gemspec -o "aiolock-$version.gem" >"$tmp/gem-build.log" 2>&1) ||
  { cat "$tmp/gem-build.log" >&2; exit 1; }
# GEM_PATH keeps the system's gems, so that the ffi dependency is found installed.
export GEM_HOME=$gems GEM_PATH="$gems:$(gem env gempath)"
gem install --quiet --local --no-document "$tmp/gem-src/aiolock-$version.gem" >/dev/null
(cd "$work/ruby" && ruby main.rb "$version" "$gems" "$prefix")
