#!/usr/bin/env bash
# Memory-backend acquire + release, from Rust, C, Go and Ruby, in one run; prints a
# table of ns/op and the ratio to Rust. Release builds, C statically linked. Each
# program reports its best of 5 rounds; Rust and C run 3 times, interleaved, and the
# best counts (the machine is shared: the minimum is the least disturbed figure).
# Usage: ffi/bench.sh [iterations]   (Ruby runs a tenth as many)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
lib=${CARGO_TARGET_DIR:-$PWD/target}/release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo build -q --release -p aiolock-ffi --lib --example bench
gcc -std=c11 -O2 -Iinclude ffi/c/bench.c "$lib/libaiolock.a" -lpthread -ldl -lm -o "$tmp/bench-c"

figure() { awk '/^ns_per_op/ {print $2}'; }
min() { sort -g | head -n 1; }
for _ in 1 2 3; do
  "$lib/examples/bench" "$n" | figure >>"$tmp/rust"
  "$tmp/bench-c" "$n" | figure >>"$tmp/c"
done
rust=$(min <"$tmp/rust")
c=$(min <"$tmp/c")
# The Go package finds the library by pkg-config: a prefix over this release build.
mkdir -p "$tmp/prefix/lib/pkgconfig"
sed -e "s|@PREFIX@|$tmp/prefix|" -e "s|@VERSION@|0|" -e "s|^includedir=.*|includedir=$PWD/include|" \
  -e "s|^libdir=.*|libdir=$lib|" ffi/aiolock.pc.in >"$tmp/prefix/lib/pkgconfig/aiolock.pc"
go=$(cd ffi/go && PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" CGO_LDFLAGS="-Wl,-rpath,$lib" \
  go test -run '^$' -bench AcquireRelease -benchtime "${n}x" -count 5 |
  awk '/^BenchmarkAcquireRelease/ {print $3}' | min)
ruby=$(AIOLOCK_LIB="$lib/libaiolock.so" ruby -Iffi/ruby/lib ffi/ruby/bench.rb "$((n / 10))" | figure)

printf '%-8s %10s %8s\n' language ns/op "x Rust"
for row in "Rust $rust" "C $c" "Go $go" "Ruby $ruby"; do
  set -- $row
  awk -v l="$1" -v t="$2" -v r="$rust" 'BEGIN { printf "%-8s %10.0f %8.2f\n", l, t, t / r }'
done

# Instructions per acquire + release (callgrind): the same every run, load or not.
if command -v valgrind >/dev/null; then
  instructions() { # program: instructions per op over 20,000 ops x 5 rounds
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" 20000 2>&1 >/dev/null |
      awk '/I *refs:/ { gsub(",", "", $NF); printf "%.0f", $NF / 100000 }'
  }
  ir_rust=$(instructions "$lib/examples/bench")
  ir_c=$(instructions "$tmp/bench-c")
  printf 'instructions per op (callgrind, includes startup): Rust %s, C %s, C/Rust %s\n' \
    "$ir_rust" "$ir_c" "$(awk -v c="$ir_c" -v r="$ir_rust" 'BEGIN { printf "%.2f", c / r }')"
fi
