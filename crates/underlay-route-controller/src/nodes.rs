//! The controller's writes to Nodes — pod CIDRs, the `NetworkUnavailable`
//! condition and events — behind the narrow [`NodeSink`] port, with a
//! recording fake for tests and benchmarks.

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
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

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    PodCidrs(String, Vec<Cidr>),
    Condition(String, RouteCondition),
    Event(NodeEvent),
}

/// A [`NodeSink`] that records every write; cloning shares the record.
#[derive(Debug, Clone, Default)]
pub struct RecordingSink {
    log: Arc<Mutex<Vec<Recorded>>>,
    fail_pod_cidrs: Arc<Mutex<usize>>,
    fail_conditions: Arc<Mutex<usize>>,
}

impl RecordingSink {
    pub fn records(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn events(&self) -> Vec<NodeEvent> {
        self.records()
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The last condition set on `node`.
    pub fn condition(&self, node: &str) -> Option<RouteCondition> {
        self.records().into_iter().rev().find_map(|r| match r {
            Recorded::Condition(n, c) if n == node => Some(c),
            _ => None,
        })
    }

    /// The next `n` pod CIDR writes fail.
    pub fn fail_pod_cidrs(&self, n: usize) {
        *self
            .fail_pod_cidrs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = n;
    }

    /// The next `n` condition writes fail.
    pub fn fail_conditions(&self, n: usize) {
        *self
            .fail_conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = n;
    }

    fn push(&self, r: Recorded) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
}

/// Consumes one injected failure from `counter`, if any are left.
fn take_failure(counter: &Mutex<usize>, node: &str) -> Result<(), SinkError> {
    let mut fail = counter.lock().unwrap_or_else(|e| e.into_inner());
    if *fail > 0 {
        *fail -= 1;
        return Err(SinkError {
            node: node.to_string(),
            message: "injected failure".to_string(),
            conflict: false,
        });
    }
    Ok(())
}

#[async_trait]
impl NodeSink for RecordingSink {
    async fn set_pod_cidrs(
        &self,
        node: &str,
        _resource_version: Option<&str>,
        cidrs: &[Cidr],
    ) -> Result<(), SinkError> {
        take_failure(&self.fail_pod_cidrs, node)?;
        self.push(Recorded::PodCidrs(node.to_string(), cidrs.to_vec()));
        Ok(())
    }

    /// The CIDRs last written to the node, if any.
    async fn read_pod_cidrs(&self, node: &str) -> Result<Option<NodeCidrs>, SinkError> {
        Ok(self.records().into_iter().rev().find_map(|r| match r {
            Recorded::PodCidrs(n, cidrs) if n == node => Some(NodeCidrs {
                resource_version: None,
                pod_cidrs: cidrs.iter().map(Cidr::to_string).collect(),
            }),
            _ => None,
        }))
    }

    async fn set_route_condition(
        &self,
        node: &str,
        condition: &RouteCondition,
    ) -> Result<(), SinkError> {
        take_failure(&self.fail_conditions, node)?;
        self.push(Recorded::Condition(node.to_string(), condition.clone()));
        Ok(())
    }

    async fn event(&self, event: &NodeEvent) {
        self.push(Recorded::Event(event.clone()));
    }
}
