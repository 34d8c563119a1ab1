//! A recording fake [`Dataplane`](super::Dataplane) for tests of the command
//! logic: it records every call and answers from its fields.

use super::{Dataplane, DataplaneError, PodLink, Wired};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    HasInterface(PathBuf, String),
    Setup(PodLink),
    Teardown(Option<PathBuf>, String, String, String),
    Check(PodLink),
    RemoveHost(String, String),
}

/// Records every call; answers from its fields.
#[derive(Default)]
pub struct FakeDataplane {
    pub calls: Mutex<Vec<Call>>,
    pub existing: bool,
    pub fail_setup: bool,
    pub fail_check: bool,
    pub missing_netns: bool,
}

impl FakeDataplane {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    fn record(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

impl Dataplane for FakeDataplane {
    async fn has_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError> {
        self.record(Call::HasInterface(netns.into(), ifname.into()));
        if self.missing_netns {
            return Err(DataplaneError::NetnsNotFound(netns.into()));
        }
        Ok(self.existing)
    }
    async fn setup(&self, link: &PodLink) -> Result<Wired, DataplaneError> {
        self.record(Call::Setup(link.clone()));
        if self.fail_setup {
            return Err(DataplaneError::Mismatch("injected setup failure".into()));
        }
        Ok(Wired {
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_mac: "02:00:00:00:00:01".into(),
        })
    }
    async fn teardown(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<(), DataplaneError> {
        self.record(Call::Teardown(
            netns.map(Into::into),
            ifname.into(),
            host_ifname.into(),
            container_id.into(),
        ));
        Ok(())
    }
    async fn check(&self, link: &PodLink) -> Result<(), DataplaneError> {
        self.record(Call::Check(link.clone()));
        if self.fail_check {
            return Err(DataplaneError::Mismatch("injected check failure".into()));
        }
        Ok(())
    }
    async fn remove_host_interface(
        &self,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<bool, DataplaneError> {
        self.record(Call::RemoveHost(host_ifname.into(), container_id.into()));
        Ok(true)
    }
}
