//! How a lab runs: its directory, binaries, size and timings, and the
//! fixed addresses and Azure names every lab uses.

use super::{Error, Result};
use crate::kubelet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where agents find the API server inside their node namespace (the relay).
pub const NODE_API_ADDR: &str = "127.0.0.1:6443";
/// The agent's metrics endpoint inside its node namespace.
pub const NODE_AGENT_METRICS: &str = "127.0.0.1:9962";
/// The agent's health endpoint inside its node namespace.
pub const NODE_AGENT_HEALTH: &str = "127.0.0.1:9963";
/// The Azure identity of the lab's route table.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000lab0";
pub const RESOURCE_GROUP: &str = "underlay-lab";
pub const ROUTE_TABLE: &str = "underlay-lab-routes";

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

    /// Fails unless every binary this lab runs is in `bin_dir` (the route
    /// controller only when replicas are asked for).
    pub(super) fn check_binaries(&self) -> Result<()> {
        let mut bins = vec!["underlay-agent", "underlay-cni"];
        if self.route_controllers > 0 {
            bins.push("underlay-route-controller");
        }
        for bin in bins {
            let path = self.bin_dir.join(bin);
            if !path.is_file() {
                return Err(Error::MissingBinary(path));
            }
        }
        Ok(())
    }
}
