//! Exclusive-lock tests of the async flavor only (cancellation), run per backend by
//! `backend_suite!`.

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
