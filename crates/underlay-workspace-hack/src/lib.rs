//! Nothing: this crate exists for its dependencies (see its Cargo.toml and
//! `cargo xtask workspace-hack`).
