//! The controller binary against a Kubernetes API server that fails: absent
//! at start, gone mid-run and back, answering Node writes with 409 or 500.
//! Readiness (`/readyz`, over real HTTP) is checked along the way: a leader is
//! ready only after its first full sync, a standby once its cache is synced.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;
use support::arm::ArmFixture;
use support::kube::{Binary, RestartableApi, add_node, eventually, pod_cidrs, route_created};
use underlay_lab::apiserver::{Failure, Match};
use underlay_lab::arm::{ArmConfig, Fault, FaultTarget};

async fn arm() -> ArmFixture {
    ArmFixture::start(ArmConfig::default(), Some(&[]), Duration::from_secs(5)).await
}

/// Every allocated CIDR, checking none is held by two nodes.
async fn unique_cidrs(client: &kube::Client) -> BTreeSet<String> {
    let all: Vec<String> = pod_cidrs(client)
        .await
        .into_iter()
        .flat_map(|(_, cs)| cs)
        .collect();
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(unique.len(), all.len(), "duplicate pod cidrs: {all:?}");
    unique
}

fn prefixes(arm: &ArmFixture) -> BTreeSet<String> {
    arm.applied()
        .into_iter()
        .map(|r| r.address_prefix)
        .collect()
}

#[tokio::test]
async fn the_controller_waits_for_an_absent_api_server_and_is_ready_only_after_its_first_sync() {
    let arm = arm().await;
    let mut api = RestartableApi::start().await;
    let client = api.client();
    add_node(&client, "n1", "10.0.0.1").await;
    add_node(&client, "n2", "10.0.0.2").await;
    api.stop().await;

    let bin = Binary::spawn(api.kubeconfig(), &arm, &[]);
    eventually("health endpoint up", || async {
        bin.readyz().await.0 == 503
    })
    .await;
    // With no API server there is no cache: not ready, and nothing written.
    for _ in 0..10 {
        let (code, body) = bin.readyz().await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("node cache"), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(arm.arm.writes(), 0);

    // Azure fails the first reads, so the first route sync takes a while
    // after the cache has synced: readiness must wait for it.
    arm.arm
        .faults()
        .inject(FaultTarget::TableGet, Fault::InternalError, 2);
    api.restart().await;
    let saw_waiting_for_routes = std::cell::Cell::new(false);
    eventually("ready", || async {
        // Until it holds the lease the instance is a standby, ready on its
        // cache alone; as the leader, ready means its first sync is done.
        let leading = bin.leading().await;
        let (code, body) = bin.readyz().await;
        if code == 200 && leading {
            // Both routes are in.
            assert_eq!(
                arm.applied().len(),
                2,
                "ready before the routes were written"
            );
            return true;
        }
        if body.contains("route table") {
            saw_waiting_for_routes.set(true);
        }
        false
    })
    .await;
    assert!(
        saw_waiting_for_routes.get(),
        "readiness waited for the route table"
    );
    assert_eq!(unique_cidrs(&client).await.len(), 2);
    assert_eq!(arm.arm.faults().pending(), 0);
    for n in ["n1", "n2"] {
        eventually("route condition", || route_created(&client, n)).await;
    }
    let logs = bin.kill().await;
    assert!(!logs.contains("never-logged"), "secret leaked into logs");
}

#[tokio::test]
async fn an_api_server_outage_ends_in_a_relist_without_duplicate_cidrs_or_route_churn() {
    let arm = arm().await;
    let mut api = RestartableApi::start().await;
    let client = api.client();
    // The leader keeps its lease through an outage shorter than the renew
    // deadline (a longer one ends the process, as a lost lease must).
    let bin = Binary::spawn(
        api.kubeconfig(),
        &arm,
        &[
            "--leader-elect-lease-duration",
            "20s",
            "--leader-elect-renew-deadline",
            "15s",
        ],
    );
    for i in 1..=3 {
        add_node(&client, &format!("n{i}"), &format!("10.0.0.{i}")).await;
    }
    eventually("three routes", || async { arm.applied().len() == 3 }).await;
    eventually("ready", || async { bin.readyz().await.0 == 200 }).await;
    let cidrs_before = unique_cidrs(&client).await;
    let routes_before = prefixes(&arm);
    let writes_before = arm.arm.writes();

    // The API server goes away; while it is down, n2 is deleted (edited out
    // of its stored state with the resourceVersion moved on, as a deletion
    // the controller never saw a watch event for).
    api.stop().await;
    let n2_cidr = {
        let path = api.snapshot();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let objects = doc["objects"].as_array_mut().unwrap();
        let at = objects
            .iter()
            .position(|o| o["kind"] == "Node" && o["metadata"]["name"] == "n2")
            .expect("n2 stored");
        let n2 = objects.remove(at);
        let rv: u64 = doc["resourceVersion"].as_str().unwrap().parse().unwrap();
        doc["resourceVersion"] = (rv + 1).to_string().into();
        std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
        n2["spec"]["podCIDRs"][0].as_str().unwrap().to_string()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, body) = bin.readyz().await;
    assert_eq!(
        code, 200,
        "an informer stays synced through an outage: {body}"
    );
    assert_eq!(
        arm.arm.writes(),
        writes_before,
        "nothing written while blind"
    );

    api.restart().await;
    eventually("n2's route removed after the relist", || async {
        !prefixes(&arm).contains(&n2_cidr)
    })
    .await;
    let mut expect = routes_before.clone();
    expect.remove(&n2_cidr);
    assert_eq!(prefixes(&arm), expect, "other routes untouched");
    assert_eq!(
        arm.arm.writes(),
        writes_before + 1,
        "one write, removing n2's route; no churn"
    );

    // A node joining after the outage gets a CIDR nobody holds.
    add_node(&client, "n4", "10.0.0.4").await;
    eventually("n4 routed", || async { arm.applied().len() == 3 }).await;
    let cidrs_after = unique_cidrs(&client).await;
    assert_eq!(cidrs_after.len(), 3);
    for c in cidrs_before.iter().filter(|c| **c != n2_cidr) {
        assert!(cidrs_after.contains(c), "{c} kept");
    }
    assert_eq!(arm.arm.writes(), writes_before + 2);
    for n in ["n1", "n3", "n4"] {
        eventually("route condition", || route_created(&client, n)).await;
    }
    drop(bin);
}

#[tokio::test]
async fn node_writes_answered_with_conflict_or_server_errors_are_retried_until_they_land() {
    let arm = arm().await;
    let api = RestartableApi::start().await;
    let client = api.client();
    // The kubelet's own writes go first; the faults are for the controller's.
    add_node(&client, "n1", "10.0.0.1").await;
    add_node(&client, "n2", "10.0.0.2").await;
    let faults = api.handle().faults();
    let patch = |path: &str| Match {
        method: Some(http::Method::PATCH),
        path_contains: Some(path.into()),
    };
    // Status writes (the NetworkUnavailable condition) are matched first, so
    // the `/nodes/` rules catch the spec writes (the pod CIDRs).
    faults.fail_next(1, Failure::Conflict, patch("/status"));
    faults.fail_next(1, Failure::Internal, patch("/status"));
    faults.fail_next(1, Failure::Conflict, patch("/nodes/"));
    faults.fail_next(1, Failure::Internal, patch("/nodes/"));
    let bin = Binary::spawn(
        api.kubeconfig(),
        &arm,
        &["--node-cidr-retry-interval", "200ms"],
    );
    for n in ["n1", "n2"] {
        eventually("route condition", || route_created(&client, n)).await;
    }
    assert_eq!(faults.injected(), 4, "every injected failure was hit");
    assert_eq!(unique_cidrs(&client).await.len(), 2);
    assert_eq!(arm.applied().len(), 2);
    eventually("ready", || async { bin.readyz().await.0 == 200 }).await;
    let logs = bin.kill().await;
    assert!(logs.contains("cannot write pod cidrs"), "{logs}");
    assert!(
        logs.contains("cannot set NetworkUnavailable condition"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_standby_is_ready_once_its_cache_syncs_and_takes_over_when_the_leader_dies() {
    let arm = arm().await;
    let api = RestartableApi::start().await;
    let client = api.client();
    add_node(&client, "n1", "10.0.0.1").await;
    let leader = Binary::spawn(api.kubeconfig(), &arm, &["--leader-elect-identity", "a"]);
    eventually("leader ready", || async { leader.readyz().await.0 == 200 }).await;
    // A standby runs no route sync: its readiness rests on its cache alone.
    let standby = Binary::spawn(api.kubeconfig(), &arm, &["--leader-elect-identity", "b"]);
    eventually("standby ready", || async {
        standby.readyz().await.0 == 200
    })
    .await;
    assert!(
        standby
            .metrics()
            .await
            .lines()
            .any(|l| l == "underlay_route_controller_leader 0"),
        "b is a standby"
    );
    let writes = arm.arm.writes();
    leader.kill().await;
    eventually("b leads", || standby.leading()).await;
    add_node(&client, "n2", "10.0.0.2").await;
    eventually("n2 routed by the new leader", || async {
        arm.applied().len() == 2
    })
    .await;
    assert_eq!(arm.arm.writes(), writes + 1, "the takeover rewrote nothing");
    assert_eq!(unique_cidrs(&client).await.len(), 2);
    eventually("new leader ready", || async {
        standby.readyz().await.0 == 200
    })
    .await;
}
