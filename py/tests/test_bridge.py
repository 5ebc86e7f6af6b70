"""The asyncio bridge: awaitables polled on their loop's own thread, woken by the
sockets the loop watches for them and by tokio; several loops on one connection;
connections that drop under it."""

import asyncio
import os
import threading

from aiolock_rs import BackendConnectionError, Cache, RedLock


def test_two_event_loops_share_one_connection(redis_server, ns):
    """Two threads, each with its own event loop, pipeline commands on the one
    connection of a shared cache: the task reading the replies is often the other
    loop's, so every completion must also reach a loop that does not watch the socket
    for it. A lost wake-up hangs a thread (joined with a bound)."""
    async def open_cache():
        return await Cache.from_url(redis_server.url, namespace=ns)

    cache = asyncio.run(open_cache())
    done, errors = [], []

    def loop(name):
        async def cycles():
            for i in range(300):
                async with RedLock(cache, f"{name}-{i % 8}", lease=10) as lock:
                    assert lock.acquired
                await cache.set(f"{name}-v", str(i).encode())
                assert await cache.get(f"{name}-v") == str(i).encode()
            done.append(name)

        try:
            asyncio.run(cycles())
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a loop hangs: a wake-up was lost"
    assert not errors, errors
    assert sorted(done) == ["a", "b"]


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_dropped_connections_leave_no_descriptor_watched(redis_server, ns):
    """The server drops every client connection 40 times, between and during calls:
    each loses at most the call in flight (a connection error), the next call opens
    another connection and works, and the duplicates of the sockets the loop watched
    are all closed (descriptor numbers of dropped sockets are reused all along)."""

    async def main():
        cache = await Cache.from_url(redis_server.url, namespace=ns)
        await cache.set("k", b"v")
        before = _open_fds()
        for i in range(40):
            pending = asyncio.ensure_future(cache.get("k"))
            if i % 2:
                await asyncio.sleep(0)  # the request written, its reply awaited
            redis_server.client.client_kill_filter(_type="normal", skipme=True)
            for call in (pending, cache.get("k")):
                try:
                    assert await call == b"v"
                except BackendConnectionError:
                    pass  # the call in flight when the connection went
            async with RedLock(cache, "lock", lease=10) as lock:
                assert lock.acquired
            assert await cache.get("k") == b"v"
        # The cache's connections: the command connection and its spares; none of
        # the sockets dropped above is still open through the bridge.
        assert _open_fds() <= before + 4, (before, _open_fds())

    asyncio.run(main())
