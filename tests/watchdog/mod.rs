//! The watchdog (automatic lease renewal): the bodies of `body.rs` in both flavors on
//! memory, Redis and memcached (and through the fault proxy on the network backends),
//! one renewal thread per cache in the blocking flavor, none for a cache that never
//! watches, a forked child renewing nothing of its parent's, and the renewals a
//! released guard no longer sends, counted by Redis itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::proxy::Proxy;

/// The blocking flavor of the bodies.
pub mod blocking {
    pub use aiolock::blocking::*;
    use maybe_async::must_be_sync as maybe_async;

    pub mod rt {
        use std::time::Duration;

        pub fn sleep(d: Duration) {
            std::thread::sleep(d)
        }

        /// How long a hung renewal hangs: this flavor cannot give a call up, the
        /// backend's response timeout ends it; a quarter of the lease stands for one
        /// that keeps to the documented bound (lease >= 3 x response timeout), with
        /// room for a loaded machine.
        pub fn hang(lease: Duration) -> Duration {
            lease / 4
        }
    }

    pub mod body {
        include!("body.rs");
    }
}

/// The async flavor of the bodies.
pub mod nonblocking {
    pub use aiolock::*;
    use maybe_async::must_be_async as maybe_async;

    pub mod rt {
        use std::time::Duration;

        pub async fn sleep(d: Duration) {
            tokio::time::sleep(d).await
        }

        /// How long a hung renewal hangs: far past the lease (this flavor gives the
        /// renewal up at the guard's lost instant).
        pub fn hang(lease: Duration) -> Duration {
            lease * 20
        }
    }

    pub mod body {
        include!("body.rs");
    }
}

/// Every `Env` body on one backend, in both flavors. `$env` is `(guard, url, lease)`.
macro_rules! bodies {
    ($env:expr; $($name:ident),* $(,)?) => {
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let (_server, url, lease) = $env;
                    let env = crate::watchdog::blocking::body::env(&url, lease);
                    crate::watchdog::blocking::body::$name(env);
                }
            )*
        }
        mod nonblocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_server, url, lease) = $env;
                    let env = crate::watchdog::nonblocking::body::env(&url, lease).await;
                    crate::watchdog::nonblocking::body::$name(env).await;
                }
            )*
        }
    };
}

/// Every `NetEnv` body on one backend, in both flavors. `$env` is `(guard, proxy,
/// proxied url, direct url, lease)`.
macro_rules! net_bodies {
    ($env:expr; $($name:ident),* $(,)?) => {
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    let (_server, proxy, proxied, direct, lease) = $env;
                    let env = crate::watchdog::blocking::body::net_env(proxy, &proxied, &direct, lease);
                    crate::watchdog::blocking::body::$name(env);
                }
            )*
        }
        mod nonblocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_server, proxy, proxied, direct, lease) = $env;
                    let env =
                        crate::watchdog::nonblocking::body::net_env(proxy, &proxied, &direct, lease).await;
                    crate::watchdog::nonblocking::body::$name(env).await;
                }
            )*
        }
    };
}

/// The lease of the suite on memory and Redis: short, with room for a loaded machine
/// (a renewal has 0.34 s to come back before its guard counts as lost).
const SUITE_LEASE: Duration = Duration::from_millis(600);

/// The lease of the network fault tests: the loss must come well before it, and the
/// blocking flavor's response timeout (0.3 s here) at most a third of it.
const NET_LEASE: Duration = Duration::from_secs(1);
/// The URL options of the proxied caches.
const FAST: &str = "namespace=wd:&connect_timeout=0.3&response_timeout=0.3";

mod memory {
    use std::time::Duration;

    fn env() -> ((), String, Duration) {
        (
            (),
            "memory://?namespace=wd:".into(),
            Duration::from_millis(300),
        )
    }

    bodies!(env();
        keeps_the_lock,
        renews_every_third_of_the_lease,
        reports_a_taken_lock,
        renewals_stop_at_release,
        let_expire_leaves_the_lock_to_its_lease,
        one_hung_renewal_holds_up_no_other,
    );
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::support::redis::RedisServer;

    fn env() -> (RedisServer, String, Duration) {
        let server = RedisServer::start();
        let url = server.unix_url("namespace=wd:");
        (server, url, SUITE_LEASE)
    }

    fn net_env() -> (RedisServer, Arc<Proxy>, String, String, Duration) {
        let server = RedisServer::start();
        let proxy = Arc::new(Proxy::unix(server.socket()));
        let proxied = format!("redis+unix://{}?{FAST}", proxy.path().display());
        let direct = server.unix_url("namespace=wd:");
        (server, proxy, proxied, direct, NET_LEASE)
    }

    mod suite {
        use super::*;
        bodies!(env();
            keeps_the_lock,
            renews_every_third_of_the_lease,
            reports_a_taken_lock,
            renewals_stop_at_release,
            let_expire_leaves_the_lock_to_its_lease,
            one_hung_renewal_holds_up_no_other,
        );
    }

    mod faults {
        use super::*;
        net_bodies!(net_env(); loss_when_cut, loss_when_stalled);
    }

    /// `cmdstat_evalsha` calls so far (every script: claims, releases, renewals).
    fn evalsha_calls(server: &RedisServer) -> usize {
        let info = server.admin(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Counted by the server: a watched guard's renewals run while it is held
    /// (EVALSHA of the extend script, one a third of a lease) and stop at its release.
    #[test]
    fn renewals_stop_at_release_server_side() {
        let server = RedisServer::start();
        let cache = aiolock::blocking::Cache::from_url(&server.unix_url("")).unwrap();
        let lease = Duration::from_millis(300);
        let guard = cache
            .lock("k", lease)
            .watchdog()
            .acquire()
            .unwrap()
            .unwrap();
        let held_from = evalsha_calls(&server);
        std::thread::sleep(lease * 2);
        let renewals = evalsha_calls(&server) - held_from;
        assert!(
            (4..=8).contains(&renewals),
            "{renewals} renewals in 2 leases"
        );
        assert!(guard.release().unwrap());
        let released = evalsha_calls(&server);
        std::thread::sleep(lease * 2);
        let after = evalsha_calls(&server) - released;
        assert!(after <= 1, "{after} scripts after the release");
    }
}

#[cfg(feature = "memcached")]
mod memcached {
    use super::*;
    use crate::support::memcached::{Listen, MemcachedServer};

    /// memcached counts whole seconds: its shortest lease (0.75 s, sent as 3 s).
    fn env() -> (MemcachedServer, String, Duration) {
        let server = MemcachedServer::start();
        let url = format!("{}?namespace=wd:", server.url());
        (server, url, Duration::from_millis(750))
    }

    fn net_env() -> (MemcachedServer, Arc<Proxy>, String, String, Duration) {
        let server = MemcachedServer::start();
        let Listen::Unix(path) = server.listen() else {
            panic!("a unix socket server")
        };
        let proxy = Arc::new(Proxy::unix(path));
        let proxied = format!("memcached+unix://{}?{FAST}", proxy.path().display());
        let direct = format!("{}?namespace=wd:", server.url());
        (server, proxy, proxied, direct, NET_LEASE)
    }

    mod suite {
        use super::*;
        bodies!(env();
            keeps_the_lock,
            renews_every_third_of_the_lease,
            reports_a_taken_lock,
            renewals_stop_at_release,
            let_expire_leaves_the_lock_to_its_lease,
            one_hung_renewal_holds_up_no_other,
        );
    }

    mod faults {
        use super::*;
        net_bodies!(net_env(); loss_when_cut, loss_when_stalled);
    }
}

/// The threads of this process (`/proc/self/task`), by name.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

fn watchdog_threads() -> usize {
    // `comm` keeps 15 bytes of a thread's name.
    threads()
        .iter()
        .filter(|n| n.starts_with("aiolock-watch"))
        .count()
}

/// Waits until the process has `n` watchdog threads (a thread names itself a moment
/// after it started, and is gone from /proc a moment after it ended).
fn wait_watchdog_threads(n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while watchdog_threads() != n {
        assert!(
            Instant::now() < until,
            "{} watchdog threads, not {n}",
            watchdog_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Blocking flavor: one renewal thread for 200 watched guards of a cache, none for a
/// cache that never watches, and it ends with its cache.
#[test]
fn blocking_one_thread_per_cache() {
    let before = threads().len();
    let lease = Duration::from_millis(300);
    let cache = aiolock::blocking::Cache::memory();
    let unwatched: Vec<_> = (0..10)
        .map(|i| {
            cache
                .lock(format!("u{i}"), lease)
                .acquire()
                .unwrap()
                .unwrap()
        })
        .collect();
    assert_eq!(threads().len(), before, "no thread without a watched guard");
    let guards: Vec<_> = (0..200)
        .map(|i| {
            let guard = cache.lock(format!("k{i}"), lease).watchdog().acquire();
            guard.unwrap().unwrap()
        })
        .collect();
    // The new thread names itself: a moment after it started.
    wait_watchdog_threads(1);
    assert_eq!(threads().len(), before + 1);
    let watches: Vec<_> = guards.iter().map(|g| g.watch().unwrap()).collect();
    assert!(watches[0].wait_lost(lease * 3).is_none(), "renewed");
    for watch in &watches {
        watch.check().unwrap();
    }
    // A second cache gets a thread of its own.
    let second = aiolock::blocking::Cache::memory();
    let other = second
        .lock("k", lease)
        .watchdog()
        .acquire()
        .unwrap()
        .unwrap();
    wait_watchdog_threads(2);
    drop(other);
    drop(second);
    wait_watchdog_threads(1);
    drop((guards, unwatched, watches));
    // Idle while the cache lives, gone with it.
    assert_eq!(watchdog_threads(), 1);
    drop(cache);
    wait_watchdog_threads(0);
    assert_eq!(threads().len(), before);
}

/// Async flavor: the renewals run as tasks of the runtime, no thread of their own
/// (a current-thread runtime keeps 200 watched guards renewed on the test's thread).
#[test]
fn async_renews_on_the_runtime_without_a_thread() {
    let before = threads().len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lease = Duration::from_millis(300);
        let cache = aiolock::Cache::memory();
        let mut guards = Vec::new();
        for i in 0..200 {
            let guard = cache
                .lock(format!("k{i}"), lease)
                .watchdog()
                .acquire()
                .await;
            guards.push(guard.unwrap().unwrap());
        }
        let watch = guards[199].watch().unwrap();
        assert!(watch.wait_lost(lease * 3).await.is_none(), "renewed");
        for guard in &guards {
            guard.watch().unwrap().check().unwrap();
        }
        assert_eq!(threads().len(), before, "no thread");
    });
}

/// A forked child renews nothing of its parent's: the parent's watched guard (renewed
/// by the parent's worker) gets no renewal from the child, whose copy of the watch
/// reports a loss at once; the child's own watched guard is renewed by a worker of
/// the child. The parent's guard stays renewed.
#[test]
fn forked_child_renews_nothing_of_the_parent() {
    use crate::watchdog::blocking::Cache;
    use crate::watchdog::blocking::body::Observed;

    let observed = Observed::new(Cache::memory().backend().clone());
    let cache = Cache::new(observed.clone());
    let lease = Duration::from_millis(300);
    let guard = cache
        .lock("parent", lease)
        .watchdog()
        .acquire()
        .unwrap()
        .unwrap();
    let watch = guard.watch().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while observed.extends(b"parent-lock") < 1 {
        assert!(Instant::now() < until, "renewed in the parent");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the child uses this process's memory copy and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = (|| {
            let Err(inherited) = watch.check() else {
                return 1;
            };
            if inherited.kind() != aiolock::ErrorKind::Lost || !inherited.message().contains("fork")
            {
                return 2;
            }
            let before = observed.extends(b"parent-lock");
            let Ok(Some(own)) = cache.lock("child", lease).watchdog().acquire() else {
                return 3;
            };
            let until = Instant::now() + Duration::from_secs(10);
            while observed.extends(b"child-lock") < 3 {
                if Instant::now() > until {
                    return 4;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if observed.extends(b"parent-lock") != before {
                return 5;
            }
            if own.watch().map(|w| w.check().is_ok()) != Some(true) {
                return 6;
            }
            0
        })();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child ended by a signal");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child's check that failed"
    );
    watch.check().unwrap();
    let renewed = observed.extends(b"parent-lock");
    assert!(watch.wait_lost(lease).is_none());
    assert!(observed.extends(b"parent-lock") > renewed, "still renewed");
    assert!(guard.release().unwrap());
}
