//! A realistic cluster in the lab's API server for the CNI benchmark:
//! namespaces of pods with app and tier labels, NetworkPolicies spread over
//! them (ingress from other namespaces' apps on named and numbered ports,
//! egress to CIDRs), and in the measured pods' namespace (`default`) the
//! pods the benchmark attaches plus policies that select them.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::path::PathBuf;
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig, Handle};

pub const PODS_PER_NAMESPACE: usize = 10;
/// Policies in `default` that select the measured pods.
pub const DEFAULT_NAMESPACE_POLICIES: usize = 16;
/// Requests in flight while loading.
const IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub pods: usize,
    pub policies: usize,
}

fn namespace(i: usize) -> String {
    format!("team-{i}")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{
            "name": "app",
            "image": "app:1",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        }]}
    }))
    .expect("a pod")
}

/// Policy `k` of namespace `ns`: its apps reached from one other team's
/// apps on the named port and on 443, and reaching a /16 and DNS.
fn policy(ns: usize, k: usize, namespaces: usize) -> NetworkPolicy {
    let from = (ns + k + 1) % namespaces;
    serde_json::from_value(json!({
        "metadata": {"name": format!("np-{k}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", k % 5)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace(from)}},
                    "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}
                }],
                "ports": [{"port": "http"}, {"port": 443, "protocol": "TCP"}]
            }],
            "egress": [
                {"to": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", k % 200), "except": [format!("10.{}.1.0/24", k % 200)]}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]}
            ]
        }
    }))
    .expect("a policy")
}

/// Policy `k` of `default`, selecting the measured pods (`app=bench`).
fn default_policy(k: usize) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": format!("bench-{k}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": "bench"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace(k)}}}],
                "ports": [{"port": 8080 + k as i64, "protocol": "TCP"}]
            }],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", k % 5)}}}]}]
        }
    }))
    .expect("a policy")
}

/// Runs `make` for every item with at most [`IN_FLIGHT`] at a time.
async fn create_all<T, F>(items: Vec<T>, make: impl Fn(T) -> F) -> kube::Result<()>
where
    F: std::future::Future<Output = kube::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for item in items {
        if set.len() >= IN_FLIGHT
            && let Some(done) = set.join_next().await
        {
            done.expect("a create task")?;
        }
        set.spawn(make(item));
    }
    while let Some(done) = set.join_next().await {
        done.expect("a create task")?;
    }
    Ok(())
}

/// Starts the lab API server and fills it: `size.pods` pods in
/// `size.pods / PODS_PER_NAMESPACE` namespaces, `size.policies` policies
/// spread over them, and the measured pods with their policies in
/// `default`.
pub async fn load(size: Size, measured: &[String]) -> Result<Handle, Box<dyn std::error::Error>> {
    let api = ApiServer::start(ApiConfig::default()).await?;
    let client = api.client()?;
    let namespaces = (size.pods / PODS_PER_NAMESPACE).max(1);
    let params = PostParams::default();
    let c = client.clone();
    create_all((0..namespaces).collect(), move |i| {
        let (c, params) = (c.clone(), params.clone());
        async move {
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": namespace(i), "labels": {"team": format!("t{}", i % 50)}}
            }))
            .expect("a namespace");
            Api::<Namespace>::all(c)
                .create(&params, &ns)
                .await
                .map(drop)
        }
    })
    .await?;
    let tiers = ["web", "api", "db"];
    let c = client.clone();
    let params = PostParams::default();
    create_all((0..size.pods).collect(), move |j| {
        let (c, params) = (c.clone(), params.clone());
        async move {
            let labels = json!({"app": format!("app-{}", j % 5), "tier": tiers[j % 3]});
            let p = pod(&format!("pod-{j}"), labels);
            Api::<Pod>::namespaced(c, &namespace(j / PODS_PER_NAMESPACE % namespaces))
                .create(&params, &p)
                .await
                .map(drop)
        }
    })
    .await?;
    let c = client.clone();
    let params = PostParams::default();
    create_all((0..size.policies).collect(), move |k| {
        let (c, params) = (c.clone(), params.clone());
        async move {
            let ns = k % namespaces;
            Api::<NetworkPolicy>::namespaced(c, &namespace(ns))
                .create(&params, &policy(ns, k / namespaces, namespaces))
                .await
                .map(drop)
        }
    })
    .await?;
    let c = client.clone();
    let params = PostParams::default();
    create_all(measured.to_vec(), move |name| {
        let (c, params) = (c.clone(), params.clone());
        async move {
            let p = pod(&name, json!({"app": "bench", "tier": "web"}));
            Api::<Pod>::namespaced(c, "default")
                .create(&params, &p)
                .await
                .map(drop)
        }
    })
    .await?;
    let c = client.clone();
    let params = PostParams::default();
    create_all((0..DEFAULT_NAMESPACE_POLICIES).collect(), move |k| {
        let (c, params) = (c.clone(), params.clone());
        async move {
            Api::<NetworkPolicy>::namespaced(c, "default")
                .create(&params, &default_policy(k))
                .await
                .map(drop)
        }
    })
    .await?;
    Ok(api)
}

/// A kubeconfig that reaches `api` from inside the node namespace `ns`
/// (through a relay listening there), kept with the relay alive.
pub struct NodeKubeconfig {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    _relay: underlay_lab::relay::Relay,
}

pub fn kubeconfig_in(api: &Handle, ns: &super::Netns) -> NodeKubeconfig {
    let relay = underlay_lab::relay::start(&ns.path(), "127.0.0.1:0".parse().unwrap(), api.addr())
        .expect("relay into the node namespace");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        underlay_lab::lab::rewrite_server(&api.kubeconfig(), &relay.listen.to_string()),
    )
    .expect("write the kubeconfig");
    NodeKubeconfig {
        path,
        _dir: dir,
        _relay: relay,
    }
}
