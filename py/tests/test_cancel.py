"""Cancelling the asyncio task that awaits an acquisition leaves no lock key and no
subscription behind; a guard Python drops releases its lock."""

import asyncio
import gc

import pytest

from aiolock_rs import Cache, RedLock
from helpers import wait_for


def test_cancelled_wait_leaves_no_subscription_and_no_key(redis_server, ns):
    async def main():
        cache = await Cache.from_url(redis_server.url, namespace=ns)
        lock_key = f"{ns}key-lock".encode()
        holder = await RedLock(cache, "key", lease=30).acquire()
        for exclusive in (False, True):
            if exclusive:
                task = asyncio.ensure_future(cache.lock("key", 30).acquire())
            else:
                task = asyncio.ensure_future(RedLock(cache, "key", lease=30).acquire())
            await wait_for(
                lambda: cache.waiting("key") == 1 and redis_server.subscribers(lock_key) == 1,
                what="the waiter to subscribe",
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(
                lambda: cache.waiting("key") == 0 and redis_server.subscribers(lock_key) == 0,
                what="the subscription to end",
            )
        assert await holder.release() is True
        assert not redis_server.client.exists(lock_key)

    asyncio.run(main())


def test_cancel_racing_the_release_leaves_no_key(redis_server, ns):
    """The waiter is cancelled right when the holder releases: it may have won the key
    (its guard then reaches no one and is dropped) or not; either way the key goes."""

    async def main():
        cache = await Cache.from_url(redis_server.url, namespace=ns)
        lock_key = f"{ns}key-lock".encode()
        for _ in range(30):
            holder = await cache.lock("key", 30).acquire()
            task = asyncio.ensure_future(cache.lock("key", 30).acquire())
            await wait_for(lambda: cache.waiting("key") == 1, what="the waiter")
            release = asyncio.ensure_future(holder.release())
            await asyncio.sleep(0)
            task.cancel()
            await release
            await asyncio.gather(task, return_exceptions=True)
            del task
            gc.collect()
            await wait_for(lambda: not redis_server.client.exists(lock_key), what="no lock key")
            await wait_for(lambda: redis_server.subscribers(lock_key) == 0, what="no subscription")

    asyncio.run(main())


def test_a_dropped_guard_releases(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        guard = await cache.lock("key", 30).acquire()
        assert await cache.exists("key-lock")
        del guard
        gc.collect()
        await wait_for(lambda: _absent(cache), what="the dropped guard's release")

    asyncio.run(main())


async def _absent(cache):
    return not await cache.exists("key-lock")
