//! The agent image at work: its entrypoint and agent, run from the unpacked
//! root filesystem as the DaemonSet runs them (the image's entrypoint,
//! command and environment, the ConfigMap's settings, the container's host
//! paths on a read-only root, in-cluster credentials), inside a node
//! namespace made for the test, program a NetworkPolicy and delete the
//! conntrack entry of a connection that policy newly denies. Every tool the
//! agent starts on the way (iptables of the backend the entrypoint picks,
//! ipset, conntrack) is the image's own; one missing, or a write outside
//! the mounted paths, makes a step fail.
//!
//! Topology: the node namespace holds the embedded API server (on its
//! 127.0.0.1), the agent and the gateway address 169.254.1.1 the pod routes
//! through; the pod namespace holds the pod's address, wired the way the
//! CNI plugin wires it. The connection goes from the pod to a listener on
//! 169.254.1.1, so the node's conntrack table has an entry whose source is
//! a pod, not the node; a policy denying the pod's egress must remove it.
//!
//! [`run`] works on a thread that entered the node namespace: the API
//! server's listener, the Kubernetes client's connections and the listener
//! of the test connection are all opened there. Processes are started with
//! `ip netns exec` all the same, so none depends on the thread it starts
//! from.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use underlay_lab::apiserver::{ApiServer, Config, Handle};
use underlay_lab::netns::Netns;
use underlay_proto::v1;
use underlay_proto::v1::agent_client::AgentClient;

use super::agent_support::{create, try_client};

const NODE: &str = "worker-1";
const POD_CIDR: &str = "10.244.5.0/24";
/// The agent's service account namespace (deploy/base).
const SYSTEM_NAMESPACE: &str = "underlay-system";
/// The pod's gateway; the node answers for it.
const GATEWAY: &str = "169.254.1.1";
/// Where the kubelet mounts the service account's token and CA.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Runs as PID 1 of the container's PID namespace, in its own mount
/// namespace: mounts the root filesystem read-only
/// (`readOnlyRootFilesystem`), `/proc`, and each `SOURCE TARGET rw|ro`
/// triple before `--`, then chroots and runs what follows.
const CONTAINER: &str = r#"set -eu
root=$1
shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
while [ "$1" != -- ]; do
    mount --bind "$1" "$root$2"
    if [ "$3" = ro ]; then mount -o remount,bind,ro "$root$2"; fi
    shift 3
done
shift
exec chroot "$root" "$@"
"#;

/// How the image is run: its root filesystem, the process its config
/// starts (`process.args` and `process.env` of the unpacked bundle), the
/// DaemonSet's ConfigMap and the agent container's host paths.
pub struct Image {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub settings: Map<String, Value>,
    pub mounts: Vec<Mount>,
}

/// A `hostPath` volume of the agent container.
pub struct Mount {
    /// Where the container sees it.
    pub path: String,
    /// The node's path.
    pub host_path: String,
    /// A file (`FileOrCreate`) rather than a directory.
    pub file: bool,
}

impl Image {
    fn setting(&self, key: &str) -> &str {
        self.settings[key]
            .as_str()
            .unwrap_or_else(|| panic!("the agent ConfigMap has no {key}"))
    }

    /// Where the container's `path` is on the machine: under the host
    /// path of the mount holding it (the node's root is `node_root`).
    fn host_path(&self, node_root: &Path, path: &str) -> PathBuf {
        let (mount, rest) = self
            .mounts
            .iter()
            .find_map(|m| Some((m, path.strip_prefix(&m.path)?.strip_prefix('/')?)))
            .unwrap_or_else(|| panic!("{path} is on no mount of the agent container"));
        node_root
            .join(mount.host_path.trim_start_matches('/'))
            .join(rest)
    }
}

/// The agent's process tree, killed on drop: `unshare --kill-child` takes
/// the PID namespace the agent is PID 1 of with it. A failing test prints
/// the agent's log.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the agent's log ---\n{}", self.log());
        }
    }
}

/// Runs the scenario; call it on a thread inside the node namespace.
/// `scratch` holds the agent's log and stands in for the node's root
/// filesystem (its host paths).
pub fn run(image: &Image, node: &Netns, pod: &Netns, scratch: &Path) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(scenario(image, node, pod, scratch));
}

async fn scenario(image: &Image, node: &Netns, pod: &Netns, scratch: &Path) {
    let api = ApiServer::start(Config::default())
        .await
        .expect("start the API server in the node namespace");
    let service_account = service_account(scratch, &api);
    let kube = api.client().expect("a client of the API server");
    seed(&kube).await;
    let log = scratch.join("agent.log");
    let mut agent = start_agent(image, node, scratch, &service_account, api.addr(), &log);
    let socket = image.host_path(scratch, image.setting("UNDERLAY_SOCKET"));
    let mut grpc = ready_agent(&socket, &mut agent).await;

    let host_if = underlay_cni::names::host_interface("x", "a", "c1", "eth0");
    let ip = attach(&mut grpc, &host_if).await;
    pod_running(&kube, ip).await;
    wire(node, pod, &host_if, ip).await;
    let (port, _connection) = connect_pod_to_node(pod, ip);
    let flow = format!("tcp {ip} -> {GATEWAY}:{port}");
    assert_eq!(
        conntrack_entries(node, ip, port),
        1,
        "no conntrack entry for {flow} before the policy"
    );

    deny_egress(&kube).await;
    wait_for("the policy to be programmed", &mut agent, async || {
        policies(&mut grpc).await == Some(1)
    })
    .await;
    wait_for(
        "the agent to delete the entry of the denied flow",
        &mut agent,
        async || conntrack_entries(node, ip, port) == 0,
    )
    .await;
    let removed = metric(image, node, "underlay_policy_conntrack_removed_total");
    assert!(removed >= 1.0, "conntrack_removed_total {removed}");
    check_rules(node, &backend(&agent), &host_if);
    drop(agent);
    api.shutdown().await.expect("stop the API server");
}

/// The files an in-cluster client reads (the API server's token and CA),
/// in the directory the kubelet mounts at [`SERVICE_ACCOUNT`].
fn service_account(scratch: &Path, api: &Handle) -> PathBuf {
    let dir = scratch.join("serviceaccount");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), api.token()).unwrap();
    std::fs::write(dir.join("ca.crt"), api.ca_pem().expect("a TLS API server")).unwrap();
    std::fs::write(dir.join("namespace"), SYSTEM_NAMESPACE).unwrap();
    dir
}

/// The node with its pod CIDR (as the route controller leaves it), the
/// pod's namespace and the pod, scheduled on the node.
async fn seed(kube: &kube::Client) {
    create(
        &Api::<Node>::all(kube.clone()),
        json!({"metadata": {"name": NODE},
               "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}}),
    )
    .await;
    create(
        &Api::<Namespace>::all(kube.clone()),
        json!({"metadata": {"name": "x"}}),
    )
    .await;
    create(
        &Api::<Pod>::namespaced(kube.clone(), "x"),
        json!({"metadata": {"name": "a", "labels": {"pod": "a"}},
               "spec": {"nodeName": NODE,
                        "containers": [{"name": "c", "image": "busybox:1"}]}}),
    )
    .await;
}

/// The image's process with the DaemonSet's environment and host paths,
/// chrooted into the read-only root filesystem with PID and mount
/// namespaces of its own (as a container runtime starts it), inside the
/// node namespace.
fn start_agent(
    image: &Image,
    node: &Netns,
    scratch: &Path,
    service_account: &Path,
    api: SocketAddr,
    log: &Path,
) -> Agent {
    let mut volumes = vec![(service_account.to_path_buf(), SERVICE_ACCOUNT, "ro")];
    for m in &image.mounts {
        let host = scratch.join(m.host_path.trim_start_matches('/'));
        if m.file {
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::File::create(&host).unwrap();
        } else {
            std::fs::create_dir_all(&host).unwrap();
        }
        volumes.push((host, m.path.as_str(), "rw"));
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.name()])
        .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
        .args(["sh", "-c", CONTAINER, "container"])
        .arg(&image.rootfs);
    for (host, path, mode) in &volumes {
        mount_point(&image.rootfs, path, host.is_file());
        cmd.arg(host).arg(path).arg(mode);
    }
    cmd.arg("--").args(&image.args).env_clear();
    for kv in &image.env {
        let (k, v) = kv.split_once('=').expect("KEY=VALUE in the image's env");
        cmd.env(k, v);
    }
    for (k, v) in &image.settings {
        cmd.env(k, v.as_str().expect("ConfigMap values are strings"));
    }
    let out = std::fs::File::create(log).unwrap();
    cmd.env("NODE_NAME", NODE)
        .env("KUBERNETES_SERVICE_HOST", api.ip().to_string())
        .env("KUBERNETES_SERVICE_PORT", api.port().to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    Agent {
        child: cmd.spawn().expect("start the agent from the image"),
        log: log.to_path_buf(),
    }
}

/// Creates the mount point of `path` in the root filesystem, as a container
/// runtime does; none of its directories may be a symbolic link (one would
/// lead out of the root filesystem).
fn mount_point(rootfs: &Path, path: &str, file: bool) {
    let target = rootfs.join(path.trim_start_matches('/'));
    for dir in target.ancestors().take_while(|d| *d != rootfs) {
        assert!(!dir.is_symlink(), "{} is a symbolic link", dir.display());
    }
    if file {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::File::create(&target).unwrap();
    } else {
        std::fs::create_dir_all(&target).unwrap();
    }
}

/// The agent's gRPC client, once the agent reports ready (it has the
/// node's pod CIDR and its dataplane is set up).
async fn ready_agent(socket: &Path, agent: &mut Agent) -> AgentClient<tonic::transport::Channel> {
    let mut ready = None;
    wait_for("the agent to be ready", agent, async || {
        let Ok(mut c) = try_client(socket).await else {
            return false;
        };
        let up = c
            .status(v1::StatusRequest {})
            .await
            .is_ok_and(|s| s.into_inner().ready);
        if up {
            ready = Some(c);
        }
        up
    })
    .await;
    ready.expect("a ready agent")
}

/// `Attach` as the CNI plugin calls it; returns the pod's IPv4 address.
async fn attach(grpc: &mut AgentClient<tonic::transport::Channel>, host_if: &str) -> IpAddr {
    let got = grpc
        .attach(super::agent_support::attach_x_a(host_if))
        .await
        .expect("attach x/a")
        .into_inner();
    assert!(got.policy_programmed, "{got:?}");
    let address = &got.ips.first().expect("an address for x/a").address;
    address
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{address} is no address"))
}

/// The pod's status as the kubelet writes it once the sandbox is up.
async fn pod_running(kube: &kube::Client, ip: IpAddr) {
    Api::<Pod>::namespaced(kube.clone(), "x")
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Running", "podIP": ip.to_string(),
                                            "podIPs": [{"ip": ip.to_string()}]}}),
            ),
        )
        .await
        .expect("pod status");
}

/// The pod's veth as the CNI plugin wires it; the node owns the gateway
/// address, so it answers the pod's ARP for it and accepts the connection.
async fn wire(node: &Netns, pod: &Netns, host_if: &str, ip: IpAddr) {
    let IpAddr::V4(ip) = ip else {
        panic!("{ip} is not IPv4");
    };
    underlay_lab::vnet::plug_pod(node, pod, host_if, ip)
        .await
        .expect("wire the pod");
    node.ip_batch(&[format!("addr add {GATEWAY}/32 dev lo")])
        .await
        .expect("the gateway address");
}

/// An established TCP connection from the pod to the node: the listener's
/// port and both ends, which keep it open.
fn connect_pod_to_node(pod: &Netns, ip: IpAddr) -> (u16, (TcpStream, TcpStream)) {
    let listener = TcpListener::bind((GATEWAY, 0)).expect("listen on the gateway address");
    let to = listener.local_addr().unwrap();
    let mut client = pod
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .expect("enter the pod namespace")
        .expect("the pod connects to the node");
    let (mut server, peer) = listener.accept().expect("accept the pod's connection");
    assert_eq!(peer.ip(), ip, "the connection does not come from the pod");
    client.write_all(b"x").unwrap();
    let mut byte = [0u8];
    server.read_exact(&mut byte).unwrap();
    (to.port(), (client, server))
}

/// The node's conntrack entries of TCP from `src` to the gateway's `port`.
fn conntrack_entries(node: &Netns, src: IpAddr, port: u16) -> usize {
    let out = super::run(
        Command::new("ip")
            .args(["netns", "exec", node.name(), "conntrack", "-L", "-p", "tcp"])
            .args(["--orig-src", &src.to_string(), "--orig-dst", GATEWAY])
            .args(["--dport", &port.to_string()]),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("src={src} ")))
        .count()
}

/// A policy selecting the pod with no egress rule: all its egress denied.
async fn deny_egress(kube: &kube::Client) {
    create(
        &Api::<NetworkPolicy>::namespaced(kube.clone(), "x"),
        json!({"metadata": {"name": "deny-egress"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "policyTypes": ["Egress"]}}),
    )
    .await;
}

async fn policies(grpc: &mut AgentClient<tonic::transport::Channel>) -> Option<u64> {
    let status = grpc.status(v1::StatusRequest {}).await.ok()?.into_inner();
    let policy = status.policy?;
    assert_eq!(policy.last_error, "", "the agent reports a policy error");
    Some(policy.policies)
}

/// Polls `done` every 50 ms until it holds; fails when the agent exits or
/// after 60 s (an agent that has not got there by then is stuck, not slow).
async fn wait_for(what: &str, agent: &mut Agent, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        if let Some(status) = agent.child.try_wait().expect("poll the agent") {
            panic!("the agent exited with {status} while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The iptables backend the entrypoint chose, from its log line.
fn backend(agent: &Agent) -> String {
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("iptables backend chosen"))
        .unwrap_or_else(|| panic!("the entrypoint logged no backend:\n{log}"));
    let v: Value = serde_json::from_str(line).expect("the entrypoint logs JSON");
    v["fields"]["mode"].as_str().expect("a mode").to_string()
}

/// The node's filter table, read with the machine's own tool of the
/// backend the agent wrote to, has the pod's egress chain isolating it:
/// the policy has no egress rule, so the chain allows nothing and ends
/// with the drop.
fn check_rules(node: &Netns, backend: &str, host_if: &str) {
    let save = match backend {
        "nft" => "iptables-nft-save",
        "legacy" => "iptables-legacy-save",
        other => panic!("unknown backend {other}"),
    };
    let out = super::run(
        Command::new("ip")
            .args(["netns", "exec", node.name()])
            // starts: iptables-nft-save iptables-legacy-save
            .arg(save)
            .args(["-t", "filter"]),
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    let pod_chain = format!("UDL-E-{host_if}");
    assert!(
        rules.contains(&format!(":{pod_chain} ")),
        "no egress chain of the pod in\n{rules}"
    );
    let chain: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with(&format!("-A {pod_chain} ")))
        .collect();
    assert!(
        chain.last().is_some_and(|l| l.ends_with("-j DROP"))
            && !chain
                .iter()
                .any(|l| l.contains("UDL-ALLOW") || l.contains("-j UDL-PE-")),
        "the pod's egress chain does not isolate it in\n{rules}"
    );
}

/// One sample of the agent's `/metrics` (on the ConfigMap's address, in
/// the node namespace).
fn metric(image: &Image, node: &Netns, name: &str) -> f64 {
    let port: SocketAddr = image
        .setting("UNDERLAY_METRICS_ADDR")
        .parse()
        .expect("a metrics address");
    let text = node
        .enter(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port.port()))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .expect("enter the node namespace")
        .expect("scrape the agent's metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}
