//! The kubelet emulator against the embedded API server, with a recording
//! CNI plugin: node registration like a kubelet, scheduling, the pod
//! sandbox (namespace, CNI ADD, servers, status) and deletion (CNI DEL,
//! namespace removed, deletion confirmed). Needs root (pod namespaces).

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use underlay_lab::apiserver::{ApiServer, Config};
use underlay_lab::cni::{ExecOutput, Invocation, NetworkConfigList, PluginExec, Runtime};
use underlay_lab::kubelet::{Kubelets, NodeRuntime};
use underlay_lab::netns::{self, Netns};
use underlay_lab::traffic::{self, Protocol};
use underlay_lab::vnet::NodeNet;

/// Answers ADD with the next address of 10.244.1.0/24 and records commands.
#[derive(Default)]
struct Plugin {
    next: AtomicU32,
    calls: Mutex<Vec<String>>,
}

struct Shared(Arc<Plugin>);

#[async_trait::async_trait]
impl PluginExec for Shared {
    async fn exec(&self, inv: &Invocation) -> std::io::Result<ExecOutput> {
        let me = &self.0;
        let command = inv.env.get("CNI_COMMAND").cloned().unwrap_or_default();
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
