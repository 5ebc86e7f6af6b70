//! One integration-test binary. The test bodies in `suite/` are written once and
//! compiled into both flavors (the crate's own twin-module pattern); `backend_suite!`
//! runs every body, in both flavors, on one backend.

#[cfg(not(feature = "tracing"))]
compile_error!(
    "the integration tests order events by the `tracing` feature's \"waiting\" event: \
     run them with `--features tracing` (scripts/test uses --all-features)"
);

mod support;

/// The blocking flavor of the suite.
mod blocking {
    pub use aiolock::blocking::*;
    use maybe_async::must_be_sync as maybe_async;

    pub mod rt {
        use std::time::Duration;

        /// Runs `f(0) … f(n-1)` on `n` threads; their results in order.
        pub fn concurrently<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
            std::thread::scope(|s| {
                let f = &f;
                let handles: Vec<_> = (0..n).map(|i| s.spawn(move || f(i))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        }

        pub fn sleep(d: Duration) {
            std::thread::sleep(d)
        }

        pub fn yield_now() {
            std::thread::yield_now()
        }

        /// Returns once `lock_key` had `n` waiters (the `"waiting"` event).
        pub fn waiters(lock_key: &str, n: usize) {
            crate::support::events::wait_for_waiters(lock_key, n)
        }
    }

    pub mod suite {
        include!("suite/mod.rs");
    }
}

/// The async flavor of the suite.
mod nonblocking {
    pub use aiolock::*;
    use maybe_async::must_be_async as maybe_async;

    pub mod rt {
        use std::time::Duration;

        /// Runs the futures `f(0) … f(n-1)` as `n` tasks; their outputs in order.
        pub async fn concurrently<T, F>(n: usize, f: impl Fn(usize) -> F) -> Vec<T>
        where
            T: Send + 'static,
            F: Future<Output = T> + Send + 'static,
        {
            let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }

        pub async fn sleep(d: Duration) {
            tokio::time::sleep(d).await
        }

        pub async fn yield_now() {
            tokio::task::yield_now().await
        }

        /// Returns once `lock_key` had `n` waiters (the `"waiting"` event).
        pub async fn waiters(lock_key: &str, n: usize) {
            crate::support::events::waiters(lock_key, n).await
        }
    }

    pub mod suite {
        include!("suite/mod.rs");
    }
}

/// Every suite body on one backend, in both flavors.
///
/// `$env` is an expression of type `(Guard, String, Duration, Duration)` evaluated per
/// test: a guard that keeps the backend's server alive, the cache URL, the backend's
/// shortest reliable lease and its expiry slack. Every test gets its own namespace
/// (`flavor.test:`), so the event hook's keys never mix even when tests share a process.
macro_rules! backend_suite {
    ($backend:ident, $env:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            backend_suite!(@tests $env;
                stampede_four_callers,
                waiters_wake_on_release,
                lease_end_re_elects_one_waiter,
                bound_reached_times_out,
                stale_guard_removes_nothing,
                dropped_guard_releases,
                scoped_run_releases,
                cache_operations,
                namespaces_isolate_locks,
                optimistic_cas,
                optimistic_absent_key,
                optimistic_ttl,
                bad_input,
                lock_suffix_keeps_locks_apart,
                waiting_counts_waiters,
                exclusive_mutual_exclusion,
                exclusive_waits_through_releases,
                exclusive_waits_through_lease_end,
                exclusive_bound_returns_none,
                exclusive_try_never_waits,
                extend_is_owner_checked,
                fences_grow_with_each_acquisition,
                waiter_of_an_extended_holder_keeps_waiting,
                exclusive_deadlines_in_the_queue,
                exclusive_handed_off_guard_is_watched,
            );

            #[test]
            fn blocking_exclusive_64_waiters_one_key() {
                crate::support::events::install();
                let (server, url, short_lease, expiry_slack) = $env;
                let cache = crate::blocking::Cache::builder()
                    .namespace("blocking.exclusive_64:")
                    .build(&url)
                    .unwrap();
                let env = crate::blocking::suite::Env { cache, short_lease, expiry_slack };
                crate::blocking::suite::exclusive_64_waiters_one_key(env, std::sync::Arc::new(server));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn async_exclusive_64_waiters_one_key() {
                crate::support::events::install();
                let (server, url, short_lease, expiry_slack) = $env;
                let cache = crate::nonblocking::Cache::builder()
                    .namespace("async.exclusive_64:")
                    .build(&url)
                    .await
                    .unwrap();
                let env = crate::nonblocking::suite::Env { cache, short_lease, expiry_slack };
                let server = std::sync::Arc::new(server);
                crate::nonblocking::suite::exclusive_64_waiters_one_key(env, server).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn async_exclusive_cancelled_leader_passes_on() {
                crate::support::events::install();
                let (_server, url, _short_lease, _expiry_slack) = $env;
                let cache = crate::nonblocking::Cache::builder()
                    .namespace("async.exclusive_cancelled_leader:")
                    .build(&url)
                    .await
                    .unwrap();
                crate::exclusive::cancelled_leader_passes_on(cache).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn async_exclusive_cancelled_waiter_leaves_nothing() {
                crate::support::events::install();
                let (_server, url, _short_lease, _expiry_slack) = $env;
                let cache = crate::nonblocking::Cache::builder()
                    .namespace("async.exclusive_cancelled:")
                    .build(&url)
                    .await
                    .unwrap();
                crate::exclusive::cancelled_waiter_leaves_nothing(cache).await;
            }

            #[test]
            fn blocking_stampede_64_threads() {
                crate::support::events::install();
                let (_server, url, short_lease, expiry_slack) = $env;
                let cache = crate::blocking::Cache::builder()
                    .namespace("blocking.stampede_64:")
                    .build(&url)
                    .unwrap();
                let env = crate::blocking::suite::Env { cache, short_lease, expiry_slack };
                crate::blocking::suite::stampede_many_callers(env, 64);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn async_stampede_256_tasks() {
                crate::support::events::install();
                let (_server, url, short_lease, expiry_slack) = $env;
                let cache = crate::nonblocking::Cache::builder()
                    .namespace("async.stampede_256:")
                    .build(&url)
                    .await
                    .unwrap();
                let env = crate::nonblocking::suite::Env { cache, short_lease, expiry_slack };
                crate::nonblocking::suite::stampede_many_callers(env, 256).await;
            }
        }
    };
    (@tests $env:expr; $($name:ident),* $(,)?) => {
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    crate::support::events::install();
                    let (_server, url, short_lease, expiry_slack) = $env;
                    let cache = crate::blocking::Cache::builder()
                        .namespace(concat!("blocking.", stringify!($name), ":"))
                        .build(&url)
                        .unwrap();
                    crate::blocking::suite::$name(crate::blocking::suite::Env {
                        cache,
                        short_lease,
                        expiry_slack,
                    });
                }
            )*
        }
        mod nonblocking {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::events::install();
                    let (_server, url, short_lease, expiry_slack) = $env;
                    let cache = crate::nonblocking::Cache::builder()
                        .namespace(concat!("async.", stringify!($name), ":"))
                        .build(&url)
                        .await
                        .unwrap();
                    crate::nonblocking::suite::$name(crate::nonblocking::suite::Env {
                        cache,
                        short_lease,
                        expiry_slack,
                    })
                    .await;
                }
            )*
        }
    };
}

/// The cross-process exclusion oracle on one network backend.
macro_rules! cross_process_oracle {
    ($backend:ident, $env:expr) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exclusive_cross_process_oracle() {
                let (_server, url, _short_lease, _expiry_slack) = $env;
                crate::exclusive::cross_process_oracle(&url).await;
            }
        }
    };
}

backend_suite!(
    memory,
    (
        (),
        "memory://?namespace=test:".to_string(),
        std::time::Duration::from_millis(150),
        std::time::Duration::ZERO
    )
);

#[cfg(feature = "redis")]
backend_suite!(redis, crate::support::redis::env());
#[cfg(feature = "redis")]
backend_suite!(redis_cluster, crate::support::redis_cluster::env());
#[cfg(feature = "redis")]
backend_suite!(redis_sentinel, crate::support::redis_sentinel::env());
#[cfg(feature = "memcached")]
backend_suite!(memcached, crate::support::memcached::env());
// A pool of three servers, in each distribution.
#[cfg(feature = "memcached")]
backend_suite!(
    memcached_pool_ketama,
    crate::support::memcached::pool_env("ketama")
);
#[cfg(feature = "memcached")]
backend_suite!(
    memcached_pool_rendezvous,
    crate::support::memcached::pool_env("rendezvous")
);

mod oracle {
    #[cfg(feature = "memcached")]
    cross_process_oracle!(memcached, crate::support::memcached::env());
    #[cfg(feature = "redis")]
    cross_process_oracle!(redis, crate::support::redis::env());
}

/// Fencing tokens across processes on one network backend.
macro_rules! cross_process_fences {
    ($backend:ident, $env:expr, $expiring_lease:expr) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fences_strictly_increase_across_processes() {
                let (_server, url, _short_lease, _expiry_slack) = $env;
                crate::exclusive::fences_across_processes(&url, $expiring_lease).await;
            }

            #[test]
            fn paused_holder_is_fenced_off() {
                let (_server, url, short_lease, _expiry_slack) = $env;
                crate::exclusive::paused_holder_is_fenced_off(&url, short_lease);
            }
        }
    };
}

mod fencing {
    #[cfg(feature = "memcached")]
    cross_process_fences!(
        memcached,
        crate::support::memcached::env(),
        std::time::Duration::from_millis(750)
    );
    #[cfg(feature = "redis")]
    cross_process_fences!(
        redis,
        crate::support::redis::env(),
        std::time::Duration::from_millis(500)
    );
}

/// memcached-specific tests (module name differs from the suite's `memcached`).
#[cfg(feature = "memcached")]
#[path = "memcached/mod.rs"]
mod memcached_specific;

mod background;
mod exclusive;
mod flavors;
mod inputs;
/// The Redlock quorum (`redis+quorum://`).
#[cfg(feature = "redis")]
mod quorum;
/// Redis-only tests (the suite module above is `redis`).
#[cfg(feature = "redis")]
#[path = "redis/mod.rs"]
mod redis_backend;
/// Redis Cluster-only tests.
#[cfg(feature = "redis")]
#[path = "redis/cluster.rs"]
mod redis_cluster_specific;
/// Redis Sentinel-only tests (failovers, `WAIT`).
#[cfg(feature = "redis")]
#[path = "redis/sentinel/mod.rs"]
mod redis_sentinel_specific;
mod watchdog;
