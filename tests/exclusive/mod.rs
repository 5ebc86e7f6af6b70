//! Exclusive-lock tests of the async flavor only (cancellation), run per backend by
//! `backend_suite!`.

use std::time::Duration;

use aiolock::Cache;

/// An exclusive waiter whose future is dropped mid-wait (its task aborted) leaves no
/// counted waiter and no lock key: after the holder's release the key is absent.
pub async fn cancelled_waiter_leaves_nothing(cache: Cache) {
    let lease = Duration::from_secs(30);
    let holder = cache.lock("k", lease).try_acquire().await.unwrap();
    let holder = holder.expect("uncontended");
    let lock_key = String::from_utf8_lossy(holder.lock_key()).into_owned();
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move {
            let got = cache
                .lock("k", lease)
                .wait_at_most(Duration::from_secs(60))
                .acquire()
                .await;
            got.map(|g| g.is_some())
        }
    });
    crate::support::events::waiters(&lock_key, 1).await;
    assert_eq!(cache.waiting("k"), 1);
    waiter.abort();
    let joined = waiter.await;
    assert!(joined.unwrap_err().is_cancelled(), "cancelled mid-wait");
    assert_eq!(cache.waiting("k"), 0, "the dropped wait is uncounted");
    assert!(holder.release().await.unwrap());
    cache.flush().await;
    assert!(
        !cache.exists("k-lock").await.unwrap(),
        "the cancelled waiter took nothing"
    );
    let again = cache.lock("k", lease).try_acquire().await.unwrap();
    assert!(again.expect("free").release().await.unwrap());
}
