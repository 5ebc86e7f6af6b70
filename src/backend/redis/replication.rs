//! `WAIT numreplicas timeout` after a lock's write (the `wait_replicas` option),
//! compiled once: the command, the reply, and the time it may add to a round trip.
//!
//! `WAIT` counts the replicas that acknowledged the *connection's* last write, so it
//! is sent right after the write, pipelined on the same connection, and that
//! connection is not shared meanwhile (it blocks until the replicas answer or the
//! timeout passes).

// Parts serve only one flavor; a build may have either, both or neither.
#![cfg_attr(not(all(feature = "blocking", feature = "async")), allow(dead_code))]

use std::time::Duration;

use redis::{Cmd, Value};

use super::protocol as r;
use crate::config::Options;
use crate::value::Replication;

/// A backend's `WAIT`: how many replicas, how long.
#[derive(Debug, Clone)]
pub(crate) struct Wait {
    replicas: u8,
    timeout: Duration,
    cmd: Cmd,
}

impl Wait {
    /// The `WAIT` the options ask for, if any.
    pub(crate) fn of(options: &Options) -> Option<Wait> {
        (options.wait_replicas > 0).then(|| {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(options.wait_replicas)
                .arg(r::millis(options.wait_timeout));
            Wait {
                replicas: options.wait_replicas,
                timeout: options.wait_timeout,
                cmd,
            }
        })
    }

    /// The command.
    pub(crate) fn cmd(&self) -> &Cmd {
        &self.cmd
    }

    /// How much longer than one command the write and its `WAIT` may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The replication `WAIT`'s reply tells. A reply that is no count (an error: a
    /// server that refuses `WAIT`) counts as no confirmation.
    pub(crate) fn replication(&self, reply: &Value) -> Replication {
        let acked = match reply {
            Value::Int(n) => *n,
            _ => 0,
        };
        Replication::new(acked, self.replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_command_and_reply() {
        let options = Options {
            wait_replicas: 2,
            wait_timeout: Duration::from_micros(1500),
            ..Options::default()
        };
        let wait = Wait::of(&options).unwrap();
        assert_eq!(
            wait.cmd().get_packed_command(),
            redis::cmd("WAIT").arg(2).arg(2).get_packed_command()
        );
        let r = wait.replication(&Value::Int(1));
        assert_eq!((r.acked(), r.wanted(), r.is_complete()), (1, 2, false));
        assert_eq!(r.to_string(), "replicated to 1 of 2 replicas");
        assert!(wait.replication(&Value::Int(3)).is_complete());
        assert_eq!(wait.replication(&Value::Nil).acked(), 0);
        // One byte: counts past 15 are 15.
        assert_eq!(wait.replication(&Value::Int(99)).acked(), 15);
        assert_eq!(wait.replication(&Value::Int(-1)).acked(), 0);
        assert!(Wait::of(&Options::default()).is_none());
    }
}
