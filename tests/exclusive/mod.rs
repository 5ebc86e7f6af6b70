//! Exclusive-lock workloads written once and run per backend: the async flavor's
//! cancellation (by `backend_suite!`), the cross-process exclusion oracle, and the
//! fencing tokens across processes and against a paused holder (`cross_process_*!`
//! in `tests/main.rs`), each given only a cache URL.

use std::time::Duration;

use aiolock::Cache;
/// `callers` tasks of one cache take the exclusive lock `k` `entries` times each, one
/// after the other (each entry is held, then released): the hand-off workload whose
/// server commands the backends' herd tests count.
pub async fn hand_offs(cache: &Cache, callers: usize, entries: usize) {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for _ in 0..entries {
                    let guard = cache
                        .lock("k", Duration::from_secs(30))
                        .wait_at_most(Duration::from_secs(60))
                        .acquire()
                        .await
                        .unwrap()
                        .expect("held within the bound");
                    assert!(guard.release().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

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

/// The first waiter of a cache's queue leads (it waits for the holder on the server;
/// the others wait in process): cancelled mid-wait, it passes the lead to the next,
/// which takes the lock at the holder's release (it would wait its whole bound
/// otherwise: nobody of the cache would watch the server).
pub async fn cancelled_leader_passes_on(cache: Cache) {
    let lease = Duration::from_secs(30);
    let holder = cache.lock("k", lease).try_acquire().await.unwrap();
    let holder = holder.expect("uncontended");
    let lock_key = String::from_utf8_lossy(holder.lock_key()).into_owned();
    let waiter = || {
        let cache = cache.clone();
        tokio::spawn(async move {
            let lock = cache.lock("k", lease).wait_at_most(Duration::from_secs(20));
            let guard = lock.acquire().await.unwrap();
            match guard {
                Some(guard) => guard.release().await.unwrap(),
                None => false,
            }
        })
    };
    let leader = waiter();
    crate::support::events::waiters(&lock_key, 1).await;
    let second = waiter();
    crate::support::events::waiters(&lock_key, 2).await;
    assert_eq!(cache.waiting("k"), 2);
    leader.abort();
    assert!(
        leader.await.unwrap_err().is_cancelled(),
        "cancelled mid-wait"
    );
    assert_eq!(cache.waiting("k"), 1, "the cancelled leader is uncounted");
    assert!(holder.release().await.unwrap());
    assert!(
        second.await.unwrap(),
        "the second took the lock and released it"
    );
    cache.flush().await;
    assert!(
        !cache.exists("k-lock").await.unwrap(),
        "nothing left behind"
    );
}

/// The 64-waiter workload of the generic suite on the memory store, its calls
/// counted where they reach the store (a [`Probe`](crate::support::probe::Probe)):
/// at most one claim per release, a few calls per release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_64_waiters_one_key_counted() {
    crate::support::events::install();
    let probe = crate::support::probe::Probe::new(aiolock::MemoryBackend::new());
    let cache = aiolock::Cache::new(probe.clone());
    let server = std::sync::Arc::new(probe);
    crate::nonblocking::suite::exclusive_64_waiters_one_key_of(cache, server).await;
}

/// Set in the child processes of [`cross_process_oracle`]: the cache URL; the record
/// file and the child's id follow in the other variables.
const ORACLE_URL: &str = "AIOLOCK_TEST_ORACLE_URL";
const ORACLE_FILE: &str = "AIOLOCK_TEST_ORACLE_FILE";
const ORACLE_ID: &str = "AIOLOCK_TEST_ORACLE_ID";
/// Other programs that join [`cross_process_oracle`] (a list of paths, as in `PATH`):
/// ffi/test.sh sets it to its C and Go programs over the C ABI. Each is run as
/// `PROGRAM URL FILE ID THREADS ENTRIES` and must write the same marks.
const ORACLE_PROGRAMS: &str = "AIOLOCK_TEST_ORACLE_PROGRAMS";
const THREADS: usize = 4;
const ENTRIES: usize = 15;

/// Appends one entry or exit mark (one `write` on an `O_APPEND` file: whole lines,
/// in the order the calls happened, across processes).
fn mark(file: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

/// The child side of [`cross_process_oracle`]; does nothing in a normal run.
/// Blocking flavor: `THREADS` threads × `ENTRIES` entries on the exclusive key.
#[test]
fn oracle_child() {
    let (Ok(url), Ok(file), Ok(id)) = (
        std::env::var(ORACLE_URL),
        std::env::var(ORACLE_FILE),
        std::env::var(ORACLE_ID),
    ) else {
        return;
    };
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let file = std::path::PathBuf::from(file);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, file, id) = (cache.clone(), &file, &id);
            s.spawn(move || {
                for _ in 0..ENTRIES {
                    let guard = cache
                        .lock("mutex", Duration::from_secs(30))
                        .wait_at_most(Duration::from_secs(120))
                        .acquire()
                        .unwrap()
                        .expect("held within the bound");
                    let me = format!("{id}.{t}");
                    mark(file, &format!("E {me}\n"));
                    std::thread::yield_now();
                    mark(file, &format!("X {me}\n"));
                    assert!(guard.release().unwrap(), "the lease was still ours");
                }
            });
        }
    });
}

/// The exclusion oracle across processes: three child processes (blocking flavor,
/// `THREADS` threads each) and this one (async, `THREADS` tasks), `ENTRIES` entries
/// each on one exclusive key of the server at `url`, and the programs of other
/// languages [`ORACLE_PROGRAMS`] names (`THREADS` threads each). Every entry and exit
/// is a line of one `O_APPEND` file: the lines must pair up, an entry always followed
/// by the same caller's exit (never two callers inside).
pub async fn cross_process_oracle(url: &str) {
    let dir = std::env::temp_dir().join(format!("aiolock-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.log", url.len()));
    std::fs::write(&file, b"").unwrap();
    let children: Vec<_> = (0..3)
        .map(|id| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "exclusive::oracle_child", "--test-threads=1"])
                .env(ORACLE_URL, url)
                .env(ORACLE_FILE, &file)
                .env(ORACLE_ID, format!("child{id}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let programs: Vec<_> = std::env::var_os(ORACLE_PROGRAMS)
        .map(|list| std::env::split_paths(&list).collect())
        .unwrap_or_default();
    let foreign: Vec<_> = programs
        .iter()
        .enumerate()
        .map(|(i, program)| {
            let id = format!("foreign{i}");
            let child = std::process::Command::new(program)
                .args([url, file.to_str().unwrap(), &id])
                .args([THREADS.to_string(), ENTRIES.to_string()])
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            (program, id, child)
        })
        .collect();
    let cache = Cache::from_url(url).await.unwrap();
    let tasks: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cache, file) = (cache.clone(), file.clone());
            tokio::spawn(async move {
                for _ in 0..ENTRIES {
                    let guard = cache
                        .lock("mutex", Duration::from_secs(30))
                        .wait_at_most(Duration::from_secs(120))
                        .acquire()
                        .await
                        .unwrap()
                        .expect("held within the bound");
                    mark(&file, &format!("E parent.{t}\n"));
                    tokio::task::yield_now().await;
                    mark(&file, &format!("X parent.{t}\n"));
                    assert!(guard.release().await.unwrap(), "the lease was still ours");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    let mut ids = Vec::new();
    for (program, id, mut child) in foreign {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{} failed: {status}", program.display());
        ids.push((program, id));
    }
    let record = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = record.lines().collect();
    let processes = 4 + ids.len();
    assert_eq!(
        lines.len(),
        2 * processes * THREADS * ENTRIES,
        "every entry recorded"
    );
    for (i, pair) in lines.chunks(2).enumerate() {
        let entry = pair[0].strip_prefix("E ");
        let exit = pair[1].strip_prefix("X ");
        assert!(
            entry.is_some() && entry == exit,
            "overlap at entry {i}: {pair:?}"
        );
    }
    // The other languages' entries are in the record (their own ids, every one), and
    // how often the lock passed between processes, for the log.
    for (program, id) in &ids {
        let entries = lines
            .iter()
            .filter(|l| {
                l.strip_prefix("E ")
                    .is_some_and(|c| c.starts_with(&format!("{id}.")))
            })
            .count();
        assert_eq!(
            entries,
            THREADS * ENTRIES,
            "{}: its entries",
            program.display()
        );
        println!("{}: {entries} entries as {id}", program.display());
    }
    let process = |line: &str| line[2..].split('.').next().unwrap().to_owned();
    let hand_offs = lines
        .chunks(2)
        .zip(lines.chunks(2).skip(1))
        .filter(|(a, b)| process(a[0]) != process(b[0]))
        .count();
    println!(
        "{} entries of {processes} processes, {hand_offs} hand-offs between processes",
        lines.len() / 2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set in the child processes of [`fences_across_processes`] and
/// [`paused_holder_is_fenced_off`]: the cache URL, a record file, the child's id and
/// its lease (milliseconds).
const FENCE_URL: &str = "AIOLOCK_TEST_FENCE_URL";
const FENCE_FILE: &str = "AIOLOCK_TEST_FENCE_FILE";
const FENCE_ID: &str = "AIOLOCK_TEST_FENCE_ID";
const FENCE_LEASE_MS: &str = "AIOLOCK_TEST_FENCE_LEASE_MS";
const FENCE_PROCESSES: usize = 4;
const FENCE_ENTRIES: usize = 2_500;
/// Each child lets the lock key expire (it never releases) at these entries.
const FENCE_EXPIRING: [usize; 2] = [800, 1_700];

/// The child side of [`fences_across_processes`]; does nothing in a normal run.
/// Takes the fenced exclusive key `FENCE_ENTRIES` times; under the lock, appends
/// `<fence> <id>` to the record file (so its lines are in the order of acquisition).
/// At the entries in `FENCE_EXPIRING` it takes the lock with the short lease and
/// never releases it: the next holder gets in after the lock key expired.
#[test]
fn fence_child() {
    let (Ok(url), Ok(file), Ok(id), Ok(short)) = (
        std::env::var(FENCE_URL),
        std::env::var(FENCE_FILE),
        std::env::var(FENCE_ID),
        std::env::var(FENCE_LEASE_MS),
    ) else {
        return;
    };
    let short = Duration::from_millis(short.parse().unwrap());
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let file = std::path::PathBuf::from(file);
    for entry in 0..FENCE_ENTRIES {
        let expiring = FENCE_EXPIRING.contains(&entry);
        let lease = if expiring {
            short
        } else {
            Duration::from_secs(30)
        };
        let guard = cache
            .lock("fenced", lease)
            .fenced()
            .wait_at_most(Duration::from_secs(120))
            .acquire()
            .unwrap()
            .expect("held within the bound");
        let fence = guard.fence().expect("fenced and held");
        mark(&file, &format!("{fence} {id}\n"));
        if expiring {
            std::mem::forget(guard); // crashed: the lock key expires
        } else {
            assert!(guard.release().unwrap(), "the lease was still ours");
        }
    }
}

/// Fences strictly increase over `FENCE_PROCESSES` × `FENCE_ENTRIES` (10,000)
/// acquisitions of one fenced exclusive key on the server at `url`, in as many child
/// processes (each a new client), across lock keys that expired (`short`, the lease
/// of the holders that never release: long enough for one append under the lock on
/// a loaded machine). Each holder appends its fence under the lock to one `O_APPEND`
/// file: in the order of the lines (of acquisition), no fence repeats or decreases.
pub async fn fences_across_processes(url: &str, short: Duration) {
    let dir = tempfile::Builder::new()
        .prefix("aiolock-fences-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("fences.log");
    std::fs::write(&file, b"").unwrap();
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..FENCE_PROCESSES)
        .map(|id| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "exclusive::fence_child", "--test-threads=1"])
                .env(FENCE_URL, url)
                .env(FENCE_FILE, &file)
                .env(FENCE_ID, format!("child{id}"))
                .env(FENCE_LEASE_MS, short.as_millis().to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    let took = started.elapsed();
    let record = std::fs::read_to_string(&file).unwrap();
    let fences: Vec<(u64, &str)> = record
        .lines()
        .map(|l| {
            let (fence, id) = l.split_once(' ').expect("<fence> <id>");
            (fence.parse().expect("a fence"), id)
        })
        .collect();
    assert_eq!(
        fences.len(),
        FENCE_PROCESSES * FENCE_ENTRIES,
        "every acquisition recorded"
    );
    for (i, pair) in fences.windows(2).enumerate() {
        assert!(
            pair[1].0 > pair[0].0,
            "acquisition {} got fence {} after {} (no repeat, no decrease): {pair:?}",
            i + 1,
            pair[1].0,
            pair[0].0
        );
    }
    let hand_offs = fences.windows(2).filter(|p| p[0].1 != p[1].1).count();
    eprintln!(
        "{} fenced acquisitions in {FENCE_PROCESSES} processes in {took:?}: fences {}..={}, \
         {hand_offs} hand-offs between processes, {} lock-key expiries",
        fences.len(),
        fences[0].0,
        fences[fences.len() - 1].0,
        FENCE_PROCESSES * FENCE_EXPIRING.len()
    );
}

/// A store that keeps the highest fence it has seen (Kleppmann's fenced storage), on
/// the cache itself: the key `store` holds `<fence> <writer>`, written by an
/// optimistic compare-and-set only when `fence` is higher than the stored one.
/// Returns whether the write was accepted.
fn fenced_write(cache: &aiolock::blocking::Cache, fence: u64, writer: &str) -> bool {
    loop {
        let lock = cache.optimistic_lock("store").unwrap();
        let stored = lock.value().map_or(0, |v| {
            let v = std::str::from_utf8(v).unwrap();
            v.split_once(' ').unwrap().0.parse::<u64>().unwrap()
        });
        if fence <= stored {
            return false;
        }
        match lock.cas(format!("{fence} {writer}"), None) {
            Ok(()) => return true,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("the store: {e}"),
        }
    }
}

/// The child side of [`paused_holder_is_fenced_off`]; does nothing in a normal run.
/// Takes the fenced exclusive lock `resource` with the lease given, says
/// `held <fence>`, waits for a line on stdin (it is stopped meanwhile), then writes
/// to the fenced store with its fence and says whether the write was accepted,
/// then what `extend` and `release` said.
#[test]
fn paused_holder_child() {
    let (Ok(url), Ok(lease), Err(_)) = (
        std::env::var(FENCE_URL),
        std::env::var(FENCE_LEASE_MS),
        std::env::var(FENCE_FILE),
    ) else {
        return;
    };
    use std::io::Write;
    let lease = Duration::from_millis(lease.parse().unwrap());
    let cache = aiolock::blocking::Cache::from_url(&url).unwrap();
    let mut guard = cache
        .lock("resource", lease)
        .fenced()
        .try_acquire()
        .unwrap()
        .expect("uncontended");
    let fence = guard.fence().expect("fenced");
    println!("held {fence}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    // Resumed, unaware of the pause: the late write, with the old fence.
    let accepted = fenced_write(&cache, fence, "paused");
    let extended = guard.extend(Duration::from_secs(30)).map_err(|e| e.kind());
    let released = guard.release().unwrap();
    println!("wrote {accepted} extend {extended:?} release {released}");
    std::io::stdout().flush().unwrap();
}

/// Kleppmann's scenario, the reason for fencing tokens: a holder (a child process)
/// takes a fenced exclusive lock with a short `lease` and is stopped (SIGSTOP) past
/// its lease; meanwhile this process acquires (after the lease ended), writes to a
/// store that keeps the highest fence, and releases. The first holder resumes
/// (SIGCONT) and writes with its old fence: the store refuses it, and its guard
/// learns it lost the lock (`extend` fails with `Lost`, `release` removes nothing).
pub fn paused_holder_is_fenced_off(url: &str, lease: Duration) {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "exclusive::paused_holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FENCE_URL, url)
        .env(FENCE_LEASE_MS, lease.as_millis().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = move |want: &str| loop {
        let line = lines.next().expect("the child's output").unwrap();
        // libtest prints "test name ... " before the test's own output.
        if let Some(at) = line.find(want) {
            return line[at + want.len()..].to_owned();
        }
    };
    let first: u64 = next_line("held ").parse().unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let signal = |sig| {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    };
    signal(libc::SIGSTOP);
    // Stopped (state `T` in /proc) before the next holder tries.
    let stat = format!("/proc/{pid}/stat");
    let stopped = (0..5_000).any(|_| {
        let stat = std::fs::read_to_string(&stat).unwrap();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        state == Some("T") || {
            std::thread::sleep(Duration::from_millis(2));
            false
        }
    });
    assert!(stopped, "the holder never stopped");
    let cache = aiolock::blocking::Cache::from_url(url).unwrap();
    let second = cache
        .lock("resource", Duration::from_secs(30))
        .fenced()
        .wait_at_most(lease * 10 + Duration::from_secs(10))
        .acquire()
        .unwrap()
        .expect("held once the stopped holder's lease ended");
    let fence = second.fence().unwrap();
    assert!(fence > first, "{fence} after {first}");
    assert!(
        fenced_write(&cache, fence, "second"),
        "the new holder writes"
    );
    assert!(second.release().unwrap());
    signal(libc::SIGCONT);
    writeln!(stdin, "write").unwrap();
    let report = next_line("wrote ");
    assert_eq!(
        report, "false extend Err(Lost) release false",
        "the paused holder's late write is refused, and it knows it lost the lock"
    );
    let stored = cache.get("store").unwrap();
    assert_eq!(
        stored,
        Some(format!("{fence} second").into_bytes()),
        "the store kept the new holder's write"
    );
    assert!(child.wait().unwrap().success());
}
