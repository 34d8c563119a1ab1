//! A node's side of the kubelet: registration, the runtime's network status,
//! the Lease and the `Ready` heartbeat, each node's periodic loop, removal.

use super::{
    Error, Kubelets, NODE_LEASE_DURATION_SECS, NODE_LEASE_NAMESPACE, NodeRuntime, NodeState,
    Result, Timings, ready_condition,
};
use crate::apiserver::meta;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl Kubelets {
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

    pub(super) fn runtime(&self, node: &str) -> Option<Arc<NodeRuntime>> {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .get(node)
            .map(|n| n.runtime.clone())
    }

    /// Syncs pod `ns/name` again after `delay`, from a fresh copy.
    pub(super) fn resync(&self, ns: String, name: String, delay: Duration) {
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
