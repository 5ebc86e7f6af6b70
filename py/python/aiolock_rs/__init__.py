"""aiolock_rs: aiocache's two locks on a Rust core, with waits across processes.

- :class:`RedLock` protects against cache stampedes: the first caller takes the lock
  and computes; every other caller, **in any process**, waits for the release (then
  reads the cache), at most until the holder's lease ends or its own bound passes.
- :class:`OptimisticLock` reads a key; ``cas`` writes only if nobody changed it
  meanwhile, else :class:`OptimisticLockError`.
- :meth:`Cache.lock` is an exclusive lock (a mutex with a lease): it waits until it
  holds the key or its bound passes; fencing tokens, ``extend`` and a watchdog.

This module is the asyncio API; :mod:`aiolock_rs.sync` has the same names,
synchronous (for threads); :mod:`aiolock_rs.aiocache` is a drop-in for
``aiocache.lock`` that takes aiocache's cache objects.

>>> import asyncio, aiolock_rs
>>> async def main():
...     cache = await aiolock_rs.Cache.from_url("memory://?namespace=app:")
...     async with aiolock_rs.RedLock(cache, "report", lease=5) as lock:
...         if lock.acquired and await cache.get("report") is None:
...             await cache.set("report", b"computed", ttl=60)
...     return await cache.get("report")
>>> asyncio.run(main())
b'computed'
"""

from typing import Optional

from ._common import Key, Value, _ExclusiveBase, _OptimisticBase, _RedLockBase
from ._native import SYNC_WAIT_SLICE, Cache, LockGuard, __version__
from ._types import (
    AiolockError,
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    InvalidArgumentError,
    InvalidKeyError,
    LockLostError,
    NotAcquiredError,
    OptimisticLockError,
    Outcome,
    ProtocolError,
    UnsupportedError,
)

__all__ = [
    "Cache",
    "LockGuard",
    "RedLock",
    "ExclusiveLock",
    "OptimisticLock",
    "Outcome",
    "AiolockError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "OptimisticLockError",
    "BackendTimeoutError",
    "BackendConnectionError",
    "ProtocolError",
    "BackendError",
    "UnsupportedError",
    "LockLostError",
    "NotAcquiredError",
    "SYNC_WAIT_SLICE",
    "__version__",
]


class RedLock(_RedLockBase):
    """aiocache's ``RedLock(cache, key, lease)``: ``async with`` enters in every case.

    Inside the block, :attr:`outcome` says what happened: ``ACQUIRED`` (compute and
    store), ``RELEASED`` (the holder, in this or another process, finished: read the
    cache) or ``TIMED_OUT`` (the wait bound passed: go on without the lock, as
    aiocache does). On exit the lock is released if held (owner-checked), also when
    the block raises; :attr:`removed` then says whether the lease was still ours.

    ``wait`` bounds the wait (default: the lease); ``fenced=True`` gives each
    acquisition a growing :attr:`fence`; ``watchdog=True`` renews the lease while
    held (a third of the lease after each renewal), and :meth:`check` raises
    :class:`LockLostError` once a renewal failed. The lock key is
    ``namespace + key + "-lock"``, as in aiocache.

    .. code-block:: python

        async with RedLock(cache, "report", lease=5) as lock:
            value = await cache.get("report")
            if value is None:
                value = await compute()
                await cache.set("report", value, ttl=60)

    Cancelling the task while it waits leaves no lock key and no subscription behind.
    """

    __slots__ = ()

    async def acquire(self) -> LockGuard:
        """Acquires without ``async with``: the guard (any outcome); release it
        with ``await guard.release()``."""
        return await self.cache._acquire(*self._args())

    async def __aenter__(self) -> "RedLock":
        self.removed = None
        self._guard = await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        guard = self._guard
        if guard is not None and guard.acquired:
            self.removed = await guard.release()

    async def extend(self, lease: float) -> None:
        """Renews the lease (owner-checked): it now ends ``lease`` seconds from now.
        Raises :class:`LockLostError` when the lock is no longer ours."""
        await self._entered().extend(lease)


class ExclusiveLock(_ExclusiveBase):
    """An exclusive lock with a lease (``cache.lock(key, lease, wait=...)``).

    :meth:`acquire` waits through other holders' releases and lease ends until this
    caller holds the key (a :class:`LockGuard`) or ``wait`` seconds (default: the
    lease) passed (``None``); :meth:`try_acquire` claims once. ``async with`` enters
    only holding the lock (else :class:`NotAcquiredError`) and releases on exit.

    A lease cannot stop a holder that paused past it (GC, ``SIGSTOP``) from writing
    after the next holder started: with ``fenced=True`` each acquisition has a
    :attr:`LockGuard.fence` that grows, for the storage to refuse older ones.
    ``watchdog=True`` renews the lease in the background while held: call
    ``guard.check()`` between steps of long work, it raises :class:`LockLostError`
    once a renewal failed or found the lock another caller's (no I/O).

    .. code-block:: python

        async with cache.lock("account:42", lease=30, wait=10, fenced=True) as guard:
            await storage.write(data, fence=guard.fence)
    """

    __slots__ = ()

    async def acquire(self) -> Optional[LockGuard]:
        """The guard holding the lock, or ``None`` when the bound passed."""
        return await self.cache._acquire(*self._args(self.wait))

    async def try_acquire(self) -> Optional[LockGuard]:
        """Claims once, never waiting: the guard, or ``None`` when held."""
        return await self.cache._acquire(*self._args(0.0))

    async def __aenter__(self) -> LockGuard:
        guard = await self.acquire()
        if guard is None:
            raise self._not_acquired()
        self._guard = guard
        return guard

    async def __aexit__(self, *exc: object) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.release()


class OptimisticLock(_OptimisticBase):
    """aiocache's ``OptimisticLock(cache, key)``: ``async with ... as lock`` reads the
    key; ``await lock.cas(value, ttl=None)`` writes only if nobody changed it since,
    else raises :class:`OptimisticLockError` (nothing written).

    .. code-block:: python

        async with OptimisticLock(cache, "counter") as lock:
            n = int(lock.value or b"0")
            await lock.cas(str(n + 1))

    A key absent on entry must still be absent. On Redis the token is the value
    itself: a write of the same bytes in between is not seen (ABA).
    """

    __slots__ = ()

    async def __aenter__(self) -> "OptimisticLock":
        self._state = await self.cache._begin(self.key)
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def cas(self, value: Value, ttl: Optional[float] = None) -> bool:
        """Writes ``value`` (expiring after ``ttl`` seconds) if the key is unchanged;
        returns ``True``, else raises :class:`OptimisticLockError`."""
        if self._state is None:
            raise RuntimeError("the optimistic lock was not entered")
        await self._state.cas(value, ttl)
        return True
