//! Nodes joining and leaving the lab: the node namespace, its relay to the
//! API server, the CNI plugin installed for it, its agent and kubelet; and
//! the waits that say a node has joined (Ready and routed) or left (its
//! route gone).

use super::{Error, Lab, NODE_API_ADDR, Result, io};
use crate::cni;
use crate::kubelet::NodeRuntime;
use crate::netns::Netns;
use crate::relay;
use crate::vnet::NodeNet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Lab {
    /// The name the next [`Lab::add_node`] gives: `node-N`, counting every
    /// node added that way.
    pub fn next_node_name(&self) -> String {
        let mut n = self.node_counter.lock().expect("lab counter lock");
        *n += 1;
        format!("node-{n}")
    }

    /// Adds the next node (`node-N`): namespace, relay, CNI install, agent,
    /// kubelet registration.
    pub async fn add_node(&self) -> Result<String> {
        let name = self.next_node_name();
        self.add_named_node(&name).await?;
        Ok(name)
    }

    pub async fn add_named_node(&self, name: &str) -> Result<NodeNet> {
        let net = self.vnet.add_node(name).await?;
        self.save_state()?;
        let ns = Netns::existing(&net.netns);
        self.start_relay(name, &ns.path())?;
        let cni = self.install_cni(name, &ns.path()).await?;
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

    /// The node's directory: its CNI files, agent socket and agent state.
    pub(super) fn node_dir(&self, node: &str) -> PathBuf {
        self.config.dir.join("nodes").join(node)
    }

    /// The gRPC socket of `node`'s agent (what the CNI plugin and
    /// `kubectl-underlay --socket` talk to).
    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.sock")
    }

    /// The node's place in the VNet.
    pub(super) fn node_net(&self, node: &str) -> Result<NodeNet> {
        self.vnet
            .node(node)
            .ok_or_else(|| Error::Usage(format!("no node {node}")))
    }

    /// Starts the relay inside the node namespace at `netns` that stands in
    /// for the API server there ([`NODE_API_ADDR`]).
    fn start_relay(&self, node: &str, netns: &Path) -> Result<()> {
        let relay = relay::start(
            netns,
            NODE_API_ADDR.parse().expect("valid address"),
            self.api_addr,
        )?;
        self.relays
            .lock()
            .expect("lab relays lock")
            .insert(node.to_owned(), relay);
        Ok(())
    }

    /// Installs the CNI plugin for the node (`underlay-cni install`, as its
    /// DaemonSet's init container does) and returns the container runtime's
    /// side of CNI: the installed chain, run inside the node namespace.
    async fn install_cni(&self, node: &str, netns: &Path) -> Result<cni::Runtime> {
        let node_dir = self.node_dir(node);
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
        Ok(cni::Runtime {
            config: cni::NetworkConfigList::load_dir(&conf)?,
            bin_dirs: vec![bin],
            cache_dir: node_dir.join("cni/results"),
            exec: Box::new(cni::ProcessExec {
                netns: Some(netns.to_owned()),
            }),
        })
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

    /// Removes a node: its pods, kubelet registration, agent, relay and
    /// namespace.
    pub async fn remove_node(&self, node: &str) -> Result<()> {
        self.kubelets.remove_node(node).await?;
        self.kill_agent(node).await?;
        self.relays.lock().expect("lab relays lock").remove(node);
        self.vnet.remove_node(node).await?;
        let _ = std::fs::remove_dir_all(self.node_dir(node));
        self.save_state()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
