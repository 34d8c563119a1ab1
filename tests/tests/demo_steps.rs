//! The demo's steps as tests: cross-node traffic over the routes, node join
//! and leave, an agent restart under traffic, route-controller failover.
//! Each test brings up its own lab with the real binaries. Needs root.

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use underlay_e2e::{CONVERGE, lab};
use underlay_lab::lab::network_unavailable;
use underlay_lab::scenario::{self, POD_PORTS, PROBE_TIMEOUT};
use underlay_lab::traffic::Protocol;

async fn pods(l: &underlay_lab::lab::Lab, placement: &[(&str, &str)]) {
    for (key, node) in placement {
        let ns = key.split('/').next().unwrap();
        scenario::namespace(l, ns).await.unwrap();
        scenario::pod(l, key, Some(node), json!({})).await.unwrap();
    }
    for (key, node) in placement {
        let info = l.wait_pod_running(key, CONVERGE).await.unwrap();
        assert_eq!(info.node, *node, "{key} runs where it was placed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_different_nodes_reach_each_other_over_the_route_table() {
    let Some(l) = lab(
        "pods_on_different_nodes_reach_each_other_over_the_route_table",
        |_| {},
    )
    .await
    else {
        return;
    };
    for node in ["node-1", "node-2", "node-3"] {
        l.wait_network_available(node, CONVERGE).await.unwrap();
    }
    pods(
        &l,
        &[("x/a", "node-1"), ("y/b", "node-2"), ("z/c", "node-3")],
    )
    .await;
    for (from, to) in [("x/a", "y/b"), ("y/b", "z/c"), ("z/c", "x/a")] {
        for (port, proto) in POD_PORTS {
            let o = scenario::expect_reach(&l, from, to, port, proto, true, CONVERGE)
                .await
                .unwrap();
            assert!(o.matched, "{from} -> {to} {port}/{proto}: {}", o.outcome);
        }
    }
    // The path is the fabric's route: without node-2's route, y/b is cut off.
    let routes = l.vnet().routes();
    let hop_b = l.vnet().node("node-2").unwrap().ipv4;
    assert!(
        routes
            .iter()
            .any(|r| r.next_hop == std::net::IpAddr::V4(hop_b))
    );
    let kept: Vec<_> = routes
        .into_iter()
        .filter(|r| r.next_hop != std::net::IpAddr::V4(hop_b))
        .collect();
    l.vnet().apply_routes(kept).await.unwrap();
    let o = scenario::expect_reach(&l, "x/a", "y/b", 80, Protocol::Tcp, false, CONVERGE)
        .await
        .unwrap();
    assert!(o.matched, "y/b reachable without its route: {}", o.outcome);
    l.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_routed_and_a_leaving_node_loses_its_route() {
    let Some(l) = lab(
        "a_joining_node_is_routed_and_a_leaving_node_loses_its_route",
        |c| c.nodes = 1,
    )
    .await
    else {
        return;
    };
    pods(&l, &[("x/a", "node-1")]).await;
    let node = l.add_node().await.unwrap();
    let before = l.node_object(&node).await.unwrap().unwrap();
    l.wait_network_available(&node, CONVERGE).await.unwrap();
    let after = l.node_object(&node).await.unwrap().unwrap();
    assert_ne!(
        network_unavailable(&before),
        Some(false),
        "NetworkUnavailable starts True"
    );
    assert_eq!(network_unavailable(&after), Some(false));
    let cidr = after.spec.unwrap().pod_cidrs.unwrap_or_default();
    assert_eq!(cidr.len(), 1, "one pod CIDR per family");
    let hop = std::net::IpAddr::V4(l.vnet().node(&node).unwrap().ipv4);
    l.wait_for("the node's route in the fabric", CONVERGE, || async {
        l.vnet()
            .routes()
            .iter()
            .any(|r| r.next_hop == hop && r.prefix == cidr[0])
            .then_some(())
    })
    .await
    .unwrap();
    pods(&l, &[("y/b", node.as_str())]).await;
    let o = scenario::expect_reach(&l, "x/a", "y/b", 80, Protocol::Tcp, true, CONVERGE)
        .await
        .unwrap();
    assert!(o.matched, "{}", o.outcome);

    l.remove_node(&node).await.unwrap();
    l.wait_for("the node's route to be removed", CONVERGE, || async {
        (!l.vnet().routes().iter().any(|r| r.next_hop == hop)).then_some(())
    })
    .await
    .unwrap();
    assert!(l.node_object(&node).await.unwrap().is_none());
    l.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_under_traffic_loses_no_probe_and_keeps_policy() {
    let Some(l) = lab(
        "an_agent_restart_under_traffic_loses_no_probe_and_keeps_policy",
        |c| c.nodes = 2,
    )
    .await
    else {
        return;
    };
    pods(&l, &[("x/a", "node-1"), ("y/b", "node-2")]).await;
    scenario::policy(
        &l,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "only-tcp", "namespace": "y"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}}),
    )
    .await
    .unwrap();
    let o = scenario::expect_reach(&l, "x/a", "y/b", 53, Protocol::Udp, false, CONVERGE)
        .await
        .unwrap();
    assert!(
        o.matched,
        "policy in force before the restart: {}",
        o.outcome
    );
    let ip = scenario::pod_ip(&l, "y/b", false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = async {
        let (mut sent, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let o = l
                .probe("x/a", (ip, 80).into(), Protocol::Tcp, PROBE_TIMEOUT)
                .await
                .unwrap();
            sent += 1;
            if o.reply() != Some("y/b") {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (sent, failed)
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        l.kill_agent("node-2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        l.start_agent("node-2").await.unwrap();
        l.wait_agent_ready("node-2", CONVERGE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let ((sent, failed), ()) = tokio::join!(traffic, restart);
    assert!(sent > 10, "traffic ran during the restart ({sent} probes)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} probes failed during the agent restart"
    );
    // After the restart: the old pod keeps its address, policy still holds,
    // and a new pod on the node starts.
    assert_eq!(scenario::pod_ip(&l, "y/b", false), Some(ip));
    let o = scenario::expect_reach(&l, "x/a", "y/b", 53, Protocol::Udp, false, CONVERGE)
        .await
        .unwrap();
    assert!(o.matched, "policy lost in the restart: {}", o.outcome);
    pods(&l, &[("y/b2", "node-2")]).await;
    assert_ne!(
        scenario::pod_ip(&l, "y/b2", false),
        Some(ip),
        "no duplicate address after restart"
    );
    l.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_route_controller_takes_over_when_the_leader_dies() {
    let Some(l) = lab(
        "the_other_route_controller_takes_over_when_the_leader_dies",
        |c| c.nodes = 1,
    )
    .await
    else {
        return;
    };
    let leader = l
        .wait_for("a leader", CONVERGE, || l.leader())
        .await
        .unwrap();
    let index: usize = leader
        .rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .expect("replica index in the identity");
    l.kill_route_controller(index).await.unwrap();
    let next = l
        .wait_for("a new leader", Duration::from_secs(60), || async {
            l.leader().await.filter(|n| *n != leader)
        })
        .await
        .unwrap();
    assert_ne!(next, leader);
    let node = l.add_node().await.unwrap();
    l.wait_network_available(&node, CONVERGE).await.unwrap();
    l.down().await;
}
