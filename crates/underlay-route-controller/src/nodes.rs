//! The controller's writes to Nodes — pod CIDRs, the `NetworkUnavailable`
//! condition and events — behind the narrow [`NodeSink`] port, with
//! [`fake::RecordingSink`], a recording fake for tests and benchmarks.

pub mod fake;

use async_trait::async_trait;
use underlay_ipam::Cidr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub node: String,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

impl NodeEvent {
    pub fn warning(node: &str, reason: &str, message: impl Into<String>) -> NodeEvent {
        NodeEvent {
            node: node.to_string(),
            type_: EventType::Warning,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn normal(node: &str, reason: &str, message: impl Into<String>) -> NodeEvent {
        NodeEvent {
            node: node.to_string(),
            type_: EventType::Normal,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The node's `NetworkUnavailable` condition as the controller sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteCondition {
    /// `False`, reason `RouteCreated`.
    Created,
    /// `True`, reason `NoRouteCreated`.
    NotCreated { message: String },
}

/// A failed write to the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot update node {node}: {message}")]
pub struct SinkError {
    pub node: String,
    pub message: String,
    /// 409: the node changed since the version the write was conditional
    /// on; re-read it before deciding again.
    pub conflict: bool,
}

/// A node's pod CIDRs as the API holds them now, and the version they are of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeCidrs {
    pub resource_version: Option<String>,
    /// `spec.podCIDRs` as written (unparsed).
    pub pod_cidrs: Vec<String>,
}

/// Writes to Nodes.
#[async_trait]
pub trait NodeSink: Send + Sync {
    /// Sets `spec.podCIDR` and `spec.podCIDRs`, only if the node is still at
    /// `resource_version` (when given): a node changed since it was read
    /// fails with [`SinkError::conflict`] instead of being written over.
    async fn set_pod_cidrs(
        &self,
        node: &str,
        resource_version: Option<&str>,
        cidrs: &[Cidr],
    ) -> Result<(), SinkError>;
    /// Reads the node's pod CIDRs afresh (not from a cache); `None` when the
    /// node is gone. What a write that lost a race re-reads.
    async fn read_pod_cidrs(&self, node: &str) -> Result<Option<NodeCidrs>, SinkError>;
    /// Sets the `NetworkUnavailable` condition, leaving other conditions alone.
    async fn set_route_condition(
        &self,
        node: &str,
        condition: &RouteCondition,
    ) -> Result<(), SinkError>;
    /// Records an event; best effort, failures are logged by the implementation.
    async fn event(&self, event: &NodeEvent);
}
