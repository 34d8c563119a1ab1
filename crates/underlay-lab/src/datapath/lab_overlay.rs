//! A VXLAN overlay on a running lab between the nodes of the benchmark's
//! client and server pods: the design underlay rejects, measured on the
//! same agents and pods. Each node namespace gets the overlay's device over
//! its `eth0` (the nodes' fabric addresses as VTEPs, static forwarding
//! entries) once; switching it on adds a route for the peer node's pod CIDR
//! via the device, more specific than the node's default route to the
//! fabric, and switching it off deletes that route. The fabric's own routes
//! stay as they are.
//!
//! The device's MTU is the node's `eth0` MTU less VXLAN's 50 bytes of
//! encapsulation; while the overlay carries the pods' traffic their
//! interfaces (both veth ends) take that MTU, as an overlay's CNI sets it,
//! so TCP's MSS fits and nothing is fragmented.

use super::BoxError;
use crate::kubelet::PodInfo;
use crate::lab::Lab;
use crate::netns::{self, Netns};
use crate::scenario;
use crate::traffic::Protocol;
use crate::vnet::{FabricRoute, NodeNet, overlay};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// What VXLAN over IPv4 adds to each inner frame: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const OVERHEAD: u32 = 50;

/// One end: a node, its benchmark pod, and the peer it reaches over the
/// overlay.
struct Side {
    node: NodeNet,
    /// The peer node's pod CIDR.
    peer_cidr: String,
    /// The `ip -batch` line of the route to it via the overlay.
    route: String,
    /// The benchmark pod on the peer node.
    peer_pod: IpAddr,
    /// This node's benchmark pod: its namespace, and its veth's host end.
    pod_netns: String,
    host_if: String,
}

/// The overlay between the nodes of two pods of a lab.
pub struct LabOverlay {
    sides: [Side; 2],
    /// The pods' names (`namespace/name`), client first.
    pods: [String; 2],
    /// The nodes' `eth0` MTU (the underlay's).
    underlay_mtu: u32,
    /// The device's, which the pods take while it is on.
    mtu: u32,
    /// The pods' own, restored when it is switched off.
    pod_mtu: u32,
    on: bool,
}

impl LabOverlay {
    /// Creates the devices for the pods `client` and `server` (on two
    /// different nodes of `lab`), without routes: the overlay is off.
    pub async fn create(lab: &Lab, client: &PodInfo, server: &PodInfo) -> Result<Self, BoxError> {
        let node = |name: &str| {
            lab.vnet()
                .node(name)
                .ok_or_else(|| format!("no node {name} in the lab"))
        };
        let (n1, n2) = (node(&client.node)?, node(&server.node)?);
        if n1.name == n2.name {
            return Err(format!(
                "pods {} and {} share node {}",
                client.key, server.key, n1.name
            )
            .into());
        }
        let routes = lab.vnet().routes();
        let cidr = |n: &NodeNet| {
            pod_cidr(&routes, n)
                .ok_or_else(|| format!("the fabric has no pod CIDR route to {}", n.name))
        };
        let (cidr1, cidr2) = (cidr(&n1)?, cidr(&n2)?);
        let ipv4 = |p: &PodInfo| {
            p.ips
                .iter()
                .copied()
                .find(IpAddr::is_ipv4)
                .ok_or_else(|| format!("pod {} has no IPv4 address", p.key))
        };
        let (ip1, ip2) = (ipv4(client)?, ipv4(server)?);
        let side =
            |node: &NodeNet, peer: &NodeNet, peer_cidr: &str, peer_pod, pod: &PodInfo| Side {
                node: node.clone(),
                peer_cidr: peer_cidr.to_owned(),
                route: overlay::lines(node, &[(peer, peer_cidr)])
                    .into_iter()
                    .find(|l| l.starts_with("route "))
                    .unwrap_or_default(),
                peer_pod,
                pod_netns: pod.netns.clone(),
                host_if: String::new(),
            };
        let mut sides = [
            side(&n1, &n2, &cidr2, ip2, client),
            side(&n2, &n1, &cidr1, ip1, server),
        ];
        let pairs = [
            (&n1, [(&n2, cidr2.as_str())]),
            (&n2, [(&n1, cidr1.as_str())]),
        ];
        super::routing::create_overlay_devices(&pairs).await?;
        let underlay_mtu = link_mtu(&n1.netns, "eth0").await?;
        if link_mtu(&n2.netns, "eth0").await? != underlay_mtu {
            return Err("the two nodes' eth0 MTUs differ".into());
        }
        let mtu = underlay_mtu - OVERHEAD;
        let mut pod_mtu = None;
        for s in &mut sides {
            let ns = Netns::existing(&s.node.netns);
            // The overlay carries IPv4 only: no IPv6 neighbour discovery
            // on it to count as traffic.
            ns.sysctl(&[&format!("net.ipv6.conf.{}.disable_ipv6=1", overlay::DEV)])
                .await?;
            ns.ip_batch(&[format!("link set dev {} mtu {mtu}", overlay::DEV)])
                .await?;
            let set = link_mtu(&s.node.netns, overlay::DEV).await?;
            if set != mtu {
                return Err(format!(
                    "{} on {} has MTU {set}, not {mtu}",
                    overlay::DEV,
                    s.node.name
                )
                .into());
            }
            s.host_if = host_end(&s.node.netns, &s.pod_netns).await?;
            let own = link_mtu(&s.pod_netns, "eth0").await?;
            if *pod_mtu.get_or_insert(own) != own {
                return Err("the two pods' MTUs differ".into());
            }
        }
        Ok(Self {
            sides,
            pods: [client.key.clone(), server.key.clone()],
            underlay_mtu,
            mtu,
            pod_mtu: pod_mtu.unwrap_or(underlay_mtu),
            on: false,
        })
    }

    /// What the overlay is, for the report.
    pub fn describe(&self) -> String {
        let pods = if self.pod_mtu > self.mtu {
            format!(
                "the pods' interfaces (both veth ends) go from MTU {} to {} while it carries \
                 their traffic, as an overlay's CNI configures its pods, so that TCP's MSS \
                 fits and nothing is fragmented",
                self.pod_mtu, self.mtu
            )
        } else {
            format!("the pods' MTU {} fits inside it", self.pod_mtu)
        };
        format!(
            "{} (VNI {}, UDP 4789, static forwarding entries, the nodes' fabric addresses as \
             VTEPs). Its MTU is {}, the nodes' eth0 MTU {} less VXLAN's {OVERHEAD} bytes of \
             encapsulation; {pods}.",
            overlay::DEV,
            overlay::VNI,
            self.mtu,
            self.underlay_mtu,
        )
    }

    /// Puts the pods' traffic on the overlay, and returns once `ip route
    /// get` of the peer pod gives the overlay's device on both nodes and a
    /// connection from client to server has gone out of both devices.
    pub async fn switch_on(&mut self, lab: &Lab) -> Result<(), BoxError> {
        self.set_pod_mtu(self.mtu).await?;
        for s in &self.sides {
            Netns::existing(&s.node.netns)
                .ip_batch(std::slice::from_ref(&s.route))
                .await?;
        }
        self.on = true;
        self.check_lookups(true).await?;
        let before = self.tx_packets().await?;
        self.connect(lab).await?;
        let after = self.tx_packets().await?;
        for (s, (b, a)) in self.sides.iter().zip(before.into_iter().zip(after)) {
            if a <= b {
                return Err(format!(
                    "overlay routes in place, but {} -> {} sent nothing out of {} on {}",
                    self.pods[0],
                    self.pods[1],
                    overlay::DEV,
                    s.node.name
                )
                .into());
            }
        }
        Ok(())
    }

    /// Gives the pods' traffic back to the fabric's routes, and returns once
    /// `ip route get` of the peer pod leaves the overlay's device on both
    /// nodes, a connection from client to server sends nothing through
    /// either device, and the pods have their own MTU again.
    pub async fn switch_off(&mut self, lab: &Lab) -> Result<(), BoxError> {
        if self.on {
            for s in &self.sides {
                let route = format!("route del {} dev {}", s.peer_cidr, overlay::DEV);
                Netns::existing(&s.node.netns).ip_batch(&[route]).await?;
            }
            self.on = false;
        }
        self.check_lookups(false).await?;
        self.set_pod_mtu(self.pod_mtu).await?;
        let before = self.tx_packets().await?;
        self.connect(lab).await?;
        let after = self.tx_packets().await?;
        if after != before {
            return Err(format!(
                "overlay routes deleted, but {} -> {} still went out of {} ({before:?} -> {after:?} packets)",
                self.pods[0],
                self.pods[1],
                overlay::DEV
            )
            .into());
        }
        Ok(())
    }

    /// Checks that each node's route to the peer pod goes through the
    /// overlay's device (`on`) or not.
    async fn check_lookups(&self, on: bool) -> Result<(), BoxError> {
        for s in &self.sides {
            let ip = s.peer_pod.to_string();
            let out =
                netns::output("ip", &["-n", &s.node.netns, "-j", "route", "get", &ip]).await?;
            let dev = route_dev(&out).unwrap_or_default();
            if (dev == overlay::DEV) != on {
                return Err(format!(
                    "on {}, `ip route get {ip}` gives dev {dev:?}: the overlay should be {}",
                    s.node.name,
                    if on { "on" } else { "off" }
                )
                .into());
            }
        }
        Ok(())
    }

    /// Sets both pods' MTU, at both ends of their veth.
    async fn set_pod_mtu(&self, mtu: u32) -> Result<(), BoxError> {
        for s in &self.sides {
            for (ns, dev) in [(&s.pod_netns, "eth0"), (&s.node.netns, s.host_if.as_str())] {
                Netns::existing(ns)
                    .ip_batch(&[format!("link set dev {dev} mtu {mtu}")])
                    .await?;
                let set = link_mtu(ns, dev).await?;
                if set != mtu {
                    return Err(format!("{dev} in {ns} has MTU {set}, not {mtu}").into());
                }
            }
        }
        Ok(())
    }

    /// The packets each node's overlay device has sent.
    async fn tx_packets(&self) -> Result<[u64; 2], BoxError> {
        let mut out = [0; 2];
        for (s, n) in self.sides.iter().zip(&mut out) {
            let json = netns::output(
                "ip",
                &[
                    "-n",
                    &s.node.netns,
                    "-s",
                    "-j",
                    "link",
                    "show",
                    "dev",
                    overlay::DEV,
                ],
            )
            .await?;
            *n = tx_packets(&json).ok_or_else(|| {
                format!(
                    "no transmit counter for {} on {}",
                    overlay::DEV,
                    s.node.name
                )
            })?;
        }
        Ok(out)
    }

    /// One TCP connection from client to server, which must connect.
    async fn connect(&self, lab: &Lab) -> Result<(), BoxError> {
        let [client, server] = &self.pods;
        let within = Duration::from_secs(30);
        let o =
            scenario::expect_reach(lab, client, server, 80, Protocol::Tcp, true, within).await?;
        if !o.matched {
            return Err(format!("{client} cannot reach {server}: {}", o.outcome).into());
        }
        Ok(())
    }
}

/// The IPv4 pod CIDR the fabric routes to `node`.
fn pod_cidr(routes: &[FabricRoute], node: &NodeNet) -> Option<String> {
    routes
        .iter()
        .find(|r| r.next_hop == IpAddr::V4(node.ipv4) && !r.prefix.contains(':'))
        .map(|r| r.prefix.clone())
}

/// The MTU of `dev` in namespace `ns`.
async fn link_mtu(ns: &str, dev: &str) -> Result<u32, BoxError> {
    let json = netns::output("ip", &["-n", ns, "-j", "link", "show", "dev", dev]).await?;
    first(&json)
        .and_then(|l| l["mtu"].as_u64())
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| format!("no MTU for {dev} in {ns}: {json}").into())
}

/// The name, in `node_ns`, of the host end of the veth whose other end is
/// `eth0` in `pod_ns`.
async fn host_end(node_ns: &str, pod_ns: &str) -> Result<String, BoxError> {
    let pod = netns::output("ip", &["-n", pod_ns, "-j", "link", "show", "dev", "eth0"]).await?;
    let index = first(&pod)
        .and_then(|l| l["link_index"].as_u64())
        .ok_or_else(|| format!("eth0 in {pod_ns} names no peer: {pod}"))?;
    let links = netns::output("ip", &["-n", node_ns, "-j", "link", "show"]).await?;
    link_named(&links, index).ok_or_else(|| format!("no link {index} in {node_ns}").into())
}

fn first(json: &str) -> Option<Value> {
    serde_json::from_str::<Value>(json).ok()?.get(0).cloned()
}

/// The device of `ip -j route get`'s answer.
fn route_dev(json: &str) -> Option<String> {
    first(json)?["dev"].as_str().map(str::to_owned)
}

/// The transmitted packets of `ip -s -j link show`'s first link.
fn tx_packets(json: &str) -> Option<u64> {
    first(json)?["stats64"]["tx"]["packets"].as_u64()
}

/// The name of the link with `index` in `ip -j link show`'s answer.
fn link_named(json: &str, index: u64) -> Option<String> {
    let links: Value = serde_json::from_str(json).ok()?;
    links
        .as_array()?
        .iter()
        .find(|l| l["ifindex"].as_u64() == Some(index))?["ifname"]
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iproute_answers_are_read_for_device_counters_and_peer_links() {
        let get = r#"[{"dst":"10.244.2.10","gateway":"10.250.0.2","dev":"vxlan0","prefsrc":"10.250.0.1","flags":["onlink"],"uid":0,"cache":[]}]"#;
        assert_eq!(route_dev(get).as_deref(), Some("vxlan0"));
        assert_eq!(route_dev("[]"), None);
        let stats = r#"[{"ifindex":7,"ifname":"vxlan0","mtu":1450,"stats64":{"rx":{"packets":3},"tx":{"bytes":900,"packets":12}}}]"#;
        assert_eq!(tx_packets(stats), Some(12));
        assert_eq!(first(stats).unwrap()["mtu"], 1450);
        let links = r#"[{"ifindex":1,"ifname":"lo"},{"ifindex":9,"ifname":"udlab1c2"}]"#;
        assert_eq!(link_named(links, 9).as_deref(), Some("udlab1c2"));
        assert_eq!(link_named(links, 3), None);
    }

    #[test]
    fn a_nodes_pod_cidr_is_its_ipv4_fabric_route() {
        let node = NodeNet::at("node-2", 2, "lab-n2", true);
        let route = |prefix: &str, hop: IpAddr| FabricRoute {
            name: prefix.into(),
            prefix: prefix.into(),
            next_hop: hop,
        };
        let routes = [
            route("10.244.1.0/24", "10.0.0.4".parse().unwrap()),
            route("fd00:244:2::/64", node.ipv6.unwrap().into()),
            route("10.244.2.0/24", node.ipv4.into()),
        ];
        assert_eq!(pod_cidr(&routes, &node).as_deref(), Some("10.244.2.0/24"));
        assert_eq!(pod_cidr(&routes[..2], &node), None);
    }
}
