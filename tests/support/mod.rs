//! Test fixtures: real servers started per test, stopped on drop.

#[cfg(feature = "redis")]
pub mod redis;
