//! The Kubernetes side: the node watcher that feeds CIDR allocation and the
//! reconciler ([`NodeController`], a plain state machine fed with watcher
//! events so it is tested without an API server), the node informer those
//! events come from ([`feed`]), the [`NodeSink`] over the API
//! ([`KubeNodeSink`]), and Lease leader election ([`leader`]).

pub mod feed;
pub mod leader;

use crate::cidrs::{Allocation, CidrAllocator};
use crate::metrics::Metrics;
use crate::nodes::{NodeCidrs, NodeEvent, NodeSink, RouteCondition, SinkError};
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

/// Writes of a node's pod CIDRs that may lose a race for it (409) before
/// the node waits for the retry tick.
const CONFLICT_RETRIES: usize = 3;

/// Asked right before each pod CIDR write: may this instance still
/// allocate? A leader whose lease someone else has written since its last
/// renewal must not: its cache may not hold the new leader's allocations.
#[async_trait]
pub trait AllocationFence: Send + Sync {
    async fn may_allocate(&self) -> bool;
}

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
        conflict: matches!(&e, kube::Error::Api(s) if s.code == 409),
        message: e.to_string(),
    }
}

/// The merge patch setting a node's pod CIDRs; with a resourceVersion, the
/// API server applies it only to that version of the node (409 otherwise).
pub fn pod_cidrs_patch(resource_version: Option<&str>, cidrs: &[Cidr]) -> serde_json::Value {
    let all: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
    let mut patch = json!({"spec": {"podCIDR": all.first(), "podCIDRs": all}});
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    patch
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
    async fn set_pod_cidrs(
        &self,
        node: &str,
        resource_version: Option<&str>,
        cidrs: &[Cidr],
    ) -> Result<(), SinkError> {
        let patch = pod_cidrs_patch(resource_version, cidrs);
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

    async fn read_pod_cidrs(&self, node: &str) -> Result<Option<NodeCidrs>, SinkError> {
        let found = self
            .nodes
            .get_opt(node)
            .await
            .map_err(|e| sink_err(node, e))?;
        Ok(found.map(|n| NodeCidrs {
            pod_cidrs: pod_cidrs_of(&n),
            resource_version: n.metadata.resource_version,
        }))
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
    fence: Option<Arc<dyn AllocationFence>>,
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
            fence: None,
        }
    }

    /// Checks `fence` before every pod CIDR write (the leader elector, when
    /// leader election is on).
    pub fn with_fence(mut self, fence: Arc<dyn AllocationFence>) -> Self {
        self.fence = Some(fence);
        self
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

    /// Allocates `name`'s pod CIDRs and writes them. The write is
    /// conditional on the node's resourceVersion as cached: a node changed
    /// since (409) is re-read, CIDRs another writer gave it are adopted, and
    /// otherwise the write is tried again on the fresh version; after a few
    /// conflicts the node waits for the retry tick.
    async fn assign(&mut self, name: &str) {
        for _ in 0..CONFLICT_RETRIES {
            if !self.try_assign(name).await || self.reread(name).await {
                return;
            }
        }
    }

    /// One allocation and write; `true` when it lost a race for the node.
    async fn try_assign(&mut self, name: &str) -> bool {
        let Some(alloc) = self.alloc.as_mut() else {
            return false;
        };
        let cidrs = match alloc.allocate(name) {
            Allocation::Assign(cidrs) => cidrs,
            Allocation::Exhausted(event) => {
                if let Some(event) = event {
                    warn!(node = %name, "no pod cidr available");
                    self.sink.event(&event).await;
                }
                return false;
            }
        };
        if let Some(fence) = &self.fence
            && !fence.may_allocate().await
        {
            warn!(node = %name, "no longer the leader as last renewed; not writing pod cidrs");
            alloc.undo(name);
            return false;
        }
        let version = self
            .known
            .get(name)
            .and_then(|n| n.metadata.resource_version.clone());
        match self
            .sink
            .set_pod_cidrs(name, version.as_deref(), &cidrs)
            .await
        {
            Ok(()) => {
                info!(node = %name, cidrs = ?cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>(), "allocated pod cidrs");
                let all: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
                self.record_cidrs(name, all, None);
                false
            }
            Err(error) => {
                alloc.undo(name);
                if error.conflict {
                    info!(node = %name, "node changed since read; re-reading it");
                } else {
                    warn!(node = %name, %error, "cannot write pod cidrs; will retry");
                }
                error.conflict
            }
        }
    }

    /// Re-reads a node whose write lost a race. `true` when there is nothing
    /// left to write: it has CIDRs now (adopted) or is gone or unreadable
    /// (the watch and the retry tick take it from there).
    async fn reread(&mut self, name: &str) -> bool {
        let current = match self.sink.read_pod_cidrs(name).await {
            Ok(Some(current)) => current,
            Ok(None) => return true,
            Err(error) => {
                warn!(node = %name, %error, "cannot re-read node; will retry");
                return true;
            }
        };
        let NodeCidrs {
            resource_version,
            pod_cidrs,
        } = current;
        if pod_cidrs.is_empty() {
            self.record_cidrs(name, Vec::new(), resource_version);
            return false;
        }
        info!(node = %name, cidrs = ?pod_cidrs, "node already has pod cidrs; adopting them");
        self.record_cidrs(name, pod_cidrs, resource_version);
        if let Some(node) = self.known.get(name).cloned() {
            self.occupy(&node).await;
        }
        true
    }

    /// Updates the cached node with CIDRs it now has (and the version read,
    /// if any) and hands its routes to the reconciler.
    fn record_cidrs(&mut self, name: &str, cidrs: Vec<String>, version: Option<String>) {
        let Some(node) = self.known.get_mut(name) else {
            return;
        };
        if version.is_some() {
            node.metadata.resource_version = version;
        }
        if cidrs.is_empty() {
            return;
        }
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = cidrs.first().cloned();
        spec.pod_cidrs = Some(cidrs);
        self.input.upsert(node_routes(node));
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
