//! What a test's server counted of the lock commands ([`Counted`]): claims, releases
//! and all commands, read from the server itself (Redis `INFO commandstats`,
//! memcached `stats`), so that a test can bound the commands a workload sent.

/// The server's counters of lock commands so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Claims sent (Redis `SET`, memcached `ms`: `cmd_set`).
    pub claims: u64,
    /// Releases that removed the lock (Redis `EVALSHA`, memcached `delete_hits`).
    pub releases: u64,
    /// Every command of the lock machinery (reads, polls, subscriptions included).
    pub commands: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;

    fn sub(self, before: Counts) -> Counts {
        Counts {
            claims: self.claims - before.claims,
            releases: self.releases - before.releases,
            commands: self.commands - before.commands,
        }
    }
}

/// A test's backend server, whose counters can be read; `None` for the memory store.
pub trait Counted: Send + Sync {
    fn counts(&self) -> Option<Counts>;
}

impl Counted for () {
    fn counts(&self) -> Option<Counts> {
        None
    }
}

#[cfg(feature = "redis")]
impl Counted for super::redis::RedisServer {
    fn counts(&self) -> Option<Counts> {
        let stats = self.admin(&["INFO", "commandstats"]);
        let mut counts = Counts::default();
        for line in stats.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(":calls="))
            else {
                continue;
            };
            let calls: u64 = rest
                .split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match name {
                "set" => counts.claims += calls,
                "evalsha" => counts.releases += calls,
                _ => {}
            }
            // Not the lock's: the fixtures' and sentinels' questions, and replication
            // (a replica's `REPLCONF ACK`s, dozens while a `WAIT` blocks).
            let admin = [
                "info", "config", "cluster", "client", "command", "hello", "ping", "replconf",
                "psync", "sync", "role",
            ];
            if !admin.iter().any(|a| name.starts_with(a)) {
                counts.commands += calls;
            }
        }
        Some(counts)
    }
}

/// The master's counters (a replica's would count the replicated writes again).
#[cfg(feature = "redis")]
impl Counted for super::redis_sentinel::RedisSentinel {
    fn counts(&self) -> Option<Counts> {
        self.nodes[self.master()?].counts()
    }
}

#[cfg(feature = "redis")]
impl Counted for super::redis_cluster::RedisCluster {
    fn counts(&self) -> Option<Counts> {
        let mut sum = Counts::default();
        for node in &self.nodes {
            let c = node.counts()?;
            sum.claims += c.claims;
            sum.releases += c.releases;
            sum.commands += c.commands;
        }
        Some(sum)
    }
}

#[cfg(feature = "memcached")]
impl Counted for super::memcached::MemcachedServer {
    fn counts(&self) -> Option<Counts> {
        let stat = |name| self.stat(name);
        let commands = [
            "cmd_get",
            "cmd_set",
            "cmd_touch",
            "delete_hits",
            "delete_misses",
        ];
        let incr = ["incr_hits", "incr_misses", "decr_hits", "decr_misses"];
        Some(Counts {
            claims: stat("cmd_set"),
            releases: stat("delete_hits"),
            commands: commands.iter().chain(&incr).map(|n| stat(n)).sum(),
        })
    }
}

#[cfg(feature = "memcached")]
impl Counted for super::memcached::MemcachedPool {
    fn counts(&self) -> Option<Counts> {
        let mut sum = Counts::default();
        for server in &self.servers {
            let c = server.counts()?;
            sum.claims += c.claims;
            sum.releases += c.releases;
            sum.commands += c.commands;
        }
        Some(sum)
    }
}
