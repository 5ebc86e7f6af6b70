"""Python RedLock benchmark: aiolock_rs against aiocache 0.12.3 and redis-py's asyncio
Lock, in the same run, on one redis-server this script starts.

    python py/bench/bench.py [--seconds 3] [--rounds 3] [--trials 100]

Rows:
- uncontended acquire+release cycles/s of `concurrency` asyncio tasks (distinct keys
  per task), c=1 and c=64: aiolock_rs over TCP loopback and over the unix socket,
  aiocache's RedLock on a RedisCache (TCP: it speaks nothing else), redis-py's
  `redis.asyncio.lock.Lock` (TCP), and the floor of any client that does its I/O on
  the loop's thread (a bare protocol sending the cycle's two commands). Each row is measured in turns, `rounds` times; the
  best round is kept (the machine is shared).
- cross-process hand-off: a holder process releases, a waiter process (blocked in
  `acquire` of the same key) returns RELEASED; the time from the holder's call of
  `release()` to the waiter's `acquire()` returning, on the shared monotonic clock,
  p50 / p99 over `trials` (from the call, not its return: the waiter is woken by the
  server's publish, often before the holder has read the reply). redis-py's waiter polls (its `sleep`, 0.1 s by default);
  aiocache's waiter in another process does not wait at all.
"""

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from servers import RedisServer  # noqa: E402


async def cycles(make_cycle, concurrency, seconds):
    """Runs `concurrency` tasks of back-to-back cycles for `seconds`: cycles/s."""
    stop = time.monotonic() + seconds
    counts = [0] * concurrency

    async def worker(i):
        cycle = make_cycle(i)
        n = 0
        while time.monotonic() < stop:
            await cycle()
            n += 1
        counts[i] = n

    start = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return sum(counts) / (time.monotonic() - start)


async def aiolock_row(url, concurrency, seconds):
    import aiolock_rs

    cache = await aiolock_rs.Cache.from_url(url, namespace="bench:")

    def make(i):
        key = f"aiolock-{i}"

        async def cycle():
            async with aiolock_rs.RedLock(cache, key, lease=10):
                pass

        return cycle

    return await cycles(make, concurrency, seconds)


async def sync_row(url, concurrency, seconds):
    """The synchronous API on this thread (c=1 only: a thread per caller is another
    benchmark)."""
    if concurrency != 1:
        return float("nan")
    from aiolock_rs import sync

    cache = sync.Cache.from_url(url, namespace="bench:")
    stop = time.monotonic() + seconds
    n = 0
    start = time.monotonic()
    while time.monotonic() < stop:
        with sync.RedLock(cache, "sync-0", lease=10):
            pass
        n += 1
    return n / (time.monotonic() - start)


async def aiocache_row(port, concurrency, seconds):
    import aiocache
    import aiocache.lock

    cache = aiocache.RedisCache(endpoint="127.0.0.1", port=port, namespace="bench", pool_max_size=concurrency + 1)

    def make(i):
        key = f"aiocache-{i}"

        async def cycle():
            async with aiocache.lock.RedLock(cache, key, lease=10):
                pass

        return cycle

    try:
        return await cycles(make, concurrency, seconds)
    finally:
        await cache.close()


async def redispy_row(port, concurrency, seconds):
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=port, max_connections=concurrency + 1)

    def make(i):
        key = f"bench:redispy-{i}"

        async def cycle():
            async with client.lock(key, timeout=10):
                pass

        return cycle

    try:
        return await cycles(make, concurrency, seconds)
    finally:
        await client.aclose()


class _Bare(asyncio.Protocol):
    """The least a client can do on the loop's thread: write a command, and resolve
    the oldest waiting future per reply (RESP2 simple, error, integer and bulk
    replies; no checks)."""

    def __init__(self):
        self.waiting = collections.deque()
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while self.waiting:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, rest = self.buffer[:end], self.buffer[end + 2:]
            if line[:1] == b"$" and line != b"$-1":
                n = int(line[1:])
                if len(rest) < n + 2:
                    return
                line, rest = rest[:n], rest[n + 2:]
            self.buffer = rest
            self.waiting.popleft().set_result(line)

    def send(self, *args):
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(
            b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        )
        return future


RELEASE = (
    b"if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]); "
    b"redis.call('publish', KEYS[2], ARGV[1]); return 1 end return 0"
)


async def floor_row(port, concurrency, seconds):
    """The floor of every client whose I/O runs on the event loop's thread (aiocache's
    and redis-py's do): a bare `asyncio.Protocol` sending a RedLock cycle's two
    commands (`SET NX PX GET`, the release script by `EVALSHA`) and awaiting each
    reply, with no lock logic at all. No such client can be faster than this row."""
    loop = asyncio.get_running_loop()
    transport, bare = await loop.create_connection(_Bare, "127.0.0.1", port)
    sha = await bare.send(b"SCRIPT", b"LOAD", RELEASE)
    token = os.urandom(16).hex().encode()

    def make(i):
        key, channel = f"floor-{i}".encode(), f"floor-{i}-ch".encode()

        async def cycle():
            await bare.send(b"SET", key, token, b"NX", b"PX", b"10000", b"GET")
            await bare.send(b"EVALSHA", sha, b"2", key, channel, token)

        return cycle

    try:
        return await cycles(make, concurrency, seconds)
    finally:
        transport.close()


HANDOFF_CHILD = r"""
import asyncio, sys, time
import aiolock_rs

async def main(url, role):
    cache = await aiolock_rs.Cache.from_url(url, namespace="handoff:")
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not cmd:
            return
        key = cmd[1]
        if role == "holder" and cmd[0] == "take":
            guard = await aiolock_rs.RedLock(cache, key, lease=10).acquire()
            assert guard.acquired
            print("held", flush=True)
        elif role == "holder" and cmd[0] == "release":
            start = time.monotonic_ns()
            await guard.release()
            print(start, flush=True)
        elif role == "waiter" and cmd[0] == "wait":
            guard = await aiolock_rs.RedLock(cache, key, lease=10).acquire()
            print(time.monotonic_ns(), guard.outcome.value, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def handoff(server, trials):
    """p50/p99 (µs) of the cross-process hand-off, aiolock_rs async on both sides."""
    procs = {
        role: subprocess.Popen(
            [sys.executable, "-c", HANDOFF_CHILD, server.url, role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for role in ("holder", "waiter")
    }

    def send(role, text):
        procs[role].stdin.write(text + "\n")
        procs[role].stdin.flush()

    def read(role):
        return procs[role].stdout.readline().split()

    try:
        for role in procs:
            assert read(role) == ["ready"]
        gaps = []
        for t in range(trials):
            key = f"k{t}"
            send("holder", f"take {key}")
            assert read("holder") == ["held"]
            send("waiter", f"wait {key}")
            # Release only once the waiter subscribed (polled server state).
            lock_key = f"handoff:{key}-lock".encode()
            deadline = time.monotonic() + 10
            while server.subscribers(lock_key) < 1:
                assert time.monotonic() < deadline, "the waiter did not subscribe"
                time.sleep(0.0005)
            send("holder", f"release {key}")
            released = int(read("holder")[0])
            woke, outcome = read("waiter")
            assert outcome == "released", outcome
            gaps.append((int(woke) - released) / 1000)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=10)
    gaps.sort()
    return statistics.median(gaps), gaps[int(len(gaps) * 0.99) - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--only", default="", help="run only the rows whose name contains this")
    args = parser.parse_args()
    import aiocache
    import redis

    tmp = tempfile.mkdtemp(prefix="aiolock-bench-")
    server = RedisServer(tmp)
    try:
        rows = {
            "aiolock_rs (unix socket)": lambda c: aiolock_row(server.url, c, args.seconds),
            "aiolock_rs (TCP)": lambda c: aiolock_row(server.tcp_url, c, args.seconds),
            "aiolock_rs.sync, blocking (unix socket)": lambda c: sync_row(server.url, c, args.seconds),
            f"aiocache {aiocache.__version__} RedLock (TCP)": lambda c: aiocache_row(server.port, c, args.seconds),
            f"redis-py {redis.__version__} asyncio Lock (TCP)": lambda c: redispy_row(server.port, c, args.seconds),
            "floor (a bare asyncio Protocol: the cycle's 2 commands, TCP)": lambda c: floor_row(server.port, c, args.seconds),
        }
        rows = {n: r for n, r in rows.items() if args.only in n}
        best = {(name, c): float("-inf") for name in rows for c in (1, 64)}
        for _ in range(args.rounds):
            for c in (1, 64):
                for name, row in rows.items():
                    value = asyncio.run(row(c))
                    best[name, c] = value if value != value else max(best[name, c], value)
        print(f"| cycles/s (best of {args.rounds} rounds of {args.seconds:g} s) | c=1 | c=64 |")
        print("|---|---:|---:|")
        for name in rows:
            cells = ["—" if best[name, c] != best[name, c] else f"{best[name, c]:,.0f}" for c in (1, 64)]
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        peers = [n for n in rows if not n.startswith("aiolock")]
        mine_rows = [n for n in rows if n.startswith("aiolock")]
        for c in (1, 64):
            for mine in mine_rows:
                if best[mine, c] != best[mine, c]:
                    continue
                ratios = ", ".join(f"{best[mine, c] / best[p, c]:.1f}x {p.split()[0]}" for p in peers)
                print(f"c={c}: {mine}: {ratios}")
            floor = next((n for n in peers if n.startswith("floor")), None)
            for peer in peers:
                if floor and peer != floor:
                    print(f"c={c}: the floor: {best[floor, c] / best[peer, c]:.1f}x {peer.split()[0]}")
        if not args.trials:
            return
        p50, p99 = handoff(server, args.trials)
        print(f"cross-process hand-off ({args.trials} trials): p50 {p50:.0f} µs, p99 {p99:.0f} µs")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
