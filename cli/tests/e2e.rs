//! End-to-end tests of the `aiolock` binary against real redis-server and memcached.
//!
//! Every test body runs on both backends (`e2e!`). Events are ordered by what the
//! processes themselves leave behind, never by sleeping: the commands' own marks in
//! a file, aiolock's `-v` lines on a pipe, the lock key polled on the server. The only
//! waits on the clock are the ones under test (a lease renewed for 10 leases, `-w`).

#[path = "../../tests/support/memcached.rs"]
mod memcached;
#[allow(dead_code)]
#[path = "../../tests/support/redis.rs"]
mod redis;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aiolock::blocking::Cache;

const BIN: &str = env!("CARGO_BIN_EXE_aiolock");
/// How long a test waits for something that should happen at once before failing.
const PATIENCE: Duration = Duration::from_secs(20);

enum Server {
    Redis(redis::RedisServer),
    Memcached(memcached::MemcachedServer),
}

/// A server, its URL, a directory for the commands' marks, and the lease to test with.
struct Env {
    server: Server,
    url: String,
    dir: tempfile::TempDir,
    cache: Cache,
    /// Seconds.
    lease: f64,
}

impl Env {
    fn redis() -> Env {
        let server = redis::RedisServer::start();
        let url = server.unix_url("");
        Env::new(Server::Redis(server), url)
    }

    fn memcached() -> Env {
        let server = memcached::MemcachedServer::start();
        let url = server.url();
        Env::new(Server::Memcached(server), url)
    }

    fn new(server: Server, url: String) -> Env {
        let cache = Cache::from_url(&url).expect("the test's own connection");
        Env {
            server,
            url,
            dir: tempfile::tempdir().expect("a temp dir"),
            cache,
            lease: 1.0,
        }
    }

    /// `aiolock ARGS` with the URL in `AIOLOCK_URL`, `MARKS` naming the marks file.
    fn aiolock(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("AIOLOCK_URL", &self.url)
            .env("MARKS", self.marks())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    fn read_marks(&self) -> Vec<String> {
        read_lines(&self.marks())
    }

    /// Waits until the marks file has the line `mark`.
    fn wait_mark(&self, mark: &str) {
        self.wait_mark_of(None, mark)
    }

    /// Waits until the marks file has the line `mark`, failing at once (with what it
    /// said) when `aiolock` ends before.
    fn wait_mark_of(&self, mut aiolock: Option<&mut Child>, mark: &str) {
        let start = Instant::now();
        while !self.read_marks().iter().any(|l| l == mark) {
            if let Some(child) = aiolock.as_deref_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("aiolock ended ({status}) before the mark {mark:?}: {err}");
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no mark {mark:?} in {:?}",
                self.read_marks()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the lock of `key` is on the server now.
    fn held(&self, key: &str) -> bool {
        self.cache.exists(format!("{key}-lock")).expect("exists")
    }

    fn fence_present(&self, key: &str) -> bool {
        self.cache
            .exists(format!("{key}-lock-fence"))
            .expect("exists")
    }

    /// `aiolock run ARGS KEY -- sh -c 'echo start >> $MARKS; …'`: holds the lock until
    /// its stdin is closed (drop `Holder::stdin`). Returns once it holds it.
    ///
    /// The command waits for the end of its stdin with `wait` on a `cat` reading it,
    /// not with `read`: a trapped signal that comes between the mark and the moment
    /// `read` blocks in read(2) would run its trap only once the stdin closes (dash
    /// notes the signal, then blocks), and a test that signals the command as soon as
    /// it sees the mark would wait for the trap's mark forever; `wait` sees a signal
    /// that came at any moment. The `cat` ignores the signals sent to the command's
    /// group (killed by one, the shell would say so on stderr) and ends with the stdin.
    fn hold(&self, key: &str, script_before_start: &str) -> Holder {
        let script = format!(
            "{script_before_start}\necho start >> \"$MARKS\"\nexec 3<&0\n\
             (trap '' HUP INT QUIT TERM; exec cat <&3 >/dev/null 2>&1) &\nwait $!\nexit 0\n"
        );
        let mut child = self
            .aiolock(&[
                "run",
                "--lease",
                &self.lease.to_string(),
                key,
                "--",
                "sh",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::piped())
            .spawn()
            .expect("aiolock runs");
        self.wait_mark_of(Some(&mut child), "start");
        let stdin = child.stdin.take();
        Holder { child, stdin }
    }

    fn pause(&self) {
        match &self.server {
            Server::Redis(s) => s.pause(),
            Server::Memcached(s) => s.pause(),
        }
    }

    fn resume(&self) {
        match &self.server {
            Server::Redis(s) => s.resume(),
            Server::Memcached(s) => s.resume(),
        }
    }
}

struct Holder {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Holder {
    /// Lets the command end (its `read` gets end of file) and waits for aiolock.
    fn finish(mut self) -> Output {
        drop(self.stdin.take());
        self.child.wait_with_output().expect("aiolock ends")
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).unwrap()
    }
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty(3) with out-parameters and no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors from openpty, each owned once.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads `stderr` line by line until one contains `text`; returns the reader.
fn wait_line(stderr: ChildStderr, text: &str) -> BufReader<ChildStderr> {
    let mut reader = BufReader::new(stderr);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("stderr");
        assert!(
            n > 0,
            "aiolock ended without saying {text:?}; it said {seen:?}"
        );
        if line.contains(text) {
            return reader;
        }
        seen.push_str(&line);
    }
}

macro_rules! e2e {
    ($($name:ident),* $(,)?) => {
        mod redis_e2e {
            $( #[test] fn $name() { super::$name(&super::Env::redis()) } )*
        }
        mod memcached_e2e {
            $( #[test] fn $name() { super::$name(&super::Env::memcached()) } )*
        }
    };
}

e2e!(
    runs_never_overlap,
    nonblock_and_wait_exit_with_the_conflict_code,
    a_long_command_keeps_the_lock,
    a_stopped_server_stops_the_command,
    signals_reach_the_command_and_the_lock_is_released,
    a_signal_ends_the_wait_and_takes_nothing,
    the_fence_grows_across_runs,
    bad_input_is_a_usage_error_and_takes_nothing,
    status_and_forced_release,
    kill_after_sends_sigkill,
    min_hold_keeps_the_lock,
    live_status_on_a_terminal_only,
    cache_verbs,
);

/// Two `aiolock run` on one key: the second waits (its `-v` line says so) while the
/// first's command runs, and runs its command after; then three processes contend
/// for five runs each, and the entry and exit marks of the commands pair up.
fn runs_never_overlap(env: &Env) {
    let a = env.hold("k", "");
    let mut b = env
        .aiolock(&[
            "-v",
            "run",
            "k",
            "--",
            "sh",
            "-c",
            "echo enter-b >> \"$MARKS\"; echo exit-b >> \"$MARKS\"",
        ])
        .spawn()
        .unwrap();
    let b_err = wait_line(b.stderr.take().unwrap(), "waiting for k");
    assert!(
        !env.read_marks().contains(&"enter-b".to_owned()),
        "{:?}",
        env.read_marks()
    );
    let a_out = a.finish();
    assert_eq!(a_out.status.code(), Some(0), "{}", stderr(&a_out));
    assert!(b.wait().unwrap().success());
    drop(b_err);
    assert_eq!(env.read_marks(), ["start", "enter-b", "exit-b"]);

    std::fs::remove_file(env.marks()).unwrap();
    // The command's own 20 ms of work leaves room for an overlap to show.
    let script = "echo enter-$$ >> \"$MARKS\"; sleep 0.02; echo exit-$$ >> \"$MARKS\"";
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..5 {
                    let out = env
                        .aiolock(&["run", "k", "--", "sh", "-c", script])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}", stderr(&out));
                }
            });
        }
    });
    let marks = env.read_marks();
    assert_eq!(marks.len(), 30, "{marks:?}");
    for pair in marks.chunks(2) {
        let entered = pair[0].strip_prefix("enter-").expect("an entry first");
        assert_eq!(pair[1], format!("exit-{entered}"), "overlap in {marks:?}");
    }
    assert!(!env.held("k"));
}

/// While the lock is held, `-n` exits with the conflict code without waiting (and
/// `-E` chooses it), `-w 0.5` after half a second; neither runs its command nor says
/// more than one line (no live status off a terminal).
fn nonblock_and_wait_exit_with_the_conflict_code(env: &Env) {
    let a = env.hold("k", "");
    let never = "echo ran >> \"$MARKS\"";
    let start = Instant::now();
    let out = env
        .aiolock(&["run", "-n", "k", "--", "sh", "-c", never])
        .output()
        .unwrap();
    let nonblock_took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "aiolock: k is held by another holder\n");
    let out = env
        .aiolock(&["run", "-n", "-E", "75", "k", "--", "sh", "-c", never])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    let out = env
        .aiolock(&["-q", "run", "-n", "k", "--", "sh", "-c", never])
        .output()
        .unwrap();
    assert_eq!((out.status.code(), stderr(&out)), (Some(1), String::new()));

    let start = Instant::now();
    let out = env
        .aiolock(&["run", "-w", "0.5", "k", "--", "sh", "-c", never])
        .output()
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "aiolock: k is still held by another holder after 0.5 s\n"
    );
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        nonblock_took < waited,
        "-n took {nonblock_took:?}, -w 0.5 {waited:?}"
    );
    assert_eq!(env.read_marks(), ["start"], "a conflicting command ran");
    assert_eq!(a.finish().status.code(), Some(0));
    assert!(!env.held("k"));
}

/// A command that runs 10 leases keeps the lock throughout: `run -n` fails all
/// along (the lease is renewed; unrenewed, it would end after one).
fn a_long_command_keeps_the_lock(env: &Env) {
    let a = env.hold("k", "");
    let start = Instant::now();
    let mut probes = 0;
    while start.elapsed() < Duration::from_secs_f64(10.0 * env.lease) {
        let out = env
            .aiolock(&["-q", "run", "-n", "k", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "after {:?}: {}",
            start.elapsed(),
            stderr(&out)
        );
        probes += 1;
    }
    assert!(probes >= 10, "{probes} probes");
    let out = a.finish();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!env.held("k"));
}

/// SIGSTOP the server while the command runs: no renewal is answered, the command
/// gets SIGTERM before the lease ends, and aiolock exits with 124 and one line.
fn a_stopped_server_stops_the_command(env: &Env) {
    let lease = 2.0;
    let mut a = env
        .aiolock(&["run", "--lease", "2", "k", "--", "sh", "-c"])
        .arg(
            "trap 'echo term >> \"$MARKS\"; exit 0' TERM\n\
             echo start >> \"$MARKS\"\n\
             exec 3<&0\n\
             (trap '' TERM; exec cat <&3 >/dev/null 2>&1) &\n\
             wait $!",
        )
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_mark_of(Some(&mut a), "start");
    // Redis: when the server would end the lease (a renewal after this read only
    // moves it later).
    let expires = match &env.server {
        Server::Redis(s) => {
            let reply = s.admin(&["PEXPIRETIME", "k-lock"]);
            let ms: u64 = reply.trim().trim_start_matches(':').parse().expect(&reply);
            Some(UNIX_EPOCH + Duration::from_millis(ms))
        }
        Server::Memcached(_) => None,
    };
    env.pause();
    let paused = Instant::now();
    env.wait_mark("term");
    let term_seen = (Instant::now(), SystemTime::now());
    let status = a.wait().unwrap();
    let mut err = String::new();
    a.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    env.resume();
    // The last confirmed renewal was sent before the pause: its lease ends less
    // than a lease after it.
    assert!(
        term_seen.0 - paused < Duration::from_secs_f64(lease),
        "SIGTERM {:?} after the pause",
        term_seen.0 - paused
    );
    if let Some(expires) = expires {
        assert!(
            term_seen.1 < expires,
            "SIGTERM after the server's lease end"
        );
    }
    assert_eq!(status.code(), Some(124), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("aiolock: lost the lock on k ("), "{err}");
    drop(a.stdin.take());
}

/// INT, TERM, HUP and QUIT sent to aiolock reach the command; aiolock exits with the
/// command's status, and after both ended the lock is gone.
fn signals_reach_the_command_and_the_lock_is_released(env: &Env) {
    let traps: String = ["INT", "TERM", "HUP", "QUIT"]
        .iter()
        .map(|s| format!("trap 'echo got-{s} >> \"$MARKS\"; exit 7' {s}\n"))
        .collect();
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
    ] {
        let _ = std::fs::remove_file(env.marks());
        let a = env.hold("k", &traps);
        // SAFETY: kill(2) to our own child.
        assert_eq!(unsafe { libc::kill(a.pid(), sig) }, 0);
        // Before its stdin closes (which ends it too).
        env.wait_mark(&format!("got-{name}"));
        let out = a.finish();
        assert_eq!(out.status.code(), Some(7), "SIG{name}: {}", stderr(&out));
        assert_eq!(
            env.read_marks(),
            ["start".to_owned(), format!("got-{name}")]
        );
        assert!(!env.held("k"), "SIG{name} left the lock");
    }
}

/// SIGTERM to an aiolock that waits for the lock: it exits with 128 + 15 at once,
/// its command never runs, and it leaves nothing behind.
fn a_signal_ends_the_wait_and_takes_nothing(env: &Env) {
    let a = env.hold("k", "");
    let mut b = env
        .aiolock(&[
            "-v",
            "run",
            "k",
            "--",
            "sh",
            "-c",
            "echo ran-b >> \"$MARKS\"",
        ])
        .spawn()
        .unwrap();
    let b_err = wait_line(b.stderr.take().unwrap(), "waiting for k");
    // SAFETY: kill(2) to our own child.
    assert_eq!(
        unsafe { libc::kill(b.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert_eq!(b.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    drop(b_err);
    assert_eq!(a.finish().status.code(), Some(0));
    assert_eq!(env.read_marks(), ["start"]);
    assert!(!env.held("k"));
}

/// The command sees AIOLOCK_KEY, a fresh AIOLOCK_TOKEN and a growing AIOLOCK_FENCE.
fn the_fence_grows_across_runs(env: &Env) {
    let script = "echo \"$AIOLOCK_KEY $AIOLOCK_TOKEN $AIOLOCK_FENCE\" >> \"$MARKS\"";
    for _ in 0..3 {
        let out = env
            .aiolock(&["run", "job", "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let marks = env.read_marks();
    let runs: Vec<(&str, &str, u64)> = marks
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[1], f[2].parse().expect(l))
        })
        .collect();
    assert_eq!(runs.len(), 3, "{marks:?}");
    for (i, (key, token, _)) in runs.iter().enumerate() {
        assert_eq!(*key, "job");
        assert!(
            token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "{token}"
        );
        assert!(
            runs[..i].iter().all(|r| r.1 != *token),
            "a token came twice"
        );
    }
    assert!(runs[0].2 < runs[1].2 && runs[1].2 < runs[2].2, "{marks:?}");
}

/// Empty key, a zero, negative or NaN lease, an unknown scheme, a memory:// URL, no
/// URL, no command: one line on stderr, exit 2, no command run, nothing on the server.
fn bad_input_is_a_usage_error_and_takes_nothing(env: &Env) {
    let cmd = ["sh", "-c", "echo ran >> \"$MARKS\""];
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["run", ""], None),
        (vec!["run", "--lease", "0", "k"], None),
        (vec!["run", "--lease", "-1", "k"], None),
        (vec!["run", "--lease", "NaN", "k"], None),
        (vec!["run", "--lease", "inf", "k"], None),
        (vec!["run", "-w", "-1", "k"], None),
        (vec!["run", "--url", "foo://x", "k"], None),
        (vec!["run", "--url", "foo://:hunter2@x", "k"], None),
        (vec!["run", "--url", "memory://", "k"], None),
        (vec!["run", "k"], Some("")),
        (vec!["status", ""], None),
        (vec!["release", "k"], None),
    ];
    for (args, url) in cases {
        let mut c = env.aiolock(&args);
        if !args.contains(&"status") && !args.contains(&"release") {
            c.args(cmd);
        }
        if let Some(url) = url {
            c.env("AIOLOCK_URL", url);
        }
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("aiolock: "), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "the password is shown: {err}");
    }
    for args in [vec!["run", "k"], vec!["run", "k", "--"]] {
        let out = env.aiolock(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(
            (out.status.code(), err.lines().count()),
            (Some(2), 1),
            "{args:?}: {err}"
        );
    }
    assert!(env.read_marks().is_empty(), "a command ran");
    assert!(
        !env.held("k") && !env.fence_present("k"),
        "something was taken"
    );
    assert!(!env.held("") && !env.fence_present(""));
}

/// `status` tells the holder's token and fence (as its command saw them) and the
/// lease left; `release --force` (no terminal: no question) removes the lock, so the
/// holder's next renewal finds it gone: its command gets SIGTERM, it exits with 124.
fn status_and_forced_release(env: &Env) {
    let a = env.hold(
        "k",
        "trap 'echo term >> \"$MARKS\"; exit 0' TERM\necho \"$AIOLOCK_TOKEN $AIOLOCK_FENCE\" > \"$MARKS.env\"",
    );
    let seen = std::fs::read_to_string(env.dir.path().join("marks.env")).unwrap();
    let (token, fence) = seen.trim().split_once(' ').unwrap();
    let out = env.aiolock(&["status", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(line.starts_with("k: held, "), "{line}");
    assert!(line.contains(" s of its lease left, "), "{line}");
    assert!(
        line.trim_end()
            .ends_with(&format!("fence {fence}, token {token}")),
        "{line}"
    );

    // On a terminal, it asks first; "n" keeps the lock.
    let (mut master, slave) = pty();
    std::io::Write::write_all(&mut master, b"n\n").unwrap();
    let out = env
        .aiolock(&["release", "--force", "k"])
        .stdin(Stdio::from(slave))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("release it? [y/N]"),
        "{}",
        stderr(&out)
    );
    assert!(env.held("k"));
    drop(master);

    let out = env.aiolock(&["release", "--force", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The holder's next renewal finds the lock gone (before its stdin closes).
    env.wait_mark("term");
    let out = a.finish();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(
        err.starts_with("aiolock: lost the lock on k (the lock is no longer ours"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.read_marks(), ["start", "term"]);

    let out = env.aiolock(&["status", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("k: not held, fence {fence}\n"));
    let out = env.aiolock(&["release", "--force", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// A command that ignores SIGTERM is killed (SIGKILL) --kill-after later.
fn kill_after_sends_sigkill(env: &Env) {
    let mut a = env
        .aiolock(&[
            "run",
            "--lease",
            &env.lease.to_string(),
            "--kill-after",
            "0.2",
            "k",
            "--",
            "sh",
            "-c",
        ])
        .arg("trap '' TERM; echo start >> \"$MARKS\"; exec sleep 1000")
        .spawn()
        .unwrap();
    env.wait_mark_of(Some(&mut a), "start");
    let out = env.aiolock(&["release", "--force", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let start = Instant::now();
    let status = a.wait().unwrap();
    assert_eq!(status.code(), Some(124));
    assert!(start.elapsed() < PATIENCE);
}

/// `--min-hold 3`: the command ends at once, the lock stays (another run conflicts)
/// and expires by itself.
fn min_hold_keeps_the_lock(env: &Env) {
    let out = env
        .aiolock(&["run", "--min-hold", "3", "k", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.held("k"), "released before --min-hold");
    let out = env
        .aiolock(&["-q", "run", "-n", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    match env.cache.ttl("k-lock").unwrap() {
        aiolock::Ttl::Expires(d) => assert!(d > Duration::ZERO, "{d:?}"),
        other => panic!("{other:?}"),
    }
    if let Server::Redis(s) = &env.server {
        let ms: u64 = s
            .admin(&["PTTL", "k-lock"])
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(ms <= 3000, "{ms} ms");
    }
}

/// On a terminal, a waiting aiolock shows "waiting for KEY — held, … s of its lease
/// left" (off one, nothing: see the conflict test).
fn live_status_on_a_terminal_only(env: &Env) {
    let a = env.hold("k", "");
    let (mut master, slave) = pty();
    let mut b = env
        .aiolock(&["run", "-w", "1.5", "k", "--", "true"])
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let status = b.wait().unwrap();
    let mut screen = Vec::new();
    let mut buf = [0u8; 4096];
    // The slave is closed: read what is buffered until EIO.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        screen.extend_from_slice(&buf[..n]);
    }
    let screen = String::from_utf8_lossy(&screen);
    assert_eq!(status.code(), Some(1), "{screen}");
    assert!(
        screen.contains("waiting for k \u{2014} held, "),
        "{screen:?}"
    );
    assert!(screen.contains(" s of its lease left"), "{screen:?}");
    assert!(
        screen.contains("\r\x1b[2K"),
        "the line is redrawn in place: {screen:?}"
    );
    assert_eq!(a.finish().status.code(), Some(0));
}

/// `get`, `set` (argument or stdin, --ttl) and `delete`, with their exit codes.
fn cache_verbs(env: &Env) {
    let out = env
        .aiolock(&["set", "greeting", "hello world"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.aiolock(&["get", "greeting"]).output().unwrap();
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "hello world".to_owned())
    );
    let mut set = env
        .aiolock(&["set", "--ttl", "60", "piped"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut set.stdin.take().unwrap(), b"line 1\nline 2\n").unwrap();
    assert!(set.wait().unwrap().success());
    assert_eq!(
        env.cache.get("piped").unwrap().as_deref(),
        Some(&b"line 1\nline 2\n"[..])
    );
    assert!(matches!(
        env.cache.ttl("piped").unwrap(),
        aiolock::Ttl::Expires(_)
    ));
    let out = env.aiolock(&["delete", "greeting"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = env.aiolock(&["delete", "greeting"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = env.aiolock(&["get", "greeting"]).output().unwrap();
    assert_eq!((out.status.code(), stdout(&out)), (Some(1), String::new()));
    let out = env
        .aiolock(&["set", "--ttl", "0", "x", "v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!env.cache.exists("x").unwrap());
}

#[test]
fn help_documents_the_exit_codes() {
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success());
        let text = stdout(&out);
        for code in ["Exit status:", "124", "125", "126", "127", "128+N"] {
            assert!(text.contains(code), "{args:?} lacks {code}: {text}");
        }
    }
}

/// The README's man page lists the exit codes exactly as `--help` does.
#[test]
fn readme_has_the_exit_codes_of_help() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = stdout(&out);
    let table = help.split_once("Exit status:\n").expect("the table").1;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let man = readme
        .split_once("EXIT STATUS\n")
        .expect("the man page's section")
        .1;
    let man: Vec<&str> = man.lines().map(str::trim).collect();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        assert!(man.contains(&line.trim()), "README lacks {line:?}");
    }
}
