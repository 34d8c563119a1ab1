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

use crate::apiserver::meta;
use crate::cni;
use crate::netns::{self, Netns};
use crate::traffic::{self, PortSpec, Protocol};
use crate::vnet::NodeNet;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
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

    /// Registers the Node object (InternalIPs, `Ready` from the runtime's
    /// network status, `NetworkUnavailable=True`), starts the node's
    /// periodic loop (runtime status, Lease, node status) and starts running
    /// pods bound to it. A Node that already exists keeps its other
    /// conditions, as when a kubelet restarts.
    pub async fn add_node(&self, node: NodeRuntime) -> Result<()> {
        let name = node.net.name.clone();
        let runtime = Arc::new(node);
        // Ask the runtime first, so that the node's first Ready is the truth.
        let network_error = network_error(&runtime).await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut addresses: Vec<serde_json::Value> = runtime
            .net
            .addresses()
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": name}));
        let object: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": "lab-1"}},
            "spec": {"providerID": format!("azure:///subscriptions/lab/resourceGroups/lab/providers/Microsoft.Compute/virtualMachines/{name}")}
        }))
        .map_err(|e| Error::Pod {
            pod: name.clone(),
            reason: e.to_string(),
        })?;
        let created = match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 409 => false,
            Err(e) => return Err(e.into()),
        };
        let now = meta::now();
        if created {
            let status = json!({"status": {
                "addresses": addresses,
                "conditions": [
                    {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated",
                     "message": "Node created without a route", "lastHeartbeatTime": now, "lastTransitionTime": now}
                ],
                "nodeInfo": {"kubeletVersion": "v1.34.0-underlay-lab", "operatingSystem": "linux",
                    "architecture": "amd64", "containerRuntimeVersion": "underlay-lab://1",
                    "kernelVersion": "", "osImage": "underlay lab", "kubeProxyVersion": "",
                    "machineID": "", "systemUUID": "", "bootID": ""}
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
        let ready = network_error.is_none();
        let task = tokio::spawn(node_loop(
            self.me.clone(),
            name.clone(),
            self.timings.clone(),
        ));
        let old = self.nodes.lock().expect("kubelet nodes lock").insert(
            name.clone(),
            NodeState {
                runtime,
                network_error,
                ready_since: now,
                waiting: BTreeMap::new(),
                task: Some(task),
            },
        );
        if let Some(task) = old.and_then(|o| o.task) {
            task.abort();
        }
        self.post_node_status(&name).await?;
        tracing::info!(node = %name, created, ready, "kubelet registered node");
        Ok(())
    }

    /// Whether the runtime's network on `node` is ready (`Ok`) or why not
    /// (`Err`), as of the last CNI `STATUS`; `None` for an unknown node.
    pub fn network_status(&self, node: &str) -> Option<Result<(), String>> {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| n.network_error.clone().map_or(Ok(()), Err))
    }

    /// The pods (`namespace/name`) bound to `node` that wait for its
    /// network before their sandbox is created.
    pub fn waiting_pods(&self, node: &str) -> Vec<String> {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| {
                n.waiting
                    .values()
                    .map(|(ns, name)| format!("{ns}/{name}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asks the runtime of `node` for its network status (CNI `STATUS`) and
    /// records it; a change is posted to the Node at once, and when the
    /// network becomes ready the pods waiting for it are started.
    pub async fn check_runtime(&self, node: &str) {
        let Some(runtime) = self.runtime(node) else {
            return;
        };
        let error = network_error(&runtime).await;
        let released = {
            let mut nodes = self.nodes.lock().expect("kubelet nodes lock");
            let Some(state) = nodes.get_mut(node) else {
                return;
            };
            if state.network_error == error {
                return;
            }
            if state.network_error.is_none() != error.is_none() {
                state.ready_since = meta::now();
            }
            state.network_error = error.clone();
            if error.is_none() {
                std::mem::take(&mut state.waiting)
            } else {
                BTreeMap::new()
            }
        };
        match &error {
            None => tracing::info!(%node, waiting = released.len(), "runtime network ready"),
            Some(error) => tracing::warn!(%node, %error, "runtime network not ready"),
        }
        if let Err(error) = self.post_node_status(node).await {
            tracing::warn!(%node, %error, "kubelet failed to post node status");
        }
        for (ns, name) in released.into_values() {
            self.resync(ns, name, Duration::ZERO);
        }
    }

    /// Posts the node's `Ready` condition with a new `lastHeartbeatTime`
    /// (a strategic merge by condition type: the route controller's
    /// `NetworkUnavailable` is left alone).
    pub async fn post_node_status(&self, node: &str) -> Result<()> {
        let Some((error, since)) = self
            .nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| (n.network_error.clone(), n.ready_since.clone()))
        else {
            return Ok(());
        };
        let (status, reason, message) = ready_condition(error.as_deref());
        let patch = json!({"status": {"conditions": [{
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": meta::now(), "lastTransitionTime": since}]}});
        Api::<Node>::all(self.client.clone())
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        Ok(())
    }

    /// Renews the node's Lease in `kube-node-lease` (creates it, owned by
    /// the Node, the first time).
    pub async fn renew_lease(&self, node: &str) -> Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        let spec = json!({"holderIdentity": node,
            "leaseDurationSeconds": NODE_LEASE_DURATION_SECS,
            "renewTime": meta::now_micro()});
        match api
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let owner = Api::<Node>::all(self.client.clone())
            .get_opt(node)
            .await?
            .and_then(|n| n.metadata.uid)
            .map(|uid| vec![json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid})])
            .unwrap_or_default();
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE, "ownerReferences": owner},
            "spec": spec}))
        .map_err(|e| Error::Pod {
            pod: node.to_owned(),
            reason: format!("invalid lease: {e}"),
        })?;
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            // Another writer created it between our calls: renewed next time.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn runtime(&self, node: &str) -> Option<Arc<NodeRuntime>> {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| n.runtime.clone())
    }

    /// Syncs pod `ns/name` again after `delay`, from a fresh copy.
    fn resync(&self, ns: String, name: String, delay: Duration) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let api: Api<Pod> = Api::namespaced(me.client.clone(), &ns);
            if let Ok(Some(pod)) = api.get_opt(&name).await {
                me.reconcile(pod).await;
            }
        });
    }

    /// Stops every pod of the node (CNI DEL included) and deletes the Node
    /// object, as when a VM is removed from the scale set.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        let uids: Vec<String> = self
            .sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .iter()
            .filter(|(_, s)| s.node == name)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in uids {
            self.teardown(&uid).await;
        }
        let state = self.nodes.lock().expect("kubelet nodes lock").remove(name);
        if let Some(task) = state.and_then(|s| s.task) {
            task.abort();
        }
        // The garbage collector deletes the Lease with its owner, the Node.
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NODE_LEASE_NAMESPACE);
        match leases.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        // Pods bound to the node go away with it (the pod GC controller's job).
        let pods: Api<Pod> = Api::all(self.client.clone());
        for pod in pods.list(&Default::default()).await?.items {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name) {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let _ = api
                    .delete(
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        &DeleteParams::default().grace_period(0),
                    )
                    .await;
            }
        }
        Ok(())
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The running pods.
    pub fn pods(&self) -> Vec<PodInfo> {
        let mut out: Vec<PodInfo> = self
            .sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .values()
            .map(|s| PodInfo {
                key: s.key.clone(),
                node: s.node.clone(),
                netns: s.netns.name().to_owned(),
                ips: s.ips.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
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

    fn lock_for(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("kubelet locks lock")
            .entry(uid.to_owned())
            .or_default()
            .clone()
    }

    /// Brings one pod's sandbox in line with the pod object.
    pub async fn reconcile(&self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let lock = self.lock_for(&uid);
        let _g = lock.lock().await;
        let key = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.teardown(&uid).await;
            if self.has_node(&node) {
                self.confirm_deletion(&pod).await;
            }
            return;
        }
        if node.is_empty() {
            if let Err(error) = self.schedule(&pod).await {
                tracing::warn!(pod = %key, %error, "scheduler failed to bind pod");
                self.retry_later(&pod);
            }
            return;
        }
        if !self.has_node(&node) {
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        let existing = self
            .sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .get(&uid)
            .map(|s| s.ips.clone());
        if existing.is_none()
            && let Some((error, first)) = self.wait_for_network(&node, &pod, &uid)
        {
            // Kubelet syncs no pod that needs the pod network while the
            // runtime's network is not ready; the pod starts when it is.
            if first {
                tracing::info!(pod = %key, %node, %error, "pod waits for the runtime network");
                self.record_network_not_ready(&pod, &node, &error).await;
            }
            return;
        }
        let ips = match existing {
            Some(ips) => ips,
            None => match self.start_sandbox(&pod, &uid, &node).await {
                Ok(ips) => ips,
                Err(error) => {
                    tracing::warn!(pod = %key, %node, %error, "kubelet failed to create pod sandbox");
                    self.report_failure(&pod, &error.to_string()).await;
                    self.retry_later(&pod);
                    return;
                }
            },
        };
        let reported: Vec<String> = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        let want: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        if (phase != Some("Running") || reported != want)
            && let Err(error) = self.report_running(&pod, &node, &ips).await
        {
            tracing::warn!(pod = %key, %error, "kubelet failed to write pod status");
            self.retry_later(&pod);
        }
    }

    /// `Some((why, first time))` when the network of `node` is not ready:
    /// the pod is then recorded as waiting for it (under the same lock the
    /// status check releases waiting pods with, so none is missed).
    fn wait_for_network(&self, node: &str, pod: &Pod, uid: &str) -> Option<(String, bool)> {
        let mut nodes = self.nodes.lock().expect("kubelet nodes lock");
        let state = nodes.get_mut(node)?;
        let error = state.network_error.clone()?;
        let first = state
            .waiting
            .insert(
                uid.to_owned(),
                (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                ),
            )
            .is_none();
        Some((error, first))
    }

    /// The `NetworkNotReady` warning event kubelet records on such a pod.
    async fn record_network_not_ready(&self, pod: &Pod, node: &str, error: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = meta::now();
        let (_, _, message) = ready_condition(Some(error));
        let event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
                               "uid": pod.metadata.uid},
            "reason": "NetworkNotReady", "message": format!("network is not ready: {message}"),
            "type": "Warning", "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1});
        let created = match serde_json::from_value::<Event>(event) {
            Ok(event) => Api::<Event>::namespaced(self.client.clone(), &ns)
                .create(&PostParams::default(), &event)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = created {
            tracing::debug!(pod = %pod_key(pod), %error, "kubelet failed to record an event");
        }
    }

    fn has_node(&self, node: &str) -> bool {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .contains_key(node)
    }

    fn retry_later(&self, pod: &Pod) {
        let _ = self.retry.send((
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        ));
    }

    async fn schedule(&self, pod: &Pod) -> Result<()> {
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.as_ref())
            .and_then(|s| s.get("kubernetes.io/hostname").cloned());
        let load: BTreeMap<String, usize> = {
            let sandboxes = self.sandboxes.lock().expect("kubelet sandboxes lock");
            self.node_names()
                .into_iter()
                .map(|n| {
                    let count = sandboxes.values().filter(|s| s.node == n).count();
                    (n, count)
                })
                .collect()
        };
        let Some(node) = load
            .iter()
            .filter(|(n, _)| selector.as_ref().is_none_or(|s| s == *n))
            .min_by_key(|(n, c)| (**c, (*n).clone()))
            .map(|(n, _)| n.clone())
        else {
            return Err(Error::Pod {
                pod: pod_key(pod),
                reason: "no node fits; add a node or fix the node selector".into(),
            });
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let bound: Result<serde_json::Value, kube::Error> = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        match bound {
            Ok(_) => {}
            // An API server without the binding subresource: set the field.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 405 => {
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"nodeName": node}})),
                )
                .await?;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pod = %pod_key(pod), %node, "scheduler bound pod");
        Ok(())
    }

    async fn start_sandbox(&self, pod: &Pod, uid: &str, node: &str) -> Result<Vec<IpAddr>> {
        let runtime = self.runtime(node).ok_or_else(|| Error::Pod {
            pod: pod_key(pod),
            reason: format!("node {node} left"),
        })?;
        let key = pod_key(pod);
        let netns = Netns::create(&format!(
            "{}-p{}",
            self.netns_prefix,
            &short_hash(uid)[..10]
        ))
        .await?;
        let attachment = cni::Attachment {
            container_id: format!(
                "{}{}",
                short_hash(&format!("sandbox/{uid}")),
                short_hash(uid)
            ),
            ifname: "eth0".into(),
            netns: netns.path().display().to_string(),
            pod_namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: uid.to_owned(),
        };
        let result = runtime.cni.add(&attachment).await?;
        let ips = cni::result_ips(&result);
        if ips.is_empty() {
            let _ = runtime.cni.del(&attachment).await;
            return Err(Error::Pod {
                pod: key,
                reason: "the CNI result has no IPs".into(),
            });
        }
        let ports = declared_ports(pod);
        let listeners = netns
            .enter(move || traffic::open(&ports))?
            .map_err(|e| Error::Pod {
                pod: key.clone(),
                reason: format!("cannot open the pod's ports: {e}"),
            })?;
        let servers = traffic::serve(listeners, &key).map_err(|e| Error::Pod {
            pod: key.clone(),
            reason: format!("cannot serve the pod's ports: {e}"),
        })?;
        tracing::info!(pod = %key, %node, ips = ?ips, netns = netns.name(), "kubelet started pod sandbox");
        self.sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .insert(
                uid.to_owned(),
                Sandbox {
                    key,
                    node: node.to_owned(),
                    netns,
                    attachment,
                    ips: ips.clone(),
                    _servers: servers,
                },
            );
        Ok(ips)
    }

    /// Stops a sandbox: servers, CNI DEL, namespace.
    async fn teardown(&self, uid: &str) {
        for state in self.nodes.lock().expect("kubelet nodes lock").values_mut() {
            state.waiting.remove(uid);
        }
        let sandbox = self
            .sandboxes
            .lock()
            .expect("kubelet sandboxes lock")
            .remove(uid);
        let Some(sandbox) = sandbox else {
            return;
        };
        let runtime = self.runtime(&sandbox.node);
        drop(sandbox._servers);
        if let Some(rt) = runtime
            && let Err(error) = rt.cni.del(&sandbox.attachment).await
        {
            tracing::warn!(pod = %sandbox.key, %error, "kubelet CNI DEL failed");
        }
        if let Err(error) = sandbox.netns.delete().await {
            tracing::warn!(pod = %sandbox.key, %error, "kubelet failed to delete pod netns");
        }
        tracing::info!(pod = %sandbox.key, "kubelet stopped pod sandbox");
    }

    async fn confirm_deletion(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut dp = DeleteParams::default().grace_period(0);
        dp.preconditions = Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        });
        match api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => {
                tracing::warn!(pod = %pod_key(pod), %error, "kubelet failed to confirm pod deletion")
            }
        }
    }

    async fn report_running(&self, pod: &Pod, node: &str, ips: &[IpAddr]) -> Result<()> {
        let host_ips: Vec<String> = self
            .nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| {
                n.runtime
                    .net
                    .addresses()
                    .iter()
                    .map(IpAddr::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let now = meta::now();
        let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
        let containers: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "ready": true, "restartCount": 0, "started": true,
                "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "state": {"running": {"startedAt": now}}})
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running",
            "hostIP": host_ips.first(),
            "hostIPs": host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "podIP": ips.first().map(IpAddr::to_string),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
            "startTime": now,
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                           cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": containers,
        }});
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        api.patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    async fn report_failure(&self, pod: &Pod, message: &str) {
        let now = meta::now();
        let patch = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False", "reason": "FailedCreatePodSandBox",
             "message": message, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let _ = api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
    }

    /// CNI GC on every node with the sandboxes that still exist.
    pub async fn gc(&self) {
        let nodes: Vec<(String, Arc<NodeRuntime>)> = self
            .nodes
            .lock()
            .expect("kubelet nodes lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.runtime.clone()))
            .collect();
        for (name, rt) in nodes {
            let valid: Vec<cni::Attachment> = self
                .sandboxes
                .lock()
                .expect("kubelet sandboxes lock")
                .values()
                .filter(|s| s.node == name)
                .map(|s| s.attachment.clone())
                .collect();
            if let Err(error) = rt.cni.gc(&valid).await {
                tracing::warn!(node = %name, %error, "kubelet CNI GC failed");
            }
        }
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

/// The runtime's network status: why it is not ready, or `None`.
async fn network_error(runtime: &NodeRuntime) -> Option<String> {
    runtime.cni.status().await.err().map(|e| e.to_string())
}

/// A node's periodic work, until the node is removed or the emulator is
/// dropped: runtime status, Lease renewal, node status heartbeat.
async fn node_loop(me: Weak<Kubelets>, node: String, timings: Timings) {
    use tokio::time::{Instant, MissedTickBehavior, interval, interval_at};
    // add_node has just asked the runtime and posted the status; the Lease
    // is created at once.
    let mut status = interval_at(
        Instant::now() + timings.runtime_status,
        timings.runtime_status,
    );
    let mut lease = interval(timings.lease_renew);
    let mut heartbeat = interval_at(Instant::now() + timings.node_status, timings.node_status);
    for t in [&mut status, &mut lease, &mut heartbeat] {
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    enum Work {
        Status,
        Lease,
        Heartbeat,
    }
    loop {
        let work = tokio::select! {
            _ = status.tick() => Work::Status,
            _ = lease.tick() => Work::Lease,
            _ = heartbeat.tick() => Work::Heartbeat,
        };
        let Some(me) = me.upgrade() else {
            return;
        };
        match work {
            Work::Status => me.check_runtime(&node).await,
            Work::Lease => {
                if let Err(error) = me.renew_lease(&node).await {
                    tracing::warn!(%node, %error, "kubelet failed to renew the node lease");
                }
            }
            Work::Heartbeat => {
                if let Err(error) = me.post_node_status(&node).await {
                    tracing::warn!(%node, %error, "kubelet failed to post node status");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
