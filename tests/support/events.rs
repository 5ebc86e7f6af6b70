//! A `tracing` subscriber for the tests (the crate's `tracing` feature): it counts the
//! `"waiting"` events per lock key, so a test can wait until N waiters have lost their
//! claim and wait, instead of sleeping, and it keeps the `warn` events.
//!
//! It is the process's global default subscriber: tests run one per process (nextest),
//! and the generic suite gives every test its own namespace, so keys never mix.
//! Call [`install`] before the events a test waits for can happen.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// How long a test waits for events before it fails (they come within milliseconds).
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    waiting: HashMap<String, usize>,
    warnings: Vec<String>,
    /// Every span so far, by id: its name and fields (`outcome` recorded later).
    spans: HashMap<u64, String>,
}

struct Hook {
    state: Mutex<State>,
    changed: Condvar,
    notify: tokio::sync::Notify,
    next_span: AtomicU64,
}

static HOOK: OnceLock<&'static Hook> = OnceLock::new();

/// Installs the subscriber (once per process).
pub fn install() {
    hook();
}

fn hook() -> &'static Hook {
    HOOK.get_or_init(|| {
        let hook: &'static Hook = Box::leak(Box::new(Hook {
            state: Mutex::default(),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            next_span: AtomicU64::new(1),
        }));
        tracing::subscriber::set_global_default(Global(hook))
            .expect("no other global tracing subscriber in the test process");
        hook
    })
}

/// How many `"waiting"` events `lock_key` (the full key: namespace + key + `-lock`) had.
pub fn waiting(lock_key: &str) -> usize {
    let state = hook().state.lock().unwrap();
    state.waiting.get(lock_key).copied().unwrap_or(0)
}

/// Blocks until `lock_key` had `n` `"waiting"` events: `n` waiters lost their claim and
/// wait (any release from now on must wake them with `Released`).
pub fn wait_for_waiters(lock_key: &str, n: usize) {
    let hook = hook();
    let state = hook.state.lock().unwrap();
    let (state, timeout) = hook
        .changed
        .wait_timeout_while(state, PATIENCE, |s| {
            s.waiting.get(lock_key).copied().unwrap_or(0) < n
        })
        .unwrap();
    assert!(
        !timeout.timed_out(),
        "{n} waiters never waited on {lock_key:?} (seen: {:?})",
        state.waiting.get(lock_key)
    );
}

/// [`wait_for_waiters`] for async tests: does not block the runtime's thread.
pub async fn waiters(lock_key: &str, n: usize) {
    let hook = hook();
    let wait = async {
        loop {
            let notified = hook.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if waiting(lock_key) >= n {
                return;
            }
            notified.await;
        }
    };
    // Real time, not the runtime's clock: a paused clock would end this at once.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog_key = lock_key.to_owned();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(PATIENCE).is_err() {
            eprintln!("{n} waiters never waited on {watchdog_key:?}");
            std::process::abort();
        }
    });
    wait.await;
    let _ = done_tx.send(());
    let _ = watchdog.join();
}

/// Every span so far, as `name key=… backend=… outcome=…` (fields in recording order).
pub fn spans() -> Vec<String> {
    let state = hook().state.lock().unwrap();
    let mut spans: Vec<_> = state.spans.iter().map(|(id, s)| (*id, s.clone())).collect();
    spans.sort();
    spans.into_iter().map(|(_, s)| s).collect()
}

/// The `warn` events so far, each as its message and fields.
pub fn warnings() -> Vec<String> {
    hook().state.lock().unwrap().warnings.clone()
}

struct Global(&'static Hook);

#[derive(Default)]
struct Fields {
    message: String,
    key: Option<String>,
    all: String,
}

impl Fields {
    fn add(&mut self, name: &str, text: String) {
        match name {
            "message" => self.message = text,
            name => {
                let _ = write!(self.all, " {name}={text}");
                if name == "key" {
                    self.key = Some(text);
                }
            }
        }
    }
}

impl Visit for Fields {
    // `key = %…` arrives here, Display-formatted: no quotes to strip.
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.add(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field.name(), value.to_owned());
    }
}

impl Subscriber for Global {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next_span.fetch_add(1, Ordering::Relaxed);
        let mut fields = Fields::default();
        span.record(&mut fields);
        let text = format!("{}{}", span.metadata().name(), fields.all);
        self.0.state.lock().unwrap().spans.insert(id, text);
        Id::from_u64(id)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut state = self.0.state.lock().unwrap();
        if let Some(text) = state.spans.get_mut(&id.into_u64()) {
            text.push_str(&fields.all);
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let is_waiting = fields.message == "waiting" && fields.key.is_some();
        if !is_waiting && level != Level::WARN {
            return;
        }
        {
            let mut state = self.0.state.lock().unwrap();
            if is_waiting {
                *state.waiting.entry(fields.key.unwrap()).or_default() += 1;
            } else {
                state
                    .warnings
                    .push(format!("{}{}", fields.message, fields.all));
            }
        }
        self.0.changed.notify_all();
        self.0.notify.notify_waiters();
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
