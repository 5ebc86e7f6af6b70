//! The IO-free core shared by both flavors: tokens, lease arithmetic, the RedLock
//! wait state machine; for memcached the meta-protocol codec and the polling
//! schedule; for Redis the Lua scripts, commands and reply rules. Nothing here sleeps,
//! reads a clock or touches a socket: time comes in as arguments, so every rule is
//! unit-tested with made-up instants.

pub mod lease;
#[cfg(all(feature = "memcached", any(feature = "blocking", feature = "async")))]
pub mod meta;
#[cfg(all(feature = "memcached", any(feature = "blocking", feature = "async")))]
pub mod poll;
#[cfg(feature = "redis")]
pub mod redis;
pub mod token;
pub mod wait;
