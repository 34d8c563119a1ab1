//! The Kubernetes side: the node watcher that feeds CIDR allocation and the
//! reconciler ([`NodeController`], a plain state machine fed with watcher
//! events so it is tested without an API server), the node informer those
//! events come from ([`feed`]), the [`NodeSink`] over the API
//! ([`KubeNodeSink`]), and Lease leader election ([`leader`]).

pub mod feed;
pub mod leader;

use crate::cidrs::{Allocation, CidrAllocator};
use crate::metrics::Metrics;
use crate::nodes::{NodeEvent, NodeSink, RouteCondition, SinkError};
use crate::plan::NodeRoutes;
use crate::reconciler::RouteInput;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use underlay_ipam::Cidr;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "underlay-route-controller";

/// [`NodeSink`] over the Kubernetes API.
#[derive(Clone)]
pub struct KubeNodeSink {
    nodes: Api<Node>,
    recorder: Recorder,
}

impl KubeNodeSink {
    pub fn new(client: kube::Client, instance: Option<String>) -> KubeNodeSink {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        KubeNodeSink {
            nodes: Api::all(client.clone()),
            recorder: Recorder::new(client, reporter),
        }
    }
}

fn node_ref(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Node".to_string()),
        name: Some(node.to_string()),
        // Node events are keyed by name, as the kubelet does.
        uid: Some(node.to_string()),
        ..ObjectReference::default()
    }
}

fn sink_err(node: &str, e: kube::Error) -> SinkError {
    SinkError {
        node: node.to_string(),
        message: e.to_string(),
    }
}

/// The strategic merge patch of the `NetworkUnavailable` condition; it merges
/// by condition `type`, so the kubelet's conditions are untouched.
pub fn condition_patch(condition: &RouteCondition, now: &str) -> serde_json::Value {
    let (status, reason, message) = match condition {
        RouteCondition::Created => (
            "False",
            "RouteCreated",
            "underlay created the node's routes".to_string(),
        ),
        RouteCondition::NotCreated { message } => ("True", "NoRouteCreated", message.clone()),
    };
    json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }]}})
}

#[async_trait]
impl NodeSink for KubeNodeSink {
    async fn set_pod_cidrs(&self, node: &str, cidrs: &[Cidr]) -> Result<(), SinkError> {
        let all: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
        let patch = json!({"spec": {"podCIDR": all.first(), "podCIDRs": all}});
        self.nodes
            .patch(
                node,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .map_err(|e| sink_err(node, e))
    }

    async fn set_route_condition(
        &self,
        node: &str,
        condition: &RouteCondition,
    ) -> Result<(), SinkError> {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = condition_patch(condition, &now);
        self.nodes
            .patch_status(
                node,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                },
                &Patch::Strategic(&patch),
            )
            .await
            .map(|_| ())
            .map_err(|e| sink_err(node, e))
    }

    async fn event(&self, event: &NodeEvent) {
        let ev = KubeEvent {
            type_: match event.type_ {
                crate::nodes::EventType::Normal => KubeEventType::Normal,
                crate::nodes::EventType::Warning => KubeEventType::Warning,
            },
            reason: event.reason.clone(),
            note: Some(event.message.clone()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&ev, &node_ref(&event.node)).await {
            warn!(node = %event.node, reason = %event.reason, %error, "cannot record node event");
        }
    }
}

/// The node's `spec.podCIDRs` (or `spec.podCIDR`), as written.
pub fn pod_cidrs_of(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(v) if !v.is_empty() => v,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    }
}

/// What the reconciler needs of a node: its valid pod CIDRs and InternalIPs.
pub fn node_routes(node: &Node) -> NodeRoutes {
    NodeRoutes {
        name: node.metadata.name.clone().unwrap_or_default(),
        pod_cidrs: pod_cidrs_of(node)
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect(),
        internal_ips: node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .filter_map(|a| a.address.parse::<IpAddr>().ok())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Turns node watch events into CIDR allocation and reconciler input.
pub struct NodeController<S> {
    sink: S,
    input: RouteInput,
    alloc: Option<CidrAllocator>,
    metrics: Option<Arc<Metrics>>,
    buffer: Vec<Node>,
    known: BTreeMap<String, Node>,
    /// (node, raw cidr) already reported as unusable, so a node's every
    /// update does not repeat the event.
    reported: HashSet<(String, String)>,
    /// After each complete list has been applied (CIDRs occupied and
    /// allocated): the route input's generation at that point.
    listed: watch::Sender<Option<u64>>,
    retry_interval: Duration,
}

impl<S: NodeSink> NodeController<S> {
    /// `alloc` is `None` unless `--allocate-node-cidrs`.
    pub fn new(
        sink: S,
        input: RouteInput,
        alloc: Option<CidrAllocator>,
        metrics: Option<Arc<Metrics>>,
    ) -> NodeController<S> {
        NodeController {
            sink,
            input,
            alloc,
            metrics,
            buffer: Vec::new(),
            known: BTreeMap::new(),
            reported: HashSet::new(),
            listed: watch::channel(None).0,
            retry_interval: Duration::from_secs(10),
        }
    }

    /// How often nodes waiting for a CIDR (exhaustion, a failed write) are
    /// retried; default 10 s.
    pub fn with_retry_interval(mut self, every: Duration) -> Self {
        self.retry_interval = every;
        self
    }

    /// `Some(generation)` once a complete list of Nodes has been applied:
    /// existing CIDRs occupied, missing ones allocated and written (or
    /// queued for retry), the route input updated to `generation`. A route
    /// pass covering that generation completes the first full sync.
    pub fn listed(&self) -> watch::Receiver<Option<u64>> {
        self.listed.subscribe()
    }

    pub fn allocator(&self) -> Option<&CidrAllocator> {
        self.alloc.as_ref()
    }

    /// Applies one watcher event.
    pub async fn apply(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.buffer.clear(),
            watcher::Event::InitApply(node) => self.buffer.push(node),
            watcher::Event::InitDone => {
                let nodes = std::mem::take(&mut self.buffer);
                self.relisted(nodes).await;
            }
            watcher::Event::Apply(node) => {
                self.occupy(&node).await;
                self.input.upsert(node_routes(&node));
                let name = node.metadata.name.clone().unwrap_or_default();
                let needs = pod_cidrs_of(&node).is_empty();
                self.known.insert(name.clone(), node);
                if needs {
                    self.assign(&name).await;
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.forget(&name).await;
            }
        }
        self.publish_usage();
    }

    /// Retries nodes waiting for CIDRs (after a failed write).
    pub async fn retry_waiting(&mut self) {
        let waiting = self
            .alloc
            .as_ref()
            .map(CidrAllocator::waiting)
            .unwrap_or_default();
        for name in waiting {
            if self.known.contains_key(&name) {
                self.assign(&name).await;
            }
        }
        self.publish_usage();
    }

    async fn relisted(&mut self, nodes: Vec<Node>) {
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.forget(&n).await;
        }
        // Every existing CIDR is occupied before anything is allocated, so a
        // restart never hands out a CIDR a node already has.
        for node in &nodes {
            self.occupy(node).await;
        }
        self.input
            .replace_all(nodes.iter().map(node_routes).collect());
        let mut need = Vec::new();
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            if pod_cidrs_of(&node).is_empty() {
                need.push(name.clone());
            }
            self.known.insert(name, node);
        }
        need.sort();
        for name in need {
            self.assign(&name).await;
        }
        let generation = self.input.generation();
        self.listed.send_replace(Some(generation));
    }

    async fn occupy(&mut self, node: &Node) {
        let Some(alloc) = self.alloc.as_mut() else {
            return;
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let raw = pod_cidrs_of(node);
        if raw.is_empty() {
            return;
        }
        let (_, events) = alloc.occupy(&name, &raw);
        for event in events {
            let key = (name.clone(), event.message.clone());
            if self.reported.insert(key) {
                warn!(node = %name, reason = %event.reason, "pod cidr not usable");
                self.sink.event(&event).await;
            }
        }
    }

    async fn assign(&mut self, name: &str) {
        let Some(alloc) = self.alloc.as_mut() else {
            return;
        };
        match alloc.allocate(name) {
            Allocation::Assign(cidrs) => match self.sink.set_pod_cidrs(name, &cidrs).await {
                Ok(()) => {
                    info!(node = %name, cidrs = ?cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>(), "allocated pod cidrs");
                    if let Some(node) = self.known.get_mut(name) {
                        let spec = node.spec.get_or_insert_with(Default::default);
                        let all: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
                        spec.pod_cidr = all.first().cloned();
                        spec.pod_cidrs = Some(all);
                        self.input.upsert(node_routes(node));
                    }
                }
                Err(error) => {
                    warn!(node = %name, %error, "cannot write pod cidrs; will retry");
                    alloc.undo(name);
                }
            },
            Allocation::Exhausted(event) => {
                if let Some(event) = event {
                    warn!(node = %name, "no pod cidr available");
                    self.sink.event(&event).await;
                }
            }
        }
    }

    async fn forget(&mut self, name: &str) {
        self.known.remove(name);
        self.input.remove(name);
        self.reported.retain(|(n, _)| n != name);
        let freed = self.alloc.as_mut().is_some_and(|a| a.release(name));
        if freed {
            info!(node = %name, "released pod cidrs");
            self.retry_waiting().await;
        }
    }

    fn publish_usage(&self) {
        if let (Some(m), Some(a)) = (&self.metrics, &self.alloc) {
            for (family, used, capacity) in a.usage() {
                m.cidr_pool(&family.to_string(), used, capacity);
            }
        }
    }

    /// Applies events from the node informer (see [`feed::NodeFeed`]) until
    /// it stops; retries waiting nodes periodically.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<watcher::Event<Node>>) {
        let mut tick = tokio::time::interval(self.retry_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.apply(event).await,
                    None => return,
                },
                _ = tick.tick() => self.retry_waiting().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_patch_merges_by_type() {
        let p = condition_patch(&RouteCondition::Created, "2026-01-01T00:00:00Z");
        let c = &p["status"]["conditions"][0];
        assert_eq!(c["type"], "NetworkUnavailable");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "RouteCreated");
        let p = condition_patch(
            &RouteCondition::NotCreated {
                message: "m".into(),
            },
            "t",
        );
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        assert_eq!(p["status"]["conditions"][0]["reason"], "NoRouteCreated");
    }
}
