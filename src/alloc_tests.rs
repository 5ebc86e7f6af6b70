//! The uncontended memory cycles allocate nothing, and the Redis ones a bounded number
//! of times: a counting global allocator (this test binary's only) counts the calling
//! thread's allocations around them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded to the system allocator as it came.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `f` made on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const LEASE: Duration = Duration::from_secs(30);

fn blocking_cycles(cache: &crate::blocking::Cache) {
    for _ in 0..100 {
        let guard = cache.redlock("key", LEASE).acquire().unwrap();
        assert!(guard.release().unwrap());
        let guard = cache.lock("key", LEASE).try_acquire().unwrap().unwrap();
        assert!(guard.release().unwrap());
        let lock = cache.optimistic_lock("opt").unwrap();
        lock.cas(b"1", None).unwrap();
    }
}

async fn async_cycles(cache: &crate::Cache) {
    for _ in 0..100 {
        let guard = cache.redlock("key", LEASE).acquire().await.unwrap();
        assert!(guard.release().await.unwrap());
        let guard = cache
            .lock("key", LEASE)
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        assert!(guard.release().await.unwrap());
        let lock = cache.optimistic_lock("opt").await.unwrap();
        lock.cas(b"1", None).await.unwrap();
    }
}

#[test]
fn blocking_memory_cycles_allocate_nothing() {
    let cache = crate::blocking::Cache::memory();
    cache.set("opt", b"0", None).unwrap();
    blocking_cycles(&cache); // seeds the token generator, sizes the map
    assert_eq!(allocations(|| blocking_cycles(&cache)), 0);
}

#[test]
fn async_memory_cycles_allocate_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = crate::Cache::memory();
        cache.set("opt", b"0", None).await.unwrap();
        async_cycles(&cache).await;
        let before = ALLOCATIONS.with(Cell::get);
        async_cycles(&cache).await;
        assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
    });
}

/// The Redis cycles' allocations (the client's, on the calling thread: the async ones
/// on a current-thread runtime). Not zero: a command is a `redis::Cmd` (two buffers),
/// a reply with data is a `Vec`, the blocking flavor's connection packs each command,
/// the async claim's future is boxed; these bounds keep what aiolock adds around them
/// from growing back (17 blocking and 22 async before the commands were built with
/// room for every argument; 13 async before the pipelined connection of our own,
/// which has no channel, oneshot or timer per command; 6 now, one of slack).
#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod fixture;

#[cfg(feature = "redis")]
mod redis {
    use super::{ALLOCATIONS, Cell, LEASE, allocations};

    use super::fixture;

    const CYCLES: u64 = 200;

    #[test]
    fn blocking_redis_cycle_allocates_at_most_10_times() {
        let server = fixture::RedisServer::start();
        let cache = crate::blocking::Cache::from_url(&server.unix_url("")).unwrap();
        let cycle = || {
            let guard = cache.redlock("key", LEASE).acquire().unwrap();
            assert!(guard.is_acquired());
            assert!(guard.release().unwrap());
        };
        cycle(); // opens the connection, loads the script
        let n = allocations(|| (0..CYCLES).for_each(|_| cycle()));
        assert!(
            n <= 10 * CYCLES,
            "{} allocations per cycle",
            n as f64 / CYCLES as f64
        );
    }

    #[test]
    fn async_redis_cycle_allocates_at_most_7_times() {
        let server = fixture::RedisServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = crate::Cache::from_url(&server.unix_url("")).await.unwrap();
            let cycle = || async {
                let guard = cache.redlock("key", LEASE).acquire().await.unwrap();
                assert!(guard.is_acquired());
                assert!(guard.release().await.unwrap());
            };
            cycle().await;
            let before = ALLOCATIONS.with(Cell::get);
            for _ in 0..CYCLES {
                cycle().await;
            }
            let n = ALLOCATIONS.with(Cell::get) - before;
            assert!(
                n <= 7 * CYCLES,
                "{} allocations per cycle",
                n as f64 / CYCLES as f64
            );
        });
    }
}
