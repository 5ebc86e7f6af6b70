//! Memory-backend lock cycles against a `parking_lot::Mutex` lock/unlock measured in
//! the same run.
//!
//! ```sh
//! cargo bench --bench memory
//! ```
//!
//! After criterion's report it prints each cycle's mean as a ratio to the mutex.
//!
//! With `AIOLOCK_CYCLES=<cycle>:<n>` in the environment the binary skips criterion and
//! runs `n` cycles of `<cycle>` (one of the names below) after a warm-up: what
//! `scripts/bench-instructions` counts the instructions of under callgrind.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group};

const LEASE: Duration = Duration::from_secs(30);

type Blocking = aiolock::blocking::Cache;
type Async = aiolock::Cache;

/// The cycles, in report order. Each is written once and run both by criterion and by
/// the counting mode.
const CYCLES: &[&str] = &[
    "parking_lot_mutex",
    "redlock_blocking",
    "redlock_async",
    "exclusive_blocking",
    "exclusive_async",
    "exclusive_try_blocking",
    "exclusive_try_async",
    "optimistic_blocking",
    "optimistic_async",
];

fn mutex(m: &parking_lot::Mutex<u64>) {
    *black_box(m).lock() += 1;
}

fn redlock_blocking(cache: &Blocking) -> bool {
    let guard = cache.redlock(black_box("key"), LEASE).acquire().unwrap();
    guard.release().unwrap()
}

async fn redlock_async(cache: &Async) -> bool {
    let guard = cache
        .redlock(black_box("key"), LEASE)
        .acquire()
        .await
        .unwrap();
    guard.release().await.unwrap()
}

fn exclusive_blocking(cache: &Blocking) -> bool {
    let guard = cache.lock(black_box("key"), LEASE).acquire().unwrap();
    guard.unwrap().release().unwrap()
}

async fn exclusive_async(cache: &Async) -> bool {
    let guard = cache.lock(black_box("key"), LEASE).acquire().await.unwrap();
    guard.unwrap().release().await.unwrap()
}

fn exclusive_try_blocking(cache: &Blocking) -> bool {
    let guard = cache.lock(black_box("key"), LEASE).try_acquire().unwrap();
    guard.unwrap().release().unwrap()
}

async fn exclusive_try_async(cache: &Async) -> bool {
    let guard = cache
        .lock(black_box("key"), LEASE)
        .try_acquire()
        .await
        .unwrap();
    guard.unwrap().release().await.unwrap()
}

fn optimistic_blocking(cache: &Blocking) {
    let lock = cache.optimistic_lock(black_box("opt")).unwrap();
    lock.cas(b"1", None).unwrap()
}

async fn optimistic_async(cache: &Async) {
    let lock = cache.optimistic_lock(black_box("opt")).await.unwrap();
    lock.cas(b"1", None).await.unwrap()
}

struct Fixture {
    mutex: parking_lot::Mutex<u64>,
    blocking: Blocking,
    asynchronous: Async,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let blocking = Blocking::memory();
        blocking.set("opt", b"0", None).unwrap();
        let asynchronous = Async::memory();
        rt.block_on(asynchronous.set("opt", b"0", None)).unwrap();
        Fixture {
            mutex: parking_lot::Mutex::new(0),
            blocking,
            asynchronous,
            rt,
        }
    }

    /// Runs `n` cycles of `name` (false: no such cycle).
    fn run(&self, name: &str, n: u64) -> bool {
        let (b, a) = (&self.blocking, &self.asynchronous);
        macro_rules! blocking {
            ($f:ident) => {
                (0..n).for_each(|_| {
                    black_box($f(b));
                })
            };
        }
        macro_rules! asynchronous {
            ($f:ident) => {
                self.rt.block_on(async {
                    for _ in 0..n {
                        black_box($f(a).await);
                    }
                })
            };
        }
        match name {
            "parking_lot_mutex" => (0..n).for_each(|_| mutex(&self.mutex)),
            "redlock_blocking" => blocking!(redlock_blocking),
            "redlock_async" => asynchronous!(redlock_async),
            "exclusive_blocking" => blocking!(exclusive_blocking),
            "exclusive_async" => asynchronous!(exclusive_async),
            "exclusive_try_blocking" => blocking!(exclusive_try_blocking),
            "exclusive_try_async" => asynchronous!(exclusive_try_async),
            "optimistic_blocking" => blocking!(optimistic_blocking),
            "optimistic_async" => asynchronous!(optimistic_async),
            _ => return false,
        }
        true
    }
}

fn benches(c: &mut Criterion) {
    let f = Fixture::new();
    let mut g = c.benchmark_group("memory");
    g.bench_function("parking_lot_mutex", |bench| bench.iter(|| mutex(&f.mutex)));
    let (b, a) = (&f.blocking, &f.asynchronous);
    macro_rules! blocking {
        ($f:ident) => {
            g.bench_function(stringify!($f), |bench| bench.iter(|| $f(b)))
        };
    }
    macro_rules! asynchronous {
        ($f:ident) => {
            g.bench_function(stringify!($f), |bench| bench.to_async(&f.rt).iter(|| $f(a)))
        };
    }
    blocking!(redlock_blocking);
    asynchronous!(redlock_async);
    blocking!(exclusive_blocking);
    asynchronous!(exclusive_async);
    blocking!(exclusive_try_blocking);
    asynchronous!(exclusive_try_async);
    blocking!(optimistic_blocking);
    asynchronous!(optimistic_async);
    g.finish();
}

criterion_group!(memory, benches);

/// The mean of one benchmark of this run, from criterion's estimates file.
fn mean_ns(id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let path = Path::new(&dir)
        .join("criterion/memory")
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // {"mean":{"confidence_interval":{...},"point_estimate":12.3,...
    let mean = text.split("\"mean\"").nth(1)?;
    let at = mean.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    mean[at..].split([',', '}']).next()?.trim().parse().ok()
}

/// `AIOLOCK_CYCLES=<cycle>:<n>`: a warm-up, then `n` cycles, nothing else.
fn count_mode(spec: &str) {
    let (name, n) = spec
        .split_once(':')
        .and_then(|(name, n)| Some((name, n.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("AIOLOCK_CYCLES={spec:?}: expected <cycle>:<count>"));
    let f = Fixture::new();
    // The warm-up: the first cycles seed the token generator, size the map, start
    // the runtime's context, and (the pause) let the blocking flavor's clock calibrate.
    // The same work in every run, so that two runs differ only by their cycles.
    assert!(f.run(name, 100), "no cycle {name:?}; one of {CYCLES:?}");
    std::thread::sleep(Duration::from_millis(20));
    f.run(name, 100);
    f.run(name, n);
}

fn main() {
    if let Ok(spec) = std::env::var("AIOLOCK_CYCLES") {
        return count_mode(&spec);
    }
    memory();
    Criterion::default().configure_from_args().final_summary();
    let Some(base) = mean_ns("parking_lot_mutex") else {
        return; // filtered run or `--list`
    };
    println!("\n{:<24} {:>10} {:>10}", "cycle", "mean", "× mutex");
    for id in CYCLES {
        if let Some(ns) = mean_ns(id) {
            println!("{id:<24} {:>8.1}ns {:>9.1}×", ns, ns / base);
        }
    }
}
