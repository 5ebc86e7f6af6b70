//! Redis-only tests: other processes, both flavors on one server, faults, AUTH and bad
//! input. The backend-generic bodies run on Redis through `backend_suite!(redis, …)`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aiolock::{ErrorKind, Outcome};

use crate::support::redis::{Config, RedisServer};

/// Set in a child process started by [`cross_process_waiter_wakes_on_release`]: the
/// child is the holder.
const CHILD_URL: &str = "AIOLOCK_TEST_HOLDER_URL";

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The holder side of the cross-process test; does nothing in a normal run.
///
/// In the child: takes the lock, says `held`, waits for a line on stdin, releases and
/// says `released <unix nanos after the release returned>`.
#[test]
fn cross_process_holder_child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let guard = cache
        .redlock("report", Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    println!("held");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert!(guard.release().unwrap());
    println!("released {}", unix_nanos());
    std::io::stdout().flush().unwrap();
}

/// A holder in another OS process, waiters here (one per flavor): they return
/// `Released` right after the release, not at the lease end. aiocache's waiter in
/// another process does not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_process_waiter_wakes_on_release() {
    let server = RedisServer::start();
    let url = server.unix_url("namespace=xproc:");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "redis_backend::cross_process_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = move |want: &str| loop {
        let Some(line) = lines.next() else {
            return String::new();
        };
        let line = line.unwrap();
        // libtest prints "test name ... " before the test's own output.
        if let Some(at) = line.find(want) {
            return line[at..].to_owned();
        }
    };
    assert_eq!(next_line("held"), "held", "the child took the lock");

    let async_cache = aiolock::Cache::from_url(&url).await.unwrap();
    let sync_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let lease = Duration::from_secs(30);
    let async_waiter = tokio::spawn(async move {
        let g = async_cache
            .redlock("report", lease)
            .acquire()
            .await
            .unwrap();
        (g.outcome(), unix_nanos())
    });
    let sync_waiter = tokio::task::spawn_blocking(move || {
        let g = sync_cache.redlock("report", lease).acquire().unwrap();
        (g.outcome(), unix_nanos())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !async_waiter.is_finished(),
        "the waiter waits for the holder"
    );
    writeln!(stdin, "release").unwrap();
    let released_line = tokio::task::spawn_blocking(move || {
        let line = next_line("released");
        // Read the child's output to its end, so that it never writes into a closed pipe.
        next_line("\u{0}");
        line
    });
    let released_line = released_line.await.unwrap();
    let released_at: u128 = released_line["released ".len()..].parse().unwrap();
    for (outcome, woke_at) in [async_waiter.await.unwrap(), sync_waiter.await.unwrap()] {
        assert_eq!(outcome, Outcome::Released);
        let after = woke_at.saturating_sub(released_at);
        assert!(
            after < Duration::from_secs(5).as_nanos(),
            "woken by the release, not by the 30 s lease: {after} ns after it"
        );
    }
    assert!(child.wait().unwrap().success());
}

/// An async holder and a blocking waiter on one server, then the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_flavor_hand_off() {
    let server = RedisServer::start();
    let url = server.unix_url("namespace=flavors:");
    assert_cross_flavor_hand_off(&url).await;
}

/// On `url`: an async holder wakes a blocking waiter with its release, then a blocking
/// holder an async waiter.
async fn assert_cross_flavor_hand_off(url: &str) {
    let async_cache = aiolock::Cache::from_url(url).await.unwrap();
    let sync_cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let lease = Duration::from_secs(30);

    let holder = async_cache.redlock("k", lease).acquire().await.unwrap();
    assert!(holder.is_acquired());
    let waiter = {
        let sync_cache = sync_cache.clone();
        tokio::task::spawn_blocking(move || {
            sync_cache.redlock("k", lease).acquire().unwrap().outcome()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(holder.release().await.unwrap());
    assert_eq!(waiter.await.unwrap(), Outcome::Released);

    let holder = {
        let sync_cache = sync_cache.clone();
        tokio::task::spawn_blocking(move || sync_cache.redlock("k", lease).acquire().unwrap())
            .await
            .unwrap()
    };
    assert!(holder.is_acquired());
    let waiter = tokio::spawn({
        let async_cache = async_cache.clone();
        async move {
            async_cache
                .redlock("k", lease)
                .acquire()
                .await
                .unwrap()
                .outcome()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || assert!(holder.release().unwrap()))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), Outcome::Released);
}

/// Many async waiters of many keys share one subscriber connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiters_share_one_subscriber_connection() {
    let server = RedisServer::start();
    let cache = aiolock::Cache::from_url(&server.unix_url(""))
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let mut holders = Vec::new();
    for k in 0..8 {
        holders.push(
            cache
                .redlock(format!("k{k}"), lease)
                .acquire()
                .await
                .unwrap(),
        );
    }
    let waiters: Vec<_> = (0..64)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .redlock(format!("k{}", i % 8), lease)
                    .acquire()
                    .await
                    .unwrap()
                    .outcome()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clients = server.admin(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert_eq!(
        clients.matches("id=").count(),
        1,
        "one subscriber connection: {clients}"
    );
    for h in holders {
        assert!(h.release().await.unwrap());
    }
    for w in waiters {
        assert_eq!(w.await.unwrap(), Outcome::Released);
    }
    // The last waiter of each channel unsubscribed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channels = server.admin(&["PUBSUB", "NUMSUB", "aiolock:release:k0-lock"]);
    assert!(channels.ends_with(":0\r\n"), "{channels}");
}

/// One test body per flavor, each on a server of its own. The body sees `Cache`,
/// `with_background` and `pause` of its flavor.
macro_rules! both_flavors {
    ($(#[$doc:meta])* $name:ident($server:ident, $url:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            mod blocking {
                #[allow(unused_imports)]
                use super::super::*;
                #[allow(unused_imports)]
                use super::super::sync_rt::{pause, with_background};
                use aiolock::blocking::Cache;
                use maybe_async::must_be_sync as maybe_async;

                #[maybe_async]
                async fn body($server: &mut RedisServer, $url: String) $body

                #[test]
                fn run() {
                    let mut server = RedisServer::start();
                    let url = server.unix_url(super::super::FAST);
                    body(&mut server, url);
                }
            }

            mod nonblocking {
                #[allow(unused_imports)]
                use super::super::*;
                #[allow(unused_imports)]
                use super::super::async_rt::{pause, with_background};
                use aiolock::Cache;
                use maybe_async::must_be_async as maybe_async;

                #[maybe_async]
                async fn body($server: &mut RedisServer, $url: String) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn run() {
                    let mut server = RedisServer::start();
                    let url = server.unix_url(super::super::FAST);
                    body(&mut server, url).await;
                }
            }
        }
    };
}

/// Short timeouts, so that faults show fast.
const FAST: &str = "namespace=t:&connect_timeout=0.5&response_timeout=0.5";

mod sync_rt {
    use std::time::Duration;

    /// Runs `background` on a thread while `foreground` runs here; `background`'s result.
    pub fn with_background<T: Send>(
        background: impl FnOnce() -> T + Send,
        foreground: impl FnOnce(),
    ) -> T {
        std::thread::scope(|s| {
            let h = s.spawn(background);
            foreground();
            h.join().unwrap()
        })
    }

    pub fn pause(d: Duration) {
        std::thread::sleep(d)
    }
}

mod async_rt {
    use std::time::Duration;

    /// Spawns `background`'s future while `foreground`'s runs here; `background`'s output.
    pub async fn with_background<T, B, F>(
        background: impl FnOnce() -> B,
        foreground: impl FnOnce() -> F,
    ) -> T
    where
        T: Send + 'static,
        B: Future<Output = T> + Send + 'static,
        F: Future<Output = ()>,
    {
        let task = tokio::spawn(background());
        foreground().await;
        task.await.unwrap()
    }

    pub async fn pause(d: Duration) {
        tokio::time::sleep(d).await
    }
}

both_flavors!(
    /// CLIENT KILL of the command connections while a lock is held: the release (safe
    /// to repeat) goes through on a fresh connection.
    client_kill_mid_hold(server, url) {
        let cache = Cache::from_url(&url).await.unwrap();
        let guard = cache.redlock("k", Duration::from_secs(30)).acquire().await.unwrap();
        assert!(guard.is_acquired());
        let killed = server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        assert!(killed.starts_with(':'), "{killed}");
        let released = guard.release().await.unwrap();
        assert!(released, "released after the kill");
        let v = cache.exists("k-lock").await.unwrap();
        assert!(!v);
        // Every operation works again.
        cache.set("a", b"1", None).await.unwrap();
        server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        let v = cache.get("a").await.unwrap();
        assert_eq!(v.as_deref(), Some(&b"1"[..]));
        server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        let g = cache.redlock("k", Duration::from_secs(30)).acquire().await.unwrap();
        assert!(g.is_acquired(), "an add after a kill");
        let v = g.release().await.unwrap();
        assert!(v);
    }
);

both_flavors!(
    /// CLIENT KILL of the pub/sub connections while a waiter waits: it subscribes again
    /// and still wakes on the release, long before the lease ends.
    client_kill_mid_wait(server, url) {
        let cache = Cache::from_url(&url).await.unwrap();
        let lease = Duration::from_secs(30);
        let holder = cache.redlock("k", lease).acquire().await.unwrap();
        let start = Instant::now();
        let outcome = with_background(
            {
                let cache = cache.clone();
                move || async move { cache.redlock("k", lease).acquire().await.unwrap().outcome() }
            },
            || async {
                pause(Duration::from_millis(300)).await;
                let killed = server.admin(&["CLIENT", "KILL", "TYPE", "pubsub"]);
                assert!(killed.starts_with(":1"), "one subscriber killed: {killed}");
                pause(Duration::from_millis(300)).await;
                let released = holder.release().await.unwrap();
                assert!(released);
            },
        )
        .await;
        assert_ne!(outcome, Outcome::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }
);

both_flavors!(
    /// The server is killed while a lock is held and a waiter waits: calls fail with a
    /// connection error while it is down, no waiter outlives its bound, and calls
    /// succeed after a restart.
    server_restart(server, url) {
        let cache = Cache::from_url(&url).await.unwrap();
        let holder = cache.redlock("k", Duration::from_secs(30)).acquire().await.unwrap();
        assert!(holder.is_acquired());
        let bound = Duration::from_secs(2);
        let start = Instant::now();
        let waited = with_background(
            {
                let cache = cache.clone();
                move || async move {
                    cache
                        .redlock("k", Duration::from_secs(30))
                        .wait_at_most(bound)
                        .acquire()
                        .await
                        .map(|g| g.outcome())
                }
            },
            || async {
                pause(Duration::from_millis(300)).await;
                server.kill();
            },
        )
        .await;
        // The waiter ends within its bound plus the timeouts, whatever it says.
        assert!(start.elapsed() < bound + Duration::from_secs(3), "{:?}", start.elapsed());
        if let Err(e) = &waited {
            assert!(e.is_connection() || e.is_timeout(), "{e}");
        }
        let t = Instant::now();
        let err = cache.get("a").await.unwrap_err();
        assert!(err.is_connection() || err.is_timeout(), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
        let err = holder.release().await.unwrap_err();
        assert!(err.is_connection() || err.is_timeout(), "{err}");

        server.restart();
        let mut ok = false;
        for _ in 0..20 {
            if cache.set("a", b"1", None).await.is_ok() {
                ok = true;
                break;
            }
            pause(Duration::from_millis(100)).await;
        }
        assert!(ok, "calls succeed after the restart");
        let v = cache.get("a").await.unwrap();
        assert_eq!(v.as_deref(), Some(&b"1"[..]));
        let g = cache.redlock("k", Duration::from_secs(30)).acquire().await.unwrap();
        assert!(g.is_acquired(), "the lock was lost with the server");
        let v = g.release().await.unwrap();
        assert!(v);
    }
);

/// AUTH: `requirepass` and an ACL user work; a wrong or missing password is a clear
/// error in both flavors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_password_and_acl_user() {
    let server = RedisServer::with(Config {
        tcp: true,
        args: [
            "--requirepass",
            "s3cret",
            "--user",
            "alice",
            "on",
            ">wonderland",
            "~*",
            "&*",
            "+@all",
        ]
        .map(String::from)
        .to_vec(),
    });
    let port = server.port();
    for good in [
        format!("redis://:s3cret@127.0.0.1:{port}/0"),
        format!("redis://alice:wonderland@127.0.0.1:{port}/0"),
        format!("redis+unix://{}?pass=s3cret", server.socket().display()),
    ] {
        let cache = aiolock::blocking::Cache::from_url(&good).unwrap();
        cache.set("k", b"v", None).unwrap();
        let cache = aiolock::Cache::from_url(&good).await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        let g = cache
            .redlock("k", Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        assert!(g.release().await.unwrap());
    }
    for bad in [
        format!("redis://:wrong@127.0.0.1:{port}/0"),
        format!("redis://alice:wrong@127.0.0.1:{port}/0"),
        format!("redis://127.0.0.1:{port}/0"),
    ] {
        let e = aiolock::blocking::Cache::from_url(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Backend, "{bad}: {e}");
        assert!(
            !e.to_string().contains("wrong"),
            "no password in messages: {e}"
        );
        let e = aiolock::Cache::from_url(&bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Backend, "{bad}: {e}");
    }
}

/// Malformed URLs and unknown schemes are `InvalidArgument`; an unreachable server and
/// a server that never answers fail within the timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers() {
    for url in [
        "redis://",
        "redis://:70000",
        "redis://host:port",
        "redis://[::1",
        "redis:///0",
        "redis://h?pool_size=0",
        "redis://h?connect_timeout=abc",
        "bogus://h",
        "redis+unix://",
    ] {
        let e = aiolock::blocking::Cache::from_url(url).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{url}: {e}");
        let e = aiolock::Cache::from_url(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{url}: {e}");
    }

    // A closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{closed}?connect_timeout=0.5");
    let t = Instant::now();
    let e = aiolock::blocking::Cache::from_url(&url).unwrap_err();
    assert!(e.is_connection() || e.is_timeout(), "{e}");
    let e = aiolock::Cache::from_url(&url).await.unwrap_err();
    assert!(e.is_connection() || e.is_timeout(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}?connect_timeout=0.3&response_timeout=0.3");
    let t = Instant::now();
    let e = aiolock::blocking::Cache::from_url(&url).unwrap_err();
    assert!(e.is_timeout() || e.is_connection(), "{e}");
    let e = aiolock::Cache::from_url(&url).await.unwrap_err();
    assert!(e.is_timeout() || e.is_connection(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(silent);

    // A missing socket.
    let e = aiolock::blocking::Cache::from_url("redis+unix:///nonexistent/redis.sock").unwrap_err();
    assert!(e.is_connection(), "{e}");
}

/// The optimistic lock on Redis compares values: an intervening write of the same
/// bytes is not seen (ABA, as documented); a different value is.
#[test]
fn optimistic_lock_compares_values() {
    let server = RedisServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.unix_url("")).unwrap();
    cache.set("o", b"1", None).unwrap();
    let lock = cache.optimistic_lock("o").unwrap();
    cache.set("o", b"2", None).unwrap();
    cache.set("o", b"1", None).unwrap();
    lock.cas(b"3", None).unwrap();
    assert_eq!(cache.get("o").unwrap().as_deref(), Some(&b"3"[..]));
    // Binary values, namespaced keys.
    let v = b"\0\xff\r\n value";
    cache.set("bin\0key", v, None).unwrap();
    let lock = cache.optimistic_lock("bin\0key").unwrap();
    assert_eq!(lock.value(), Some(&v[..]));
    lock.cas(b"\x01", Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(
        cache.ttl("bin\0key").unwrap(),
        aiolock::Ttl::Expires(_)
    ));
}

/// A script cache flushed on the server (as after a restart) is reloaded.
#[test]
fn flushed_scripts_are_reloaded() {
    let server = RedisServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.unix_url("")).unwrap();
    let g = cache
        .redlock("k", Duration::from_secs(5))
        .acquire()
        .unwrap();
    server.admin(&["SCRIPT", "FLUSH"]);
    assert!(g.release().unwrap());
    server.admin(&["SCRIPT", "FLUSH"]);
    assert!(!cache.delete("k-lock").unwrap());
}

/// Set in the child process of [`tls_rediss`]: the `rediss://` URL to use.
#[cfg(feature = "redis-tls")]
const TLS_CHILD_URL: &str = "AIOLOCK_TEST_TLS_URL";

/// `rediss://` against a TLS-only port, with a certificate from a CA made for the test.
/// The CA is trusted through `SSL_CERT_FILE`, which is process-wide: the client side
/// runs in a child process. Without the CA the connection fails with a clear error.
#[cfg(feature = "redis-tls")]
#[test]
fn tls_rediss() {
    if let Ok(url) = std::env::var(TLS_CHILD_URL) {
        let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
        cache.set("k", b"v", None).unwrap();
        let g = cache
            .redlock("k", Duration::from_secs(5))
            .acquire()
            .unwrap();
        assert!(g.release().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = aiolock::Cache::from_url(&url).await.unwrap();
            assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=aiolock test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RedisServer::with(Config {
        tcp: false,
        args: vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ],
    });
    let url = format!("rediss://localhost:{tls_port}/0?connect_timeout=2");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "redis_backend::tls_rediss",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TLS_CHILD_URL, &url)
        .env("SSL_CERT_FILE", path("ca.crt"))
        .status()
        .unwrap();
    assert!(status.success(), "the TLS client process failed");
    // The value it stored went over TLS to this server.
    assert!(server.admin(&["GET", "k"]).contains("v"));
    // Here the CA is not trusted: a clear error, no panic.
    if std::env::var_os("SSL_CERT_FILE").is_none() {
        let e = aiolock::blocking::Cache::from_url(&url).unwrap_err();
        assert!(e.is_connection(), "{e}");
    }
}

/// A blocking waiter whose pooled connections were all killed while idle still waits
/// and wakes on the release (the pool is refilled with fresh connections).
#[test]
fn blocking_waiter_after_idle_connections_were_killed() {
    let server = RedisServer::start();
    let url = server.unix_url("namespace=t:&pool_size=4");
    let holder_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let waiter_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    // Fill the waiter's pool with several idle connections.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| waiter_cache.get("x").unwrap());
        }
    });
    let holder = holder_cache
        .redlock("k", Duration::from_secs(30))
        .acquire()
        .unwrap();
    server.admin(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    let outcome = std::thread::scope(|s| {
        let w = s.spawn(|| {
            waiter_cache
                .redlock("k", Duration::from_secs(30))
                .acquire()
                .unwrap()
                .outcome()
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(holder.release().unwrap());
        w.join().unwrap()
    });
    assert_eq!(outcome, Outcome::Released);
}

/// Async waiters cancelled mid-wait (their futures dropped) leave nothing behind: a
/// later waiter still wakes on the release, and the channel ends unsubscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_async_waiters_leave_no_subscription() {
    let server = RedisServer::start();
    let cache = aiolock::Cache::from_url(&server.unix_url(""))
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let holder = cache.redlock("k", lease).acquire().await.unwrap();
    for i in 0..20u64 {
        let acquire = cache.redlock("k", lease).acquire();
        let cancelled = tokio::time::timeout(Duration::from_micros(50 * i), acquire).await;
        assert!(cancelled.is_err(), "the holder still holds it");
    }
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.redlock("k", lease).acquire().await.unwrap().outcome() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(holder.release().await.unwrap());
    assert_eq!(waiter.await.unwrap(), Outcome::Released);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channels = server.admin(&["PUBSUB", "NUMSUB", "aiolock:release:k-lock"]);
    assert!(channels.ends_with(":0\r\n"), "{channels}");
}

/// A URL that asks for RESP3 (`?protocol=resp3`) works in both flavors, waits included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_urls() {
    let server = RedisServer::start();
    let url = server.unix_url("protocol=resp3&namespace=r3:");
    assert_cross_flavor_hand_off(&url).await;
    let async_cache = aiolock::Cache::from_url(&url).await.unwrap();
    let sync_cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    sync_cache
        .set("v", b"1", Some(Duration::from_secs(9)))
        .unwrap();
    assert!(matches!(
        async_cache.ttl("v").await.unwrap(),
        aiolock::Ttl::Expires(_)
    ));
    let lock = sync_cache.optimistic_lock("v").unwrap();
    lock.cas(b"2", None).unwrap();
    assert_eq!(
        async_cache.get("v").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
}
