//! The watchdog's schedule, IO-free: when each watched lock is renewed next, and when
//! it counts as lost for want of a confirmed renewal. The worker of each flavor
//! (`shared/watchdog.rs`) asks it what is due at an instant, sends the renewals, and
//! reports their answers back; time comes in as arguments.
//!
//! The rules, for a lock whose lease `lease` was last confirmed to end at `lease_end`
//! (the instant before the claim or the last renewal was sent, plus the lease):
//! - it is renewed at [`renew_at`]: a third of the lease after that request was sent;
//! - it counts as lost at [`lost_at`], a [`margin`] before `lease_end`, unless a
//!   renewal was confirmed meanwhile: with a renewal in flight (a stalled server) as
//!   much as without one (a worker that came too late);
//! - the answer to a renewal counts only if it is the answer to the latest request
//!   (a manual extend in between, or a removal, makes it stale).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// How long before its last confirmed lease end a watched lock counts as lost without
/// a confirmed renewal: a tenth of the lease, at most one second. It covers the
/// holder's reaction and the drift between the client's and the server's clocks.
pub fn margin(lease: Duration) -> Duration {
    (lease / 10).min(Duration::from_secs(1))
}

/// When a lock whose lease `lease` was confirmed to end at `lease_end` counts as lost,
/// unless a renewal is confirmed before: [`margin`] before `lease_end`.
pub fn lost_at(lease_end: Instant, lease: Duration) -> Instant {
    lease_end.checked_sub(margin(lease)).unwrap_or(lease_end)
}

/// When a lock whose lease `lease` was confirmed to end at `lease_end` is renewed:
/// a third of the lease after the confirming request was sent (`lease_end - lease`).
pub fn renew_at(lease_end: Instant, lease: Duration) -> Instant {
    lease_end
        .checked_sub(lease - lease / 3)
        .unwrap_or(lease_end)
}

/// What is due now (see [`Schedule::next`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Due<T> {
    /// Renew `id` with `lease` now; its answer is reported with `seq`
    /// ([`Schedule::renewed`], [`Schedule::failed`]), and it counts as lost at
    /// `lost_at` unless confirmed by then.
    Renew {
        id: u64,
        seq: u64,
        lease: Duration,
        lost_at: Instant,
    },
    /// `id` had no renewal confirmed before its lost instant: removed from the
    /// schedule; its value.
    Lost { id: u64, value: T },
}

/// The watched locks of one cache and their next instants: a timer heap with lazy
/// deletion (an entry of the heap whose `seq` is not its slot's is stale).
#[derive(Debug)]
pub struct Schedule<T> {
    slots: HashMap<u64, Slot<T>>,
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_id: u64,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    lease: Duration,
    lease_end: Instant,
    /// The instant of the slot's live heap entry.
    due: Instant,
    /// The `seq` of the slot's live heap entry (and of the renewal in flight).
    seq: u64,
    /// A renewal was sent and not answered: `due` is the lost instant.
    in_flight: bool,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            slots: HashMap::new(),
            heap: BinaryHeap::new(),
            next_id: 0,
        }
    }
}

impl<T> Schedule<T> {
    /// How many locks are watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Watches a lock whose lease `lease` was confirmed to end at `lease_end`; its id
    /// and its first renewal instant.
    #[cfg(test)]
    pub fn insert(&mut self, value: T, lease: Duration, lease_end: Instant) -> (u64, Instant) {
        self.insert_with(|_| value, lease, lease_end)
    }

    /// [`insert`](Schedule::insert) with the value `make` makes from the id.
    pub fn insert_with(
        &mut self,
        make: impl FnOnce(u64) -> T,
        lease: Duration,
        lease_end: Instant,
    ) -> (u64, Instant) {
        self.next_id += 1;
        let id = self.next_id;
        let value = make(id);
        let due = renew_at(lease_end, lease);
        self.slots.insert(
            id,
            Slot {
                value,
                lease,
                lease_end,
                due,
                seq: 0,
                in_flight: false,
            },
        );
        self.heap.push(Reverse((due, id, 0)));
        (id, due)
    }

    /// The value of `id`, while watched.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.slots.get(&id).map(|s| &s.value)
    }

    /// Stops watching `id` (released, dropped, lost); its value if it was watched.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let slot = self.slots.remove(&id)?;
        self.compact();
        Some(slot.value)
    }

    /// Stops watching everything; the values.
    pub fn drain(&mut self) -> Vec<T> {
        self.heap.clear();
        self.slots.drain().map(|(_, s)| s.value).collect()
    }

    /// The earliest instant something may be due (`None`: nothing is watched). It may
    /// be the instant of a stale entry: [`next`](Schedule::next) then finds nothing due
    /// and drops it.
    pub fn wake_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// What is due at `now`, one at a time: a renewal to send (the slot is then in
    /// flight until its answer or its lost instant) or a lock lost (removed). A
    /// renewal that would start at or after the lock's lost instant (a worker that came
    /// late) is a loss instead.
    pub fn next(&mut self, now: Instant) -> Option<Due<T>> {
        while let Some(Reverse((at, id, seq))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.seq != seq {
                continue;
            }
            let lost = lost_at(slot.lease_end, slot.lease);
            if slot.in_flight || now >= lost {
                let value = self.slots.remove(&id).map(|s| s.value)?;
                return Some(Due::Lost { id, value });
            }
            slot.in_flight = true;
            slot.seq += 1;
            slot.due = lost;
            self.heap.push(Reverse((lost, id, slot.seq)));
            return Some(Due::Renew {
                id,
                seq: slot.seq,
                lease: slot.lease,
                lost_at: lost,
            });
        }
        None
    }

    /// Whether the renewal `seq` of `id` is still awaited (not stale, not removed).
    pub fn awaits(&self, id: u64, seq: u64) -> bool {
        self.slots
            .get(&id)
            .is_some_and(|slot| slot.seq == seq && slot.in_flight)
    }

    /// The renewal `seq` of `id` was confirmed: the lease now ends at `lease_end`.
    /// Returns whether it counted (false: stale, or `id` is no longer watched).
    pub fn renewed(&mut self, id: u64, seq: u64, lease_end: Instant) -> bool {
        match self.slots.get_mut(&id) {
            Some(slot) if slot.seq == seq && slot.in_flight => {
                let lease = slot.lease;
                self.rearm(id, lease, lease_end);
                true
            }
            _ => false,
        }
    }

    /// The renewal `seq` of `id` failed, or found the lock not ours: removed; its value
    /// (`None`: stale, or no longer watched).
    pub fn failed(&mut self, id: u64, seq: u64) -> Option<T> {
        match self.slots.get(&id) {
            Some(slot) if slot.seq == seq && slot.in_flight => self.remove(id),
            _ => None,
        }
    }

    /// The lock `id` was renewed outside the schedule (a manual extend): its lease is
    /// now `lease`, confirmed to end at `lease_end`; a renewal in flight is stale.
    /// Returns whether `id` is watched.
    pub fn extended(&mut self, id: u64, lease: Duration, lease_end: Instant) -> bool {
        if !self.slots.contains_key(&id) {
            return false;
        }
        self.rearm(id, lease, lease_end);
        true
    }

    fn rearm(&mut self, id: u64, lease: Duration, lease_end: Instant) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.lease = lease;
        slot.lease_end = lease_end;
        slot.in_flight = false;
        slot.seq += 1;
        slot.due = renew_at(lease_end, lease);
        self.heap.push(Reverse((slot.due, id, slot.seq)));
        self.compact();
    }

    /// Rebuilds the heap once stale entries outnumber the live ones (many releases
    /// within a lease): memory stays proportional to the watched locks.
    fn compact(&mut self) {
        if self.heap.len() <= 2 * self.slots.len() + 64 {
            return;
        }
        self.heap = self
            .slots
            .iter()
            .map(|(id, s)| Reverse((s.due, *id, s.seq)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(300);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn instants_follow_the_lease() {
        let t = Instant::now();
        let end = t + LEASE;
        assert_eq!(renew_at(end, LEASE), t + ms(100));
        assert_eq!(lost_at(end, LEASE), t + ms(270));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_nanos(5)), Duration::ZERO);
        assert!(renew_at(end, LEASE) < lost_at(end, LEASE));
    }

    #[test]
    fn renews_every_third_of_the_lease_after_the_last_success() {
        let t = Instant::now();
        let mut s = Schedule::default();
        let (id, first) = s.insert("a", LEASE, t + LEASE);
        assert_eq!(first, t + ms(100));
        assert_eq!(s.next(t + ms(99)), None);
        let Some(Due::Renew {
            id: got,
            seq,
            lease,
            lost_at,
        }) = s.next(t + ms(100))
        else {
            panic!("due")
        };
        assert_eq!((got, lease, lost_at), (id, LEASE, t + ms(270)));
        assert_eq!(s.next(t + ms(150)), None, "in flight");
        assert!(s.awaits(id, seq));
        assert!(!s.awaits(id, seq + 1));
        // Sent at 100 ms, confirmed: the lease ends at 400 ms, next renewal at 200 ms.
        assert!(s.renewed(id, seq, t + ms(400)));
        assert_eq!(s.wake_at(), Some(t + ms(200)));
        assert!(!s.renewed(id, seq, t + ms(500)), "answered once");
        assert_eq!(s.next(t + ms(199)), None);
        assert!(matches!(s.next(t + ms(200)), Some(Due::Renew { .. })));
    }

    #[test]
    fn an_unanswered_renewal_is_lost_at_the_margin() {
        let t = Instant::now();
        let mut s = Schedule::default();
        let (id, _) = s.insert("a", LEASE, t + LEASE);
        let Some(Due::Renew { seq, .. }) = s.next(t + ms(100)) else {
            panic!()
        };
        assert_eq!(s.wake_at(), Some(t + ms(270)));
        assert_eq!(s.next(t + ms(269)), None);
        assert_eq!(s.next(t + ms(270)), Some(Due::Lost { id, value: "a" }));
        assert!(s.is_empty());
        assert!(!s.renewed(id, seq, t + ms(600)), "too late: stays lost");
        assert_eq!(s.failed(id, seq), None);
    }

    #[test]
    fn a_late_worker_reports_a_loss_instead_of_renewing() {
        let t = Instant::now();
        let mut s = Schedule::default();
        let (id, _) = s.insert("a", LEASE, t + LEASE);
        assert_eq!(s.next(t + ms(280)), Some(Due::Lost { id, value: "a" }));
    }

    #[test]
    fn failures_remove_and_stale_answers_are_ignored() {
        let t = Instant::now();
        let mut s = Schedule::default();
        let (a, _) = s.insert("a", LEASE, t + LEASE);
        let (b, _) = s.insert("b", LEASE, t + LEASE);
        let mut seqs = HashMap::new();
        while let Some(Due::Renew { id, seq, .. }) = s.next(t + ms(100)) {
            seqs.insert(id, seq);
        }
        assert_eq!(seqs.len(), 2);
        assert_eq!(s.failed(a, seqs[&a]), Some("a"));
        assert_eq!(s.failed(a, seqs[&a]), None);
        assert!(!s.awaits(a, seqs[&a]), "removed");
        // A manual extend while b's renewal is in flight: its answer is stale.
        assert!(s.extended(b, ms(600), t + ms(700)));
        assert_eq!(s.failed(b, seqs[&b]), None, "stale");
        assert!(!s.renewed(b, seqs[&b], t + ms(400)), "stale");
        assert_eq!(s.len(), 1);
        assert_eq!(s.next(t + ms(299)), None, "the stale lost instant passed");
        // Next renewal: a third of the new lease after the extend was sent (100 ms).
        assert!(matches!(
            s.next(t + ms(300)),
            Some(Due::Renew { id, lease, .. }) if id == b && lease == ms(600)
        ));
        assert!(!s.extended(a, LEASE, t + LEASE), "no longer watched");
    }

    #[test]
    fn removed_locks_never_fire_and_the_heap_stays_small() {
        let t = Instant::now();
        let mut s = Schedule::default();
        let (keep, _) = s.insert(0, LEASE, t + LEASE);
        for i in 1..10_000 {
            let (id, _) = s.insert(i, LEASE, t + LEASE);
            assert_eq!(s.remove(id), Some(i));
        }
        assert!(s.heap.len() <= 2 * s.len() + 65, "{}", s.heap.len());
        let mut fired = Vec::new();
        while let Some(d) = s.next(t + ms(100)) {
            fired.push(d);
        }
        assert!(matches!(fired[..], [Due::Renew { id, .. }] if id == keep));
        assert_eq!(s.drain(), vec![0]);
        assert_eq!(s.wake_at(), None);
    }
}
