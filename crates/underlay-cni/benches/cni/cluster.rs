//! A realistic cluster in the lab's API server for the CNI benchmark:
//! namespaces of pods with app and tier labels, NetworkPolicies spread over
//! them (ingress from other namespaces' apps on named and numbered ports,
//! egress to CIDRs), and in the measured pods' namespace (`default`) the
//! pods the benchmark attaches plus policies that select them.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
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

/// Creates every object through its API, with at most [`IN_FLIGHT`]
/// requests at a time.
async fn create_all<K>(objects: Vec<(Api<K>, K)>) -> kube::Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (api, object) in objects {
        if set.len() >= IN_FLIGHT
            && let Some(done) = set.join_next().await
        {
            done.expect("a create task")?;
        }
        set.spawn(async move { api.create(&PostParams::default(), &object).await.map(drop) });
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
    let team = |i: usize| -> Namespace {
        serde_json::from_value(json!({
            "metadata": {"name": namespace(i), "labels": {"team": format!("t{}", i % 50)}}
        }))
        .expect("a namespace")
    };
    let all = || Api::<Namespace>::all(client.clone());
    create_all((0..namespaces).map(|i| (all(), team(i))).collect()).await?;
    let pods_in = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);
    let policies_in = |ns: &str| Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let tiers = ["web", "api", "db"];
    let pods = (0..size.pods).map(|j| {
        let labels = json!({"app": format!("app-{}", j % 5), "tier": tiers[j % 3]});
        let ns = namespace(j / PODS_PER_NAMESPACE % namespaces);
        (pods_in(&ns), pod(&format!("pod-{j}"), labels))
    });
    let bench_pods = measured.iter().map(|name| {
        let labels = json!({"app": "bench", "tier": "web"});
        (pods_in("default"), pod(name, labels))
    });
    create_all(pods.chain(bench_pods).collect()).await?;
    let policies = (0..size.policies).map(|k| {
        let ns = k % namespaces;
        (
            policies_in(&namespace(ns)),
            policy(ns, k / namespaces, namespaces),
        )
    });
    let bench_policies =
        (0..DEFAULT_NAMESPACE_POLICIES).map(|k| (policies_in("default"), default_policy(k)));
    create_all(policies.chain(bench_policies).collect()).await?;
    Ok(api)
}
