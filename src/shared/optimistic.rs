//! [`OptimisticLock`]: compare-and-set on one key.

use std::time::Duration;

use super::backend::Backend;
use super::cache::{AnyBackend, Cache};
use super::maybe_async;
use crate::core::lease::check_ttl;
use crate::error::{Error, ErrorKind, Result};
use crate::key::{self, KeyBuf};
use crate::trace::{self, Op};
use crate::value::{CasToken, Versioned};

/// Reads a key and a token for its state; [`cas`](OptimisticLock::cas) writes only if
/// nobody changed the key meanwhile (aiocache's `OptimisticLock`).
///
/// The token is the backend's: a version counter (memory), the CAS unique
/// (memcached), or the value itself (Redis: a write of the same bytes in between is
/// not seen, the ABA case). A key absent when the lock began must still be absent.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use aiolock::blocking::{Cache, OptimisticLock};
///
/// let cache = Cache::memory();
/// cache.set("counter", b"1", None)?;
/// let lock = OptimisticLock::begin(&cache, "counter")?;
/// assert_eq!(lock.value(), Some(&b"1"[..]));
/// cache.set("counter", b"5", None)?; // another writer
/// assert!(lock.cas(b"2", None).unwrap_err().is_conflict());
/// # }
/// # Ok::<(), aiolock::Error>(())
/// ```
pub struct OptimisticLock<B = AnyBackend> {
    cache: Cache<B>,
    key: KeyBuf,
    /// The value read (`None`: absent), inline when short.
    value: Option<KeyBuf>,
    token: CasToken,
}

impl<B> std::fmt::Debug for OptimisticLock<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptimisticLock")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value", &self.value.as_deref().map(String::from_utf8_lossy))
            .field("token", &self.token)
            .finish()
    }
}

impl<B: Backend> OptimisticLock<B> {
    /// Reads `key` and the token of its current state.
    #[maybe_async]
    pub async fn begin(cache: &Cache<B>, key: impl AsRef<[u8]>) -> Result<Self> {
        let key = cache.key(key.as_ref())?;
        let backend = cache.backend();
        // In process (memory): the value copied under the store's lock, no allocation
        // for a short one.
        let mut value = None;
        let token = match backend.try_begin_now(&key, &mut |v| value = v.map(key::buf)) {
            Some(token) => token,
            None => {
                let Versioned { value: read, token } = backend.begin(&key).await?;
                value = read.map(KeyBuf::from_vec);
                token
            }
        };
        Ok(OptimisticLock {
            cache: cache.clone(),
            key,
            value,
            token,
        })
    }

    /// The value read when the lock began (`None`: the key was absent).
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// Writes `value` (expiring after `ttl`, never for `None`) if the key has not
    /// changed since [`begin`](OptimisticLock::begin); otherwise writes nothing and
    /// fails with [`ErrorKind::Conflict`] (see [`Error::is_conflict`]).
    #[maybe_async]
    pub async fn cas(self, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<()> {
        let ttl = check_ttl(ttl)?;
        let backend = self.cache.backend();
        let span = trace::span(Op::Cas, &self.key, backend.name());
        let written = in_span!(
            span,
            backend.cas(&self.key, &self.token, value.as_ref(), ttl)
        );
        trace::end(&span, &written, |w| if *w { "written" } else { "conflict" });
        if written? {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{:?} changed since the optimistic lock began",
                    String::from_utf8_lossy(&self.key)
                ),
            ))
        }
    }
}
