//! [`Probe`]: a real backend (async flavor) wrapped to count its claims and, on demand,
//! to make one release wait a scheduling round before it runs (the memory store
//! answers at once, so a release future could never be dropped at its await).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiolock::{Backend, CasToken, Claim, Result, Ttl, Versioned, Wake};

/// `inner`, observed. Clones share the counters.
#[derive(Clone)]
pub struct Probe<B> {
    inner: B,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    claims: AtomicUsize,
    /// Releases that removed the lock; the other calls (reads, waits).
    releases: AtomicUsize,
    others: AtomicUsize,
    pend_next_release: AtomicBool,
}

impl<B> Probe<B> {
    pub fn new(inner: B) -> Self {
        Probe {
            inner,
            state: Arc::default(),
        }
    }

    /// How many claims were sent so far.
    pub fn claims(&self) -> usize {
        self.state.claims.load(Ordering::SeqCst)
    }

    /// What the backend was asked so far, as a server counts it.
    pub fn counts(&self) -> super::counts::Counts {
        let n = |c: &AtomicUsize| c.load(Ordering::SeqCst) as u64;
        let s = &self.state;
        super::counts::Counts {
            claims: n(&s.claims),
            releases: n(&s.releases),
            commands: n(&s.claims) + n(&s.others) + n(&s.releases),
        }
    }

    fn released(&self, removed: bool) -> bool {
        let counter = if removed {
            &self.state.releases
        } else {
            &self.state.others
        };
        counter.fetch_add(1, Ordering::SeqCst);
        removed
    }

    /// The next release yields to the scheduler once before it runs.
    pub fn pend_next_release(&self) {
        self.state.pend_next_release.store(true, Ordering::SeqCst);
    }
}

impl<B: Backend> Backend for Probe<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.state.others.fetch_add(1, Ordering::SeqCst);
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
        self.state.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(key, token, lease).await
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        if self.state.pend_next_release.swap(false, Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let removed = self.inner.release(key, token).await?;
        Ok(self.released(removed))
    }

    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        // A release to pend goes through `release`, the one that can.
        if self.state.pend_next_release.load(Ordering::SeqCst) {
            return None;
        }
        let removed = self.inner.try_release_now(key, token)?;
        Some(self.released(removed))
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        self.state.others.fetch_add(1, Ordering::SeqCst);
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

impl<B: Send + Sync> super::counts::Counted for Probe<B> {
    fn counts(&self) -> Option<super::counts::Counts> {
        Some(Probe::counts(self))
    }
}
