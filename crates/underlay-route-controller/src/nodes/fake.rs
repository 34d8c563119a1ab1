//! A recording [`NodeSink`] for tests and benchmarks: it records every
//! write and fails the next ones on demand.

use super::{NodeCidrs, NodeEvent, NodeSink, RouteCondition, SinkError};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use underlay_ipam::Cidr;

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
