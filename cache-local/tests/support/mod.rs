//! Test support shared with `cargo xtask drill`.

pub mod drill;
