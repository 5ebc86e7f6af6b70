//! The memory backend: the store (compiled once, shared by both flavors) and, in
//! `generic.rs`, its `Backend` impl.

pub(crate) mod store;
