//! Releases that outlive their caller: a dropped guard's release (a task, in the async
//! flavor, for backends that need I/O) and the cleanup of a lock that an acquisition may
//! have taken before it failed (both flavors). A cleanup is retried, with backoff,
//! while the server does not answer and the lease may last; [`Cache::flush`] waits for
//! all of them.
//!
//! One worker per cache (a task in the async flavor, a thread in the blocking one, both
//! started on demand and gone when the queue is empty) retries the queued releases one
//! after the other: they all go to the same server, which answers all or none.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use event_listener::Event;
use parking_lot::Mutex;

use super::backend::Backend;
use super::cache::Cache;
use super::{maybe_async, rt};
use crate::core::fork;
use crate::core::lease::deadline;
use crate::core::token::Token;
use crate::error::{Error, ErrorKind, Result};
use crate::trace::{self, Op};

/// The first pause between two attempts of a cleanup, doubled up to [`MAX_PAUSE`].
const MIN_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// A release to run, or run again, in the background.
pub(crate) struct Job {
    pub(crate) key: Vec<u8>,
    pub(crate) token: Token,
    /// Retried until then: the lease cannot outlast it (unless the server was stalled
    /// at that moment and applies our add later still).
    pub(crate) until: Instant,
    /// Where the release comes from, for warnings.
    pub(crate) what: &'static str,
}

impl Job {
    /// A release of `token` on `key`, retried at most one `lease` from now.
    pub(crate) fn new(key: Vec<u8>, token: Token, lease: Duration, what: &'static str) -> Self {
        Job {
            key,
            token,
            until: deadline(rt::now(), lease),
            what,
        }
    }
}

/// The background releases of one cache.
#[derive(Default)]
pub(crate) struct Background {
    /// Releases started or queued and not finished.
    pending: AtomicUsize,
    /// Notified whenever `pending` falls to zero.
    idle: Event,
    /// Releases of dropped guards that never ran.
    skipped: AtomicU64,
    queue: Mutex<Queue>,
    /// The process generation ([`fork::generation`]) the queue and the count are of.
    generation: AtomicU64,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Whether a worker runs (it empties `jobs`).
    worker: bool,
}

/// Whether an error leaves the outcome of a request unknown and a later attempt may
/// succeed: the server did not answer or the connection broke.
pub(crate) fn transient(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connection)
}

impl Background {
    /// Counts a release that starts now in the background (see [`Background::done`]).
    pub(crate) fn start(&self) {
        self.adopt();
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// In a process forked since the queue was last used, forgets the parent's
    /// releases first: they are the parent's to send, its worker did not come along
    /// (a child has only the forking thread), and counted as pending they would make
    /// the child's [`Cache::flush`] wait forever.
    #[inline]
    fn adopt(&self) {
        let generation = fork::generation();
        if self.generation.load(Ordering::Acquire) != generation {
            self.adopt_in(generation);
        }
    }

    #[cold]
    #[inline(never)]
    fn adopt_in(&self, generation: u64) {
        let mut queue = self.queue.lock();
        if self.generation.load(Ordering::Acquire) == generation {
            return;
        }
        queue.jobs.clear();
        queue.worker = false;
        self.pending.store(0, Ordering::SeqCst);
        self.generation.store(generation, Ordering::Release);
    }

    /// A release counted by [`Background::start`] finished.
    pub(crate) fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify(usize::MAX);
        }
    }

    /// A dropped guard's release on `key` never ran (`why`): counted and warned of.
    #[allow(dead_code)] // the blocking flavor releases on the dropping thread: never skips
    pub(crate) fn skip(&self, key: &[u8], backend: &'static str, why: &'static str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        trace::skipped(key, backend, why);
    }

    /// See [`Cache::skipped_releases`].
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl<B: Backend> Cache<B> {
    /// Queues `job` for the worker, starting one if none runs.
    pub(crate) fn retry_later(&self, job: Job) {
        let background = self.background();
        background.start();
        background.queue.lock().jobs.push_back(job);
        self.ensure_worker();
    }

    /// Starts a worker if jobs wait and none runs; when none can start (no runtime, no
    /// thread), the jobs stay queued for the next failure or [`Cache::flush`].
    fn ensure_worker(&self) {
        if self.claim_worker() && !rt::spawn_worker(self.clone()) {
            let mut queue = self.background().queue.lock();
            queue.worker = false;
            for job in &queue.jobs {
                let why = "no runtime or thread to retry it on yet";
                trace::skipped(&job.key, self.backend().name(), why);
            }
        }
    }

    /// Whether the caller is to run a worker: jobs wait and none runs (then it is
    /// marked as running).
    fn claim_worker(&self) -> bool {
        let mut queue = self.background().queue.lock();
        if queue.worker || queue.jobs.is_empty() {
            return false;
        }
        queue.worker = true;
        true
    }

    /// The worker: retries the queued jobs, one after the other, until none is left.
    #[maybe_async]
    pub(crate) async fn work(self) {
        let mut worker = Worker {
            cache: self,
            current: None,
            finished: false,
        };
        let mut pause = MIN_PAUSE;
        loop {
            {
                let mut queue = worker.cache.background().queue.lock();
                worker.current = queue.jobs.pop_front();
                if worker.current.is_none() {
                    queue.worker = false;
                    worker.finished = true;
                    return;
                }
            }
            let Some(job) = worker.current.as_ref() else {
                return;
            };
            let result = worker.cache.release_job(job).await;
            match result {
                Err(e) if transient(&e) && rt::now() < job.until => {
                    // Kept in `current` while paused: a worker dropped now re-queues it.
                    rt::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    let job = worker.current.take();
                    // Back to the front: the oldest lease first.
                    let mut queue = worker.cache.background().queue.lock();
                    queue.jobs.extend(job);
                    queue.jobs.rotate_right(1);
                }
                Err(e) => {
                    let backend = worker.cache.backend().name();
                    trace::discarded(job.what, &job.key, backend, &e);
                    worker.current = None;
                    worker.cache.background().done();
                }
                Ok(_) => {
                    pause = MIN_PAUSE;
                    worker.current = None;
                    worker.cache.background().done();
                }
            }
        }
    }

    /// A dropped guard's release: one attempt now, then, if the server did not answer,
    /// retries by the worker while the lease may last.
    #[maybe_async]
    pub(crate) async fn release_dropped(&self, job: Job) {
        match self.release_job(&job).await {
            Ok(_) => {}
            Err(e) if transient(&e) => self.retry_later(job),
            Err(e) => trace::discarded(job.what, &job.key, self.backend().name(), &e),
        }
    }

    /// One owner-checked release of `job`, in a `release` span.
    #[maybe_async]
    pub(crate) async fn release_job(&self, job: &Job) -> Result<bool> {
        let backend = self.backend();
        let span = trace::span(Op::Release, &job.key, backend.name());
        let released = in_span!(span, backend.release(&job.key, job.token.as_bytes()));
        trace::end(&span, &released, |r| trace::released(*r));
        released
    }

    /// Waits until the releases this cache runs in the background are done: the
    /// releases of dropped guards (async flavor, network backends) and the cleanups of
    /// acquisitions that failed while their add may have been applied (both flavors:
    /// retried while the server does not answer, at most one lease).
    ///
    /// Call it before the async runtime ends, e.g. last in `#[tokio::main]`: a release
    /// still queued on a runtime that shuts down never runs (see
    /// [`skipped_releases`](Cache::skipped_releases)). A cleanup left queued by a
    /// runtime that ended is retried by this call itself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> aiolock::Result<()> {
    /// use std::time::Duration;
    ///
    /// let cache = aiolock::Cache::from_url("memory://").await?;
    /// drop(cache.redlock("report", Duration::from_secs(5)).acquire().await?);
    /// cache.flush().await;
    /// assert_eq!(cache.skipped_releases(), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[maybe_async]
    pub async fn flush(&self) {
        let background = self.background();
        background.adopt();
        loop {
            let listener = background.idle.listen();
            if background.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            if self.claim_worker() {
                // Jobs left by a worker whose runtime ended: retried here.
                self.clone().work().await;
            } else {
                rt::park(listener).await;
            }
        }
    }

    /// How many releases of dropped guards never ran: dropped outside a tokio runtime,
    /// or queued on a runtime that shut down before it ran them (async flavor, network
    /// backends; the memory backend releases at once). Each is also a `warn` event of
    /// the `tracing` feature. Such a lock stays until its lease ends.
    pub fn skipped_releases(&self) -> u64 {
        self.background().skipped()
    }
}

/// The worker's state, so that a worker dropped mid-job (its runtime shut down) leaves
/// the job queued and lets the next worker start.
struct Worker<B: Backend> {
    cache: Cache<B>,
    current: Option<Job>,
    /// Returned normally (the queue was empty): another worker may run already.
    finished: bool,
}

impl<B: Backend> Drop for Worker<B> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.cache.background().queue.lock();
        if let Some(job) = self.current.take() {
            queue.jobs.push_front(job);
        }
        queue.worker = false;
    }
}
