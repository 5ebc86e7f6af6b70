//! Redis-backend acquire+release cycles on a `redis-server` the bench starts itself
//! (unix socket), blocking and async, unfenced and fenced (the fence's `INCR` runs in
//! the claim script: still two round trips), next to a bare `SET` round trip on the
//! same connection kind (the floor of one cycle's two round trips).
//!
//! ```sh
//! cargo bench --bench redis --features redis
//! ```
//!
//! The full table (redis-benchmark ceiling, rslock, c=64, cross-process hand-off) is
//! `cargo run --release --example redis_bench --features redis`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod fixture;

const LEASE: Duration = Duration::from_secs(30);

fn benches(c: &mut Criterion) {
    let server = fixture::RedisServer::start();
    let url = server.unix_url("namespace=bench:");
    let mut g = c.benchmark_group("redis");

    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    g.bench_function("set_blocking", |b| {
        b.iter(|| cache.set(black_box("k"), b"v", None).unwrap())
    });
    g.bench_function("redlock_cycle_blocking", |b| {
        b.iter(|| {
            let guard = cache.redlock(black_box("key"), LEASE).acquire().unwrap();
            guard.release().unwrap()
        })
    });
    g.bench_function("redlock_cycle_fenced_blocking", |b| {
        b.iter(|| {
            let lock = cache.redlock(black_box("fenced"), LEASE).fenced();
            let guard = lock.acquire().unwrap();
            guard.release().unwrap()
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acache = rt.block_on(aiolock::Cache::from_url(&url)).unwrap();
    g.bench_function("set_async", |b| {
        b.to_async(&rt)
            .iter(|| async { acache.set(black_box("k"), b"v", None).await.unwrap() })
    });
    g.bench_function("redlock_cycle_async", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = acache
                .redlock(black_box("key"), LEASE)
                .acquire()
                .await
                .unwrap();
            guard.release().await.unwrap()
        })
    });
    g.bench_function("redlock_cycle_fenced_async", |b| {
        b.to_async(&rt).iter(|| async {
            let lock = acache.redlock(black_box("fenced"), LEASE).fenced();
            let guard = lock.acquire().await.unwrap();
            guard.release().await.unwrap()
        })
    });
    g.finish();
    drop(server);
}

criterion_group!(redis, benches);
criterion_main!(redis);
