//! underlay's NetworkPolicy core: what the policy engine decides, with
//! nothing that acts.
//!
//! - [`model`]: the domain (pods, namespaces, policies, endpoints, selectors).
//! - [`cluster`]: ClusterNetworkPolicy's tiers, rules and the Nodes its
//!   peers select.
//! - [`index`]: the synchronous state machine fed with all of the above,
//!   keeping peer-set membership up to date incrementally.
//! - [`compile`]: the index into desired chains and sets.
//! - [`eval`]: the same semantics evaluated for one flow.
//!
//! Pure by design: no I/O, no async, no clocks, no Kubernetes client, no
//! processes or netlink. `underlay-policy` converts API objects into the
//! model, feeds the index and writes what the compiler wants into the
//! kernel. `tests/architecture.rs` keeps it that way.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod compile;
pub mod eval;
pub mod index;
pub mod model;

pub use compile::Config;
pub use index::Index;
