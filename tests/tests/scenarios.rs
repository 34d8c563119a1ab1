//! End-to-end scenarios beyond the demo: dual-stack, a pod that runs before
//! its node's route exists, and ARM throttling while 20 nodes join.
//! Needs root.

use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use underlay_e2e::{CONVERGE, lab};
use underlay_lab::arm::{Fault, FaultTarget};
use underlay_lab::scenario::{self, POD_PORTS};
use underlay_lab::traffic::Protocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_get_both_families_and_reach_each_other_over_both() {
    let Some(l) = lab(
        "dual_stack_pods_get_both_families_and_reach_each_other_over_both",
        |c| {
            c.nodes = 2;
            c.dual_stack = true;
        },
    )
    .await
    else {
        return;
    };
    for node in ["node-1", "node-2"] {
        l.wait_network_available(node, CONVERGE).await.unwrap();
        let cidrs = l
            .node_object(node)
            .await
            .unwrap()
            .unwrap()
            .spec
            .unwrap()
            .pod_cidrs
            .unwrap_or_default();
        assert_eq!(
            cidrs.len(),
            2,
            "{node} gets one pod CIDR per family: {cidrs:?}"
        );
    }
    // One route per node and family in the fabric.
    l.wait_for("four routes", CONVERGE, || async {
        (l.vnet().routes().len() == 4).then_some(())
    })
    .await
    .unwrap();
    for (key, node) in [("x/a", "node-1"), ("y/b", "node-2")] {
        scenario::namespace(&l, key.split('/').next().unwrap())
            .await
            .unwrap();
        scenario::pod(&l, key, Some(node), json!({})).await.unwrap();
        let info = l.wait_pod_running(key, CONVERGE).await.unwrap();
        assert!(
            info.ips.iter().any(IpAddr::is_ipv4) && info.ips.iter().any(IpAddr::is_ipv6),
            "{key}: {:?}",
            info.ips
        );
    }
    for v6 in [false, true] {
        for (port, proto) in POD_PORTS {
            let o =
                scenario::expect_reach_family(&l, "x/a", "y/b", port, proto, true, CONVERGE, v6)
                    .await
                    .unwrap();
            assert!(o.matched, "v6={v6} {port}/{proto}: {}", o.outcome);
        }
    }
    l.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_scheduled_before_its_nodes_route_exists_gets_traffic_once_the_route_lands() {
    let Some(l) = lab(
        "a_pod_scheduled_before_its_nodes_route_exists_gets_traffic_once_the_route_lands",
        |c| {
            c.nodes = 1;
            // Azure takes a while to program a route after the write succeeds.
            c.propagation_delay = Duration::from_secs(4);
        },
    )
    .await
    else {
        return;
    };
    scenario::namespace(&l, "x").await.unwrap();
    scenario::pod(&l, "x/a", Some("node-1"), json!({}))
        .await
        .unwrap();
    l.wait_pod_running("x/a", CONVERGE).await.unwrap();
    l.wait_for("node-1's route", CONVERGE, || async {
        (!l.vnet().routes().is_empty()).then_some(())
    })
    .await
    .unwrap();

    let node = l.add_node().await.unwrap();
    scenario::namespace(&l, "y").await.unwrap();
    scenario::pod(&l, "y/b", Some(&node), json!({}))
        .await
        .unwrap();
    let info = l.wait_pod_running("y/b", CONVERGE).await.unwrap();
    let hop = IpAddr::V4(l.vnet().node(&node).unwrap().ipv4);
    let routed = || l.vnet().routes().iter().any(|r| r.next_hop == hop);
    assert!(
        !routed(),
        "the route landed before the pod ran; the propagation delay is too short for this test"
    );
    let early = l
        .probe(
            "x/a",
            (info.ips[0], 80).into(),
            Protocol::Tcp,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    assert!(
        !early.connected(),
        "reached {} before its route existed: {early}",
        info.key
    );

    let start = Instant::now();
    let o = scenario::expect_reach(&l, "x/a", "y/b", 80, Protocol::Tcp, true, CONVERGE)
        .await
        .unwrap();
    assert!(
        o.matched,
        "no traffic after the route landed: {}",
        o.outcome
    );
    assert!(routed(), "traffic flowed only once the route was applied");
    eprintln!(
        "traffic {:.1}s after the pod ran",
        start.elapsed().as_secs_f64()
    );
    l.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_join_under_arm_throttling_and_all_get_routes_in_few_writes() {
    let Some(l) = lab(
        "twenty_nodes_join_under_arm_throttling_and_all_get_routes_in_few_writes",
        |c| {
            c.nodes = 0;
            c.route_controllers = 1;
        },
    )
    .await
    else {
        return;
    };
    l.arm().faults().inject(
        FaultTarget::Write,
        Fault::Throttle {
            retry_after_secs: 1,
        },
        2,
    );
    l.arm().faults().inject(
        FaultTarget::Write,
        Fault::AnotherOperation {
            retry_after_secs: 1,
        },
        1,
    );
    l.arm().clear_requests();
    let joins: Vec<_> = (0..20).map(|_| l.add_node()).collect();
    let names: Vec<String> = futures_join(joins).await;
    for n in &names {
        l.wait_network_available(n, Duration::from_secs(90))
            .await
            .unwrap();
    }
    l.wait_for("20 routes in the fabric", CONVERGE, || async {
        (l.vnet().routes().len() == 20).then_some(())
    })
    .await
    .unwrap();
    let requests = l.arm().requests();
    let throttled = requests.iter().filter(|r| r.status == Some(429)).count();
    let writes = requests.iter().filter(|r| r.kind.is_write()).count();
    assert!(throttled >= 3, "the injected 429s were seen ({throttled})");
    assert_eq!(l.arm().faults().pending(), 0);
    // Batching: far fewer writes than nodes, even with retries.
    assert!(writes < 20, "{writes} ARM writes for 20 nodes");
    eprintln!("20 nodes routed with {writes} ARM writes ({throttled} throttled)");
    l.down().await;
}

async fn futures_join<F: std::future::Future<Output = Result<String, underlay_lab::lab::Error>>>(
    fs: Vec<F>,
) -> Vec<String> {
    let mut out = Vec::new();
    // Nodes join concurrently, as a scale set adds VMs.
    let results = futures::future::join_all(fs).await;
    for r in results {
        out.push(r.expect("node joins"));
    }
    out
}
