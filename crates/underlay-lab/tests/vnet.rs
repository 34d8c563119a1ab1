//! The VNet fabric with real namespaces and real packets: pod CIDRs are
//! reachable across nodes only through routes applied from the route table,
//! TCP/UDP/SCTP servers answer probes, and the relay reaches the machine's
//! loopback from inside a node. Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use underlay_lab::netns::{self, Netns};
use underlay_lab::traffic::{self, Outcome, PortSpec, Protocol};
use underlay_lab::vnet::{self, FabricRoute, Vnet, VnetConfig};

const TIMEOUT: Duration = Duration::from_millis(700);

async fn vnet(nodes: &[&str], dual_stack: bool) -> Vnet {
    let v = Vnet::create(VnetConfig {
        prefix: netns::unique_prefix(),
        dual_stack,
        propagation_delay: Duration::ZERO,
    })
    .await
    .expect("create vnet");
    for n in nodes {
        v.add_node(n).await.expect("add node");
    }
    v
}

/// A hand-wired pod on `node` serving `ports`.
struct Pod {
    ns: Netns,
    _servers: traffic::Servers,
}

async fn pod(v: &Vnet, node: &str, ip: Ipv4Addr, ports: &[&str]) -> Pod {
    let n = v.node(node).expect("node exists");
    let node_ns = Netns::existing(&n.netns);
    let [_, _, third, fourth] = ip.octets();
    let ns = Netns::create(&format!("{}-p{third}x{fourth}", v.config().prefix))
        .await
        .expect("pod netns");
    vnet::plug_pod(&node_ns, &ns, &format!("h{third}x{fourth}"), ip)
        .await
        .expect("plug pod");
    let specs: Vec<PortSpec> = ports
        .iter()
        .map(|p| p.parse().expect("port spec"))
        .collect();
    let listeners = ns
        .enter(move || traffic::open(&specs))
        .expect("enter")
        .expect("open ports");
    let servers = traffic::serve(listeners, &format!("pod-{ip}")).expect("serve");
    Pod {
        ns,
        _servers: servers,
    }
}

fn probe(from: &Netns, to: Ipv4Addr, port: u16, protocol: Protocol) -> Outcome {
    let target = SocketAddr::new(to.into(), port);
    from.enter(move || traffic::probe(target, protocol, TIMEOUT))
        .expect("enter netns")
}

fn route(prefix: &str, hop: Ipv4Addr) -> FabricRoute {
    FabricRoute {
        name: prefix.replace(['/', '.'], "-"),
        prefix: prefix.into(),
        next_hop: hop.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_cidrs_are_reachable_across_nodes_only_through_applied_routes() {
    if !netns::require_root("pod_cidrs_are_reachable_across_nodes_only_through_applied_routes") {
        return;
    }
    let v = vnet(&["node-1", "node-2"], false).await;
    let a = pod(&v, "node-1", Ipv4Addr::new(10, 244, 1, 10), &["80/tcp"]).await;
    let b = pod(
        &v,
        "node-2",
        Ipv4Addr::new(10, 244, 2, 10),
        &["80/tcp", "53/udp", "9000/sctp"],
    )
    .await;

    // No route in the table: the fabric has nowhere to send pod traffic.
    let before = probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), 80, Protocol::Tcp);
    assert!(
        !before.connected(),
        "reached a pod CIDR without a route: {before}"
    );

    v.apply_routes(vec![
        route("10.244.1.0/24", v.node("node-1").unwrap().ipv4),
        route("10.244.2.0/24", v.node("node-2").unwrap().ipv4),
    ])
    .await
    .expect("apply routes");
    for (port, protocol) in [
        (80, Protocol::Tcp),
        (53, Protocol::Udp),
        (9000, Protocol::Sctp),
    ] {
        let got = probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), port, protocol);
        assert_eq!(
            got.reply(),
            Some("pod-10.244.2.10"),
            "{protocol} after routes: {got}"
        );
    }
    // A closed TCP port is refused, a closed UDP port too (ICMP), and an
    // unserved SCTP port stays silent: no SCTP stack to answer ABORT.
    assert_eq!(
        probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), 81, Protocol::Tcp),
        Outcome::Refused
    );
    assert_eq!(
        probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), 54, Protocol::Udp),
        Outcome::Refused
    );
    assert_eq!(
        probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), 9001, Protocol::Sctp),
        Outcome::Timeout
    );

    // Removing node-2's route cuts the path again.
    v.apply_routes(vec![route("10.244.1.0/24", v.node("node-1").unwrap().ipv4)])
        .await
        .expect("apply routes");
    let after = probe(&a.ns, Ipv4Addr::new(10, 244, 2, 10), 80, Protocol::Tcp);
    assert!(
        !after.connected(),
        "route removed but still reachable: {after}"
    );
    drop((a, b));
    v.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_to_a_node_that_left_become_blackholes_and_recover_when_it_returns() {
    if !netns::require_root(
        "routes_to_a_node_that_left_become_blackholes_and_recover_when_it_returns",
    ) {
        return;
    }
    let v = vnet(&["node-1", "node-2"], false).await;
    let hop = v.node("node-2").unwrap().ipv4;
    v.apply_routes(vec![route("10.244.2.0/24", hop)])
        .await
        .unwrap();
    assert!(
        v.router_table()
            .await
            .unwrap()
            .contains("10.244.2.0/24 via 10.0.0.5 dev vn2")
    );
    v.remove_node("node-2").await.unwrap();
    assert!(
        v.router_table()
            .await
            .unwrap()
            .contains("blackhole 10.244.2.0/24")
    );
    assert!(
        netns::list(&v.config().prefix)
            .iter()
            .all(|n| !n.ends_with("-n2"))
    );
    let back = v.add_node("node-2").await.unwrap();
    assert_eq!(back.ipv4, hop, "the lowest free index is reused");
    assert!(
        v.router_table()
            .await
            .unwrap()
            .contains("10.244.2.0/24 via 10.0.0.5 dev vn2")
    );
    v.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_reach_each_other_over_ipv4_and_ipv6_through_the_router() {
    if !netns::require_root("nodes_reach_each_other_over_ipv4_and_ipv6_through_the_router") {
        return;
    }
    let v = vnet(&["node-1", "node-2"], true).await;
    let n1 = v.node("node-1").unwrap();
    let n2 = v.node("node-2").unwrap();
    let ns2 = Netns::existing(&n2.netns);
    let listeners = ns2
        .enter(|| traffic::open(&["7000/tcp".parse().unwrap()]))
        .unwrap()
        .unwrap();
    let _servers = traffic::serve(listeners, "node-2").unwrap();
    let ns1 = Netns::existing(&n1.netns);
    for ip in n2.addresses() {
        let got = ns1
            .enter(move || traffic::probe(SocketAddr::new(ip, 7000), Protocol::Tcp, TIMEOUT))
            .unwrap();
        assert_eq!(got.reply(), Some("node-2"), "to {ip}: {got}");
    }
    v.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_reaches_the_machines_loopback_from_inside_a_node() {
    if !netns::require_root("the_relay_reaches_the_machines_loopback_from_inside_a_node") {
        return;
    }
    let v = vnet(&["node-1"], false).await;
    // A server on the machine's own loopback (never reachable from the node).
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for mut conn in local.incoming().flatten() {
            let mut line = String::new();
            let _ = std::io::BufReader::new(&conn).read_line(&mut line);
            let _ = conn.write_all(b"machine\n");
        }
    });
    let node_ns = Netns::existing(&v.node("node-1").unwrap().netns);
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let direct = node_ns
        .enter(move || traffic::probe(target, Protocol::Tcp, TIMEOUT))
        .unwrap();
    assert!(
        !direct.connected() || direct.reply() != Some("machine"),
        "node reached the machine's loopback directly"
    );
    let relay =
        underlay_lab::relay::start(&node_ns.path(), "127.0.0.1:6443".parse().unwrap(), target)
            .unwrap();
    let via = node_ns
        .enter(|| traffic::probe("127.0.0.1:6443".parse().unwrap(), Protocol::Tcp, TIMEOUT))
        .unwrap();
    assert_eq!(via.reply(), Some("machine"), "{via}");
    drop(relay);
    v.destroy().await.unwrap();
}
