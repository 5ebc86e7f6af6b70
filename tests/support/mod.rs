//! Test fixtures: real servers started per test, stopped on drop.
