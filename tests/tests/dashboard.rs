//! The Grafana dashboard in `deploy/grafana` asks only for metrics the
//! daemons expose: a lab's real agent and route controllers are scraped
//! over HTTP, and every metric name in every panel's query must be among
//! what they serve. Needs root.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;
use underlay_e2e::{CONVERGE, lab, root};
use underlay_lab::netns::Netns;
use underlay_lab::scenario;

/// GET /metrics from `addr` (in the current namespace).
fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The sample names an exposition serves, including those of families
/// with no sample yet (a counter `x` is queried as `x_total`, a histogram
/// as `x_bucket`, `x_sum` and `x_count`).
fn served(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Every `underlay_…` metric name a PromQL expression mentions.
fn queried(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("underlay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

fn route_controller_metrics_addr(log: &str) -> Option<String> {
    // The first "http listening" line is the metrics listener; the line
    // may be plain, coloured or JSON, so the address is found by its shape.
    let line = log.lines().find(|l| l.contains("http listening"))?;
    let at = line.find("127.0.0.1:")?;
    let port: String = line[at + 10..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_the_daemons_serve() {
    let Some(l) = lab(
        "every_dashboard_query_names_a_metric_the_daemons_serve",
        |_| {},
    )
    .await
    else {
        return;
    };
    // Some policy state, so the policy metrics carry samples.
    scenario::namespace(&l, "x").await.unwrap();
    for key in ["x/a", "x/b"] {
        scenario::pod(&l, key, Some("node-1"), json!({}))
            .await
            .unwrap();
        l.wait_pod_running(key, CONVERGE).await.unwrap();
    }
    scenario::policy(
        &l,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "deny", "namespace": "x"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    )
    .await
    .unwrap();

    // A denied packet, so the denied-packet counter has a series.
    let o = scenario::expect_reach(
        &l,
        "x/b",
        "x/a",
        80,
        underlay_lab::traffic::Protocol::Tcp,
        false,
        CONVERGE,
    )
    .await
    .unwrap();
    assert!(o.matched, "the deny never took effect");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A refused call, so the per-code error counter has a series (the
    // agent checks the addresses a trace names).
    let node = &l.nodes()[0];
    // starts: kubectl-underlay
    let refused = std::process::Command::new(underlay_e2e::binaries().join("kubectl-underlay"))
        .arg("--socket")
        .arg(l.agent_socket(&node.name))
        .args(["trace", "192.0.2.1", "not-an-address", "80"])
        .output()
        .expect("kubectl-underlay runs");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let agent = Netns::existing(&node.netns)
        .enter(|| scrape("127.0.0.1:9962"))
        .expect("enter node-1")
        .expect("scrape the agent");
    // Every route controller replica: only the leader writes routes and
    // allocates CIDRs, so only its families carry series.
    let mut have = served(&agent);
    let mut controller = String::new();
    for i in 0..3 {
        let log = std::fs::read_to_string(l.log_path(&format!("route-controller-{i}")))
            .unwrap_or_default();
        if let Some(addr) = route_controller_metrics_addr(&log) {
            controller.push_str(&scrape(&addr).expect("scrape a route controller"));
        }
    }
    have.extend(served(&controller));
    assert!(have.contains("underlay_agent_ready"), "{agent}");
    assert!(have.contains("underlay_policy_rules"), "{agent}");
    assert!(
        have.contains("underlay_route_controller_leader"),
        "{controller}"
    );

    let text = std::fs::read_to_string(root().join("deploy/grafana/underlay-dashboard.json"))
        .expect("the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut missing = Vec::new();
    let mut asked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for name in queried(expr) {
                asked += 1;
                if !have.contains(&name) {
                    missing.push(format!("{}: {name}", panel["title"]));
                }
            }
        }
    }
    l.down().await;
    assert!(asked > 20, "the dashboard asks for only {asked} metrics");
    assert!(
        missing.is_empty(),
        "panels query metrics no daemon serves:\n{}",
        missing.join("\n")
    );
}

#[test]
fn metric_names_are_read_from_expositions_and_queries() {
    let text = "# TYPE a_total counter\n# TYPE b counter\n# TYPE h histogram\n# TYPE g gauge\ng{x=\"1\"} 2\nb_total 3\n";
    let s = served(text);
    for n in ["b_total", "h_bucket", "h_sum", "h_count", "g"] {
        assert!(s.contains(n), "{n} in {s:?}");
    }
    assert_eq!(
        queried("sum(rate(underlay_a_total[5m])) / underlay_b"),
        ["underlay_a_total", "underlay_b"]
    );
    assert_eq!(
        route_controller_metrics_addr(
            "2026 INFO underlay_route_controller::http: http listening \u{1b}[3maddr\u{1b}[0m=127.0.0.1:4567\n"
        )
        .as_deref(),
        Some("127.0.0.1:4567")
    );
}
