//! memcached-specific behaviour, against real servers (the generic suite runs on
//! memcached too, see `backend_suite!` in `tests/main.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiolock::{ErrorKind, Outcome, Ttl};

use crate::support::memcached::MemcachedServer;

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
    // A stalls: its key (sent as 2 s) is gone after at most 2 s.
    std::thread::sleep(Duration::from_millis(2100));
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
    let url = server.url();

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
    std::thread::sleep(Duration::from_millis(300));
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
    std::thread::sleep(Duration::from_millis(300));
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
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
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
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().unwrap()),
        "",
        "nothing sent"
    );
}

#[tokio::test]
async fn bad_keys_are_refused_before_sending_async() {
    let (url, seen) = recording_server();
    let cache = aiolock::Cache::from_url(&url).await.unwrap();
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
    tokio::time::sleep(Duration::from_millis(50)).await;
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
            d > forty_days - Duration::from_secs(5) && d <= forty_days + Duration::from_secs(2),
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
    let crate::support::memcached::Listen::Unix(path) = server.listen() else {
        panic!("unix server expected")
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
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
