//! Inputs and messages across every backend (issue 8, items 13–15 and the lock
//! suffix): unknown URL options are refused on every scheme while the options a
//! backend reads itself keep working; messages are one line, bounded and never show a
//! password, on parse errors, refused connections, wrong passwords and protocol
//! errors from real servers; the lock-key suffix is configurable.

#![allow(unused_imports)]

use std::time::Duration;

use aiolock::{Error, ErrorKind, Outcome};

/// A message is one line, bounded, and does not contain `secret` (in its message,
/// its `Display` and its `Debug`, which `unwrap()` prints).
#[track_caller]
fn assert_safe(err: &Error, secret: &str) {
    let display = err.to_string();
    let debug = format!("{err:?}");
    for text in [err.message(), &display, &debug] {
        assert!(!text.contains(secret), "a secret in {text:?}");
        assert!(!text.contains(['\n', '\r']), "not one line: {text:?}");
    }
    assert!(
        err.message().chars().count() <= Error::MAX_MESSAGE_CHARS,
        "{display}"
    );
    assert!(
        display.chars().count() <= Error::MAX_DISPLAY_CHARS,
        "{display}"
    );
}

/// Both flavors' `Cache::from_url` fail on `url`; their errors.
async fn open_errors(url: &str) -> [Error; 2] {
    [
        aiolock::blocking::Cache::from_url(url).unwrap_err(),
        aiolock::Cache::from_url(url).await.unwrap_err(),
    ]
}

const SCHEMES: &[&str] = &[
    "memory://",
    "redis://127.0.0.1:1",
    "rediss://127.0.0.1:1",
    "redis+unix:///nonexistent.sock",
    "memcached://127.0.0.1:1",
    "memcached+unix:///nonexistent.sock",
];

/// `?respone_timeout=0.2` (a typo) used to be accepted on Redis URLs, which then ran
/// with the default 2 s timeout. Every scheme refuses it before connecting, naming it.
#[tokio::test]
async fn unknown_options_are_refused_on_every_scheme() {
    for scheme in SCHEMES {
        for option in ["respone_timeout=0.2", "Namespace=x", "lock_suffixes=.l"] {
            let url = format!("{scheme}?{option}");
            for err in open_errors(&url).await {
                assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
                let name = option.split('=').next().unwrap();
                assert!(err.message().contains(&format!("{name:?}")), "{url}: {err}");
                assert!(err.message().contains("namespace, lock_suffix"), "{err}");
                assert_safe(&err, "\u{0}");
            }
        }
    }
}

/// The options the `redis` crate reads itself (the protocol, the database as a path
/// or, on a unix socket, as `db=`) and memcached's `max_poll_interval` still work.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_options_keep_working_on_redis() {
    use crate::support::redis::{Config, RedisServer};
    let server = RedisServer::with(Config {
        tcp: true,
        ..Config::default()
    });
    let port = server.port();
    let socket = server.socket();
    for (url, db) in [
        (format!("redis://127.0.0.1:{port}/2?protocol=resp3"), 2),
        (
            format!("redis://127.0.0.1:{port}/3?protocol=resp2&pool_size=2"),
            3,
        ),
        (
            format!("redis+unix://{}?db=4&protocol=resp3", socket.display()),
            4,
        ),
    ] {
        let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
        cache.set("where", b"blocking", None).unwrap();
        let cache = aiolock::Cache::from_url(&url).await.unwrap();
        let guard = cache
            .redlock("where", Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        assert!(guard.release().await.unwrap());
        let keys = server.admin(&["INFO", "keyspace"]);
        assert!(keys.contains(&format!("db{db}:keys=1")), "{url}: {keys}");
    }
}

#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_options_keep_working_on_memcached() {
    let server = crate::support::memcached::MemcachedServer::start();
    let url = format!("{}?max_poll_interval=0.002&lock_suffix=.l", server.url());
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let guard = cache
        .redlock("k", Duration::from_secs(5))
        .acquire()
        .unwrap();
    assert!(cache.exists("k.l").unwrap());
    assert!(guard.release().unwrap());
    let cache = aiolock::Cache::from_url(&url).await.unwrap();
    assert_eq!(cache.lock_suffix(), b".l");
    for bad in ["max_poll_interval=0", "protocol=resp3"] {
        for err in open_errors(&format!("{}?{bad}", server.url())).await {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        }
    }
}

/// Passwords never reach a message: not on a parse error, a refused connection, a
/// wrong password (as the URL's password or a unix socket's `pass=`), in both flavors.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_messages_never_show_the_password() {
    use crate::support::redis::{Config, RedisServer};
    let mut server = RedisServer::with(Config {
        tcp: true,
        args: [
            "--requirepass",
            "right",
            "--user",
            "alice",
            "on",
            ">right",
            "+@all",
            "~*",
        ]
        .map(String::from)
        .to_vec(),
    });
    let port = server.port();
    let socket = server.socket().display().to_string();
    // Parse errors.
    for url in [
        "redis://:secret@[::1".to_string(),
        "redis://user:secret@[::1".to_string(),
        format!("redis://:secret@127.0.0.1:{port}?respone_timeout=1"),
        format!("redis://user:secret@127.0.0.1:{port}?connect_timeout=x"),
        format!("redis://user:secret@127.0.0.1:{port}/notadb"),
        format!("redis+unix://{socket}?pass=secret&bogus=1"),
        format!("redis+unix://{socket}?pass=secret&db=x"),
        "rediss://user:secret@0.0.0.0".to_string(),
    ] {
        for err in open_errors(&url).await {
            assert!(
                err.is_invalid_input() || err.kind() == ErrorKind::Unsupported,
                "{url}: {err}"
            );
            assert_safe(&err, "secret");
        }
    }
    // Wrong passwords.
    for url in [
        format!("redis://:secret@127.0.0.1:{port}/0"),
        format!("redis://alice:secret@127.0.0.1:{port}/0"),
        format!("redis+unix://{socket}?pass=secret"),
        format!("redis+unix://{socket}?user=alice&pass=secret"),
    ] {
        for err in open_errors(&url).await {
            assert_eq!(err.kind(), ErrorKind::Backend, "{url}: {err}");
            assert_safe(&err, "secret");
        }
    }
    // A closed port (the server is gone).
    server.kill();
    for url in [
        format!("redis://:secret@127.0.0.1:{port}/0?connect_timeout=1"),
        format!("redis://alice:secret@127.0.0.1:{port}/0?connect_timeout=1"),
        format!("redis+unix://{socket}?pass=secret&connect_timeout=1"),
    ] {
        for err in open_errors(&url).await {
            assert_eq!(err.kind(), ErrorKind::Connection, "{url}: {err}");
            assert_safe(&err, "secret");
        }
    }
}

/// memcached takes no credentials: a URL with some is refused without showing them;
/// so is a Redis URL given to the memcached backend.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn memcached_messages_never_show_the_password() {
    for url in [
        "memcached://user:secret@127.0.0.1:1",
        "memcached://:secret@127.0.0.1:1?bogus=1",
        "memcached://user:secret@[::1",
        "memcached://h?password=secret&x=1",
    ] {
        for err in open_errors(url).await {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            assert_safe(&err, "secret");
        }
    }
    let url = "redis://user:secret@127.0.0.1:1/0";
    let errors = [
        aiolock::blocking::MemcachedBackend::connect(url).unwrap_err(),
        aiolock::MemcachedBackend::connect(url).await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert_safe(&err, "secret");
    }
}

/// A real server that speaks another protocol answers with lines of its own: the
/// protocol error that results is one line (memcached's client talking to Redis gets
/// `-ERR unknown command …\r\n`; Redis's client talking to memcached gets `ERROR\r\n`).
#[cfg(all(feature = "redis", feature = "memcached"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_from_a_foreign_server_are_one_line() {
    use crate::support::redis::RedisServer;
    let redis = RedisServer::start();
    let memcached = crate::support::memcached::MemcachedServer::start();
    let crate::support::memcached::Listen::Unix(mc_socket) = memcached.listen().clone() else {
        unreachable!("a unix socket by default")
    };
    let at_redis = format!(
        "memcached+unix://{}?response_timeout=1",
        redis.socket().display()
    );
    let at_memcached = format!(
        "redis+unix://{}?response_timeout=1&connect_timeout=1",
        mc_socket.display()
    );
    let mut errors = Vec::new();
    match aiolock::blocking::Cache::from_url(&at_redis) {
        Ok(cache) => {
            errors.push(cache.get("k").unwrap_err());
            errors.push(
                cache
                    .redlock("k", Duration::from_secs(1))
                    .acquire()
                    .unwrap_err(),
            );
        }
        Err(e) => errors.push(e),
    }
    match aiolock::Cache::from_url(&at_redis).await {
        Ok(cache) => errors.push(cache.set("k", b"v", None).await.unwrap_err()),
        Err(e) => errors.push(e),
    }
    errors.extend(open_errors(&at_memcached).await);
    for err in &errors {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Protocol
                    | ErrorKind::Backend
                    | ErrorKind::Timeout
                    | ErrorKind::Connection
            ),
            "{err}"
        );
        assert_safe(err, "\u{0}");
    }
    assert!(
        errors.iter().any(|e| e.kind() == ErrorKind::Protocol),
        "{errors:?}"
    );
}

/// The lock-key suffix is set by URL or builder, in both flavors; the lock of `key`
/// is then `namespace + key + suffix`; an empty suffix is refused.
#[tokio::test]
async fn lock_suffix_by_url_and_builder() {
    let cache =
        aiolock::blocking::Cache::from_url("memory://?namespace=n:&lock_suffix=%3Alk").unwrap();
    assert_eq!(cache.lock_suffix(), b":lk");
    assert_eq!(
        cache.redlock("k", Duration::from_secs(1)).lock_key(),
        b"n:k:lk"
    );
    let cache = aiolock::Cache::builder()
        .lock_suffix("/lock")
        .build("memory://?lock_suffix=ignored")
        .await
        .unwrap();
    assert_eq!(
        cache.redlock("k", Duration::from_secs(1)).lock_key(),
        b"k/lock"
    );
    let guard = cache
        .redlock("k", Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert!(cache.exists("k/lock").await.unwrap());
    assert!(!cache.exists("k-lock").await.unwrap());
    assert!(guard.release().await.unwrap());
    assert_eq!(aiolock::Cache::memory().lock_suffix(), b"-lock");

    for err in open_errors("memory://?lock_suffix=").await {
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.message().contains("lock_suffix"), "{err}");
    }
    let err = aiolock::blocking::Cache::builder()
        .lock_suffix("")
        .build("memory://")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = aiolock::blocking::Cache::memory()
        .with_lock_suffix("")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

/// On memcached the suffix is part of the stored key: its rules apply to the
/// suffix at open, and to the whole lock key when a lock is taken (the longest key a
/// lock takes is 250 − namespace − suffix, while get/set take 250 − namespace).
#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_suffix_follows_memcached_key_rules() {
    let server = crate::support::memcached::MemcachedServer::start();
    for bad in ["lock_suffix=a%20b", "lock_suffix=%0D", "lock_suffix=%7F"] {
        for err in open_errors(&format!("{}?{bad}", server.url())).await {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(err.message().contains("lock_suffix"), "{err}");
        }
    }
    let suffix = "-my-fleet-lock"; // 14 bytes
    let url = format!("{}?namespace=ns:&lock_suffix={suffix}", server.url());
    let longest = 250 - "ns:".len() - suffix.len();
    let blocking = aiolock::blocking::Cache::from_url(&url).unwrap();
    let cache = aiolock::Cache::from_url(&url).await.unwrap();
    let fits = "k".repeat(longest);
    let too_long = "k".repeat(longest + 1);
    let guard = blocking
        .redlock(&fits, Duration::from_secs(5))
        .acquire()
        .unwrap();
    assert_eq!(guard.outcome(), Outcome::Acquired);
    assert!(guard.release().unwrap());
    let guard = cache
        .redlock(&fits, Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert!(guard.release().await.unwrap());
    let err = blocking
        .redlock(&too_long, Duration::from_secs(5))
        .acquire()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey, "{err}");
    assert!(err.message().contains("suffix"), "{err}");
    let err = cache
        .redlock(&too_long, Duration::from_secs(5))
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey, "{err}");
    // The same key is fine for get/set.
    blocking.set(&too_long, b"v", None).unwrap();
    assert_eq!(
        cache.get(&too_long).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
}
