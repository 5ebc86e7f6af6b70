"""Child processes of the cross-process tests: `python workers.py MODE ARGS...`.

They talk to the test over stdin/stdout lines, never by timing."""

import asyncio
import importlib
import json
import os
import sys
import threading
import time


def sigint_waiter(url, ns):
    """Holds the lock on "key", then waits for it again in the main thread (sync API)
    until SIGINT; a thread reports "waiting" once the wait counts (it runs only
    because the wait released the GIL)."""
    from aiolock_rs.sync import Cache

    cache = Cache.from_url(url, namespace=ns)
    holder = cache.redlock("key", 60).acquire()
    assert holder.acquired

    def report():
        while cache.waiting("key") < 1:
            time.sleep(0.001)
        print("waiting", flush=True)

    threading.Thread(target=report, daemon=True).start()
    try:
        cache.redlock("key", 60).acquire()
        print("returned", flush=True)
    except KeyboardInterrupt:
        still_held = cache.exists("key-lock")
        print("interrupted", cache.waiting("key"), int(still_held), flush=True)
    holder.release()


async def stampede(url, ns, index, processes, tasks, log):
    """`tasks` callers miss the same key; the one that holds the lock computes once
    every caller of every process waits (their counts are published in the cache),
    appending a line to `log`. Prints the outcomes as JSON."""
    from aiolock_rs import Cache, RedLock

    cache = await Cache.from_url(url, namespace=ns)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    done = asyncio.Event()

    async def publish():
        while not done.is_set():
            await cache.set(f"waiting:{index}", str(cache.waiting("value")))
            await asyncio.sleep(0.002)

    async def everyone_waits():
        others = processes * tasks - 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = [await cache.get(f"waiting:{i}") for i in range(processes)]
            if sum(int(c or 0) for c in counts) == others:
                return
            await asyncio.sleep(0.002)
        raise AssertionError("the other callers did not all wait")

    async def caller():
        if await cache.get("value") is not None:
            return "cached"
        async with RedLock(cache, "value", lease=40) as lock:
            if lock.acquired and await cache.get("value") is None:
                await everyone_waits()
                with open(log, "a") as f:
                    f.write(f"{os.getpid()}\n")
                await cache.set("value", b"computed")
            return lock.outcome.value

    publisher = asyncio.ensure_future(publish())
    outcomes = await asyncio.gather(*(caller() for _ in range(tasks)))
    done.set()
    await publisher
    print(json.dumps(outcomes), flush=True)


async def dropin(module, port, ns, role, log):
    """The same aiocache code for both modules: miss, lock, compute, store. The holder
    waits inside the lock for a line on stdin."""
    import aiocache

    lock_module = importlib.import_module(module)
    cache = aiocache.RedisCache(endpoint="127.0.0.1", port=int(port), namespace=ns)
    async with lock_module.RedLock(cache, "report", lease=20):
        if await cache.get("report") is None:
            with open(log, "a") as f:
                f.write(f"{role}\n")
            if role == "holder":
                print("holding", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            await cache.set("report", {"by": role})
    print("done", json.dumps(await cache.get("report")), flush=True)
    await cache.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "sigint":
        sigint_waiter(*args)
    elif mode == "stampede":
        url, ns, index, processes, tasks, log = args
        asyncio.run(stampede(url, ns, int(index), int(processes), int(tasks), log))
    elif mode == "dropin":
        asyncio.run(dropin(*args))
    else:
        raise SystemExit(f"unknown mode {mode}")
