//! Generated tonic/prost code for `proto/underlay/v1/*.proto`.
//!
//! The code under `src/gen/` is committed so that a build needs no `protoc`;
//! `tests/generated_is_fresh.rs` regenerates it and fails when it is stale
//! (run it with `UNDERLAY_REGENERATE=1` to rewrite the committed files).

/// underlay.v1: the agent API the CNI plugin calls.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    include!("gen/underlay.v1.rs");
}
