//! Native routing against a VXLAN overlay between the same two nodes and
//! pods, wired by hand like the CNI plugin wires them (no agent involved):
//! switching mode swaps the routes only.

use super::{Alternate, BoxError, Probes, Settings};
use crate::netns::{self, Netns};
use crate::traffic::{self, PortSpec, Protocol};
use crate::vnet::{self, FabricRoute, NodeNet, Vnet, overlay};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The two nodes' overlay peers: each reaches the other's pod CIDR.
type OverlayPairs<'a> = [(&'a NodeNet, [(&'a NodeNet, &'a str); 1]); 2];

/// The configurations, in table order (the first is the reference).
pub const MODES: [&str; 2] = ["native routing", "VXLAN overlay"];

/// On the VNet `v`: pod a on node-1 and pod b (the servers) on node-2, then
/// both modes measured from a to b in alternating rounds.
pub async fn compare(v: &Vnet, settings: &Settings) -> Result<Vec<super::Series>, BoxError> {
    let n1 = v.add_node("node-1").await?;
    let n2 = v.add_node("node-2").await?;
    let prefix = v.config().prefix.clone();
    let a = Netns::create(&format!("{prefix}-pa")).await?;
    let b = Netns::create(&format!("{prefix}-pb")).await?;
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    vnet::plug_pod(&Netns::existing(&n1.netns), &a, "hpa", ip_a).await?;
    vnet::plug_pod(&Netns::existing(&n2.netns), &b, "hpb", ip_b).await?;
    let ports = vec![PortSpec {
        port: 80,
        protocol: Protocol::Tcp,
    }];
    let listeners = b.enter(move || traffic::open(&ports))??;
    let _servers = traffic::serve(listeners, "b")?;
    let probes = Probes::start(a.path(), &b.path(), ip_b.into())?;

    let pairs: OverlayPairs<'_> = [
        (&n1, [(&n2, "10.244.2.0/24")]),
        (&n2, [(&n1, "10.244.1.0/24")]),
    ];
    create_overlay_devices(&pairs).await?;
    // Neither mode's routes: pods must not connect, or the comparison
    // would measure something else.
    v.apply_routes(Vec::new()).await?;
    let target: SocketAddr = (ip_b, 80).into();
    let cut = a.enter(move || traffic::probe(target, Protocol::Tcp, Duration::from_millis(500)))?;
    if cut.connected() {
        return Err(
            "pods connect with neither fabric nor overlay routes; the measurement would be wrong"
                .into(),
        );
    }
    let mut modes = Modes {
        v,
        pairs,
        fabric: fabric(&n1, &n2),
        probes,
        settings,
    };
    super::alternate(&mut modes, settings.rounds, MODES).await
}

fn fabric(n1: &NodeNet, n2: &NodeNet) -> Vec<FabricRoute> {
    vec![
        FabricRoute {
            name: "n1".into(),
            prefix: "10.244.1.0/24".into(),
            next_hop: n1.ipv4.into(),
        },
        FabricRoute {
            name: "n2".into(),
            prefix: "10.244.2.0/24".into(),
            next_hop: n2.ipv4.into(),
        },
    ]
}

struct Modes<'a> {
    v: &'a Vnet,
    pairs: OverlayPairs<'a>,
    fabric: Vec<FabricRoute>,
    probes: Probes,
    settings: &'a Settings,
}

impl Alternate for Modes<'_> {
    async fn switch_to(&mut self, mode: usize) -> Result<(), BoxError> {
        if mode == 0 {
            overlay_routes(&self.pairs, false).await;
            self.v.apply_routes(self.fabric.clone()).await?;
        } else {
            self.v.apply_routes(Vec::new()).await?;
            overlay_routes(&self.pairs, true).await;
        }
        Ok(())
    }

    async fn measure(&mut self, mode: usize) -> Result<super::Sample, BoxError> {
        self.probes.measure(MODES[mode], self.settings).await
    }
}

/// The overlay's devices and forwarding entries on both nodes, without its
/// routes: they exist throughout, and switching modes swaps the routes
/// only (fabric routes for native, routes via vxlan0 for the overlay). The
/// lab's overlay creates its devices the same way.
pub(super) async fn create_overlay_devices(pairs: &OverlayPairs<'_>) -> Result<(), BoxError> {
    for (node, peers) in pairs {
        let lines: Vec<String> = overlay::lines(node, peers)
            .into_iter()
            .filter(|l| !l.starts_with("route "))
            .collect();
        Netns::existing(&node.netns).ip_batch(&lines).await?;
        for args in overlay::fdb_commands(peers) {
            let mut full = vec!["-n", node.netns.as_str()];
            full.extend(args.iter().map(String::as_str));
            netns::run("bridge", &full).await?;
        }
    }
    Ok(())
}

/// Adds (`on`) or deletes the overlay's routes on both nodes.
async fn overlay_routes(pairs: &OverlayPairs<'_>, on: bool) {
    for (node, peers) in pairs {
        let lines: Vec<String> = overlay::lines(node, peers)
            .into_iter()
            .filter(|l| l.starts_with("route "))
            .map(|l| {
                if on {
                    l
                } else {
                    format!(
                        "route del {}",
                        l.split_whitespace().nth(2).unwrap_or_default()
                    )
                }
            })
            .collect();
        let _ = Netns::existing(&node.netns).ip_batch(&lines).await;
    }
}
