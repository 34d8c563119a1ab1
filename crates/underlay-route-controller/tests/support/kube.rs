//! Kubernetes-side helpers: nodes as a kubelet registers them, waiting for
//! conditions, an API server that can be stopped and started again on the
//! same address with the same contents, and the controller binary run as a
//! process with its health endpoints read over real HTTP.

use super::arm::{ArmFixture, LOCATION, RESOURCE_GROUP, SUBSCRIPTION, TABLE};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig, Handle as ApiHandle};
use underlay_lab::kubelet::node_condition;

/// Creates a Node and reports what a kubelet reports: its addresses and its
/// own conditions.
pub async fn add_node(client: &kube::Client, name: &str, ip: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
    }))
    .expect("node object");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node created");
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
        .expect("node status patched");
}

/// Polls `f` until it holds; fails the test after 30 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node's `spec.podCIDRs`.
pub async fn pod_cidrs(client: &kube::Client) -> Vec<(String, Vec<String>)> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .expect("nodes listed")
        .items
        .into_iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.spec.and_then(|s| s.pod_cidrs).unwrap_or_default(),
            )
        })
        .collect()
}

/// `(status, reason)` of a node condition.
pub fn condition(node: &Node, type_: &str) -> Option<(String, String)> {
    node_condition(node, type_).map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Whether `node` has `NetworkUnavailable=False` (`RouteCreated`).
pub async fn route_created(client: &kube::Client, node: &str) -> bool {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.get_opt(node).await {
        Ok(Some(n)) => {
            condition(&n, "NetworkUnavailable") == Some(("False".into(), "RouteCreated".into()))
        }
        _ => false,
    }
}

/// An embedded API server that can go away and come back on the same
/// address, with the same token and contents (kept in a snapshot file), as
/// a restarted kube-apiserver does. Plain HTTP, so a client made before a
/// restart still trusts the server after it.
pub struct RestartableApi {
    handle: Option<ApiHandle>,
    addr: SocketAddr,
    token: String,
    snapshot: PathBuf,
    kubeconfig: PathBuf,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

impl RestartableApi {
    pub async fn start() -> RestartableApi {
        let dir = tempfile::tempdir().expect("temporary directory");
        let snapshot = dir.path().join("apiserver.json");
        let kubeconfig = dir.path().join("kubeconfig");
        let token = format!("restartable-{}", std::process::id());
        let handle = ApiServer::start(ApiConfig {
            tls: false,
            token: Some(token.clone()),
            snapshot: Some(snapshot.clone()),
            kubeconfig_out: Some(kubeconfig.clone()),
            ..ApiConfig::default()
        })
        .await
        .expect("api server starts");
        let client = handle.client().expect("client for the api server");
        RestartableApi {
            addr: handle.addr(),
            handle: Some(handle),
            token,
            snapshot,
            kubeconfig,
            client,
            _dir: dir,
        }
    }

    /// A client that keeps working across restarts.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn handle(&self) -> &ApiHandle {
        self.handle.as_ref().expect("api server running")
    }

    /// The snapshot holding the server's contents while it is down.
    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }

    /// Stops serving (open watches end, connections are refused) after
    /// writing the contents to the snapshot.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.expect("api server stops cleanly");
        }
    }

    /// Serves again on the same address from the snapshot.
    pub async fn restart(&mut self) {
        assert!(self.handle.is_none(), "stop the api server first");
        let mut last = None;
        // The port was ours a moment ago; a freshly closed socket can take a
        // moment to release it.
        for _ in 0..50 {
            match ApiServer::start(ApiConfig {
                listen: self.addr,
                tls: false,
                token: Some(self.token.clone()),
                snapshot: Some(self.snapshot.clone()),
                ..ApiConfig::default()
            })
            .await
            {
                Ok(h) => {
                    self.handle = Some(h);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("api server cannot listen on {} again: {last:?}", self.addr);
    }
}

/// The controller binary running as a process, logging to a file.
pub struct Binary {
    child: tokio::process::Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("bound address").port()
}

impl Binary {
    /// Starts the controller against `kubeconfig` and the fixture's ARM
    /// service, serving metrics and health on one port; `extra` adds flags.
    pub fn spawn(kubeconfig: &Path, arm: &ArmFixture, extra: &[&str]) -> Binary {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cloud = dir.path().join("azure.json");
        std::fs::write(
            &cloud,
            json!({"cloud": "AzurePublicCloud", "tenantId": "t", "subscriptionId": SUBSCRIPTION,
                   "resourceGroup": RESOURCE_GROUP, "routeTableName": TABLE,
                   "location": LOCATION, "aadClientSecret": "never-logged", "aadClientId": "x"})
            .to_string(),
        )
        .expect("cloud config written");
        let log = dir.path().join("controller.log");
        let port = free_port();
        let defaults = [
            ("--cluster-cidr", "10.244.0.0/16"),
            ("--route-batch-interval", "100ms"),
            ("--arm-poll-interval", "20ms"),
            ("--leader-elect-lease-duration", "2s"),
            ("--leader-elect-renew-deadline", "1500ms"),
            ("--leader-elect-retry-period", "200ms"),
            ("--log-format", "json"),
        ];
        let mut args: Vec<&str> = vec!["--allocate-node-cidrs"];
        for (flag, value) in defaults {
            // A flag given in `extra` replaces the default.
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_underlay-route-controller"))
            .args(args)
            .args(extra)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cloud-config")
            .arg(&cloud)
            .arg("--arm-endpoint")
            .arg(arm.arm.endpoint())
            .arg("--arm-token-file")
            .arg(&arm.token_path)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--health-addr")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("controller binary starts");
        Binary {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// `(status code, body)` of a GET, or `None` while nothing listens.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    /// `/readyz` as `(status code, body)`; `(0, "")` while nothing listens.
    pub async fn readyz(&self) -> (u16, String) {
        self.get("/readyz").await.unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Whether the instance holds the lease, from its leader gauge (the
    /// sample line; the gauge's HELP text also starts with a 1).
    pub async fn leading(&self) -> bool {
        self.metrics()
            .await
            .lines()
            .any(|l| l.trim() == "underlay_route_controller_leader 1")
    }

    /// Kills the process (no lease release) and returns its logs.
    pub async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.logs()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One HTTP/1.1 GET on 127.0.0.1.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
