//! The waiters' registry behind a backend's one subscriber connection, compiled once
//! for both flavors (each flavor's transport feeds it from its own connection).
//!
//! Per channel (one lock key) it keeps the waiters, each with the token of the holder
//! it lost to. The transport posts what it learns: a message published on the channel
//! ([`Hub::message`]), a re-check of the key ([`Channel::observed`]), a lost
//! connection ([`Hub::disconnected`]). A waiter counts only what concerns its own
//! holder ([`counts_message`], [`counts_observation`]): the release of an earlier
//! holder, heard after this waiter joined, does not wake it, and a re-check sent
//! before it joined does not count for it.

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use event_listener::{Event, EventListener};
use parking_lot::Mutex;

use super::protocol::{Heard, counts_message, counts_observation};

/// Never subscribed (a [`Channel`]'s subscription epoch).
const NEVER: u64 = u64::MAX;

/// Every channel waited on through one subscriber connection.
#[derive(Default)]
pub(crate) struct Hub {
    channels: Mutex<HashMap<Vec<u8>, Arc<Channel>>>,
    /// Bumped whenever the subscriber connection drops (its messages may be lost).
    epoch: AtomicU64,
}

/// One channel's waiters.
pub(crate) struct Channel {
    name: Vec<u8>,
    key: Vec<u8>,
    /// Notified on everything a waiter may be waiting for: a counted message or
    /// observation, a confirmed subscription, a lost connection.
    event: Event,
    state: Mutex<State>,
    /// The epoch in which the server confirmed the subscription ([`NEVER`]: not yet).
    subscribed: AtomicU64,
    /// Set when the server dropped or refused the subscription because another node
    /// serves the channel's slot (a Redis Cluster's slot moved): that node's
    /// `host:port` when the server named it.
    moved: OnceLock<Option<String>>,
}

struct State {
    /// Orders joins and re-checks: a re-check counts only for waiters that joined
    /// before it was sent.
    seq: u64,
    waiters: Vec<Arc<Slot>>,
}

struct Slot {
    /// Where the slot is in its channel's `waiters` (kept under the channel's lock), so
    /// that a waiter leaves in constant time: the last of 10,000 waiters woken at once
    /// would otherwise search a list as long as those still registered.
    at: AtomicUsize,
    /// The channel's `seq` when the waiter joined.
    joined: u64,
    /// The hub's epoch when the waiter joined.
    epoch: u64,
    /// Shared with the channel's other waiters for the same holder (a stampede's
    /// waiters all lost to one): one copy of the token, not one per waiter.
    holder: Option<Arc<[u8]>>,
    /// A counted message came.
    heard: AtomicBool,
    /// A re-check found the holder gone.
    gone: AtomicBool,
    /// Notified, besides the channel's event, whenever this waiter may have something
    /// new to look at: a Redlock quorum waits on several servers' channels at once
    /// with one listener (see [`Waiter::notify_also`]).
    also: OnceLock<Arc<Event>>,
}

impl Slot {
    fn notify_also(&self) {
        if let Some(event) = self.also.get() {
            event.notify(usize::MAX);
        }
    }
}

impl Hub {
    /// The current subscriber connection's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Registers a waiter for the release of `holder` on lock `key`'s channel `name`.
    /// From now on every message and re-check of the key is seen by it. The second
    /// value tells whether the waiter is the channel's first (the transport then
    /// starts the channel's re-check loop).
    pub(crate) fn join(
        self: &Arc<Self>,
        name: &[u8],
        key: &[u8],
        holder: Option<&[u8]>,
    ) -> (Waiter, bool) {
        let mut channels = self.channels.lock();
        let mut first = false;
        let channel = channels.entry(name.to_vec()).or_insert_with(|| {
            first = true;
            Arc::new(Channel {
                name: name.to_vec(),
                key: key.to_vec(),
                event: Event::new(),
                state: Mutex::new(State {
                    seq: 0,
                    waiters: Vec::new(),
                }),
                subscribed: AtomicU64::new(NEVER),
                moved: OnceLock::new(),
            })
        });
        let channel = Arc::clone(channel);
        let slot = {
            let mut state = channel.state.lock();
            state.seq += 1;
            let holder = holder.map(|h| {
                let last = state.waiters.last().and_then(|s| s.holder.as_ref());
                match last {
                    Some(same) if **same == *h => Arc::clone(same),
                    _ => Arc::from(h),
                }
            });
            let slot = Arc::new(Slot {
                at: AtomicUsize::new(state.waiters.len()),
                joined: state.seq,
                epoch: self.epoch(),
                holder,
                heard: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                also: OnceLock::new(),
            });
            state.waiters.push(Arc::clone(&slot));
            slot
        };
        drop(channels);
        let waiter = Waiter {
            hub: Arc::clone(self),
            channel,
            slot,
        };
        (waiter, first)
    }

    /// A message published on channel `name`.
    pub(crate) fn message(&self, name: &[u8], payload: &[u8]) {
        let channel = self.channels.lock().get(name).cloned();
        if let Some(channel) = channel {
            channel.mark(
                |slot| counts_message(payload, slot.holder.as_deref()),
                u64::MAX,
                |slot| &slot.heard,
            );
        }
    }

    /// The server confirmed the subscription of channel `name` in `epoch`.
    pub(crate) fn confirmed(&self, name: &[u8], epoch: u64) {
        let channel = self.channels.lock().get(name).cloned();
        if let Some(channel) = channel {
            channel.confirm(epoch);
        }
    }

    /// The subscriber connection dropped: messages may have been missed. Every waiter
    /// returns [`Heard::Lost`] (and re-checks the key); later waiters subscribe again.
    pub(crate) fn disconnected(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for channel in self.channels.lock().values() {
            channel.notify();
        }
    }

    /// The server dropped (`sunsubscribe`) or refused (`MOVED`) channel `name`: another
    /// node serves its slot now (`to`, when the server named it). Its waiters return
    /// [`Heard::Lost`] (they re-check the key and subscribe again), and the channel
    /// leaves the hub, so that the next waiter of `name` starts a new subscription.
    pub(crate) fn moved(&self, name: &[u8], to: Option<&str>) {
        let channel = self.channels.lock().remove(name);
        if let Some(channel) = channel {
            let _ = channel.moved.set(to.map(str::to_owned));
            channel.notify();
        }
    }

    /// The channels waited on now.
    pub(crate) fn channels(&self) -> Vec<Arc<Channel>> {
        self.channels.lock().values().cloned().collect()
    }

    /// Whether channel `name` has waiters now.
    pub(crate) fn is_waited_on(&self, name: &[u8]) -> bool {
        self.channels.lock().contains_key(name)
    }

    /// Wakes every waiter (they look at their state again).
    pub(crate) fn notify_all(&self) {
        for channel in self.channels.lock().values() {
            channel.notify();
        }
    }
}

impl Channel {
    /// Wakes the channel's waiters (and the events they notify too).
    fn notify(&self) {
        self.event.notify(usize::MAX);
        for slot in &self.state.lock().waiters {
            slot.notify_also();
        }
    }

    /// The channel's name.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// The lock key it announces releases of.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// Whether the server confirmed the subscription in `epoch`.
    pub(crate) fn is_subscribed(&self, epoch: u64) -> bool {
        self.subscribed.load(Ordering::SeqCst) == epoch
    }

    /// The server confirmed the subscription in `epoch`.
    pub(crate) fn confirm(&self, epoch: u64) {
        self.subscribed.store(epoch, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    /// `Some` once the channel [moved](Hub::moved): with the node that serves its
    /// slot now, when the server named it.
    pub(crate) fn moved_to(&self) -> Option<Option<&str>> {
        self.moved.get().map(Option::as_deref)
    }

    /// Whether anybody still waits on the channel.
    pub(crate) fn is_waited_on(&self) -> bool {
        !self.state.lock().waiters.is_empty()
    }

    /// A re-check of the key is about to be sent: the returned mark goes to
    /// [`observed`](Channel::observed) with its result.
    pub(crate) fn recheck_sent(&self) -> u64 {
        let mut state = self.state.lock();
        state.seq += 1;
        state.seq
    }

    /// The re-check marked `sent` found `value` under the key. It counts for the
    /// waiters that joined before it was sent.
    pub(crate) fn observed(&self, sent: u64, value: Option<&[u8]>) {
        self.mark(
            |slot| counts_observation(value, slot.holder.as_deref()),
            sent,
            |slot| &slot.gone,
        );
    }

    /// Sets `flag` of the waiters that joined before `before` and for which `counts`.
    fn mark(
        &self,
        counts: impl Fn(&Slot) -> bool,
        before: u64,
        flag: impl Fn(&Slot) -> &AtomicBool,
    ) {
        let mut woke = false;
        for slot in &self.state.lock().waiters {
            if slot.joined < before && counts(slot) {
                flag(slot).store(true, Ordering::SeqCst);
                slot.notify_also();
                woke = true;
            }
        }
        if woke {
            self.event.notify(usize::MAX);
        }
    }
}

/// One waiter's registration. Dropping it unregisters; the transport unsubscribes the
/// channel when [`leave`](Waiter::leave) says it was the last.
pub(crate) struct Waiter {
    hub: Arc<Hub>,
    channel: Arc<Channel>,
    slot: Arc<Slot>,
}

impl Waiter {
    /// The channel waited on.
    pub(crate) fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }

    /// The hub epoch the waiter joined in.
    pub(crate) fn epoch(&self) -> u64 {
        self.slot.epoch
    }

    /// Listens for the channel's next notification (take it *before* looking at
    /// [`heard`](Waiter::heard), so that nothing in between is missed).
    pub(crate) fn listen(&self) -> EventListener {
        self.channel.event.listen()
    }

    /// Has `event` notified too whenever [`heard`](Waiter::heard) may have changed (a
    /// counted message or re-check, a lost connection), so that one listener can wait
    /// for several waiters. Once per waiter (a second event is ignored). Take a listener
    /// of `event` before looking at `heard`, as with [`listen`](Waiter::listen).
    pub(crate) fn notify_also(&self, event: Arc<Event>) {
        let _ = self.slot.also.set(event);
    }

    /// What ended the wait so far, if anything: a counted message, a re-check that
    /// found the holder gone, or a lost connection or subscription (the channel
    /// moved).
    pub(crate) fn heard(&self) -> Option<Heard> {
        if self.slot.heard.load(Ordering::SeqCst) {
            Some(Heard::Message)
        } else if self.slot.gone.load(Ordering::SeqCst) {
            Some(Heard::Gone)
        } else if self.hub.epoch() != self.slot.epoch || self.channel.moved.get().is_some() {
            Some(Heard::Lost)
        } else {
            None
        }
    }

    /// Unregisters (dropping does it too; once is enough); returns whether this was
    /// the channel's last waiter (the channel then leaves the hub).
    pub(crate) fn leave(&self) -> bool {
        let mut channels = self.hub.channels.lock();
        let empty = {
            let mut state = self.channel.state.lock();
            let at = self.slot.at.load(Ordering::Relaxed);
            if state
                .waiters
                .get(at)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                state.waiters.swap_remove(at);
                if let Some(moved) = state.waiters.get(at) {
                    moved.at.store(at, Ordering::Relaxed);
                }
                // Gone: a second leave finds nothing.
                self.slot.at.store(usize::MAX, Ordering::Relaxed);
            }
            state.waiters.is_empty()
        };
        if empty
            && channels
                .get(&self.channel.name)
                .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
        {
            channels.remove(&self.channel.name);
            return true;
        }
        false
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_counts_only_its_holders_release() {
        let hub = Arc::new(Hub::default());
        let (w1, first) = hub.join(b"c", b"k", Some(b"h1"));
        assert!(first);
        hub.message(b"c", b"h0");
        assert_eq!(w1.heard(), None, "an earlier holder's release");
        hub.message(b"c", b"h1");
        assert_eq!(w1.heard(), Some(Heard::Message));
        let (w2, first) = hub.join(b"c", b"k", Some(b"h2"));
        assert!(!first);
        assert_eq!(w2.heard(), None, "joined after the message");
        hub.message(b"c", b"");
        assert_eq!(w2.heard(), Some(Heard::Message), "a delete");
        drop(w1);
        assert!(w2.leave(), "the last waiter");
        assert!(!w2.leave(), "once");
        assert!(!hub.is_waited_on(b"c"));
    }

    #[test]
    fn waiters_leave_in_any_order() {
        let hub = Arc::new(Hub::default());
        let mut waiters: Vec<_> = (0..5u8)
            .map(|i| hub.join(b"c", b"k", Some(&[b'h', b'0' + i][..])).0)
            .collect();
        // h2, h3, h0 leave (the middle, then the front): each swap moves another slot.
        for at in [2, 2, 0] {
            assert!(!waiters.remove(at).leave(), "others still wait");
        }
        // The two left are h1 and h4, still registered and still counting.
        hub.message(b"c", b"h4");
        let heard: Vec<_> = waiters.iter().map(Waiter::heard).collect();
        assert_eq!(heard, [None, Some(Heard::Message)]);
        assert_eq!(waiters[0].channel().state.lock().waiters.len(), 2);
        assert!(!waiters[1].leave());
        assert!(!waiters[1].leave(), "a second leave changes nothing");
        assert_eq!(waiters[0].channel().state.lock().waiters.len(), 1);
        assert!(waiters[0].leave(), "the last");
        assert!(!hub.is_waited_on(b"c"));
    }

    #[test]
    fn a_recheck_counts_for_waiters_that_joined_before_it() {
        let hub = Arc::new(Hub::default());
        let (early, _) = hub.join(b"c", b"k", Some(b"h0"));
        let sent = early.channel().recheck_sent();
        let (late, _) = hub.join(b"c", b"k", Some(b"h1"));
        // The re-check read h1 (h0 released, h1 took it): h0 is gone for `early`;
        // `late` joined after the re-check was sent and ignores it either way.
        early.channel().observed(sent, Some(b"h1"));
        assert_eq!(early.heard(), Some(Heard::Gone));
        assert_eq!(late.heard(), None);
        let sent = late.channel().recheck_sent();
        late.channel().observed(sent, Some(b"h1"));
        assert_eq!(late.heard(), None, "its holder still holds");
        late.channel().observed(sent, None);
        assert_eq!(late.heard(), Some(Heard::Gone));
    }

    #[test]
    fn another_event_hears_what_the_waiter_hears() {
        use event_listener::Listener as _;
        let hub = Arc::new(Hub::default());
        let (w, _) = hub.join(b"c", b"k", Some(b"h1"));
        let also = Arc::new(Event::new());
        w.notify_also(Arc::clone(&also));
        let notified =
            |l: event_listener::EventListener| l.wait_timeout(std::time::Duration::ZERO).is_some();
        let l = also.listen();
        hub.message(b"c", b"h0");
        assert!(!notified(l), "another holder's release is not heard");
        let l = also.listen();
        hub.message(b"c", b"h1");
        assert!(notified(l), "its holder's release");
        let l = also.listen();
        let sent = w.channel().recheck_sent();
        w.channel().observed(sent, None);
        assert!(notified(l), "a re-check that finds the holder gone");
        let l = also.listen();
        hub.disconnected();
        assert!(notified(l), "a lost connection");
    }

    #[test]
    fn a_moved_channel_is_lost_for_its_waiters_only() {
        let hub = Arc::new(Hub::default());
        let (w, _) = hub.join(b"c", b"k", None);
        let (other, _) = hub.join(b"d", b"k2", None);
        hub.moved(b"c", Some("10.0.0.2:7000"));
        assert_eq!(w.heard(), Some(Heard::Lost));
        assert_eq!(w.channel().moved_to(), Some(Some("10.0.0.2:7000")));
        assert_eq!(other.heard(), None, "another channel");
        // A new waiter of the channel starts a new subscription.
        assert!(!hub.is_waited_on(b"c"));
        let (again, first) = hub.join(b"c", b"k", None);
        assert!(first);
        assert_eq!(again.heard(), None);
        assert!(!w.leave(), "the moved channel is no longer the hub's");
        assert!(hub.is_waited_on(b"c"));
    }

    #[test]
    fn a_lost_connection_is_heard() {
        let hub = Arc::new(Hub::default());
        let (w, _) = hub.join(b"c", b"k", None);
        assert!(!w.channel().is_subscribed(hub.epoch()));
        w.channel().confirm(hub.epoch());
        assert!(w.channel().is_subscribed(hub.epoch()));
        hub.disconnected();
        assert_eq!(w.heard(), Some(Heard::Lost));
        assert!(!w.channel().is_subscribed(hub.epoch()));
    }
}
