//! The VNet: a router namespace standing in for Azure's network fabric, and
//! one namespace per node with a single interface (`eth0`) into the subnet.
//!
//! Like Azure, the fabric is routed, not bridged: each node's `eth0` is one
//! end of a veth pair whose other end sits in the router namespace, and the
//! router answers ARP for every address (proxy ARP), so nodes see a /24 subnet
//! while every packet crosses the router. The router knows the node addresses
//! (system routes) and nothing else: a pod CIDR is reachable only through a
//! route the lab applies from the ARM route table (`addressPrefix` →
//! `nextHopIpAddress`), exactly as a pod CIDR without a user-defined route is
//! unreachable in Azure. Routes whose next hop is no node's address are
//! installed as blackholes (Azure drops such traffic).
//!
//! IPv6 (dual-stack labs): nodes get `fd00:10::N` without an on-link prefix
//! and a default route via the router's link-local `fe80::1`, so all IPv6
//! traffic crosses the router too.

use crate::netns::{self, Netns};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

pub use crate::netns::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The subnet's gateway, as Azure reserves the first usable address.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The IPv6 subnet prefix nodes take their addresses from.
pub const SUBNET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0);
/// Azure reserves .0 to .3 of every subnet: nodes start at .4.
const FIRST_HOST: u8 = 4;
/// The largest node index the /24 subnet can hold.
pub const MAX_NODES: u8 = 250;

/// One route of the route table, as the fabric applies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct FabricRoute {
    /// The Azure route name (informational).
    pub name: String,
    /// The destination CIDR (`addressPrefix`), e.g. `10.244.1.0/24`.
    pub prefix: String,
    /// The next hop (`nextHopIpAddress`), a node address.
    pub next_hop: IpAddr,
}

/// A node's place in the VNet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeNet {
    pub name: String,
    pub index: u8,
    /// The node's network namespace name.
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// The router's end of the node's veth pair.
    pub router_if: String,
}

impl NodeNet {
    /// Node `name` at `index` of the subnet, living in namespace `netns`.
    pub fn at(name: &str, index: u8, netns: &str, dual_stack: bool) -> NodeNet {
        NodeNet {
            name: name.to_owned(),
            index,
            netns: netns.to_owned(),
            ipv4: node_ipv4(index),
            ipv6: dual_stack.then(|| node_ipv6(index)),
            router_if: format!("vn{index}"),
        }
    }

    /// Addresses as a kubelet reports them in `status.addresses`.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut out = vec![IpAddr::V4(self.ipv4)];
        out.extend(self.ipv6.map(IpAddr::V6));
        out
    }
}

/// How a fabric route is rendered in the router's kernel table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendered {
    Via { next_hop: IpAddr, dev: String },
    Blackhole,
}

/// The address of node `index` (1-based).
pub fn node_ipv4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, FIRST_HOST - 1 + index)
}

pub fn node_ipv6(index: u8) -> Ipv6Addr {
    let mut segments = SUBNET_V6.segments();
    segments[7] = u16::from(FIRST_HOST - 1 + index);
    Ipv6Addr::from(segments)
}

/// The `ip -batch` lines, run in the router namespace, that plug a node in.
pub fn node_router_lines(node: &NodeNet) -> Vec<String> {
    let r = &node.router_if;
    let mut lines = vec![
        format!(
            "link add name {r} type veth peer name eth0 netns {}",
            node.netns
        ),
        format!("link set {r} up"),
        format!("addr add {GATEWAY_V4}/32 dev {r}"),
        format!("route add {}/32 dev {r} scope link", node.ipv4),
    ];
    if let Some(v6) = node.ipv6 {
        lines.push(format!("addr add fe80::1/64 dev {r} nodad"));
        lines.push(format!("route add {v6}/128 dev {r}"));
    }
    lines
}

/// The `ip -batch` lines, run in the node namespace, that configure `eth0`.
pub fn node_lines(node: &NodeNet) -> Vec<String> {
    let mut lines = vec![
        "link set eth0 up".to_owned(),
        format!("addr add {}/24 dev eth0", node.ipv4),
        format!("route add default via {GATEWAY_V4} dev eth0"),
    ];
    if let Some(v6) = node.ipv6 {
        lines.push(format!("addr add {v6}/64 dev eth0 nodad noprefixroute"));
        lines.push("route add ::/0 via fe80::1 dev eth0".to_owned());
    }
    lines
}

/// Renders the desired route set against the known nodes.
pub fn render(
    routes: &[FabricRoute],
    nodes: &BTreeMap<String, NodeNet>,
) -> BTreeMap<String, Rendered> {
    routes
        .iter()
        .map(|route| {
            let target = nodes
                .values()
                .find(|n| n.addresses().contains(&route.next_hop));
            let rendered = match target {
                Some(node) => Rendered::Via {
                    next_hop: route.next_hop,
                    dev: node.router_if.clone(),
                },
                None => Rendered::Blackhole,
            };
            (route.prefix.clone(), rendered)
        })
        .collect()
}

/// The `ip -batch` lines that turn the `current` router table into `desired`.
pub fn diff_lines(
    current: &BTreeMap<String, Rendered>,
    desired: &BTreeMap<String, Rendered>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for prefix in current.keys() {
        if !desired.contains_key(prefix) {
            lines.push(format!("route del {prefix}"));
        }
    }
    for (prefix, new) in desired {
        if current.get(prefix) == Some(new) {
            continue;
        }
        // `ip -batch` takes no family flags: the prefix tells the family.
        lines.push(match new {
            Rendered::Via { next_hop, dev } => {
                format!("route replace {prefix} via {next_hop} dev {dev} onlink")
            }
            Rendered::Blackhole => format!("route replace blackhole {prefix}"),
        });
    }
    lines
}

/// Settings of a VNet.
#[derive(Clone, Debug)]
pub struct VnetConfig {
    /// Prefix of every namespace name (unique per lab or test).
    pub prefix: String,
    pub dual_stack: bool,
    /// How long after an ARM operation completes the fabric applies it.
    pub propagation_delay: Duration,
}

/// The fabric: the router namespace, the nodes and the applied routes.
#[derive(Debug)]
pub struct Vnet {
    config: VnetConfig,
    router: Netns,
    nodes: Mutex<BTreeMap<String, (NodeNet, Option<Netns>)>>,
    desired: Mutex<Vec<FabricRoute>>,
    applied: Mutex<BTreeMap<String, Rendered>>,
    /// Serialises changes to the router's table.
    change: tokio::sync::Mutex<()>,
}

impl Vnet {
    /// Creates the router namespace.
    pub async fn create(config: VnetConfig) -> Result<Self> {
        let router = Netns::create(&format!("{}-vnet", config.prefix)).await?;
        router
            .sysctl(&[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.default.proxy_arp=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])
            .await?;
        Ok(Self {
            config,
            router,
            nodes: Mutex::default(),
            desired: Mutex::default(),
            applied: Mutex::default(),
            change: tokio::sync::Mutex::new(()),
        })
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    pub fn config(&self) -> &VnetConfig {
        &self.config
    }

    /// The namespace name a node gets.
    pub fn node_netns_name(&self, index: u8) -> String {
        format!("{}-n{index}", self.config.prefix)
    }

    /// Creates a node namespace and plugs it into the subnet at the lowest
    /// free index. Adding a node that exists returns it unchanged.
    pub async fn add_node(&self, name: &str) -> Result<NodeNet> {
        let _guard = self.change.lock().await;
        let index = {
            let nodes = self.nodes.lock().expect("vnet nodes lock");
            if let Some((node, _)) = nodes.get(name) {
                return Ok(node.clone());
            }
            let used: Vec<u8> = nodes.values().map(|(n, _)| n.index).collect();
            (1..=MAX_NODES).find(|i| !used.contains(i))
        };
        let Some(index) = index else {
            return Err(Error::Command {
                cmd: format!("add node {name}"),
                status: "subnet full".into(),
                stderr: format!("the subnet holds at most {MAX_NODES} nodes; remove a node first"),
            });
        };
        let netns = Netns::create(&self.node_netns_name(index)).await?;
        let node = NodeNet::at(name, index, netns.name(), self.config.dual_stack);
        netns
            .sysctl(&[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])
            .await?;
        self.router.ip_batch(&node_router_lines(&node)).await?;
        // Azure's fabric answers ARP at once; Linux delays proxy answers by
        // up to 0.8 s unless told otherwise (only per interface in a new
        // namespace: it has no `neigh/default`).
        self.router
            .sysctl(&[&format!("net.ipv4.neigh.{}.proxy_delay=0", node.router_if)])
            .await?;
        netns.ip_batch(&node_lines(&node)).await?;
        self.nodes
            .lock()
            .expect("vnet nodes lock")
            .insert(name.to_owned(), (node.clone(), Some(netns)));
        self.reconcile_locked().await?;
        Ok(node)
    }

    /// Unplugs a node and deletes its namespace. Routes that pointed at it
    /// become blackholes until the route table drops them.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        let _guard = self.change.lock().await;
        let removed = self.nodes.lock().expect("vnet nodes lock").remove(name);
        if let Some((node, netns)) = removed {
            // Delete the veth pair explicitly: the kernel tears a deleted
            // namespace down asynchronously, and a node re-added at once
            // must find its router interface name free.
            let _ = self
                .router
                .ip_batch(&[format!("link del {}", node.router_if)])
                .await;
            if let Some(ns) = netns {
                ns.delete().await?;
            }
            // The kernel deleted the routes through the node's device with it.
            self.applied
                .lock()
                .expect("vnet applied lock")
                .retain(|_, r| !matches!(r, Rendered::Via { dev, .. } if *dev == node.router_if));
            self.reconcile_locked().await?;
        }
        Ok(())
    }

    pub fn nodes(&self) -> Vec<NodeNet> {
        self.nodes
            .lock()
            .expect("vnet nodes lock")
            .values()
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<NodeNet> {
        self.nodes
            .lock()
            .expect("vnet nodes lock")
            .get(name)
            .map(|(n, _)| n.clone())
    }

    /// Makes the router's table match `routes` (the whole route table).
    pub async fn apply_routes(&self, routes: Vec<FabricRoute>) -> Result<()> {
        let _guard = self.change.lock().await;
        *self.desired.lock().expect("vnet desired lock") = routes;
        self.reconcile_locked().await
    }

    /// The route set last applied.
    pub fn routes(&self) -> Vec<FabricRoute> {
        self.desired.lock().expect("vnet desired lock").clone()
    }

    async fn reconcile_locked(&self) -> Result<()> {
        let desired = {
            let nodes: BTreeMap<String, NodeNet> = self
                .nodes
                .lock()
                .expect("vnet nodes lock")
                .iter()
                .map(|(k, (n, _))| (k.clone(), n.clone()))
                .collect();
            render(&self.desired.lock().expect("vnet desired lock"), &nodes)
        };
        let current = self.applied.lock().expect("vnet applied lock").clone();
        let lines = diff_lines(&current, &desired);
        if let Err(err) = self.router.ip_batch(&lines).await {
            // `ip -batch` stops at the first bad line: apply the rest one by
            // one so that one bad route does not hold back the others.
            tracing::warn!(error = %err, "vnet batch failed, applying routes one by one");
            let mut failed = None;
            for line in &lines {
                if let Err(err) = self.router.ip_batch(std::slice::from_ref(line)).await {
                    failed.get_or_insert(err);
                }
            }
            if let Some(err) = failed {
                *self.applied.lock().expect("vnet applied lock") = desired;
                return Err(err);
            }
        }
        tracing::info!(
            routes = desired.len(),
            changes = lines.len(),
            "vnet fabric routes applied"
        );
        *self.applied.lock().expect("vnet applied lock") = desired;
        Ok(())
    }

    /// Applies every route set the receiver yields, `propagation_delay` after
    /// it arrives, until the sender is dropped.
    pub async fn follow(&self, mut routes: tokio::sync::watch::Receiver<Vec<FabricRoute>>) {
        loop {
            let set = routes.borrow_and_update().clone();
            if !self.config.propagation_delay.is_zero() {
                tokio::time::sleep(self.config.propagation_delay).await;
            }
            if let Err(error) = self.apply_routes(set).await {
                tracing::warn!(%error, "vnet failed to apply fabric routes");
            }
            if routes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Deletes every namespace of the VNet.
    pub async fn destroy(self) -> Result<()> {
        let nodes = std::mem::take(&mut *self.nodes.lock().expect("vnet nodes lock"));
        for (_, (_, ns)) in nodes {
            if let Some(ns) = ns {
                ns.delete().await?;
            }
        }
        self.router.delete().await
    }

    /// The kernel's view of the router table, for reports (`ip route`).
    pub async fn router_table(&self) -> Result<String> {
        let v4 = netns::output("ip", &["-n", self.router.name(), "-4", "route"]).await?;
        let v6 = netns::output("ip", &["-n", self.router.name(), "-6", "route"]).await?;
        Ok(format!("{v4}{v6}"))
    }
}

/// A VXLAN overlay between node namespaces (the alternative design, used by
/// the datapath benchmark): each node gets `vxlan0` over `eth0` with static
/// forwarding entries, and routes to the other nodes' pod CIDRs through it.
pub mod overlay {
    use super::NodeNet;

    pub const VNI: u32 = 4242;
    pub const DEV: &str = "vxlan0";

    fn mac(index: u8) -> String {
        format!("02:00:00:00:42:{index:02x}")
    }

    fn vtep(index: u8) -> String {
        format!("10.250.0.{index}")
    }

    /// Lines for `node`'s namespace: the device, its address and one
    /// neighbour, forwarding entry and route per peer (flannel's layout).
    pub fn lines(node: &NodeNet, peers: &[(&NodeNet, &str)]) -> Vec<String> {
        let mut lines = vec![
            format!(
                "link add name {DEV} type vxlan id {VNI} dstport 4789 local {} dev eth0 nolearning",
                node.ipv4
            ),
            format!("link set {DEV} address {}", mac(node.index)),
            format!("link set {DEV} up"),
            format!("addr add {}/32 dev {DEV}", vtep(node.index)),
        ];
        for (peer, pod_cidr) in peers {
            lines.push(format!(
                "neigh replace {} lladdr {} dev {DEV} nud permanent",
                vtep(peer.index),
                mac(peer.index)
            ));
            lines.push(format!(
                "route replace {pod_cidr} via {} dev {DEV} onlink",
                vtep(peer.index)
            ));
        }
        lines
    }

    /// `bridge` arguments, one command per peer, for the static forwarding
    /// entries (the VTEP of each peer's MAC).
    pub fn fdb_commands(peers: &[(&NodeNet, &str)]) -> Vec<Vec<String>> {
        peers
            .iter()
            .map(|(peer, _)| {
                [
                    "fdb",
                    "append",
                    &mac(peer.index),
                    "dev",
                    DEV,
                    "dst",
                    &peer.ipv4.to_string(),
                ]
                .map(str::to_owned)
                .to_vec()
            })
            .collect()
    }

    /// Lines that remove the overlay from a node.
    pub fn teardown() -> Vec<String> {
        vec![format!("link del {DEV}")]
    }
}

/// Wires a pod namespace to a node namespace by hand, the way the CNI plugin
/// does (veth pair, /32 address, link-local gateway answered by proxy ARP on
/// the host side, /32 host route): used by the datapath benchmark and the
/// fabric tests, which must not depend on the agent.
pub async fn plug_pod(node: &Netns, pod: &Netns, host_if: &str, ip: Ipv4Addr) -> Result<()> {
    node.ip_batch(&[
        format!(
            "link add name {host_if} type veth peer name eth0 netns {}",
            pod.name()
        ),
        format!("link set {host_if} up"),
        format!("route add {ip}/32 dev {host_if} scope link"),
    ])
    .await?;
    // Answer the pod's ARP for the gateway at once (no proxy delay), as
    // CNI plugins that use a link-local gateway do.
    node.sysctl(&[
        &format!("net.ipv4.conf.{host_if}.proxy_arp=1"),
        &format!("net.ipv4.neigh.{host_if}.proxy_delay=0"),
    ])
    .await?;
    pod.ip_batch(&[
        "link set eth0 up".to_owned(),
        format!("addr add {ip}/32 dev eth0"),
        "route add 169.254.1.1 dev eth0 scope link".to_owned(),
        "route add default via 169.254.1.1 dev eth0".to_owned(),
    ])
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(index: u8, dual: bool) -> NodeNet {
        NodeNet::at(
            &format!("node-{index}"),
            index,
            &format!("lab-n{index}"),
            dual,
        )
    }

    fn route(prefix: &str, hop: &str) -> FabricRoute {
        FabricRoute {
            name: prefix.replace(['/', '.', ':'], "-"),
            prefix: prefix.into(),
            next_hop: hop.parse().unwrap(),
        }
    }

    #[test]
    fn node_addresses_skip_azure_reserved_ones() {
        assert_eq!(node_ipv4(1), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(node_ipv4(3), Ipv4Addr::new(10, 0, 0, 6));
        assert_eq!(node_ipv6(1), "fd00:10::4".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn routes_render_via_the_next_hops_router_interface_or_as_blackholes() {
        let nodes: BTreeMap<_, _> = [node(1, true), node(2, true)]
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let rendered = render(
            &[
                route("10.244.0.0/24", "10.0.0.4"),
                route("10.244.1.0/24", "10.0.0.5"),
                route("fd00:244:1::/64", "fd00:10::5"),
                route("10.244.9.0/24", "10.0.0.99"),
            ],
            &nodes,
        );
        assert_eq!(
            rendered["10.244.1.0/24"],
            Rendered::Via {
                next_hop: "10.0.0.5".parse().unwrap(),
                dev: "vn2".into()
            }
        );
        assert_eq!(
            rendered["fd00:244:1::/64"],
            Rendered::Via {
                next_hop: "fd00:10::5".parse().unwrap(),
                dev: "vn2".into()
            }
        );
        assert_eq!(rendered["10.244.9.0/24"], Rendered::Blackhole);
    }

    #[test]
    fn diff_touches_only_changed_routes() {
        let via = |hop: &str, dev: &str| Rendered::Via {
            next_hop: hop.parse().unwrap(),
            dev: dev.into(),
        };
        let current: BTreeMap<String, Rendered> = [
            ("10.244.0.0/24".to_string(), via("10.0.0.4", "vn1")),
            ("10.244.1.0/24".to_string(), via("10.0.0.5", "vn2")),
            ("fd00:244::/64".to_string(), via("fd00:10::4", "vn1")),
        ]
        .into();
        let desired: BTreeMap<String, Rendered> = [
            ("10.244.0.0/24".to_string(), via("10.0.0.4", "vn1")),
            ("10.244.2.0/24".to_string(), via("10.0.0.6", "vn3")),
            ("fd00:244::/64".to_string(), Rendered::Blackhole),
        ]
        .into();
        assert_eq!(
            diff_lines(&current, &desired),
            vec![
                "route del 10.244.1.0/24",
                "route replace 10.244.2.0/24 via 10.0.0.6 dev vn3 onlink",
                "route replace blackhole fd00:244::/64",
            ]
        );
        assert!(diff_lines(&desired, &desired).is_empty());
    }

    #[test]
    fn single_stack_nodes_get_no_ipv6_lines() {
        let lines = node_router_lines(&node(2, false));
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("fd00") && !l.contains("fe80"))
        );
        assert!(lines[0].contains("peer name eth0 netns lab-n2"));
        let lines = node_lines(&node(2, true));
        assert!(lines.contains(&"route add ::/0 via fe80::1 dev eth0".to_owned()));
    }
}
