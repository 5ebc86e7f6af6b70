//! Redis Sentinel: failovers (`SENTINEL FAILOVER`, and the master killed) during a
//! hold and during waits, the clear error while no master is reachable, a lock lost by
//! a failover, `WAIT`'s count on the guard. The bodies of `body.rs` run in both
//! flavors on a fresh deployment each (`support::redis_sentinel`).

/// The blocking flavor of the bodies.
pub mod blocking {
    pub use aiolock::blocking::*;
    use maybe_async::must_be_sync as maybe_async;

    pub mod rt {
        use std::time::Duration;

        /// Runs the work `f` does on a thread; [`join`] waits for it.
        pub fn spawn<T: Send + 'static>(
            f: impl FnOnce() -> T + Send + 'static,
        ) -> std::thread::JoinHandle<T> {
            std::thread::spawn(f)
        }

        pub fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
            handle.join().expect("the spawned work panicked")
        }

        /// Runs the fixture's blocking `f` (here: at once).
        pub fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
            f()
        }

        pub fn sleep(d: Duration) {
            std::thread::sleep(d)
        }

        /// Returns once `lock_key` had `n` waiters (the `"waiting"` event).
        pub fn waiters(lock_key: &str, n: usize) {
            crate::support::events::wait_for_waiters(lock_key, n)
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

        /// Runs the future `f` makes on a task; [`join`] waits for it.
        pub fn spawn<T, F>(f: impl FnOnce() -> F) -> tokio::task::JoinHandle<T>
        where
            T: Send + 'static,
            F: Future<Output = T> + Send + 'static,
        {
            tokio::spawn(f())
        }

        pub async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
            handle.await.expect("the spawned task panicked")
        }

        /// Runs the fixture's blocking `f` off the runtime's workers.
        pub async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
            tokio::task::spawn_blocking(f)
                .await
                .expect("the fixture panicked")
        }

        pub async fn sleep(d: Duration) {
            tokio::time::sleep(d).await
        }

        /// Returns once `lock_key` had `n` waiters (the `"waiting"` event).
        pub async fn waiters(lock_key: &str, n: usize) {
            crate::support::events::waiters(lock_key, n).await
        }
    }

    pub mod body {
        include!("body.rs");
    }
}

macro_rules! both_flavors {
    ($($name:ident),* $(,)?) => {
        mod blocking_tests {
            $(
                #[test]
                fn $name() {
                    crate::support::events::install();
                    super::blocking::body::$name();
                }
            )*
        }
        mod nonblocking_tests {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::support::events::install();
                    super::nonblocking::body::$name().await;
                }
            )*
        }
    };
}

both_flavors!(
    failover_during_hold_and_waits,
    master_killed_during_hold_and_wait,
    lock_lost_by_a_failover_is_reported,
    wait_counts_the_replicas,
    one_wait_per_replicated_script,
    no_master_is_a_clear_error,
);
