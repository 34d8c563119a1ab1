//! The state file (`<dir>/state.json`): what `lab status`, `exec`, `probe`
//! and `down` read, written as the lab changes.

use super::{Error, Lab, LabConfig, Result, io};
use crate::kubelet::PodInfo;
use crate::vnet::{FabricRoute, NodeNet};
use std::path::{Path, PathBuf};

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
    /// The state of a lab about to start, written to its (new) directory
    /// before anything is created: this process is its supervisor.
    pub(super) fn create(config: &LabConfig) -> Result<Self> {
        std::fs::create_dir_all(config.dir.join("logs"))
            .map_err(io("cannot create the lab directory"))?;
        let state = LabState {
            prefix: config.prefix.clone(),
            dir: config.dir.clone(),
            supervisor_pid: Some(std::process::id()),
            kubeconfig: config.kubeconfig_path(),
            ..Default::default()
        };
        state.save(&config.state_path())?;
        Ok(state)
    }

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

impl Lab {
    /// Writes the state file with the current pods, nodes and routes.
    pub fn save_state(&self) -> Result<()> {
        let mut st = self.state.lock().expect("lab state lock");
        st.nodes = self.vnet.nodes();
        st.pods = self.kubelets.pods();
        st.routes = self.vnet.routes();
        st.save(&self.config.state_path())
    }

    /// Records the process `what` (replacing an earlier one of that name)
    /// and writes the state file.
    pub(super) fn record_process(&self, pid: Option<u32>, what: &str) -> Result<()> {
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

    /// Drops the process `what` from the state file.
    pub(super) fn forget_process(&self, what: &str) {
        self.state
            .lock()
            .expect("lab state lock")
            .processes
            .retain(|p| p.what != what);
        let _ = self.save_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
