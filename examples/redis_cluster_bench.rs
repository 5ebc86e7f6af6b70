//! Prints the Redis Cluster rows of the README: starts a Redis Cluster of three
//! masters and one single `redis-server`, all on loopback TCP (the same transport for
//! both), then measures, in one run,
//! - uncontended acquire+release cycles/s of aiolock on the single server and on the
//!   cluster: blocking c=1, async c=1 and c=64 (one multiplexed connection; on the
//!   cluster one per master, the 64 keys spread over the three), best of 3 rounds,
//!   the rows measured in turns;
//! - the commands the servers ran per cycle (`INFO commandstats` after
//!   `CONFIG RESETSTAT`, summed over the masters), to show that a cycle on the
//!   cluster is still one `SET` and one `EVALSHA` (the script's own `GET`, `DEL` and
//!   `SPUBLISH` run inside that call, on the key's master).
//!
//! ```text
//! cargo run --release --example redis_cluster_bench --features redis -- [seconds per row]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod support {
    #[path = "../../tests/support/redis.rs"]
    pub mod redis;
    #[path = "../../tests/support/redis_cluster.rs"]
    pub mod redis_cluster;
}

use support::redis::{Config, RedisServer};
use support::redis_cluster::RedisCluster;

const LEASE: Duration = Duration::from_secs(10);

/// Cycles counted for the commands-per-cycle table.
const COUNTED: u64 = 10_000;

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let per_row = Duration::from_secs_f64(secs);
    let single = RedisServer::with(Config {
        tcp: true,
        args: Vec::new(),
    });
    let cluster = RedisCluster::start();
    let single_url = format!("redis://127.0.0.1:{}/?namespace=bench:", single.port());
    let cluster_url = cluster.url("namespace=bench:");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "redis-server {}; one server and a cluster of 3 masters, loopback TCP; best of 3 \
         rounds of {secs} s per row; async rows on a current-thread tokio runtime",
        version()
    );

    let mut best = [0f64; 6];
    for _round in 0..3 {
        let rates = [
            blocking_cycles(&single_url, per_row),
            blocking_cycles(&cluster_url, per_row),
            rt.block_on(async_cycles(&single_url, 1, per_row)),
            rt.block_on(async_cycles(&cluster_url, 1, per_row)),
            rt.block_on(async_cycles(&single_url, 64, per_row)),
            rt.block_on(async_cycles(&cluster_url, 64, per_row)),
        ];
        for (b, r) in best.iter_mut().zip(rates) {
            *b = b.max(r);
        }
    }
    let [
        b_single,
        b_cluster,
        a1_single,
        a1_cluster,
        a64_single,
        a64_cluster,
    ] = best;

    let singles = [&single];
    let masters: Vec<&RedisServer> = cluster.nodes.iter().collect();
    let counts = [
        (
            "one server, blocking c=1",
            per_cycle(&singles, || {
                counted_blocking(&single_url);
            }),
        ),
        (
            "cluster, blocking c=1",
            per_cycle(&masters, || {
                counted_blocking(&cluster_url);
            }),
        ),
        (
            "one server, async c=64",
            per_cycle(&singles, || rt.block_on(counted_async(&single_url))),
        ),
        (
            "cluster, async c=64",
            per_cycle(&masters, || rt.block_on(counted_async(&cluster_url))),
        ),
    ];

    println!();
    println!(
        "| aiolock acquire+release (cycles/s) | one server | cluster (3 masters) | cluster / one |"
    );
    println!("|---|---:|---:|---:|");
    for (row, one, many) in [
        ("blocking, c=1", b_single, b_cluster),
        ("async, c=1", a1_single, a1_cluster),
        ("async, c=64", a64_single, a64_cluster),
    ] {
        println!("| {row} | {one:.0} | {many:.0} | {:.2} |", many / one);
    }
    println!();
    println!(
        "| commands per cycle ({COUNTED} cycles) | sent by the client | run inside the release script |"
    );
    println!("|---|---|---|");
    for (row, counts) in &counts {
        let (sent, inside): (Vec<_>, Vec<_>) = counts
            .iter()
            .filter(|(_, n)| **n >= 0.001)
            .partition(|(name, _)| !["get", "del", "publish", "spublish"].contains(&name.as_str()));
        let show = |v: Vec<(&String, &f64)>| {
            v.iter()
                .map(|(name, n)| format!("{} {n:.3}", name.to_uppercase()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("| {row} | {} | {} |", show(sent), show(inside));
    }
}

fn version() -> String {
    let out = std::process::Command::new(
        std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into()),
    )
    .arg("--version")
    .output()
    .expect("redis-server --version");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_owned()
}

/// The calls of each command the `servers` ran while `run` ran, per counted cycle
/// (`CONFIG RESETSTAT` before, `INFO commandstats` after; the two themselves left out).
fn per_cycle(servers: &[&RedisServer], run: impl FnOnce()) -> BTreeMap<String, f64> {
    for s in servers {
        assert!(s.admin(&["CONFIG", "RESETSTAT"]).starts_with("+OK"));
    }
    run();
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for s in servers {
        let stats = s.admin(&["INFO", "commandstats"]);
        for line in stats.lines() {
            // cmdstat_set:calls=10000,usec=…
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(":calls="))
            else {
                continue;
            };
            let n: u64 = rest
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *calls.entry(name.to_owned()).or_default() += n;
        }
    }
    calls.remove("config|resetstat");
    calls.remove("info");
    calls
        .into_iter()
        .map(|(name, n)| (name, n as f64 / COUNTED as f64))
        .collect()
}

fn blocking_cycles(url: &str, per_row: Duration) -> f64 {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < per_row {
        let g = cache.redlock("b1", LEASE).acquire().unwrap();
        assert!(g.is_acquired());
        assert!(g.release().unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn counted_blocking(url: &str) {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    for _ in 0..COUNTED {
        let g = cache.redlock("b1", LEASE).acquire().unwrap();
        assert!(g.is_acquired());
        assert!(g.release().unwrap());
    }
}

async fn async_cycles(url: &str, concurrency: usize, per_row: Duration) -> f64 {
    let cache = aiolock::Cache::from_url(url).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (cache, done, count) = (cache.clone(), done.clone(), count.clone());
            tokio::spawn(async move {
                let key = format!("a{concurrency}-{i}");
                while !done.load(Ordering::Relaxed) {
                    let g = cache.redlock(&key, LEASE).acquire().await.unwrap();
                    assert!(g.is_acquired());
                    assert!(g.release().await.unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(per_row).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// [`COUNTED`] cycles by 64 tasks.
async fn counted_async(url: &str) {
    let cache = aiolock::Cache::from_url(url).await.unwrap();
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let key = format!("c64-{i}");
                for _ in 0..COUNTED / 64 + u64::from(i < COUNTED % 64) {
                    let g = cache.redlock(&key, LEASE).acquire().await.unwrap();
                    assert!(g.is_acquired());
                    assert!(g.release().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}
