"""The exclusive lock (asyncio API): waits until it holds the key or its bound
passes; try form; fences; extend; lease_remaining."""

import asyncio

import pytest

import aiolock_rs
from aiolock_rs import Cache
from helpers import wait_for


def test_exclusive_waits_through_a_release(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        holder = await cache.lock("job", 30).acquire()
        assert holder is not None and holder.exclusive
        assert await cache.lock("job", 30).try_acquire() is None
        assert await cache.lock("job", 30, wait=0.05).acquire() is None
        waiter = asyncio.ensure_future(cache.lock("job", 30).acquire())
        await wait_for(lambda: cache.waiting("job") == 1, what="the waiter")
        assert await holder.release() is True
        guard = await waiter
        assert guard is not None and guard.acquired, "exclusive: it holds the lock, not RELEASED"
        assert await guard.release() is True

    asyncio.run(main())


def test_async_with_enters_only_holding(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        async with cache.lock("job", 30) as guard:
            assert guard.acquired
            with pytest.raises(aiolock_rs.NotAcquiredError) as e:
                async with cache.lock("job", 30, wait=0.05):
                    raise AssertionError("must not run")
            assert isinstance(e.value, TimeoutError)
        assert not await cache.exists("job-lock")

    asyncio.run(main())


def test_fences_grow(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        fences = []
        for _ in range(3):
            async with cache.lock("job", 30, fenced=True) as guard:
                fences.append(guard.fence)
        assert all(isinstance(f, int) for f in fences)
        assert fences == sorted(set(fences))
        plain = await cache.lock("other", 30).acquire()
        assert plain.fence is None

    asyncio.run(main())


def test_extend_and_lease_remaining(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        guard = await cache.lock("job", 2).acquire()
        assert 0 < guard.lease_remaining <= 2
        await guard.extend(60)
        assert 50 < guard.lease_remaining <= 60
        assert await guard.release() is True
        assert guard.lease_remaining is None
        with pytest.raises(aiolock_rs.LockLostError):
            await guard.extend(5)

    asyncio.run(main())


def test_watchdog_keeps_the_lock_and_reports_its_loss(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        lease = 1.0
        guard = await cache.lock("job", lease, watchdog=True).acquire()
        unwatched = await cache.lock("plain", lease).acquire()
        # Waiting past real leases (not ordering anything): renewed meanwhile.
        await asyncio.sleep(lease * 2.5)
        guard.check()
        assert not guard.lost and guard.lease_remaining > 0
        assert await cache.lock("job", lease).try_acquire() is None, "still held"
        assert not unwatched.lost
        unwatched.check()  # no watchdog: nothing to report
        # Another caller takes the key from under it: the next renewal finds it.
        assert await cache.delete("job-lock")
        thief = await cache.lock("job", 30).acquire()
        assert thief is not None
        await wait_for(lambda: guard.lost, what="the loss to be reported")
        with pytest.raises(aiolock_rs.LockLostError):
            guard.check()
        assert await guard.release() is False, "the thief's lock stays"
        assert await cache.exists("job-lock")

    asyncio.run(main())


def test_redlock_watchdog(backend, ns):
    async def main():
        cache = await Cache.from_url(backend[1], namespace=ns)
        async with aiolock_rs.RedLock(cache, "report", lease=1.0, watchdog=True) as lock:
            assert lock.acquired
            await asyncio.sleep(2.5)  # past the lease: renewed
            lock.check()
            assert await cache.lock("report", 1).try_acquire() is None
        assert lock.removed is True

    asyncio.run(main())
