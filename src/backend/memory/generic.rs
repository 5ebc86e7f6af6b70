//! [`Backend`] for the memory store: the store is synchronous, only the wait and the
//! clock differ per flavor (the `rt` seam): every call passes the flavor's `now`.

use std::time::{Duration, Instant};

use super::backend::Backend;
use super::{maybe_async, rt};
use crate::backend::memory::store::{Listen, MemoryBackend, wake_reason};
use crate::core::wait::{Claim, Wake};
use crate::error::Result;
use crate::value::{CasToken, Ttl, Versioned};

#[maybe_async(AFIT)]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(MemoryBackend::get(self, key, rt::now()))
    }

    async fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        MemoryBackend::set(self, key, value, ttl, rt::now());
        Ok(())
    }

    async fn add(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        Ok(MemoryBackend::add(self, key, value, ttl, rt::now()))
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        Ok(MemoryBackend::delete(self, key, rt::now()))
    }

    async fn exists(&self, key: &[u8]) -> Result<bool> {
        Ok(MemoryBackend::exists(self, key, rt::now()))
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        Ok(MemoryBackend::ttl(self, key, rt::now()))
    }

    async fn claim(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<Claim> {
        Ok(MemoryBackend::claim(self, key, token, lease, rt::now()))
    }

    async fn release(&self, key: &[u8], token: &[u8]) -> Result<bool> {
        Ok(MemoryBackend::release(self, key, token, rt::now()))
    }

    async fn extend(&self, key: &[u8], token: &[u8], lease: Duration) -> Result<bool> {
        Ok(MemoryBackend::extend(self, key, token, lease, rt::now()))
    }

    async fn claim_fenced(
        &self,
        key: &[u8],
        token: &[u8],
        lease: Duration,
        fence_key: &[u8],
    ) -> Result<(Claim, Option<u64>)> {
        MemoryBackend::claim_fenced(self, key, token, lease, fence_key, rt::now())
    }

    #[inline(always)]
    fn try_begin_now(&self, key: &[u8], read: &mut dyn FnMut(Option<&[u8]>)) -> Option<CasToken> {
        Some(MemoryBackend::begin_with(self, key, rt::now(), read))
    }

    #[inline(always)]
    fn try_claim_now(
        &self,
        key: &[u8],
        token: &[u8],
        now: Instant,
        lease_end: Instant,
    ) -> Option<Claim> {
        Some(MemoryBackend::claim_until(self, key, token, now, lease_end))
    }

    #[inline(always)]
    fn try_release_now(&self, key: &[u8], token: &[u8]) -> Option<bool> {
        Some(MemoryBackend::release(self, key, token, rt::now()))
    }

    async fn wait(&self, key: &[u8], holder: Option<&[u8]>, deadline: Instant) -> Result<Wake> {
        Ok(match self.listen(key, holder, deadline, rt::now()) {
            // Held when the add lost, gone now: released in between.
            Listen::Vacant => Wake::Released,
            Listen::Held {
                listener,
                until,
                until_is_deadline,
            } => {
                let notified = rt::wait_listener(listener, until).await;
                wake_reason(notified, until_is_deadline)
            }
        })
    }

    async fn begin(&self, key: &[u8]) -> Result<Versioned> {
        Ok(MemoryBackend::begin(self, key, rt::now()))
    }

    async fn cas(
        &self,
        key: &[u8],
        token: &CasToken,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        Ok(MemoryBackend::cas(self, key, token, value, ttl, rt::now()))
    }
}
