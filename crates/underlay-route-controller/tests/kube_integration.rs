//! The Kubernetes side against the lab's embedded API server, with the ARM
//! service behind the real Azure adapter: allocation, routes, conditions,
//! events, restart recovery and leader failover.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::arm::ArmFixture;
use support::kube::{Binary, add_node, condition, eventually, pod_cidrs};
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig, Handle as ApiHandle};
use underlay_lab::arm::{AppliedRoute, ArmConfig};
use underlay_route_controller::cidrs::CidrAllocator;
use underlay_route_controller::k8s::feed::NodeFeed;
use underlay_route_controller::k8s::leader::{LeaderConfig, LeaderElector, LeaderError};
use underlay_route_controller::k8s::{KubeNodeSink, NodeController};
use underlay_route_controller::plan::Ownership;
use underlay_route_controller::reconciler::{Reconciler, ReconcilerConfig, RouteInput};

struct Cluster {
    api: ApiHandle,
    arm: ArmFixture,
    client: kube::Client,
}

async fn cluster() -> Cluster {
    let api = ApiServer::start(ApiConfig::default()).await.unwrap();
    let client = api.client().unwrap();
    let arm = ArmFixture::start(ArmConfig::default(), Some(&[]), Duration::from_secs(5)).await;
    Cluster { api, arm, client }
}

/// A running controller (allocation + routes) in this process.
struct Controller {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn controller(c: &Cluster, cluster_cidr: &str) -> Controller {
    let table = c.arm.table.clone();
    let cidr = cluster_cidr.parse().unwrap();
    let alloc = CidrAllocator::new(&[cidr], 24, 64, &[]).unwrap();
    let sink = KubeNodeSink::new(c.client.clone(), Some("test".into()));
    let input = RouteInput::until_listed();
    let reconciler = Reconciler::new(
        table,
        sink.clone(),
        ReconcilerConfig {
            batch_interval: Duration::from_millis(100),
            poll_interval: Duration::from_millis(20),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..ReconcilerConfig::default()
        },
        Ownership {
            cluster_cidrs: vec![cidr],
        },
        None,
    );
    let nodes = NodeController::new(sink, input.clone(), Some(alloc), None)
        .with_retry_interval(Duration::from_millis(200));
    let feed = NodeFeed::new();
    let events = feed.subscribe();
    let client = c.client.clone();
    let task = tokio::spawn(async move {
        tokio::join!(reconciler.run(input), nodes.run(events), feed.run(client));
    });
    Controller { task }
}

fn applied(c: &Cluster) -> Vec<AppliedRoute> {
    c.arm.applied()
}

#[tokio::test]
async fn new_nodes_get_cidrs_routes_and_their_condition() {
    let c = cluster().await;
    let _ctl = controller(&c, "10.244.0.0/16");
    add_node(&c.client, "node-a", "10.0.0.11").await;
    add_node(&c.client, "node-b", "10.0.0.12").await;

    eventually("pod cidrs", || async {
        pod_cidrs(&c.client)
            .await
            .iter()
            .all(|(_, cs)| cs.len() == 1)
    })
    .await;
    eventually("routes applied", || async { applied(&c).len() == 2 }).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    eventually("conditions", || async {
        let n = nodes.get("node-a").await.unwrap();
        condition(&n, "NetworkUnavailable") == Some(("False".into(), "RouteCreated".into()))
    })
    .await;
    let n = nodes.get("node-a").await.unwrap();
    assert_eq!(
        condition(&n, "Ready"),
        Some(("True".into(), "KubeletReady".into())),
        "the kubelet's conditions are kept"
    );
    let spec = n.spec.unwrap();
    assert_eq!(
        spec.pod_cidr.as_deref(),
        spec.pod_cidrs
            .as_ref()
            .and_then(|v| v.first())
            .map(String::as_str)
    );
    let routes = applied(&c);
    let a = routes
        .iter()
        .find(|r| r.next_hop_ip.as_deref() == Some("10.0.0.11"))
        .unwrap();
    assert_eq!(
        Some(&a.address_prefix),
        spec.pod_cidrs.as_ref().unwrap().first()
    );
    assert_eq!(a.next_hop_type, "VirtualAppliance");

    // Deleting a node removes its route.
    nodes
        .delete("node-b", &DeleteParams::default())
        .await
        .unwrap();
    eventually("route removed", || async { applied(&c).len() == 1 }).await;
}

#[tokio::test]
async fn a_restart_allocates_no_duplicate_cidr_and_rewrites_no_route() {
    let c = cluster().await;
    let first = controller(&c, "10.244.0.0/16");
    for i in 1..=3 {
        add_node(&c.client, &format!("n{i}"), &format!("10.0.0.{i}")).await;
    }
    eventually("three routes", || async { applied(&c).len() == 3 }).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writes_before = c.arm.arm.writes();

    // A new instance with a fresh allocator sees the existing CIDRs first.
    let _second = controller(&c, "10.244.0.0/16");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.arm.arm.writes(),
        writes_before,
        "no route churn on restart"
    );
    add_node(&c.client, "n4", "10.0.0.4").await;
    eventually("four routes", || async { applied(&c).len() == 4 }).await;
    let all: Vec<String> = pod_cidrs(&c.client)
        .await
        .into_iter()
        .flat_map(|(_, cs)| cs)
        .collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 4);
    assert_eq!(unique.len(), 4, "no duplicate CIDRs: {all:?}");
    assert_eq!(
        c.arm.arm.writes(),
        writes_before + 1,
        "one write for the new node"
    );
}

#[tokio::test]
async fn exhaustion_is_an_event_and_a_leaving_node_makes_room() {
    let c = cluster().await;
    // A /23 holds two /24 node CIDRs.
    let _ctl = controller(&c, "10.244.0.0/23");
    for i in 1..=3 {
        add_node(&c.client, &format!("n{i}"), &format!("10.0.0.{i}")).await;
    }
    eventually("two allocated", || async {
        pod_cidrs(&c.client)
            .await
            .iter()
            .filter(|(_, cs)| !cs.is_empty())
            .count()
            == 2
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), "default");
    eventually("CIDRNotAvailable event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;
    let cidrs = pod_cidrs(&c.client).await;
    let (starved, _) = cidrs.iter().find(|(_, cs)| cs.is_empty()).unwrap().clone();
    let (leaving, _) = cidrs.iter().find(|(_, cs)| !cs.is_empty()).unwrap().clone();
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .delete(&leaving, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the waiting node gets the freed cidr", || async {
        pod_cidrs(&c.client)
            .await
            .iter()
            .any(|(n, cs)| *n == starved && !cs.is_empty())
    })
    .await;
}

fn elector(client: &kube::Client, identity: &str) -> LeaderElector {
    LeaderElector::new(
        client.clone(),
        LeaderConfig {
            namespace: "kube-system".into(),
            name: "underlay-route-controller".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
        },
    )
}

#[tokio::test]
async fn the_standby_takes_over_within_the_lease_duration_when_the_leader_dies() {
    let c = cluster().await;
    let a_leads = Arc::new(AtomicBool::new(false));
    let b_leads = Arc::new(AtomicBool::new(false));
    let (a, b) = (elector(&c.client, "a"), elector(&c.client, "b"));
    let flag = a_leads.clone();
    let task_a = tokio::spawn(async move {
        let _ = a
            .run(std::future::pending::<()>(), move |l| {
                flag.store(l, Ordering::SeqCst)
            })
            .await;
    });
    eventually("a leads", || async { a_leads.load(Ordering::SeqCst) }).await;
    let flag = b_leads.clone();
    let task_b = tokio::spawn(async move {
        let _ = b
            .run(std::future::pending::<()>(), move |l| {
                flag.store(l, Ordering::SeqCst)
            })
            .await;
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b_leads.load(Ordering::SeqCst), "one leader while a renews");

    // The leader dies without releasing.
    task_a.abort();
    let died = tokio::time::Instant::now();
    eventually("b leads", || async { b_leads.load(Ordering::SeqCst) }).await;
    let took = died.elapsed();
    assert!(took <= Duration::from_secs(4), "took over after {took:?}");
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let lease = leases.get("underlay-route-controller").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    task_b.abort();
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_and_a_lost_lease_stops_the_work() {
    let c = cluster().await;
    let a = elector(&c.client, "a");
    assert!(a.try_acquire_or_renew().await.unwrap());
    let b = elector(&c.client, "b");
    assert!(!b.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "no wait after a release"
    );

    // "a" leads again only after b's lease lapses; meanwhile if someone else
    // takes the lease from a running leader, its work is dropped.
    let stopped = Arc::new(AtomicBool::new(false));
    let s = stopped.clone();
    let work = async move {
        let _guard = scopeguard(s);
        std::future::pending::<()>().await;
    };
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-system");
    let run_b = b.run(work, |_| {});
    let steal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let patch = json!({"spec": {"holderIdentity": "intruder", "renewTime": "2030-01-01T00:00:00.000000Z"}});
        leases
            .patch(
                "underlay-route-controller",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(run_b, steal);
    assert!(result.is_err(), "leadership lost");
    assert!(stopped.load(Ordering::SeqCst), "work dropped");
}

/// Makes "a" the leader, then delays every API answer by `delay`, and
/// returns how its leading ended (within a bounded wait) and whether it was
/// still acting after.
async fn lead_with_answers_delayed(delay: Duration) -> (Result<(), LeaderError>, bool) {
    let c = cluster().await;
    let a = elector(&c.client, "a");
    let leads = Arc::new(AtomicBool::new(false));
    let flag = leads.clone();
    let run = tokio::spawn(async move {
        a.run(std::future::pending::<()>(), move |l| {
            flag.store(l, Ordering::SeqCst)
        })
        .await
    });
    eventually("a leads", || async { leads.load(Ordering::SeqCst) }).await;
    c.api.faults().delay(Some(delay));
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("leadership ends")
        .unwrap();
    (result, leads.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_renew_that_hangs_past_the_renew_deadline_loses_leadership() {
    // Every answer takes an hour: the next renew hangs.
    let (result, acting) = lead_with_answers_delayed(Duration::from_secs(3600)).await;
    assert!(
        matches!(result, Err(LeaderError::Lost { .. })),
        "{result:?}"
    );
    assert!(!acting, "no longer acting");
}

#[tokio::test]
async fn renewals_count_from_when_they_were_sent_not_from_their_answers() {
    // A renewal (read + replace) takes 0.9 s of the 1.5 s renew deadline,
    // and the next one is sent 0.2 s after an answer: counted from when each
    // was sent, the second cannot finish within the deadline of the first.
    let (result, acting) = lead_with_answers_delayed(Duration::from_millis(450)).await;
    assert!(
        matches!(result, Err(LeaderError::Lost { .. })),
        "{result:?}"
    );
    assert!(!acting, "no longer acting");
}

/// A node controller that allocates from 10.244.0.0/16 and writes through
/// the API, fed by hand: its cache is exactly the nodes it is given.
fn allocator(c: &Cluster) -> NodeController<KubeNodeSink> {
    let alloc = CidrAllocator::new(&["10.244.0.0/16".parse().unwrap()], 24, 64, &[]).unwrap();
    let sink = KubeNodeSink::new(c.client.clone(), Some("test".into()));
    NodeController::new(sink, RouteInput::until_listed(), Some(alloc), None)
}

/// Feeds `nodes` to `controller` as one complete list.
async fn list(controller: &mut NodeController<KubeNodeSink>, nodes: &[Node]) {
    controller.apply(watcher::Event::Init).await;
    for n in nodes {
        controller.apply(watcher::Event::InitApply(n.clone())).await;
    }
    controller.apply(watcher::Event::InitDone).await;
}

/// Each CIDR with the nodes that hold it, where more than one does.
async fn shared_cidrs(client: &kube::Client) -> Vec<(String, Vec<String>)> {
    let mut holders: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (node, cidrs) in pod_cidrs(client).await {
        for cidr in cidrs {
            holders.entry(cidr).or_default().push(node.clone());
        }
    }
    holders.into_iter().filter(|(_, n)| n.len() > 1).collect()
}

#[tokio::test]
async fn two_allocators_racing_on_stale_caches_never_give_one_cidr_to_two_nodes() {
    let c = cluster().await;
    add_node(&c.client, "n1", "10.0.0.11").await;
    add_node(&c.client, "n2", "10.0.0.12").await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let (n1, n2) = (
        nodes.get("n1").await.unwrap(),
        nodes.get("n2").await.unwrap(),
    );

    // b led; a has since taken the lease over (b's renewals stopped), but
    // b's work has not noticed yet.
    let a = Arc::new(elector(&c.client, "a"));
    let b = Arc::new(elector(&c.client, "b"));
    assert!(b.try_acquire_or_renew().await.unwrap());
    eventually("a takes the expired lease over", || async {
        a.try_acquire_or_renew().await.unwrap_or(false)
    })
    .await;

    // Each allocator's cache holds only one of the nodes.
    let mut ctl_a = allocator(&c).with_fence(a);
    let mut ctl_b = allocator(&c).with_fence(b);
    list(&mut ctl_a, &[n1]).await;
    list(&mut ctl_b, &[n2]).await;

    assert_eq!(shared_cidrs(&c.client).await, vec![]);
    let cidrs = pod_cidrs(&c.client).await;
    assert!(
        cidrs.iter().any(|(n, cs)| n == "n1" && !cs.is_empty()),
        "the leader allocated: {cidrs:?}"
    );
}

#[tokio::test]
async fn a_cidr_write_that_loses_the_race_for_its_node_rereads_the_node() {
    let c = cluster().await;
    add_node(&c.client, "n1", "10.0.0.11").await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let stale = nodes.get("n1").await.unwrap();
    // Another writer gives n1 a CIDR after this allocator's cache saw it.
    let patch = json!({"spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]}});
    nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let mut ctl = allocator(&c);
    list(&mut ctl, &[stale]).await;
    let alloc = ctl.allocator().unwrap();
    assert_eq!(
        alloc.owned_by("n1"),
        Some(&["10.244.7.0/24".parse().unwrap()][..]),
        "the node's CIDR as re-read"
    );
    assert_eq!(alloc.waiting(), Vec::<String>::new());
    assert_eq!(
        pod_cidrs(&c.client).await,
        vec![("n1".to_string(), vec!["10.244.7.0/24".to_string()])]
    );
}

struct Guard(Arc<AtomicBool>);
impl Drop for Guard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
fn scopeguard(flag: Arc<AtomicBool>) -> Guard {
    Guard(flag)
}

#[tokio::test]
async fn the_binary_runs_against_the_lab() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    c.api.write_kubeconfig(&kubeconfig).unwrap();
    let bin = Binary::spawn(&kubeconfig, &c.arm, &[]);
    add_node(&c.client, "node-x", "10.0.0.21").await;
    eventually("route applied by the binary", || async {
        applied(&c).len() == 1
    })
    .await;

    let metrics = bin.metrics().await;
    assert!(
        metrics.contains("underlay_route_controller_arm_requests_total"),
        "{metrics}"
    );
    assert!(bin.leading().await, "{metrics}");
    eventually("ready", || async {
        bin.readyz().await == (200, "ok".into())
    })
    .await;

    let logs = bin.kill().await;
    assert!(!logs.contains("never-logged"), "secret leaked into logs");
    assert!(logs.contains("writing route table"), "{logs}");
}
