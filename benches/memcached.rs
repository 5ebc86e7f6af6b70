//! Criterion benchmarks of the memcached backend against a memcached this benchmark
//! starts (loopback TCP): one round trip (`mn`), and the owner-checked lock cycle
//! (acquire + release = 3 round trips), unfenced and fenced (the fence's `ma` and
//! the read that verifies it travel in the claim's write: still 3 round trips),
//! blocking and async, one caller.
//!
//! `cargo bench --features memcached --bench memcached`. For concurrency 64 and the
//! cross-process hand-off, see `examples/memcached_bench.rs`.

#[path = "../tests/support/memcached.rs"]
mod server;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn memcached(c: &mut Criterion) {
    let server = server::MemcachedServer::tcp();
    let url = server.url();
    let mut group = c.benchmark_group("memcached");
    group.measurement_time(Duration::from_secs(3));

    let backend = aiolock::blocking::MemcachedBackend::connect(&url).unwrap();
    let cache = aiolock::blocking::Cache::new(backend.clone());
    group.bench_function("blocking/round_trip", |b| {
        b.iter(|| backend.ping().unwrap())
    });
    group.bench_function("blocking/lock_cycle", |b| {
        b.iter(|| {
            let g = cache
                .redlock("bench", Duration::from_secs(10))
                .acquire()
                .unwrap();
            assert!(g.release().unwrap());
        })
    });
    group.bench_function("blocking/lock_cycle_fenced", |b| {
        b.iter(|| {
            let g = cache
                .redlock("bench-fenced", Duration::from_secs(10))
                .fenced()
                .acquire()
                .unwrap();
            assert!(g.release().unwrap());
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = rt
        .block_on(aiolock::MemcachedBackend::connect(&url))
        .unwrap();
    let cache = aiolock::Cache::new(backend.clone());
    group.bench_function("async/round_trip", |b| {
        b.to_async(&rt)
            .iter(|| async { backend.ping().await.unwrap() })
    });
    group.bench_function("async/lock_cycle", |b| {
        b.to_async(&rt).iter(|| async {
            let g = cache
                .redlock("bench", Duration::from_secs(10))
                .acquire()
                .await
                .unwrap();
            assert!(g.release().await.unwrap());
        })
    });
    group.bench_function("async/lock_cycle_fenced", |b| {
        b.to_async(&rt).iter(|| async {
            let g = cache
                .redlock("bench-fenced", Duration::from_secs(10))
                .fenced()
                .acquire()
                .await
                .unwrap();
            assert!(g.release().await.unwrap());
        })
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, memcached);
criterion_main!(benches);
