//! A pod's side of the kubelet: scheduling, the sandbox (namespace, CNI
//! chain, port servers), status reports, teardown and garbage collection.

use super::{
    Error, Kubelets, NodeRuntime, PodInfo, Result, Sandbox, declared_ports, pod_key,
    ready_condition, short_hash,
};
use crate::apiserver::meta;
use crate::cni;
use crate::netns::Netns;
use crate::traffic;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

impl Kubelets {
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

    pub(super) fn lock_for(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
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
    pub(super) fn wait_for_network(
        &self,
        node: &str,
        pod: &Pod,
        uid: &str,
    ) -> Option<(String, bool)> {
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
    pub(super) async fn record_network_not_ready(&self, pod: &Pod, node: &str, error: &str) {
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

    pub(super) fn has_node(&self, node: &str) -> bool {
        self.nodes
            .lock()
            .expect("kubelet nodes lock")
            .contains_key(node)
    }

    pub(super) fn retry_later(&self, pod: &Pod) {
        let _ = self.retry.send((
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        ));
    }

    pub(super) async fn schedule(&self, pod: &Pod) -> Result<()> {
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

    pub(super) async fn start_sandbox(
        &self,
        pod: &Pod,
        uid: &str,
        node: &str,
    ) -> Result<Vec<IpAddr>> {
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
    pub(super) async fn teardown(&self, uid: &str) {
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

    pub(super) async fn confirm_deletion(&self, pod: &Pod) {
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

    pub(super) async fn report_running(&self, pod: &Pod, node: &str, ips: &[IpAddr]) -> Result<()> {
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

    pub(super) async fn report_failure(&self, pod: &Pod, message: &str) {
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
}
