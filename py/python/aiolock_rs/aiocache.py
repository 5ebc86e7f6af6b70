"""A drop-in for ``aiocache.lock``: the same ``RedLock``, ``OptimisticLock`` and
``OptimisticLockError``, taking aiocache's own cache objects.

Migrating is an import line::

    # from aiocache.lock import RedLock, OptimisticLock, OptimisticLockError
    from aiolock_rs.aiocache import RedLock, OptimisticLock, OptimisticLockError

    cache = aiocache.RedisCache(endpoint="127.0.0.1", port=6379, namespace="app")
    async with RedLock(cache, "report", lease=5):       # waiters in every process wait
        if await cache.get("report") is None:
            await cache.set("report", await compute())

What is read from the aiocache object: its endpoint, port, db and password (Redis),
endpoint and port (memcached), its timeout (as the response timeout), namespace and
key builder. The lock key is exactly aiocache's, ``cache.build_key(key + "-lock")``;
the optimistic lock's key is ``cache.build_key(key)``, and ``cas`` writes the value
through the cache's serializer (or the ``dumps_fn`` given), so aiocache reads it back.
One aiolock connection set is opened per aiocache cache object, the first time a lock
uses it, and shared by its locks.

Differences from aiocache, all by design of aiolock:

- Waiters in other processes wait for the release (aiocache's do not wait at all)
  and wake on it: on Redis by pub/sub, on memcached by polling.
- A waiter waits at most until the holder's lease ends; then one waiter takes the
  lock again and the others keep waiting (aiocache: all of them go on).
- Release is owner-checked on memcached too (aiocache deletes anyone's lock).
- ``async with RedLock(...) as lock`` gives the lock (aiocache gives ``None``), whose
  :attr:`~RedLock.outcome` says whether this caller held it.
- Beside aiocache's own locks on memcached, do not share lock keys: an aiocache
  release deletes an aiolock holder's lock. Move every locker of a key at once.

``SimpleMemoryCache``: its data lives in this process, and so does the lock: a
``RedLock`` uses an in-process aiolock memory cache (one per process, the lock key is
aiocache's), an ``OptimisticLock`` works on aiocache's own storage exactly as
aiocache's does. Both behave as aiocache's within one process (which is all a memory
cache can share).
"""

import urllib.parse
import weakref
from typing import Any, Dict, Optional, Tuple, Union

from aiocache.lock import OptimisticLockError as _AiocacheOptimisticLockError

from . import Cache, LockGuard
from ._types import OptimisticLockError as _OptimisticLockError
from ._types import Outcome

__all__ = ["RedLock", "OptimisticLock", "OptimisticLockError"]

_SUFFIX = "-lock"


class OptimisticLockError(_OptimisticLockError, _AiocacheOptimisticLockError):
    """The key changed since the lock began. Both ``aiolock_rs.OptimisticLockError``
    and ``aiocache.lock.OptimisticLockError``: existing ``except`` clauses catch it."""


class _Opened:
    """The aiolock cache of one aiocache cache object, and its lock-suffix variants."""

    __slots__ = ("cache", "by_suffix", "__weakref__")

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.by_suffix: Dict[bytes, Cache] = {}

    def with_suffix(self, suffix: bytes) -> Cache:
        if suffix == _SUFFIX.encode():
            return self.cache
        cache = self.by_suffix.get(suffix)
        if cache is None:
            cache = self.by_suffix[suffix] = self.cache.with_lock_suffix(suffix)
        return cache


_OPENED: "weakref.WeakKeyDictionary[Any, _Opened]" = weakref.WeakKeyDictionary()
_MEMORY: Optional[_Opened] = None


def _kind(client: Any) -> str:
    from aiocache.backends.memcached import MemcachedBackend
    from aiocache.backends.memory import SimpleMemoryBackend
    from aiocache.backends.redis import RedisBackend

    if isinstance(client, RedisBackend):
        return "redis"
    if isinstance(client, MemcachedBackend):
        return "memcached"
    if isinstance(client, SimpleMemoryBackend):
        return "memory"
    raise TypeError(
        f"aiolock_rs.aiocache takes an aiocache RedisCache, MemcachedCache or "
        f"SimpleMemoryCache, not {type(client).__name__}; for another store open an "
        f"aiolock_rs.Cache with Cache.from_url(...) and use aiolock_rs.RedLock"
    )


def _host(endpoint: str) -> str:
    return f"[{endpoint}]" if ":" in endpoint and not endpoint.startswith("[") else endpoint


def url_of(client: Any) -> str:
    """The aiolock URL of an aiocache ``RedisCache`` or ``MemcachedCache``: the
    server it talks to (its password included: do not log it)."""
    kind = _kind(client)
    if kind == "redis":
        scheme = "redis"
        pool = getattr(getattr(client, "client", None), "connection_pool", None)
        connection_class = getattr(pool, "connection_class", None)
        if connection_class is not None and "SSL" in connection_class.__name__:
            scheme = "rediss"
        auth = ""
        if client.password:
            auth = ":" + urllib.parse.quote(str(client.password), safe="") + "@"
        return f"{scheme}://{auth}{_host(client.endpoint)}:{client.port}/{client.db}"
    if kind == "memcached":
        return f"memcached://{_host(client.endpoint)}:{client.port}"
    raise TypeError("a SimpleMemoryCache has no server: its locks stay in this process")


async def _opened(client: Any) -> _Opened:
    global _MEMORY
    if _kind(client) == "memory":
        if _MEMORY is None:
            _MEMORY = _Opened(Cache.memory())
        return _MEMORY
    opened = _OPENED.get(client)
    if opened is None:
        timeout = getattr(client, "timeout", None)
        cache = await Cache.from_url(
            url_of(client), response_timeout=float(timeout) if timeout else None
        )
        # Another task may have opened it meanwhile: keep the first.
        opened = _OPENED.setdefault(client, _Opened(cache))
    return opened


def _as_bytes(key: Union[str, bytes]) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


async def _lock_target(client: Any, key: str) -> Tuple[Cache, bytes]:
    """The aiolock cache and key whose lock key is aiocache's
    ``client.build_key(key + "-lock")``, byte for byte (the aiolock cache has no
    namespace: the key builder already applied it)."""
    full = _as_bytes(client.build_key(key + _SUFFIX))
    opened = await _opened(client)
    suffix = _SUFFIX.encode()
    if not (full.endswith(suffix) and len(full) > len(suffix)):
        # A key builder that does not end the key in "-lock": its last byte is the
        # suffix, the rest the key.
        suffix = full[-1:]
    return opened.with_suffix(suffix), full[: len(full) - len(suffix)]


class RedLock:
    """aiocache's ``RedLock(client, key, lease)`` over aiolock: ``async with`` enters
    in every case; waiters in every process wait for the release.

    ``client`` is an aiocache ``RedisCache``, ``MemcachedCache`` or
    ``SimpleMemoryCache``. Inside the block, :attr:`outcome` says what happened
    (``ACQUIRED``, ``RELEASED`` or ``TIMED_OUT``).
    """

    def __init__(self, client: Any, key: str, lease: Union[int, float]) -> None:
        _kind(client)
        self.client = client
        self.key = client.build_key(key + _SUFFIX)
        self.lease = lease
        self._key = key
        self._guard: Optional[LockGuard] = None

    async def __aenter__(self) -> "RedLock":
        cache, key = await _lock_target(self.client, self._key)
        self._guard = await cache._acquire(key, float(self.lease))
        return self

    async def __aexit__(self, *exc: object) -> None:
        guard = self._guard
        if guard is not None and guard.acquired:
            await guard.release()

    def _entered(self) -> LockGuard:
        if self._guard is None:
            raise RuntimeError("the lock is not entered")
        return self._guard

    @property
    def outcome(self) -> Outcome:
        """How the acquisition ended (inside the block)."""
        return self._entered().outcome

    @property
    def acquired(self) -> bool:
        """Whether this caller holds the lock (inside the block)."""
        return self._entered().acquired


class OptimisticLock:
    """aiocache's ``OptimisticLock(client, key)`` over aiolock: ``async with ... as
    lock`` reads the key's CAS token (memcached: the CAS unique; Redis: the value);
    ``await lock.cas(value, ttl=...)`` writes the serialized value only if the key is
    unchanged, else raises :class:`OptimisticLockError`."""

    def __init__(self, client: Any, key: str) -> None:
        self._memory = _kind(client) == "memory"
        self.client = client
        self.key = key
        self.ns_key = client.build_key(key)
        self._state: Any = None
        self._token: Any = None

    async def __aenter__(self) -> "OptimisticLock":
        if self._memory:
            # aiocache's own mechanism, on its own in-process storage.
            self._token = await self.client._gets(self.ns_key)
        else:
            opened = await _opened(self.client)
            self._state = await opened.cache._begin(_as_bytes(self.ns_key))
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def cas(self, value: Any, **kwargs: Any) -> bool:
        """Checks and sets ``value`` (serialized like ``client.set`` does; keyword
        arguments ``ttl`` and ``dumps_fn`` as there). Returns ``True``, or raises
        :class:`OptimisticLockError` when the key changed since the lock began."""
        if self._memory:
            written = await self.client.set(self.key, value, _cas_token=self._token, **kwargs)
            if not written:
                raise OptimisticLockError("Value has changed since the lock started")
            return True
        if self._state is None:
            raise RuntimeError("the optimistic lock is not entered")
        dumps = kwargs.get("dumps_fn") or self.client.serializer.dumps
        data = dumps(value)
        ttl = kwargs.get("ttl", getattr(self.client, "ttl", None))
        try:
            await self._state.cas(_as_bytes(data), float(ttl) if ttl else None)
        except _OptimisticLockError as e:
            raise OptimisticLockError(str(e)) from None
        return True
