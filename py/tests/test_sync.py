"""The synchronous API (aiolock_rs.sync): the same semantics over the blocking flavor,
with the GIL released while a call blocks."""

import threading
import time

import pytest

from aiolock_rs import sync
from aiolock_rs.sync import Cache, OptimisticLock, OptimisticLockError, Outcome, RedLock
from helpers import poll


def test_four_threads_compute_once(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    sets, outcomes = [], []

    def caller():
        with RedLock(cache, "key", lease=10) as lock:
            if cache.get("key") is None:
                # The other three wait meanwhile: this thread runs Python, so their
                # waits released the GIL.
                poll(lambda: cache.waiting("key") == 3, what="3 waiters")
                sets.append(1)
                cache.set("key", b"value")
            outcomes.append(lock.outcome)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sets) == 1
    assert sorted(o.value for o in outcomes) == ["acquired"] + ["released"] * 3


def test_the_gil_is_released_while_a_call_waits(backend, ns):
    """A waiter blocked for up to 30 s in one thread; this thread keeps running
    Python code (counting) and releases the holder."""
    cache = Cache.from_url(backend[1], namespace=ns)
    holder = cache.redlock("key", 30).acquire()
    result = []
    waiter = threading.Thread(target=lambda: result.append(cache.redlock("key", 30).acquire()))
    waiter.start()
    ticks = 0
    while cache.waiting("key") < 1:
        ticks += 1
    start = time.monotonic()
    while time.monotonic() - start < 0.05:  # Python runs beside the waiting thread
        ticks += 1
    assert ticks > 1000
    assert holder.release() is True
    waiter.join(timeout=10)
    assert result[0].outcome is Outcome.RELEASED


def test_exceptions_propagate_and_release(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    with pytest.raises(KeyError):
        with RedLock(cache, "key", lease=5) as lock:
            assert lock.acquired
            raise KeyError("x")
    assert not cache.exists("key-lock")
    assert lock.removed is True


def test_optimistic_lock(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    cache.set("key", b"1")
    with OptimisticLock(cache, "key") as lock:
        assert lock.value == b"1"
        assert lock.cas(b"2", ttl=30)
    assert cache.get("key") == b"2"
    with OptimisticLock(cache, "key") as lock:
        cache.set("key", b"other")
        with pytest.raises(OptimisticLockError):
            lock.cas(b"mine")
    assert cache.get("key") == b"other"


def test_exclusive_lock(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    with cache.lock("job", 30, fenced=True) as guard:
        assert guard.acquired and guard.exclusive
        first = guard.fence
        assert cache.lock("job", 30).try_acquire() is None
        with pytest.raises(sync.NotAcquiredError):
            with cache.lock("job", 30, wait=0.05):
                raise AssertionError("must not run")
    with cache.lock("job", 30, fenced=True) as guard:
        assert guard.fence > first
    assert not cache.exists("job-lock")


def test_sync_cache_operations(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    assert cache.get("k") is None
    cache.set("k", "v", ttl=30)
    assert cache.get("k") == b"v"
    assert cache.add("k", b"x") is False
    assert cache.exists("k") and 0 < cache.ttl("k") <= 33
    assert cache.delete("k") is True and cache.ttl("k") is None
    with pytest.raises(sync.InvalidArgumentError):
        cache.set("k", b"v", ttl=float("nan"))


def test_sync_watchdog(backend, ns):
    cache = Cache.from_url(backend[1], namespace=ns)
    with cache.lock("job", 1.0, watchdog=True) as guard:
        time.sleep(2.5)  # past the lease (not ordering): renewed meanwhile
        guard.check()
        assert cache.lock("job", 1.0).try_acquire() is None
        assert cache.delete("job-lock")
        thief = cache.lock("job", 30).acquire()
        poll(lambda: guard.lost, what="the loss")
        with pytest.raises(sync.LockLostError):
            guard.check()
    assert cache.exists("job-lock"), "the thief's lock stays"
    del thief
