//! The whole stack on one machine: starts the embedded API server (or uses
//! one given by kubeconfig), the ARM route-table service, the VNet, one
//! agent per node inside the node's namespace (reaching the API server
//! through a relay), the route controller replicas, and the kubelet
//! emulator; and stops all of it.
//!
//! Every namespace, process and file the lab creates is recorded in its
//! state file (`<dir>/state.json`) before or as it is created, so `lab down`
//! can remove all of it even after a crash.

use crate::apiserver;
use crate::arm::{AppliedRoute, ArmConfig, ArmHandle, ArmServer, TableId};
use crate::cni;
use crate::kubelet::{self, Kubelets, NodeRuntime, PodInfo};
use crate::netns::{self, Netns};
use crate::relay::{self, Relay};
use crate::traffic::{self, Outcome, Protocol};
use crate::vnet::{FabricRoute, NodeNet, Vnet, VnetConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Where agents find the API server inside their node namespace (the relay).
pub const NODE_API_ADDR: &str = "127.0.0.1:6443";
/// The agent's health endpoint inside its node namespace.
pub const NODE_AGENT_HEALTH: &str = "127.0.0.1:9963";
/// The Azure identity of the lab's route table.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000lab0";
pub const RESOURCE_GROUP: &str = "underlay-lab";
pub const ROUTE_TABLE: &str = "underlay-lab-routes";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    ApiServer(#[from] apiserver::Error),
    #[error("the ARM route-table service did not start: {0}")]
    Arm(String),
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::Error),
    #[error(transparent)]
    Cni(#[from] cni::Error),
    #[error("kubernetes API call failed: {0}; is the API server up?")]
    Kube(#[from] kube::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "binary {0} not found; build it with `cargo build -p underlay-agent -p underlay-cni -p underlay-route-controller`"
    )]
    MissingBinary(PathBuf),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("timed out after {secs}s waiting for {what}; see the logs in {logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: PathBuf,
    },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// How to run a lab.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Prefix of every namespace the lab creates.
    pub prefix: String,
    /// The lab's directory: state file, logs, kubeconfigs, node files.
    pub dir: PathBuf,
    /// Where `underlay-agent`, `underlay-cni` and `underlay-route-controller` are.
    pub bin_dir: PathBuf,
    pub nodes: usize,
    pub dual_stack: bool,
    /// Run against this API server instead of the embedded one.
    pub kubeconfig: Option<PathBuf>,
    /// Route controller replicas (leader-elected).
    pub route_controllers: usize,
    pub cluster_cidr_v4: String,
    pub cluster_cidr_v6: String,
    /// Delay between an ARM write succeeding and the fabric applying it.
    pub propagation_delay: Duration,
    /// How long ARM operations stay in progress.
    pub arm_operation_delay: Duration,
    pub route_batch_interval: Duration,
    /// Extra arguments for every agent (e.g. `--policy=false`).
    pub agent_args: Vec<String>,
    /// The kubelet emulator's periods.
    pub kubelet: kubelet::Timings,
}

impl LabConfig {
    pub fn new(prefix: &str, dir: &Path, bin_dir: &Path) -> Self {
        Self {
            prefix: prefix.to_owned(),
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            nodes: 3,
            dual_stack: false,
            kubeconfig: None,
            route_controllers: 2,
            cluster_cidr_v4: "10.244.0.0/16".into(),
            cluster_cidr_v6: "fd00:244::/56".into(),
            propagation_delay: Duration::ZERO,
            arm_operation_delay: Duration::from_millis(50),
            route_batch_interval: Duration::from_millis(200),
            agent_args: Vec::new(),
            kubelet: kubelet::Timings {
                // Kubelet asks the runtime every 5 s; the lab asks every
                // second so that a node is Ready, and its waiting pods
                // start, soon after its agent is (like its short leader
                // election timings). Lease and heartbeat keep kubelet's.
                runtime_status: Duration::from_secs(1),
                ..Default::default()
            },
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcRecord {
    pub pid: u32,
    pub what: String,
}

/// What `lab status`, `exec`, `probe` and `down` read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabState {
    pub prefix: String,
    pub dir: PathBuf,
    pub supervisor_pid: Option<u32>,
    pub ready: bool,
    pub kubeconfig: PathBuf,
    pub api_url: String,
    pub arm_endpoint: String,
    pub nodes: Vec<NodeNet>,
    pub processes: Vec<ProcRecord>,
    pub pods: Vec<PodInfo>,
    pub routes: Vec<FabricRoute>,
}

impl LabState {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io(format!(
            "cannot read the lab state {}; is a lab up (`cargo xtask lab up`)?",
            path.display()
        )))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Usage(format!(
                "the lab state {} is corrupt ({e}); run `cargo xtask lab down` to clean up",
                path.display()
            ))
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(io(format!("cannot write the lab state {}", path.display())))
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.key == key)
    }
}

struct Procs {
    agents: BTreeMap<String, tokio::process::Child>,
    controllers: BTreeMap<usize, tokio::process::Child>,
}

/// A running lab.
pub struct Lab {
    pub config: LabConfig,
    apiserver: Option<apiserver::Handle>,
    api_addr: SocketAddr,
    client: kube::Client,
    arm: ArmHandle,
    vnet: Arc<Vnet>,
    kubelets: Arc<Kubelets>,
    procs: tokio::sync::Mutex<Procs>,
    relays: Mutex<BTreeMap<String, Relay>>,
    state: Mutex<LabState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    node_counter: Mutex<usize>,
    node_kubeconfig: PathBuf,
}

/// Prints progress of long steps.
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

impl Lab {
    /// Brings the lab up: API server, ARM service, VNet, route controllers,
    /// nodes with their agents and kubelets. Returns once every node is
    /// registered and its agent is ready.
    pub async fn start(config: LabConfig, progress: Progress<'_>) -> Result<Self> {
        let t0 = Instant::now();
        let mut bins = vec!["underlay-agent", "underlay-cni"];
        if config.route_controllers > 0 {
            bins.push("underlay-route-controller");
        }
        for bin in bins {
            let path = config.bin_dir.join(bin);
            if !path.is_file() {
                return Err(Error::MissingBinary(path));
            }
        }
        std::fs::create_dir_all(config.dir.join("logs"))
            .map_err(io("cannot create the lab directory"))?;
        let mut state = LabState {
            prefix: config.prefix.clone(),
            dir: config.dir.clone(),
            supervisor_pid: Some(std::process::id()),
            kubeconfig: config.kubeconfig_path(),
            ..Default::default()
        };
        state.save(&config.state_path())?;

        progress("starting the Kubernetes API server");
        let (apiserver, client, api_addr) = match &config.kubeconfig {
            None => {
                let handle = apiserver::ApiServer::start(apiserver::Config {
                    kubeconfig_out: Some(config.kubeconfig_path()),
                    ..Default::default()
                })
                .await?;
                let client = handle.client()?;
                let addr = handle.addr();
                (Some(handle), client, addr)
            }
            Some(path) => {
                let (client, addr) = external_client(path).await?;
                std::fs::copy(path, config.kubeconfig_path())
                    .map_err(io("cannot copy the kubeconfig into the lab directory"))?;
                (None, client, addr)
            }
        };
        state.api_url = apiserver
            .as_ref()
            .map_or_else(|| format!("{api_addr}"), |h| h.url());

        progress("starting the Azure route-table service");
        let arm = ArmServer::start(ArmConfig {
            propagation_delay: config.propagation_delay,
            operation_delay: config.arm_operation_delay,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Arm(e.to_string()))?;
        state.arm_endpoint = arm.endpoint().to_owned();
        let table = TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE);
        arm.seed_table(&table, "westeurope", &[]);

        progress("creating the VNet (router namespace)");
        let vnet = Arc::new(
            Vnet::create(VnetConfig {
                prefix: config.prefix.clone(),
                dual_stack: config.dual_stack,
                // The ARM service already delays what it publishes.
                propagation_delay: Duration::ZERO,
            })
            .await?,
        );
        let follow = {
            let vnet = vnet.clone();
            let (tx, rx) = tokio::sync::watch::channel(Vec::new());
            let mut tables = arm.routes_watch();
            let table = table.clone();
            let convert = tokio::spawn(async move {
                loop {
                    let routes = fabric_routes(&tables.borrow_and_update(), &table);
                    if tx.send(routes).is_err() || tables.changed().await.is_err() {
                        return;
                    }
                }
            });
            let apply = tokio::spawn(async move { vnet.follow(rx).await });
            [convert, apply]
        };

        let node_kubeconfig = config.dir.join("node-kubeconfig");
        let kubeconfig_text = std::fs::read_to_string(config.kubeconfig_path())
            .map_err(io("cannot read the lab kubeconfig"))?;
        std::fs::write(
            &node_kubeconfig,
            rewrite_server(&kubeconfig_text, NODE_API_ADDR),
        )
        .map_err(io("cannot write the node kubeconfig"))?;

        let kubelets =
            Kubelets::with_timings(client.clone(), &config.prefix, config.kubelet.clone());
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = follow.into();
        tasks.push(tokio::spawn(kubelets.clone().run()));

        let lab = Self {
            config: config.clone(),
            apiserver,
            api_addr,
            client,
            arm,
            vnet,
            kubelets,
            procs: tokio::sync::Mutex::new(Procs {
                agents: BTreeMap::new(),
                controllers: BTreeMap::new(),
            }),
            relays: Mutex::default(),
            state: Mutex::new(state),
            tasks,
            node_counter: Mutex::new(0),
            node_kubeconfig,
        };
        lab.write_azure_files()?;
        for i in 0..config.route_controllers {
            progress(&format!("starting route controller replica {}", i + 1));
            lab.start_route_controller(i).await?;
        }
        // Nodes join concurrently, as VMs of a scale set boot together; their
        // agents then wait for pod CIDRs side by side.
        progress(&format!("adding {} nodes", config.nodes));
        let joins: Vec<_> = (0..config.nodes).map(|_| lab.add_node()).collect();
        for joined in futures::future::join_all(joins).await {
            joined?;
        }
        // Agents are ready once their node has a pod CIDR, which only the
        // route controller hands out.
        if config.route_controllers > 0 {
            progress("waiting for the agents to be ready");
        }
        for node in lab
            .kubelets
            .node_names()
            .into_iter()
            .filter(|_| config.route_controllers > 0)
        {
            lab.wait_agent_ready(&node, Duration::from_secs(60)).await?;
            lab.wait_node_ready(&node, Duration::from_secs(30)).await?;
        }
        {
            let mut st = lab.state.lock().expect("lab state lock");
            st.ready = true;
        }
        lab.save_state()?;
        progress(&format!("lab up in {:.1}s", t0.elapsed().as_secs_f64()));
        Ok(lab)
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn arm(&self) -> &ArmHandle {
        &self.arm
    }

    pub fn vnet(&self) -> &Vnet {
        &self.vnet
    }

    pub fn apiserver(&self) -> Option<&apiserver::Handle> {
        self.apiserver.as_ref()
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.config.kubeconfig_path()
    }

    pub fn nodes(&self) -> Vec<NodeNet> {
        self.vnet.nodes()
    }

    pub fn pods(&self) -> Vec<PodInfo> {
        self.kubelets.pods()
    }

    /// The kubelet emulator of every node.
    pub fn kubelets(&self) -> &Kubelets {
        &self.kubelets
    }

    /// Writes the state file with the current pods, nodes and routes.
    pub fn save_state(&self) -> Result<()> {
        let mut st = self.state.lock().expect("lab state lock");
        st.nodes = self.vnet.nodes();
        st.pods = self.kubelets.pods();
        st.routes = self.vnet.routes();
        st.save(&self.config.state_path())
    }

    fn record_process(&self, pid: Option<u32>, what: &str) -> Result<()> {
        if let Some(pid) = pid {
            let mut st = self.state.lock().expect("lab state lock");
            st.processes.retain(|p| p.what != what);
            st.processes.push(ProcRecord {
                pid,
                what: what.to_owned(),
            });
        }
        self.save_state()
    }

    fn forget_process(&self, what: &str) {
        self.state
            .lock()
            .expect("lab state lock")
            .processes
            .retain(|p| p.what != what);
        let _ = self.save_state();
    }

    /// Starts the lab's `binary` as the daemon `what`: inside the namespace
    /// at `namespace` when given, `RUST_LOG=info`, output appended to its log,
    /// killed when its handle drops, and its pid recorded in the state file.
    fn spawn_daemon<S: AsRef<OsStr>>(
        &self,
        what: &str,
        binary: &str,
        namespace: Option<&Path>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Child> {
        let program = self.config.bin_dir.join(binary);
        let mut cmd = match namespace {
            Some(path) => netns::command_in(path, program),
            // starts: underlay-agent underlay-route-controller (the lab's daemons)
            None => tokio::process::Command::new(program),
        };
        let log = self.log_file(what)?;
        let err = log.try_clone().map_err(io("cannot open a log"))?;
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("cannot start {binary}")))?;
        self.record_process(child.id(), what)?;
        Ok(child)
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.dir.join("logs").join(format!("{name}.log")))
            .map_err(io(format!("cannot open the log of {name}")))
    }

    fn write_azure_files(&self) -> Result<()> {
        let cloud = serde_json::json!({
            "cloud": "AzurePublicCloud",
            "tenantId": "00000000-0000-0000-0000-000000000000",
            "subscriptionId": SUBSCRIPTION,
            "resourceGroup": RESOURCE_GROUP,
            "location": "westeurope",
            "vnetName": "underlay-lab-vnet",
            "vnetResourceGroup": RESOURCE_GROUP,
            "subnetName": "nodes",
            "routeTableName": ROUTE_TABLE,
            "routeTableResourceGroup": RESOURCE_GROUP,
            "useManagedIdentityExtension": false,
        });
        std::fs::write(
            self.config.dir.join("azure.json"),
            serde_json::to_vec_pretty(&cloud).unwrap_or_default(),
        )
        .map_err(io("cannot write azure.json"))?;
        std::fs::write(self.config.dir.join("arm-token"), self.arm.token())
            .map_err(io("cannot write the ARM token file"))
    }

    /// The route controller's command line for replica `index`.
    pub fn route_controller_args(&self, index: usize) -> Vec<String> {
        let dir = &self.config.dir;
        let mut args = vec![
            "--kubeconfig".into(),
            self.config.kubeconfig_path().display().to_string(),
            "--cloud-config".into(),
            dir.join("azure.json").display().to_string(),
            "--arm-endpoint".into(),
            self.arm.endpoint().to_owned(),
            "--arm-token-file".into(),
            dir.join("arm-token").display().to_string(),
            "--allocate-node-cidrs".into(),
            "--cluster-cidr".into(),
            self.config.cluster_cidr_v4.clone(),
        ];
        if self.config.dual_stack {
            args.extend(["--cluster-cidr".into(), self.config.cluster_cidr_v6.clone()]);
        }
        args.extend([
            "--leader-elect".into(),
            "--leader-elect-identity".into(),
            format!("route-controller-{index}"),
            // Short lease timings so that failover shows within seconds.
            "--leader-elect-lease-duration".into(),
            "4s".into(),
            "--leader-elect-renew-deadline".into(),
            "3s".into(),
            "--leader-elect-retry-period".into(),
            "500ms".into(),
            "--route-batch-interval".into(),
            format!("{}ms", self.config.route_batch_interval.as_millis()),
            "--arm-poll-interval".into(),
            "100ms".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--health-addr".into(),
            "127.0.0.1:0".into(),
        ]);
        args
    }

    /// Starts route controller replica `index` (in the lab's own namespace:
    /// it only talks HTTP to 127.0.0.1).
    pub async fn start_route_controller(&self, index: usize) -> Result<()> {
        let name = format!("route-controller-{index}");
        let args = self.route_controller_args(index);
        let child = self.spawn_daemon(&name, "underlay-route-controller", None, args)?;
        self.procs.lock().await.controllers.insert(index, child);
        Ok(())
    }

    /// Kills route controller replica `index` (SIGKILL: no lease release,
    /// the way a node failure looks).
    pub async fn kill_route_controller(&self, index: usize) -> Result<()> {
        let child = self.procs.lock().await.controllers.remove(&index);
        if let Some(mut c) = child {
            let _ = c.kill().await;
        }
        self.forget_process(&format!("route-controller-{index}"));
        Ok(())
    }

    /// Adds the next node (`node-N`): namespace, relay, CNI install, agent,
    /// kubelet registration.
    pub async fn add_node(&self) -> Result<String> {
        let name = {
            let mut n = self.node_counter.lock().expect("lab counter lock");
            *n += 1;
            format!("node-{n}")
        };
        self.add_named_node(&name).await?;
        Ok(name)
    }

    pub async fn add_named_node(&self, name: &str) -> Result<NodeNet> {
        let net = self.vnet.add_node(name).await?;
        self.save_state()?;
        let ns = Netns::existing(&net.netns);
        let relay = relay::start(
            &ns.path(),
            NODE_API_ADDR.parse().expect("valid address"),
            self.api_addr,
        )?;
        self.relays
            .lock()
            .expect("lab relays lock")
            .insert(name.to_owned(), relay);
        let node_dir = self.config.dir.join("nodes").join(name);
        let bin = node_dir.join("cni/bin");
        let conf = node_dir.join("cni/net.d");
        std::fs::create_dir_all(&bin).map_err(io("cannot create the node directory"))?;
        let socket = node_dir.join("agent.sock");
        // starts: underlay-cni
        let install = tokio::process::Command::new(self.config.bin_dir.join("underlay-cni"))
            .args(["install", "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&conf)
            .arg("--agent-socket")
            .arg(&socket)
            .args(["--portmap=false"])
            .arg("--source-binary")
            .arg(self.config.bin_dir.join("underlay-cni"))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(io("cannot run underlay-cni install"))?;
        if !install.status.success() {
            return Err(Error::Usage(format!(
                "underlay-cni install failed: {}",
                String::from_utf8_lossy(&install.stderr).trim()
            )));
        }
        let cni = cni::Runtime {
            config: cni::NetworkConfigList::load_dir(&conf)?,
            bin_dirs: vec![bin],
            cache_dir: node_dir.join("cni/results"),
            exec: Box::new(cni::ProcessExec {
                netns: Some(ns.path()),
            }),
        };
        self.start_agent(name).await?;
        self.kubelets
            .add_node(NodeRuntime {
                net: net.clone(),
                cni,
            })
            .await?;
        self.save_state()?;
        Ok(net)
    }

    /// The agent's command line on `node`.
    fn agent_args(&self, node: &str) -> Vec<OsString> {
        let node_dir = self.config.dir.join("nodes").join(node);
        let mut args: Vec<OsString> = vec![
            "--node-name".into(),
            node.into(),
            "--socket".into(),
            node_dir.join("agent.sock").into(),
            "--state-dir".into(),
            node_dir.join("state").into(),
            "--kubeconfig".into(),
            self.node_kubeconfig.clone().into(),
            "--metrics-addr".into(),
            "127.0.0.1:9962".into(),
            "--health-addr".into(),
            NODE_AGENT_HEALTH.into(),
        ];
        args.extend(self.config.agent_args.iter().map(OsString::from));
        args
    }

    /// Starts (or restarts) the agent of `node` inside its namespace.
    pub async fn start_agent(&self, node: &str) -> Result<()> {
        let net = self
            .vnet
            .node(node)
            .ok_or_else(|| Error::Usage(format!("no node {node}")))?;
        let what = format!("agent-{node}");
        let namespace = Netns::existing(&net.netns).path();
        let child = self.spawn_daemon(
            &what,
            "underlay-agent",
            Some(&namespace),
            self.agent_args(node),
        )?;
        self.procs
            .lock()
            .await
            .agents
            .insert(node.to_owned(), child);
        Ok(())
    }

    /// Kills the agent of `node` (SIGKILL).
    pub async fn kill_agent(&self, node: &str) -> Result<()> {
        let child = self.procs.lock().await.agents.remove(node);
        if let Some(mut c) = child {
            let _ = c.kill().await;
        }
        self.forget_process(&format!("agent-{node}"));
        Ok(())
    }

    /// Waits until the agent of `node` answers ready on its health endpoint.
    pub async fn wait_agent_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        let net = self
            .vnet
            .node(node)
            .ok_or_else(|| Error::Usage(format!("no node {node}")))?;
        let path = Netns::existing(&net.netns).path();
        let deadline = Instant::now() + timeout;
        loop {
            let p = path.clone();
            let ready = tokio::task::spawn_blocking(move || {
                netns::in_netns(&p, || http_status(NODE_AGENT_HEALTH, "/readyz"))
                    .ok()
                    .flatten()
            })
            .await
            .ok()
            .flatten();
            if ready == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the agent of {node} to be ready"),
                    secs: timeout.as_secs(),
                    logs: self.config.dir.join("logs"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A node named `name` joins the running lab and is waited for as the
    /// demo's join step does: agent ready, node Ready, `NetworkUnavailable`
    /// cleared and its route applied by the fabric.
    pub async fn join_node(&self, name: &str, timeout: Duration) -> Result<NodeNet> {
        validate_node_name(name)?;
        if self.vnet.node(name).is_some() {
            return Err(Error::Usage(format!(
                "node {name} is already in the lab; pick another name"
            )));
        }
        let net = self.add_named_node(name).await?;
        self.wait_network_available(name, timeout).await?;
        self.wait_agent_ready(name, timeout).await?;
        self.wait_node_ready(name, timeout).await?;
        let hop = IpAddr::V4(net.ipv4);
        self.wait_for(
            &format!("the route of {name} in the fabric"),
            timeout,
            || async {
                self.vnet
                    .routes()
                    .iter()
                    .any(|r| r.next_hop == hop)
                    .then_some(())
            },
        )
        .await?;
        self.save_state()?;
        Ok(net)
    }

    /// Node `name` leaves the running lab (as in the demo's leave step), and
    /// its route is waited out of the fabric.
    pub async fn leave_node(&self, name: &str, timeout: Duration) -> Result<()> {
        let net = self.vnet.node(name).ok_or_else(|| {
            Error::Usage(format!(
                "no node {name} in the lab; see `cargo xtask lab status`"
            ))
        })?;
        self.remove_node(name).await?;
        let hop = IpAddr::V4(net.ipv4);
        self.wait_for(&format!("the route of {name} to go"), timeout, || async {
            (!self.vnet.routes().iter().any(|r| r.next_hop == hop)).then_some(())
        })
        .await?;
        self.save_state()
    }

    /// Waits until the node is `Ready` (its runtime's network status, CNI
    /// STATUS, succeeds): pods bound to it start from then on. The runtime
    /// is asked on every poll rather than at the kubelet's next period, so
    /// that a lab waiting for a node it knows is ready does not idle.
    pub async fn wait_node_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        self.wait_for(&format!("{node} Ready"), timeout, || async {
            self.kubelets.check_runtime(node).await;
            let n = self.node_object(node).await.ok().flatten()?;
            (node_ready(&n) == Some(true)).then_some(())
        })
        .await
    }

    /// Removes a node: its pods, kubelet registration, agent, relay and
    /// namespace.
    pub async fn remove_node(&self, node: &str) -> Result<()> {
        self.kubelets.remove_node(node).await?;
        self.kill_agent(node).await?;
        self.relays.lock().expect("lab relays lock").remove(node);
        self.vnet.remove_node(node).await?;
        let _ = std::fs::remove_dir_all(self.config.dir.join("nodes").join(node));
        self.save_state()
    }

    /// The Node object.
    pub async fn node_object(&self, node: &str) -> Result<Option<Node>> {
        Ok(Api::<Node>::all(self.client.clone()).get_opt(node).await?)
    }

    /// Polls `check` every 100 ms until it returns `Some`, or times out.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    logs: self.config.dir.join("logs"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `NetworkUnavailable=False` on the node.
    pub async fn wait_network_available(&self, node: &str, timeout: Duration) -> Result<()> {
        self.wait_for(
            &format!("{node} NetworkUnavailable=False"),
            timeout,
            || async {
                let n = self.node_object(node).await.ok().flatten()?;
                (network_unavailable(&n) == Some(false)).then_some(())
            },
        )
        .await
    }

    /// Waits until the pod runs with an IP, and returns it.
    pub async fn wait_pod_running(&self, key: &str, timeout: Duration) -> Result<PodInfo> {
        self.wait_for(&format!("pod {key} to run"), timeout, || async {
            let info = self.kubelets.pods().into_iter().find(|p| p.key == key)?;
            let (ns, name) = key.split_once('/')?;
            let pod = Api::<Pod>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .ok()??;
            let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then_some(info)
        })
        .await
    }

    /// Probes `to` from inside pod `from` (`namespace/name`).
    pub async fn probe(
        &self,
        from: &str,
        to: SocketAddr,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Outcome> {
        let info = self
            .kubelets
            .pods()
            .into_iter()
            .find(|p| p.key == from)
            .ok_or_else(|| Error::Usage(format!("no running pod {from}")))?;
        let path = Netns::existing(&info.netns).path();
        let outcome = tokio::task::spawn_blocking(move || {
            netns::in_netns(&path, move || traffic::probe(to, protocol, timeout))
        })
        .await
        .map_err(|e| Error::Usage(format!("probe task failed: {e}")))??;
        Ok(outcome)
    }

    /// The current route-controller leader, from the Lease.
    pub async fn leader(&self) -> Option<String> {
        use k8s_openapi::api::coordination::v1::Lease;
        let leases: Api<Lease> = Api::all(self.client.clone());
        let list = leases.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .filter(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.contains("route-controller"))
            })
            .find_map(|l| l.spec?.holder_identity)
    }

    /// Stops everything and deletes every namespace and file the lab made.
    pub async fn shutdown(self) -> Result<()> {
        self.kubelets.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        {
            let mut procs = self.procs.lock().await;
            for (_, mut c) in std::mem::take(&mut procs.controllers) {
                let _ = c.kill().await;
            }
            for (_, mut c) in std::mem::take(&mut procs.agents) {
                let _ = c.kill().await;
            }
        }
        self.relays.lock().expect("lab relays lock").clear();
        drop(self.apiserver);
        match Arc::try_unwrap(self.vnet) {
            Ok(v) => v.destroy().await?,
            Err(v) => {
                for n in v.nodes() {
                    netns::delete(&n.netns).await?;
                }
                netns::delete(v.router().name()).await?;
            }
        }
        for name in netns::list(&format!("{}-", self.config.prefix)) {
            netns::delete(&name).await?;
        }
        let _ = std::fs::remove_file(self.config.state_path());
        Ok(())
    }
}

/// The applied routes per table, as the ARM service publishes them.
pub type AppliedTables = Arc<BTreeMap<TableId, Vec<AppliedRoute>>>;

/// The routes of `table` as the fabric applies them.
pub fn fabric_routes(tables: &AppliedTables, table: &TableId) -> Vec<FabricRoute> {
    let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    tables
        .iter()
        .filter(|(id, _)| id.resource_id().eq_ignore_ascii_case(&table.resource_id()))
        .flat_map(|(_, routes)| routes.iter())
        .map(|r| FabricRoute {
            name: r.name.clone(),
            prefix: r.address_prefix.clone(),
            // Only VirtualAppliance routes carry a next hop; anything else
            // (None, Internet...) has no node to go to: a blackhole.
            next_hop: if r.next_hop_type.eq_ignore_ascii_case("VirtualAppliance") {
                r.next_hop_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(unspecified)
            } else {
                unspecified
            },
        })
        .collect()
}

/// The node's `NetworkUnavailable` condition: `Some(true)` when set True.
pub fn network_unavailable(node: &Node) -> Option<bool> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .map(|c| c.status == "True")
}

/// A node name the lab accepts: a DNS-1123 label (it names the Node object)
/// of at most 40 characters.
pub fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid node name {name:?}: use lowercase letters, digits and '-' \
             (at most 40, starting and ending with a letter or digit)"
        )))
    }
}

/// The node's `Ready` condition: `Some(true)` when True.
pub fn node_ready(node: &Node) -> Option<bool> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

/// Points every `server:` of a kubeconfig at `authority` (`host:port`),
/// keeping its scheme: the relay stands in for the server, TLS passes
/// through it unchanged.
pub fn rewrite_server(kubeconfig: &str, authority: &str) -> String {
    kubeconfig
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match trimmed.strip_prefix("server:") {
                Some(url) => {
                    let url = url.trim().trim_matches(['"', '\'']);
                    let scheme = url.split_once("://").map_or("https", |(s, _)| s);
                    let indent = &line[..line.len() - trimmed.len()];
                    format!("{indent}server: {scheme}://{authority}")
                }
                None => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A client for an existing API server, and the address the relays forward
/// to (it must be on this machine's loopback).
async fn external_client(path: &Path) -> Result<(kube::Client, SocketAddr)> {
    let bad = |reason: String| Error::Kubeconfig {
        path: path.to_owned(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let server = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| bad("no cluster server".into()))?;
    let uri: http::Uri = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| bad(format!("server {server} is not an IP on this machine")))?
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    Ok((client, SocketAddr::new(ip, port)))
}

/// A plain HTTP/1.1 GET; returns the status code.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virtual_appliance_routes_of_our_table_get_a_next_hop() {
        let ours = TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE);
        let other = TableId::new(SUBSCRIPTION, RESOURCE_GROUP, "other");
        let route = |name: &str, prefix: &str, ty: &str, hop: Option<&str>| AppliedRoute {
            name: name.into(),
            address_prefix: prefix.into(),
            next_hop_type: ty.into(),
            next_hop_ip: hop.map(Into::into),
        };
        let tables: AppliedTables = Arc::new(BTreeMap::from([
            (
                TableId::new(SUBSCRIPTION, RESOURCE_GROUP, ROUTE_TABLE.to_uppercase()),
                vec![
                    route("a", "10.244.1.0/24", "VirtualAppliance", Some("10.0.0.4")),
                    route("b", "10.244.2.0/24", "None", None),
                ],
            ),
            (
                other,
                vec![route(
                    "c",
                    "10.9.0.0/16",
                    "VirtualAppliance",
                    Some("10.0.0.5"),
                )],
            ),
        ]));
        let got = fabric_routes(&tables, &ours);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].next_hop, "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(got[1].next_hop, "0.0.0.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn node_names_must_be_dns_labels() {
        for good in ["node-4", "a", "n1x"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Node", "-a", "a-", "a_b", "a.b", &"x".repeat(41)] {
            let err = validate_node_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid node name"), "{bad}: {err}");
        }
    }

    #[test]
    fn kubeconfig_servers_are_rewritten_keeping_indentation() {
        let kc = "clusters:\n- cluster:\n    server: https://127.0.0.1:4321\n  name: lab\n";
        assert_eq!(
            rewrite_server(kc, "127.0.0.1:6443"),
            "clusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: lab\n"
        );
        assert!(
            rewrite_server("    server: \"http://[::1]:80\"", "127.0.0.1:6443")
                .ends_with("server: http://127.0.0.1:6443\n")
        );
    }

    #[test]
    fn state_files_round_trip_and_a_missing_one_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let err = LabState::load(&path).unwrap_err().to_string();
        assert!(err.contains("lab up"), "{err}");
        let state = LabState {
            prefix: "ullab".into(),
            ready: true,
            processes: vec![ProcRecord {
                pid: 7,
                what: "agent-node-1".into(),
            }],
            ..Default::default()
        };
        state.save(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), state);
        std::fs::write(&path, "{").unwrap();
        assert!(
            LabState::load(&path)
                .unwrap_err()
                .to_string()
                .contains("lab down")
        );
    }
}
