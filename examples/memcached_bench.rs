//! The memcached benchmark table: starts its own memcached (loopback TCP), measures
//! in one run the raw round-trip ceiling (`mn` pings on the same pool), the
//! uncontended owner-checked lock cycle (acquire + release = 3 round trips), unfenced
//! and fenced (still 3 round trips: the fence travels in the claim's write), at
//! concurrency 1 and 64 in both flavors, and the cross-process hand-off latency.
//!
//! In the same run it also compares the uncontended cycle on one server and on a pool
//! of three (slices alternating), counts the polls the server runs while 1, 1,000 and
//! 1,000 + 64 waiters of this process wait on one key (they share one poll loop), and
//! times the hand-off to 1,000 waiters.
//!
//! ```text
//! cargo run --release --features memcached --example memcached_bench [-- SECONDS TRIALS [TABLES]]
//! ```
//!
//! SECONDS (default 0.2) is the length of one measurement slice; ceiling, cycle and
//! fenced-cycle slices alternate 15 times per row and the mean rates are shown (so do
//! the one-server and pool slices). TRIALS (default 60) is the number of hand-offs per
//! row. TABLES (default `cycles,pool,polls,handoff`) picks the tables.
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

/// Calls `f(worker)` in a loop on `concurrency` threads for `secs` (after a 20 ms
/// warm-up): the calls per second.
fn blocking_run(concurrency: usize, secs: f64, f: &(dyn Fn(usize) + Sync)) -> f64 {
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
}

/// [`blocking_run`] for async calls: `concurrency` tasks.
async fn async_run<F, Fut>(concurrency: usize, secs: f64, f: F) -> f64
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

/// One uncontended cycle of worker `w` (its own key), blocking.
fn blocking_cycle<B: aiolock::blocking::Backend>(
    cache: &aiolock::blocking::Cache<B>,
    w: usize,
    fenced: bool,
) {
    let lock = cache.redlock(format!("cycle{w}"), Duration::from_secs(10));
    let lock = if fenced { lock.fenced() } else { lock };
    let g = lock.acquire().unwrap();
    assert!(g.is_acquired());
    assert!(g.release().unwrap());
}

/// One uncontended cycle of worker `w` (its own key), async.
async fn async_cycle<B: aiolock::Backend>(cache: aiolock::Cache<B>, w: usize, fenced: bool) {
    let lock = cache.redlock(format!("cycle{w}"), Duration::from_secs(10));
    let lock = if fenced { lock.fenced() } else { lock };
    let g = lock.acquire().await.unwrap();
    assert!(g.is_acquired());
    assert!(g.release().await.unwrap());
}

/// `url` with `pool_size=<concurrency>` added to its options.
fn sized(url: &str, concurrency: usize) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}pool_size={concurrency}")
}

fn blocking_rates(url: &str, concurrency: usize, secs: f64) -> Rates {
    let backend = aiolock::blocking::MemcachedBackend::connect(&sized(url, concurrency)).unwrap();
    let cache = aiolock::blocking::Cache::new(backend.clone());
    let mut ceilings = Vec::new();
    let mut cycles = Vec::new();
    let mut fenced = Vec::new();
    for _ in 0..ROUNDS {
        ceilings.push(blocking_run(concurrency, secs, &|_| {
            backend.ping().unwrap()
        }));
        for (fence, rates) in [(false, &mut cycles), (true, &mut fenced)] {
            rates.push(blocking_run(concurrency, secs, &|w| {
                blocking_cycle(&cache, w, fence)
            }));
        }
    }
    Rates::from_rounds(ceilings, cycles, fenced)
}

fn async_rates(rt: &tokio::runtime::Runtime, url: &str, concurrency: usize, secs: f64) -> Rates {
    rt.block_on(async {
        let backend = aiolock::MemcachedBackend::connect(&sized(url, concurrency))
            .await
            .unwrap();
        let cache = aiolock::Cache::new(backend.clone());
        let mut ceilings = Vec::new();
        let mut cycles = Vec::new();
        let mut fenced = Vec::new();
        for _ in 0..ROUNDS {
            let b = backend.clone();
            ceilings.push(
                async_run(concurrency, secs, move |_| {
                    let b = b.clone();
                    async move { b.ping().await.unwrap() }
                })
                .await,
            );
            for (fence, rates) in [(false, &mut cycles), (true, &mut fenced)] {
                let cache = cache.clone();
                rates.push(
                    async_run(concurrency, secs, move |w| {
                        async_cycle(cache.clone(), w, fence)
                    })
                    .await,
                );
            }
        }
        Rates::from_rounds(ceilings, cycles, fenced)
    })
}

/// Uncontended cycles/s of one cache per URL of `urls`, in slices alternating
/// `ROUNDS` times in one run (the order reversed every other round): each URL's
/// rate per round.
fn alternating_cycles(
    rt: &tokio::runtime::Runtime,
    urls: &[&str],
    flavor: &str,
    concurrency: usize,
    secs: f64,
) -> Vec<Vec<f64>> {
    let mut rates = vec![Vec::new(); urls.len()];
    let order = |round: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (0..urls.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    };
    if flavor == "blocking" {
        let caches: Vec<_> = urls
            .iter()
            .map(|url| aiolock::blocking::Cache::from_url(&sized(url, concurrency)).unwrap())
            .collect();
        for round in 0..ROUNDS {
            for i in order(round) {
                let cache = &caches[i];
                rates[i].push(blocking_run(concurrency, secs, &|w| {
                    blocking_cycle(cache, w, false)
                }));
            }
        }
    } else {
        rt.block_on(async {
            let mut caches = Vec::new();
            for url in urls {
                let url = sized(url, concurrency);
                caches.push(aiolock::Cache::from_url(&url).await.unwrap());
            }
            for round in 0..ROUNDS {
                for i in order(round) {
                    let cache = caches[i].clone();
                    let run = async_run(concurrency, secs, move |w| {
                        async_cycle(cache.clone(), w, false)
                    });
                    rates[i].push(run.await);
                }
            }
        });
    }
    rates
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The median of the per-round ratios `a[i] / b[i]`.
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The waiters of a memcached cache registered on the shared poll loop of `lock_key`.
fn polling(cache: &aiolock::Cache, lock_key: &str) -> usize {
    match cache.backend() {
        aiolock::AnyBackend::Memcached(b) => b.polling_waiters(lock_key),
        _ => unreachable!("a memcached cache"),
    }
}

/// Waits (polling the registry) until `n` waiters are registered on `lock_key`.
async fn registered(cache: &aiolock::Cache, lock_key: &str, n: usize) {
    let start = Instant::now();
    while polling(cache, lock_key) < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} waiters never registered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The polls per second the server runs (`cmd_get`) while `tasks` async tasks and
/// `threads` blocking threads of this process wait on one held key, over `secs`.
fn polls_per_second(
    rt: &tokio::runtime::Runtime,
    server: &server::MemcachedServer,
    tasks: usize,
    threads: usize,
    secs: f64,
) -> f64 {
    let url = server.url();
    let lease = Duration::from_secs(60);
    let blocking = aiolock::blocking::Cache::from_url(&url).unwrap();
    rt.block_on(async {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let held = cache.redlock("polled", lease).acquire().await.unwrap();
        assert!(held.is_acquired());
        let task_waiters: Vec<_> = (0..tasks)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.redlock("polled", lease).acquire().await.unwrap() })
            })
            .collect();
        let thread_waiters: Vec<_> = (0..threads)
            .map(|_| {
                let cache = blocking.clone();
                std::thread::spawn(move || {
                    cache.redlock("polled", lease).acquire().unwrap().outcome()
                })
            })
            .collect();
        registered(&cache, "polled-lock", tasks + threads).await;
        let before = server.stat("cmd_get");
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let polls = server.stat("cmd_get") - before;
        assert!(held.release().await.unwrap());
        for t in task_waiters {
            assert_eq!(t.await.unwrap().outcome(), Outcome::Released);
        }
        for t in thread_waiters {
            assert_eq!(t.join().unwrap(), Outcome::Released);
        }
        polls as f64 / secs
    })
}

/// Hand-off latencies in µs: from the holder's release (in another process) to the
/// first and to the last of `waiters` waiters (async tasks, or one blocking thread)
/// returning `Released`, the waiters having waited `hold` first (registered on the
/// key's shared poll loop), async waiters on a runtime of `workers` threads. Each
/// sorted.
fn hand_off(
    url: &str,
    trials: usize,
    hold: Duration,
    (flavor, waiters, workers): (&str, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
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
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let blocking_cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let async_cache = rt.block_on(aiolock::Cache::from_url(url)).unwrap();
    let (mut first, mut last) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
    for _ in 0..trials {
        assert_eq!(ask("acquire"), "ACQUIRED");
        let woke: Box<dyn FnOnce() -> Vec<(Outcome, i128)>> = if flavor == "blocking" {
            assert_eq!(waiters, 1, "one blocking waiter");
            let cache = blocking_cache.clone();
            let t = std::thread::spawn(move || {
                let g = cache
                    .redlock("handoff", Duration::from_secs(30))
                    .acquire()
                    .unwrap();
                (g.outcome(), unix_nanos())
            });
            Box::new(move || vec![t.join().unwrap()])
        } else {
            let tasks: Vec<_> = (0..waiters)
                .map(|_| {
                    let cache = async_cache.clone();
                    rt.spawn(async move {
                        let g = cache
                            .redlock("handoff", Duration::from_secs(30))
                            .acquire()
                            .await
                            .unwrap();
                        (g.outcome(), unix_nanos())
                    })
                })
                .collect();
            if waiters > 1 {
                rt.block_on(registered(&async_cache, "handoff-lock", waiters));
            }
            let handle = rt.handle().clone();
            Box::new(move || {
                tasks
                    .into_iter()
                    .map(|t| handle.block_on(t).unwrap())
                    .collect()
            })
        };
        std::thread::sleep(hold);
        let answer = ask("release");
        let released_at: i128 = answer
            .strip_prefix("RELEASED ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("holder said {answer:?}"));
        let woken = woke();
        assert!(woken.iter().all(|(o, _)| *o == Outcome::Released));
        let at = |t: i128| (t - released_at) as f64 / 1000.0;
        first.push(at(woken.iter().map(|w| w.1).min().unwrap()));
        last.push(at(woken.iter().map(|w| w.1).max().unwrap()));
    }
    drop(stdin);
    let _ = child.wait();
    first.sort_by(f64::total_cmp);
    last.sort_by(f64::total_cmp);
    (first, last)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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
    let tables = args
        .get(3)
        .map_or("cycles,pool,polls,handoff", String::as_str);
    let table = |name: &str| tables.split(',').any(|t| t == name);

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if table("cycles") {
        println!(
            "A bare socket (one std TcpStream, no client library) does {:.0} `mn` round trips/s.",
            bare_round_trips(&server, secs * ROUNDS as f64)
        );
        println!();
        println!(
            "| flavor | concurrency | round trips/s (mn ceiling) | lock cycles/s (3 round trips) | cycles ÷ (ceiling/3) | fenced cycles/s (3 round trips) | fenced ÷ unfenced |"
        );
        println!("|---|---|---|---|---|---|---|");
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
        println!();
    }
    if table("pool") {
        let pool = server::MemcachedPool::tcp();
        let pool_url = pool.url("ketama");
        println!("Uncontended cycles/s, one server vs a pool of 3 (ketama), slices alternating in");
        println!(
            "one run: the means, and the median of the per-round ratios; \"one server again\""
        );
        println!("is a second cache on the same server, for the noise (every server and the");
        println!("client share this machine's CPUs).");
        println!();
        println!(
            "| flavor | concurrency | one server | pool of 3 | pool ÷ one (median) | one server again ÷ one (median) |"
        );
        println!("|---|---|---|---|---|---|");
        for concurrency in [1, 64] {
            for flavor in ["blocking", "async"] {
                let urls = [url.as_str(), url.as_str(), pool_url.as_str()];
                let r = alternating_cycles(&rt, &urls, flavor, concurrency, secs);
                println!(
                    "| {flavor} | {concurrency} | {:.0} | {:.0} | {:.3} | {:.3} |",
                    mean(&r[0]),
                    mean(&r[2]),
                    median_ratio(&r[2], &r[0]),
                    median_ratio(&r[1], &r[0]),
                );
            }
        }
        println!();
    }
    if table("polls") {
        println!("Polls/s the server runs (`cmd_get`) while waiters of this process wait on one");
        println!("held key (one shared poll loop); 5 alternating rounds of 1 s each.");
        println!();
        println!("| waiters | polls/s mean | min | max |");
        println!("|---|---|---|---|");
        let configs = [(1, 0), (1000, 0), (1000, 64)];
        let mut rates = vec![Vec::new(); configs.len()];
        for _ in 0..5 {
            for (&(tasks, threads), rates) in configs.iter().zip(rates.iter_mut()) {
                rates.push(polls_per_second(&rt, &server, tasks, threads, 1.0));
            }
        }
        for (&(tasks, threads), rates) in configs.iter().zip(&rates) {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rates.iter().copied().fold(0.0, f64::max);
            let who = match threads {
                0 => format!("{tasks} task(s)"),
                _ => format!("{tasks} tasks + {threads} threads"),
            };
            println!("| {who} | {mean:.0} | {min:.0} | {max:.0} |");
        }
        println!();
    }
    drop(rt);
    if table("handoff") {
        println!("Cross-process hand-off: holder in a child process, waiters here; latency from");
        println!("the holder's release returning to the first (and the last) waiter's acquire");
        println!("returning `Released`. Async waiters on a tokio runtime of 1 or 2 workers.");
        println!();
        println!(
            "| waiters | max_poll_interval | waited before the release | trials | first: p50 | p90 | max | last: p50 |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let fast = format!("{url}?max_poll_interval=0.002");
        let (short, long) = (Duration::from_millis(5), Duration::from_millis(200));
        let default = "4 ms (default)";
        let rows = [
            (("blocking", 1, 1), short, &url, default),
            (("blocking", 1, 1), long, &url, default),
            (("blocking", 1, 1), long, &fast, "2 ms"),
            (("async", 1, 1), short, &url, default),
            (("async", 1, 1), long, &url, default),
            (("async", 1, 1), long, &fast, "2 ms"),
            (("async", 1000, 1), long, &url, default),
            (("async", 1, 2), long, &url, default),
            (("async", 1000, 2), long, &url, default),
        ];
        for (who, hold, url, poll) in rows {
            let (first, last) = hand_off(url, trials, hold, who);
            let who = match who {
                ("blocking", _, _) => "1 thread".to_string(),
                (_, 1, workers) => format!("1 task ({workers} worker{})", plural(workers)),
                (_, n, workers) => format!("{n} tasks ({workers} worker{})", plural(workers)),
            };
            println!(
                "| {who} | {poll} | {hold:?} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
                first.len(),
                percentile(&first, 0.5),
                percentile(&first, 0.9),
                percentile(&first, 1.0),
                percentile(&last, 0.5)
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
