//! The kubelet emulator against the embedded API server, with a recording
//! CNI plugin: node registration like a kubelet, scheduling, the pod
//! sandbox (namespace, CNI ADD, servers, status) and deletion (CNI DEL,
//! namespace removed, deletion confirmed); the runtime's network status
//! (CNI STATUS) gating pod sandboxes and the node's `Ready`; the node Lease
//! and status heartbeats. Needs root (pod namespaces).

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use underlay_lab::apiserver::Handle;
use underlay_lab::cni::{ExecOutput, Invocation, NetworkConfigList, PluginExec, Runtime};
use underlay_lab::kubelet::{Kubelets, NodeRuntime, Timings, node_condition};
use underlay_lab::netns::{self, Netns};
use underlay_lab::traffic::{self, Protocol};
use underlay_lab::vnet::NodeNet;

/// Answers ADD with the next address of 10.244.1.0/24 and records commands;
/// STATUS fails (code 50, as underlay-cni without its agent) while
/// `not_ready` is set, and is counted rather than recorded.
#[derive(Default)]
struct Plugin {
    next: AtomicU32,
    calls: Mutex<Vec<String>>,
    not_ready: AtomicBool,
    statuses: AtomicU32,
}

struct Shared(Arc<Plugin>);

#[async_trait::async_trait]
impl PluginExec for Shared {
    async fn exec(&self, inv: &Invocation) -> std::io::Result<ExecOutput> {
        let me = &self.0;
        let command = inv.env.get("CNI_COMMAND").cloned().unwrap_or_default();
        if command == "STATUS" {
            me.statuses.fetch_add(1, Ordering::Relaxed);
            if me.not_ready.load(Ordering::Relaxed) {
                let msg = "the plugin cannot add pods: agent socket refused";
                return Ok(ExecOutput::error(50, msg, ""));
            }
            return Ok(ExecOutput::success(Vec::new()));
        }
        let pod = inv
            .env
            .get("CNI_ARGS")
            .and_then(|a| a.split(';').find_map(|kv| kv.strip_prefix("K8S_POD_NAME=")))
            .unwrap_or_default()
            .to_owned();
        me.calls.lock().unwrap().push(format!("{command} {pod}"));
        let stdout = if command == "ADD" {
            let n = me.next.fetch_add(1, Ordering::Relaxed) + 10;
            serde_json::to_vec(&json!({"cniVersion": "1.1.0",
                "ips": [{"address": format!("10.244.1.{n}/32")}]}))?
        } else {
            Vec::new()
        };
        Ok(ExecOutput::success(stdout))
    }
}

/// What each test starts from: an API server, node-1's namespace and the
/// plugin its CNI chain runs.
struct Fixture {
    _server: Handle,
    client: kube::Client,
    /// The prefix of every namespace the test makes.
    prefix: String,
    node_ns: Netns,
    dir: tempfile::TempDir,
    plugin: Arc<Plugin>,
}

impl Fixture {
    /// The fixture of `test`, or `None` (the test skipped) when not root.
    async fn start(test: &str) -> Option<Fixture> {
        if !netns::require_root(test) {
            return None;
        }
        let (server, client) = support::api::start().await;
        let prefix = netns::unique_prefix();
        Some(Fixture {
            _server: server,
            client,
            node_ns: Netns::create(&format!("{prefix}-n1")).await.unwrap(),
            prefix,
            dir: tempfile::tempdir().unwrap(),
            plugin: Arc::default(),
        })
    }

    /// `node-1` (10.0.0.4) in its namespace, its CNI chain the plugin.
    fn node_1(&self) -> NodeRuntime {
        NodeRuntime {
            net: NodeNet::at("node-1", 1, self.node_ns.name(), false),
            cni: runtime(&self.plugin, self.dir.path()),
        }
    }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_registers_its_node_and_runs_and_removes_pods_through_cni() {
    let test = "the_kubelet_registers_its_node_and_runs_and_removes_pods_through_cni";
    let Some(fx) = Fixture::start(test).await else {
        return;
    };
    let kubelets = Kubelets::new(fx.client.clone(), &fx.prefix);
    kubelets.add_node(fx.node_1()).await.unwrap();
    let run = tokio::spawn(kubelets.clone().run());

    let node = Api::<Node>::all(fx.client.clone())
        .get("node-1")
        .await
        .unwrap();
    let status = node.status.unwrap();
    let addresses = status.addresses.unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.0.0.4")
    );
    let conds = status.conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
    );
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // An unscheduled pod is bound to the node and started.
    let pods: Api<Pod> = Api::namespaced(fx.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [
            {"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = eventually("the pod to run", || async {
        let p = pods.get("web").await.ok()?;
        let st = p.status.clone()?;
        (st.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some("node-1"));
    let st = running.status.unwrap();
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.10"));
    assert_eq!(st.host_ip.as_deref(), Some("10.0.0.4"));
    let info = kubelets
        .pods()
        .into_iter()
        .find(|p| p.key == "default/web")
        .unwrap();
    assert!(netns::list(&fx.prefix).contains(&info.netns));
    // The declared ports are served inside the pod's namespace.
    let pod_ns = Netns::existing(&info.netns);
    for (port, proto) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
        let target: SocketAddr = ([127, 0, 0, 1], port).into();
        let got = pod_ns
            .enter(move || traffic::probe(target, proto, Duration::from_secs(1)))
            .unwrap();
        assert_eq!(got.reply(), Some("default/web"), "{port}/{proto}: {got}");
    }

    // Deleting the pod: CNI DEL, namespace gone, deletion confirmed.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("the pod object to go", || async {
        pods.get_opt("web")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(
        !netns::list(&fx.prefix).contains(&info.netns),
        "the pod namespace was removed"
    );
    assert_eq!(*fx.plugin.calls.lock().unwrap(), vec!["ADD web", "DEL web"]);

    // A node selector that no node matches leaves the pod pending.
    let pinned: Pod = serde_json::from_value(json!({"metadata": {"name": "pinned"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "nowhere"},
                 "containers": [{"name": "c", "image": "i"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pinned).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = pods.get("pinned").await.unwrap();
    assert!(
        p.spec.unwrap().node_name.is_none(),
        "bound a pod no node fits"
    );

    run.abort();
    kubelets.shutdown().await;
    fx.node_ns.delete().await.unwrap();
}

fn runtime(plugin: &Arc<Plugin>, dir: &std::path::Path) -> Runtime {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("fake"), "").unwrap();
    Runtime {
        config: NetworkConfigList::parse(
            "test",
            br#"{"cniVersion":"1.1.0","name":"lab","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap(),
        bin_dirs: vec![bin],
        cache_dir: dir.join("cache"),
        exec: Box::new(Shared(plugin.clone())),
    }
}

fn time_text<T: serde::Serialize>(t: &Option<T>) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_network_plugin_is_not_ready_is_not_ready_and_starts_pods_once_it_is() {
    let test = "a_node_whose_network_plugin_is_not_ready_is_not_ready_and_starts_pods_once_it_is";
    let Some(fx) = Fixture::start(test).await else {
        return;
    };
    fx.plugin.not_ready.store(true, Ordering::Relaxed);
    // Kubelet's periods scaled down so that the test sees several rounds.
    let timings = Timings {
        runtime_status: Duration::from_millis(200),
        lease_renew: Duration::from_millis(500),
        node_status: Duration::from_millis(500),
        retry: Duration::from_millis(200),
        gc: Duration::from_secs(60),
    };
    let kubelets = Kubelets::with_timings(fx.client.clone(), &fx.prefix, timings);
    kubelets.add_node(fx.node_1()).await.unwrap();
    let run = tokio::spawn(kubelets.clone().run());
    let nodes: Api<Node> = Api::all(fx.client.clone());

    // Not ready: kubelet's reason, and the plugin's own message.
    let node = nodes.get("node-1").await.unwrap();
    let ready = node_condition(&node, "Ready").expect("a Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    let message = ready.message.clone().unwrap_or_default();
    assert!(
        message.contains("NetworkReady=false reason:NetworkPluginNotReady")
            && message.contains("agent socket refused"),
        "{message}"
    );
    assert_eq!(
        kubelets.network_status("node-1").map(|s| s.is_ok()),
        Some(false)
    );

    // A pod bound to the node waits: no CNI ADD, no namespace, Pending,
    // and the NetworkNotReady event kubelet records.
    let pods: Api<Pod> = Api::namespaced(fx.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-1"},
                 "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the pod to wait for the network", || async {
        kubelets
            .waiting_pods("node-1")
            .contains(&"default/web".to_owned())
            .then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(fx.client.clone(), "default");
    let event = eventually("the NetworkNotReady event", || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("NetworkNotReady")
                    && e.involved_object.name.as_deref() == Some("web")
            })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    // Several more status rounds fail, and the pod still has no sandbox.
    let seen = fx.plugin.statuses.load(Ordering::Relaxed);
    eventually("two more STATUS rounds", || async {
        (fx.plugin.statuses.load(Ordering::Relaxed) >= seen + 2).then_some(())
    })
    .await;
    let waiting = pods.get("web").await.unwrap();
    assert_eq!(waiting.spec.unwrap().node_name.as_deref(), Some("node-1"));
    let st = waiting.status.unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert!(st.pod_ips.unwrap_or_default().is_empty());
    assert!(
        fx.plugin.calls.lock().unwrap().is_empty(),
        "CNI ran on a node that is not ready"
    );
    assert!(kubelets.pods().is_empty());
    assert!(
        !netns::list(&fx.prefix).iter().any(|n| n.contains("-p")),
        "a pod namespace was created"
    );

    // The Lease is renewed while the node is not ready: a node that is
    // alive but has no network is NotReady, not gone.
    let leases: Api<Lease> = Api::namespaced(fx.client.clone(), "kube-node-lease");
    let lease = leases.get("node-1").await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = lease.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (owner[0].kind.as_str(), owner[0].name.as_str()),
        ("Node", "node-1")
    );
    let first_renew = time_text(&spec.renew_time);
    assert!(
        first_renew.ends_with('Z') && first_renew.contains('.'),
        "{first_renew}"
    );
    eventually("the lease to be renewed", || async {
        let renewed = time_text(&leases.get("node-1").await.ok()?.spec?.renew_time);
        (renewed > first_renew).then_some(())
    })
    .await;
    // The Ready condition is posted again with a newer heartbeat.
    let first_beat = time_text(&ready.last_heartbeat_time);
    eventually("a newer node heartbeat", || async {
        let n = nodes.get("node-1").await.ok()?;
        let c = node_condition(&n, "Ready")?;
        (time_text(&c.last_heartbeat_time) > first_beat && c.status == "False").then_some(())
    })
    .await;

    // The plugin becomes ready: the node is Ready and the pod runs.
    fx.plugin.not_ready.store(false, Ordering::Relaxed);
    let node = eventually("the node to be Ready", || async {
        let n = nodes.get("node-1").await.ok()?;
        (node_condition(&n, "Ready")?.status == "True").then_some(n)
    })
    .await;
    let ready = node_condition(&node, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        node_condition(&node, "NetworkUnavailable").map(|c| c.status.as_str()),
        Some("True"),
        "the kubelet's status updates left NetworkUnavailable alone"
    );
    let running = eventually("the pod to run", || async {
        let p = pods.get("web").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    assert_eq!(
        running.status.unwrap().pod_ip.as_deref(),
        Some("10.244.1.10")
    );
    assert!(kubelets.waiting_pods("node-1").is_empty());
    assert_eq!(*fx.plugin.calls.lock().unwrap(), vec!["ADD web"]);

    // Removing the node takes its Lease with it.
    kubelets.remove_node("node-1").await.unwrap();
    assert!(leases.get_opt("node-1").await.unwrap().is_none());
    assert!(nodes.get_opt("node-1").await.unwrap().is_none());
    run.abort();
    kubelets.shutdown().await;
    fx.node_ns.delete().await.unwrap();
}
