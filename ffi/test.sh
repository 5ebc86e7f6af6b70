#!/usr/bin/env bash
# The C ABI suite: builds libaiolock, checks the committed header is fresh, runs the C
# tests (ASan + UBSan and valgrind, static and shared library; also on a memcached pool,
# a Redis Cluster and Redis Sentinel), the Go tests and the Ruby tests, and the exclusion
# oracle across languages (Rust, C and Go processes on one key of a real Redis and memcached,
# started by the Rust test's fixtures). Needs gcc, valgrind, go, ruby, ruby-ffi,
# redis-server, redis-cli, memcached, python3 and cargo-nextest (scripts/test installs
# them).
# Usage: ffi/test.sh
# The suites run against the cache $AIOLOCK_TEST_URL names (default memory://; each
# test opens its own namespace). For a network backend, start its server first, e.g.:
#   AIOLOCK_TEST_URL=redis://127.0.0.1:6379 ffi/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
lib=${CARGO_TARGET_DIR:-$root/target}/debug
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== ffi: build libaiolock (debug, with the test-panic hook)"
cargo build -q -p aiolock-ffi --features "test-panic ${AIOLOCK_FFI_FEATURES:-}"
echo "   against ${AIOLOCK_TEST_URL:-memory://}"

echo "== ffi: the committed include/aiolock.h is fresh"
# ffi/build.rs generates the header into OUT_DIR; the test compares it with the
# committed one (the same build as the whole suite's and the oracle's below).
if ! cargo nextest run --workspace --all-features --no-fail-fast \
  -E 'package(aiolock-ffi) & test(header_is_fresh)' >"$tmp/header.log" 2>&1; then
  cat "$tmp/header.log" >&2
  exit 1
fi

echo "== ffi: no async runtime in the C library"
if cargo tree -q -p aiolock-ffi -e normal -i tokio 2>/dev/null | grep -q tokio; then
  echo "tokio is in aiolock-ffi's dependency tree" >&2
  exit 1
fi

cflags=(-std=c11 -Wall -Wextra -Werror -g -Iinclude)
sanitize=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
shared=(-L"$lib" -laiolock -Wl,-rpath,"$lib" -lpthread -lm)
static=("$lib/libaiolock.a" -lpthread -ldl -lm)
# The panic test prints Rust's panic message; a backtrace would only add noise.
export RUST_BACKTRACE=0

run() { # name, command...
  local name=$1
  shift
  echo "-- $name"
  if ! "$@" >"$tmp/$name.log" 2>&1; then
    cat "$tmp/$name.log" >&2
    echo "$name failed" >&2
    exit 1
  fi
  tail -n 1 "$tmp/$name.log"
}

echo "== ffi: C tests"
gcc "${cflags[@]}" "${sanitize[@]}" ffi/c/test.c "${shared[@]}" -o "$tmp/test-shared-asan"
gcc "${cflags[@]}" "${sanitize[@]}" ffi/c/test.c "${static[@]}" -o "$tmp/test-static-asan"
gcc "${cflags[@]}" ffi/c/test.c "${shared[@]}" -o "$tmp/test-shared"
gcc "${cflags[@]}" ffi/c/test.c "${static[@]}" -o "$tmp/test-static"
gcc "${cflags[@]}" ffi/c/example.c "${static[@]}" -o "$tmp/example"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1
run c-shared-asan "$tmp/test-shared-asan"
run c-static-asan "$tmp/test-static-asan"
# Leaks that fail the run: definite and indirect. "Possibly lost" is what valgrind says of
# a block still in use at exit that only an interior pointer reaches, as a hashbrown
# table's (its pointer is to the control bytes, mid-block): a cache's watchdog thread
# that has not finished yet when the process exits shows so; it is reported, not failed.
vg=(valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect)
run c-shared-valgrind "${vg[@]}" "$tmp/test-shared"
run c-static-valgrind "${vg[@]}" "$tmp/test-static"
run c-example "$tmp/example"
# The pkg-config file, over a prefix laid out as ffi/install.sh lays it out (this debug
# library and the committed header, linked in). The Go package finds both through it
# (#cgo pkg-config: aiolock) in every Go step below; ffi/install-test.sh installs for real.
mkdir -p "$tmp/prefix/lib/pkgconfig" "$tmp/prefix/include"
ln -s "$lib/libaiolock.so" "$lib/libaiolock.a" "$tmp/prefix/lib/"
ln -s "$root/include/aiolock.h" "$tmp/prefix/include/"
sed -e "s|@PREFIX@|$tmp/prefix|" -e "s|@VERSION@|0|" ffi/aiolock.pc.in >"$tmp/prefix/lib/pkgconfig/aiolock.pc"
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# shellcheck disable=SC2046 # pkg-config prints several words
gcc "${cflags[@]}" ffi/c/example.c $(pkg-config --cflags --libs aiolock) \
  -Wl,-rpath,"$tmp/prefix/lib" -o "$tmp/example-pkg-config"
run c-example-pkg-config "$tmp/example-pkg-config"
# The header also compiles as C++ (cpp_compat), where a C++ compiler is installed.
if command -v g++ >/dev/null; then
  echo '#include "aiolock.h"' >"$tmp/header.cc"
  g++ -std=c++11 -Wall -Wextra -Werror -Iinclude -fsyntax-only "$tmp/header.cc"
  echo "-- the header compiles as C++11"
fi

echo "== ffi: the C tests on a pool of three memcached servers (the URL as it is)"
pool_dir="$tmp/memcached-pool"
mkdir -p "$pool_dir"
pool_pids=()
for i in 0 1 2; do
  memcached -s "$pool_dir/m$i.sock" -a 0700 -m 16 -t 1 $([ "$(id -u)" = 0 ] && echo -u root) \
    >"$pool_dir/m$i.log" 2>&1 &
  pool_pids+=($!)
done
trap 'kill "${pool_pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for i in 0 1 2; do
  for _ in $(seq 200); do [ -S "$pool_dir/m$i.sock" ] && break; sleep 0.05; done
  [ -S "$pool_dir/m$i.sock" ] || { cat "$pool_dir/m$i.log" >&2; echo "memcached did not start" >&2; exit 1; }
done
AIOLOCK_TEST_URL="memcached+unix://$pool_dir/m0.sock,$pool_dir/m1.sock,$pool_dir/m2.sock?distribution=rendezvous" \
  run c-memcached-pool "$tmp/test-shared"
kill "${pool_pids[@]}"
wait "${pool_pids[@]}" 2>/dev/null || true

echo "== ffi: the C tests on a Redis Cluster of three masters (redis+cluster://, the URL as it is)"
cluster_dir="$tmp/cluster"
mkdir -p "$cluster_dir"
# Cluster nodes announce TCP addresses: six free loopback ports asked of the kernel,
# a client port and a bus port per node (port + 10000, the default bus port, may be
# past 65535); a port taken meanwhile fails the start, and the script with it.
read -r -a free_ports < <(python3 -c 'import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
cluster_ports=("${free_ports[@]:0:3}")
cluster_pids=()
for i in 0 1 2; do
  port=${cluster_ports[$i]}
  mkdir -p "$cluster_dir/$port"
  redis-server --port "$port" --cluster-port "${free_ports[$((i + 3))]}" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-node-timeout 5000 \
    --save '' --appendonly no --dir "$cluster_dir/$port" --logfile "$cluster_dir/$port/redis.log" &
  cluster_pids+=($!)
done
trap 'kill "${cluster_pids[@]}" 2>/dev/null || true; wait "${cluster_pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
cluster_seeds=()
for port in "${cluster_ports[@]}"; do
  for _ in $(seq 200); do [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
  cluster_seeds+=("127.0.0.1:$port")
done
redis-cli --cluster create "${cluster_seeds[@]}" --cluster-replicas 0 --cluster-yes >"$cluster_dir/create.log" 2>&1 &
create_pid=$!
# redis-cli waits without end for every node to know every other one, and now and then
# a MEET handshake is lost: once it has begun to meet them, the MEETs are sent again
# every 3 s (as tests/support/redis_cluster.rs does), for at most 60 s.
for tick in $(seq 1200); do
  kill -0 "$create_pid" 2>/dev/null || break
  if ((tick % 60 == 0)) && ! redis-cli -p "${cluster_ports[0]}" cluster info | grep -q '^cluster_known_nodes:1\s*$'; then
    for a in 0 1 2; do
      for b in 0 1 2; do
        [ "$a" = "$b" ] || redis-cli -p "${cluster_ports[$a]}" cluster meet 127.0.0.1 \
          "${cluster_ports[$b]}" "${free_ports[$((b + 3))]}" >/dev/null
      done
    done
  fi
  sleep 0.05
done
kill "$create_pid" 2>/dev/null || true
wait "$create_pid" ||
  { cat "$cluster_dir/create.log" >&2; echo "redis-cli --cluster create failed or did not finish in 60 s" >&2; exit 1; }
for port in "${cluster_ports[@]}"; do
  for _ in $(seq 600); do
    info=$(redis-cli -p "$port" cluster info)
    [[ $info == *cluster_state:ok* && $info == *cluster_known_nodes:3* ]] && break
    sleep 0.05
  done
  [[ $info == *cluster_state:ok* ]] || { echo "the cluster did not reach cluster_state:ok" >&2; exit 1; }
done
AIOLOCK_TEST_URL="redis+cluster://$(IFS=,; echo "${cluster_seeds[*]}")" run c-redis-cluster "$tmp/test-shared"
kill "${cluster_pids[@]}"
wait "${cluster_pids[@]}" 2>/dev/null || true

echo "== ffi: the C tests on Redis Sentinel (redis+sentinel://, a master, a replica, three sentinels; WAIT for the replica)"
sentinel_dir="$tmp/sentinel"
mkdir -p "$sentinel_dir"
# Sentinels and the nodes they name speak TCP: five free loopback ports asked of the
# kernel (a port taken meanwhile fails the start, and the script with it).
read -r -a free_ports < <(python3 -c 'import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
master_port=${free_ports[0]}
replica_port=${free_ports[1]}
sentinel_pids=()
for port in "$master_port" "$replica_port"; do
  mkdir -p "$sentinel_dir/$port"
  replica_of=()
  [ "$port" = "$replica_port" ] && replica_of=(--replicaof 127.0.0.1 "$master_port")
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --repl-diskless-sync-delay 0 "${replica_of[@]}" \
    --dir "$sentinel_dir/$port" --logfile "$sentinel_dir/$port/redis.log" &
  sentinel_pids+=($!)
done
trap 'kill "${sentinel_pids[@]}" 2>/dev/null || true; wait "${sentinel_pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 600); do
  [[ $(redis-cli -p "$replica_port" info replication 2>/dev/null) == *master_link_status:up* ]] && break
  sleep 0.05
done
sentinel_hosts=()
for port in "${free_ports[@]:2:3}"; do
  mkdir -p "$sentinel_dir/$port"
  # A long down-after: nothing fails over here.
  printf '%s\n' "port $port" "bind 127.0.0.1" "dir $sentinel_dir/$port" \
    "sentinel monitor aiolock-master 127.0.0.1 $master_port 2" \
    "sentinel down-after-milliseconds aiolock-master 60000" >"$sentinel_dir/$port/sentinel.conf"
  redis-server "$sentinel_dir/$port/sentinel.conf" --sentinel --logfile "$sentinel_dir/$port/sentinel.log" &
  sentinel_pids+=($!)
  sentinel_hosts+=("127.0.0.1:$port")
done
for port in "${free_ports[@]:2:3}"; do
  for _ in $(seq 600); do
    named=$(redis-cli -p "$port" sentinel get-master-addr-by-name aiolock-master 2>/dev/null | tail -n 1)
    [ "$named" = "$master_port" ] && break
    sleep 0.05
  done
  [ "$named" = "$master_port" ] || { echo "sentinel $port does not name the master" >&2; exit 1; }
done
AIOLOCK_TEST_URL="redis+sentinel://$(IFS=,; echo "${sentinel_hosts[*]}")/aiolock-master?wait_replicas=1" \
  run c-redis-sentinel "$tmp/test-shared"
kill "${sentinel_pids[@]}"
wait "${sentinel_pids[@]}" 2>/dev/null || true


echo "== ffi: C tests against Redis and memcached (ASan + UBSan, shared library)"
# The whole C suite again over a real server of each kind (each test in a namespace of
# its own): the lease API (fences, extend, the watchdog and its loss callbacks) on
# the backends' own scripts and meta commands, not only on memory.
redis_dir="$tmp/redis"
mkdir -p "$redis_dir"
redis-server --port 0 --unixsocket "$redis_dir/redis.sock" --unixsocketperm 700 --save '' \
  --appendonly no --dir "$redis_dir" --logfile "$redis_dir/redis.log" &
redis_pid=$!
memcached_args=(-s "$tmp/memcached.sock" -a 0700 -m 64 -t 2)
[ "$(id -u)" = 0 ] && memcached_args+=(-u root)
memcached "${memcached_args[@]}" >"$tmp/memcached.log" 2>&1 &
memcached_pid=$!
# The servers are waited for before their directory goes (redis-server writes its log
# while it exits: an rm racing it fails, and with it the script).
trap 'kill "$redis_pid" "$memcached_pid" 2>/dev/null || true; wait "$redis_pid" "$memcached_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 200); do [ -S "$redis_dir/redis.sock" ] && [ -S "$tmp/memcached.sock" ] && break; sleep 0.05; done
[ -S "$redis_dir/redis.sock" ] || { cat "$redis_dir/redis.log" >&2; echo "redis-server did not start" >&2; exit 1; }
[ -S "$tmp/memcached.sock" ] || { cat "$tmp/memcached.log" >&2; echo "memcached did not start" >&2; exit 1; }
AIOLOCK_TEST_URL="redis+unix://$redis_dir/redis.sock" run c-redis-asan "$tmp/test-shared-asan"
AIOLOCK_TEST_URL="memcached+unix://$tmp/memcached.sock" run c-memcached-asan "$tmp/test-shared-asan"

echo "== ffi: cross-language hand-off over Redis (Go holds; C and Ruby wait in other processes)"
url="redis+unix://$redis_dir/redis.sock?namespace=cross:"
gcc "${cflags[@]}" ffi/c/wait.c "${shared[@]}" -o "$tmp/wait"
(cd ffi/go && CGO_LDFLAGS="-Wl,-rpath,$lib" go build -o "$tmp/aiolock-hold" ./cmd/aiolock-hold)
# The holder releases when a line arrives on its standard input (the fifo), written
# once both waiters wait: no sleep orders the processes.
mkfifo "$tmp/hold.in"
"$tmp/aiolock-hold" "$url" report <"$tmp/hold.in" >"$tmp/hold.out" &
hold_pid=$!
exec 3>"$tmp/hold.in"
for _ in $(seq 600); do grep -q held "$tmp/hold.out" && break; sleep 0.05; done
grep -q held "$tmp/hold.out" || { echo "the Go holder never took the lock" >&2; exit 1; }
"$tmp/wait" "$url" report >"$tmp/c.out" &
c_pid=$!
AIOLOCK_LIB="$lib/libaiolock.so" ruby -Iffi/ruby/lib -e '
  require "aiolock"
  cache = Aiolock::Cache.open(ARGV[0])
  lock = cache.acquire("report", lease: 30.0)
  puts "#{lock.outcome} #{cache.get("report")}"
  lock.release
' "$url" >"$tmp/ruby.out" &
ruby_pid=$!
# A waiter subscribes to the lock's release channel after its claim lost (and before
# it re-checks the key): two subscribers, one per waiting process, and both wait.
channel=aiolock:release:cross:report-lock
for _ in $(seq 600); do
  subscribers=$(redis-cli -s "$redis_dir/redis.sock" pubsub numsub "$channel" | tail -n 1)
  [ "$subscribers" = 2 ] && break
  sleep 0.05
done
[ "$subscribers" = 2 ] || { echo "the C and Ruby waiters never both waited ($subscribers subscribers)" >&2; exit 1; }
echo release >&3
exec 3>&-
wait "$hold_pid" || { echo "the Go holder failed" >&2; exit 1; }
wait "$c_pid" || { echo "the C waiter failed" >&2; exit 1; }
wait "$ruby_pid" || { echo "the Ruby waiter failed" >&2; exit 1; }
for waiter in c ruby; do
  got=$(cat "$tmp/$waiter.out")
  echo "-- $waiter waiter: $got"
  if [ "$got" != "released computed by go" ]; then
    echo "the $waiter waiter should have been woken by the Go holder's release" >&2
    exit 1
  fi
done

echo "== ffi: the exclusion oracle across languages, on Redis and memcached"
# tests/exclusive cross_process_oracle: three Rust child processes (blocking), the
# test's own (async), and these two programs over the C ABI (C under ASan + UBSan, and
# Go), 4 threads each, take one exclusive key in turn and mark every entry and exit in
# one O_APPEND file; the lines must pair up. Both backends must run, nothing skipped.
gcc "${cflags[@]}" "${sanitize[@]}" ffi/c/oracle.c "${shared[@]}" -o "$tmp/oracle-c"
(cd ffi/go && CGO_LDFLAGS="-Wl,-rpath,$lib" go build -o "$tmp/oracle-go" ./cmd/aiolock-oracle)
if ! AIOLOCK_TEST_ORACLE_PROGRAMS="$tmp/oracle-c:$tmp/oracle-go" cargo nextest run --workspace --all-features \
  --no-fail-fast --success-output immediate -E 'test(exclusive_cross_process_oracle)' >"$tmp/oracle.log" 2>&1; then
  cat "$tmp/oracle.log" >&2
  echo "the cross-language exclusion oracle failed" >&2
  exit 1
fi
if ! grep -q '2 tests run: 2 passed' "$tmp/oracle.log" || [ "$(grep -c 'entries as foreign' "$tmp/oracle.log")" != 4 ]; then
  cat "$tmp/oracle.log" >&2
  echo "the oracle must run on Redis and memcached, with the C and Go processes in both" >&2
  exit 1
fi
grep -E 'PASS|entries of' "$tmp/oracle.log" | sed 's/^ */-- /'

echo "== ffi: Go tests"
(
  cd ffi/go
  export CGO_LDFLAGS="-Wl,-rpath,$lib"
  go vet -tags aiolock_test_panic ./...
  go test -race -tags aiolock_test_panic -count=1 ./...
  # The lease API (fences, extend, the watchdog's Lost channel) over real servers too.
  for url in "redis+unix://$redis_dir/redis.sock" "memcached+unix://$tmp/memcached.sock"; do
    echo "-- go lease tests against ${url%%:*}"
    AIOLOCK_TEST_URL=$url go test -race -count=1 -run 'Fence|Extend|Watchdog|Unwatched|Leak|Races' .
  done
)

echo "== ffi: Ruby tests"
AIOLOCK_LIB="$lib/libaiolock.so" ruby -Iffi/ruby/lib ffi/ruby/test/test_aiolock.rb 2>"$tmp/ruby.err" ||
  { cat "$tmp/ruby.err" >&2; exit 1; }
