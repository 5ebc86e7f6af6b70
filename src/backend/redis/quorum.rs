//! The Redlock quorum's flavor-free half, compiled once: majority and validity
//! arithmetic, the verdict of a claim from the nodes' answers, the holders a lost claim
//! saw (carried to the wait as one opaque token), the renewal script, and the wait's
//! bookkeeping over several nodes. `quorum_generic.rs` sends the commands (the
//! single-server protocol of `protocol.rs`) through both flavors' transports.

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::time::{Duration, Instant};

use super::protocol::{self as r, Heard, Lua, lua};
use crate::core::wait::Wake;
use crate::error::{Error, ErrorKind};

/// How many nodes of `n` make a majority.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The allowance for the drift between the nodes' clocks and ours over one lease:
/// 1 % of the lease plus 2 ms (the Redlock algorithm's figures).
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// How much of a lease is left to its holder when a claim took `elapsed` from its
/// first send to its last answer: `lease − elapsed − drift`, `None` when that is not
/// positive (the lock must not be used, and is released).
pub(crate) fn validity(lease: Duration, elapsed: Duration) -> Option<Duration> {
    lease
        .checked_sub(elapsed)?
        .checked_sub(drift(lease))
        .filter(|d| !d.is_zero())
}

/// How much of a lease a claim (or renewal) is sure of, counted from just before it
/// was sent: the lease minus the drift (zero for a lease shorter than the drift).
pub(crate) fn sure_lease(lease: Duration) -> Duration {
    lease.saturating_sub(drift(lease))
}

/// One node's answer to a claim (`SET key token NX PX lease GET`).
#[derive(Debug)]
pub(crate) enum Vote {
    /// Our token is stored there.
    Won,
    /// Another token is stored there.
    Held(Vec<u8>),
    /// No usable answer (timeout, broken connection, not connected, an error reply):
    /// our token may or may not be stored there.
    Failed(Error),
}

/// What the answers of every node say about a claim.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A majority stored our token and the validity is positive: the lock is ours.
    Acquired,
    /// Not acquired: a majority answered and the lock is someone else's or split
    /// between several claimants, or the validity was not positive when the claim
    /// ended (whatever the nodes answered: too late is too late, and a node that did
    /// not answer before the validity ran out is slow for this lease, not down). The
    /// holders each node named (`None`: ours, none or no answer).
    Lost(Vec<Option<Vec<u8>>>),
    /// Fewer than a majority answered while the validity lasted: nothing can be said.
    /// The first failure.
    Unreachable(usize, Error),
}

/// The verdict of a claim whose nodes answered `votes` (one per node, in order);
/// `valid` tells whether the validity was positive when the last answer came.
pub(crate) fn tally(votes: Vec<Vote>, valid: bool) -> Verdict {
    let n = votes.len();
    let won = votes.iter().filter(|v| matches!(v, Vote::Won)).count();
    let failed = votes
        .iter()
        .filter(|v| matches!(v, Vote::Failed(_)))
        .count();
    if won >= majority(n) && valid {
        return Verdict::Acquired;
    }
    if valid && n - failed < majority(n) {
        let first = votes.into_iter().find_map(|v| match v {
            Vote::Failed(e) => Some(e),
            _ => None,
        });
        return Verdict::Unreachable(failed, first.expect("a failed vote"));
    }
    Verdict::Lost(
        votes
            .into_iter()
            .map(|v| match v {
                Vote::Held(holder) => Some(holder),
                _ => None,
            })
            .collect(),
    )
}

/// The token a majority of `holders` name, if one does: the quorum's holder.
pub(crate) fn quorum_holder(holders: &[Option<Vec<u8>>]) -> Option<&[u8]> {
    let m = majority(holders.len());
    holders.iter().flatten().find_map(|candidate| {
        let count = holders
            .iter()
            .filter(|h| h.as_deref() == Some(candidate))
            .count();
        (count >= m).then_some(candidate.as_slice())
    })
}

/// Marks the holders of a lost claim (which the cache hands back to the wait as the
/// holder's token). A bare token (the winner of another claim of the same cache, see
/// `core::waiters`) never starts with a zero byte.
const HOLDERS: &[u8] = b"\0aiolock-quorum\0";

/// The holders each node named, as one token for [`Claim::Held`](crate::Claim::Held).
pub(crate) fn encode(holders: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = HOLDERS.to_vec();
    for holder in holders {
        match holder {
            Some(h) => {
                let len = u32::try_from(h.len()).unwrap_or(u32::MAX - 1);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&h[..len as usize]);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out
}

/// The quorum's holder, from what the wait was given: the holders of a lost claim
/// ([`encode`]) or a bare token that won a majority. `None`: no token holds a majority
/// (split, or unknown).
pub(crate) fn holder_of(token: Option<&[u8]>) -> Option<Vec<u8>> {
    let token = token?;
    let Some(mut rest) = token.strip_prefix(HOLDERS) else {
        return Some(token.to_vec());
    };
    let mut holders = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len);
        if len == u32::MAX {
            holders.push(None);
            rest = tail;
        } else {
            let (h, tail) = tail.split_at_checked(len as usize)?;
            holders.push(Some(h.to_vec()));
            rest = tail;
        }
    }
    quorum_holder(&holders).map(<[u8]>::to_vec)
}

/// The pause before a claim that found no holder with a majority is made again
/// (Redlock's retry after a random delay, so that the claimants of a split do not
/// split again): uniform between 5 and 50 ms, drawn from `random`.
pub(crate) fn retry_delay(random: u64) -> Duration {
    const MIN: Duration = Duration::from_millis(5);
    const SPAN_MICROS: u64 = 45_000;
    MIN + Duration::from_micros(random % (SPAN_MICROS + 1))
}

/// A renewal on one node that also re-creates a lost key: `KEYS[1]` the lock key,
/// `ARGV[1]` the token, `ARGV[2]` the lease in milliseconds. The key holds our token:
/// its TTL is set to the lease, 1. It is absent (the node restarted, or missed our
/// claim): it is set to our token with the lease, 2. It holds another token: nothing
/// changes, 0.
pub(crate) static EXTEND_OR_CREATE: Lua = lua!(
    r"local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0"
);

/// One node's answer to an owner-checked release or renewal.
#[derive(Debug)]
pub(crate) enum Ack {
    /// Done (deleted; renewed or re-created).
    Yes,
    /// Not ours there: nothing changed.
    No,
    /// No usable answer: it may or may not have been done.
    Unknown(Error),
}

/// Whether a release or renewal acknowledged by `acks` holds on a majority: yes when
/// a majority said yes, no when the yes and the unknown together are no majority, an
/// error (the outcome is unknown) otherwise. `what` names the operation.
pub(crate) fn count(acks: Vec<Ack>, what: &str) -> Result<bool, Error> {
    let m = majority(acks.len());
    let yes = acks.iter().filter(|a| matches!(a, Ack::Yes)).count();
    let unknown = acks.iter().filter(|a| matches!(a, Ack::Unknown(_))).count();
    if yes >= m {
        return Ok(true);
    }
    if yes + unknown < m {
        return Ok(false);
    }
    let first = acks.into_iter().find_map(|a| match a {
        Ack::Unknown(e) => Some(e),
        _ => None,
    });
    let e = first.expect("an unknown answer");
    Err(Error::new(
        e.kind(),
        format!(
            "{what} on the Redlock quorum: {yes} node(s) confirmed, {unknown} did not answer \
             (a majority is {m}): the outcome is unknown ({})",
            e.message()
        ),
    )
    .with_source(e))
}

/// The error of a claim that fewer than a majority of the nodes answered.
pub(crate) fn unreachable(failed: usize, n: usize, first: Error) -> Error {
    let kind = match first.kind() {
        ErrorKind::Timeout => ErrorKind::Timeout,
        ErrorKind::Backend | ErrorKind::Protocol => first.kind(),
        _ => ErrorKind::Connection,
    };
    Error::new(
        kind,
        format!(
            "the Redlock quorum has no majority: {failed} of {n} nodes did not answer \
             the claim (first: {})",
            first.message()
        ),
    )
    .with_source(first)
}

/// One node of a quorum wait, once subscribed and re-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    /// Holds the quorum's holder until `until` at the latest (its `PTTL`).
    Held { until: Instant },
    /// Does not hold it (and did not, as far as this wait knows).
    NotHeld,
    /// Not subscribed or not re-checked: may hold it.
    Unknown,
    /// Held it, then ended while this wait listened: released (a re-check found it
    /// gone early) or expired.
    Ended { released: bool },
}

/// The state of a quorum wait for one holder on every node.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) nodes: Vec<Node>,
}

impl Watch {
    /// The wait planned from the re-check of every node: `probes[i]` is node `i`'s
    /// value and `PTTL` (`None`: not subscribed or not re-checked). `None` when the
    /// wait is over already: the holder held a majority when our claim lost (or won,
    /// for a bare token), and holds none now, so it was released in between (as on
    /// one server, a lease that ended in that instant reads as a release).
    pub(crate) fn plan(
        probes: &[Option<r::Probe>],
        holder: &[u8],
        deadline: Instant,
        now: Instant,
    ) -> Result<Watch, Wake> {
        let nodes = probes
            .iter()
            .map(|probe| match probe {
                None => Node::Unknown,
                Some(probe) => match r::plan(probe, Some(holder), deadline, now) {
                    r::Plan::Gone => Node::NotHeld,
                    r::Plan::Listen { until, .. } => Node::Held { until },
                },
            })
            .collect();
        let watch = Watch { nodes };
        if watch.possible() < majority(probes.len()) {
            return Err(Wake::Released);
        }
        Ok(watch)
    }

    /// Nodes that hold the holder or may.
    fn possible(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Held { .. } | Node::Unknown))
            .count()
    }

    /// When the next held node's lease ends, if one is held.
    pub(crate) fn next_end(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Held { until } => Some(*until),
                _ => None,
            })
            .min()
    }

    /// Node `i` heard `heard` (`None`: nothing yet) at `now`; the wake, once the wait
    /// is over: a release message on any node ends it ([`Wake::Released`]: a holder
    /// releases on every node), a lost subscription too ([`Wake::Vacant`]: claim again,
    /// as on one server). A held node found gone or past its lease end has ended; once
    /// no held node is left, or those left and the unknown ones are no majority, the
    /// holder has lost its majority: released if a node ended by a release, else
    /// vacant (its leases ended).
    pub(crate) fn heard(&mut self, i: usize, heard: Option<Heard>, now: Instant) -> Option<Wake> {
        match heard {
            Some(Heard::Message) => return Some(Wake::Released),
            Some(Heard::Lost) => return Some(Wake::Vacant),
            _ => {}
        }
        if let Node::Held { until } = self.nodes[i] {
            let ended = match heard {
                Some(Heard::Gone) => true,
                _ => now >= until,
            };
            if ended {
                let heard = heard.unwrap_or(Heard::Silence);
                let released = r::wake(heard, until, false, now) == Wake::Released;
                self.nodes[i] = Node::Ended { released };
            }
        }
        self.settled()
    }

    /// The wake once the holder can hold no majority (or nothing held is left to
    /// watch).
    fn settled(&self) -> Option<Wake> {
        let held = self.nodes.iter().any(|n| matches!(n, Node::Held { .. }));
        if held && self.possible() >= majority(self.nodes.len()) {
            return None;
        }
        let released = self.nodes.contains(&Node::Ended { released: true });
        Some(if released {
            Wake::Released
        } else {
            Wake::Vacant
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Vote {
        Vote::Failed(Error::new(ErrorKind::Timeout, "no answer"))
    }

    #[test]
    fn majorities() {
        assert_eq!(
            [3, 5, 7, 9].map(majority),
            [2, 3, 4, 5],
            "a strict majority of an odd number"
        );
    }

    #[test]
    fn validity_is_lease_minus_elapsed_minus_drift() {
        let lease = Duration::from_secs(10);
        assert_eq!(drift(lease), Duration::from_millis(102));
        assert_eq!(
            validity(lease, Duration::from_millis(8)),
            Some(Duration::from_millis(9890))
        );
        assert_eq!(validity(lease, Duration::from_millis(9898)), None);
        assert_eq!(
            validity(lease, Duration::from_millis(9897)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(validity(lease, Duration::from_secs(11)), None);
        assert_eq!(validity(Duration::from_millis(2), Duration::ZERO), None);
        assert_eq!(sure_lease(lease), Duration::from_millis(9898));
        assert_eq!(sure_lease(Duration::from_millis(1)), Duration::ZERO);
    }

    /// Every pattern of three and of five answers: acquired exactly with a majority of
    /// wins and a positive validity; unreachable exactly when fewer than a majority
    /// answered; otherwise lost, naming the holders.
    #[test]
    fn every_pattern_of_answers() {
        for n in [3usize, 5] {
            for pattern in 0..3usize.pow(n as u32) {
                for valid in [true, false] {
                    let mut p = pattern;
                    let mut votes = Vec::new();
                    for _ in 0..n {
                        votes.push(match p % 3 {
                            0 => Vote::Won,
                            1 => Vote::Held(b"other".to_vec()),
                            _ => failed(),
                        });
                        p /= 3;
                    }
                    let won = votes.iter().filter(|v| matches!(v, Vote::Won)).count();
                    let held = votes.iter().filter(|v| matches!(v, Vote::Held(_))).count();
                    let m = majority(n);
                    match tally(votes, valid) {
                        Verdict::Acquired => assert!(won >= m && valid),
                        Verdict::Unreachable(failed, _) => {
                            assert!(valid && won < m);
                            assert!(won + held < m);
                            assert_eq!(failed, n - won - held);
                        }
                        Verdict::Lost(holders) => {
                            assert!(!valid || won < m && won + held >= m);
                            assert_eq!(holders.iter().flatten().count(), held);
                            let q = quorum_holder(&holders);
                            assert_eq!(q.is_some(), held >= m, "{holders:?}");
                            assert_eq!(holder_of(Some(&encode(&holders))).is_some(), held >= m);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn holders_round_trip() {
        let holders = vec![Some(b"a".to_vec()), None, Some(b"a".to_vec())];
        assert_eq!(
            holder_of(Some(&encode(&holders))).as_deref(),
            Some(&b"a"[..])
        );
        let split = vec![Some(b"a".to_vec()), Some(b"b".to_vec()), None];
        assert_eq!(holder_of(Some(&encode(&split))), None);
        let empty = vec![Some(Vec::new()), Some(Vec::new()), None];
        assert_eq!(holder_of(Some(&encode(&empty))).as_deref(), Some(&b""[..]));
        // A bare token (another claim of the cache won a majority with it).
        let token = crate::core::token::Token::random();
        assert_eq!(
            holder_of(Some(token.as_bytes())).as_deref(),
            Some(token.as_bytes())
        );
        assert_eq!(holder_of(None), None);
        // Garbage after the mark is no holder.
        let mut bad = HOLDERS.to_vec();
        bad.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(holder_of(Some(&bad)), None);
    }

    #[test]
    fn retry_delays_stay_in_range() {
        assert_eq!(retry_delay(0), Duration::from_millis(5));
        assert_eq!(retry_delay(45_000), Duration::from_millis(50));
        assert_eq!(
            retry_delay(u64::MAX),
            Duration::from_micros(5_000 + u64::MAX % 45_001)
        );
        for random in [1, 22_500, 45_001, 1 << 40, u64::MAX] {
            let d = retry_delay(random);
            assert!(
                d >= Duration::from_millis(5) && d <= Duration::from_millis(50),
                "{d:?}"
            );
        }
    }

    #[test]
    fn counts_need_a_majority() {
        let unknown = || Ack::Unknown(Error::new(ErrorKind::Timeout, "no answer"));
        assert!(count(vec![Ack::Yes, Ack::Yes, Ack::No], "release").unwrap());
        assert!(count(vec![Ack::Yes, Ack::Yes, unknown()], "release").unwrap());
        assert!(!count(vec![Ack::Yes, Ack::No, Ack::No], "release").unwrap());
        assert!(!count(vec![Ack::No, Ack::No, unknown()], "release").unwrap());
        let e = count(vec![Ack::Yes, Ack::No, unknown()], "release").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.message().contains("outcome is unknown"), "{e}");
        assert!(
            !count(vec![Ack::Yes, Ack::Yes, Ack::No, Ack::No, unknown()], "x").is_ok_and(|b| !b)
        );
    }

    fn at(ms: u64) -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn held(ttl_ms: u64) -> Option<r::Probe> {
        Some(r::Probe {
            value: Some(b"q".to_vec()),
            ttl: crate::value::Ttl::Expires(Duration::from_millis(ttl_ms)),
        })
    }

    fn other() -> Option<r::Probe> {
        Some(r::Probe {
            value: None,
            ttl: crate::value::Ttl::Missing,
        })
    }

    #[test]
    fn a_wait_plans_from_the_nodes_rechecks() {
        let deadline = at(10_000);
        // Held on two of three: listen, until the earlier lease end.
        let w = Watch::plan(&[held(100), held(300), other()], b"q", deadline, at(0)).unwrap();
        assert_eq!(w.next_end(), Some(at(101)));
        // Held on one, the others unknown or free: two may hold it, listen.
        assert!(Watch::plan(&[held(100), None, other()], b"q", deadline, at(0)).is_ok());
        // Held on one only: it lost its majority in between, a release.
        let over = Watch::plan(&[held(100), other(), other()], b"q", deadline, at(0));
        assert_eq!(over.unwrap_err(), Wake::Released);
    }

    #[test]
    fn a_wait_ends_on_the_first_release_message() {
        let mut w =
            Watch::plan(&[held(100), held(100), held(100)], b"q", at(10_000), at(0)).unwrap();
        assert_eq!(w.heard(0, None, at(1)), None);
        assert_eq!(
            w.heard(2, Some(Heard::Message), at(2)),
            Some(Wake::Released)
        );
        let mut w = Watch::plan(&[held(100), held(100), other()], b"q", at(10_000), at(0)).unwrap();
        assert_eq!(w.heard(2, Some(Heard::Lost), at(2)), Some(Wake::Vacant));
    }

    #[test]
    fn a_wait_ends_when_the_holder_loses_its_majority() {
        let deadline = at(10_000);
        let probes = [held(100), held(200), held(300), held(400), held(500)];
        let mut w = Watch::plan(&probes, b"q", deadline, at(0)).unwrap();
        // Two leases end (no release): three still hold it.
        assert_eq!(w.heard(0, None, at(101)), None);
        assert_eq!(w.heard(1, None, at(201)), None);
        assert_eq!(w.next_end(), Some(at(301)));
        // The third: two left of five, the leases ended: vacant.
        assert_eq!(w.heard(2, None, at(301)), Some(Wake::Vacant));

        // A node found gone long before its lease end was released without a message
        // (an operator's DEL, a restart): with a lease end after it, a release.
        let mut w = Watch::plan(&[held(100), held(5000), other()], b"q", deadline, at(0)).unwrap();
        assert_eq!(w.heard(1, Some(Heard::Gone), at(50)), Some(Wake::Released));
        // A node restarted (gone) while the holder keeps a majority: keep waiting.
        let mut w =
            Watch::plan(&[held(5000), held(5000), held(5000)], b"q", deadline, at(0)).unwrap();
        assert_eq!(w.heard(0, Some(Heard::Gone), at(50)), None);
        assert_eq!(w.heard(1, None, at(60)), None, "nothing yet");
        // Gone from the other re-check of a node that never held it: nothing.
        let mut w = Watch::plan(&[held(5000), held(5000), other()], b"q", deadline, at(0)).unwrap();
        assert_eq!(w.heard(2, Some(Heard::Gone), at(50)), None);
    }
}
