//! Redis Cluster's flavor-free half, compiled once: hash slots (CRC16 of the hash tag,
//! as `CLUSTER KEYSLOT`), the names of a lock's companions (its release channel and
//! its fence key) in the lock key's slot, and the slot table read from `CLUSTER SLOTS`.
//!
//! # Naming: one slot per lock
//!
//! The lock key stays `namespace + key + lock_suffix` (aiocache's name). Its release
//! channel and fence key are named from it so that they hash to its slot:
//!
//! - the lock key has a hash tag (`{…}`, the first `{` with a `}` after it and
//!   something between): the companions carry the key as it is, so the same tag:
//!   channel `aiolock:release:<key>`, fence key `<key>-fence` (the single-server
//!   names);
//! - it has none and no `}`: the key itself becomes the tag: channel
//!   `aiolock:release:{<key>}`, fence key `{<key>}-fence`;
//! - it has none but holds a `}` (so it cannot sit inside a tag), or is empty: a tag of decimal
//!   digits that hashes to the key's slot (the smallest such number) is prefixed:
//!   channel `aiolock:release:{<n>}<key>`, fence key `{<n>}<key>-fence`.
//!
//! The release script names the channel in `KEYS`, so a channel of another slot would
//! be refused with `CROSSSLOT` by the server rather than published to nobody; by the
//! rules above it is always the key's slot (a test checks it against the server).

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::sync::LazyLock;

use redis::Value;

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), Redis Cluster's key hash.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of `key` that is hashed: the content of the first `{…}` when it is not
/// empty, else the whole key (Redis's rule).
pub(crate) fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The hash slot of `key`, as `CLUSTER KEYSLOT` answers.
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// For each slot, the smallest number whose decimal digits hash to it.
static TAGS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut tags = vec![u32::MAX; usize::from(SLOTS)];
    let mut left = tags.len();
    for n in 0u32.. {
        let s = usize::from(slot(n.to_string().as_bytes()));
        if tags[s] == u32::MAX {
            tags[s] = n;
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    tags
});

/// `prefix + key + suffix`, rewritten as the module docs say so that it hashes to
/// `key`'s slot.
fn companion(prefix: &[u8], key: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + key.len() + suffix.len() + 8);
    out.extend_from_slice(prefix);
    if hash_tag(key).is_some() {
        out.extend_from_slice(key);
    } else if !key.is_empty() && !key.contains(&b'}') {
        out.push(b'{');
        out.extend_from_slice(key);
        out.push(b'}');
    } else {
        out.push(b'{');
        out.extend_from_slice(TAGS[usize::from(slot(key))].to_string().as_bytes());
        out.push(b'}');
        out.extend_from_slice(key);
    }
    out.extend_from_slice(suffix);
    out
}

/// The sharded channel a lock key's release is announced on, in the key's slot.
pub(crate) fn channel(key: &[u8]) -> Vec<u8> {
    companion(b"aiolock:release:", key, b"")
}

/// The fence key of a lock key, in the key's slot.
pub(crate) fn fence_key(key: &[u8]) -> Vec<u8> {
    companion(b"", key, b"-fence")
}

/// Which node serves which slots: `(first, last, "host:port")` ranges.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotTable {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotTable {
    /// Reads a `CLUSTER SLOTS` reply (each entry: first slot, last slot, the master as
    /// `[host, port, id, …]`, then its replicas).
    pub(crate) fn parse(reply: &Value) -> Option<SlotTable> {
        let Value::Array(entries) = reply else {
            return None;
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(items) = entry else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return None;
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                Some(Value::SimpleString(h)) => h.clone(),
                _ => return None,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return None;
            };
            ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                format!("{host}:{port}"),
            ));
        }
        Some(SlotTable { ranges })
    }

    /// The node serving `slot` (`host:port`), if any.
    pub(crate) fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.as_str())
    }
}

/// How many times the `redis` crate sends a command again on a cluster (it follows a
/// `MOVED` or an `ASK` by sending again, and waits before it sends again after
/// `TRYAGAIN` or `CLUSTERDOWN`): a stale slot table's `MOVED` and a migration's `ASK`
/// in a row, and one more. (The crate's own default, 16 with waits from 1.28 s
/// doubling, kept a release refused with `TRYAGAIN` during a migration busy for
/// minutes.)
const RETRIES: u32 = 3;

/// A cluster client builder for `seeds`: at most [`RETRIES`] retries, waits between
/// them of at most 10 × 2^n ms (and 100 ms), so that a refusal that lasts (a slot
/// migrating, a slot without a master) reaches aiolock within about 150 ms.
pub(crate) fn builder(seeds: &[url::Url]) -> redis::cluster::ClusterClientBuilder {
    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(url::Url::as_str))
        .retries(RETRIES)
        .min_retry_wait(1)
        .max_retry_wait(100)
        .retry_wait_formula(10, 2)
}

/// The slot and the node (`host:port`) a `MOVED` error reply names.
pub(crate) fn moved(reply: &Value) -> Option<(u16, &str)> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    if e.code() != "MOVED" {
        return None;
    }
    let (slot, node) = e.details()?.trim().split_once(' ')?;
    Some((slot.parse().ok()?, node))
}

/// The `redis://` URL of node `host:port`, with the seed URL's scheme, credentials and
/// settings.
pub(crate) fn node_url(seed: &url::Url, node: &str) -> Option<url::Url> {
    let (host, port) = node.rsplit_once(':')?;
    let mut url = seed.clone();
    url.set_host(Some(host)).ok()?;
    url.set_port(Some(port.parse().ok()?)).ok()?;
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values of `CLUSTER KEYSLOT` (Redis's own test vectors and hand checks).
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(
            hash_tag(b"foo{}{bar}"),
            None,
            "an empty first tag hashes all"
        );
        assert_eq!(hash_tag(b"foo{{bar}}zap"), Some(&b"{bar"[..]));
        assert_eq!(hash_tag(b"foo{bar}{zap}"), Some(&b"bar"[..]));
    }

    #[test]
    fn moved_names_slot_and_node() {
        let reply = |text: &str| {
            redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("an error reply")
        };
        assert_eq!(
            moved(&reply("MOVED 6010 127.0.0.1:7002")),
            Some((6010, "127.0.0.1:7002"))
        );
        assert_eq!(moved(&reply("ASK 6010 127.0.0.1:7002")), None);
        assert_eq!(moved(&reply("MOVED x")), None);
        assert_eq!(moved(&Value::Okay), None);
    }

    #[test]
    fn companions_share_the_key_slot() {
        let keys: [&[u8]; 9] = [
            b"app:report-lock",
            b"{user1}:report-lock",
            b"a}b-lock",
            b"}",
            b"{}x-lock",
            b"x{-lock",
            b"{{}}",
            b"",
            b"\xff\x00{",
        ];
        for key in keys {
            let s = slot(key);
            assert_eq!(slot(&channel(key)), s, "channel of {key:?}");
            assert_eq!(slot(&fence_key(key)), s, "fence key of {key:?}");
        }
        assert_eq!(channel(b"k-lock"), b"aiolock:release:{k-lock}");
        assert_eq!(fence_key(b"{t}k-lock"), b"{t}k-lock-fence");
    }
}
