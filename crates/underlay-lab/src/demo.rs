//! The demo `cargo xtask lab` runs, and the report it prints: every step
//! states its expectation and what was observed; the run fails if any
//! expectation is not met.
//!
//! The demo is the list `STEPS`, run in order; each step is a function
//! that returns what it observed, and may record measured intervals.

use crate::lab::{Error, Lab, Result, network_unavailable};
use crate::scenario::{self, POD_PORTS};
use crate::traffic::Protocol;
use futures::future::LocalBoxFuture;
use serde_json::json;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One step of the demo.
#[derive(Clone, Debug)]
pub struct Step {
    pub title: String,
    pub expectation: String,
    pub observation: String,
    pub ok: bool,
    pub took: Duration,
}

/// The demo's steps so far.
#[derive(Debug, Default)]
pub struct Record {
    pub steps: Vec<Step>,
    /// (what, how long, how it was measured)
    pub timings: Vec<Timing>,
}

/// One measured interval of the demo, named by its two ends.
#[derive(Debug, Clone)]
pub struct Timing {
    pub what: String,
    pub took: Duration,
    pub how: &'static str,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok)
    }

    fn time(&mut self, what: &str, took: Duration, how: &'static str) {
        self.timings.push(Timing {
            what: what.into(),
            took,
            how,
        });
    }

    fn push(
        &mut self,
        title: &str,
        expectation: &str,
        observation: String,
        ok: bool,
        took: Duration,
    ) {
        eprintln!(
            "{} {title}\n    expected: {expectation}\n    observed: {observation} ({:.1}s)",
            if ok { "PASS" } else { "FAIL" },
            took.as_secs_f64()
        );
        self.steps.push(Step {
            title: title.into(),
            expectation: expectation.into(),
            observation,
            ok,
            took,
        });
    }
}

const CONVERGE: Duration = Duration::from_secs(20);

/// A step of the demo before it runs: its title and expectation as the
/// report prints them, and what it does.
struct DemoStep {
    title: &'static str,
    expectation: &'static str,
    /// The steps after it need what it sets up: if it misses its
    /// expectation, the demo ends there.
    later_steps_need_it: bool,
    run: for<'a> fn(&'a Lab, &'a mut Demo) -> LocalBoxFuture<'a, Result<Seen>>,
}

/// What a step observed, and whether that met its expectation.
struct Seen {
    observation: String,
    ok: bool,
}

/// The demo as it runs: what it recorded so far, when the current step
/// started, and what earlier steps leave for later ones.
struct Demo {
    rec: Record,
    started: Instant,
    /// The lab's nodes when the demo began, in order: pods are placed on
    /// them.
    nodes: Vec<String>,
    /// The node the join step added, for the leave step.
    joined: Option<String>,
}

impl Demo {
    /// Records the interval from the start of the current step until now.
    fn time_step(&mut self, what: &str, how: &'static str) {
        self.rec.time(what, self.started.elapsed(), how);
    }
}

/// The demo, in order.
const STEPS: &[DemoStep] = &[
    DemoStep {
        title: "nodes join and get routes",
        expectation: "every node gets a pod CIDR, one route per node is applied, NetworkUnavailable becomes False",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(nodes_are_routed(lab, demo)),
    },
    DemoStep {
        title: "pods start on three nodes",
        expectation: "x/a, y/b, z/c run on node-1..3 with addresses from their node's pod CIDR",
        later_steps_need_it: true,
        run: |lab, demo| Box::pin(pods_start(lab, demo)),
    },
    DemoStep {
        title: "cross-node pod traffic",
        expectation: "TCP, UDP and SCTP connect between pods on different nodes, through the route table",
        later_steps_need_it: false,
        run: |lab, _| Box::pin(cross_node_traffic(lab)),
    },
    DemoStep {
        title: "default-deny ingress in namespace y",
        expectation: "nothing reaches y/b on any protocol; x/a -> z/c still connects",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(default_deny(lab, demo)),
    },
    DemoStep {
        title: "allow rules",
        expectation: "x/a reaches y/b on 80/TCP and 9000/SCTP only; z/c is still denied",
        later_steps_need_it: false,
        run: |lab, _| Box::pin(allow_rules(lab)),
    },
    DemoStep {
        title: "a cluster-wide guardrail (ClusterNetworkPolicy)",
        expectation: "an Admin-tier Deny of x -> y on 80/TCP overrides y's allow; 9000/SCTP, which no guardrail names, is still y's NetworkPolicy's to allow",
        later_steps_need_it: false,
        run: |lab, _| Box::pin(cluster_guardrail(lab)),
    },
    DemoStep {
        title: "a node joins",
        expectation: "the new node gets a route, NetworkUnavailable clears, its pods are reachable",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(a_node_joins(lab, demo)),
    },
    DemoStep {
        title: "a node leaves",
        expectation: "its route is removed from the route table and the fabric",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(a_node_leaves(lab, demo)),
    },
    DemoStep {
        title: "agent restart under traffic",
        expectation: "no probe to z/c fails while its node's agent restarts; afterwards new pods start and policy still holds",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(agent_restart_under_traffic(lab, demo)),
    },
    DemoStep {
        title: "route-controller leader failover",
        expectation: "when the leader dies the other replica takes the lease and routes a joining node",
        later_steps_need_it: false,
        run: |lab, demo| Box::pin(leader_failover(lab, demo)),
    },
];

/// Runs the demo on a lab that is up with three nodes.
pub async fn run(lab: &Lab) -> Record {
    let mut demo = Demo {
        rec: Record::default(),
        started: Instant::now(),
        nodes: lab.nodes().iter().map(|n| n.name.clone()).collect(),
        joined: None,
    };
    if let Err(e) = run_steps(lab, &mut demo).await {
        demo.rec.push(
            "demo aborted",
            "every step runs",
            e.to_string(),
            false,
            Duration::ZERO,
        );
    }
    demo.rec
}

/// Runs [`STEPS`] in order, recording each; an error aborts the demo.
async fn run_steps(lab: &Lab, demo: &mut Demo) -> Result<()> {
    for step in STEPS {
        demo.started = Instant::now();
        let seen = (step.run)(lab, demo).await?;
        let took = demo.started.elapsed();
        demo.rec.push(
            step.title,
            step.expectation,
            seen.observation,
            seen.ok,
            took,
        );
        if !seen.ok && step.later_steps_need_it {
            break;
        }
    }
    Ok(())
}

/// A wait that timed out is something a step observes (`Ok(Err(_))`); any
/// other error aborts the demo.
fn timeout_observed<T>(result: Result<T>) -> Result<Result<T>> {
    match result {
        Err(e @ Error::Timeout { .. }) => Ok(Err(e)),
        other => other.map(Ok),
    }
}

async fn reach(
    lab: &Lab,
    from: &str,
    to: &str,
    port: u16,
    proto: Protocol,
    want: bool,
) -> (bool, String) {
    match scenario::expect_reach(lab, from, to, port, proto, want, CONVERGE).await {
        Ok(o) => (
            o.matched,
            format!(
                "{from} -> {to} {port}/{proto}: {} after {:.1}s",
                o.outcome,
                o.waited.as_secs_f64()
            ),
        ),
        Err(e) => (false, format!("{from} -> {to} {port}/{proto}: {e}")),
    }
}

/// How long after `since` the first probe `from` -> `to`:80/TCP that went
/// unanswered started (probes back to back, each with a short timeout).
async fn first_denied(lab: &Lab, from: &str, to: &str, since: Instant) -> Result<Duration> {
    let ip = scenario::pod_ip(lab, to, false)
        .ok_or_else(|| Error::Usage(format!("pod {to} has no IPv4 address")))?;
    loop {
        let started = Instant::now();
        let outcome = lab
            .probe(
                from,
                std::net::SocketAddr::new(ip, 80),
                Protocol::Tcp,
                Duration::from_millis(100),
            )
            .await?;
        if !outcome.connected() {
            return Ok(started - since);
        }
        if since.elapsed() > CONVERGE {
            return Err(Error::Usage(format!(
                "{from} -> {to} still connects {CONVERGE:?} after the policy was created"
            )));
        }
    }
}

async fn reach_all(lab: &Lab, checks: &[(&str, &str, u16, Protocol, bool)]) -> Seen {
    let mut ok = true;
    let mut obs = Vec::new();
    for (from, to, port, proto, want) in checks {
        let (m, o) = reach(lab, from, to, *port, *proto, *want).await;
        ok &= m;
        obs.push(o);
    }
    Seen {
        observation: obs.join("; "),
        ok,
    }
}

/// Every node of the lab has a pod CIDR, NetworkUnavailable=False and its
/// route in the fabric.
async fn nodes_are_routed(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    let mut obs = Vec::new();
    let mut ok = true;
    for n in &demo.nodes {
        let r = lab.wait_network_available(n, CONVERGE).await;
        let node = lab.node_object(n).await?;
        let cidrs = node
            .as_ref()
            .and_then(|n| n.spec.as_ref()?.pod_cidrs.clone())
            .unwrap_or_default();
        ok &= r.is_ok() && !cidrs.is_empty();
        obs.push(format!(
            "{n}: podCIDRs {cidrs:?}, NetworkUnavailable={:?}",
            node.as_ref().and_then(network_unavailable)
        ));
    }
    let routes = lab.vnet().routes();
    ok &= routes.len() >= demo.nodes.len();
    obs.push(format!("{} routes in the fabric", routes.len()));
    demo.time_step(
        "lab started -> every node routed",
        "the wait after the lab's start returned (it waits for Ready nodes) until every node has a pod CIDR, its route in the fabric and NetworkUnavailable=False",
    );
    Ok(Seen {
        observation: obs.join("; "),
        ok,
    })
}

/// Pods x/a, y/b and z/c, one on each of the first three nodes.
async fn pods_start(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    for ns in ["x", "y", "z"] {
        scenario::namespace(lab, ns).await?;
    }
    let placement = [("x/a", 0), ("y/b", 1), ("z/c", 2)];
    for (key, i) in placement {
        let node = demo.nodes.get(i).map(String::as_str);
        scenario::pod(lab, key, node, json!({})).await?;
    }
    let mut obs = Vec::new();
    let mut ok = true;
    for (key, _) in placement {
        match lab.wait_pod_running(key, CONVERGE).await {
            Ok(p) => obs.push(format!("{key} on {} with {:?}", p.node, p.ips)),
            Err(e) => {
                ok = false;
                obs.push(format!("{key}: {e}"));
            }
        }
    }
    demo.time_step(
        "pods created -> running",
        "from the first namespace's creation until all three pods report Running with addresses",
    );
    Ok(Seen {
        observation: obs.join("; "),
        ok,
    })
}

/// Every pod port, pod to pod around the three nodes.
async fn cross_node_traffic(lab: &Lab) -> Result<Seen> {
    let mut checks = Vec::new();
    for (port, proto) in POD_PORTS {
        checks.push(("x/a", "y/b", port, proto, true));
        checks.push(("y/b", "z/c", port, proto, true));
        checks.push(("z/c", "x/a", port, proto, true));
    }
    Ok(reach_all(lab, &checks).await)
}

/// A default-deny ingress policy in namespace y, and how soon it denies.
async fn default_deny(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    scenario::policy(
        lab,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "y"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    )
    .await?;
    match first_denied(lab, "x/a", "y/b", demo.started).await {
        Ok(took) => demo.rec.time(
            "policy created -> first probe denied",
            took,
            "from the API server accepting the policy to the start of the first TCP probe x/a -> y/b:80 that was not answered (probes back to back, 100 ms timeout each)",
        ),
        Err(e) => eprintln!("default deny: {e}"),
    }
    let mut checks = Vec::new();
    for (port, proto) in POD_PORTS {
        checks.push(("x/a", "y/b", port, proto, false));
        checks.push(("z/c", "y/b", port, proto, false));
    }
    checks.push(("x/a", "z/c", 80, Protocol::Tcp, true));
    Ok(reach_all(lab, &checks).await)
}

/// A policy allowing namespace x into y/b on two ports.
async fn allow_rules(lab: &Lab) -> Result<Seen> {
    scenario::policy(lab, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-x-http", "namespace": "y"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                       "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "SCTP", "port": 9000}]}]}})).await?;
    Ok(reach_all(
        lab,
        &[
            ("x/a", "y/b", 80, Protocol::Tcp, true),
            ("x/a", "y/b", 9000, Protocol::Sctp, true),
            ("x/a", "y/b", 53, Protocol::Udp, false),
            ("z/c", "y/b", 80, Protocol::Tcp, false),
        ],
    )
    .await)
}

/// An Admin-tier ClusterNetworkPolicy denying x -> y on TCP 80, above y's
/// NetworkPolicy that allows it; removed again once observed.
async fn cluster_guardrail(lab: &Lab) -> Result<Seen> {
    let ns = |name: &str| json!({"matchLabels": {"kubernetes.io/metadata.name": name}});
    scenario::cluster_policy(
        lab,
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "no-web-from-x"},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": ns("y")},
          "ingress": [{"action": "Deny", "from": [{"namespaces": ns("x")}],
                       "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}]}}),
    )
    .await?;
    let seen = reach_all(
        lab,
        &[
            ("x/a", "y/b", 80, Protocol::Tcp, false),
            ("x/a", "y/b", 9000, Protocol::Sctp, true),
        ],
    )
    .await;
    scenario::delete_cluster_policy(lab, "no-web-from-x").await?;
    Ok(seen)
}

/// The next node joins the lab ([`Lab::join_node`]) and a pod on it is
/// reached from x/a.
async fn a_node_joins(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    let new = lab.next_node_name();
    demo.joined = Some(new.clone());
    if let Err(e) = timeout_observed(lab.join_node(&new, CONVERGE).await)? {
        return Ok(Seen {
            observation: format!("{new} did not join: {e}"),
            ok: false,
        });
    }
    let hop = lab.vnet().node(&new).map(|n| IpAddr::V4(n.ipv4));
    let routed = lab.vnet().routes().iter().any(|r| Some(r.next_hop) == hop);
    let node = lab.node_object(&new).await?;
    let available = node.as_ref().and_then(network_unavailable) == Some(false);
    scenario::namespace(lab, "w").await?;
    scenario::pod(lab, "w/d", Some(&new), json!({})).await?;
    let running = lab.wait_pod_running("w/d", CONVERGE).await;
    let (reach_ok, reach_obs) = if running.is_ok() {
        reach(lab, "x/a", "w/d", 80, Protocol::Tcp, true).await
    } else {
        (false, format!("w/d did not run: {:?}", running.err()))
    };
    demo.time_step(
        "node added -> pod on it reachable",
        "from adding the node until a TCP probe from x/a reaches a pod scheduled on it (includes route write, agent readiness and pod start)",
    );
    Ok(Seen {
        observation: format!(
            "{new}: route applied={routed}, NetworkUnavailable cleared={available}, {reach_obs}"
        ),
        ok: routed && available && reach_ok,
    })
}

/// The node the join step added leaves ([`Lab::leave_node`]).
async fn a_node_leaves(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    let Some(node) = demo.joined.take() else {
        return Ok(Seen {
            observation: "no node joined".into(),
            ok: false,
        });
    };
    let gone = timeout_observed(lab.leave_node(&node, CONVERGE).await)?.is_ok();
    demo.time_step(
        "node removed -> route gone",
        "from deleting the node until its route is gone from the fabric",
    );
    Ok(Seen {
        observation: format!(
            "route removed={gone} ({} routes left)",
            lab.vnet().routes().len()
        ),
        ok: gone,
    })
}

/// x/a probes z/c while the agent of z/c's node is killed and restarted;
/// then a new pod starts there and policy still holds.
async fn agent_restart_under_traffic(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    let node3 = demo.nodes.get(2).cloned().unwrap_or_default();
    let stop = AtomicBool::new(false);
    let ((sent, failed), restarted) = tokio::join!(
        probe_until(lab, "x/a", "z/c", &stop),
        restart_agent(lab, &node3, &stop)
    );
    restarted?;
    scenario::pod(lab, "z/c2", Some(&node3), json!({})).await?;
    let new_pod = lab.wait_pod_running("z/c2", CONVERGE).await;
    let (still_denied, deny_obs) = reach(lab, "z/c", "y/b", 80, Protocol::Tcp, false).await;
    Ok(Seen {
        observation: format!(
            "{failed}/{sent} probes failed; new pod z/c2 running={}; {deny_obs}",
            new_pod.is_ok()
        ),
        ok: failed == 0 && sent > 0 && new_pod.is_ok() && still_denied,
    })
}

/// Probes `to`:80/TCP from `from` every 50 ms until `stop` is set; returns
/// how many probes were sent and how many did not get `to`'s answer.
async fn probe_until(lab: &Lab, from: &str, to: &str, stop: &AtomicBool) -> (u32, u32) {
    let (mut sent, mut failed) = (0u32, 0u32);
    while !stop.load(Ordering::Relaxed) {
        if let Some(ip) = scenario::pod_ip(lab, to, false) {
            let o = lab
                .probe(
                    from,
                    (ip, 80).into(),
                    Protocol::Tcp,
                    scenario::PROBE_TIMEOUT,
                )
                .await;
            sent += 1;
            if !o.map(|o| o.reply() == Some(to)).unwrap_or(false) {
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (sent, failed)
}

/// Kills the agent of `node` and starts it again, with half a second of
/// traffic before, between and after; then sets `stop`.
async fn restart_agent(lab: &Lab, node: &str, stop: &AtomicBool) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = async {
        lab.kill_agent(node).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        lab.start_agent(node).await?;
        lab.wait_agent_ready(node, CONVERGE).await
    }
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    r
}

/// The leading route controller is killed; another replica takes the Lease
/// and routes a node that joins meanwhile.
async fn leader_failover(lab: &Lab, demo: &mut Demo) -> Result<Seen> {
    let leader = match lab
        .wait_for("a route-controller leader", CONVERGE, || lab.leader())
        .await
    {
        Ok(leader) => leader,
        Err(e) => {
            return Ok(Seen {
                observation: e.to_string(),
                ok: false,
            });
        }
    };
    let index: usize = leader
        .rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let killed = Instant::now();
    lab.kill_route_controller(index).await?;
    let next = lab
        .wait_for(
            "another replica to take the lease",
            Duration::from_secs(60),
            || async { lab.leader().await.filter(|l| *l != leader) },
        )
        .await;
    if next.is_ok() {
        demo.rec.time(
            "leader killed -> new leader",
            killed.elapsed(),
            "from SIGKILL of the leading replica until another replica holds the Lease (lab lease duration 4 s)",
        );
    }
    let joined = lab.next_node_name();
    let routed = timeout_observed(lab.join_node(&joined, Duration::from_secs(30)).await)?;
    lab.start_route_controller(index).await?;
    // Leave the route table as the report will show it; a route slow to go
    // shows there.
    let _ = timeout_observed(lab.leave_node(&joined, CONVERGE).await)?;
    Ok(Seen {
        observation: format!(
            "leader {leader} killed; new leader {:?}; {joined} routed by it: {}",
            next.as_ref().ok(),
            routed.is_ok()
        ),
        ok: next.is_ok() && routed.is_ok(),
    })
}

/// The final report: nodes, routes, pod-to-pod reachability (TCP 80) and
/// timings.
pub async fn report(lab: &Lab, rec: &Record) -> String {
    let mut out = String::new();
    write_nodes(&mut out, lab).await;
    write_routes(&mut out, lab);
    write_reachability(&mut out, lab).await;
    write_timings(&mut out, rec);
    write_steps(&mut out, rec);
    out
}

/// Each node with its address, pod CIDRs and NetworkUnavailable condition.
async fn write_nodes(out: &mut String, lab: &Lab) {
    let _ = writeln!(out, "\n== nodes");
    let _ = writeln!(
        out,
        "{:<10} {:<12} {:<24} {:<20}",
        "NODE", "IP", "POD CIDRS", "NETWORK UNAVAILABLE"
    );
    for n in lab.nodes() {
        let obj = lab.node_object(&n.name).await.ok().flatten();
        let cidrs = obj
            .as_ref()
            .and_then(|o| o.spec.as_ref()?.pod_cidrs.clone())
            .unwrap_or_default()
            .join(",");
        let unavailable = obj.as_ref().and_then(network_unavailable);
        let _ = writeln!(
            out,
            "{:<10} {:<12} {:<24} {:<20}",
            n.name,
            n.ipv4.to_string(),
            cidrs,
            unavailable.map_or("unknown".into(), |u| u.to_string())
        );
    }
}

/// The routes the fabric applies.
fn write_routes(out: &mut String, lab: &Lab) {
    let _ = writeln!(out, "\n== route table (applied by the fabric)");
    for r in lab.vnet().routes() {
        let _ = writeln!(out, "{:<40} {:<20} -> {}", r.name, r.prefix, r.next_hop);
    }
}

/// Every pod probing every pod on TCP 80, as a matrix (row -> column).
async fn write_reachability(out: &mut String, lab: &Lab) {
    let pods = lab.pods();
    let _ = writeln!(out, "\n== pod-to-pod reachability, TCP 80 (row -> column)");
    let _ = write!(out, "{:<8}", "");
    for p in &pods {
        let _ = write!(out, "{:<8}", p.key);
    }
    let _ = writeln!(out);
    for from in &pods {
        let _ = write!(out, "{:<8}", from.key);
        for to in &pods {
            let cell = match to.ips.first() {
                Some(ip) => match lab
                    .probe(
                        &from.key,
                        (*ip, 80).into(),
                        Protocol::Tcp,
                        scenario::PROBE_TIMEOUT,
                    )
                    .await
                {
                    Ok(o) if o.reply() == Some(to.key.as_str()) => "ok",
                    Ok(_) => "-",
                    Err(_) => "err",
                },
                None => "?",
            };
            let _ = write!(out, "{cell:<8}");
        }
        let _ = writeln!(out);
    }
}

/// The measured intervals and how each was measured.
fn write_timings(out: &mut String, rec: &Record) {
    let _ = writeln!(out, "\n== timings");
    for t in &rec.timings {
        let _ = writeln!(
            out,
            "{:<38} {:>6.2}s  {}",
            t.what,
            t.took.as_secs_f64(),
            t.how
        );
    }
}

/// Each step's verdict and duration, and how many met their expectation.
fn write_steps(out: &mut String, rec: &Record) {
    let _ = writeln!(out, "\n== steps");
    for s in &rec.steps {
        let _ = writeln!(
            out,
            "{} {:<40} {:>6.1}s",
            if s.ok { "PASS" } else { "FAIL" },
            s.title,
            s.took.as_secs_f64()
        );
    }
    let passed = rec.steps.iter().filter(|s| s.ok).count();
    let _ = writeln!(
        out,
        "\n{passed}/{} steps met their expectation",
        rec.steps.len()
    );
}
