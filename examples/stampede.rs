//! The cache stampede, stopped: threads and async tasks miss the same cache entry at
//! once and ask for it through a RedLock on `memory://`. One computes; the others wait
//! for its release and read its result.
//!
//! ```sh
//! cargo run --release --example stampede                                   # 64 threads + 256 tasks
//! cargo run --release --example stampede -- --threads 1000 --tasks 10000 --rounds 5
//! ```
//!
//! Besides the callers' latency it prints, over the rounds, the time from the
//! holder's release to the last waiter's return (p50, p99) and the heap bytes per
//! waiting caller (a counting global allocator; thread stacks are not on the heap).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiolock::{MemoryBackend, Outcome};
use parking_lot::Mutex;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

const LEASE: Duration = Duration::from_secs(5);
const COMPUTE: Duration = Duration::from_millis(200);

struct Stats {
    key: String,
    base: Instant,
    computed: AtomicUsize,
    cache_hits: AtomicUsize,
    by_outcome: [AtomicUsize; 3],
    latencies: Mutex<Vec<Duration>>,
    /// ns since `base`: the holder's release call started; the last waiter returned.
    released: AtomicU64,
    last_return: AtomicU64,
}

impl Stats {
    fn new(key: String) -> Stats {
        Stats {
            key,
            base: Instant::now(),
            computed: AtomicUsize::new(0),
            cache_hits: AtomicUsize::new(0),
            by_outcome: Default::default(),
            latencies: Mutex::new(Vec::new()),
            released: AtomicU64::new(0),
            last_return: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// An acquisition returned with `outcome`.
    fn returned(&self, outcome: Outcome) {
        if outcome == Outcome::Released {
            self.last_return.fetch_max(self.now(), Ordering::SeqCst);
        }
    }

    /// The holder is about to release.
    fn releasing(&self) {
        self.released.store(self.now(), Ordering::SeqCst);
    }

    fn record(&self, outcome: Option<Outcome>, started: Instant) {
        match outcome {
            None => self.cache_hits.fetch_add(1, Ordering::Relaxed),
            Some(o) => self.by_outcome[o as usize].fetch_add(1, Ordering::Relaxed),
        };
        self.latencies.lock().push(started.elapsed());
    }

    /// From the release to the last waiter's return.
    fn release_to_last(&self) -> Duration {
        let (r, l) = (
            self.released.load(Ordering::SeqCst),
            self.last_return.load(Ordering::SeqCst),
        );
        Duration::from_nanos(l.saturating_sub(r))
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
    let key = stats.key.as_str();
    if let Some(v) = cache.get(key)? {
        stats.record(None, started);
        return Ok(v);
    }
    let guard = cache.redlock(key, LEASE).acquire()?;
    stats.returned(guard.outcome());
    let value = match cache.get(key)? {
        Some(v) => v,
        None => {
            let v = expensive(stats);
            cache.set(key, &v, Some(Duration::from_secs(60)))?;
            v
        }
    };
    stats.record(Some(guard.outcome()), started);
    if guard.is_acquired() {
        stats.releasing();
    }
    guard.release()?;
    Ok(value)
}

/// The async caller: the same steps, awaited.
async fn async_caller(cache: aiolock::Cache, stats: Arc<Stats>) -> aiolock::Result<Vec<u8>> {
    let started = Instant::now();
    let key = stats.key.as_str();
    if let Some(v) = cache.get(key).await? {
        stats.record(None, started);
        return Ok(v);
    }
    let guard = cache.redlock(key, LEASE).acquire().await?;
    stats.returned(guard.outcome());
    let value = match cache.get(key).await? {
        Some(v) => v,
        None => {
            let v = tokio::task::block_in_place(|| expensive(&stats));
            cache.set(key, &v, Some(Duration::from_secs(60))).await?;
            v
        }
    };
    stats.record(Some(guard.outcome()), started);
    if guard.is_acquired() {
        stats.releasing();
    }
    guard.release().await?;
    Ok(value)
}

struct Args {
    threads: usize,
    tasks: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        threads: 64,
        tasks: 256,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let n = it.next().and_then(|v| v.parse().ok());
        match (flag.as_str(), n) {
            ("--threads", Some(n)) => a.threads = n,
            ("--tasks", Some(n)) => a.tasks = n,
            ("--rounds", Some(n)) if n > 0 => a.rounds = n,
            _ => {
                eprintln!("usage: stampede [--threads N] [--tasks N] [--rounds N]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// One stampede on `key`; returns its stats and the heap bytes per waiting caller.
fn round(
    a: &Args,
    sync_cache: &aiolock::blocking::Cache,
    async_cache: &aiolock::Cache,
    runtime: &tokio::runtime::Runtime,
    key: String,
) -> aiolock::Result<(Arc<Stats>, Option<f64>)> {
    let stats = Arc::new(Stats::new(key));
    let callers = a.threads + a.tasks;
    let heap = counting_alloc::live();
    std::thread::scope(|s| -> aiolock::Result<Option<f64>> {
        // While the holder computes, everybody else waits: sample the heap then.
        let sampler = s.spawn(|| {
            let started = Instant::now();
            while started.elapsed() < COMPUTE / 2 {
                let waiting = sync_cache.waiting(&stats.key) + async_cache.waiting(&stats.key);
                if waiting + 1 >= callers {
                    let grown = counting_alloc::live() - heap;
                    return Some(grown as f64 / (callers - 1).max(1) as f64);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        });
        let threads: Vec<_> = (0..a.threads)
            .map(|_| s.spawn(|| blocking_caller(sync_cache, &stats)))
            .collect();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..a.tasks)
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
        Ok(sampler.join().expect("sampler"))
    })
    .map(|bytes| (stats, bytes))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> aiolock::Result<()> {
    let a = args();
    // One in-process store, seen by a blocking and an async cache at once.
    let store = MemoryBackend::new();
    let sync_cache: aiolock::blocking::Cache =
        aiolock::blocking::Cache::with_namespace(store.clone().into(), "demo:");
    let async_cache: aiolock::Cache = aiolock::Cache::with_namespace(store.into(), "demo:");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let started = Instant::now();
    let mut rounds = Vec::new();
    for r in 0..a.rounds {
        rounds.push(round(
            &a,
            &sync_cache,
            &async_cache,
            &runtime,
            format!("report-{r}"),
        )?);
    }
    let total = started.elapsed();

    let callers = a.threads + a.tasks;
    let sum = |f: &dyn Fn(&Stats) -> usize| rounds.iter().map(|(s, _)| f(s)).sum::<usize>();
    let n = |o: Outcome| sum(&|s| s.by_outcome[o as usize].load(Ordering::Relaxed));
    let mut lat: Vec<Duration> = rounds
        .iter()
        .flat_map(|(s, _)| s.latencies.lock().clone())
        .collect();
    lat.sort();
    let mut handoff: Vec<Duration> = rounds.iter().map(|(s, _)| s.release_to_last()).collect();
    handoff.sort();
    let mut bytes: Vec<f64> = rounds.iter().filter_map(|(_, b)| *b).collect();
    bytes.sort_by(f64::total_cmp);

    println!(
        "{callers} callers ({} threads + {} tasks) asked for one value that takes {COMPUTE:?} to compute, {} round(s)",
        a.threads, a.tasks, a.rounds
    );
    println!(
        "  computations:             {}",
        sum(&|s| s.computed.load(Ordering::Relaxed))
    );
    println!("  held the lock:            {}", n(Outcome::Acquired));
    println!("  served by the release:    {}", n(Outcome::Released));
    println!(
        "  served from the cache:    {}",
        sum(&|s| s.cache_hits.load(Ordering::Relaxed))
    );
    println!("  timed out:                {}", n(Outcome::TimedOut));
    println!(
        "  caller latency:           p50 {:?}, p99 {:?}, max {:?}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "  release -> last waiter:   p50 {:?}, p99 {:?} (over rounds; aiocache waiters poll: 50-100 ms)",
        pct(&handoff, 0.5),
        pct(&handoff, 0.99)
    );
    match bytes.get(bytes.len() / 2) {
        Some(b) => println!(
            "  heap per waiting caller:  {b:.0} bytes (median over rounds; thread stacks excluded)"
        ),
        None => {
            println!("  heap per waiting caller:  (not sampled: the callers were slow to wait)")
        }
    }
    println!("  wall time:                {total:?}");
    assert_eq!(
        sum(&|s| s.computed.load(Ordering::Relaxed)),
        a.rounds,
        "computed once per round"
    );
    Ok(())
}
