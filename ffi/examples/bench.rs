//! The Rust side of `ffi/bench.sh`: memory-backend acquire + release through the
//! blocking API, the same loop the C, Go and Ruby benchmarks run through the C ABI.
//!
//! Prints `ns_per_op <n>` (the best of five rounds). Usage: `bench [iterations]`.

use std::time::{Duration, Instant};

use aiolock::blocking::Cache;

fn main() -> aiolock::Result<()> {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let cache = Cache::from_url("memory://")?;
    let lease = Duration::from_secs(10);
    let mut best = f64::INFINITY;
    for _round in 0..5 {
        let start = Instant::now();
        for _ in 0..iterations {
            let guard = cache.redlock("bench", lease).acquire()?;
            assert!(guard.release()?);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / f64::from(iterations));
    }
    println!("ns_per_op {best:.1}");
    Ok(())
}
