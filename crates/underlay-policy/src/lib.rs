//! Kubernetes NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2) for the pods of one node, enforced
//! in the filter table with iptables and ipsets, for both IP families.
//!
//! The decisions live in `underlay-policy-core` (re-exported here as
//! [`model`], [`cluster`], [`index`], [`compile`] and [`eval`]), which does no I/O; this
//! crate is everything around them:
//! - [`convert`]: Kubernetes API objects into the domain, with validation.
//! - [`dataplane`]: the side-effect boundary (real tools, recording fake).
//! - [`ctnetlink`]: conntrack deletion over netlink, for the real dataplane.
//! - [`nflog`]: the agent's own reader of the deny rules' NFLOG group.
//! - [`denials`]: denied packets aggregated into records, logged, counted,
//!   kept and followed.
//! - [`tool`]: running one external tool (concurrent I/O, deadline, reaped).
//! - [`engine`]: diffs desired against programmed and writes the difference.
//! - [`agent`]: the async runtime around the engine: kube watchers, attach
//!   and detach of endpoints, periodic repair.
//! - [`describe`]: policy decisions in words, for operators.
//! - [`trace`]: one flow's verdict from the model and from the kernel
//!   ([`kernel_trace`] walks a packet through the saved rules), compared.
//! - [`status`]: the conditions the agent writes on ClusterNetworkPolicies.
//! - [`metrics`]: Prometheus metrics.
//! - [`args`]: the command-line flags the agent binary flattens in.
//!
//! This crate is a library used by the agent binary; it never depends on it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod args;
pub mod convert;
pub mod ctnetlink;
pub mod dataplane;
pub mod denials;
pub mod describe;
pub mod engine;
pub mod ipsetnl;
pub mod kernel_trace;
pub mod metrics;
pub mod nflog;
pub mod nl;
pub mod rtnl;
pub mod status;
pub mod tool;
pub mod trace;

pub use underlay_policy_core::{cluster, compile, eval, index, model};

pub use args::PolicyArgs;
pub use compile::Config;
pub use dataplane::{CommandDataplane, Dataplane, FakeDataplane};
pub use engine::{Engine, Status, SyncReport};
pub use index::Index;
