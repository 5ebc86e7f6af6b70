//! The IO-free core shared by both flavors: tokens, lease arithmetic, the RedLock
//! wait state machine, the polling schedule and the watchdog's renewal schedule. Each
//! backend's own protocol lives in its folder under `backend/`. Nothing here sleeps,
//! reads a clock or touches a socket: time comes in as arguments, so every rule is
//! unit-tested with made-up instants.

pub mod fork;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod handoff;
pub mod lease;
#[cfg(all(feature = "memcached", any(feature = "blocking", feature = "async")))]
pub mod poll;
pub mod token;
pub mod wait;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod waiters;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod watchdog;
