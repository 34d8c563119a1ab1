//! The reconciler through the `RouteTable` port, against the recording fake,
//! on tokio's paused clock: every wait is exact and no test sleeps for real.

use std::time::Duration;
use tokio::time::Instant;
use underlay_route_controller::azure::fake::{Call, FakeRouteTable, Scripted};
use underlay_route_controller::azure::{ArmError, OperationState, Precondition, TableRoute};
use underlay_route_controller::naming::route_name;
use underlay_route_controller::nodes::fake::RecordingSink;
use underlay_route_controller::nodes::{EventType, RouteCondition};
use underlay_route_controller::plan::{NodeRoutes, Ownership};
use underlay_route_controller::reconciler::{Reconciler, ReconcilerConfig, RouteInput, Status};

fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeRoutes {
    NodeRoutes {
        name: name.into(),
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        internal_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    }
}

fn route(node: &str, cidr: &str, hop: &str) -> TableRoute {
    TableRoute {
        name: route_name(node, &cidr.parse().unwrap()),
        address_prefix: cidr.into(),
        next_hop_type: "VirtualAppliance".into(),
        next_hop_ip: Some(hop.into()),
    }
}

fn firewall() -> TableRoute {
    TableRoute {
        name: "to-firewall".into(),
        address_prefix: "0.0.0.0/0".into(),
        next_hop_type: "VirtualAppliance".into(),
        next_hop_ip: Some("10.0.0.4".into()),
    }
}

fn config() -> ReconcilerConfig {
    ReconcilerConfig {
        batch_interval: Duration::from_secs(2),
        poll_interval: Duration::from_millis(500),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        location: Some("westeurope".into()),
        ..ReconcilerConfig::default()
    }
}

fn ownership() -> Ownership {
    Ownership {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
    }
}

struct Harness {
    fake: FakeRouteTable,
    sink: RecordingSink,
    input: RouteInput,
    status: tokio::sync::watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(fake: FakeRouteTable, config: ReconcilerConfig) -> Harness {
    let sink = RecordingSink::default();
    let input = RouteInput::default();
    let r = Reconciler::new(fake.clone(), sink.clone(), config, ownership(), None);
    let status = r.status();
    let task = tokio::spawn(r.run(input.clone()));
    Harness {
        fake,
        sink,
        input,
        status,
        task,
    }
}

impl Harness {
    /// Waits until a successful pass has covered every input change so far.
    async fn settled(&mut self) {
        let generation = self.input.generation();
        self.status
            .wait_for(|s| s.synced > 0 && s.generation >= generation)
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn changes_within_the_batch_interval_cost_one_get_and_one_put() {
    let mut h = start(FakeRouteTable::with_routes(vec![firewall()]), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    h.input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    h.input.upsert(node(
        "c",
        &["10.244.3.0/24", "fd00:10:244:3::/64"],
        &["10.0.0.3", "fd00::3"],
    ));
    h.settled().await;

    let calls = h.fake.calls();
    assert!(
        matches!(calls.as_slice(), [Call::Get, Call::Put(_), Call::Poll(_)]),
        "{calls:?}"
    );
    let put = &h.fake.puts()[0];
    assert_eq!(put.precondition, Precondition::IfMatch("W/\"1\"".into()));
    let mut expect = vec![
        firewall(),
        route("a", "10.244.1.0/24", "10.0.0.1"),
        route("b", "10.244.2.0/24", "10.0.0.2"),
        route("c", "10.244.3.0/24", "10.0.0.3"),
        route("c", "fd00:10:244:3::/64", "fd00::3"),
    ];
    expect.sort();
    assert_eq!(h.fake.routes(), expect);
    for n in ["a", "b", "c"] {
        assert_eq!(h.sink.condition(n), Some(RouteCondition::Created), "{n}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_condition_is_set_only_after_the_operation_succeeds() {
    let fake = FakeRouteTable::with_routes(vec![]);
    fake.script(Scripted::OperationPolls(3));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    // Let the write go out and the first polls answer InProgress.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(h.fake.calls().iter().any(|c| matches!(c, Call::Put(_))));
    assert_eq!(
        h.sink.condition("a"),
        None,
        "no condition while the operation runs"
    );
    h.settled().await;
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
    let polls = h
        .fake
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Poll(_)))
        .count();
    assert_eq!(polls, 4);
}

#[tokio::test(start_paused = true)]
async fn precondition_failed_rereads_rediffs_and_keeps_the_concurrent_change() {
    let fake = FakeRouteTable::with_routes(vec![]);
    fake.script(Scripted::ConcurrentWrite(firewall()));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    let kinds: Vec<&str> = h
        .fake
        .calls()
        .iter()
        .map(|c| match c {
            Call::Get => "get",
            Call::Put(_) => "put",
            Call::Poll(_) => "poll",
        })
        .collect();
    assert_eq!(kinds, ["get", "put", "get", "put", "poll"]);
    let mut expect = vec![firewall(), route("a", "10.244.1.0/24", "10.0.0.1")];
    expect.sort();
    assert_eq!(h.fake.routes(), expect, "the other writer's route survives");
}

#[tokio::test(start_paused = true)]
async fn throttling_waits_exactly_retry_after_and_holds_later_calls() {
    let fake = FakeRouteTable::with_routes(vec![]);
    fake.script(Scripted::Put(ArmError::Throttled {
        code: "SubscriptionRequestsThrottled".into(),
        retry_after: Duration::from_secs(17),
    }));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    let calls = h.fake.calls();
    let times = h.fake.call_times();
    assert!(
        matches!(
            calls.as_slice(),
            [Call::Get, Call::Put(_), Call::Put(_), Call::Poll(_)]
        ),
        "{calls:?}"
    );
    assert_eq!(
        times[2] - times[1],
        Duration::from_secs(17),
        "retried exactly after Retry-After"
    );
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
}

#[tokio::test(start_paused = true)]
async fn another_operation_in_progress_is_waited_out() {
    let fake = FakeRouteTable::with_routes(vec![]);
    fake.script(Scripted::Get(ArmError::AnotherOperation {
        retry_after: Duration::from_secs(11),
    }));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    let times = h.fake.call_times();
    assert_eq!(times[1] - times[0], Duration::from_secs(11));
    assert_eq!(
        h.fake.routes(),
        vec![route("a", "10.244.1.0/24", "10.0.0.1")]
    );
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_report_the_node_and_recover() {
    let fake = FakeRouteTable::with_routes(vec![]);
    for _ in 0..3 {
        fake.script(Scripted::Put(ArmError::Server {
            status: 500,
            code: "InternalServerError".into(),
        }));
    }
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    let times = h.fake.call_times();
    let calls = h.fake.calls();
    let put_times: Vec<Instant> = calls
        .iter()
        .zip(&times)
        .filter(|(c, _)| matches!(c, Call::Put(_)))
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(put_times.len(), 4);
    // Gaps grow: backoff (1s, 2s, 4s with jitter in [d/2, d]) plus the batch window.
    let gaps: Vec<Duration> = put_times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, full) in gaps.iter().zip([1u64, 2, 4]) {
        let backoff = *gap - Duration::from_secs(2);
        assert!(
            backoff >= Duration::from_millis(full * 500) && backoff <= Duration::from_secs(full),
            "{gaps:?}"
        );
    }
    let records = h.sink.records();
    let warning = h.sink.events();
    assert_eq!(
        warning.len(),
        1,
        "one warning while failing, not one per attempt: {records:?}"
    );
    assert_eq!(warning[0].reason, "FailedToCreateRoute");
    assert_eq!(warning[0].type_, EventType::Warning);
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
}

#[tokio::test(start_paused = true)]
async fn failed_and_canceled_operations_are_retried() {
    let fake = FakeRouteTable::with_routes(vec![]);
    fake.script(Scripted::OperationEnds(OperationState::Failed {
        code: "InternalServerError".into(),
        message: "boom".into(),
    }));
    let mut h = start(fake.clone(), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    assert_eq!(fake.puts().len(), 2);
    assert_eq!(fake.routes(), vec![route("a", "10.244.1.0/24", "10.0.0.1")]);
    assert!(matches!(
        h.sink.records().iter().find(|r| matches!(
            r,
            underlay_route_controller::nodes::fake::Recorded::Condition(..)
        )),
        Some(underlay_route_controller::nodes::fake::Recorded::Condition(
            _,
            RouteCondition::NotCreated { .. }
        ))
    ));

    fake.script(Scripted::OperationEnds(OperationState::Canceled));
    h.input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    h.settled().await;
    assert_eq!(fake.puts().len(), 4);
    assert_eq!(h.sink.condition("b"), Some(RouteCondition::Created));
}

#[tokio::test(start_paused = true)]
async fn a_missing_table_is_created_when_allowed() {
    let fake = FakeRouteTable::missing();
    let mut h = start(
        fake.clone(),
        ReconcilerConfig {
            create_missing_table: true,
            ..config()
        },
    );
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    let put = &fake.puts()[0];
    assert_eq!(put.precondition, Precondition::IfNoneMatch);
    assert_eq!(put.location, "westeurope");
    assert!(fake.exists());
}

#[tokio::test(start_paused = true)]
async fn a_missing_table_is_reported_when_creating_is_not_allowed() {
    let fake = FakeRouteTable::missing();
    let h = start(fake.clone(), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fake.puts().is_empty());
    assert!(!fake.exists());
    match h.sink.condition("a") {
        Some(RouteCondition::NotCreated { message }) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(h.status.borrow().failures > 0);
}

#[tokio::test(start_paused = true)]
async fn the_route_limit_programs_what_fits_and_warns_the_rest() {
    let mut h = start(
        FakeRouteTable::with_routes(vec![firewall()]),
        ReconcilerConfig {
            route_limit: 3,
            ..config()
        },
    );
    for i in 1..=4 {
        h.input.upsert(node(
            &format!("n{i}"),
            &[&format!("10.244.{i}.0/24")],
            &[&format!("10.0.0.{i}")],
        ));
    }
    h.settled().await;
    assert_eq!(h.fake.routes().len(), 3);
    assert_eq!(h.sink.condition("n1"), Some(RouteCondition::Created));
    assert_eq!(h.sink.condition("n2"), Some(RouteCondition::Created));
    for n in ["n3", "n4"] {
        assert!(
            matches!(h.sink.condition(n), Some(RouteCondition::NotCreated { .. })),
            "{n}"
        );
    }
    let events = h.sink.events();
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.node.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [("n3", "RouteTableFull"), ("n4", "RouteTableFull")]
    );

    // A node leaving frees a slot for one that was left out.
    h.input.remove("n1");
    h.settled().await;
    assert_eq!(h.sink.condition("n3"), Some(RouteCondition::Created));
    assert!(matches!(
        h.sink.condition("n4"),
        Some(RouteCondition::NotCreated { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_restart_over_a_correct_table_writes_nothing() {
    let fake =
        FakeRouteTable::with_routes(vec![firewall(), route("a", "10.244.1.0/24", "10.0.0.1")]);
    let mut h = start(fake.clone(), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    assert_eq!(fake.calls(), vec![Call::Get]);
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
}

#[tokio::test(start_paused = true)]
async fn a_table_updating_is_waited_for_before_deciding() {
    let fake = FakeRouteTable::with_routes(vec![route("a", "10.244.1.0/24", "10.0.0.1")]);
    fake.set_provisioning_state("Updating");
    let h = start(fake.clone(), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.sink.condition("a"),
        None,
        "not confirmed while the table is updating"
    );
    fake.set_provisioning_state("Succeeded");
    let mut h = h;
    h.settled().await;
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
    assert!(fake.puts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_table_left_failed_is_rewritten() {
    let fake = FakeRouteTable::with_routes(vec![route("a", "10.244.1.0/24", "10.0.0.1")]);
    fake.set_provisioning_state("Failed");
    let mut h = start(fake.clone(), config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    assert_eq!(fake.puts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_condition_write_is_retried_without_another_table_write() {
    let fake = FakeRouteTable::with_routes(vec![firewall()]);
    let mut h = start(fake.clone(), config());
    h.sink.fail_conditions(2);
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.settled().await;
    assert_eq!(h.sink.condition("a"), None, "the first write failed");
    // Nothing changes in the input, yet the condition lands after backoff.
    let start = Instant::now();
    while h.sink.condition("a") != Some(RouteCondition::Created) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(start.elapsed() < Duration::from_secs(60), "never retried");
    }
    let puts = fake
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Put(_)))
        .count();
    assert_eq!(puts, 1, "retries re-read the table but write it once");
}

#[tokio::test(start_paused = true)]
async fn an_input_awaiting_its_first_list_holds_every_pass() {
    let fake =
        FakeRouteTable::with_routes(vec![firewall(), route("a", "10.244.1.0/24", "10.0.0.1")]);
    let sink = RecordingSink::default();
    let input = RouteInput::until_listed();
    let r = Reconciler::new(fake.clone(), sink, config(), ownership(), None);
    let mut status = r.status();
    let task = tokio::spawn(r.run(input.clone()));
    // A node seen on its own (e.g. a watch event before the list ends) must
    // not make a pass that would drop node a's route.
    input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(!input.listed());
    input.replace_all(vec![
        node("a", &["10.244.1.0/24"], &["10.0.0.1"]),
        node("b", &["10.244.2.0/24"], &["10.0.0.2"]),
    ]);
    let generation = input.generation();
    status
        .wait_for(|s| s.synced > 0 && s.generation >= generation)
        .await
        .unwrap();
    let mut routes = fake.routes();
    routes.sort();
    let mut want = vec![
        firewall(),
        route("a", "10.244.1.0/24", "10.0.0.1"),
        route("b", "10.244.2.0/24", "10.0.0.2"),
    ];
    want.sort();
    assert_eq!(routes, want);
    task.abort();
}

/// The nodes set `NetworkUnavailable=True` so far.
fn marked_unavailable(sink: &RecordingSink) -> Vec<String> {
    let mut names: Vec<String> = sink
        .records()
        .into_iter()
        .filter_map(|r| match r {
            underlay_route_controller::nodes::fake::Recorded::Condition(
                n,
                RouteCondition::NotCreated { .. },
            ) => Some(n),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_a_failed_pass_marks_only_nodes_whose_routes_are_missing_or_wrong() {
    // A previous run wrote a's route; b's next hop has changed since; c is new.
    let fake = FakeRouteTable::with_routes(vec![
        firewall(),
        route("a", "10.244.1.0/24", "10.0.0.1"),
        route("b", "10.244.2.0/24", "10.0.0.99"),
    ]);
    fake.script(Scripted::Put(ArmError::Server {
        status: 500,
        code: "InternalServerError".into(),
    }));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    h.input.upsert(node("c", &["10.244.3.0/24"], &["10.0.0.3"]));
    h.status.wait_for(|s| s.failures > 0).await.unwrap();
    assert_eq!(marked_unavailable(&h.sink), vec!["b", "c"]);
    h.settled().await;
    assert_eq!(marked_unavailable(&h.sink), vec!["b", "c"], "a never was");
    for n in ["a", "b", "c"] {
        assert_eq!(h.sink.condition(n), Some(RouteCondition::Created), "{n}");
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_a_pass_that_cannot_read_the_table_marks_no_node() {
    let fake = FakeRouteTable::with_routes(vec![route("a", "10.244.1.0/24", "10.0.0.1")]);
    fake.script(Scripted::Get(ArmError::Timeout(Duration::from_secs(30))));
    let mut h = start(fake, config());
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    h.input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    h.status.wait_for(|s| s.failures > 0).await.unwrap();
    assert_eq!(marked_unavailable(&h.sink), Vec::<String>::new());
    assert!(h.sink.events().is_empty(), "{:?}", h.sink.events());
    h.settled().await;
    assert_eq!(h.sink.condition("a"), Some(RouteCondition::Created));
    assert_eq!(h.sink.condition("b"), Some(RouteCondition::Created));
}

#[tokio::test(start_paused = true)]
async fn a_table_updating_for_too_long_ends_the_pass_and_the_next_one_rereads_everything() {
    let fake = FakeRouteTable::with_routes(vec![firewall()]);
    fake.set_provisioning_state("Updating");
    let config = ReconcilerConfig {
        operation_timeout: Duration::from_secs(20),
        ..config()
    };
    let mut h = start(fake.clone(), config);
    h.input.upsert(node("a", &["10.244.1.0/24"], &["10.0.0.1"]));
    tokio::time::timeout(
        Duration::from_secs(300),
        h.status.wait_for(|s| s.failures > 0),
    )
    .await
    .expect("the pass gives up on a table that stays Updating")
    .unwrap();
    // A node that arrives meanwhile is in the next pass's write.
    h.input.upsert(node("b", &["10.244.2.0/24"], &["10.0.0.2"]));
    fake.set_provisioning_state("Succeeded");
    h.settled().await;
    let puts = fake.puts();
    assert_eq!(puts.len(), 1, "{puts:?}");
    let mut want = vec![
        firewall(),
        route("a", "10.244.1.0/24", "10.0.0.1"),
        route("b", "10.244.2.0/24", "10.0.0.2"),
    ];
    want.sort();
    let mut got = puts[0].routes.clone();
    got.sort();
    assert_eq!(got, want);
}
