//! ClusterNetworkPolicies and Nodes reach the engine through watches on the
//! embedded API server over real HTTP: the CRD installed from the Rust
//! types, a policy's chains programmed, its `Accepted` condition written
//! (and what it does not enforce said there), a Node's address followed
//! into a `nodes` set, and an agent on a cluster without the CRD ready all
//! the same. The dataplane is the recording fake.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::time::Duration;
use underlay_api::cnp::ClusterNetworkPolicy;
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig};
use underlay_policy::agent::{Options, PolicyAgent};
use underlay_policy::compile::endpoint_chain;
use underlay_policy::dataplane::FakeDataplane;
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Attachment, Direction, Endpoint, PodKey};
use underlay_policy::{Config, Engine};

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create<K>(api: &Api<K>, v: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let o: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
}

async fn world(client: &kube::Client) {
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": "x"}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    create(
        &pods,
        json!({"metadata": {"name": "a"},
               "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}),
    )
    .await;
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.1.0.1",
                                        "podIPs": [{"ip": "10.1.0.1"}]}})),
    )
    .await
    .unwrap();
}

fn start_agent(
    client: &kube::Client,
) -> (FakeDataplane, std::sync::Arc<PolicyAgent<FakeDataplane>>) {
    let fake = FakeDataplane::new();
    let engine = Engine::new(fake.clone(), Config::default(), Metrics::default());
    let agent = PolicyAgent::new(
        engine,
        Some(client.clone()),
        Options {
            batch_delay: Duration::from_millis(5),
            fetch_timeout: Duration::from_secs(2),
            ..Options::default()
        },
    );
    (fake, agent)
}

fn xa() -> Endpoint {
    Endpoint {
        pod: PodKey::new("x", "a"),
        interface: "udlxa".into(),
        ips: vec!["10.1.0.1".parse().unwrap()],
        owner: Attachment::new("sandbox-a", "eth0"),
    }
}

/// The rules of x/a's chain in `dir` (the comment every chain carries left
/// out: an open endpoint's chain has no rule).
fn chain(fake: &FakeDataplane, dir: Direction) -> Vec<String> {
    fake.state().tables[0]
        .get(&endpoint_chain("udlxa", dir))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.starts_with("-m comment "))
        .collect()
}

async fn accepted(
    api: &Api<ClusterNetworkPolicy>,
    name: &str,
) -> Option<(String, String, String, Option<i64>)> {
    let o = api.get(name).await.ok()?;
    let c = o
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Accepted")?;
    Some((c.status, c.reason, c.message, c.observed_generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policies_and_nodes_are_watched_enforced_and_reported() {
    let server = ApiServer::start(ApiConfig::default())
        .await
        .expect("api server");
    let client = server.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &underlay_api::cnp::crd())
        .await
        .expect("the CRD is accepted");
    world(&client).await;
    create(
        &Api::<Node>::all(client.clone()),
        json!({"metadata": {"name": "n1", "labels": {"role": "infra"}},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}]}}),
    )
    .await;
    let cnps: Api<ClusterNetworkPolicy> = Api::all(client.clone());
    create(
        &cnps,
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
               "metadata": {"name": "guard"},
               "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                        "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "infra"}}}]}]}}),
    )
    .await;

    let (fake, agent) = start_agent(&client);
    let tasks = agent.start();
    agent.attach(xa()).await.expect("attach x/a");
    let egress = chain(&fake, Direction::Egress);
    assert!(
        egress.iter().any(|r| r.contains("-j UDL-CE-")),
        "{egress:?}"
    );
    let has = |ip: &str| fake.state().sets.values().any(|s| s.members.contains(ip));
    assert!(has("10.0.0.4"), "the node's address is in the nodes set");

    // Every agent would write the same condition; this one writes it once.
    let mut got = None;
    for _ in 0..100 {
        got = accepted(&cnps, "guard").await;
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, reason, _, generation) = got.expect("an Accepted condition");
    assert_eq!(
        (status.as_str(), reason.as_str(), generation),
        ("True", "Enforced", Some(1))
    );

    // The node moves: the set follows, no chain is rewritten.
    Api::<Node>::all(client.clone())
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.14"}]}}),
            ),
        )
        .await
        .unwrap();
    eventually("the node's new address", || {
        has("10.0.0.14") && !has("10.0.0.4")
    })
    .await;

    // A domainNames peer: enforced failing closed, and the status says so.
    cnps.patch(
        "guard",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"egress": [
            {"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
            {"action": "Deny", "to": [{"nodes": {}}]}]}})),
    )
    .await
    .unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = accepted(&cnps, "guard").await.filter(|c| c.3 == Some(2));
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, reason, message, _) = got.expect("the condition of generation 2");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PartiallyEnforced")
    );
    assert!(
        message.contains("domainNames") && message.contains("spec.egress[0]"),
        "{message}"
    );

    // Deleted: x/a is open again.
    cnps.delete("guard", &Default::default()).await.unwrap();
    eventually("x/a open", || chain(&fake, Direction::Egress).is_empty()).await;
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_cluster_without_the_crd_becomes_ready_and_takes_it_in_later() {
    let server = ApiServer::start(ApiConfig::default())
        .await
        .expect("api server");
    let client = server.client().expect("client");
    world(&client).await;
    let (fake, agent) = start_agent(&client);
    let tasks = agent.start();
    eventually("the cache is ready without the CRD", || agent.cache_ready()).await;
    agent.attach(xa()).await.expect("attach x/a");
    let ingress = chain(&fake, Direction::Ingress);
    assert!(ingress.is_empty(), "open: {ingress:?}");

    // The CRD and a policy arrive later: the watcher takes them in.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &underlay_api::cnp::crd())
        .await
        .unwrap();
    let cnps: Api<ClusterNetworkPolicy> = Api::all(client.clone());
    let mut created = false;
    for _ in 0..100 {
        let o: ClusterNetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "late"},
            "spec": {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}))
        .unwrap();
        if cnps.create(&PostParams::default(), &o).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(created, "the custom resource is served once its CRD exists");
    let deadline = Duration::from_secs(60);
    let start = tokio::time::Instant::now();
    while !chain(&fake, Direction::Ingress)
        .iter()
        .any(|r| r.contains("-j UDL-CI-"))
    {
        assert!(
            start.elapsed() < deadline,
            "the late policy was never enforced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
    }
}
