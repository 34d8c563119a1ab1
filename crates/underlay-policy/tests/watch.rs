//! The watcher side against the embedded API server over real HTTP: the
//! agent learns namespaces, pods and policies from watches, attach waits
//! for the cache and fetches what it has not seen, the last known policy
//! stays while the API server fails, and changes made meanwhile arrive
//! after it recovers. The dataplane is the recording fake.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::Duration;
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig, Failure, Match};
use underlay_policy::agent::{AttachError, Options, PolicyAgent};
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

async fn make_pod(client: &kube::Client, ns: &str, name: &str, label: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"pod": label}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1",
                  "ports": [{"name": "web", "containerPort": 8080}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap();
}

fn set_has(fake: &FakeDataplane, ip: &str) -> bool {
    fake.state().sets.values().any(|s| s.members.contains(ip))
}

fn chain(fake: &FakeDataplane, name: &str) -> Vec<String> {
    fake.state().tables[0]
        .get(name)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_feed_the_engine_and_survive_an_api_outage() {
    let server = ApiServer::start(ApiConfig::default())
        .await
        .expect("api server");
    let client = server.client().expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"team": "red"}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    make_pod(&client, "x", "a", "a", "10.1.0.1").await;
    make_pod(&client, "x", "b", "b", "10.1.0.2").await;
    make_pod(&client, "x", "c", "c", "10.1.0.3").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "x");
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "only-b"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                              "ports": [{"port": "web"}]}]}
    }))
    .unwrap();
    policies.create(&PostParams::default(), &np).await.unwrap();

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
    let tasks = agent.start();

    // Attach waits for the cache and returns with the chains in place.
    let ep = |name: &str, ip: &str| Endpoint {
        pod: PodKey::new("x", name),
        interface: format!("udlx{name}"),
        ips: vec![ip.parse().unwrap()],
        owner: Attachment::new(format!("sandbox-{name}"), "eth0"),
    };
    agent.attach(ep("a", "10.1.0.1")).await.expect("attach x/a");
    let ingress = chain(&fake, &endpoint_chain("udlxa", Direction::Ingress));
    assert!(
        ingress.iter().any(|r| r.contains("-j UDL-PI-")),
        "{ingress:?}"
    );
    assert!(set_has(&fake, "10.1.0.2") && !set_has(&fake, "10.1.0.3"));
    assert!(set_has(&fake, "10.1.0.1,tcp:8080"), "named port set");
    assert!(agent.status().synced);

    // A pod the API server does not know: try again later, not open.
    let err = agent.attach(ep("ghost", "10.1.0.9")).await.unwrap_err();
    assert!(matches!(err, AttachError::Unavailable(_)), "{err:?}");

    // A label change through the API reaches the ipsets.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    pods.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"pod": "b"}}})),
    )
    .await
    .unwrap();
    eventually("x/c joins the peer set", || set_has(&fake, "10.1.0.3")).await;

    // The API server fails every request and drops the watches: the last
    // known policy stays programmed, attach of an unseen pod is refused.
    server
        .faults()
        .fail_next(1_000_000, Failure::Internal, Match::any());
    server.faults().close_watches();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(set_has(&fake, "10.1.0.2") && set_has(&fake, "10.1.0.3"));
    assert_eq!(agent.engine().lock().await.index().policy_count(), 1);
    let err = agent.attach(ep("unseen", "10.1.0.8")).await.unwrap_err();
    assert!(matches!(err, AttachError::Unavailable(_)), "{err:?}");

    // Recovery: a change made after the outage takes effect.
    server.faults().clear();
    policies
        .delete("only-b", &DeleteParams::default())
        .await
        .unwrap();
    let engine = agent.engine();
    eventually("the deleted policy is gone from the index", || {
        engine
            .try_lock()
            .map(|e| e.index().policy_count() == 0)
            .unwrap_or(false)
    })
    .await;
    eventually("x/a is open again", || {
        !chain(&fake, &endpoint_chain("udlxa", Direction::Ingress))
            .iter()
            .any(|r| r.contains("-j DROP"))
    })
    .await;
    for t in tasks {
        t.abort();
    }
}

/// A NetworkPolicy the agent cannot understand (here with an operator it
/// does not know, stored by a server that did not validate it) must not
/// leave its pods open: the pods it selects are isolated in the directions
/// it names, every pod of its namespace when its podSelector itself is
/// unreadable, and an Event on the policy says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_agent_cannot_understand_isolates_what_it_names_and_says_why() {
    use k8s_openapi::api::events::v1::Event;
    let meta = |kind: &str, ns: Option<&str>, name: &str| {
        let mut m = json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1",
                           "creationTimestamp": "2026-01-01T00:00:00Z"});
        if let Some(ns) = ns {
            m["namespace"] = json!(ns);
        }
        let api = if kind == "NetworkPolicy" {
            "networking.k8s.io/v1"
        } else {
            "v1"
        };
        (api, m)
    };
    let object = |kind: &str, ns: Option<&str>, name: &str, rest: serde_json::Value| {
        let (api, m) = meta(kind, ns, name);
        let mut o = json!({"apiVersion": api, "kind": kind, "metadata": m});
        for (k, v) in rest.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let pod = |ns: &str, name: &str, ip: &str| {
        object(
            "Pod",
            Some(ns),
            name,
            json!({
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}),
        )
    };
    let mut a = pod("x", "a", "10.1.0.1");
    a["metadata"]["labels"] = json!({"pod": "a"});
    let objects = vec![
        object("Namespace", None, "x", json!({})),
        object("Namespace", None, "y", json!({})),
        a,
        pod("x", "b", "10.1.0.2"),
        pod("y", "c", "10.1.0.3"),
        // Readable podSelector, unreadable peer: x/a loses ingress.
        object(
            "NetworkPolicy",
            Some("x"),
            "bad-peer",
            json!({"spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "pod", "operator": "Matches", "values": ["b"]}]}}]}]}}),
        ),
        // Unreadable podSelector: every pod of y loses egress.
        object(
            "NetworkPolicy",
            Some("y"),
            "bad-selector",
            json!({"spec": {
            "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Matches"}]},
            "policyTypes": ["Egress"],
            "egress": [{}]}}),
        ),
    ];
    let dir = std::env::temp_dir().join(format!("udl-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("snapshot.json");
    std::fs::write(
        &snapshot,
        json!({"resourceVersion": "10", "objects": objects}).to_string(),
    )
    .unwrap();
    let server = ApiServer::start(ApiConfig {
        snapshot: Some(snapshot),
        ..ApiConfig::default()
    })
    .await
    .expect("api server");
    let client = server.client().expect("client");

    let fake = FakeDataplane::new();
    let engine = Engine::new(fake.clone(), Config::default(), Metrics::default());
    let agent = PolicyAgent::new(engine, Some(client.clone()), Options::default());
    let tasks = agent.start();
    for (ns, name, ip) in [
        ("x", "a", "10.1.0.1"),
        ("x", "b", "10.1.0.2"),
        ("y", "c", "10.1.0.3"),
    ] {
        let ep = Endpoint {
            pod: PodKey::new(ns, name),
            interface: format!("udl{ns}{name}"),
            ips: vec![ip.parse().unwrap()],
            owner: Attachment::new(format!("sandbox-{ns}{name}"), "eth0"),
        };
        agent.attach(ep).await.expect("attach");
    }
    let isolated = |iface: &str, dir: Direction| {
        chain(&fake, &endpoint_chain(iface, dir))
            .iter()
            .any(|r| r == "-j DROP")
    };
    let got: Vec<(&str, bool, bool)> = ["udlxa", "udlxb", "udlyc"]
        .into_iter()
        .map(|i| {
            (
                i,
                isolated(i, Direction::Ingress),
                isolated(i, Direction::Egress),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("udlxa", true, false),
            ("udlxb", false, false),
            ("udlyc", false, true)
        ]
    );

    for (ns, name) in [("x", "bad-peer"), ("y", "bad-selector")] {
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        eventually_async(&format!("an event on {ns}/{name}"), async || {
            events.list(&Default::default()).await.is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.note.as_deref().is_some_and(|n| n.contains("Matches"))
                })
            })
        })
        .await;
    }
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn eventually_async(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
