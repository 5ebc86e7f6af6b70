//! The IO-free core shared by both flavors: tokens, lease arithmetic and the RedLock
//! wait state machine. Nothing here sleeps, reads a clock or touches a socket: time
//! comes in as arguments, so every rule is unit-tested with made-up instants.

pub mod lease;
#[cfg(feature = "redis")]
pub mod redis;
pub mod token;
pub mod wait;
