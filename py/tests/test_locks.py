"""aiocache's acceptance semantics for both locks (its tests/acceptance/test_lock.py,
re-stated), on memory, Redis and memcached, through the asyncio API; then the cache
operations and the errors."""

import asyncio
import math
import time

import pytest

import aiolock_rs
from aiolock_rs import Cache, OptimisticLock, OptimisticLockError, Outcome, RedLock
from helpers import wait_for


def run(coro):
    return asyncio.run(coro)


async def open_cache(url, ns):
    return await Cache.from_url(url, namespace=ns)


# --- RedLock ------------------------------------------------------------------------


def test_acquire_sets_the_lock_key_and_release_removes_it(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        lock = RedLock(cache, "key", lease=5)
        async with lock:
            assert lock.outcome is Outcome.ACQUIRED and lock.acquired
            assert await cache.exists("key-lock")
            assert 0 < lock.lease_remaining <= 5
        assert lock.removed is True
        assert not await cache.exists("key-lock")

    run(main())


def test_four_concurrent_callers_compute_once(backend, ns):
    """aiocache's test_locking_dogpile: one `set` for four callers. The holder
    computes only once the three others wait (polled, not slept)."""

    async def main():
        cache = await open_cache(backend[1], ns)
        sets = []

        async def caller():
            async with RedLock(cache, "key", lease=10) as lock:
                if await cache.get("key") is None:
                    await wait_for(lambda: cache.waiting("key") == 3, what="3 waiters")
                    sets.append(1)
                    await cache.set("key", b"value")
                return lock.outcome

        outcomes = await asyncio.gather(*(caller() for _ in range(4)))
        assert len(sets) == 1
        assert sorted(o.value for o in outcomes) == ["acquired"] + ["released"] * 3
        assert await cache.get("key") == b"value"

    run(main())


def test_lease_expiry_lets_waiters_go_on(backend, ns):
    """aiocache's test_locking_dogpile_lease_expiration: a holder that outlives its
    lease does not hold the others up longer than the lease. aiolock re-elects one
    waiter when the lease ends (the waiter below waits long enough to see it); one
    that waits only its default bound (the lease) goes on by then either way."""

    async def main():
        cache = await open_cache(backend[1], ns)
        lease = 0.5
        # memcached stores whole seconds, a lease is a floor: ceil(0.5 + 0.25) + 2 s.
        key_life = 3.0 if backend[0] == "memcached" else lease
        holder = await RedLock(cache, "key", lease=lease).acquire()
        assert holder.acquired
        start = time.monotonic()
        quick = asyncio.ensure_future(RedLock(cache, "key", lease=lease).acquire())
        patient = RedLock(cache, "key", lease=lease, wait=key_life + 3)
        async with patient:
            waited = time.monotonic() - start
            assert patient.outcome is Outcome.ACQUIRED, "re-elected at the lease end"
        assert lease * 0.9 <= waited < key_life + 1.0
        quick = await quick
        assert not quick.acquired or quick.outcome is Outcome.ACQUIRED
        # The first holder's lease ended and another caller held the key since: its
        # release removes nothing.
        assert await holder.release() is False

    run(main())


def test_exceptions_propagate_and_the_lock_is_released(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        with pytest.raises(ZeroDivisionError):
            async with RedLock(cache, "key", lease=5):
                1 / 0
        assert not await cache.exists("key-lock")

    run(main())


def test_a_wrong_token_releases_nothing(backend, ns):
    """aiocache's test_release_wrong_token: the lock of another holder stays. Here:
    a waiter that timed out (no token) and a holder whose lease ended (an old token)
    both leave the current holder's lock alone."""

    async def main():
        cache = await open_cache(backend[1], ns)
        holder = RedLock(cache, "key", lease=10)
        async with holder:
            other = RedLock(cache, "key", lease=10, wait=0)
            async with other:
                assert other.outcome is Outcome.TIMED_OUT
            assert other.removed is None
            assert await cache.exists("key-lock"), "the timed-out caller released nothing"
            assert holder.acquired
        if backend[0] == "memcached":
            return  # lease ends below are whole seconds there: covered by Rust's suite
        old = await RedLock(cache, "k2", lease=0.2).acquire()
        new = None

        async def take():
            nonlocal new
            new = await cache.lock("k2", 5).try_acquire()
            return new is not None

        await wait_for(take, what="the lease to end")
        assert await old.release() is False
        assert await cache.exists("k2-lock"), "the new holder's lock stays"

    run(main())


def test_float_lease(backend, ns):
    """aiocache's test_float_lease: a lease of 0.3 s ends by itself."""

    async def main():
        cache = await open_cache(backend[1], ns)
        guard = await RedLock(cache, "key", lease=0.3).acquire()
        start = time.monotonic()
        await wait_for(lambda: cache.lock("key", 5).try_acquire(), what="the lease to end")
        ended = time.monotonic() - start
        # memcached stores whole seconds (a lease is a floor): ceil(0.3 + 0.25) + 2.
        assert 0.25 <= ended < (4.0 if backend[0] == "memcached" else 1.0)
        del guard

    run(main())


def test_waiter_gets_released_and_reads_the_value(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        holder = await RedLock(cache, "key", lease=10).acquire()
        waiter = asyncio.ensure_future(RedLock(cache, "key", lease=10).acquire())
        await wait_for(lambda: cache.waiting("key") == 1, what="the waiter")
        await cache.set("key", b"v")
        assert await holder.release() is True
        guard = await waiter
        assert guard.outcome is Outcome.RELEASED and not guard.acquired
        assert guard.token is None and guard.lease_remaining is None
        assert await guard.release() is False

    run(main())


# --- OptimisticLock -----------------------------------------------------------------


def test_cas_writes_when_unchanged(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        await cache.set("key", b"1")
        async with OptimisticLock(cache, "key") as lock:
            assert lock.value == b"1"
            assert await lock.cas(b"2") is True
        assert await cache.get("key") == b"2"

    run(main())


def test_cas_conflict_raises_and_writes_nothing(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        await cache.set("key", b"1")
        async with OptimisticLock(cache, "key") as lock:
            await cache.set("key", b"other")
            with pytest.raises(OptimisticLockError):
                await lock.cas(b"mine")
        assert await cache.get("key") == b"other"
        assert issubclass(OptimisticLockError, aiolock_rs.AiolockError)

    run(main())


def test_cas_on_a_key_absent_at_begin(backend, ns):
    """aiocache's test_check_and_set_not_existing_never_fails; and aiolock's rule
    that an absent key must still be absent."""

    async def main():
        cache = await open_cache(backend[1], ns)
        async with cache.optimistic_lock("key") as lock:
            assert lock.value is None
            await lock.cas("first")
        assert await cache.get("key") == b"first"
        async with cache.optimistic_lock("k2") as lock:
            await cache.set("k2", b"created meanwhile")
            with pytest.raises(OptimisticLockError):
                await lock.cas("late")
        assert await cache.get("k2") == b"created meanwhile"

    run(main())


def test_cas_with_a_ttl(backend, ns):
    """aiocache's test_check_and_set_with_int_ttl: the value written by cas expires."""

    async def main():
        cache = await open_cache(backend[1], ns)
        await cache.set("key", b"1")
        async with OptimisticLock(cache, "key") as lock:
            await lock.cas(b"2", ttl=1)
        assert await cache.get("key") == b"2"
        start = time.monotonic()
        await wait_for(lambda: _absent(cache, "key"), what="the TTL to end")
        # memcached: whole seconds on the server, and aiolock sends a TTL as a floor.
        assert 0.5 <= time.monotonic() - start < (5.0 if backend[0] == "memcached" else 2.0)

    run(main())


async def _absent(cache, key):
    return await cache.get(key) is None


def test_second_cas_is_refused(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        async with OptimisticLock(cache, "key") as lock:
            await lock.cas(b"1")
            with pytest.raises(OptimisticLockError):
                await lock.cas(b"2")
        assert await cache.get("key") == b"1"

    run(main())


# --- the cache ----------------------------------------------------------------------


def test_cache_operations(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        assert cache.namespace == ns.encode() and cache.backend == backend[0]
        assert await cache.get("k") is None
        assert await cache.ttl("k") is None
        await cache.set("k", "text")
        assert await cache.get(b"k") == b"text"
        assert await cache.ttl("k") == math.inf
        assert await cache.add("k", b"x") is False
        assert await cache.add("k2", b"x", ttl=30) is True
        # memcached: aiolock stores whole seconds, rounded up as a floor (plus 3 s).
        assert 25 < await cache.ttl("k2") <= (33 if backend[0] == "memcached" else 30)
        assert await cache.exists("k2")
        assert await cache.delete("k2") is True
        assert await cache.delete("k2") is False
        assert not await cache.exists("k2")
        if backend[0] != "memory":  # each memory:// cache has a store of its own
            other = await Cache.from_url(backend[1])
            assert await other.get(ns + "k") == b"text", "the namespace prefixes the key"

    run(main())


def test_errors_are_typed_and_one_line(backend, ns):
    async def main():
        cache = await open_cache(backend[1], ns)
        with pytest.raises(aiolock_rs.InvalidArgumentError) as e:
            await cache.set("k", b"v", ttl=-1)
        assert isinstance(e.value, ValueError)
        with pytest.raises(aiolock_rs.InvalidArgumentError):
            await RedLock(cache, "k", lease=0).acquire()
        with pytest.raises(aiolock_rs.InvalidKeyError):
            await RedLock(cache, "", lease=1).acquire()
        if backend[0] == "memcached":
            with pytest.raises(aiolock_rs.InvalidKeyError):
                await cache.get("has space")
        with pytest.raises(TypeError):
            await cache.get(42)

    run(main())


def test_url_errors():
    async def main():
        with pytest.raises(aiolock_rs.InvalidArgumentError) as e:
            await Cache.from_url("nosuch://user:secret@host")
        assert "secret" not in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(aiolock_rs.InvalidArgumentError) as e:
            await Cache.from_url("redis://127.0.0.1?respone_timeout=1")
        assert "respone_timeout" in str(e.value)
        with pytest.raises(aiolock_rs.BackendConnectionError) as e:
            await Cache.from_url("redis://:pw@127.0.0.1:1", connect_timeout=0.5)
        assert isinstance(e.value, ConnectionError) and "pw" not in str(e.value)

    run(main())


def test_exception_per_error_kind():
    kinds = {
        "InvalidArgumentError": ValueError,
        "InvalidKeyError": ValueError,
        "OptimisticLockError": Exception,
        "BackendTimeoutError": TimeoutError,
        "BackendConnectionError": ConnectionError,
        "ProtocolError": Exception,
        "BackendError": Exception,
        "UnsupportedError": Exception,
        "LockLostError": Exception,
    }
    for name, base in kinds.items():
        cls = getattr(aiolock_rs, name)
        assert issubclass(cls, aiolock_rs.AiolockError) and issubclass(cls, base)
        assert cls.__doc__


def test_docstring_examples():
    """The examples in the modules' docstrings run."""
    import doctest

    import aiolock_rs.sync

    for module in (aiolock_rs, aiolock_rs.sync):
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__
