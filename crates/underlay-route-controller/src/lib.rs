//! underlay's route controller: hands every Node a pod CIDR and keeps the
//! Azure route table holding exactly one route per node pod CIDR
//! (`VirtualAppliance`, next hop the node's InternalIP), so pods reach each
//! other across nodes without an overlay.
//!
//! Layout (ports and adapters):
//! - [`naming`], [`plan`], [`cidrs`]: pure decisions, no I/O;
//! - [`reconciler`]: the batching, retrying route-table loop, driven by a
//!   [`reconciler::RouteInput`] and talking to Azure only through
//!   [`azure::RouteTable`] and to Nodes only through [`nodes::NodeSink`];
//! - [`azure`]: the Azure port and its adapters (ARM, recording fake), the
//!   cloud config and credentials;
//! - [`k8s`]: the Kubernetes adapters (node watcher, node writes, events,
//!   Lease leader election);
//! - [`runtime`]: command-line arguments and wiring; [`http`]: metrics and
//!   health endpoints.

#![forbid(unsafe_code)]

pub mod azure;
pub mod cidrs;
pub mod http;
pub mod k8s;
pub mod metrics;
pub mod naming;
pub mod nodes;
pub mod plan;
pub mod reconciler;
pub mod runtime;

pub use runtime::{Args, run};
