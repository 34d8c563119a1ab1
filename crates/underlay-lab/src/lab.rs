//! The whole stack on one machine: starts the embedded API server (or uses
//! one given by kubeconfig), the ARM route-table service, the VNet, one
//! agent per node inside the node's namespace (reaching the API server
//! through a relay), the route controller replicas, and the kubelet
//! emulator; and stops all of it.
//!
//! Every namespace, process and file the lab creates is recorded in its
//! state file (`<dir>/state.json`) before or as it is created, so `lab down`
//! can remove all of it even after a crash.
//!
//! `config` is how a lab runs, `state` the state file, `fabric` the ARM
//! route table and the VNet following it, `kubeconfig` the API server the
//! lab and its nodes talk to, `processes` the daemons it starts (agents,
//! route controllers), `nodes` nodes joining and leaving, and `observe`
//! what callers wait for and look at (readiness, conditions, probes).

mod config;
mod fabric;
mod kubeconfig;
mod nodes;
mod observe;
mod processes;
mod state;

pub use config::{
    LabConfig, NODE_AGENT_HEALTH, NODE_AGENT_METRICS, NODE_API_ADDR, RESOURCE_GROUP, ROUTE_TABLE,
    SUBSCRIPTION,
};
pub use fabric::{AppliedTables, fabric_routes};
pub use kubeconfig::rewrite_server;
pub use nodes::validate_node_name;
pub use observe::{network_unavailable, node_ready};
pub use state::{LabState, ProcRecord};

use crate::apiserver;
use crate::arm::ArmHandle;
use crate::cni;
use crate::kubelet::{Kubelets, PodInfo};
use crate::netns;
use crate::relay::Relay;
use crate::vnet::{NodeNet, Vnet, VnetConfig};
use processes::Procs;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Brings the lab up: API server (with the CRDs the stack serves), ARM
    /// service, VNet, route controllers, nodes with their agents and kubelets. Returns once every node is
    /// registered and its agent is ready.
    pub async fn start(config: LabConfig, progress: Progress<'_>) -> Result<Self> {
        let t0 = Instant::now();
        config.check_binaries()?;
        let mut state = LabState::create(&config)?;

        progress("starting the Kubernetes API server");
        let (apiserver, client, api_addr) = kubeconfig::connect(&config).await?;
        state.api_url = apiserver
            .as_ref()
            .map_or_else(|| format!("{api_addr}"), |h| h.url());

        progress("starting the Azure route-table service");
        let arm = fabric::start_arm(&config).await?;
        state.arm_endpoint = arm.endpoint().to_owned();

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
        let mut tasks: Vec<_> = fabric::follow_route_table(&arm, &vnet).into();
        let node_kubeconfig = kubeconfig::write_node_kubeconfig(&config)?;
        let kubelets =
            Kubelets::with_timings(client.clone(), &config.prefix, config.kubelet.clone());
        tasks.push(tokio::spawn(kubelets.clone().run()));

        let lab = Self {
            config,
            apiserver,
            api_addr,
            client,
            arm,
            vnet,
            kubelets,
            procs: tokio::sync::Mutex::new(Procs::default()),
            relays: Mutex::default(),
            state: Mutex::new(state),
            tasks,
            node_counter: Mutex::new(0),
            node_kubeconfig,
        };
        lab.write_azure_files()?;
        lab.install_crds(progress).await?;
        lab.start_route_controllers(progress).await?;
        lab.add_first_nodes(progress).await?;
        lab.wait_until_ready(progress).await?;
        progress(&format!("lab up in {:.1}s", t0.elapsed().as_secs_f64()));
        Ok(lab)
    }

    /// Starts every route controller replica the configuration asks for.
    async fn start_route_controllers(&self, progress: Progress<'_>) -> Result<()> {
        for i in 0..self.config.route_controllers {
            progress(&format!("starting route controller replica {}", i + 1));
            self.start_route_controller(i).await?;
        }
        Ok(())
    }

    /// Adds the configured number of nodes. They join concurrently, as VMs
    /// of a scale set boot together; their agents then wait for pod CIDRs
    /// side by side.
    async fn add_first_nodes(&self, progress: Progress<'_>) -> Result<()> {
        progress(&format!("adding {} nodes", self.config.nodes));
        let joins: Vec<_> = (0..self.config.nodes).map(|_| self.add_node()).collect();
        for joined in futures::future::join_all(joins).await {
            joined?;
        }
        Ok(())
    }

    /// Waits for every agent and node to be ready, then marks the lab ready
    /// in its state file. Agents are ready once their node has a pod CIDR,
    /// which only the route controller hands out: without one, nothing is
    /// waited for.
    async fn wait_until_ready(&self, progress: Progress<'_>) -> Result<()> {
        if self.config.route_controllers > 0 {
            progress("waiting for the agents to be ready");
            for node in self.kubelets.node_names() {
                self.wait_agent_ready(&node, Duration::from_secs(60))
                    .await?;
                self.wait_node_ready(&node, Duration::from_secs(30)).await?;
            }
        }
        self.state.lock().expect("lab state lock").ready = true;
        self.save_state()
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

    /// The log file of one of the lab's daemons (`agent-node-1`,
    /// `route-controller-0`, ...).
    pub fn log_path(&self, what: &str) -> PathBuf {
        self.config.dir.join("logs").join(format!("{what}.log"))
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

    /// Stops everything and deletes every namespace and file the lab made.
    pub async fn shutdown(self) -> Result<()> {
        self.kubelets.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        self.procs.lock().await.kill_all().await;
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
