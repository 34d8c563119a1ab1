//! Building blocks for the demo and the end-to-end tests: namespaces, pods
//! and policies created through the Kubernetes API, and reachability checks
//! that wait for an expected outcome (policy and routes converge, they are
//! not instantaneous).

use crate::lab::{Lab, Result};
use crate::traffic::{Outcome, Protocol};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The ports every lab pod serves.
pub const POD_PORTS: [(u16, Protocol); 3] = [
    (80, Protocol::Tcp),
    (53, Protocol::Udp),
    (9000, Protocol::Sctp),
];

/// How long a single probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

async fn create_ignoring_conflict<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_ignoring_absent<K>(api: Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn from_json<K: serde::de::DeserializeOwned>(v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(|e| crate::lab::Error::Usage(format!("invalid object: {e}")))
}

/// Creates a namespace (with its `default` service account) labelled as
/// Kubernetes labels it.
pub async fn namespace(lab: &Lab, name: &str) -> Result<()> {
    let ns: Namespace = from_json(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "lab": name}}}))?;
    create_ignoring_conflict(&Api::all(lab.client()), &ns).await?;
    let sa: ServiceAccount = from_json(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": name}}))?;
    create_ignoring_conflict(&Api::namespaced(lab.client(), name), &sa).await
}

/// Creates pod `namespace/name` serving [`POD_PORTS`], on `node` when given.
pub async fn pod(lab: &Lab, key: &str, node: Option<&str>, labels: Value) -> Result<()> {
    let (ns, name) = key
        .split_once('/')
        .ok_or_else(|| crate::lab::Error::Usage(format!("pod {key:?} is not NAMESPACE/NAME")))?;
    let ports: Vec<Value> = POD_PORTS
        .iter()
        .map(|(port, proto)| json!({"containerPort": port, "protocol": proto.to_string()}))
        .collect();
    let mut spec =
        json!({"containers": [{"name": "app", "image": "underlay/lab-server:1", "ports": ports}]});
    if let Some(node) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    }
    let mut labels = labels;
    if labels.is_null() {
        labels = json!({});
    }
    labels["app"] = json!(name);
    let pod: Pod = from_json(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}))?;
    create_ignoring_conflict(&Api::namespaced(lab.client(), ns), &pod).await
}

/// Deletes a pod.
pub async fn delete_pod(lab: &Lab, key: &str) -> Result<()> {
    let Some((ns, name)) = key.split_once('/') else {
        return Ok(());
    };
    delete_ignoring_absent(Api::<Pod>::namespaced(lab.client(), ns), name).await
}

/// Creates or replaces a NetworkPolicy given as JSON (namespace in metadata).
pub async fn policy(lab: &Lab, value: Value) -> Result<()> {
    let np: NetworkPolicy = from_json(value)?;
    let ns = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<NetworkPolicy> = Api::namespaced(lab.client(), &ns);
    let name = np.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        api.delete(&name, &DeleteParams::default()).await?;
    }
    api.create(&PostParams::default(), &np).await?;
    Ok(())
}

/// Deletes a NetworkPolicy.
pub async fn delete_policy(lab: &Lab, ns: &str, name: &str) -> Result<()> {
    delete_ignoring_absent(Api::<NetworkPolicy>::namespaced(lab.client(), ns), name).await
}

/// The ClusterNetworkPolicy resource, untyped (the lab needs no more).
fn cluster_policies(lab: &Lab) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "policy.networking.k8s.io".into(),
        version: "v1alpha2".into(),
        api_version: "policy.networking.k8s.io/v1alpha2".into(),
        kind: "ClusterNetworkPolicy".into(),
        plural: "clusternetworkpolicies".into(),
    };
    Api::all_with(lab.client(), &resource)
}

/// Creates or replaces a ClusterNetworkPolicy given as JSON.
pub async fn cluster_policy(lab: &Lab, value: Value) -> Result<()> {
    let o: DynamicObject = from_json(value)?;
    let api = cluster_policies(lab);
    let name = o.metadata.name.clone().unwrap_or_default();
    if api.get_opt(&name).await?.is_some() {
        api.delete(&name, &DeleteParams::default()).await?;
    }
    api.create(&PostParams::default(), &o).await?;
    Ok(())
}

/// Deletes a ClusterNetworkPolicy.
pub async fn delete_cluster_policy(lab: &Lab, name: &str) -> Result<()> {
    delete_ignoring_absent(cluster_policies(lab), name).await
}

/// The first IP of a running pod of the family asked for.
pub fn pod_ip(lab: &Lab, key: &str, v6: bool) -> Option<IpAddr> {
    lab.pods()
        .into_iter()
        .find(|p| p.key == key)?
        .ips
        .into_iter()
        .find(|ip| ip.is_ipv6() == v6)
}

/// What a reachability check observed.
#[derive(Clone, Debug)]
pub struct Observation {
    pub outcome: Outcome,
    pub matched: bool,
    pub waited: Duration,
}

/// Probes `from` → `to:port` until the outcome is `want_connected` (and,
/// when connected, the reply names `to`), or `within` passes.
pub async fn expect_reach(
    lab: &Lab,
    from: &str,
    to: &str,
    port: u16,
    protocol: Protocol,
    want_connected: bool,
    within: Duration,
) -> Result<Observation> {
    expect_reach_family(lab, from, to, port, protocol, want_connected, within, false).await
}

#[allow(clippy::too_many_arguments)]
pub async fn expect_reach_family(
    lab: &Lab,
    from: &str,
    to: &str,
    port: u16,
    protocol: Protocol,
    want_connected: bool,
    within: Duration,
    v6: bool,
) -> Result<Observation> {
    let start = Instant::now();
    let ip = pod_ip(lab, to, v6).ok_or_else(|| {
        crate::lab::Error::Usage(format!(
            "pod {to} has no {} address",
            if v6 { "IPv6" } else { "IPv4" }
        ))
    })?;
    loop {
        let outcome = lab
            .probe(from, SocketAddr::new(ip, port), protocol, PROBE_TIMEOUT)
            .await?;
        let matched = if want_connected {
            outcome.reply() == Some(to)
        } else {
            !outcome.connected()
        };
        if matched || start.elapsed() >= within {
            return Ok(Observation {
                outcome,
                matched,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
