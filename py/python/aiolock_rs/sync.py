"""The synchronous API: the names of :mod:`aiolock_rs`, blocking the calling thread.

For threads (WSGI workers, scripts), not for asyncio code (it would block the event
loop: use :mod:`aiolock_rs` there). Every call that can block releases the GIL. A
wait runs in slices of :data:`aiolock_rs.SYNC_WAIT_SLICE` seconds between which
signals are handled, so Ctrl-C interrupts a wait with ``KeyboardInterrupt`` (nothing
is held then).

>>> from aiolock_rs.sync import Cache, RedLock
>>> cache = Cache.from_url("memory://")
>>> with RedLock(cache, "report", lease=5) as lock:
...     if lock.acquired:
...         cache.set("report", b"computed")
>>> cache.get("report")
b'computed'
"""

from typing import Optional

from ._common import Key, Value, _ExclusiveBase, _OptimisticBase, _RedLockBase
from ._native import SyncCache as Cache
from ._native import SyncLockGuard as LockGuard
from ._types import *  # noqa: F401,F403  (the same exceptions)
from ._types import __all__ as _errors

__all__ = ["Cache", "LockGuard", "RedLock", "ExclusiveLock", "OptimisticLock", *_errors]


class RedLock(_RedLockBase):
    """aiocache's ``RedLock``, synchronous: ``with RedLock(cache, key, lease) as
    lock`` enters in every case; :attr:`outcome` says what happened (see
    :class:`aiolock_rs.RedLock`)."""

    __slots__ = ()

    def acquire(self) -> LockGuard:
        """Acquires without ``with``: the guard (any outcome)."""
        return self.cache._acquire(*self._args())

    def __enter__(self) -> "RedLock":
        self.removed = None
        self._guard = self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        guard = self._guard
        if guard is not None and guard.acquired:
            self.removed = guard.release()

    def extend(self, lease: float) -> None:
        """Renews the lease (owner-checked); :class:`LockLostError` when lost."""
        self._entered().extend(lease)


class ExclusiveLock(_ExclusiveBase):
    """The exclusive lock, synchronous (see :class:`aiolock_rs.ExclusiveLock`)."""

    __slots__ = ()

    def acquire(self) -> Optional[LockGuard]:
        """The guard holding the lock, or ``None`` when the bound passed."""
        return self.cache._acquire(*self._args(self.wait))

    def try_acquire(self) -> Optional[LockGuard]:
        """Claims once, never waiting: the guard, or ``None`` when held."""
        return self.cache._acquire(*self._args(0.0))

    def __enter__(self) -> LockGuard:
        guard = self.acquire()
        if guard is None:
            raise self._not_acquired()
        self._guard = guard
        return guard

    def __exit__(self, *exc: object) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.release()


class OptimisticLock(_OptimisticBase):
    """aiocache's ``OptimisticLock``, synchronous: ``with OptimisticLock(cache, key)
    as lock: lock.cas(value)``."""

    __slots__ = ()

    def __enter__(self) -> "OptimisticLock":
        self._state = self.cache._begin(self.key)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def cas(self, value: Value, ttl: Optional[float] = None) -> bool:
        """Writes ``value`` if the key is unchanged; ``True``, else raises
        :class:`OptimisticLockError`."""
        if self._state is None:
            raise RuntimeError("the optimistic lock was not entered")
        self._state.cas(value, ttl)
        return True
