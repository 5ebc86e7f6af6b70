//! memcached-specific behaviour, against real servers (the generic suite runs on
//! memcached too, see `backend_suite!` in `tests/main.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiolock::{ErrorKind, Outcome, Ttl};

use crate::support::memcached::{Listen, MemcachedServer};
use crate::support::proxy::Proxy;

mod pool;
mod shared_polls;

/// The unix socket of a server started by [`MemcachedServer::start`].
fn socket(server: &MemcachedServer) -> std::path::PathBuf {
    match server.listen() {
        Listen::Unix(path) => path.clone(),
        Listen::Tcp(_) => panic!("unix server expected"),
    }
}

/// A proxy in front of `server`, and its cache URL (with `options`).
fn proxied(server: &MemcachedServer, options: &str) -> (Proxy, String) {
    let proxy = Proxy::unix(socket(server));
    let url = format!("memcached+unix://{}?{options}", proxy.path().display());
    (proxy, url)
}

/// One test body, both flavors: `$name::blocking::run` and `$name::nonblocking::run`,
/// each with a fresh server on a unix socket and the flavor's `Cache` in scope. The
/// body is written async (`.await`); the blocking copy has them stripped.
macro_rules! both_flavors {
    ($(#[$doc:meta])* $name:ident($server:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            mod blocking {
                #[allow(unused_imports)]
                use super::super::*;
                #[allow(unused_imports)]
                use aiolock::blocking::Cache;
                use maybe_async::must_be_sync as maybe_async;

                #[maybe_async]
                async fn body($server: &MemcachedServer) $body

                #[test]
                fn run() {
                    body(&MemcachedServer::start());
                }
            }

            mod nonblocking {
                #[allow(unused_imports)]
                use super::super::*;
                #[allow(unused_imports)]
                use aiolock::Cache;
                use maybe_async::must_be_async as maybe_async;

                #[maybe_async]
                async fn body($server: &MemcachedServer) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn run() {
                    let server = tokio::task::spawn_blocking(MemcachedServer::start)
                        .await
                        .unwrap();
                    body(&server).await;
                }
            }
        }
    };
}

/// Polls until `key` is gone (a real TTL running out), at most `patience`.
fn wait_gone(cache: &aiolock::blocking::Cache, key: &str, patience: Duration) -> Duration {
    let start = Instant::now();
    while cache.exists(key).unwrap() {
        assert!(start.elapsed() < patience, "{key} still there");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// The race aiocache calls unfixable: holder A stalls past its lease, B acquires,
/// A's late release must leave B's lock alone.
#[test]
fn stalled_holder_cannot_release_the_next_holders_lock() {
    let server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let a = cache
        .redlock("job", Duration::from_secs(1))
        .acquire()
        .unwrap();
    assert!(a.is_acquired());
    // A stalls past its lease: its key runs out.
    wait_gone(&cache, "job-lock", Duration::from_secs(10));
    let b = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert_eq!(b.outcome(), Outcome::Acquired, "A's lease ended");
    assert!(!a.release().unwrap(), "A is told its lease had ended");
    assert_eq!(
        cache.get("job-lock").unwrap().as_deref(),
        Some(b.token().unwrap().as_bytes()),
        "B's lock survives A's release"
    );
    assert!(b.release().unwrap());
    assert!(!cache.exists("job-lock").unwrap());
}

/// The server restarts while A holds the lock (CAS counters restart too, so A's and
/// B's CAS uniques may be equal): A's release never deletes B's lock.
#[test]
fn restart_while_held_never_deletes_the_new_holders_lock_blocking() {
    let mut server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    for round in 0..3 {
        let a = cache
            .redlock("job", Duration::from_secs(30))
            .acquire()
            .unwrap();
        assert!(a.is_acquired());
        server.restart();
        // The pool's connections died with the old server: replaced transparently.
        let b = cache
            .redlock("job", Duration::from_secs(30))
            .acquire()
            .unwrap();
        assert_eq!(
            b.outcome(),
            Outcome::Acquired,
            "round {round}: a new server"
        );
        assert!(
            !a.release().unwrap(),
            "round {round}: A does not own the new lock"
        );
        assert_eq!(
            cache.get("job-lock").unwrap().as_deref(),
            Some(b.token().unwrap().as_bytes()),
            "round {round}: B's lock survives"
        );
        assert!(b.release().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_held_never_deletes_the_new_holders_lock_async() {
    let mut server = MemcachedServer::start();
    let cache = aiolock::Cache::from_url(&server.url()).await.unwrap();
    let other = aiolock::Cache::from_url(&server.url()).await.unwrap();
    let a = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(a.is_acquired());
    tokio::task::block_in_place(|| server.restart());
    let b = other
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert_eq!(b.outcome(), Outcome::Acquired);
    assert!(!a.release().await.unwrap());
    assert_eq!(
        cache.get("job-lock").await.unwrap().as_deref(),
        Some(b.token().unwrap().as_bytes())
    );
    assert!(b.release().await.unwrap());
}

/// A server with CAS disabled (`-C`) answers CAS 0, and `md C0` would delete
/// unconditionally: release and optimistic locks refuse it with a clear error, and the
/// lock is left in place (to expire).
#[test]
fn cas_disabled_server_is_a_clear_error() {
    let server = MemcachedServer::with_args(&["-C"]);
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let guard = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .unwrap();
    assert!(guard.is_acquired(), "add works without CAS");
    let err = guard.release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("-C"), "{err}");
    assert!(cache.exists("job-lock").unwrap(), "nothing deleted");

    cache.set("o", b"1", None).unwrap();
    let err = cache.optimistic_lock("o").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(err.to_string().contains("CAS disabled"), "{err}");
}

#[tokio::test]
async fn cas_disabled_server_is_a_clear_error_async() {
    let server = tokio::task::spawn_blocking(|| MemcachedServer::with_args(&["-C"]))
        .await
        .unwrap();
    let cache = aiolock::Cache::from_url(&server.url()).await.unwrap();
    let guard = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let err = guard.release().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(cache.exists("job-lock").await.unwrap(), "nothing deleted");
}

const CHILD_URL: &str = "AIOLOCK_TEST_CHILD_HOLDER_URL";

/// Not a test on its own: the holder process of `cross_process_hand_off`, which runs
/// this test binary again with `AIOLOCK_TEST_CHILD_HOLDER_URL` set. Commands on
/// stdin: `acquire`, `release`; it answers `ACQUIRED` / `RELEASED <bool>`.
#[test]
fn child_process_holder() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let mut guard = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        match line.unwrap().trim() {
            "acquire" => {
                let g = cache
                    .redlock("handoff", Duration::from_secs(30))
                    .acquire()
                    .unwrap();
                assert!(g.is_acquired());
                guard = Some(g);
                writeln!(out, "ACQUIRED").unwrap();
            }
            "release" => {
                let released = guard.take().unwrap().release().unwrap();
                writeln!(out, "RELEASED {released}").unwrap();
            }
            other => panic!("unknown command {other:?}"),
        }
        out.flush().unwrap();
    }
}

struct Child {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child {
    fn start(url: &str) -> Child {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "memcached_specific::child_process_holder",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_URL, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Child {
            stdin: child.stdin.take().unwrap(),
            lines,
            child,
        }
    }

    /// Sends `command` and returns the answer that starts with `answer` (libtest may
    /// print its own words before it on the same line).
    fn ask(&mut self, command: &str, answer: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no answer to {command:?} from the holder: {e}"));
            if let Some(at) = line.find(answer) {
                return line[at..].trim().to_string();
            }
        }
    }
}

/// A holder in another process; waiters here (blocking, then async) return `Released`
/// right after its release, not at its 30 s lease end.
#[test]
fn cross_process_hand_off() {
    let server = MemcachedServer::start();
    let mut child = Child::start(&server.url());
    // The waiters go through a proxy that tells when they poll the held lock.
    let (proxy, url) = proxied(&server, "");
    let polls = |n| proxy.wait_sent(b"mg handoff-lock v t", n);

    child.ask("acquire", "ACQUIRED");
    let waiter = {
        let url = url.clone();
        std::thread::spawn(move || {
            let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
            let g = cache
                .redlock("handoff", Duration::from_secs(30))
                .acquire()
                .unwrap();
            (g.outcome(), Instant::now())
        })
    };
    polls(1);
    let asked = Instant::now();
    assert_eq!(child.ask("release", "RELEASED"), "RELEASED true");
    let (outcome, woke) = waiter.join().unwrap();
    assert_eq!(outcome, Outcome::Released);
    assert!(woke >= asked);
    assert!(
        woke - asked < Duration::from_secs(5),
        "woken by the release, not by the lease end: {:?}",
        woke - asked
    );

    child.ask("acquire", "ACQUIRED");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let waiter = rt.spawn(async move {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let g = cache
            .redlock("handoff", Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        (g.outcome(), Instant::now())
    });
    let before = proxy.sent(b"mg handoff-lock v t");
    polls(before + 1);
    let asked = Instant::now();
    assert_eq!(child.ask("release", "RELEASED"), "RELEASED true");
    let (outcome, woke) = rt.block_on(waiter).unwrap();
    assert_eq!(outcome, Outcome::Released);
    assert!(woke >= asked && woke - asked < Duration::from_secs(5));

    drop(child.stdin);
    assert!(child.child.wait().unwrap().success());
}

/// A fake server that answers `mn` (the connect check) and records every other byte.
fn recording_server() -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("memcached://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while pending.starts_with(b"mn\r\n") {
                        pending.drain(..4);
                        let _ = stream.write_all(b"MN\r\n");
                    }
                    if !pending.is_empty() && !b"mn\r\n".starts_with(&pending) {
                        record.lock().unwrap().extend_from_slice(&pending);
                        pending.clear();
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A fake server that answers `mn` with `MN` and every other command line with
/// `reply`, then closes nothing.
fn lying_server(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "memcached://{}?response_timeout=0.5",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { return };
                    let answer = if line == b"mn\r" {
                        &b"MN\r\n"[..]
                    } else {
                        reply
                    };
                    if writer.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Replies this client does not understand are `Protocol` errors (never a panic, never
/// a wrong answer), and the connection they came on is not used again.
#[test]
fn malformed_replies_are_protocol_errors() {
    for reply in [
        &b"XX\r\n"[..],
        b"VA 3 c1\r\nabcd\r\n",
        b"VA -1\r\n",
        b"HD c1 c1\r\n",
        b"VA 99999999999999999999\r\n",
        b"HD\n",
    ] {
        let cache = aiolock::blocking::Cache::from_url(&lying_server(reply)).unwrap();
        for _ in 0..3 {
            let err = cache.get("k").unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Protocol,
                "{:?}: {err}",
                String::from_utf8_lossy(reply)
            );
        }
    }
    // Well-formed, but not an answer to the command.
    let cache = aiolock::blocking::Cache::from_url(&lying_server(b"NS\r\n")).unwrap();
    assert_eq!(cache.get("k").unwrap_err().kind(), ErrorKind::Protocol);
    // NS to the add (lost), then NS to the waiter's poll: a Protocol error.
    let err = cache
        .redlock("k", Duration::from_secs(1))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

fn bad_keys() -> Vec<Vec<u8>> {
    vec![
        b"a b".to_vec(),
        b"a\rb".to_vec(),
        b"a\nb".to_vec(),
        b"a\0b".to_vec(),
        b"a\tb".to_vec(),
        b"a\x7fb".to_vec(),
        vec![b'k'; 251],
        Vec::new(),
    ]
}

/// Keys memcached would misread (a space turns the rest into flags, a newline ends the
/// command, 251 bytes make it run the value as commands) fail with `InvalidKey`, and
/// not one byte reaches the server.
#[test]
fn bad_keys_are_refused_before_sending_blocking() {
    let (url, seen) = recording_server();
    let backend =
        aiolock::blocking::MemcachedBackend::connect(&format!("{url}?pool_size=1")).unwrap();
    let cache = aiolock::blocking::Cache::new(backend.clone());
    for key in bad_keys() {
        let k = &key[..];
        let errors = [
            cache.get(k).unwrap_err(),
            cache.set(k, b"v", None).unwrap_err(),
            cache.add(k, b"v", None).unwrap_err(),
            cache.delete(k).unwrap_err(),
            cache.exists(k).unwrap_err(),
            cache.ttl(k).unwrap_err(),
            cache.optimistic_lock(k).unwrap_err(),
            cache
                .redlock(k, Duration::from_secs(1))
                .acquire()
                .unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err.kind(), ErrorKind::InvalidKey, "{key:?}: {err}");
        }
    }
    // The namespace counts: 246 bytes + "-lock" is too long for a lock key.
    let long = vec![b'k'; 246];
    let err = cache
        .redlock(&long[..], Duration::from_secs(1))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    // Anything sent on the one connection came before this ping and its answer.
    backend.ping().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().unwrap()),
        "",
        "nothing sent"
    );
}

#[tokio::test]
async fn bad_keys_are_refused_before_sending_async() {
    let (url, seen) = recording_server();
    let backend = aiolock::MemcachedBackend::connect(&format!("{url}?pool_size=1"))
        .await
        .unwrap();
    let cache = aiolock::Cache::new(backend.clone());
    for key in bad_keys() {
        let k = &key[..];
        let errors = [
            cache.get(k).await.unwrap_err(),
            cache.set(k, b"v", None).await.unwrap_err(),
            cache.add(k, b"v", None).await.unwrap_err(),
            cache.delete(k).await.unwrap_err(),
            cache.exists(k).await.unwrap_err(),
            cache.ttl(k).await.unwrap_err(),
            cache.optimistic_lock(k).await.unwrap_err(),
            cache
                .redlock(k, Duration::from_secs(1))
                .acquire()
                .await
                .unwrap_err(),
        ];
        for err in errors {
            assert_eq!(err.kind(), ErrorKind::InvalidKey, "{key:?}: {err}");
        }
    }
    backend.ping().await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "nothing sent");
}

fn refused_port() -> u16 {
    // Bound then closed: nothing listens there.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server that is down is a `Connection` error, one that never answers a `Timeout`,
/// both within the configured timeouts.
#[test]
fn unreachable_server_is_a_connection_error_blocking() {
    let opts = "connect_timeout=1&response_timeout=0.3";
    for url in [
        format!("memcached://127.0.0.1:{}?{opts}", refused_port()),
        format!("memcached+unix:///nonexistent/aiolock/memcached.sock?{opts}"),
    ] {
        let start = Instant::now();
        let err = aiolock::blocking::Cache::from_url(&url).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{url}: {err}");
        assert!(start.elapsed() < Duration::from_secs(3), "{url}");
    }
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("memcached://{}?{opts}", silent.local_addr().unwrap());
    let start = Instant::now();
    let err = aiolock::blocking::Cache::from_url(&url).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(3));

    // A server that goes away after the connection.
    let mut server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&format!("{}?{opts}", server.url())).unwrap();
    cache.set("k", b"v", None).unwrap();
    server.stop();
    let err = cache.get("k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error_async() {
    let opts = "connect_timeout=1&response_timeout=0.3";
    let url = format!("memcached://127.0.0.1:{}?{opts}", refused_port());
    let err = aiolock::Cache::from_url(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("memcached://{}?{opts}", silent.local_addr().unwrap());
    let start = Instant::now();
    let err = aiolock::Cache::from_url(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(3));
}

/// Requests cancelled mid-flight (their futures dropped) never leave a reply behind
/// for a later request: every checked get afterwards reads its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_never_corrupt_later_replies() {
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let cache = aiolock::Cache::from_url(&format!("{}?pool_size=2", server.url()))
        .await
        .unwrap();
    let value = |i: usize| {
        let mut v = format!("value {i} ").into_bytes();
        // Some values span several reads, so cancellation can hit mid-reply.
        v.resize(
            if i.is_multiple_of(4) {
                200_000 + i
            } else {
                10 + i
            },
            b'0' + (i % 10) as u8,
        );
        v
    };
    for i in 0..16 {
        cache.set(format!("k{i}"), value(i), None).await.unwrap();
    }
    let mut cancelled = 0;
    for round in 0..3000usize {
        let a = round % 16;
        let patience = Duration::from_micros([0, 5, 20, 50, 100, 300][round % 6]);
        if tokio::time::timeout(patience, cache.get(format!("k{a}")))
            .await
            .is_err()
        {
            cancelled += 1;
        }
        let b = (round * 7 + 3) % 16;
        let got = cache.get(format!("k{b}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(&value(b)[..]), "round {round}");
    }
    assert!(
        cancelled > 0,
        "no request was cancelled: the test proves nothing"
    );
}

/// The TCP transport, both flavors: cache operations and a lock cycle.
#[test]
fn tcp_transport_blocking() {
    let server = MemcachedServer::tcp();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?namespace=t:", server.url())).unwrap();
    cache.set("k", b"\0binary\r\n", None).unwrap();
    assert_eq!(
        cache.get("k").unwrap().as_deref(),
        Some(&b"\0binary\r\n"[..])
    );
    let g = cache
        .redlock("k", Duration::from_secs(5))
        .acquire()
        .unwrap();
    assert!(g.is_acquired());
    assert!(g.release().unwrap());
}

#[tokio::test]
async fn tcp_transport_async() {
    let server = tokio::task::spawn_blocking(MemcachedServer::tcp)
        .await
        .unwrap();
    let cache = aiolock::Cache::from_url(&server.url()).await.unwrap();
    cache.set("k", b"v", None).await.unwrap();
    let lock = cache.optimistic_lock("k").await.unwrap();
    lock.cas(b"w", None).await.unwrap();
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"w"[..]));
    let g = cache
        .redlock("k", Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
}

/// Values are binary-safe up to memcached's item size; a larger one is a clear
/// `Backend` error and the connection after it still works.
#[test]
fn large_and_too_large_values() {
    let server = MemcachedServer::start();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?pool_size=1", server.url())).unwrap();
    let big: Vec<u8> = (0..900_000u32).map(|i| (i * 31 % 251) as u8).collect();
    cache.set("big", &big, None).unwrap();
    assert_eq!(cache.get("big").unwrap().as_deref(), Some(&big[..]));
    let err = cache.set("huge", vec![7u8; 2 << 20], None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert_eq!(cache.get("huge").unwrap(), None);
    assert_eq!(cache.get("big").unwrap().as_deref(), Some(&big[..]));
}

/// TTLs beyond 30 days (memcached's limit for relative times) are sent as absolute
/// times and still read back as durations.
#[test]
fn ttls_longer_than_thirty_days() {
    let server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let forty_days = Duration::from_secs(40 * 86_400);
    cache.set("k", b"v", Some(forty_days)).unwrap();
    match cache.ttl("k").unwrap() {
        Ttl::Expires(d) => assert!(
            d > forty_days - Duration::from_secs(5) && d <= forty_days + Duration::from_secs(4),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
}

/// Many concurrent callers share at most `pool_size` connections.
#[test]
fn pool_bounds_the_connections() {
    let server = MemcachedServer::start();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?pool_size=3", server.url())).unwrap();
    crate::blocking::rt::concurrently(16, |i| {
        for j in 0..200 {
            cache.set(format!("k{i}"), format!("{j}"), None).unwrap();
        }
    });
    let stats = raw_stats(&server);
    // curr_connections counts this stats connection and the listening socket too.
    let current: usize = stats["curr_connections"].parse().unwrap();
    let total: usize = stats["total_connections"].parse().unwrap();
    assert!(current <= 3 + 2, "{current} connections open");
    assert!(total <= 3 + 3, "{total} connections ever opened");
}

fn raw_stats(server: &MemcachedServer) -> std::collections::HashMap<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket(server)).unwrap();
    s.write_all(b"stats\r\n").unwrap();
    let mut text = String::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.starts_with("END") || line.is_empty() {
            break;
        }
        text.push_str(&line);
    }
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The memcached backend and its futures can cross threads and be spawned.
#[test]
fn backend_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<aiolock::MemcachedBackend>();
    send_sync::<aiolock::blocking::MemcachedBackend>();
    send(&aiolock::MemcachedBackend::connect("memcached://127.0.0.1"));
    let _ = |backend: aiolock::MemcachedBackend| {
        send(&backend.ping());
        send(
            &aiolock::Cache::new(backend)
                .redlock("k", Duration::from_secs(1))
                .acquire(),
        );
    };
}

/// A cache through `proxy`'s URL, with one pooled connection already open (so that a
/// lost reply comes on a reused connection, where the old client resent everything).
fn warm_cache(url: &str) -> aiolock::blocking::Cache {
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    cache.get("warm").unwrap();
    cache
}

both_flavors!(
    /// The server runs the claim (`ms ME`) and its reply is lost: the claim reads the
    /// key back and finds its own token, so it holds the lock (not "held by someone",
    /// which would leave the lock held by nobody for the whole lease), and releases it.
    a_claim_whose_reply_was_lost_is_won(server) {
        let (proxy, url) = proxied(server, "pool_size=1");
        let cache = Cache::from_url(&url).await.unwrap();
        // One pooled connection open, so that the reply is lost on a reused one
        // (where the old client resent everything).
        cache.get("warm").await.unwrap();
        proxy.lose_reply_after(b" ME ");
        let guard = cache
            .redlock("job", Duration::from_secs(30))
            .wait_at_most(Duration::from_secs(1))
            .acquire()
            .await
            .unwrap();
        assert_eq!(proxy.sent(b" ME "), 1, "the claim is not sent twice");
        assert_eq!(guard.outcome(), Outcome::Acquired);
        let stored = cache.get("job-lock").await.unwrap();
        assert_eq!(stored.as_deref(), Some(guard.token().unwrap().as_bytes()));
        let released = guard.release().await.unwrap();
        assert!(released, "the lock is releasable");
        let left = cache.exists("job-lock").await.unwrap();
        assert!(!left);
    }
);

/// A claim that lost to a holder, whose `NS` was lost: reading back names the holder,
/// and the waiter wakes on that holder's release.
#[test]
fn a_lost_claim_reply_names_the_holder() {
    let server = MemcachedServer::start();
    let direct = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let holder = direct
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .unwrap();
    let (proxy, url) = proxied(&server, "pool_size=1");
    let cache = warm_cache(&url);
    proxy.lose_reply_after(b" ME ");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            cache
                .redlock("job", Duration::from_secs(30))
                .acquire()
                .unwrap()
                .outcome()
        });
        proxy.wait_sent(b"mg job-lock v t", 1);
        assert!(holder.release().unwrap());
        assert_eq!(waiter.join().unwrap(), Outcome::Released);
    });
    assert_eq!(proxy.sent(b" ME "), 1, "the claim is not sent twice");
}

/// A compare-and-set the server ran, whose reply was lost, reports success: never a
/// `Conflict` (documented as "nothing was written", so the caller would apply its
/// update twice). Both the CAS of a present key and the add of an absent one.
#[test]
fn a_cas_whose_reply_was_lost_never_reports_conflict() {
    let server = MemcachedServer::start();
    let (proxy, url) = proxied(&server, "pool_size=1");
    let cache = warm_cache(&url);
    cache.set("k", b"1", None).unwrap();
    let lock = cache.optimistic_lock("k").unwrap();
    proxy.lose_reply_after(b"ms k 1 C");
    lock.cas(b"2", None).unwrap();
    assert_eq!(cache.get("k").unwrap().as_deref(), Some(&b"2"[..]));

    let lock = cache.optimistic_lock("fresh").unwrap();
    proxy.lose_reply_after(b"ms fresh");
    lock.cas(b"new", None).unwrap();
    assert_eq!(cache.get("fresh").unwrap().as_deref(), Some(&b"new"[..]));

    // Lost, and another writer got there in between: the outcome is unknown, which
    // is a Connection error, not a Conflict.
    cache.set("k", b"1", None).unwrap();
    let lock = cache.optimistic_lock("k").unwrap();
    cache.set("k", b"other", None).unwrap();
    proxy.lose_reply_after(b"ms k 1 C");
    let err = lock.cas(b"3", None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("unknown"), "{err}");
}

/// `add` whose reply was lost: it reads back its own value (true), not "the key
/// existed" (the resend's `NS`).
#[test]
fn an_add_whose_reply_was_lost_is_stored() {
    let server = MemcachedServer::start();
    let (proxy, url) = proxied(&server, "pool_size=1");
    let cache = warm_cache(&url);
    proxy.lose_reply_after(b"ms a ");
    assert!(cache.add("a", b"mine", None).unwrap());
    assert_eq!(proxy.sent(b"ms a "), 1);
}

/// A delete whose reply was lost is never sent again (it could delete a newer value):
/// the caller learns that the outcome is unknown.
#[test]
fn a_delete_whose_reply_was_lost_is_not_resent() {
    let server = MemcachedServer::start();
    let (proxy, url) = proxied(&server, "pool_size=1");
    let cache = warm_cache(&url);
    cache.set("d", b"v", None).unwrap();
    proxy.lose_reply_after(b"md d");
    let err = cache.delete("d").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("unknown"), "{err}");
    assert_eq!(proxy.sent(b"md d"), 1, "sent once");
    // A plain set is safe to repeat: its lost reply is resent.
    proxy.lose_reply_after(b"ms s ");
    cache.set("s", b"v", None).unwrap();
    assert_eq!(proxy.sent(b"ms s "), 2);
}

/// A release whose compare-and-delete ran but whose reply was lost: the lock is gone,
/// but this call cannot prove it removed it (the lease could have ended, another
/// client could have deleted it): an "outcome unknown" Connection error, not
/// `Ok(false)` ("the lease had already ended"). A release whose delete did not run
/// (the token is still there) sends it again and reports `true`.
#[test]
fn a_release_whose_reply_was_lost_says_the_outcome_is_unknown() {
    let server = MemcachedServer::start();
    let (proxy, url) = proxied(&server, "pool_size=1");
    let cache = warm_cache(&url);
    let guard = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .unwrap();
    proxy.lose_reply_after(b"md job-lock C");
    let err = guard.release().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("unknown"), "{err}");
    assert!(!cache.exists("job-lock").unwrap(), "released");

    // The connection is cut before the server reads the delete: nothing ran.
    let guard = cache
        .redlock("job", Duration::from_secs(30))
        .acquire()
        .unwrap();
    proxy.cut();
    assert!(guard.release().unwrap());
    assert!(!cache.exists("job-lock").unwrap());
}

both_flavors!(
    /// A waiter's bound holds even when the server stops answering mid-wait: each
    /// poll runs by the waiter's deadline, not the 2 s response timeout.
    a_waiter_returns_by_its_bound_when_replies_stall(server) {
        let direct = Cache::from_url(&server.url()).await.unwrap();
        let lease = Duration::from_secs(30);
        let holder = direct.redlock("job", lease).acquire().await.unwrap();
        let (proxy, url) = proxied(server, "pool_size=1&response_timeout=2");
        let cache = Cache::from_url(&url).await.unwrap();
        cache.get("warm").await.unwrap();
        // Replies on the connection that polls the lock come 5 s late.
        proxy.delay_down(Duration::from_secs(5), Some(b"v t"));
        let bound = Duration::from_millis(50);
        let start = Instant::now();
        let guard = cache
            .redlock("job", lease)
            .wait_at_most(bound)
            .acquire()
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(guard.outcome(), Outcome::TimedOut);
        assert!(took < bound + Duration::from_millis(300), "returned after {took:?}");
        proxy.clear();
        let released = holder.release().await.unwrap();
        assert!(released);
    }
);

both_flavors!(
    /// Against a stopped server (SIGSTOP) a request fails within about one response
    /// timeout, an acquire too (its possible add is cleaned up in the background, not
    /// by a second request under a second timeout), and opening a cache within the
    /// connect and response timeouts.
    calls_against_a_stopped_server_end_within_their_timeout(server) {
        let timeout = Duration::from_millis(500);
        let slack = Duration::from_millis(300);
        let url = format!("{}?response_timeout=0.5&connect_timeout=0.5", server.url());
        let cache = Cache::from_url(&url).await.unwrap();
        server.pause();
        let start = Instant::now();
        let err = cache.add("k", b"v", None).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(took < timeout + slack, "add: {took:?}");

        let start = Instant::now();
        let lease = Duration::from_secs(30);
        let err = cache.redlock("job", lease).acquire().await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(took < timeout + slack, "acquire: {took:?}");

        let start = Instant::now();
        let err = Cache::from_url(&url).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(took < 2 * timeout + slack, "open: {took:?}");
        server.resume();
    }
);

/// memcached keys are at most 250 bytes, and a lock is stored under namespace + key +
/// "-lock": get and set take a 250-byte key, a lock takes 245 bytes (namespace
/// included), and the error says why.
#[test]
fn lock_keys_leave_room_for_the_suffix() {
    let server = MemcachedServer::start();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?namespace=ns:", server.url())).unwrap();
    let longest = "k".repeat(247);
    cache.set(&longest, b"v", None).unwrap();
    assert_eq!(cache.get(&longest).unwrap().as_deref(), Some(&b"v"[..]));
    let fits = "k".repeat(242);
    let guard = cache
        .redlock(&fits, Duration::from_secs(5))
        .acquire()
        .unwrap();
    assert!(guard.release().unwrap());
    let err = cache
        .redlock("k".repeat(243), Duration::from_secs(5))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    let message = err.to_string();
    for part in [
        "namespace + key + lock suffix",
        "\"-lock\"",
        "250 bytes",
        "251 bytes",
        "245",
    ] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
}

/// The monotonic clock in seconds: memcached's clock counts its whole seconds.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current time into `ts`.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Sleeps until the monotonic clock reads `at`.
fn sleep_until(at: f64) {
    let left = at - monotonic();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// A bare connection that reads memcached's clock: the TTL of a key that never
/// expires in the test counts down one per tick of the server's clock.
struct ClockProbe {
    reader: BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl ClockProbe {
    fn new(server: &MemcachedServer) -> ClockProbe {
        let writer = std::os::unix::net::UnixStream::connect(socket(server)).unwrap();
        let mut probe = ClockProbe {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        };
        assert_eq!(probe.ask("ms clock 1 T100000\r\nx\r\n"), "HD");
        probe
    }

    fn ask(&mut self, request: &str) -> String {
        self.writer.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// The clock key's TTL now: one less for every tick of the server's clock.
    fn ttl(&mut self) -> i64 {
        let line = self.ask("mg clock t\r\n");
        line.split(' ')
            .find_map(|w| w.strip_prefix('t'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"))
    }

    /// Waits for the server's next tick; returns when it was seen (monotonic seconds,
    /// about a millisecond late) and the TTL after it.
    fn next_tick(&mut self) -> (f64, i64) {
        let before = self.ttl();
        loop {
            std::thread::sleep(Duration::from_micros(500));
            let ttl = self.ttl();
            if ttl != before {
                return (monotonic(), ttl);
            }
        }
    }
}

/// memcached's clock counts whole seconds, set by a one-second timer that drifts
/// through the second: when the timer's phase crosses a whole second (here, forced:
/// the server is stopped so that one tick comes 0.1–0.2 s late, across a second) the
/// clock steps by 2 in one tick, and every key stored in the second before lives
/// about a second less than its TTL. Measured: 40 locks of 1–2 s leases all live at
/// least their lease (sent as `ceil(lease)+1`, most lived less).
#[test]
fn locks_live_at_least_their_lease_when_the_clock_steps_by_two() {
    let server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let mut probe = ClockProbe::new(&server);
    let leases = [1000, 1250, 1500, 1750, 2000].map(Duration::from_millis);
    let mut tries = Vec::new();
    for attempt in 0..3 {
        // Put the timer's phase 0.85 s into the second: stop the server past its next
        // tick and let it run again at that phase (the late tick fires at once).
        let (tick, _) = probe.next_tick();
        server.pause();
        let resume = (tick + 1.05).floor() + 1.85;
        sleep_until(resume);
        server.resume();
        let (tick, before) = probe.next_tick();
        let phase = tick.fract();
        if !(0.8..0.93).contains(&phase) {
            // The machine was too slow to place it; try again.
            tries.push(format!("phase {phase:.3}"));
            continue;
        }
        // Locks stored during this second, up to just before the next tick ...
        let mut locks = Vec::new();
        let last = tick + 0.9;
        let mut i = 0;
        while monotonic() < last {
            let lease = leases[i % leases.len()];
            let key = format!("a{attempt}-{i}");
            let guard = cache.redlock(&key, lease).acquire().unwrap();
            assert!(guard.is_acquired());
            locks.push((format!("{key}-lock"), lease, Instant::now()));
            std::mem::forget(guard); // a holder that never releases
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        // ... then that tick comes 1.02 - phase (0.09–0.22 s) late, in the second after
        // next: the clock steps from K to K + 2.
        server.pause();
        let stopped = monotonic();
        sleep_until(tick.floor() + 2.02);
        server.resume();
        // The late tick fires at once: the clock moves on from where it stood.
        let after = loop {
            let ttl = probe.ttl();
            if ttl != before {
                break ttl;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        if before - after != 2 {
            // Not the step this test is about (stopped too late, after the tick).
            tries.push(format!(
                "step {} (stopped {:.3} s after the tick)",
                before - after,
                stopped - tick
            ));
            continue;
        }
        assert!(
            locks.len() >= 30,
            "only {} locks in the second",
            locks.len()
        );
        let mut gone = vec![None; locks.len()];
        while gone.iter().any(Option::is_none) {
            for (at, (key, _, _)) in gone.iter_mut().zip(&locks) {
                if at.is_none() && !cache.exists(key).unwrap() {
                    *at = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for ((key, lease, stored), gone) in locks.iter().zip(gone) {
            let lived = gone.unwrap() - *stored;
            assert!(
                lived >= *lease,
                "{key}: lease {lease:?}, lived {lived:?} (phase {phase:.3})"
            );
        }
        return;
    }
    panic!("could not make the server's clock step by 2: {tries:?}");
}

/// `n` checked writes and reads of this process's own keys; the number of wrong
/// answers or errors.
fn checked_round_trips(cache: &aiolock::blocking::Cache, tag: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let key = format!("{tag}{i}");
            let value = format!("{tag} value {i}");
            cache.set(&key, &value, None).is_err()
                || cache.get(&key).ok().flatten().as_deref() != Some(value.as_bytes())
        })
        .count()
}

/// Runs `child` in a forked child process (its result: the exit status) while the
/// parent runs `parent`; returns both.
fn forked(child: impl FnOnce() -> i32, parent: impl FnOnce() -> usize) -> (i32, usize) {
    // SAFETY: the test process runs this test alone (nextest: one process per test);
    // the child uses only this test's objects and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mine = parent();
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child died: {status}");
    (libc::WEXITSTATUS(status), mine)
}

/// A child forked from a process with pooled connections opens its own: parent and
/// child then talk at the same time, and each reads only its own replies (sharing the
/// parent's socket, one reads the other's).
#[test]
fn a_forked_child_does_not_use_its_parents_connections() {
    let server = MemcachedServer::start();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?pool_size=1", server.url())).unwrap();
    cache.set("warm", b"v", None).unwrap();
    let opened = |stats: &std::collections::HashMap<String, String>| -> usize {
        stats["total_connections"].parse().unwrap()
    };
    let before = opened(&raw_stats(&server));
    let (child, parent) = forked(
        || match checked_round_trips(&cache, "child", 2000) {
            0 => 0,
            wrong => i32::try_from(wrong.min(98)).unwrap(),
        },
        || checked_round_trips(&cache, "parent", 2000),
    );
    assert_eq!(child, 0, "wrong answers in the child");
    assert_eq!(parent, 0, "wrong answers in the parent");
    // The child opened one connection; the stats connections count one each.
    assert_eq!(opened(&raw_stats(&server)), before + 2);
}

/// The async flavor: the child runs its own runtime (tokio's do not survive fork)
/// with the cache its parent opened, and gets a connection of its own.
#[test]
fn a_forked_child_does_not_use_its_parents_connections_async() {
    let server = MemcachedServer::start();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let parent_rt = runtime();
    let url = format!("{}?pool_size=1", server.url());
    let cache = parent_rt.block_on(async {
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        cache.set("warm", b"v", None).await.unwrap();
        cache
    });
    let rounds = |cache: aiolock::Cache, tag: &'static str| async move {
        let mut wrong = 0;
        for i in 0..2000 {
            let key = format!("{tag}{i}");
            let value = format!("{tag} value {i}");
            if cache.set(&key, &value, None).await.is_err()
                || cache.get(&key).await.ok().flatten().as_deref() != Some(value.as_bytes())
            {
                wrong += 1;
            }
        }
        wrong
    };
    let (child, parent) = forked(
        || {
            let wrong = runtime().block_on(rounds(cache.clone(), "child"));
            i32::try_from(wrong.min(98)).unwrap()
        },
        || parent_rt.block_on(rounds(cache.clone(), "parent")),
    );
    assert_eq!(child, 0, "wrong answers in the child");
    assert_eq!(parent, 0, "wrong answers in the parent");
}

/// `stats` of `server` as `(name, value)` pairs, read on a connection of our own.
fn server_stats(server: &MemcachedServer) -> Vec<(String, u64)> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket(server)).unwrap();
    conn.write_all(b"stats\r\n").unwrap();
    let mut stats = Vec::new();
    for line in BufReader::new(conn).lines() {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        let mut words = line.split(' ').skip(1);
        if let (Some(name), Some(value)) = (words.next(), words.next())
            && let Ok(value) = value.parse()
        {
            stats.push((name.to_owned(), value));
        }
    }
    stats
}

/// The thundering herd on memcached, measured: 16 exclusive callers of one cache on
/// one key, 10 entries each. Only one woken waiter per release claims again (`ms`,
/// counted in `cmd_set`), so claims per entry stay below 3; the polls (`cmd_get`) are
/// printed with them (`--no-capture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_hand_off_commands_per_entry() {
    let server = tokio::task::spawn_blocking(MemcachedServer::start)
        .await
        .unwrap();
    let cache = aiolock::Cache::from_url(&server.url()).await.unwrap();
    let stat = |stats: &[(String, u64)], name: &str| {
        stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    };
    let before = tokio::task::block_in_place(|| server_stats(&server));
    let (callers, entries) = (16, 10);
    crate::exclusive::hand_offs(&cache, callers, entries).await;
    let after = tokio::task::block_in_place(|| server_stats(&server));
    let n = (callers * entries) as f64;
    let per_entry = |name| (stat(&after, name) - stat(&before, name)) as f64 / n;
    let claims = per_entry("cmd_set");
    eprintln!(
        "memcached exclusive, {callers} callers: {claims:.2} claims, {:.2} gets, {:.2} deletes per entry",
        per_entry("cmd_get"),
        per_entry("delete_hits") + per_entry("delete_misses"),
    );
    assert!(claims <= 3.0, "{claims:.2} claims per entry");
}

both_flavors!(
    /// An extended lock outlives its first lease (its key is rewritten with the new
    /// lease's TTL, `ceil(lease + 0.25 s) + 2` s) and lives at least until the guard's
    /// `lease_end`: the lower bound the guard states holds for a renewed key too.
    an_extended_lock_lives_at_least_until_its_lease_end(server) {
        let cache = Cache::from_url(&server.url()).await.unwrap();
        let first = Duration::from_millis(750);
        let acquired = Instant::now();
        let guard = cache.lock("job", first).try_acquire().await.unwrap();
        let mut guard = guard.expect("uncontended");
        // Sent as T3: gone 4.25 s after the claim at the latest, unless renewed.
        let unrenewed = acquired + Duration::from_millis(4250);
        guard.extend(Duration::from_secs(5)).await.unwrap();
        let end = guard.lease_end().unwrap();
        let gone = loop {
            let exists = cache.exists("job-lock").await.unwrap();
            if !exists {
                break Instant::now();
            }
            assert!(acquired.elapsed() < Duration::from_secs(15), "never expired");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(gone >= end, "gone {:?} before its lease end", end - gone);
        assert!(gone > unrenewed, "the first lease's key would be gone by then");
        let ok = guard.release().await.unwrap();
        assert!(!ok, "its lease ended");
    }
);

both_flavors!(
    /// The server runs an extension's write (`ms C<cas> T<ttl>`) and its reply is
    /// lost: the extension reads the lock back, finds our token and writes again
    /// against the CAS just read, so it reports the renewal (not "outcome unknown",
    /// not `Lost`), and the lock is still the guard's to release.
    an_extend_whose_reply_was_lost_writes_again(server) {
        let (proxy, url) = proxied(server, "pool_size=1");
        let cache = Cache::from_url(&url).await.unwrap();
        let guard = cache.lock("job", Duration::from_secs(5)).try_acquire().await;
        let mut guard = guard.unwrap().expect("uncontended");
        assert_eq!(proxy.sent(b"ms job-lock"), 1, "the claim");
        proxy.lose_reply_after(b"ms job-lock");
        guard.extend(Duration::from_secs(60)).await.unwrap();
        assert_eq!(proxy.sent(b"ms job-lock"), 3, "the lost write and the second one");
        match cache.ttl("job-lock").await.unwrap() {
            Ttl::Expires(left) => assert!(left > Duration::from_secs(50), "{left:?}"),
            other => panic!("{other:?}"),
        }
        let ok = guard.release().await.unwrap();
        assert!(ok);
    }
);

/// A holder renews its lease to a shorter one while a waiter polls: the waiter keeps
/// waiting through the renewal (the token is still there), and the end of the
/// shortened lease is a lease end (the waiter claims: `Acquired`), not a release. The
/// waiter's bounds from the 30 s key before the renewal no longer hold: its new CAS
/// says so.
#[test]
fn a_waiter_takes_the_end_of_a_shortened_lease_for_a_lease_end() {
    let server = MemcachedServer::start();
    let direct = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let mut holder = direct
        .lock("job", Duration::from_secs(30))
        .try_acquire()
        .unwrap()
        .expect("uncontended");
    let (proxy, url) = proxied(&server, "");
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            cache
                .redlock("job", Duration::from_secs(30))
                .wait_at_most(Duration::from_secs(20))
                .acquire()
                .unwrap()
        });
        // The waiter saw the 30 s key, then the holder shortens its lease.
        proxy.wait_sent(b"mg job-lock v t c", 1);
        holder.extend(Duration::from_millis(750)).unwrap();
        let guard = waiter.join().unwrap();
        assert_eq!(
            guard.outcome(),
            Outcome::Acquired,
            "a lease end, not a release"
        );
        assert!(guard.release().unwrap());
    });
    assert!(!holder.release().unwrap(), "its lease had ended");
}

/// The change of the server's `stats` counter `name` from `before` to `after`.
fn stat_delta(before: &[(String, u64)], after: &[(String, u64)], name: &str) -> u64 {
    let value =
        |stats: &[(String, u64)]| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
    value(after) - value(before)
}

both_flavors!(
    /// The uncontended fenced cycle (try_acquire + release) costs the round trips of
    /// the unfenced one, 3: the increment of the fence counter and the read that
    /// verifies the lock after it travel in the claim's write. Server commands per
    /// cycle: unfenced 1 set, 1 get, 1 delete; fenced 1 set, 1 incr, 2 gets, 1 delete.
    a_fenced_cycle_costs_no_extra_round_trip(server) {
        let (proxy, url) = proxied(server, "pool_size=1");
        let cache = Cache::from_url(&url).await.unwrap();
        let lease = Duration::from_secs(30);
        // The fence counter exists (its creation by `ma N0 J` counts as no incr).
        let warm = cache.lock("job", lease).fenced().try_acquire().await.unwrap();
        let released = warm.unwrap().release().await.unwrap();
        assert!(released);
        let mut measured = Vec::new();
        for fenced in [false, true] {
            let (reads, before) = (proxy.reads(), server_stats(server));
            let lock = cache.lock("job", lease);
            let lock = if fenced { lock.fenced() } else { lock };
            let guard = lock.try_acquire().await.unwrap().expect("uncontended");
            assert_eq!(guard.fence().is_some(), fenced);
            let released = guard.release().await.unwrap();
            assert!(released);
            let after = server_stats(server);
            let count = |name| stat_delta(&before, &after, name);
            let commands = (
                count("cmd_set"),
                count("incr_hits") + count("incr_misses"),
                count("cmd_get"),
                count("delete_hits"),
            );
            measured.push((proxy.reads() - reads, commands));
        }
        eprintln!("(round trips, (sets, incrs, gets, deletes)): unfenced {:?}, fenced {:?}",
            measured[0], measured[1]);
        assert_eq!(measured[0], (3, (1, 0, 1, 1)), "unfenced");
        assert_eq!(measured[1], (3, (1, 1, 2, 1)), "fenced: no extra round trip");
    }
);

both_flavors!(
    /// A counter memcached lost (`flush_all` here; a restart or an eviction alike) is
    /// created again from the client's clock in microseconds: the fences after it are
    /// still larger. The first fence is the clock, and the next ones count up by one.
    fences_grow_after_the_counter_is_flushed(server) {
        let cache = Cache::from_url(&server.url()).await.unwrap();
        let mut fences = Vec::new();
        for round in 0..4 {
            if round == 2 {
                let mut conn = std::os::unix::net::UnixStream::connect(socket(server)).unwrap();
                conn.write_all(b"flush_all\r\n").unwrap();
                let mut ok = [0u8; 4];
                conn.read_exact(&mut ok).unwrap();
                assert_eq!(&ok, b"OK\r\n");
                let counter = cache.get("job-lock-fence").await.unwrap();
                assert_eq!(counter, None, "flushed");
            }
            let lock = cache.lock("job", Duration::from_secs(30)).fenced();
            let guard = lock.try_acquire().await.unwrap().expect("uncontended");
            fences.push(guard.fence().unwrap());
            let released = guard.release().await.unwrap();
            assert!(released);
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(
            fences[0] <= now_us && now_us - fences[0] < 60_000_000,
            "seeded from the clock: {fences:?} at {now_us}"
        );
        assert_eq!(fences[1], fences[0] + 1);
        assert!(fences[2] > fences[1], "after the flush: {fences:?}");
        assert_eq!(fences[3], fences[2] + 1);
    }
);

/// A server restart loses the counter too (memcached keeps nothing): the next fence
/// is still larger, from the client's clock.
#[test]
fn fences_grow_across_a_server_restart() {
    let mut server = MemcachedServer::start();
    let cache = aiolock::blocking::Cache::from_url(&server.url()).unwrap();
    let fence = |cache: &aiolock::blocking::Cache| {
        let guard = cache
            .redlock("job", Duration::from_secs(30))
            .fenced()
            .acquire()
            .unwrap();
        assert!(guard.is_acquired());
        let fence = guard.fence().unwrap();
        assert!(guard.release().unwrap());
        fence
    };
    let before = fence(&cache);
    server.restart();
    assert_eq!(cache.get("job-lock-fence").unwrap(), None, "a new server");
    let after = fence(&cache);
    assert!(after > before, "{after} after {before}");
}

both_flavors!(
    /// A fence key that holds something other than a counter fails a fenced claim with
    /// a clear `Backend` error, and leaves no lock key behind (the add that won is
    /// released); a claim that lost to an unfenced holder fails alike and leaves the
    /// holder's lock alone.
    a_fence_key_holding_garbage_is_a_backend_error(server) {
        let cache = Cache::from_url(&server.url()).await.unwrap();
        cache.set("job-lock-fence", b"not a number", None).await.unwrap();
        let lease = Duration::from_secs(30);
        let check = |err: aiolock::Error| {
            assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
            let message = err.to_string();
            for part in ["\"job-lock-fence\"", "decimal number", "non-numeric"] {
                assert!(message.contains(part), "{part:?} missing: {message}");
            }
        };
        check(cache.lock("job", lease).fenced().try_acquire().await.unwrap_err());
        let left = cache.exists("job-lock").await.unwrap();
        assert!(!left, "no lock key");
        check(cache.redlock("job", lease).fenced().acquire().await.unwrap_err());
        let left = cache.exists("job-lock").await.unwrap();
        assert!(!left, "no lock key");
        let holder = cache.lock("job", lease).try_acquire().await.unwrap().unwrap();
        check(cache.lock("job", lease).fenced().try_acquire().await.unwrap_err());
        let stored = cache.get("job-lock").await.unwrap();
        assert_eq!(stored.as_deref(), Some(holder.token().as_bytes()));
        let released = holder.release().await.unwrap();
        assert!(released);
        let garbage = cache.get("job-lock-fence").await.unwrap();
        assert_eq!(garbage.as_deref(), Some(&b"not a number"[..]), "left as it was");
    }
);

both_flavors!(
    /// The server runs a fenced claim's write (add, increment, read) and the replies
    /// are lost: the claim reads the lock back, finds its token, and sends the
    /// increment and the read again (the lost increment skips a number). It holds
    /// the lock with a fence larger than the last one; the add is not sent twice.
    a_fenced_claim_whose_replies_were_lost_is_won_with_a_fence(server) {
        let (proxy, url) = proxied(server, "pool_size=1");
        let cache = Cache::from_url(&url).await.unwrap();
        let lease = Duration::from_secs(30);
        let first = cache.lock("job", lease).fenced().try_acquire().await.unwrap().unwrap();
        let first_fence = first.fence().unwrap();
        let released = first.release().await.unwrap();
        assert!(released);
        proxy.lose_reply_after(b"ma job-lock-fence");
        let guard = cache.lock("job", lease).fenced().try_acquire().await.unwrap();
        let guard = guard.expect("won: the lost add was ours");
        assert_eq!(proxy.sent(b"ms job-lock"), 2, "one add per claim");
        assert_eq!(proxy.sent(b"ma job-lock-fence"), 3, "the lost increment sent again");
        assert_eq!(guard.fence(), Some(first_fence + 2), "one number skipped");
        let stored = cache.get("job-lock").await.unwrap();
        assert_eq!(stored.as_deref(), Some(guard.token().as_bytes()));
        let released = guard.release().await.unwrap();
        assert!(released);
    }
);

/// A fake memcached that answers `mn`, every `ms` with `HD` (skipping its data
/// line), every `ma` with `VA 2 / 77`, and every `mg` with `mg_reply`.
fn scripted_server(mg_reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "memcached://{}?response_timeout=2",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream).split(b'\n');
                while let Some(Ok(line)) = lines.next() {
                    let answer: &[u8] = if line == b"mn\r" {
                        b"MN\r\n"
                    } else if line.starts_with(b"ms ") {
                        let _data = lines.next();
                        b"HD\r\n"
                    } else if line.starts_with(b"ma ") {
                        b"VA 2\r\n77\r\n"
                    } else {
                        mg_reply
                    };
                    if writer.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// The case the verifying read exists for: a claim whose add won, but whose lock was
/// gone or another holder's by the time the read after its increment ran (a holder
/// that stalled past its lease between the two). memcached runs the pipelined
/// commands back to back, so a real server cannot be stopped between them: a
/// scripted server plays it. The claim is lost (no guard, no fence), since that
/// fence could be smaller than the next holder's.
#[test]
fn a_won_add_that_its_verification_finds_lost_is_not_held() {
    for mg_reply in [&b"VA 5\r\nother\r\n"[..], b"EN\r\n"] {
        let cache = aiolock::blocking::Cache::from_url(&scripted_server(mg_reply)).unwrap();
        let got = cache
            .lock("job", Duration::from_secs(30))
            .fenced()
            .try_acquire()
            .unwrap();
        assert!(
            got.is_none(),
            "{:?}: not held",
            String::from_utf8_lossy(mg_reply)
        );
    }
}

/// A fenced lock also stores `lock key + "-fence"`, 6 bytes longer, and memcached
/// takes 250 bytes: namespace + key of 239 bytes is the longest a fenced lock with
/// the default suffix takes; one more fails with `InvalidKey` before anything is
/// stored, saying why.
#[test]
fn fenced_lock_keys_leave_room_for_the_fence_suffix() {
    let server = MemcachedServer::start();
    let cache =
        aiolock::blocking::Cache::from_url(&format!("{}?namespace=ns:", server.url())).unwrap();
    let fits = "k".repeat(236);
    let guard = cache
        .lock(&fits, Duration::from_secs(5))
        .fenced()
        .try_acquire()
        .unwrap()
        .expect("uncontended");
    assert!(guard.fence().is_some());
    assert!(guard.release().unwrap());
    let long = "k".repeat(237);
    let err = cache
        .lock(&long, Duration::from_secs(5))
        .fenced()
        .try_acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey, "{err}");
    let message = err.to_string();
    for part in ["\"-fence\"", "250 bytes", "251 bytes", "239"] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
    assert!(
        !cache.exists(format!("{long}-lock")).unwrap(),
        "nothing stored"
    );
    // Unfenced, the same key fits.
    let guard = cache
        .lock(&long, Duration::from_secs(5))
        .try_acquire()
        .unwrap();
    assert!(guard.unwrap().release().unwrap());
}
