//! The kubelet emulator against the embedded API server, with a recording
//! CNI plugin: node registration like a kubelet, scheduling, the pod
//! sandbox (namespace, CNI ADD, servers, status) and deletion (CNI DEL,
//! namespace removed, deletion confirmed); the runtime's network status
//! (CNI STATUS) gating pod sandboxes and the node's `Ready`; the node Lease
//! and status heartbeats. Needs root (pod namespaces).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use underlay_lab::apiserver::{ApiServer, Config};
use underlay_lab::cni::{ExecOutput, Invocation, NetworkConfigList, PluginExec, Runtime};
use underlay_lab::kubelet::{Kubelets, NodeRuntime, Timings};
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
            let ready = !me.not_ready.load(Ordering::Relaxed);
            let stdout = if ready {
                Vec::new()
            } else {
                serde_json::to_vec(&json!({"cniVersion": "1.1.0", "code": 50,
                    "msg": "the plugin cannot add pods: agent socket refused"}))?
            };
            return Ok(ExecOutput {
                success: ready,
                stdout,
                stderr: Vec::new(),
            });
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
        Ok(ExecOutput {
            success: true,
            stdout,
            stderr: Vec::new(),
        })
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
    if !netns::require_root("the_kubelet_registers_its_node_and_runs_and_removes_pods_through_cni")
    {
        return;
    }
    let server = ApiServer::start(Config::default()).await.unwrap();
    let client = server.client().unwrap();
    let prefix = netns::unique_prefix();
    let node_ns = Netns::create(&format!("{prefix}-n1")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("fake"), "").unwrap();
    let plugin = Arc::new(Plugin::default());
    let runtime = Runtime {
        config: NetworkConfigList::parse(
            "test",
            br#"{"cniVersion":"1.1.0","name":"lab","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap(),
        bin_dirs: vec![bin],
        cache_dir: dir.path().join("cache"),
        exec: Box::new(Shared(plugin.clone())),
    };
    let kubelets = Kubelets::new(client.clone(), &prefix);
    let net = NodeNet {
        name: "node-1".into(),
        index: 1,
        netns: node_ns.name().into(),
        ipv4: "10.0.0.4".parse().unwrap(),
        ipv6: None,
        router_if: "vn1".into(),
    };
    kubelets
        .add_node(NodeRuntime { net, cni: runtime })
        .await
        .unwrap();
    let run = tokio::spawn(kubelets.clone().run());

    let node = Api::<Node>::all(client.clone())
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
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
    assert!(netns::list(&prefix).contains(&info.netns));
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
        !netns::list(&prefix).contains(&info.netns),
        "the pod namespace was removed"
    );
    assert_eq!(*plugin.calls.lock().unwrap(), vec!["ADD web", "DEL web"]);

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
    node_ns.delete().await.unwrap();
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

fn condition(node: &Node, type_: &str) -> Option<k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
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
    if !netns::require_root(test) {
        return;
    }
    let server = ApiServer::start(Config::default()).await.unwrap();
    let client = server.client().unwrap();
    let prefix = netns::unique_prefix();
    let node_ns = Netns::create(&format!("{prefix}-n1")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plugin = Arc::new(Plugin::default());
    plugin.not_ready.store(true, Ordering::Relaxed);
    // Kubelet's periods scaled down so that the test sees several rounds.
    let timings = Timings {
        runtime_status: Duration::from_millis(200),
        lease_renew: Duration::from_millis(500),
        node_status: Duration::from_millis(500),
        retry: Duration::from_millis(200),
        gc: Duration::from_secs(60),
    };
    let kubelets = Kubelets::with_timings(client.clone(), &prefix, timings);
    let net = NodeNet {
        name: "node-1".into(),
        index: 1,
        netns: node_ns.name().into(),
        ipv4: "10.0.0.4".parse().unwrap(),
        ipv6: None,
        router_if: "vn1".into(),
    };
    kubelets
        .add_node(NodeRuntime {
            net,
            cni: runtime(&plugin, dir.path()),
        })
        .await
        .unwrap();
    let run = tokio::spawn(kubelets.clone().run());
    let nodes: Api<Node> = Api::all(client.clone());

    // Not ready: kubelet's reason, and the plugin's own message.
    let node = nodes.get("node-1").await.unwrap();
    let ready = condition(&node, "Ready").expect("a Ready condition");
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
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
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
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
    let seen = plugin.statuses.load(Ordering::Relaxed);
    eventually("two more STATUS rounds", || async {
        (plugin.statuses.load(Ordering::Relaxed) >= seen + 2).then_some(())
    })
    .await;
    let waiting = pods.get("web").await.unwrap();
    assert_eq!(waiting.spec.unwrap().node_name.as_deref(), Some("node-1"));
    let st = waiting.status.unwrap_or_default();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    assert!(st.pod_ips.unwrap_or_default().is_empty());
    assert!(
        plugin.calls.lock().unwrap().is_empty(),
        "CNI ran on a node that is not ready"
    );
    assert!(kubelets.pods().is_empty());
    assert!(
        !netns::list(&prefix).iter().any(|n| n.contains("-p")),
        "a pod namespace was created"
    );

    // The Lease is renewed while the node is not ready: a node that is
    // alive but has no network is NotReady, not gone.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
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
        let c = condition(&n, "Ready")?;
        (time_text(&c.last_heartbeat_time) > first_beat && c.status == "False").then_some(())
    })
    .await;

    // The plugin becomes ready: the node is Ready and the pod runs.
    plugin.not_ready.store(false, Ordering::Relaxed);
    let node = eventually("the node to be Ready", || async {
        let n = nodes.get("node-1").await.ok()?;
        (condition(&n, "Ready")?.status == "True").then_some(n)
    })
    .await;
    let ready = condition(&node, "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    assert_eq!(
        condition(&node, "NetworkUnavailable").map(|c| c.status),
        Some("True".to_owned()),
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
    assert_eq!(*plugin.calls.lock().unwrap(), vec!["ADD web"]);

    // Removing the node takes its Lease with it.
    kubelets.remove_node("node-1").await.unwrap();
    assert!(leases.get_opt("node-1").await.unwrap().is_none());
    assert!(nodes.get_opt("node-1").await.unwrap().is_none());
    run.abort();
    kubelets.shutdown().await;
    node_ns.delete().await.unwrap();
}
