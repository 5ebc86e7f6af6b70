//! aiolock: the two locks of Python's `aiocache.lock`, for Rust and C, and better.
//!
//! - [`RedLock`]: a lease lock against cache stampedes. The first caller takes the lock
//!   and computes; the others wait for its release (then read the cache), never
//!   longer than the holder's lease or their own bound.
//! - [`ExclusiveLock`]: a lease lock for mutual exclusion. `acquire` waits through
//!   releases and lease ends until it holds the key or its bound passes;
//!   `try_acquire` claims once.
//! - [`OptimisticLock`]: read a key, then write it only if nobody changed it meanwhile,
//!   else a [`Conflict`](ErrorKind::Conflict) error.
//!
//! All run over a small [`Cache`] API (get/set/add/delete/exists/ttl with TTLs and
//! namespaces) on the in-process memory backend (`memory://`, the default, no
//! server), Redis or memcached. Every type exists in two flavors built from one
//! source: async (tokio) at the crate root and blocking in [`blocking`], usable
//! together in one program.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> aiolock::Result<()> {
//! use std::time::Duration;
//! use aiolock::{Cache, Outcome};
//!
//! let cache = Cache::from_url("memory://?namespace=app:").await?;
//! if cache.get("report").await?.is_none() {
//!     let guard = cache.redlock("report", Duration::from_secs(5)).acquire().await?;
//!     match guard.outcome() {
//!         Outcome::Acquired => cache.set("report", b"computed", None).await?,
//!         Outcome::Released => { /* the holder stored it: read the cache */ }
//!         Outcome::TimedOut => { /* compute without the lock, as aiocache does */ }
//!     }
//!     guard.release().await?;
//! }
//! assert_eq!(cache.get("report").await?.as_deref(), Some(&b"computed"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! The async flavor runs on tokio and needs a runtime with the time driver enabled
//! (`enable_all()`, as `#[tokio::main]` and `#[tokio::test]` do). The blocking flavor
//! needs no runtime, and must not be called from async code (see [`blocking`]).
//!
//! The async flavor reads tokio's clock throughout (leases, bounds, deadlines), so
//! under `tokio::time::pause()` a waiter sleeps until the paused clock reaches the
//! holder's lease end instead of spinning; the memory backend judges leases by that
//! clock too. Network servers expire keys by their own clock. Drop-releases of network
//! backends run on spawned tasks: call [`Cache::flush`] before the runtime ends (e.g.
//! last in `#[tokio::main]`).
//!
//! # Which lock should you use?
//!
//! - Many callers miss the same cache entry and computing it is expensive:
//!   [`RedLock`]. One computes, the others wait for it and read its result.
//! - Read-modify-write of one key by callers that rarely collide: [`OptimisticLock`].
//!   Nobody waits; the loser of a collision gets `Conflict` and retries.
//! - Only one caller at a time may do the work (a job, a migration, a read-modify-write
//!   of something that is not a cache key): [`ExclusiveLock`]
//!   ([`Cache::lock`]). Waiters keep waiting until they hold it; when the bound
//!   passes, `acquire` returns `Ok(None)` (not getting the lock is not an error).
//! - A RedLock is not a mutex: its waiter that times out, or that is woken by a
//!   release, goes on *without* the lock.
//! - No lease lock, exclusive or not, stops a holder that paused past its lease (GC,
//!   `SIGSTOP`, a slow disk) from writing after the next holder started: its release
//!   then reports `false`, too late. Choose a lease well beyond the work; where a stale
//!   write would do harm, the storage must refuse it by a fencing token (planned, see
//!   [`ExclusiveLock`]).
//!
//! # Differences from aiocache
//!
//! - Waiters in other processes and on other hosts wait and wake on the release
//!   (aiocache's waiters in another process do not wait at all).
//! - A waiter waits at most until the holder's lease actually ends, not a full lease
//!   from its own arrival; when a lease ends without a release, one waiter is
//!   re-elected and the others keep waiting.
//! - Release is owner-checked and atomic on every backend, memcached included.
//! - `acquire` tells the caller what happened: [`Outcome::Acquired`],
//!   [`Outcome::Released`] or [`Outcome::TimedOut`].
//! - Lock state belongs to each cache: two caches never share waiters.
//! - Blocking Rust, async Rust and a C ABI (C, Go, Ruby).
//!
//! # Running beside aiocache
//!
//! aiolock and Python's aiocache (0.12.3 measured) can share a server while a team
//! migrates:
//!
//! - **Lock keys coincide once the namespace is mapped**: both lock `key` under
//!   `namespace + key + "-lock"`, but aiocache's Redis cache puts a `:` between its
//!   namespace and the key and its memcached cache does not. aiocache's Redis namespace
//!   `app` is `namespace=app:` here, its memcached namespace `app` is `namespace=app`
//!   (see [`config`]).
//! - **Values do not**: aiocache serializes, by default as JSON (`set("k", "v")` stores
//!   `"v"` with the quotes); aiolock stores raw bytes, and aiocache's JSON serializer
//!   raises on reading aiolock's `v`.
//! - **On memcached, do not share lock keys**: aiocache's release is an unconditional
//!   `delete`, so any aiocache caller's release deletes an aiolock holder's lock, and a
//!   second aiolock process then holds the lock at the same time as the first. Give
//!   aiolock its own suffix ([`CacheBuilder::lock_suffix`], URL option `lock_suffix`)
//!   so that neither touches the other's locks.
//! - **On Redis, sharing lock keys is safe but slower to wake**: aiocache's release is
//!   owner-checked but publishes nothing, so aiolock waiters notice it only by checking
//!   the key again (at the latest when the holder's lease ends). aiocache's waiters
//!   wait only for releases in their own process.
//!
//! # Errors
//!
//! One [`Error`] type for both flavors, classified by [`ErrorKind`], whose docs say
//! what a caller may assume after each kind (nothing sent, nothing written, or an
//! outcome that is unknown). Messages are one line, bounded, and never show a
//! password.
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `async` | yes | the async flavor at the crate root (tokio) |
//! | `blocking` | yes | [`blocking`]: no async runtime needed or linked |
//! | `redis` | no | the Redis backend (`redis://`, `redis+unix://`), in every flavor built; no tokio in a blocking-only build |
//! | `redis-tls` | no | `rediss://` (TLS with rustls); compiles the `redis` crate's tokio TLS driver too |
//! | `memcached` | no | the memcached backend (`memcached://`, `memcached+unix://`), `MemcachedBackend` in both flavors |
//! | `tracing` | no | spans and events for [`tracing`](https://docs.rs/tracing) subscribers, see below; without it none are compiled in |
//!
//! With `tracing`, every lock operation runs in a `debug` span named `acquire`, `wait`,
//! `release` or `cas`, with the fields `key` (the full lock or cache key, lossy UTF-8),
//! `backend` ([`Backend::name`]) and `outcome` (`acquired` / `released` / `timed_out`;
//! `released` / `vacant` / `deadline`; `released` / `not_held`; `written` / `conflict`;
//! or `error`). A waiter emits the `debug` event `waiting` (field `key`) right before it
//! waits for the holder: its claim has lost, so any release from then on wakes it with
//! [`Outcome::Released`]. Every release error nobody sees (inside `run`, in a dropped
//! guard, in a cleanup) and every release that was skipped is a `warn` event.

#![deny(unused_must_use)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(all(test, feature = "blocking", feature = "async"))]
mod alloc_tests;
mod backend;
#[cfg(feature = "blocking")]
mod clock;
pub mod config;
mod core;
mod error;
mod key;
mod trace;
mod value;

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(feature = "async")]
mod nonblocking;

pub use crate::backend::memory::store::MemoryBackend;
pub use crate::core::lease::{MAX_DURATION, seconds};
pub use crate::core::token::Token;
pub use crate::core::wait::{Claim, Outcome, Wake};
pub use crate::error::{Error, ErrorKind, Result};
#[cfg(feature = "async")]
pub use crate::nonblocking::*;

/// For aiolock's own bindings; not a stable API.
#[doc(hidden)]
#[cfg(all(feature = "async", feature = "redis"))]
pub mod __private {
    pub use crate::backend::redis::pipeline::take_read_interest;
}
pub use crate::value::{CasToken, Replication, Ttl, Versioned};

/// The README's examples, compiled as doc tests.
#[cfg(all(doctest, feature = "async", feature = "blocking"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
