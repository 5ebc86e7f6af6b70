//! Memory-backend lock cycles against a `parking_lot::Mutex` lock/unlock measured in
//! the same run.
//!
//! ```sh
//! cargo bench --bench memory
//! ```
//!
//! After criterion's report it prints each cycle's mean as a ratio to the mutex.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group};

const LEASE: Duration = Duration::from_secs(30);

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory");

    let mutex = parking_lot::Mutex::new(0u64);
    g.bench_function("parking_lot_mutex", |b| {
        b.iter(|| *black_box(&mutex).lock() += 1)
    });

    let cache = aiolock::blocking::Cache::memory();
    g.bench_function("redlock_blocking", |b| {
        b.iter(|| {
            let guard = cache.redlock(black_box("key"), LEASE).acquire().unwrap();
            guard.release().unwrap()
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acache = aiolock::Cache::memory();
    g.bench_function("redlock_async", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = acache
                .redlock(black_box("key"), LEASE)
                .acquire()
                .await
                .unwrap();
            guard.release().await.unwrap()
        })
    });

    // The watchdog's cost on the cycle: register the guard with the cache's worker at
    // acquisition, take it out at release (the worker thread is started by the first).
    g.bench_function("redlock_blocking_watched", |b| {
        b.iter(|| {
            let lock = cache.redlock(black_box("key"), LEASE).watchdog();
            lock.acquire().unwrap().release().unwrap()
        })
    });

    g.bench_function("redlock_async_watched", |b| {
        b.to_async(&rt).iter(|| async {
            let lock = acache.redlock(black_box("key"), LEASE).watchdog();
            lock.acquire().await.unwrap().release().await.unwrap()
        })
    });

    cache.set("opt", b"0", None).unwrap();
    g.bench_function("optimistic_blocking", |b| {
        b.iter(|| {
            let lock = cache.optimistic_lock(black_box("opt")).unwrap();
            lock.cas(b"1", None).unwrap()
        })
    });

    rt.block_on(acache.set("opt", b"0", None)).unwrap();
    g.bench_function("optimistic_async", |b| {
        b.to_async(&rt).iter(|| async {
            let lock = acache.optimistic_lock(black_box("opt")).await.unwrap();
            lock.cas(b"1", None).await.unwrap()
        })
    });
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

fn main() {
    memory();
    Criterion::default().configure_from_args().final_summary();
    let Some(base) = mean_ns("parking_lot_mutex") else {
        return; // filtered run or `--list`
    };
    println!("\n{:<26} {:>10} {:>10}", "cycle", "mean", "× mutex");
    for id in [
        "parking_lot_mutex",
        "redlock_blocking",
        "redlock_async",
        "redlock_blocking_watched",
        "redlock_async_watched",
        "optimistic_blocking",
        "optimistic_async",
    ] {
        if let Some(ns) = mean_ns(id) {
            println!("{id:<26} {:>8.1}ns {:>9.1}×", ns, ns / base);
        }
    }
}
