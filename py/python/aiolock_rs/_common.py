"""What the async and sync lock classes share: their state and its properties."""

from typing import Any, Optional, Tuple, Union

from ._types import Outcome

Key = Union[str, bytes]
Value = Union[str, bytes]


class _RedLockBase:
    """The state of a RedLock once entered (both flavors)."""

    __slots__ = ("cache", "key", "lease", "wait", "fenced", "watchdog", "_guard", "removed")

    def __init__(
        self,
        cache: Any,
        key: Key,
        lease: float,
        *,
        wait: Optional[float] = None,
        fenced: bool = False,
        watchdog: bool = False,
    ) -> None:
        self.cache = cache
        self.key = key
        self.lease = lease
        self.wait = wait
        self.fenced = fenced
        self.watchdog = watchdog
        self._guard: Any = None
        #: After the block: whether the release removed our lock key (``False``: the
        #: lease had already ended). ``None`` when this caller did not hold the lock.
        self.removed: Optional[bool] = None

    def _entered(self) -> Any:
        if self._guard is None:
            raise RuntimeError("the lock was not entered")
        return self._guard

    @property
    def outcome(self) -> Outcome:
        """How the acquisition ended: ``ACQUIRED``, ``RELEASED`` or ``TIMED_OUT``."""
        return self._entered().outcome

    @property
    def acquired(self) -> bool:
        """Whether this caller held the lock."""
        return self._entered().acquired

    @property
    def fence(self) -> Optional[int]:
        """The fencing token of this acquisition (``fenced=True`` and acquired)."""
        return self._entered().fence

    @property
    def lease_remaining(self) -> Optional[float]:
        """Seconds until the lease ends at the earliest, while held."""
        return self._entered().lease_remaining

    @property
    def lost(self) -> bool:
        """With ``watchdog=True``: whether the lock is lost (or released)."""
        return self._entered().lost

    def check(self) -> None:
        """With ``watchdog=True``: raises :class:`LockLostError` once the lock is
        lost (a renewal failed, or none was confirmed in time). No I/O."""
        self._entered().check()

    def _args(self) -> Tuple[Any, ...]:
        return (self.key, self.lease, self.wait, self.fenced, False, self.watchdog)

    def __repr__(self) -> str:
        state = "not entered" if self._guard is None else self._guard.outcome.name
        return f"<{type(self).__name__} {self.key!r} lease={self.lease} {state}>"


class _ExclusiveBase:
    """The arguments of an exclusive lock (both flavors)."""

    __slots__ = ("cache", "key", "lease", "wait", "fenced", "watchdog", "_guard")

    def __init__(
        self,
        cache: Any,
        key: Key,
        lease: float,
        *,
        wait: Optional[float] = None,
        fenced: bool = False,
        watchdog: bool = False,
    ) -> None:
        self.cache = cache
        self.key = key
        self.lease = lease
        self.wait = wait
        self.fenced = fenced
        self.watchdog = watchdog
        self._guard: Any = None

    def _args(self, wait: Optional[float]) -> Tuple[Any, ...]:
        return (self.key, self.lease, wait, self.fenced, True, self.watchdog)

    def _not_acquired(self) -> Exception:
        from ._types import NotAcquiredError

        bound = self.lease if self.wait is None else self.wait
        return NotAcquiredError(
            f"the lock on {self.key!r} stayed held by another caller for {bound} s"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key!r} lease={self.lease}>"


class _OptimisticBase:
    __slots__ = ("cache", "key", "_state")

    def __init__(self, cache: Any, key: Key) -> None:
        self.cache = cache
        self.key = key
        self._state: Any = None

    @property
    def value(self) -> Optional[bytes]:
        """The value read when the lock began (``None``: the key was absent)."""
        if self._state is None:
            raise RuntimeError("the optimistic lock was not entered")
        return self._state.value
