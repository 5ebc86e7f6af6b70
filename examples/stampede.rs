//! The cache stampede, stopped: 64 threads and 256 async tasks miss the same cache entry
//! at once and ask for it through a RedLock on `memory://`. One computes; the others
//! wait for its release and read its result.
//!
//! ```sh
//! cargo run --release --example stampede
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiolock::{MemoryBackend, Outcome};
use parking_lot::Mutex;

const KEY: &str = "report";
const LEASE: Duration = Duration::from_secs(5);
const COMPUTE: Duration = Duration::from_millis(200);
const THREADS: usize = 64;
const TASKS: usize = 256;

#[derive(Default)]
struct Stats {
    computed: AtomicUsize,
    cache_hits: AtomicUsize,
    by_outcome: [AtomicUsize; 3],
    latencies: Mutex<Vec<Duration>>,
}

impl Stats {
    fn record(&self, outcome: Option<Outcome>, started: Instant) {
        match outcome {
            None => self.cache_hits.fetch_add(1, Ordering::Relaxed),
            Some(o) => self.by_outcome[o as usize].fetch_add(1, Ordering::Relaxed),
        };
        self.latencies.lock().push(started.elapsed());
    }
}

fn expensive(stats: &Stats) -> Vec<u8> {
    stats.computed.fetch_add(1, Ordering::Relaxed);
    std::thread::sleep(COMPUTE);
    b"the quarterly report".to_vec()
}

/// The blocking caller: get; on a miss, take the lock, check again, compute, set.
fn blocking_caller(cache: &aiolock::blocking::Cache, stats: &Stats) -> aiolock::Result<Vec<u8>> {
    let started = Instant::now();
    if let Some(v) = cache.get(KEY)? {
        stats.record(None, started);
        return Ok(v);
    }
    let guard = cache.redlock(KEY, LEASE).acquire()?;
    let value = match (guard.outcome(), cache.get(KEY)?) {
        (_, Some(v)) => v,
        (_, None) => {
            let v = expensive(stats);
            cache.set(KEY, &v, Some(Duration::from_secs(60)))?;
            v
        }
    };
    stats.record(Some(guard.outcome()), started);
    guard.release()?;
    Ok(value)
}

/// The async caller: the same steps, awaited.
async fn async_caller(cache: aiolock::Cache, stats: Arc<Stats>) -> aiolock::Result<Vec<u8>> {
    let started = Instant::now();
    if let Some(v) = cache.get(KEY).await? {
        stats.record(None, started);
        return Ok(v);
    }
    let guard = cache.redlock(KEY, LEASE).acquire().await?;
    let value = match cache.get(KEY).await? {
        Some(v) => v,
        None => {
            let v = tokio::task::block_in_place(|| expensive(&stats));
            cache.set(KEY, &v, Some(Duration::from_secs(60))).await?;
            v
        }
    };
    stats.record(Some(guard.outcome()), started);
    guard.release().await?;
    Ok(value)
}

fn main() -> aiolock::Result<()> {
    // One in-process store, seen by a blocking and an async cache at once.
    let store = MemoryBackend::new();
    let sync_cache: aiolock::blocking::Cache =
        aiolock::blocking::Cache::with_namespace(store.clone().into(), "demo:");
    let async_cache: aiolock::Cache = aiolock::Cache::with_namespace(store.into(), "demo:");
    let stats = Arc::new(Stats::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let started = Instant::now();
    std::thread::scope(|s| -> aiolock::Result<()> {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| blocking_caller(&sync_cache, &stats)))
            .collect();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| tokio::spawn(async_caller(async_cache.clone(), Arc::clone(&stats))))
                .collect();
            for t in tasks {
                t.await.expect("task")?;
            }
            Ok::<_, aiolock::Error>(())
        })?;
        for t in threads {
            t.join().expect("thread")?;
        }
        Ok(())
    })?;
    let total = started.elapsed();

    let mut lat = stats.latencies.lock().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let n = |o: Outcome| stats.by_outcome[o as usize].load(Ordering::Relaxed);
    println!(
        "{} callers ({THREADS} threads + {TASKS} tasks) asked for one value that takes {COMPUTE:?} to compute",
        THREADS + TASKS
    );
    println!(
        "  computations:             {}",
        stats.computed.load(Ordering::Relaxed)
    );
    println!("  held the lock:            {}", n(Outcome::Acquired));
    println!("  served by the release:    {}", n(Outcome::Released));
    println!(
        "  served from the cache:    {}",
        stats.cache_hits.load(Ordering::Relaxed)
    );
    println!("  timed out:                {}", n(Outcome::TimedOut));
    println!(
        "  caller latency:           p50 {:?}, p99 {:?}, max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("  wall time:                {total:?}");
    let late = pct(1.0).saturating_sub(COMPUTE);
    println!(
        "  slowest caller beyond the compute time: {late:?} (aiocache waiters poll: 50-100 ms)"
    );
    assert_eq!(stats.computed.load(Ordering::Relaxed), 1, "computed once");
    Ok(())
}
