//! The agent binary against the lab's embedded Kubernetes API server over
//! real HTTPS: it waits for its Node's podCIDRs (Status and /readyz say
//! why), then serves Attach from them; metrics and health over HTTP; the
//! socket is private. A Node deleted and registered again with another
//! pod CIDR moves allocation to the new range, and the agent reports it.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use underlay_lab::apiserver::{ApiServer, Config};
use underlay_proto::v1;

mod support;
use support::{Killed, client, ready_client, wait_for, wait_ready};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// The embedded API server and a kubeconfig for it in a temporary
/// directory (which the agent's files share).
async fn api_server() -> (underlay_lab::apiserver::Handle, tempfile::TempDir, PathBuf) {
    let api = ApiServer::start(Config::default())
        .await
        .expect("start the API server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    (api, dir, kubeconfig)
}

/// The agent binary for node worker-1 against the API server.
fn start_agent(
    kubeconfig: &Path,
    socket: &Path,
    state: &Path,
    metrics_port: u16,
    health: &str,
) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_underlay-agent"))
            .args(["--node-name", "worker-1", "--policy=false"])
            .args(["--log-format", "json"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(["--health-addr", health])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_attach_once_its_node_has_pod_cidrs() {
    let (api, dir, kubeconfig) = api_server().await;
    let nodes: Api<Node> = Api::all(api.client().unwrap());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();

    let socket: PathBuf = dir.path().join("sub/dir/agent.sock");
    let (metrics_port, health_port) = (free_port(), free_port());
    let _agent = start_agent(
        &kubeconfig,
        &socket,
        &dir.path().join("state"),
        metrics_port,
        &format!("127.0.0.1:{health_port}"),
    );
    wait_for("the socket", async || socket.exists()).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut c = client(&socket).await;

    // Not ready while the Node has no podCIDRs, and says so.
    let st = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(!st.ready);
    assert!(st.reason.contains("worker-1"), "{}", st.reason);
    wait_for("/healthz", async || {
        http_get(health_port, "/healthz").0 == 200
    })
    .await;
    assert_eq!(http_get(health_port, "/readyz").0, 503);
    let attach = v1::AttachRequest {
        key: Some(v1::AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }),
        host_interface: "udl00000000001".into(),
        ..Default::default()
    };
    let err = c.attach(attach.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    // The route controller's patch arrives: the agent becomes ready.
    nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"podCIDR": "10.244.5.0/24",
                "podCIDRs": ["10.244.5.0/24", "fd00:10:244:5::/64"]}})),
        )
        .await
        .unwrap();
    wait_ready(&mut c).await;
    let got = c.attach(attach).await.unwrap().into_inner();
    assert_eq!(got.ips.len(), 2);
    assert!(got.ips[0].address.starts_with("10.244.5."), "{got:?}");
    assert!(got.ips[1].address.starts_with("fd00:10:244:5::"), "{got:?}");
    assert_eq!(got.routes[0].gateway, "169.254.1.1");

    assert_eq!(http_get(health_port, "/readyz").0, 200);
    let (code, metrics) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("underlay_agent_allocations_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("underlay_agent_pool_capacity_addresses{family=\"Ipv4\"} 254"),
        "{metrics}"
    );
    assert!(
        metrics.contains("underlay_agent_rpc_errors_total{rpc=\"Attach\",code=\"Unavailable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("underlay_agent_rpc_duration_seconds_count{rpc=\"Attach\"} 2"),
        "{metrics}"
    );
    let st = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.node_name, "worker-1");
    assert_eq!(st.pools.len(), 2);
    assert_eq!(st.pools[0].allocated, 1);
}

fn attach_request(id: &str) -> v1::AttachRequest {
    v1::AttachRequest {
        key: Some(v1::AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }),
        host_interface: format!("udl{id}"),
        ..Default::default()
    }
}

fn node_with_cidr(cidr: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registered_again_with_a_new_pod_cidr_moves_allocation_there() {
    let (api, dir, kubeconfig) = api_server().await;
    let kube = api.client().unwrap();
    let nodes: Api<Node> = Api::all(kube.clone());
    nodes
        .create(&PostParams::default(), &node_with_cidr("10.244.5.0/24"))
        .await
        .unwrap();
    let socket: PathBuf = dir.path().join("agent.sock");
    let metrics_port = free_port();
    let _agent = start_agent(
        &kubeconfig,
        &socket,
        &dir.path().join("state"),
        metrics_port,
        "off",
    );
    let mut c = ready_client(&socket).await;
    let old = c.attach(attach_request("c1")).await.unwrap().into_inner();
    assert!(old.ips[0].address.starts_with("10.244.5."), "{old:?}");

    // The Node goes away and comes back with another range.
    nodes
        .delete("worker-1", &DeleteParams::default())
        .await
        .unwrap();
    nodes
        .create(&PostParams::default(), &node_with_cidr("10.244.9.0/24"))
        .await
        .unwrap();
    wait_for("Status to show the new pod cidr", async || {
        c.status(v1::StatusRequest {}).await.is_ok_and(|s| {
            let s = s.into_inner();
            s.ready
                && s.pools
                    .iter()
                    .map(|p| p.cidr.as_str())
                    .eq(["10.244.9.0/24"])
        })
    })
    .await;
    let new = c.attach(attach_request("c2")).await.unwrap().into_inner();
    assert!(new.ips[0].address.starts_with("10.244.9."), "{new:?}");
    // The pod in the old range keeps its address until it is deleted.
    let kept = c
        .check(v1::CheckRequest {
            key: attach_request("c1").key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.ips, old.ips);
    let (_, metrics) = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("underlay_agent_pod_cidr_changes_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("underlay_agent_endpoints_outside_pod_cidrs 1"),
        "{metrics}"
    );
    let released = c
        .detach(v1::DetachRequest {
            key: attach_request("c1").key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    let (_, metrics) = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("underlay_agent_endpoints_outside_pod_cidrs 0"),
        "{metrics}"
    );

    // And a Kubernetes Event on the Node says so.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(kube, "default");
    wait_for("the PodCIDRsChanged event", async || {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("PodCIDRsChanged")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("worker-1")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("10.244.9.0/24"))
            })
        })
    })
    .await;
}
