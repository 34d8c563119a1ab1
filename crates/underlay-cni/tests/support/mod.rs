//! Test and benchmark support: network namespaces made (and always removed)
//! by the test, a "node" namespace with a default route into an upstream
//! namespace (so the proxy-ARP gateway answers), a real agent process in
//! standalone mode on a temporary socket, and a runtime-like executor for
//! the plugin and for conflist chains.
//!
//! Nothing here touches the machine's own network namespace: interfaces,
//! routes and sysctls are only made inside namespaces created here.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// True when the test must be skipped (not root and not required).
pub fn skip_unless_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return false;
    }
    if std::env::var_os("UNDERLAY_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root (network namespaces) and UNDERLAY_REQUIRE_ROOT is set");
    }
    eprintln!("skipping {test}: needs root for network namespaces");
    true
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call.
pub fn unique(tag: &str) -> String {
    format!(
        "udt-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace under /run/netns, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the namespace; the caller judges the result.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    pub fn sysctl(&self, path: &str, value: &str) {
        let out = self.exec(&["sh", "-c", &format!("echo {value} > /proc/sys/{path}")]);
        assert!(
            out.status.success(),
            "sysctl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A node: a namespace that plays the host, with a default route (IPv4 and
/// IPv6) over a veth into an upstream namespace, and forwarding on.
pub struct Node {
    pub ns: Netns,
    pub upstream: Netns,
}

pub const NODE_V4: &str = "192.0.2.1";
pub const UPSTREAM_V4: &str = "192.0.2.2";

impl Node {
    pub fn new() -> Self {
        let ns = Netns::new("node");
        let upstream = Netns::new("up");
        ns.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "downlink",
            "netns",
            &upstream.name,
        ]);
        ns.sysctl("net/ipv6/conf/uplink/accept_dad", "0");
        upstream.sysctl("net/ipv6/conf/downlink/accept_dad", "0");
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink"]);
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "uplink", "nodad"]);
        upstream.ip(&["addr", "add", "192.0.2.2/24", "dev", "downlink"]);
        upstream.ip(&["addr", "add", "2001:db8::2/64", "dev", "downlink", "nodad"]);
        ns.ip(&["link", "set", "uplink", "up"]);
        upstream.ip(&["link", "set", "downlink", "up"]);
        ns.ip(&["route", "add", "default", "via", UPSTREAM_V4]);
        ns.ip(&["-6", "route", "add", "default", "via", "2001:db8::2"]);
        ns.sysctl("net/ipv4/ip_forward", "1");
        ns.sysctl("net/ipv6/conf/all/forwarding", "1");
        Self { ns, upstream }
    }

    /// Host-side interfaces made by the plugin.
    pub fn pod_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("udl"))
            .collect()
    }

    /// After DEL: every host interface the plugin made but `remaining` is
    /// retired — down, in the retired group and carrying no route — unless
    /// already deleted; and the agent deletes them within a few seconds.
    pub fn assert_retired_then(&self, remaining: &[&str]) {
        self.assert_retired(remaining);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut left = self.pod_links();
            left.sort();
            let mut want: Vec<String> = remaining.iter().map(|s| s.to_string()).collect();
            want.sort();
            if left == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not delete the retired interfaces: {left:?}, want {want:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Every host interface the plugin made but `remaining` is retired (or
    /// already deleted).
    pub fn assert_retired(&self, remaining: &[&str]) {
        let group = format!("group {}", underlay_proto::RETIRED_LINK_GROUP);
        for link in self.pod_links() {
            if remaining.contains(&link.as_str()) {
                continue;
            }
            let shown = self
                .ns
                .exec(&["ip", "-d", "-o", "link", "show", "dev", &link]);
            if !shown.status.success() {
                continue; // deleted meanwhile
            }
            let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
            let flags = shown.split('<').nth(1).and_then(|f| f.split('>').next());
            assert!(
                flags.is_some_and(|f| !f.split(',').any(|x| x == "UP")),
                "{link} is up after DEL: {shown}"
            );
            assert!(shown.contains(&group), "{link} is not retired: {shown}");
            for family in ["-4", "-6"] {
                let routes = self.ns.exec(&["ip", family, "route", "show", "dev", &link]);
                let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
                assert!(
                    routes.trim().is_empty(),
                    "{link} still routes after DEL: {routes}"
                );
            }
        }
    }
}

fn target_dir_of_cni() -> PathBuf {
    Path::new(cni_bin())
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

/// The plugin: cargo's build of it, or the one `UNDERLAY_CNI_BIN` names
/// (the benchmark runs the shipped, static build).
pub fn cni_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("UNDERLAY_CNI_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_underlay-cni").to_owned())
    })
}

fn newest_source(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// The agent binary, built next to the plugin when it is missing or older
/// than its sources (cargo builds only this package's binaries for its
/// tests), or the one `UNDERLAY_AGENT_BIN` names.
pub fn agent_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("UNDERLAY_AGENT_BIN") {
                return bin.into();
            }
            let dir = target_dir_of_cni();
            let bin = dir.join("underlay-agent");
            let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            // Any workspace crate may be in the agent's build: a list of
            // them would miss the next one added.
            let sources = newest_source(&crates);
            let built = bin.metadata().and_then(|m| m.modified()).ok();
            if built.is_some_and(|b| b >= sources) {
                return bin;
            }
            // starts: cargo
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args([
                "build",
                "-q",
                "-p",
                "underlay-agent",
                "--bin",
                "underlay-agent",
            ]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
            let st = cmd.status().expect("run cargo build for the agent");
            assert!(st.success(), "building underlay-agent failed");
            bin
        })
        .clone()
}

/// A real agent process in standalone mode.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub cidrs: Vec<String>,
    pub extra: Vec<String>,
    /// The node namespace the agent runs in, as a node's agent runs in
    /// the node's: the plugin wires pods there, and the agent's iptables
    /// rules, ipsets and link deletions are that namespace's.
    pub netns: String,
    /// Whether it enforces policy.
    pub policy: bool,
}

impl Agent {
    pub fn start(node: &Netns, cidrs: &[&str]) -> Self {
        Self::start_with(node, cidrs, &[])
    }

    pub fn start_with(node: &Netns, cidrs: &[&str], extra: &[&str]) -> Self {
        Self::launch(node, cidrs, extra, false)
    }

    /// An agent enforcing policy inside `node`, reading pods and policies
    /// from the API server `kubeconfig` names (policy needs one: without
    /// it the agent refuses to attach rather than run pods open).
    pub fn start_with_policy_in(node: &Netns, cidrs: &[&str], kubeconfig: &Path) -> Self {
        let kubeconfig = kubeconfig.display().to_string();
        Self::launch(node, cidrs, &["--kubeconfig", &kubeconfig], true)
    }

    fn launch(node: &Netns, cidrs: &[&str], extra: &[&str], policy: bool) -> Self {
        let mut a = Self {
            child: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: node.name.clone(),
            policy,
        };
        a.spawn();
        a.wait_ready();
        a
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/agent.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(agent_bin())
            .arg(format!("--policy={}", self.policy))
            .env_remove("KUBECONFIG");
        cmd.arg("--node-name")
            .arg("test-node")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--metrics-addr", "off", "--health-addr", "off"]);
        for c in &self.cidrs {
            cmd.arg("--pod-cidr").arg(c);
        }
        cmd.args(&self.extra);
        // The policy engine reports each sync and its phases at debug.
        cmd.env("RUST_LOG", "info,underlay_policy::engine=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start underlay-agent"));
    }

    /// Waits until the agent answers Status with ready.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = self.status()
                && s.ready
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn status(&self) -> Result<underlay_proto::v1::StatusResponse, String> {
        use underlay_cni::agent::Agent as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            underlay_cni::agent::GrpcAgent::new(self.socket(), Duration::from_secs(5))
                .status()
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// SIGKILL, as a node crash or OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One plugin invocation's environment.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

impl Invocation {
    pub fn new(command: &str, container_id: &str, netns: Option<&Path>) -> Self {
        Self {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.map(Into::into),
            ifname: "eth0".into(),
            args: k8s_args("default", &format!("pod-{container_id}"), container_id),
        }
    }

    pub fn with_command(&self, command: &str) -> Self {
        let mut i = self.clone();
        i.command = command.into();
        i
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("CNI_COMMAND".to_string(), self.command.clone()),
            (
                "CNI_PATH".into(),
                format!("/usr/lib/cni:{}", target_dir_of_cni().display()),
            ),
        ];
        if !self.container_id.is_empty() {
            v.push(("CNI_CONTAINERID".into(), self.container_id.clone()));
        }
        if let Some(ns) = &self.netns {
            v.push(("CNI_NETNS".into(), ns.display().to_string()));
        }
        if !self.ifname.is_empty() {
            v.push(("CNI_IFNAME".into(), self.ifname.clone()));
        }
        if !self.args.is_empty() {
            v.push(("CNI_ARGS".into(), self.args.clone()));
        }
        v
    }
}

/// CNI_ARGS as container runtimes send them.
pub fn k8s_args(namespace: &str, pod: &str, infra: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={infra};K8S_POD_UID=uid-{pod}"
    )
}

/// The plugin's network configuration for `version`.
pub fn conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "underlay",
        "type": "underlay-cni",
        "agentSocket": socket.display().to_string(),
        "mtu": 1500,
    })
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct PluginOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin output is not JSON ({e}): {:?} {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code (panics if the call succeeded).
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a plugin binary inside `node` as a container runtime does.
/// `ip` by its full path: a command named by a bare name whose `PATH` is
/// set anew cannot be started with `posix_spawn`, so the standard library
/// forks this whole process instead, which in a benchmark holding an API
/// server costs more than the plugin (a runtime starts plugins with a
/// vfork-like spawn).
fn ip_program() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("ip"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("ip"))
    })
}

pub fn exec_plugin(node: &Netns, binary: &Path, inv: &Invocation, stdin: &Value) -> PluginOutput {
    // starts: ip
    let mut cmd = Command::new(ip_program());
    cmd.args(["netns", "exec", &node.name]).arg(binary);
    run_plugin(cmd, inv, stdin)
}

/// Runs a plugin binary in the network namespace of the calling thread, as
/// a runtime living on the node starts it: no `ip netns exec` between (see
/// `underlay_netns::run_in` for entering a node's namespace).
pub fn exec_plugin_here(binary: &Path, inv: &Invocation, stdin: &Value) -> PluginOutput {
    // starts: underlay-cni ptp
    run_plugin(Command::new(binary), inv, stdin)
}

fn run_plugin(mut cmd: Command, inv: &Invocation, stdin: &Value) -> PluginOutput {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(inv.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for plugin");
    PluginOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs underlay-cni.
pub fn cni(node: &Netns, inv: &Invocation, stdin: &Value) -> PluginOutput {
    exec_plugin(node, Path::new(cni_bin()), inv, stdin)
}

fn plugin_path(kind: &str) -> PathBuf {
    if kind == "underlay-cni" {
        PathBuf::from(cni_bin())
    } else {
        Path::new("/usr/lib/cni").join(kind)
    }
}

/// Runs a conflist as a runtime does: ADD and CHECK in order, DEL in
/// reverse, each plugin given the list's cniVersion and name, the previous
/// result (the cached ADD result for CHECK and DEL), and the runtimeConfig
/// keys its capabilities ask for. Returns the final result of ADD.
pub fn exec_chain(
    node: &Netns,
    list: &Value,
    inv: &Invocation,
    runtime_config: &Value,
    cached: Option<&Value>,
) -> Result<Option<Value>, PluginOutput> {
    let plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
    let order: Vec<Value> = if inv.command == "DEL" {
        plugins.into_iter().rev().collect()
    } else {
        plugins
    };
    let mut prev = cached.cloned();
    for p in order {
        let mut conf = p.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        if let Some(caps) = p["capabilities"].as_object() {
            let mut rc = serde_json::Map::new();
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = runtime_config.get(cap)
                {
                    rc.insert(cap.clone(), v.clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(prev) = &prev {
            conf["prevResult"] = prev.clone();
        }
        let out = exec_plugin(
            node,
            &plugin_path(p["type"].as_str().unwrap_or("")),
            inv,
            &conf,
        );
        if out.code != 0 {
            return Err(out);
        }
        if inv.command == "ADD" {
            prev = Some(out.json());
        }
    }
    Ok(if inv.command == "ADD" { prev } else { None })
}

/// Runs `f` on a thread inside the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    underlay_netns::run_in(path, f).expect("run inside the network namespace")
}

/// Pings `addr` from inside `ns`; true when it answered.
pub fn ping(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "3", addr])
        .status
        .success()
}

/// The pod's IPv4 and IPv6 address from an ADD result.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A kubeconfig that reaches `api` from inside the node namespace `ns`
/// (through a relay listening there), kept with the relay alive.
pub struct NodeKubeconfig {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    _relay: underlay_lab::relay::Relay,
}

pub fn kubeconfig_in(api: &underlay_lab::apiserver::Handle, ns: &Netns) -> NodeKubeconfig {
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
