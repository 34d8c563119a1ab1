//! The daemons the lab starts — an agent inside each node namespace and the
//! route controller replicas in the lab's own — with their command lines,
//! logs (`<dir>/logs/<what>.log`) and pids recorded in the state file.

use super::{
    Lab, NODE_AGENT_HEALTH, NODE_AGENT_METRICS, RESOURCE_GROUP, ROUTE_TABLE, Result, SUBSCRIPTION,
    io,
};
use crate::netns::{self, Netns};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use tokio::process::Child;

/// The running daemons, killed when dropped.
#[derive(Default)]
pub(super) struct Procs {
    agents: BTreeMap<String, Child>,
    controllers: BTreeMap<usize, Child>,
}

impl Procs {
    /// Kills every route controller, then every agent.
    pub(super) async fn kill_all(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.controllers) {
            let _ = c.kill().await;
        }
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill().await;
        }
    }
}

impl Lab {
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

    /// Writes the files the route controller's command line names: the
    /// Azure cloud config (`azure.json`) and the ARM token.
    pub(super) fn write_azure_files(&self) -> Result<()> {
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

    /// The agent's command line on `node`.
    fn agent_args(&self, node: &str) -> Vec<OsString> {
        let node_dir = self.node_dir(node);
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
            NODE_AGENT_METRICS.into(),
            "--health-addr".into(),
            NODE_AGENT_HEALTH.into(),
        ];
        args.extend(self.config.agent_args.iter().map(OsString::from));
        args
    }

    /// Starts (or restarts) the agent of `node` inside its namespace.
    pub async fn start_agent(&self, node: &str) -> Result<()> {
        let net = self.node_net(node)?;
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
}
