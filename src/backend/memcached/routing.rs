//! Which server of a pool owns a key, computed exactly as the application's own
//! memcached client computes it (compiled once, IO-free).
//!
//! - [`Distribution::Ketama`]: libmemcached's consistent hashing with
//!   `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (distribution
//!   `MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED`, key hash MD5; twemproxy's and
//!   spymemcached's ketama use the same points, with point strings of their own):
//!   each server gets
//!   `floor(weight share × 160 / 4 × servers) × 4` points on a circle of `u32`s (160
//!   with equal weights), four per MD5 digest of the point string `"<host>-<i>"` for
//!   port 11211 and `"<host>:<port>-<i>"` for any other port (`i` = 0, 1, …; a unix
//!   socket is `"<path>:0-<i>"`, libmemcached's port 0), each point the little-endian
//!   `u32` of one quarter of the digest. A key goes to the first point at or after
//!   the little-endian `u32` of the first quarter of its MD5 (wrapping to the first
//!   point); equal points are ordered by server index. The hashed key is the key as
//!   stored (namespace included).
//! - [`Distribution::Rendezvous`]: pymemcache's `HashClient` (`RendezvousHash`): the
//!   score of a server is `murmur3_32("<node>-<key>", seed 0)` where the node is
//!   `"<host>:<port>"` (IPv6 without brackets) or a unix socket's path, the highest
//!   score wins, a tie goes to the larger node string. pymemcache hashes a Python
//!   `str` by code point, each taken modulo 256, and its length in code points: a key
//!   that is valid UTF-8 is hashed that way (what pymemcache does with the same key
//!   as a `str`), any other key byte by byte.
//!
//! A pool of one server routes every key to it without hashing (as both clients do).
//! Golden vectors from the real clients (`scripts/golden-memcached-routing.py`) are
//! compared in this module's tests.

use md5::{Digest, Md5};

use crate::backend::memcached::settings::{Addr, DEFAULT_PORT};

/// How keys are spread over the servers of a pool (URL option `distribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Distribution {
    /// libmemcached's weighted ketama (MD5 continuum), the default.
    #[default]
    Ketama,
    /// pymemcache `HashClient`'s rendezvous hashing (murmur3_32).
    Rendezvous,
}

impl Distribution {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "ketama" => Some(Distribution::Ketama),
            "rendezvous" => Some(Distribution::Rendezvous),
            _ => None,
        }
    }
}

/// libmemcached's points per server in weighted ketama mode
/// (`MEMCACHED_POINTS_PER_SERVER_KETAMA`).
const KETAMA_POINTS: u32 = 160;

/// The key-to-server map of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    /// One server: every key is its.
    Single,
    /// Sorted by point, then by server index (libmemcached's `continuum_item_cmp`).
    Ketama(Vec<(u32, u32)>),
    /// pymemcache's node strings, in the pool's order.
    Rendezvous(Vec<String>),
}

impl Router {
    /// The map for `servers` (in the order the URL lists them).
    pub(crate) fn new(distribution: Distribution, servers: &[Addr]) -> Self {
        let inner = if servers.len() <= 1 {
            Inner::Single
        } else {
            match distribution {
                Distribution::Ketama => Inner::Ketama(continuum(servers)),
                Distribution::Rendezvous => {
                    Inner::Rendezvous(servers.iter().map(rendezvous_node).collect())
                }
            }
        };
        Router { inner }
    }

    /// The index of the server that owns `key`.
    pub(crate) fn route(&self, key: &[u8]) -> usize {
        match &self.inner {
            Inner::Single => 0,
            Inner::Ketama(points) => {
                let hash = md5_word(&Md5::digest(key), 0);
                let at = points.partition_point(|&(point, _)| point < hash);
                points.get(at).unwrap_or(&points[0]).1 as usize
            }
            Inner::Rendezvous(nodes) => {
                let mut best: Option<(u32, usize)> = None;
                for (i, node) in nodes.iter().enumerate() {
                    let score = rendezvous_score(node, key);
                    best = match best {
                        None => Some((score, i)),
                        Some((high, _)) if score > high => Some((score, i)),
                        Some((high, winner)) if score == high && *node > nodes[winner] => {
                            Some((score, i))
                        }
                        keep => keep,
                    };
                }
                best.map_or(0, |(_, i)| i)
            }
        }
    }
}

/// libmemcached's host name of a server: the host as written (IPv6 without brackets),
/// a unix socket's path.
fn host_of(addr: &Addr) -> (String, u16) {
    match addr {
        Addr::Tcp { host, port } => (host.clone(), *port),
        Addr::Unix(path) => (path.display().to_string(), 0),
    }
}

/// The point string prefix libmemcached hashes for a server (`update_continuum`):
/// `host` for port 11211, else `host:port`.
pub(crate) fn ketama_name(addr: &Addr) -> String {
    match host_of(addr) {
        (host, DEFAULT_PORT) => host,
        (host, port) => format!("{host}:{port}"),
    }
}

/// pymemcache's node string of a server (`HashClient._make_client_key`).
pub(crate) fn rendezvous_node(addr: &Addr) -> String {
    match addr {
        Addr::Tcp { host, port } => format!("{host}:{port}"),
        Addr::Unix(path) => path.display().to_string(),
    }
}

/// The little-endian `u32` of the `quarter`-th four bytes of a digest
/// (libmemcached's `ketama_server_hash`).
fn md5_word(digest: &[u8], quarter: usize) -> u32 {
    let b = &digest[quarter * 4..quarter * 4 + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// libmemcached's continuum for `servers` with equal weights (weighted ketama mode).
fn continuum(servers: &[Addr]) -> Vec<(u32, u32)> {
    let live = servers.len();
    let mut points = Vec::with_capacity(live * KETAMA_POINTS as usize);
    for (index, addr) in servers.iter().enumerate() {
        // The same single-precision arithmetic as libmemcached, weight 1 each:
        // floor(pct * 160 / 4 * live + 1e-10) * 4.
        let pct = 1.0f32 / live as f32;
        let per_server = ((pct * KETAMA_POINTS as f32 / 4.0 * live as f32 + 0.000_000_000_1f32)
            .floor() as u32)
            * 4;
        let name = ketama_name(addr);
        for i in 0..per_server / 4 {
            let digest = Md5::digest(format!("{name}-{i}").as_bytes());
            for quarter in 0..4 {
                let index = u32::try_from(index).expect("fewer than 2^32 servers");
                points.push((md5_word(&digest, quarter), index));
            }
        }
    }
    points.sort_unstable();
    points
}

/// pymemcache's score of `node` for `key`: murmur3_32 of `"<node>-<key>"`, seed 0,
/// over the code points of the Python string (each modulo 256).
fn rendezvous_score(node: &str, key: &[u8]) -> u32 {
    let mut h = Murmur3::default();
    for c in node.chars() {
        h.push(c as u32 as u8);
    }
    h.push(b'-');
    match std::str::from_utf8(key) {
        Ok(text) => text.chars().for_each(|c| h.push(c as u32 as u8)),
        Err(_) => key.iter().for_each(|&b| h.push(b)),
    }
    h.finish()
}

/// MurmurHash3 x86_32 with seed 0, fed one byte at a time (pymemcache's
/// `murmur3_32`, which reads a Python string by code point).
#[derive(Default)]
struct Murmur3 {
    h: u32,
    block: u32,
    filled: u32,
    len: u32,
}

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

fn scramble(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    fn push(&mut self, byte: u8) {
        self.block |= u32::from(byte) << (8 * self.filled);
        self.filled += 1;
        self.len = self.len.wrapping_add(1);
        if self.filled == 4 {
            self.h ^= scramble(self.block);
            self.h = self
                .h
                .rotate_left(13)
                .wrapping_mul(5)
                .wrapping_add(0xe654_6b64);
            self.block = 0;
            self.filled = 0;
        }
    }

    fn finish(mut self) -> u32 {
        if self.filled > 0 {
            self.h ^= scramble(self.block);
        }
        let mut h = self.h ^ self.len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn murmur(data: &[u8]) -> u32 {
        let mut h = Murmur3::default();
        data.iter().for_each(|&b| h.push(b));
        h.finish()
    }

    #[test]
    fn murmur3_known_values() {
        // Reference values of MurmurHash3_x86_32 with seed 0 (SMHasher).
        assert_eq!(murmur(b""), 0);
        assert_eq!(murmur(b"hello"), 0x248b_fa47);
        assert_eq!(murmur(b"Hello, world!"), 0xc036_3e43);
        assert_eq!(
            murmur(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    fn tcp(host: &str, port: u16) -> Addr {
        Addr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn names_as_the_clients_write_them() {
        assert_eq!(ketama_name(&tcp("10.0.0.1", 11211)), "10.0.0.1");
        assert_eq!(ketama_name(&tcp("10.0.0.1", 11311)), "10.0.0.1:11311");
        assert_eq!(ketama_name(&Addr::Unix("/a.sock".into())), "/a.sock:0");
        assert_eq!(rendezvous_node(&tcp("::1", 11211)), "::1:11211");
        assert_eq!(rendezvous_node(&Addr::Unix("/a.sock".into())), "/a.sock");
    }

    #[test]
    fn continuum_has_160_points_per_server() {
        for n in 2..=12 {
            let servers: Vec<Addr> = (0..n).map(|i| tcp(&format!("h{i}"), 11211)).collect();
            assert_eq!(continuum(&servers).len(), 160 * n, "{n} servers");
        }
    }

    /// One server list of the golden file and the server each key goes to.
    struct Case {
        distribution: Distribution,
        servers: Vec<Addr>,
        expected: Vec<usize>,
    }

    fn parse_server(spec: &str) -> Addr {
        if spec.starts_with('/') {
            return Addr::Unix(spec.into());
        }
        let (host, port) = match spec.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6.split_once(']').expect("[v6]");
                (host, rest.strip_prefix(':'))
            }
            None => match spec.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (spec, None),
            },
        };
        tcp(
            host,
            port.map_or(DEFAULT_PORT, |p| p.parse().expect("a port")),
        )
    }

    /// `tests/data/memcached-routing.tsv`: `#` comments; `list <distribution>
    /// <server,server,...>` lines declare the columns; each `key` line is a
    /// percent-free key (UTF-8) and the server index per list.
    #[test]
    fn golden_vectors_of_the_real_clients() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/memcached-routing.tsv"
        );
        let text = std::fs::read_to_string(path).expect("the golden vectors");
        let mut cases = Vec::new();
        let mut keys = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[0] {
                "list" => cases.push(Case {
                    distribution: Distribution::parse(fields[1]).expect("a distribution"),
                    servers: fields[2].split(',').map(parse_server).collect(),
                    expected: Vec::new(),
                }),
                "key" => {
                    assert_eq!(fields.len(), cases.len() + 2, "{line}");
                    keys += 1;
                    for (case, index) in cases.iter_mut().zip(&fields[2..]) {
                        case.expected.push(index.parse().expect("an index"));
                    }
                }
                other => panic!("unknown line {other:?}"),
            }
        }
        let key_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("key\t"))
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect();
        assert!(
            keys >= 2000 && cases.len() >= 8,
            "{keys} keys, {} lists",
            cases.len()
        );
        for dist in [Distribution::Ketama, Distribution::Rendezvous] {
            assert!(cases.iter().any(|c| c.distribution == dist));
        }
        for case in &cases {
            let router = Router::new(case.distribution, &case.servers);
            let mut used = vec![0usize; case.servers.len()];
            let mismatches: Vec<String> = key_lines
                .iter()
                .zip(&case.expected)
                .filter_map(|(key, &want)| {
                    let got = router.route(key.as_bytes());
                    used[got] += 1;
                    (got != want).then(|| format!("{key:?}: {got} instead of {want}"))
                })
                .take(5)
                .collect();
            assert!(
                mismatches.is_empty(),
                "{:?} over {:?}: {mismatches:?}",
                case.distribution,
                case.servers
            );
            assert!(
                used.iter().all(|&n| n > 0),
                "every server owns keys: {used:?}"
            );
        }
    }
}
