//! The uncontended memory cycles allocate nothing: a counting global allocator (this
//! test binary's only) counts the calling thread's allocations around them.

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
