//! The demo `cargo xtask lab` runs, and the report it prints: every step
//! states its expectation and what was observed; the run fails if any
//! expectation is not met.

use crate::lab::{Lab, Result, network_unavailable};
use crate::scenario::{self, POD_PORTS};
use crate::traffic::Protocol;
use serde_json::json;
use std::fmt::Write as _;
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
        .ok_or_else(|| crate::lab::Error::Usage(format!("pod {to} has no IPv4 address")))?;
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
            return Err(crate::lab::Error::Usage(format!(
                "{from} -> {to} still connects {CONVERGE:?} after the policy was created"
            )));
        }
    }
}

async fn reach_all(lab: &Lab, checks: &[(&str, &str, u16, Protocol, bool)]) -> (bool, String) {
    let mut ok = true;
    let mut obs = Vec::new();
    for (from, to, port, proto, want) in checks {
        let (m, o) = reach(lab, from, to, *port, *proto, *want).await;
        ok &= m;
        obs.push(o);
    }
    (ok, obs.join("; "))
}

/// Runs the demo on a lab that is up with three nodes.
pub async fn run(lab: &Lab) -> Record {
    let mut rec = Record::default();
    if let Err(e) = steps(lab, &mut rec).await {
        rec.push(
            "demo aborted",
            "every step runs",
            e.to_string(),
            false,
            Duration::ZERO,
        );
    }
    rec
}

async fn steps(lab: &Lab, rec: &mut Record) -> Result<()> {
    // 1. Nodes are routed.
    let t = Instant::now();
    let nodes: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let mut obs = Vec::new();
    let mut ok = true;
    for n in &nodes {
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
    ok &= routes.len() >= nodes.len();
    obs.push(format!("{} routes in the fabric", routes.len()));
    rec.push(
        "nodes join and get routes",
        "every node gets a pod CIDR, one route per node is applied, NetworkUnavailable becomes False",
        obs.join("; "),
        ok,
        t.elapsed(),
    );
    rec.time(
        "lab started -> every node routed",
        t.elapsed(),
        "the wait after the lab's start returned (it waits for Ready nodes) until every node has a pod CIDR, its route in the fabric and NetworkUnavailable=False",
    );

    // 2. Pods on different nodes.
    let t = Instant::now();
    for ns in ["x", "y", "z"] {
        scenario::namespace(lab, ns).await?;
    }
    let placement = [("x/a", 0), ("y/b", 1), ("z/c", 2)];
    for (key, i) in placement {
        scenario::pod(lab, key, nodes.get(i).map(String::as_str), json!({})).await?;
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
    rec.push(
        "pods start on three nodes",
        "x/a, y/b, z/c run on node-1..3 with addresses from their node's pod CIDR",
        obs.join("; "),
        ok,
        t.elapsed(),
    );
    rec.time(
        "pods created -> running",
        t.elapsed(),
        "from the first namespace's creation until all three pods report Running with addresses",
    );
    if !ok {
        return Ok(());
    }

    // 3. Cross-node traffic over the routes.
    let t = Instant::now();
    let mut checks = Vec::new();
    for (port, proto) in POD_PORTS {
        checks.push(("x/a", "y/b", port, proto, true));
        checks.push(("y/b", "z/c", port, proto, true));
        checks.push(("z/c", "x/a", port, proto, true));
    }
    let (ok, obs) = reach_all(lab, &checks).await;
    rec.push(
        "cross-node pod traffic",
        "TCP, UDP and SCTP connect between pods on different nodes, through the route table",
        obs,
        ok,
        t.elapsed(),
    );

    // 4. Default deny.
    let t = Instant::now();
    scenario::policy(
        lab,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "y"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    )
    .await?;
    match first_denied(lab, "x/a", "y/b", t).await {
        Ok(took) => rec.time(
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
    let (ok, obs) = reach_all(lab, &checks).await;
    rec.push(
        "default-deny ingress in namespace y",
        "nothing reaches y/b on any protocol; x/a -> z/c still connects",
        obs,
        ok,
        t.elapsed(),
    );

    // 5. Allow rules.
    let t = Instant::now();
    scenario::policy(lab, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-x-http", "namespace": "y"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                       "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "SCTP", "port": 9000}]}]}})).await?;
    let (ok, obs) = reach_all(
        lab,
        &[
            ("x/a", "y/b", 80, Protocol::Tcp, true),
            ("x/a", "y/b", 9000, Protocol::Sctp, true),
            ("x/a", "y/b", 53, Protocol::Udp, false),
            ("z/c", "y/b", 80, Protocol::Tcp, false),
        ],
    )
    .await;
    rec.push(
        "allow rules",
        "x/a reaches y/b on 80/TCP and 9000/SCTP only; z/c is still denied",
        obs,
        ok,
        t.elapsed(),
    );

    // 6. Node join.
    let t = Instant::now();
    let new = lab.add_node().await?;
    let avail = lab.wait_network_available(&new, CONVERGE).await;
    lab.wait_agent_ready(&new, CONVERGE).await?;
    let routes = lab.vnet().routes();
    let hop = lab.vnet().node(&new).map(|n| n.ipv4);
    let routed = routes
        .iter()
        .any(|r| Some(r.next_hop) == hop.map(Into::into));
    scenario::namespace(lab, "w").await?;
    scenario::pod(lab, "w/d", Some(&new), json!({})).await?;
    let running = lab.wait_pod_running("w/d", CONVERGE).await;
    let (reach_ok, reach_obs) = if running.is_ok() {
        reach(lab, "x/a", "w/d", 80, Protocol::Tcp, true).await
    } else {
        (false, format!("w/d did not run: {:?}", running.err()))
    };
    rec.push(
        "a node joins",
        "the new node gets a route, NetworkUnavailable clears, its pods are reachable",
        format!(
            "{new}: route applied={routed}, NetworkUnavailable cleared={}, {reach_obs}",
            avail.is_ok()
        ),
        routed && avail.is_ok() && reach_ok,
        t.elapsed(),
    );
    rec.time(
        "node added -> pod on it reachable",
        t.elapsed(),
        "from adding the node until a TCP probe from x/a reaches a pod scheduled on it (includes route write, agent readiness and pod start)",
    );

    // 7. Node leave.
    let t = Instant::now();
    lab.remove_node(&new).await?;
    let gone = lab
        .wait_for("the node's route to be removed", CONVERGE, || async {
            let routes = lab.vnet().routes();
            (!routes
                .iter()
                .any(|r| Some(r.next_hop) == hop.map(Into::into)))
            .then_some(())
        })
        .await;
    rec.push(
        "a node leaves",
        "its route is removed from the route table and the fabric",
        format!(
            "route removed={} ({} routes left)",
            gone.is_ok(),
            lab.vnet().routes().len()
        ),
        gone.is_ok(),
        t.elapsed(),
    );
    rec.time(
        "node removed -> route gone",
        t.elapsed(),
        "from deleting the node until its route is gone from the fabric",
    );

    // 8. Agent restart under traffic.
    let t = Instant::now();
    let node3 = nodes.get(2).cloned().unwrap_or_default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = {
        let traffic = async {
            let (mut sent, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ip = scenario::pod_ip(lab, "z/c", false);
                if let Some(ip) = ip {
                    let o = lab
                        .probe(
                            "x/a",
                            (ip, 80).into(),
                            Protocol::Tcp,
                            scenario::PROBE_TIMEOUT,
                        )
                        .await;
                    sent += 1;
                    if !o.map(|o| o.reply() == Some("z/c")).unwrap_or(false) {
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sent, failed)
        };
        let restart = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = async {
                lab.kill_agent(&node3).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                lab.start_agent(&node3).await?;
                lab.wait_agent_ready(&node3, CONVERGE).await
            }
            .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        };
        let (counts, restarted) = tokio::join!(traffic, restart);
        restarted?;
        counts
    };
    scenario::pod(lab, "z/c2", Some(&node3), json!({})).await?;
    let new_pod = lab.wait_pod_running("z/c2", CONVERGE).await;
    let (still_denied, deny_obs) = reach(lab, "z/c", "y/b", 80, Protocol::Tcp, false).await;
    rec.push(
        "agent restart under traffic",
        "no probe to z/c fails while its node's agent restarts; afterwards new pods start and policy still holds",
        format!(
            "{failed}/{sent} probes failed; new pod z/c2 running={}; {deny_obs}",
            new_pod.is_ok()
        ),
        failed == 0 && sent > 0 && new_pod.is_ok() && still_denied,
        t.elapsed(),
    );

    // 9. Route controller leader failover.
    let t = Instant::now();
    let leader = lab
        .wait_for("a route-controller leader", CONVERGE, || lab.leader())
        .await;
    let obs;
    let ok;
    match leader {
        Ok(leader) => {
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
                rec.time(
                    "leader killed -> new leader",
                    killed.elapsed(),
                    "from SIGKILL of the leading replica until another replica holds the Lease (lab lease duration 4 s)",
                );
            }
            let joined = lab.add_node().await?;
            let routed = lab
                .wait_network_available(&joined, Duration::from_secs(30))
                .await;
            lab.start_route_controller(index).await?;
            ok = next.is_ok() && routed.is_ok();
            obs = format!(
                "leader {leader} killed; new leader {:?}; {joined} routed by it: {}",
                next.as_ref().ok(),
                routed.is_ok()
            );
            let hop = lab
                .vnet()
                .node(&joined)
                .map(|n| std::net::IpAddr::V4(n.ipv4));
            lab.remove_node(&joined).await?;
            // Leave the route table as the report will show it.
            let _ = lab
                .wait_for("the joined node's route to go", CONVERGE, || async {
                    (!lab.vnet().routes().iter().any(|r| Some(r.next_hop) == hop)).then_some(())
                })
                .await;
        }
        Err(e) => {
            ok = false;
            obs = e.to_string();
        }
    }
    rec.push(
        "route-controller leader failover",
        "when the leader dies the other replica takes the lease and routes a joining node",
        obs,
        ok,
        t.elapsed(),
    );
    Ok(())
}

/// The final report: nodes, routes, pod-to-pod reachability (TCP 80) and
/// timings.
pub async fn report(lab: &Lab, rec: &Record) -> String {
    let mut out = String::new();
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
    let _ = writeln!(out, "\n== route table (applied by the fabric)");
    for r in lab.vnet().routes() {
        let _ = writeln!(out, "{:<40} {:<20} -> {}", r.name, r.prefix, r.next_hop);
    }
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
    out
}
