//! The ARM adapter and the reconciler against the lab's ARM route-table
//! service over real HTTP, with every fault the service can inject.

mod support;

use std::time::Duration;
use support::arm::{ArmFixture, table_id};
use underlay_lab::arm::{AppliedRoute, ArmConfig, Fault, FaultTarget, RequestKind};
use underlay_route_controller::azure::arm::ArmRouteTable;
use underlay_route_controller::azure::{
    ArmError, OperationState, Precondition, RouteTable, TableRoute, TableWrite,
};
use underlay_route_controller::nodes::RouteCondition;
use underlay_route_controller::nodes::fake::RecordingSink;
use underlay_route_controller::plan::{NodeRoutes, Ownership};
use underlay_route_controller::reconciler::{Reconciler, ReconcilerConfig, RouteInput};

type Env = ArmFixture;

fn firewall() -> AppliedRoute {
    AppliedRoute::new(
        "to-firewall",
        "0.0.0.0/0",
        "VirtualAppliance",
        Some("10.0.0.4"),
    )
}

/// The service with (`seed`) or without the table; the table holds a
/// user's default route to a firewall the controller must never touch.
async fn env(config: ArmConfig, seed: bool) -> Env {
    let routes = [firewall()];
    ArmFixture::start(config, seed.then_some(&routes[..]), Duration::from_secs(2)).await
}

fn our_route(node: &str, cidr: &str, hop: &str) -> TableRoute {
    TableRoute {
        name: underlay_route_controller::naming::route_name(node, &cidr.parse().unwrap()),
        address_prefix: cidr.into(),
        next_hop_type: "VirtualAppliance".into(),
        next_hop_ip: Some(hop.into()),
    }
}

async fn wait_done(
    table: &ArmRouteTable,
    pending: &underlay_route_controller::azure::PendingWrite,
) -> OperationState {
    loop {
        match table.poll(pending).await.unwrap() {
            OperationState::InProgress { .. } => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            done => return done,
        }
    }
}

#[tokio::test]
async fn get_put_and_poll_speak_the_arm_protocol() {
    let e = env(ArmConfig::default(), true).await;
    let state = e.table.get().await.unwrap().unwrap();
    assert_eq!(state.routes.len(), 1);
    assert_eq!(state.provisioning_state.as_deref(), Some("Succeeded"));
    let etag = state.etag.clone().unwrap();

    let mut routes = state.routes.clone();
    routes.push(our_route("n1", "10.244.1.0/24", "10.0.0.11"));
    let pending = e
        .table
        .put(&TableWrite {
            base: state.resource.clone(),
            location: "westeurope".into(),
            routes: routes.clone(),
            precondition: Precondition::IfMatch(etag.clone()),
        })
        .await
        .unwrap();
    assert!(pending.operation_url.is_some());
    assert_eq!(
        wait_done(&e.table, &pending).await,
        OperationState::Succeeded
    );

    let after = e.table.get().await.unwrap().unwrap();
    assert_ne!(after.etag.as_deref(), Some(etag.as_str()));
    let mut got = after.routes;
    got.sort();
    routes.sort();
    assert_eq!(got, routes);

    let put = e
        .arm
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::PutTable)
        .unwrap();
    assert_eq!(put.if_match.as_deref(), Some(etag.as_str()));
    assert_eq!(put.api_version.as_deref(), Some("2024-03-01"));

    // A stale ETag is refused with 412.
    let err = e
        .table
        .put(&TableWrite {
            base: state.resource,
            location: "westeurope".into(),
            routes,
            precondition: Precondition::IfMatch(etag),
        })
        .await
        .unwrap_err();
    assert_eq!(err, ArmError::PreconditionFailed);
}

#[tokio::test]
async fn a_missing_table_reads_as_none_and_can_be_created() {
    let e = env(ArmConfig::default(), false).await;
    assert_eq!(e.table.get().await.unwrap(), None);
    let pending = e
        .table
        .put(&TableWrite {
            base: serde_json::Value::Null,
            location: "westeurope".into(),
            routes: vec![our_route("n1", "10.244.1.0/24", "10.0.0.11")],
            precondition: Precondition::IfNoneMatch,
        })
        .await
        .unwrap();
    assert_eq!(
        wait_done(&e.table, &pending).await,
        OperationState::Succeeded
    );
    assert_eq!(e.arm.count(RequestKind::PutTable), 1);
    // Creating it again is refused: it exists now.
    let err = e
        .table
        .put(&TableWrite {
            base: serde_json::Value::Null,
            location: "westeurope".into(),
            routes: vec![],
            precondition: Precondition::IfNoneMatch,
        })
        .await
        .unwrap_err();
    assert_eq!(err, ArmError::PreconditionFailed);
}

#[tokio::test]
async fn injected_faults_map_to_the_documented_errors() {
    let e = env(ArmConfig::default(), true).await;
    let faults = e.arm.faults();
    faults.inject(
        FaultTarget::TableGet,
        Fault::Throttle {
            retry_after_secs: 9,
        },
        1,
    );
    assert!(matches!(
        e.table.get().await.unwrap_err(),
        ArmError::Throttled { retry_after, .. } if retry_after == Duration::from_secs(9)
    ));
    faults.inject(
        FaultTarget::TableGet,
        Fault::AnotherOperation {
            retry_after_secs: 4,
        },
        1,
    );
    assert_eq!(
        e.table.get().await.unwrap_err(),
        ArmError::AnotherOperation {
            retry_after: Duration::from_secs(4)
        }
    );
    faults.inject(FaultTarget::TableGet, Fault::InternalError, 1);
    assert!(matches!(
        e.table.get().await.unwrap_err(),
        ArmError::Server { status: 500, .. }
    ));
    faults.inject(FaultTarget::TableGet, Fault::PreconditionFailed, 1);
    assert_eq!(
        e.table.get().await.unwrap_err(),
        ArmError::PreconditionFailed
    );
    faults.inject(FaultTarget::TableGet, Fault::DropConnection, 1);
    assert!(matches!(
        e.table.get().await.unwrap_err(),
        ArmError::Transport(_)
    ));
    faults.inject(
        FaultTarget::TableGet,
        Fault::Delay(Duration::from_secs(3)),
        1,
    );
    assert_eq!(
        e.table.get().await.unwrap_err(),
        ArmError::Timeout(Duration::from_secs(2))
    );

    // A wrong token is refused.
    std::fs::write(&e.token_path, "not-the-token").unwrap();
    assert!(matches!(
        e.table.get().await.unwrap_err(),
        ArmError::Unauthorized { status: 401, .. }
    ));
    std::fs::write(&e.token_path, e.arm.token()).unwrap();
    assert!(e.table.get().await.unwrap().is_some());

    // Operations that end Failed or Canceled report it.
    for (fault, expect_failed) in [
        (Fault::OperationFailed, true),
        (Fault::OperationCanceled, false),
    ] {
        let state = e.table.get().await.unwrap().unwrap();
        faults.inject(FaultTarget::Write, fault, 1);
        let pending = e
            .table
            .put(&TableWrite {
                base: state.resource,
                location: "westeurope".into(),
                routes: state.routes,
                precondition: Precondition::IfMatch(state.etag.unwrap()),
            })
            .await
            .unwrap();
        let done = wait_done(&e.table, &pending).await;
        if expect_failed {
            assert!(matches!(done, OperationState::Failed { .. }), "{done:?}");
        } else {
            assert_eq!(done, OperationState::Canceled);
        }
    }
}

fn node(name: &str, cidr: &str, ip: &str) -> NodeRoutes {
    NodeRoutes {
        name: name.into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        internal_ips: vec![ip.parse().unwrap()],
    }
}

fn reconciler_config() -> ReconcilerConfig {
    ReconcilerConfig {
        batch_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        location: Some("westeurope".into()),
        ..ReconcilerConfig::default()
    }
}

/// Runs the reconciler against the service until the applied routes equal
/// the firewall route plus `expect`.
async fn converge(e: &Env, input: &RouteInput, expect: &[TableRoute]) {
    let mut watch = e.arm.routes_watch();
    let mut want: Vec<AppliedRoute> = expect
        .iter()
        .map(|r| {
            let hop = r.next_hop_ip.as_deref();
            AppliedRoute::new(&r.name, &r.address_prefix, &r.next_hop_type, hop)
        })
        .collect();
    want.push(firewall());
    want.sort();
    let _ = input;
    tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_for(|t| t.get(&table_id()) == Some(&want)),
    )
    .await
    .expect("routes converge")
    .unwrap();
}

#[tokio::test]
async fn the_reconciler_converges_through_every_fault() {
    let e = env(ArmConfig::default(), true).await;
    let sink = RecordingSink::default();
    let input = RouteInput::default();
    let r = Reconciler::new(
        e.table.clone(),
        sink.clone(),
        reconciler_config(),
        Ownership {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        },
        None,
    );
    let task = tokio::spawn(r.run(input.clone()));

    let faults = e.arm.faults();
    faults.inject(FaultTarget::Write, Fault::PreconditionFailed, 1);
    faults.inject(
        FaultTarget::Write,
        Fault::Throttle {
            retry_after_secs: 1,
        },
        1,
    );
    faults.inject(FaultTarget::TableGet, Fault::InternalError, 1);
    faults.inject(FaultTarget::Poll, Fault::DropConnection, 1);
    faults.inject(FaultTarget::Write, Fault::OperationFailed, 1);
    faults.inject(
        FaultTarget::Write,
        Fault::SlowOperation(Duration::from_millis(300)),
        1,
    );
    input.upsert(node("n1", "10.244.1.0/24", "10.0.0.11"));
    input.upsert(node("n2", "10.244.2.0/24", "10.0.0.12"));
    converge(
        &e,
        &input,
        &[
            our_route("n1", "10.244.1.0/24", "10.0.0.11"),
            our_route("n2", "10.244.2.0/24", "10.0.0.12"),
        ],
    )
    .await;
    assert_eq!(faults.pending(), 0, "every fault was hit");

    // After a 429 with Retry-After: 1 no request was sent for a full second.
    let log = e.arm.requests();
    let throttled = log
        .iter()
        .position(|r| r.status == Some(429))
        .expect("a throttled request");
    let next = &log[throttled + 1];
    assert!(
        next.at.duration_since(log[throttled].at) >= Duration::from_secs(1),
        "{:?} after the 429",
        next.at.duration_since(log[throttled].at)
    );

    // Conditions end Created once the routes are in.
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.condition("n1") != Some(RouteCondition::Created)
            || sink.condition("n2") != Some(RouteCondition::Created)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // A node leaving removes only its route; the firewall route stays.
    input.remove("n1");
    converge(&e, &input, &[our_route("n2", "10.244.2.0/24", "10.0.0.12")]).await;
    task.abort();
}

#[tokio::test]
async fn a_restarted_reconciler_causes_no_route_churn() {
    let e = env(ArmConfig::default(), true).await;
    let nodes = [
        node("n1", "10.244.1.0/24", "10.0.0.11"),
        node("n2", "10.244.2.0/24", "10.0.0.12"),
    ];
    let own = Ownership {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
    };
    for round in 0..2 {
        let input = RouteInput::default();
        let r = Reconciler::new(
            e.table.clone(),
            RecordingSink::default(),
            reconciler_config(),
            own.clone(),
            None,
        );
        let mut status = r.status();
        let task = tokio::spawn(r.run(input.clone()));
        for n in &nodes {
            input.upsert(n.clone());
        }
        let generation = input.generation();
        status
            .wait_for(|s| s.synced > 0 && s.generation >= generation)
            .await
            .unwrap();
        task.abort();
        let writes = e.arm.writes();
        assert_eq!(writes, 1, "round {round}: only the first run writes");
    }
}

#[tokio::test]
async fn the_service_enforces_its_route_limit_and_the_controller_stays_within_it() {
    let e = env(
        ArmConfig {
            route_limit: 3,
            ..ArmConfig::default()
        },
        true,
    )
    .await;
    let sink = RecordingSink::default();
    let input = RouteInput::default();
    let r = Reconciler::new(
        e.table.clone(),
        sink.clone(),
        ReconcilerConfig {
            route_limit: 3,
            ..reconciler_config()
        },
        Ownership {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        },
        None,
    );
    let mut status = r.status();
    let task = tokio::spawn(r.run(input.clone()));
    for i in 1..=3 {
        input.upsert(node(
            &format!("n{i}"),
            &format!("10.244.{i}.0/24"),
            &format!("10.0.0.{i}"),
        ));
    }
    converge(
        &e,
        &input,
        &[
            our_route("n1", "10.244.1.0/24", "10.0.0.1"),
            our_route("n2", "10.244.2.0/24", "10.0.0.2"),
        ],
    )
    .await;
    let generation = input.generation();
    status
        .wait_for(|s| s.synced > 0 && s.generation >= generation)
        .await
        .unwrap();
    assert!(
        e.arm.requests().iter().all(|r| r.status != Some(400)),
        "never exceeded the limit"
    );
    assert!(matches!(
        sink.condition("n3"),
        Some(RouteCondition::NotCreated { .. })
    ));
    task.abort();
}

/// Everything on the table the controller does not own: the user's tags,
/// their BGP setting, a property this client does not model, and their route.
fn user_settings() -> serde_json::Value {
    serde_json::json!({
        "location": support::arm::LOCATION,
        "tags": {"owner": "network-team", "cost-center": "42"},
        "properties": {
            "disableBgpRoutePropagation": true,
            "futureSetting": {"mode": "strict", "level": 3},
            "routes": [{
                "name": "to-firewall",
                "properties": {
                    "addressPrefix": "0.0.0.0/0",
                    "nextHopType": "VirtualAppliance",
                    "nextHopIpAddress": "10.0.0.4",
                },
            }],
        },
    })
}

/// The parts of the table as ARM answers it that the controller must keep.
fn not_owned(resource: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "location": resource["location"],
        "tags": resource["tags"],
        "disableBgpRoutePropagation": resource["properties"]["disableBgpRoutePropagation"],
        "futureSetting": resource["properties"]["futureSetting"],
    })
}

#[tokio::test]
async fn writes_keep_every_setting_of_the_table_they_do_not_own() {
    let e = env(ArmConfig::default(), false).await;
    e.arm
        .seed_table_resource(&table_id(), user_settings())
        .expect("seed table");
    let before = not_owned(&e.arm.resource(&table_id()).expect("seeded table"));
    assert_eq!(before["disableBgpRoutePropagation"], true, "{before}");
    assert_eq!(before["futureSetting"]["mode"], "strict", "{before}");

    let input = RouteInput::default();
    let r = Reconciler::new(
        e.table.clone(),
        RecordingSink::default(),
        reconciler_config(),
        Ownership {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        },
        None,
    );
    let task = tokio::spawn(r.run(input.clone()));
    // An add, a change and a removal: each is one write, and after each the
    // table holds everything it held before but the controller's routes.
    let steps: [(Option<NodeRoutes>, Vec<TableRoute>); 3] = [
        (
            Some(node("n1", "10.244.1.0/24", "10.0.0.11")),
            vec![our_route("n1", "10.244.1.0/24", "10.0.0.11")],
        ),
        (
            Some(node("n1", "10.244.1.0/24", "10.0.0.21")),
            vec![our_route("n1", "10.244.1.0/24", "10.0.0.21")],
        ),
        (None, vec![]),
    ];
    for (writes, (change, expect)) in (1..).zip(steps) {
        match change {
            Some(n) => input.upsert(n),
            None => input.remove("n1"),
        }
        converge(&e, &input, &expect).await;
        assert_eq!(e.arm.count(RequestKind::PutTable), writes);
        let after = not_owned(&e.arm.resource(&table_id()).expect("table"));
        assert_eq!(after, before, "after write {writes}");
    }
    task.abort();
}
