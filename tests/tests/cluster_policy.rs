//! ClusterNetworkPolicy across nodes: each case is written as YAML and
//! applied with `kubectl apply`, as an administrator would, and every row
//! probes from a pod on one node to a pod on another, so it crosses the
//! fabric and both nodes' agents. The policy's `Accepted` condition is
//! read back with kubectl too. Needs root.

use std::process::Stdio;
use underlay_e2e::{CONVERGE, lab};
use underlay_lab::lab::Lab;
use underlay_lab::scenario;
use underlay_lab::traffic::Protocol::{self, Sctp, Tcp, Udp};

struct Case {
    name: &'static str,
    /// YAML documents for `kubectl apply -f -`.
    manifests: String,
    /// (from, to, port, protocol, connects)
    rows: Vec<(&'static str, &'static str, u16, Protocol, bool)>,
}

/// Runs kubectl against the lab; returns (success, stdout + stderr). The
/// lab's API server runs in this test's runtime, so kubectl is awaited,
/// never waited for on a runtime thread.
async fn kubectl(l: &Lab, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    // starts: kubectl
    let mut child = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", l.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().await.expect("kubectl finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cnp(name: &str, tier: &str, priority: u32, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: {name}
spec:
  tier: {tier}
  priority: {priority}
{spec}---
"
    )
}

/// A namespace selector by name, quoted: YAML reads a bare `y` as a
/// boolean, and the API server refuses a boolean label value.
fn ns_is(name: &str) -> String {
    format!("{{matchLabels: {{kubernetes.io/metadata.name: \"{name}\"}}}}")
}

fn cases(node2_cidr: &str) -> Vec<Case> {
    vec![
        Case {
            name: "Admin Deny from namespace x to y on TCP 80",
            manifests: cnp(
                "deny-x-to-y-80",
                "Admin",
                10,
                &format!(
                    "  subject: {{namespaces: {y}}}
  ingress:
  - name: no-web-from-x
    action: Deny
    from: [{{namespaces: {x}}}]
    protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]
",
                    y = ns_is("y"),
                    x = ns_is("x")
                ),
            ),
            rows: vec![
                ("x/a", "y/b", 80, Tcp, false),
                ("x/a", "y/b", 53, Udp, true),
                ("z/c", "y/b", 80, Tcp, true),
            ],
        },
        Case {
            name: "Admin Accept overrides a NetworkPolicy deny-all",
            manifests: format!(
                "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-all, namespace: \"y\"}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
{}",
                cnp(
                    "accept-z",
                    "Admin",
                    10,
                    &format!(
                        "  subject: {{namespaces: {y}}}
  ingress:
  - action: Accept
    from: [{{namespaces: {z}}}]
",
                        y = ns_is("y"),
                        z = ns_is("z")
                    ),
                )
            ),
            rows: vec![
                ("z/c", "y/b", 80, Tcp, true),
                ("z/c", "y/b", 9000, Sctp, true),
                ("x/a", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "Admin Pass to a NetworkPolicy; the Baseline Deny covers what it does not select",
            manifests: format!(
                "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-x, namespace: \"y\"}}
spec:
  podSelector: {{matchLabels: {{app: b}}}}
  ingress: [{{from: [{{namespaceSelector: {x}}}]}}]
---
{}{}",
                cnp(
                    "pass-x",
                    "Admin",
                    10,
                    &format!(
                        "  subject: {{namespaces: {y}}}
  ingress:
  - {{action: Pass, from: [{{namespaces: {x}}}]}}
  - {{action: Deny, from: [{{namespaces: {{}}}}]}}
",
                        y = ns_is("y"),
                        x = ns_is("x")
                    ),
                ),
                cnp(
                    "baseline-deny",
                    "Baseline",
                    10,
                    &format!(
                        "  subject: {{namespaces: {y}}}
  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]
",
                        y = ns_is("y")
                    ),
                ),
                x = ns_is("x")
            ),
            rows: vec![
                ("x/a", "y/b", 80, Tcp, true),
                ("x/a", "y/b2", 80, Tcp, false),
                ("z/c", "y/b", 80, Tcp, false),
            ],
        },
        Case {
            name: "Admin egress Deny to a network (node-2's pod CIDR)",
            manifests: cnp(
                "no-node-2-pods",
                "Admin",
                5,
                &format!(
                    "  subject: {{pods: {{namespaceSelector: {x}, podSelector: {{}}}}}}
  egress:
  - action: Deny
    to: [{{networks: [{node2_cidr}]}}]
",
                    x = ns_is("x")
                ),
            ),
            rows: vec![
                ("x/a", "y/b", 80, Tcp, false),
                ("x/a", "z/c", 80, Tcp, true),
            ],
        },
        Case {
            name: "Baseline egress Deny of a UDP port range",
            manifests: cnp(
                "no-udp-50-60",
                "Baseline",
                500,
                &format!(
                    "  subject: {{namespaces: {z}}}
  egress:
  - action: Deny
    to: [{{namespaces: {{}}}}]
    protocols: [{{udp: {{destinationPort: {{range: {{start: 50, end: 60}}}}}}}}]
",
                    z = ns_is("z")
                ),
            ),
            rows: vec![
                ("z/c", "y/b", 53, Udp, false),
                ("z/c", "y/b", 80, Tcp, true),
            ],
        },
    ]
}

/// Waits until every applied cluster policy reports `Accepted=True`.
async fn wait_accepted(l: &Lab, manifests: &str) -> Result<(), String> {
    let names: Vec<&str> = manifests
        .split("---")
        .filter(|d| d.contains("kind: ClusterNetworkPolicy"))
        .filter_map(|d| {
            d.lines()
                .find_map(|line| line.trim().strip_prefix("name: "))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for name in names {
        loop {
            let (_, status) = kubectl(
                l,
                &[
                    "get",
                    "clusternetworkpolicy",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status}",
                ],
                None,
            )
            .await;
            if status.trim() == "True" {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{name}: Accepted is {status:?}"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_applied_with_kubectl_hold_across_nodes() {
    let Some(l) = lab(
        "cluster_network_policies_applied_with_kubectl_hold_across_nodes",
        |_| {},
    )
    .await
    else {
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
        scenario::pod(&l, key, Some(node), serde_json::json!({}))
            .await
            .unwrap();
    }
    for key in ["x/a", "y/b", "y/b2", "z/c"] {
        l.wait_pod_running(key, CONVERGE).await.unwrap();
    }
    let node2 = l.node_object("node-2").await.unwrap().unwrap();
    let cidr = node2
        .spec
        .and_then(|s| s.pod_cidr)
        .expect("node-2 has a pod CIDR");
    let mut failures = Vec::new();
    for case in cases(&cidr) {
        let started = std::time::Instant::now();
        let (ok, out) = kubectl(&l, &["apply", "-f", "-"], Some(&case.manifests)).await;
        assert!(ok, "[{}] kubectl apply failed: {out}", case.name);
        if let Err(e) = wait_accepted(&l, &case.manifests).await {
            failures.push(format!("[{}] status: {e}", case.name));
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
        let (ok, out) = kubectl(
            &l,
            &["delete", "-f", "-", "--wait=true"],
            Some(&case.manifests),
        )
        .await;
        assert!(ok, "[{}] kubectl delete failed: {out}", case.name);
        // Back to open before the next case, so a lingering deny cannot
        // pass the next case's denied rows.
        for (from, to) in [("x/a", "y/b"), ("x/a", "y/b2"), ("z/c", "y/b")] {
            let o = scenario::expect_reach(&l, from, to, 80, Tcp, true, CONVERGE)
                .await
                .unwrap();
            assert!(
                o.matched,
                "[{}] policies removed but {from} -> {to} still {}",
                case.name, o.outcome
            );
        }
        eprintln!("[{}] {:?}", case.name, started.elapsed());
    }
    l.down().await;
    assert!(
        failures.is_empty(),
        "cluster policy rows failed:\n{}",
        failures.join("\n")
    );
}
