"""The exceptions of aiolock_rs and :class:`Outcome`, shared by the async and sync APIs.

Every error of the Rust core has a kind, and each kind is one exception class here,
all subclasses of :class:`AiolockError`. The table says what a caller may assume
afterwards:

==========================  =================  ===================  ==================
exception                   nothing was sent   nothing was written  retry
==========================  =================  ===================  ==================
``InvalidArgumentError``    yes                yes                  no: fix the input
``InvalidKeyError``         yes                yes                  no: fix the key
``UnsupportedError``        yes                yes                  no
``OptimisticLockError``                        yes                  begin again
``BackendError``                               yes (refused)        after fixing it
``BackendTimeoutError``                        **unknown**          read back first
``BackendConnectionError``                     **unknown**          read back first
``ProtocolError``                              **unknown**          no
``LockLostError``                              yes                  take the lock again
==========================  =================  ===================  ==================

Not getting a lock is not an error: a :class:`~aiolock_rs.RedLock` reports it as an
:class:`Outcome`, an exclusive lock's ``acquire`` returns ``None``; only its
``async with`` form raises :class:`NotAcquiredError`.
"""

import enum

__all__ = [
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
    "Outcome",
]


class Outcome(enum.Enum):
    """How an acquisition ended."""

    #: This caller holds the lock: compute, store, then release.
    ACQUIRED = "acquired"
    #: Another holder released the lock while this caller waited: its value should
    #: now be in the cache. This caller does not hold the lock.
    RELEASED = "released"
    #: The caller's wait bound passed first (by default one lease). This caller does
    #: not hold the lock: go on without it, as aiocache does.
    TIMED_OUT = "timed_out"


class AiolockError(Exception):
    """The base class of every aiolock_rs error. Messages are one line and never
    contain a password."""


class InvalidArgumentError(AiolockError, ValueError):
    """An argument is out of range: a zero, negative, NaN or infinite lease or TTL, a
    malformed URL, an unknown URL option. Nothing was sent."""


class InvalidKeyError(AiolockError, ValueError):
    """The backend cannot store this key (empty; for memcached longer than 250 bytes
    with namespace and lock suffix, or containing a space or a control byte).
    Nothing was sent."""


class OptimisticLockError(AiolockError):
    """``cas``: the key changed since the optimistic lock began (aiocache's
    ``OptimisticLockError``). Nothing was written: begin again and retry."""


class BackendTimeoutError(AiolockError, TimeoutError):
    """The backend did not answer in time. The outcome of a write is **unknown**: read
    back before retrying anything that is not idempotent."""


class BackendConnectionError(AiolockError, ConnectionError):
    """The backend cannot be reached, or the connection broke. When it broke after the
    request was sent (the message says so) the outcome of a write is unknown."""


class ProtocolError(AiolockError):
    """The backend answered something this client does not understand. What the
    server did with the request is unknown."""


class BackendError(AiolockError):
    """The backend refused the command (an error reply, wrong credentials). Nothing
    was applied."""


class UnsupportedError(AiolockError):
    """The URL names a backend this build does not include, or the backend cannot do
    what was asked. Nothing was sent."""


class LockLostError(AiolockError):
    """The lock is no longer this caller's: its lease ended (another caller may hold
    it now), it was deleted, or the guard never held it (``extend``, a watchdog's
    renewal). Stop the work that needed the lock and take it again."""


class NotAcquiredError(AiolockError, TimeoutError):
    """``async with cache.lock(...)`` / ``with cache.lock(...)``: the exclusive lock
    stayed held by another caller until the wait bound passed, and the block did not
    run. (Not an error of the Rust core: its ``acquire`` returns ``None``.)"""
