//! `cargo xtask bench routes`: route table convergence and ARM write count
//! for 400 nodes joining at once, then 50 leaving and 50 joining, against the
//! lab's ARM service with Azure-like latency scaled down 100 times. Three
//! strategies run in the same process against fresh services with identical
//! latency, and are reported as ratios to underlay's:
//!
//! - underlay: the reconciler (batch window, one GET + one PUT per batch);
//! - per-route: one PUT (or DELETE) of `routes/{name}` per node change,
//!   each polled to completion, one at a time because Azure serialises writes
//!   to a table;
//! - fixed batch: every 30 s a whole-table write of what accumulated, then a
//!   30 s settle before the next (the cloud-provider-azure model).

#![allow(clippy::print_stdout)]

// The ARM-service fixture the integration tests use.
#[allow(dead_code)]
#[path = "../tests/support/arm.rs"]
mod fixture;

use fixture::{ArmFixture, table_id};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use underlay_ipam::Cidr;
use underlay_lab::arm::{AppliedRoute, ArmConfig, ArmHandle};
use underlay_route_controller::azure::arm::ArmRouteTable;
use underlay_route_controller::azure::{
    OperationState, PendingWrite, Precondition, RouteTable, TableWrite,
};
use underlay_route_controller::nodes::fake::RecordingSink;
use underlay_route_controller::plan::{NodeRoutes, Ownership, desired_routes, plan};
use underlay_route_controller::reconciler::{Reconciler, ReconcilerConfig, RouteInput};

/// Real Azure durations divided by this.
const SCALE: u32 = 100;
const NODES: usize = 400;
const CHURN: usize = 50;
const LIMIT: usize = 1000;

fn scaled(real: Duration) -> Duration {
    real / SCALE
}

fn cluster() -> Cidr {
    "10.128.0.0/9".parse().unwrap()
}

fn node(i: usize) -> NodeRoutes {
    NodeRoutes {
        name: format!("node-{i:04}"),
        pod_cidrs: vec![
            format!("10.{}.{}.0/24", 128 + i / 256, i % 256)
                .parse()
                .unwrap(),
        ],
        internal_ips: vec![format!("10.0.{}.{}", i / 250, 1 + i % 250).parse().unwrap()],
    }
}

type Env = ArmFixture;

async fn env() -> Env {
    ArmFixture::start(
        ArmConfig {
            // ~100 ms per ARM request, ~5 s per asynchronous write.
            request_latency: scaled(Duration::from_millis(100)),
            operation_delay: scaled(Duration::from_secs(5)),
            route_limit: LIMIT,
            ..ArmConfig::default()
        },
        Some(&[]),
        Duration::from_secs(30),
    )
    .await
}

fn expected(nodes: &[NodeRoutes]) -> Vec<AppliedRoute> {
    let own = Ownership {
        cluster_cidrs: vec![cluster()],
    };
    let (desired, _) = desired_routes(nodes, &own);
    let mut v: Vec<AppliedRoute> = desired
        .iter()
        .map(|d| {
            let r = d.to_table_route();
            let hop = r.next_hop_ip.as_deref();
            AppliedRoute::new(&r.name, &r.address_prefix, &r.next_hop_type, hop)
        })
        .collect();
    v.sort();
    v
}

async fn converged(arm: &ArmHandle, want: &[AppliedRoute]) {
    let mut watch = arm.routes_watch();
    tokio::time::timeout(
        Duration::from_secs(600),
        watch.wait_for(|t| t.get(&table_id()).map(Vec::as_slice).unwrap_or_default() == want),
    )
    .await
    .expect("converges within 10 minutes")
    .expect("service running");
}

#[derive(Debug, Clone, Copy)]
struct Phase {
    writes: usize,
    time: Duration,
}

/// The two phases' node sets.
fn phases() -> (Vec<NodeRoutes>, Vec<NodeRoutes>) {
    let first: Vec<NodeRoutes> = (0..NODES).map(node).collect();
    let mut second: Vec<NodeRoutes> = first[CHURN..].to_vec();
    second.extend((NODES..NODES + CHURN).map(node));
    (first, second)
}

async fn underlay() -> [Phase; 2] {
    let e = env().await;
    let input = RouteInput::default();
    let r = Reconciler::new(
        e.table.clone(),
        RecordingSink::default(),
        ReconcilerConfig {
            batch_interval: scaled(Duration::from_secs(2)),
            poll_interval: scaled(Duration::from_secs(1)),
            ..ReconcilerConfig::default()
        },
        Ownership {
            cluster_cidrs: vec![cluster()],
        },
        None,
    );
    let task = tokio::spawn(r.run(input.clone()));
    let (first, second) = phases();
    let mut out = Vec::new();
    let mut before: BTreeSet<String> = BTreeSet::new();
    for nodes in [&first, &second] {
        let writes = e.arm.writes();
        let start = Instant::now();
        let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        for gone in before.difference(&names) {
            input.remove(gone);
        }
        for n in nodes.iter() {
            input.upsert(n.clone());
        }
        converged(&e.arm, &expected(nodes)).await;
        out.push(Phase {
            writes: e.arm.writes() - writes,
            time: start.elapsed(),
        });
        before = names;
    }
    task.abort();
    [out[0], out[1]]
}

async fn wait_op(table: &ArmRouteTable, pending: &PendingWrite, poll: Duration) {
    loop {
        tokio::time::sleep(poll).await;
        match table.poll(pending).await.expect("poll") {
            OperationState::InProgress { .. } => {}
            OperationState::Succeeded => return,
            other => panic!("operation ended {other:?}"),
        }
    }
}

/// One route write through the routes API: PUT (or DELETE) and poll.
async fn route_call(
    e: &Env,
    http: &Arc<dyn azure_core::HttpClient>,
    method: azure_core::Method,
    n: &NodeRoutes,
) {
    let name = underlay_route_controller::naming::route_name(&n.name, &n.pod_cidrs[0]);
    let url: azure_core::Url = format!(
        "{}/subscriptions/sub-1/resourceGroups/rg-net/providers/Microsoft.Network/routeTables/underlay-routes/routes/{name}?api-version=2024-03-01",
        e.arm.endpoint()
    )
    .parse()
    .unwrap();
    let mut req = azure_core::Request::new(url, method);
    req.insert_header("authorization", format!("Bearer {}", e.arm.token()));
    req.insert_header("content-type", "application/json");
    if method == azure_core::Method::Put {
        let body = serde_json::json!({"properties": {
            "addressPrefix": n.pod_cidrs[0].to_string(),
            "nextHopType": "VirtualAppliance",
            "nextHopIpAddress": n.internal_ips[0].to_string(),
        }});
        req.set_body(body.to_string());
    }
    let rsp = http.execute_request(&req).await.expect("route write");
    assert!(
        rsp.status().is_success(),
        "route write answered {}",
        rsp.status()
    );
    let op = rsp
        .headers()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case("azure-asyncoperation"))
        .map(|(_, v)| v.as_str().to_string());
    wait_op(
        &e.table,
        &PendingWrite {
            operation_url: op,
            retry_after: None,
        },
        scaled(Duration::from_secs(1)),
    )
    .await;
}

async fn per_route() -> [Phase; 2] {
    let e = env().await;
    let http = azure_core::new_http_client();
    let (first, second) = phases();
    let mut out = Vec::new();
    let mut before: Vec<NodeRoutes> = Vec::new();
    for nodes in [&first, &second] {
        let writes = e.arm.writes();
        let start = Instant::now();
        let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let old: BTreeSet<&str> = before.iter().map(|n| n.name.as_str()).collect();
        for n in before.iter().filter(|n| !names.contains(n.name.as_str())) {
            route_call(&e, &http, azure_core::Method::Delete, n).await;
        }
        for n in nodes.iter().filter(|n| !old.contains(n.name.as_str())) {
            route_call(&e, &http, azure_core::Method::Put, n).await;
        }
        converged(&e.arm, &expected(nodes)).await;
        out.push(Phase {
            writes: e.arm.writes() - writes,
            time: start.elapsed(),
        });
        before = nodes.clone();
    }
    [out[0], out[1]]
}

async fn fixed_batch() -> [Phase; 2] {
    let e = env().await;
    let period = scaled(Duration::from_secs(30));
    let settle = scaled(Duration::from_secs(30));
    let own = Ownership {
        cluster_cidrs: vec![cluster()],
    };
    let current: Arc<std::sync::Mutex<Vec<NodeRoutes>>> = Arc::default();
    let flusher = {
        let current = current.clone();
        let table = e.table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let nodes = current.lock().unwrap().clone();
                let state = table.get().await.expect("get").expect("table");
                let (desired, left) = desired_routes(&nodes, &own);
                let p = plan(&state.routes, &desired, left, &own, LIMIT);
                if !p.changes() {
                    continue;
                }
                let pending = table
                    .put(&TableWrite {
                        base: state.resource,
                        location: "westeurope".into(),
                        routes: p.routes,
                        precondition: Precondition::IfMatch(state.etag.unwrap_or_default()),
                    })
                    .await
                    .expect("put");
                wait_op(&table, &pending, scaled(Duration::from_secs(1))).await;
                tokio::time::sleep(settle).await;
                tick.reset();
            }
        })
    };
    let (first, second) = phases();
    let mut out = Vec::new();
    // Changes arrive at an arbitrary point of the flush cycle: half-way.
    tokio::time::sleep(period / 2).await;
    for nodes in [&first, &second] {
        let writes = e.arm.writes();
        let start = Instant::now();
        *current.lock().unwrap() = nodes.clone();
        converged(&e.arm, &expected(nodes)).await;
        out.push(Phase {
            writes: e.arm.writes() - writes,
            time: start.elapsed(),
        });
    }
    flusher.abort();
    [out[0], out[1]]
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "n/a".to_string()
    } else {
        format!("{:.1}x", a / b)
    }
}

#[tokio::main]
async fn main() {
    println!(
        "routes: {NODES} nodes join, then {CHURN} leave and {CHURN} join; ARM latency scaled 1/{SCALE} \
         (request 100 ms -> {:?}, async write 5 s -> {:?})",
        scaled(Duration::from_millis(100)),
        scaled(Duration::from_secs(5))
    );
    let u = underlay().await;
    let p = per_route().await;
    let f = fixed_batch().await;
    println!();
    println!(
        "{:<28} {:>8} {:>12} {:>8} {:>12}",
        "strategy", "writes", "converge", "writes", "converge"
    );
    println!(
        "{:<28} {:>8} {:>12} {:>8} {:>12}",
        "", "(join)", "(join)", "(churn)", "(churn)"
    );
    for (name, r) in [
        ("underlay (batched, If-Match)", u),
        ("per-route PUT", p),
        ("fixed 30s batch + 30s settle", f),
    ] {
        println!(
            "{:<28} {:>8} {:>10.0}ms {:>8} {:>10.0}ms",
            name,
            r[0].writes,
            r[0].time.as_secs_f64() * 1000.0,
            r[1].writes,
            r[1].time.as_secs_f64() * 1000.0
        );
    }
    println!();
    println!("ratios to underlay (higher = underlay better):");
    for (name, r) in [("per-route PUT", p), ("fixed 30s batch + 30s settle", f)] {
        println!(
            "  {:<28} join: writes {} time {}   churn: writes {} time {}",
            name,
            ratio(r[0].writes as f64, u[0].writes as f64),
            ratio(r[0].time.as_secs_f64(), u[0].time.as_secs_f64()),
            ratio(r[1].writes as f64, u[1].writes as f64),
            ratio(r[1].time.as_secs_f64(), u[1].time.as_secs_f64()),
        );
    }
}
