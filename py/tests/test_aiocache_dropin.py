"""aiolock_rs.aiocache, the drop-in for aiocache.lock: it takes aiocache's caches,
locks exactly aiocache's key, writes cas values through aiocache's serializer; and
the same code run against aiocache 0.12.3 and the drop-in shows the cross-process
difference."""

import asyncio
import time

import aiocache
import aiocache.lock
import pytest

import aiolock_rs
from aiolock_rs import aiocache as dropin
from helpers import child, line, wait_for


def test_aiocache_is_the_measured_version():
    assert aiocache.__version__ == "0.12.3"


@pytest.fixture(params=["redis", "memcached", "memory"])
def aio(request, ns):
    """An aiocache cache of each kind, with a namespace (aiocache's own rules)."""
    name = ns.rstrip(":")
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        cache = aiocache.RedisCache(endpoint="127.0.0.1", port=server.port, namespace=name)
    elif request.param == "memcached":
        server = request.getfixturevalue("memcached_server")
        cache = aiocache.MemcachedCache(endpoint="127.0.0.1", port=server.port, namespace=name)
    else:
        cache = aiocache.SimpleMemoryCache(namespace=name)
    return request.param, cache


def test_redlock_four_callers_one_set_on_aiocaches_key(aio):
    kind, cache = aio

    async def main():
        sets = []
        seen = []

        async def caller():
            lock = dropin.RedLock(cache, "key", lease=10)
            async with lock:
                # aiocache's own client sees the lock under aiocache's key.
                if lock.acquired and kind != "memory":
                    seen.append(await cache.exists("key-lock"))
                if await cache.get("key") is None:
                    await wait_for(lambda: _waiting(cache) == 3, what="3 waiters")
                    sets.append(1)
                    await cache.set("key", {"v": 1})
                return lock.outcome

        outcomes = await asyncio.gather(*(caller() for _ in range(4)))
        assert len(sets) == 1 and seen == ([] if kind == "memory" else [True])
        assert sorted(o.value for o in outcomes) == ["acquired"] + ["released"] * 3
        assert await cache.get("key") == {"v": 1}
        if kind != "memory":
            assert not await cache.exists("key-lock")
        await cache.close()

    asyncio.run(main())


def _waiting(cache):
    """The waiters of the drop-in's aiolock cache for an aiocache cache."""
    opened = dropin._MEMORY if isinstance(cache, aiocache.SimpleMemoryCache) else dropin._OPENED[cache]
    # The lock key without "-lock": the aiolock cache has no namespace.
    key = dropin._as_bytes(cache.build_key("key"))
    return opened.cache.waiting(key)


def test_exceptions_propagate(aio):
    kind, cache = aio

    async def main():
        with pytest.raises(ZeroDivisionError):
            async with dropin.RedLock(cache, "key", lease=5):
                1 / 0
        if kind != "memory":
            assert not await cache.exists("key-lock")
        await cache.close()

    asyncio.run(main())


def test_optimistic_lock_writes_through_the_serializer(aio):
    kind, cache = aio

    async def main():
        await cache.set("key", {"n": 1})
        async with dropin.OptimisticLock(cache, "key") as lock:
            assert await lock.cas({"n": 2}) is True
        assert await cache.get("key") == {"n": 2}, "aiocache reads the cas value back"
        async with dropin.OptimisticLock(cache, "key") as lock:
            await cache.set("key", {"n": "other"})
            with pytest.raises(aiocache.lock.OptimisticLockError) as e:
                await lock.cas({"n": 3})
        assert isinstance(e.value, dropin.OptimisticLockError)
        assert isinstance(e.value, aiolock_rs.OptimisticLockError)
        assert await cache.get("key") == {"n": "other"}
        # cas on a key absent at begin, with a TTL.
        async with dropin.OptimisticLock(cache, "fresh") as lock:
            await lock.cas([1, 2], ttl=1)
        assert await cache.get("fresh") == [1, 2]
        start = time.monotonic()
        await wait_for(lambda: _gone(cache, "fresh"), what="the TTL")
        assert time.monotonic() - start < 5
        await cache.close()

    asyncio.run(main())


async def _gone(cache, key):
    return await cache.get(key) is None


def test_key_builder_db_and_url(redis_server):
    async def main():
        def builder(key, namespace=None):
            return f"{key}@{namespace or 'app'}"

        cache = aiocache.RedisCache(
            endpoint="127.0.0.1", port=redis_server.port, db=3, namespace="app", key_builder=builder
        )
        async with dropin.RedLock(cache, "key", lease=10) as lock:
            assert lock.acquired
            assert cache.build_key("key-lock") == "key-lock@app"
            db3 = redis_server.client.__class__(unix_socket_path=redis_server.socket, db=3)
            assert db3.exists("key-lock@app"), "aiocache's key, in aiocache's db"
            assert not redis_server.client.exists("key-lock@app")
        assert not db3.exists("key-lock@app")
        await cache.close()

    asyncio.run(main())
    pw = aiocache.RedisCache(endpoint="::1", port=7000, db=2, password="p/w")
    assert dropin.url_of(pw) == "redis://:p%2Fw@[::1]:7000/2"
    mc = aiocache.MemcachedCache(endpoint="10.0.0.1", port=11212)
    assert dropin.url_of(mc) == "memcached://10.0.0.1:11212"
    with pytest.raises(TypeError, match="RedisCache, MemcachedCache or SimpleMemoryCache"):
        dropin.RedLock(object(), "k", 1)


def test_same_code_against_aiocache_and_the_dropin_across_processes(redis_server, ns, tmp_path):
    """One process holds the lock and computes; another misses the same key. With
    aiocache 0.12.3 the second does not wait (its event table is per process) and
    computes too; with the drop-in it waits for the release and reads the value."""
    computed = {}
    for module in ("aiocache.lock", "aiolock_rs.aiocache"):
        prefix = f"{ns}{module.split('.')[0]}"
        log = tmp_path / module
        log.touch()
        holder = child("dropin", module, redis_server.port, prefix, "holder", log)
        caller = None
        try:
            assert line(holder) == "holding"
            caller = child("dropin", module, redis_server.port, prefix, "caller", log)
            lock_key = f"{prefix}:report-lock".encode()
            # Either the caller waits (a subscriber on the lock's channel) or it went
            # through (it prints "done" and exits) while the holder still holds.
            poll_until = time.monotonic() + 20
            while redis_server.subscribers(lock_key) == 0 and caller.poll() is None:
                assert time.monotonic() < poll_until, "the caller neither waited nor finished"
                time.sleep(0.002)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            done = [line(holder), line(caller)]
            assert holder.wait(timeout=20) == 0 and caller.wait(timeout=20) == 0
        finally:
            holder.kill()
            if caller:
                caller.kill()
        computed[module] = log.read_text().split()
        assert all(d.startswith("done") for d in done)
    assert computed == {"aiocache.lock": ["holder", "caller"], "aiolock_rs.aiocache": ["holder"]}
