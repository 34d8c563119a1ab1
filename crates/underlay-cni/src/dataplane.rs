//! What the plugin changes in the kernel, as a narrow trait: wire a pod,
//! unwire it, verify it, and remove a leaked host interface. The netlink
//! implementation is in [`crate::netlink`]; tests pass a recording fake.

use crate::types::IpPrefix;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The pod's IPv4 gateway: link-local, answered by proxy ARP on the host side.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: a fixed link-local, answered by proxy NDP.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// A route inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpPrefix,
    /// `None` for a directly connected route.
    pub gw: Option<IpAddr>,
}

/// Everything needed to wire one pod attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub container_id: String,
    pub mtu: u32,
    /// The pod's addresses as the pod sees them (/32, /128).
    pub addresses: Vec<IpPrefix>,
    pub routes: Vec<PodRoute>,
}

/// What setup created, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wired {
    pub host_mac: String,
    pub pod_mac: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("network namespace {0} does not exist; the sandbox may already be gone")]
    NetnsNotFound(PathBuf),
    #[error("{path} is not a network namespace: {source}")]
    NotANetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {ifname} already exists in {netns}; delete it or use another CNI_IFNAME")]
    InterfaceExists { netns: PathBuf, ifname: String },
    #[error("netlink: {op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} failed: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod's network differs from what was set up: {0}")]
    Mismatch(String),
}

impl DataplaneError {
    pub fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let op = op.into();
        move |source| Self::Netlink { op, source }
    }

    pub fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let op = op.into();
        move |source| Self::Io { op, source }
    }
}

/// The kernel side effects of the plugin.
#[allow(async_fn_in_trait)] // used through generics only, never as dyn
pub trait Dataplane {
    /// True when `ifname` exists in `netns`.
    async fn has_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError>;
    /// Creates and configures the veth pair, host and pod side. On error the
    /// caller undoes it with [`Dataplane::teardown`].
    async fn setup(&self, link: &PodLink) -> Result<Wired, DataplaneError>;
    /// Takes the pod's interfaces out of service: the host side, when
    /// `container_id` owns it, is retired (down, no routes, in
    /// [`underlay_proto::RETIRED_LINK_GROUP`], deleted later by the agent
    /// or with the pod's namespace); otherwise the pod's interface is
    /// deleted. Gone is fine.
    async fn teardown(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<(), DataplaneError>;
    /// Verifies the pod's interface, addresses and routes and the host side.
    async fn check(&self, link: &PodLink) -> Result<(), DataplaneError>;
    /// Deletes `host_ifname` if its owner is `container_id`; true if deleted.
    async fn remove_host_interface(
        &self,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<bool, DataplaneError>;
}

/// A recording fake for tests of the command logic.
pub mod fake;
