"""Type stubs of the extension module (the Rust side of aiolock_rs)."""

from typing import Awaitable, Optional, Union

from . import ExclusiveLock, OptimisticLock, RedLock
from . import sync as _sync
from ._types import Outcome

Key = Union[str, bytes]
Value = Union[str, bytes]

__version__: str
#: Seconds between two checks for signals during a synchronous wait.
SYNC_WAIT_SLICE: float

class Cache:
    """A cache (memory, Redis or memcached, chosen by URL) with a namespace; every
    method that talks to the backend returns an awaitable.

    >>> cache = await Cache.from_url("redis://127.0.0.1:6379/0?namespace=app:")
    >>> await cache.set("k", b"v", ttl=60)
    >>> await cache.get("k")
    b'v'
    """

    @staticmethod
    def from_url(
        url: str,
        *,
        namespace: Optional[Key] = None,
        lock_suffix: Optional[Key] = None,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
        pool_size: Optional[int] = None,
    ) -> Awaitable["Cache"]:
        """Opens ``memory://``, ``redis://[user:password@]host[:port][/db]``,
        ``rediss://…``, ``redis+unix:///path.sock``, ``memcached://host[:port]`` or
        ``memcached+unix:///path.sock`` (query options as in Rust: ``namespace``,
        ``lock_suffix``, ``connect_timeout``, ``response_timeout``, ``pool_size``, …);
        keyword options win over the URL's."""
    @staticmethod
    def memory() -> "Cache":
        """A new, empty in-process cache."""
    @property
    def namespace(self) -> bytes: ...
    @property
    def lock_suffix(self) -> bytes: ...
    @property
    def backend(self) -> str:
        """``"memory"``, ``"redis"`` or ``"memcached"``."""
    def with_lock_suffix(self, suffix: Key) -> "Cache": ...
    def waiting(self, key: Key) -> int:
        """How many callers of this cache wait for the lock on ``key`` now."""
    def flush(self) -> Awaitable[None]:
        """Waits for the releases this cache runs in the background."""
    def get(self, key: Key) -> Awaitable[Optional[bytes]]: ...
    def set(self, key: Key, value: Value, ttl: Optional[float] = None) -> Awaitable[None]: ...
    def add(self, key: Key, value: Value, ttl: Optional[float] = None) -> Awaitable[bool]: ...
    def delete(self, key: Key) -> Awaitable[bool]: ...
    def exists(self, key: Key) -> Awaitable[bool]: ...
    def ttl(self, key: Key) -> Awaitable[Optional[float]]:
        """Seconds left; ``None`` when missing, ``math.inf`` when it never expires."""
    def redlock(self, key: Key, lease: float, *, wait: Optional[float] = None, fenced: bool = False, watchdog: bool = False) -> RedLock: ...
    def lock(
        self,
        key: Key,
        lease: float,
        *,
        wait: Optional[float] = None,
        fenced: bool = False,
        watchdog: bool = False,
    ) -> ExclusiveLock: ...
    def optimistic_lock(self, key: Key) -> OptimisticLock: ...
    def _acquire(
        self,
        key: Key,
        lease: float,
        wait: Optional[float] = None,
        fenced: bool = False,
        exclusive: bool = False,
        watchdog: bool = False,
    ) -> Awaitable[Optional["LockGuard"]]: ...
    def _begin(self, key: Key) -> Awaitable["OptimisticLockState"]: ...

class LockGuard:
    """How an acquisition ended and, while it holds the lock, its handle."""

    @property
    def outcome(self) -> Outcome: ...
    @property
    def acquired(self) -> bool: ...
    @property
    def exclusive(self) -> bool: ...
    @property
    def token(self) -> Optional[str]: ...
    @property
    def fence(self) -> Optional[int]: ...
    @property
    def lease_remaining(self) -> Optional[float]: ...
    @property
    def lost(self) -> bool:
        """With ``watchdog=True``: whether the watchdog found the lock lost."""
    def check(self) -> None:
        """With ``watchdog=True``: raises ``LockLostError`` once the lock is lost."""
    def extend(self, lease: float) -> Awaitable[None]: ...
    def release(self) -> Awaitable[bool]: ...

class OptimisticLockState:
    @property
    def value(self) -> Optional[bytes]: ...
    def cas(self, value: Value, ttl: Optional[float] = None) -> Awaitable[None]: ...

class SyncCache:
    """``aiolock_rs.sync.Cache``: the same methods, blocking (the GIL released)."""

    @staticmethod
    def from_url(
        url: str,
        *,
        namespace: Optional[Key] = None,
        lock_suffix: Optional[Key] = None,
        connect_timeout: Optional[float] = None,
        response_timeout: Optional[float] = None,
        pool_size: Optional[int] = None,
    ) -> "SyncCache": ...
    @staticmethod
    def memory() -> "SyncCache": ...
    @property
    def namespace(self) -> bytes: ...
    @property
    def lock_suffix(self) -> bytes: ...
    @property
    def backend(self) -> str: ...
    def with_lock_suffix(self, suffix: Key) -> "SyncCache": ...
    def waiting(self, key: Key) -> int: ...
    def flush(self) -> None: ...
    def get(self, key: Key) -> Optional[bytes]: ...
    def set(self, key: Key, value: Value, ttl: Optional[float] = None) -> None: ...
    def add(self, key: Key, value: Value, ttl: Optional[float] = None) -> bool: ...
    def delete(self, key: Key) -> bool: ...
    def exists(self, key: Key) -> bool: ...
    def ttl(self, key: Key) -> Optional[float]: ...
    def redlock(self, key: Key, lease: float, *, wait: Optional[float] = None, fenced: bool = False, watchdog: bool = False) -> _sync.RedLock: ...
    def lock(
        self,
        key: Key,
        lease: float,
        *,
        wait: Optional[float] = None,
        fenced: bool = False,
        watchdog: bool = False,
    ) -> _sync.ExclusiveLock: ...
    def optimistic_lock(self, key: Key) -> _sync.OptimisticLock: ...
    def _acquire(
        self,
        key: Key,
        lease: float,
        wait: Optional[float] = None,
        fenced: bool = False,
        exclusive: bool = False,
        watchdog: bool = False,
    ) -> Optional["SyncLockGuard"]: ...
    def _begin(self, key: Key) -> "SyncOptimisticLockState": ...

class SyncLockGuard:
    @property
    def outcome(self) -> Outcome: ...
    @property
    def acquired(self) -> bool: ...
    @property
    def exclusive(self) -> bool: ...
    @property
    def token(self) -> Optional[str]: ...
    @property
    def fence(self) -> Optional[int]: ...
    @property
    def lease_remaining(self) -> Optional[float]: ...
    @property
    def lost(self) -> bool: ...
    def check(self) -> None: ...
    def extend(self, lease: float) -> None: ...
    def release(self) -> bool: ...

class SyncOptimisticLockState:
    @property
    def value(self) -> Optional[bytes]: ...
    def cas(self, value: Value, ttl: Optional[float] = None) -> None: ...
