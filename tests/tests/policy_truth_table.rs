//! NetworkPolicy truth tables enforced across nodes: every client pod sits
//! on a different node from the server it probes, so each row crosses the
//! fabric and the destination node's policy. Needs root.

use serde_json::{Value, json};
use underlay_e2e::{CONVERGE, lab};
use underlay_lab::scenario;
use underlay_lab::traffic::Protocol::{self, Sctp, Tcp, Udp};

struct Case {
    name: &'static str,
    policies: Vec<Value>,
    /// (from, to, port, protocol, connects)
    rows: Vec<(&'static str, &'static str, u16, Protocol, bool)>,
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn ns_sel(name: &str) -> Value {
    json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}})
}

fn cases(node1_cidr: &str) -> Vec<Case> {
    vec![
        Case {
            name: "no policy: everything connects",
            policies: vec![],
            rows: vec![
                ("x/a", "y/b", 80, Tcp, true),
                ("x/a", "y/b", 53, Udp, true),
                ("z/c", "y/b", 9000, Sctp, true),
            ],
        },
        Case {
            name: "default deny ingress in y",
            policies: vec![np(
                "y",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            rows: vec![
                ("x/a", "y/b", 80, Tcp, false),
                ("x/a", "y/b", 53, Udp, false),
                ("x/a", "y/b", 9000, Sctp, false),
                ("y/b", "x/a", 80, Tcp, true),
            ],
        },
        Case {
            name: "allow namespace x on TCP 80 only",
            policies: vec![np(
                "y",
                "allow-x",
                json!({"podSelector": {"matchLabels": {"app": "b"}},
                "ingress": [{"from": [ns_sel("x")], "ports": [{"protocol": "TCP", "port": 80}]}]}),
            )],
            rows: vec![
                ("x/a", "y/b", 80, Tcp, true),
                ("x/a", "y/b", 53, Udp, false),
                ("z/c", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "allow pods of the same namespace (pod selector)",
            policies: vec![np(
                "y",
                "same-ns",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            rows: vec![
                ("y/b2", "y/b", 80, Tcp, true),
                ("x/a", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "allow an ipBlock (node-1's pod CIDR)",
            policies: vec![np(
                "y",
                "ipblock",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": node1_cidr}}]}]}),
            )],
            rows: vec![
                ("x/a", "y/b", 80, Tcp, true),
                ("z/c", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "allow SCTP and UDP ports from any source",
            policies: vec![np(
                "y",
                "ports",
                json!({"podSelector": {}, "ingress": [{"ports": [
                {"protocol": "SCTP", "port": 9000}, {"protocol": "UDP", "port": 53}]}]}),
            )],
            rows: vec![
                ("z/c", "y/b", 9000, Sctp, true),
                ("z/c", "y/b", 53, Udp, true),
                ("z/c", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "default deny egress in x; replies to inbound connections still flow",
            policies: vec![np(
                "x",
                "deny-egress",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            rows: vec![
                ("x/a", "z/c", 80, Tcp, false),
                ("x/a", "y/b", 53, Udp, false),
                ("z/c", "x/a", 80, Tcp, true),
            ],
        },
        Case {
            name: "egress allowed to namespace z on UDP 53",
            policies: vec![np(
                "x",
                "egress-z-dns",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [ns_sel("z")], "ports": [{"protocol": "UDP", "port": 53}]}]}),
            )],
            rows: vec![
                ("x/a", "z/c", 53, Udp, true),
                ("x/a", "z/c", 80, Tcp, false),
                ("x/a", "y/b", 53, Udp, false),
            ],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_truth_tables_hold_across_nodes() {
    let Some(l) = lab("policy_truth_tables_hold_across_nodes", |_| {}).await else {
        return;
    };
    for (key, node) in [
        ("x/a", "node-1"),
        ("y/b", "node-2"),
        ("y/b2", "node-1"),
        ("z/c", "node-3"),
    ] {
        scenario::namespace(&l, key.split('/').next().unwrap())
            .await
            .unwrap();
        scenario::pod(&l, key, Some(node), json!({})).await.unwrap();
    }
    for key in ["x/a", "y/b", "y/b2", "z/c"] {
        l.wait_pod_running(key, CONVERGE).await.unwrap();
    }
    let node1 = l.node_object("node-1").await.unwrap().unwrap();
    let cidr = node1
        .spec
        .and_then(|s| s.pod_cidr)
        .expect("node-1 has a pod CIDR");
    let mut failures = Vec::new();
    for case in cases(&cidr) {
        let mut applied = Vec::new();
        for p in &case.policies {
            scenario::policy(&l, p.clone()).await.unwrap();
            applied.push((
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        for (from, to, port, proto, want) in &case.rows {
            let o = scenario::expect_reach(&l, from, to, *port, *proto, *want, CONVERGE)
                .await
                .unwrap();
            if !o.matched {
                failures.push(format!(
                    "[{}] {from} -> {to} {port}/{proto}: want connected={want}, got {}",
                    case.name, o.outcome
                ));
            }
        }
        for (ns, name) in applied {
            scenario::delete_policy(&l, &ns, &name).await.unwrap();
        }
        // Back to no policy before the next case, so that a lingering deny
        // cannot pass the next case's "denied" rows.
        for (from, to) in [("x/a", "y/b"), ("x/a", "z/c")] {
            let o = scenario::expect_reach(&l, from, to, 80, Tcp, true, CONVERGE)
                .await
                .unwrap();
            assert!(
                o.matched,
                "[{}] policies removed but {from} -> {to} still {}",
                case.name, o.outcome
            );
        }
    }
    l.down().await;
    assert!(
        failures.is_empty(),
        "policy truth table rows failed:\n{}",
        failures.join("\n")
    );
}
