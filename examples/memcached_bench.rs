//! The memcached benchmark table: starts its own memcached (loopback TCP), measures
//! in one run the raw round-trip ceiling (`mn` pings on the same pool), the
//! uncontended owner-checked lock cycle (acquire + release = 3 round trips), unfenced
//! and fenced (still 3 round trips: the fence travels in the claim's write), at
//! concurrency 1 and 64 in both flavors, and the cross-process hand-off latency.
//!
//! ```text
//! cargo run --release --features memcached --example memcached_bench [-- SECONDS TRIALS]
//! ```
//!
//! SECONDS (default 0.2) is the length of one measurement slice; ceiling, cycle and
//! fenced-cycle slices alternate 15 times per row and the mean rates are shown. TRIALS (default
//! 60) is the number of hand-offs per row.
//!
//! `MEMCACHED_BIN` picks the server binary (default: `memcached` on the PATH).

#[path = "../tests/support/memcached.rs"]
mod server;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aiolock::Outcome;

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `--holder URL`: the other process of the hand-off trials. Reads `acquire` /
/// `release` on stdin; answers `ACQUIRED` / `RELEASED <unix nanos after the release>`.
fn holder(url: &str) {
    let cache = aiolock::blocking::Cache::from_url(url).expect("holder connects");
    let mut guard = None;
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "acquire" => {
                let g = cache
                    .redlock("handoff", Duration::from_secs(30))
                    .acquire()
                    .expect("acquire");
                assert!(g.is_acquired(), "the holder must win");
                guard = Some(g);
                writeln!(out, "ACQUIRED").unwrap();
            }
            "release" => {
                let released = guard.take().expect("held").release().expect("release");
                let at = unix_nanos();
                assert!(released);
                writeln!(out, "RELEASED {at}").unwrap();
            }
            other => panic!("unknown command {other:?}"),
        }
        out.flush().unwrap();
    }
}

/// Ceiling and cycle runs alternate this many times in short slices; the table shows
/// the mean rates (the machine may be shared: fine alternation spreads other load
/// evenly over both).
const ROUNDS: usize = 15;

struct Rates {
    ceiling: f64,
    cycles: f64,
    fenced: f64,
}

impl Rates {
    fn from_rounds(ceilings: Vec<f64>, cycles: Vec<f64>, fenced: Vec<f64>) -> Self {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        Rates {
            ceiling: mean(&ceilings),
            cycles: mean(&cycles),
            fenced: mean(&fenced),
        }
    }
}

fn blocking_rates(url: &str, concurrency: usize, secs: f64) -> Rates {
    let url = format!("{url}?pool_size={concurrency}");
    let backend = aiolock::blocking::MemcachedBackend::connect(&url).unwrap();
    let cache = aiolock::blocking::Cache::new(backend.clone());
    let run = |f: &(dyn Fn(usize) + Sync)| -> f64 {
        let count = AtomicU64::new(0);
        let warm = Instant::now() + Duration::from_millis(20);
        let end = warm + Duration::from_secs_f64(secs);
        std::thread::scope(|s| {
            for w in 0..concurrency {
                let count = &count;
                s.spawn(move || {
                    while Instant::now() < warm {
                        f(w);
                    }
                    let mut n = 0;
                    while Instant::now() < end {
                        f(w);
                        n += 1;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        count.load(Ordering::Relaxed) as f64 / secs
    };
    let mut ceilings = Vec::new();
    let mut cycles = Vec::new();
    let mut fenced = Vec::new();
    for _ in 0..ROUNDS {
        ceilings.push(run(&|_| backend.ping().unwrap()));
        for (fence, rates) in [(false, &mut cycles), (true, &mut fenced)] {
            rates.push(run(&|w| {
                let lock = cache.redlock(format!("cycle{w}"), Duration::from_secs(10));
                let lock = if fence { lock.fenced() } else { lock };
                let g = lock.acquire().unwrap();
                assert!(g.is_acquired());
                assert!(g.release().unwrap());
            }));
        }
    }
    Rates::from_rounds(ceilings, cycles, fenced)
}

fn async_rates(rt: &tokio::runtime::Runtime, url: &str, concurrency: usize, secs: f64) -> Rates {
    rt.block_on(async {
        let url = format!("{url}?pool_size={concurrency}");
        let backend = aiolock::MemcachedBackend::connect(&url).await.unwrap();
        let cache = aiolock::Cache::new(backend.clone());
        async fn run<F, Fut>(concurrency: usize, secs: f64, f: F) -> f64
        where
            F: Fn(usize) -> Fut + Clone + Send + 'static,
            Fut: Future<Output = ()> + Send,
        {
            let count = Arc::new(AtomicU64::new(0));
            let warm = Instant::now() + Duration::from_millis(20);
            let end = warm + Duration::from_secs_f64(secs);
            let tasks: Vec<_> = (0..concurrency)
                .map(|w| {
                    let f = f.clone();
                    let count = Arc::clone(&count);
                    tokio::spawn(async move {
                        while Instant::now() < warm {
                            f(w).await;
                        }
                        let mut n = 0;
                        while Instant::now() < end {
                            f(w).await;
                            n += 1;
                        }
                        count.fetch_add(n, Ordering::Relaxed);
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            count.load(Ordering::Relaxed) as f64 / secs
        }
        let mut ceilings = Vec::new();
        let mut cycles = Vec::new();
        let mut fenced = Vec::new();
        for _ in 0..ROUNDS {
            let b = backend.clone();
            ceilings.push(
                run(concurrency, secs, move |_| {
                    let b = b.clone();
                    async move { b.ping().await.unwrap() }
                })
                .await,
            );
            for (fence, rates) in [(false, &mut cycles), (true, &mut fenced)] {
                let cache = cache.clone();
                rates.push(
                    run(concurrency, secs, move |w| {
                        let cache = cache.clone();
                        async move {
                            let lock = cache.redlock(format!("cycle{w}"), Duration::from_secs(10));
                            let lock = if fence { lock.fenced() } else { lock };
                            let g = lock.acquire().await.unwrap();
                            assert!(g.is_acquired());
                            assert!(g.release().await.unwrap());
                        }
                    })
                    .await,
                );
            }
        }
        Rates::from_rounds(ceilings, cycles, fenced)
    })
}

/// Hand-off latencies in µs: from the holder's release (in another process) to the
/// waiter's return with `Released`, the waiter having waited `hold` first.
fn hand_off(url: &str, trials: usize, hold: Duration, flavor: &str) -> Vec<f64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--holder", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("holder process");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |command: &str| -> String {
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let blocking_cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let async_cache = rt.block_on(aiolock::Cache::from_url(url)).unwrap();
    let mut latencies = Vec::with_capacity(trials);
    for _ in 0..trials {
        assert_eq!(ask("acquire"), "ACQUIRED");
        let woke: Box<dyn FnOnce() -> (Outcome, i128)> = if flavor == "blocking" {
            let cache = blocking_cache.clone();
            let t = std::thread::spawn(move || {
                let g = cache
                    .redlock("handoff", Duration::from_secs(30))
                    .acquire()
                    .unwrap();
                (g.outcome(), unix_nanos())
            });
            Box::new(move || t.join().unwrap())
        } else {
            let cache = async_cache.clone();
            let t = rt.spawn(async move {
                let g = cache
                    .redlock("handoff", Duration::from_secs(30))
                    .acquire()
                    .await
                    .unwrap();
                (g.outcome(), unix_nanos())
            });
            let handle = rt.handle().clone();
            Box::new(move || handle.block_on(t).unwrap())
        };
        std::thread::sleep(hold);
        let answer = ask("release");
        let released_at: i128 = answer
            .strip_prefix("RELEASED ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("holder said {answer:?}"));
        let (outcome, woke_at) = woke();
        assert_eq!(outcome, Outcome::Released);
        latencies.push((woke_at - released_at) as f64 / 1000.0);
    }
    drop(stdin);
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--holder") {
        holder(&args[2]);
        return;
    }
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.2);
    let trials: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);

    let server = server::MemcachedServer::tcp();
    let url = server.url();
    println!(
        "memcached {} on {url}; {} CPUs; load average {}",
        memcached_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "A bare socket (one std TcpStream, no client library) does {:.0} `mn` round trips/s.",
        bare_round_trips(&server, secs * ROUNDS as f64)
    );
    println!();
    println!(
        "| flavor | concurrency | round trips/s (mn ceiling) | lock cycles/s (3 round trips) | cycles ÷ (ceiling/3) | fenced cycles/s (3 round trips) | fenced ÷ unfenced |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for concurrency in [1, 64] {
        for flavor in ["blocking", "async"] {
            let r = if flavor == "blocking" {
                blocking_rates(&url, concurrency, secs)
            } else {
                async_rates(&rt, &url, concurrency, secs)
            };
            println!(
                "| {flavor} | {concurrency} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
                r.ceiling,
                r.cycles,
                r.cycles / (r.ceiling / 3.0),
                r.fenced,
                r.fenced / r.cycles
            );
        }
    }
    drop(rt);
    println!();
    println!("Cross-process hand-off: holder in a child process, waiter here; latency from");
    println!("the holder's release returning to the waiter's acquire returning `Released`.");
    println!();
    println!(
        "| waiter | max_poll_interval | waited before the release | trials | p50 | p90 | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    let fast = format!("{url}?max_poll_interval=0.002");
    for flavor in ["blocking", "async"] {
        for (hold, url, poll) in [
            (Duration::from_millis(5), &url, "4 ms (default)"),
            (Duration::from_millis(200), &url, "4 ms (default)"),
            (Duration::from_millis(200), &fast, "2 ms"),
        ] {
            let l = hand_off(url, trials, hold, flavor);
            println!(
                "| {flavor} | {poll} | {hold:?} | {} | {:.0} µs | {:.0} µs | {:.0} µs |",
                l.len(),
                percentile(&l, 0.5),
                percentile(&l, 0.9),
                percentile(&l, 1.0)
            );
        }
    }
}

/// `mn` round trips per second on one bare blocking socket: what the client's own
/// overhead (pool, codec, timeouts) is measured against.
fn bare_round_trips(server: &server::MemcachedServer, secs: f64) -> f64 {
    use std::io::Read;
    let server::Listen::Tcp(port) = server.listen() else {
        panic!("a TCP server")
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut reply = [0u8; 4];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        s.write_all(b"mn\r\n").unwrap();
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"MN\r\n");
        n += 1;
    }
    n as f64 / secs
}

fn memcached_version() -> String {
    let bin = std::env::var_os("MEMCACHED_BIN").unwrap_or_else(|| "memcached".into());
    Command::new(bin)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
