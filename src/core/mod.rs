//! The IO-free core shared by both flavors: tokens, lease arithmetic and the RedLock
//! wait state machine. Nothing here sleeps, reads a clock or touches a socket: time
//! comes in as arguments, so every rule is unit-tested with made-up instants.

pub mod lease;
pub mod token;
pub mod wait;
