// A backend wrapper counting the renewals that reach it, compiled into both flavors
// by `main.rs` (the crate's twin-module pattern).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aiolock::{CasToken, Claim, Result, Ttl, Versioned, Wake};

/// `inner`, with its `extend` calls counted.
#[derive(Clone)]
pub struct Counting<B> {
    inner: B,
    extends: Arc<AtomicU64>,
}

impl<B> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            extends: Arc::default(),
        }
    }

    /// Renewals so far.
    pub fn extends(&self) -> u64 {
        self.extends.load(Ordering::Relaxed)
    }
}

#[maybe_async(AFIT)]
impl<B: Backend> Backend for Counting<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.inner.add(key, value, ttl).await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        self.inner.exists(key).await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.ttl(key).await
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        self.inner.claim(key, token, lease).await
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        self.extends.fetch_add(1, Ordering::Relaxed);
        self.inner.extend(key, token, lease).await
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        self.inner.release(key, token).await
    }

    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        self.inner.try_release_now(key, token)
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        self.inner.wait(key, holder, deadline).await
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        self.inner.begin(key).await
    }

    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.inner.cas(key, token, value, ttl).await
    }
}
