//! The watchdog's cost per held lock: `N` watched guards of one memory cache, held
//! for a while by a caller that only sleeps, so that all the work is the watchdog's.
//! Prints the renewals per second (counted where they reach the backend, expected
//! `N x 3 / lease`) and the process's CPU time meanwhile, per second and per renewal,
//! for both flavors (async: a current-thread runtime).
//!
//! ```sh
//! cargo run --release --example watchdog_bench            # N=1000, leases 300 ms and 3 s, 5 s each
//! cargo run --release --example watchdog_bench -- 1000 300 10
//! cargo run --release --example watchdog_bench -- cycles async watched 100000
//! ```

use std::time::{Duration, Instant};

use aiolock::MemoryBackend;

mod blocking_counting {
    use aiolock::blocking::Backend;
    use maybe_async::must_be_sync as maybe_async;
    include!("counting.rs");
}

mod async_counting {
    use aiolock::Backend;
    use maybe_async::must_be_async as maybe_async;
    include!("counting.rs");
}

/// The CPU time (user + system) of the whole process so far.
fn cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One measured hold: renewals and CPU over `hold`.
struct Sample {
    renewals: u64,
    cpu: Duration,
    elapsed: Duration,
}

impl Sample {
    fn print(&self, flavor: &str, n: usize, lease: Duration) {
        let secs = self.elapsed.as_secs_f64();
        let per_s = self.renewals as f64 / secs;
        let expected = n as f64 * 3.0 / lease.as_secs_f64();
        let cpu_pct = 100.0 * self.cpu.as_secs_f64() / secs;
        let per_renewal = self.cpu.as_secs_f64() * 1e6 / self.renewals.max(1) as f64;
        println!(
            "{flavor:<9} {n:>6} {:>8.0?} {per_s:>12.0} {expected:>10.0} {cpu_pct:>8.2}% {per_renewal:>10.2}",
            lease
        );
    }
}

/// About `hold`, in whole renewal periods (a third of the lease).
fn window(lease: Duration, hold: Duration) -> Duration {
    let period = lease / 3;
    let periods = (hold.as_secs_f64() / period.as_secs_f64()).round().max(1.0);
    period * periods as u32
}

fn blocking(n: usize, lease: Duration, hold: Duration) -> Sample {
    let counting = blocking_counting::Counting::new(MemoryBackend::new());
    let cache = aiolock::blocking::Cache::new(counting.clone());
    let guards: Vec<_> = (0..n)
        .map(|i| {
            let lock = cache.lock(format!("k{i}"), lease).watchdog();
            lock.acquire().unwrap().expect("free")
        })
        .collect();
    // Measured between renewals: from half a period after the acquisitions, for whole
    // periods, so that each guard is renewed the same number of times in the window.
    std::thread::sleep(lease / 6);
    let (cpu0, t0, r0) = (cpu(), Instant::now(), counting.extends());
    std::thread::sleep(window(lease, hold));
    let (cpu1, elapsed, r1) = (cpu(), t0.elapsed(), counting.extends());
    for guard in guards {
        guard.watch().unwrap().check().expect("renewed all along");
        assert!(guard.release().unwrap());
    }
    Sample {
        renewals: r1 - r0,
        cpu: cpu1 - cpu0,
        elapsed,
    }
}

fn nonblocking(n: usize, lease: Duration, hold: Duration) -> Sample {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let counting = async_counting::Counting::new(MemoryBackend::new());
        let cache = aiolock::Cache::new(counting.clone());
        let mut guards = Vec::with_capacity(n);
        for i in 0..n {
            let lock = cache.lock(format!("k{i}"), lease).watchdog();
            guards.push(lock.acquire().await.unwrap().expect("free"));
        }
        tokio::time::sleep(lease / 6).await;
        let (cpu0, t0, r0) = (cpu(), Instant::now(), counting.extends());
        tokio::time::sleep(window(lease, hold)).await;
        let (cpu1, elapsed, r1) = (cpu(), t0.elapsed(), counting.extends());
        for guard in guards {
            guard.watch().unwrap().check().expect("renewed all along");
            assert!(guard.release().await.unwrap());
        }
        Sample {
            renewals: r1 - r0,
            cpu: cpu1 - cpu0,
            elapsed,
        }
    })
}

/// `cycles FLAVOR KIND N`: N uncontended acquire+release cycles of one key, watched
/// or not (for instruction counts under callgrind, where the clock is no guide).
fn cycles(args: &[String]) {
    let [flavor, kind, n] = args else {
        panic!("cycles blocking|async watched|plain N")
    };
    let n: u32 = n.parse().expect("N");
    let watched = kind == "watched";
    let lease = Duration::from_secs(30);
    let start = Instant::now();
    if flavor == "blocking" {
        let cache = aiolock::blocking::Cache::memory();
        for _ in 0..n {
            let lock = cache.redlock("key", lease);
            let lock = if watched { lock.watchdog() } else { lock };
            assert!(lock.acquire().unwrap().release().unwrap());
        }
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = aiolock::Cache::memory();
            for _ in 0..n {
                let lock = cache.redlock("key", lease);
                let lock = if watched { lock.watchdog() } else { lock };
                assert!(lock.acquire().await.unwrap().release().await.unwrap());
            }
        });
    }
    println!("{flavor} {kind}: {:?} per cycle", start.elapsed() / n);
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("cycles") {
        return cycles(&all[1..]);
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N LEASE_MS SECONDS"))
        .collect();
    let n = args.first().copied().unwrap_or(1000) as usize;
    let leases = match args.get(1) {
        Some(ms) => vec![Duration::from_millis(*ms)],
        None => vec![Duration::from_millis(300), Duration::from_secs(3)],
    };
    let hold = Duration::from_secs(args.get(2).copied().unwrap_or(5));
    println!(
        "{:<9} {:>6} {:>8} {:>12} {:>10} {:>9} {:>10}",
        "flavor", "guards", "lease", "renewals/s", "expected", "CPU", "µs/renewal"
    );
    for lease in leases {
        blocking(n, lease, hold).print("blocking", n, lease);
        nonblocking(n, lease, hold).print("async", n, lease);
    }
}
