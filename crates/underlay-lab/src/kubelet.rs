//! The kubelet emulator and a simple scheduler.
//!
//! One [`Kubelets`] serves every node of the lab: it registers Node objects
//! as a kubelet does (InternalIP addresses, `Ready`, and
//! `NetworkUnavailable=True` until the route controller clears it), binds
//! unscheduled pods to the least loaded node, and for each pod bound to one of
//! its nodes creates the pod's network namespace, runs the CNI chain through
//! [`cni::Runtime`] exactly as a container runtime does, starts a small server
//! for each declared containerPort, and writes `status.podIPs` and `phase`.
//! When a pod is deleted it stops the servers, runs CNI DEL, removes the
//! namespace and confirms the deletion (grace period 0), as a kubelet must
//! for a bound pod to disappear.
//!
//! Each node also has the kubelet's and the runtime's periodic loops: the
//! runtime's network status is the CNI `STATUS` of the conflist (CNI 1.1, as
//! containerd asks it), and while it fails the node is `Ready=False` with the
//! message kubelet writes (`NetworkReady=false reason:NetworkPluginNotReady`)
//! and no pod sandbox is created on it: such pods wait and start as soon as
//! `STATUS` succeeds. The node's Lease in `kube-node-lease` is renewed and
//! its `Ready` condition posted with a fresh `lastHeartbeatTime`, each on
//! its own period ([`Timings`]).

mod node;
mod pod;

use crate::cni;
use crate::netns::{self, Netns};
use crate::traffic::{self, PortSpec, Protocol};
use crate::vnet::NodeNet;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The namespace kubelets keep their node Leases in.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The Lease duration kubelet writes (`nodeLeaseDurationSeconds`).
pub const NODE_LEASE_DURATION_SECS: i32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API call failed: {0}; is the API server up?")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Cni(#[from] cni::Error),
    #[error("pod {pod}: {reason}")]
    Pod { pod: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node the kubelet emulator runs pods on.
pub struct NodeRuntime {
    pub net: NodeNet,
    pub cni: cni::Runtime,
}

/// How often the kubelet's and the runtime's periodic work runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How often the runtime's network status (CNI `STATUS`) is asked;
    /// kubelet polls the runtime every 5 s.
    pub runtime_status: Duration,
    /// How often the node's Lease is renewed (kubelet: every 10 s, a
    /// quarter of its 40 s duration).
    pub lease_renew: Duration,
    /// How often the node's `Ready` condition is posted with a new
    /// `lastHeartbeatTime` (kubelet's `nodeStatusUpdateFrequency`, 10 s).
    /// A change of readiness is posted at once.
    pub node_status: Duration,
    /// How long a failed pod sync waits before it is retried.
    pub retry: Duration,
    /// How often CNI GC runs on every node.
    pub gc: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            runtime_status: Duration::from_secs(5),
            lease_renew: Duration::from_secs(10),
            node_status: Duration::from_secs(10),
            retry: Duration::from_secs(1),
            gc: Duration::from_secs(20),
        }
    }
}

/// A registered node: its runtime, its network readiness and the pods
/// that wait for it.
struct NodeState {
    runtime: Arc<NodeRuntime>,
    /// Why the runtime's network is not ready (`None`: ready), from the
    /// last CNI `STATUS`.
    network_error: Option<String>,
    /// When `Ready` last changed, for `lastTransitionTime`.
    ready_since: String,
    /// Pods bound here that wait for the network: uid -> (namespace, name).
    waiting: BTreeMap<String, (String, String)>,
    /// The node's periodic loop.
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What the node's `Ready` condition says: kubelet's reason and message.
pub fn ready_condition(network_error: Option<&str>) -> (&'static str, &'static str, String) {
    match network_error {
        None => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_owned(),
        ),
        Some(error) => (
            "False",
            "KubeletNotReady",
            format!(
                "container runtime network not ready: NetworkReady=false \
                 reason:NetworkPluginNotReady message:Network plugin returns error: {error}"
            ),
        ),
    }
}

/// The node's condition of type `type_` (`Ready`, `NetworkUnavailable`, ...).
pub fn node_condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().find(|c| c.type_ == type_)
}

/// A running pod sandbox.
struct Sandbox {
    key: String,
    node: String,
    netns: Netns,
    attachment: cni::Attachment,
    ips: Vec<IpAddr>,
    _servers: traffic::Servers,
}

/// What `lab status` and the report show of a pod.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    pub node: String,
    pub netns: String,
    pub ips: Vec<IpAddr>,
}

/// The kubelet emulator of every lab node, plus the scheduler.
pub struct Kubelets {
    client: kube::Client,
    netns_prefix: String,
    timings: Timings,
    me: Weak<Kubelets>,
    nodes: Mutex<BTreeMap<String, NodeState>>,
    sandboxes: Mutex<BTreeMap<String, Sandbox>>,
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    retry: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    retry_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, String)>>>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A short stable hash (FNV-1a) for names derived from pod identities.
pub fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The ports a pod's containers declare.
pub fn declared_ports(pod: &Pod) -> Vec<PortSpec> {
    let mut ports: Vec<PortSpec> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            Some(PortSpec {
                port: u16::try_from(p.container_port).ok().filter(|p| *p != 0)?,
                protocol,
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

impl Kubelets {
    /// A kubelet emulator with kubelet's default periods.
    pub fn new(client: kube::Client, netns_prefix: &str) -> Arc<Self> {
        Self::with_timings(client, netns_prefix, Timings::default())
    }

    pub fn with_timings(client: kube::Client, netns_prefix: &str, timings: Timings) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new_cyclic(|me| Self {
            client,
            netns_prefix: netns_prefix.to_owned(),
            timings,
            me: me.clone(),
            nodes: Mutex::default(),
            sandboxes: Mutex::default(),
            locks: Mutex::default(),
            retry: tx,
            retry_rx: Mutex::new(Some(rx)),
        })
    }

    /// Watches every pod and keeps sandboxes in line with them until the
    /// task is aborted. Failed sandbox creations are retried after
    /// [`Timings::retry`].
    pub async fn run(self: Arc<Self>) {
        let retry_rx = self.retry_rx.lock().expect("kubelet retry lock").take();
        if let Some(mut rx) = retry_rx {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((ns, name)) = rx.recv().await {
                    me.resync(ns, name, me.timings.retry);
                }
            });
        }
        let gc = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(me.timings.gc).await;
                    me.gc().await;
                }
            })
        };
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut events = watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.reconcile(pod).await });
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        let me = self.clone();
                        tokio::spawn(async move {
                            let lock = me.lock_for(&uid);
                            let _g = lock.lock().await;
                            me.teardown(&uid).await;
                        });
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "kubelet pod watch failed"),
            }
        }
        gc.abort();
    }

    /// Stops every node loop and every sandbox (lab shutdown).
    pub async fn shutdown(&self) {
        for state in self.nodes.lock().expect("kubelet nodes lock").values_mut() {
            if let Some(task) = state.task.take() {
                task.abort();
            }
        }
        let uids: Vec<String> = self
            .sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .keys()
            .cloned()
            .collect();
        for uid in uids {
            self.teardown(&uid).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_conditions_say_what_kubelet_says() {
        assert_eq!(
            ready_condition(None),
            (
                "True",
                "KubeletReady",
                "kubelet is posting ready status".to_owned()
            )
        );
        let (status, reason, message) = ready_condition(Some("agent down"));
        assert_eq!((status, reason), ("False", "KubeletNotReady"));
        assert_eq!(
            message,
            "container runtime network not ready: NetworkReady=false \
             reason:NetworkPluginNotReady message:Network plugin returns error: agent down"
        );
    }

    #[test]
    fn declared_ports_cover_every_container_and_protocol() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "a"}, "spec": {"containers": [
            {"name": "c1", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]},
            {"name": "c2", "ports": [{"containerPort": 9000, "protocol": "SCTP"}, {"containerPort": 80}]}
        ]}}))
        .unwrap();
        let got: Vec<String> = declared_ports(&pod)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["53/UDP", "80/TCP", "9000/SCTP"]);
    }

    #[test]
    fn short_hashes_are_stable_and_distinct() {
        assert_eq!(short_hash("x/a"), short_hash("x/a"));
        assert_ne!(short_hash("x/a"), short_hash("x/b"));
        assert_eq!(short_hash("").len(), 16);
    }
}
