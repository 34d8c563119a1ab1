//! The operators' tool (`kubectl-underlay`, the binary the agent image
//! ships) against a lab's real agents over their sockets, and the cluster
//! view against the lab's API server. Needs root.

use serde_json::{Value, json};
use std::process::Command;
use underlay_e2e::{CONVERGE, binaries, lab};
use underlay_lab::lab::Lab;
use underlay_lab::scenario;

/// Runs the tool; returns (exit code, stdout as JSON).
fn tool(l: &Lab, args: &[&str]) -> (i32, Value) {
    // starts: kubectl-underlay
    let out = Command::new(binaries().join("kubectl-underlay"))
        .env("KUBECONFIG", l.kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl-underlay runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "not JSON: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_reports_each_agent_and_the_cluster() {
    let Some(l) = lab("the_tool_reports_each_agent_and_the_cluster", |_| {}).await else {
        return;
    };
    for (key, node) in [("x/a", "node-1"), ("x/b", "node-1"), ("y/c", "node-2")] {
        scenario::namespace(&l, key.split('/').next().unwrap())
            .await
            .unwrap();
        scenario::pod(&l, key, Some(node), json!({})).await.unwrap();
    }
    for key in ["x/a", "x/b", "y/c"] {
        l.wait_pod_running(key, CONVERGE).await.unwrap();
    }
    scenario::policy(
        &l,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "a-in", "namespace": "x"},
               "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"]}}),
    )
    .await
    .unwrap();
    scenario::cluster_policy(
        &l,
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
               "metadata": {"name": "guard"},
               "spec": {"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                        "egress": [{"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}]}}),
    )
    .await
    .unwrap();
    // Wait until the policies are in force (x/b -> x/a denied).
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
    assert!(o.matched, "the NetworkPolicy never took effect");

    let sock = l.agent_socket("node-1");
    let sock = sock.to_str().unwrap();
    let (code, st) = tool(&l, &["--socket", sock, "-o", "json", "status"]);
    assert_eq!(code, 0);
    assert_eq!(st["node"], "node-1");
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["policy"]["policies"], 1, "{st}");
    assert_eq!(st["policy"]["clusterPolicies"], 1, "{st}");
    assert!(st["pools"][0]["allocated"].as_u64() >= Some(2), "{st}");

    let (code, eps) = tool(&l, &["--socket", sock, "-o", "json", "endpoints"]);
    assert_eq!(code, 0);
    let ep = |name: &str| {
        eps["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {name}: {eps}"))
    };
    let a = ep("a");
    assert_eq!(a["namespace"], "x");
    assert!(a["hostInterface"].as_str().unwrap().starts_with("udl"));
    assert_eq!(a["ingress"]["isolated"], true);
    assert_eq!(a["ingress"]["policies"], json!(["networkpolicy/x/a-in"]));
    assert_eq!(
        a["egress"]["policies"],
        json!(["clusternetworkpolicy/guard (Admin)"])
    );
    let b = ep("b");
    assert_eq!(b["ingress"]["isolated"], false, "{b}");

    // The cluster view: every node, its pod CIDR and its route state.
    let (code, view) = tool(&l, &["-o", "json", "status"]);
    assert_eq!(code, 0);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), l.nodes().len(), "{view}");
    for n in nodes {
        assert_eq!(n["networkUnavailable"], "False", "{n}");
        assert!(!n["podCIDRs"].as_array().unwrap().is_empty(), "{n}");
        assert_eq!(n["ready"], "True", "{n}");
    }
    // `lab trace` (the lab binary, as `cargo xtask lab trace` runs it):
    // the verdict from both ends' agents, with the policy that decided, and
    // the same exit codes as `lab probe`.
    // The supervisor of `lab up` writes the state file every tick; this
    // lab runs in the test, so write it now.
    l.save_state().unwrap();
    let dir = l.kubeconfig_path().parent().unwrap().to_path_buf();
    let lab_trace = |from: &str, to: &str| {
        // starts: underlay-lab
        let out = Command::new(binaries().join("underlay-lab"))
            .env("UNDERLAY_LAB_BIN_DIR", binaries())
            .arg("trace")
            .arg("--dir")
            .arg(&dir)
            .args([from, to, "80"])
            .output()
            .expect("underlay-lab runs");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = lab_trace("x/b", "x/a");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("networkpolicy/x/a-in"), "{text}");
    let (code, text) = lab_trace("y/c", "x/b");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("node-2") && text.contains("node-1"),
        "both ends' agents: {text}"
    );
    // Through the tool directly: model and kernel agree, the kernel's
    // rules are listed.
    let (ya, xa) = (
        l.pods().into_iter().find(|p| p.key == "x/b").unwrap().ips[0],
        l.pods().into_iter().find(|p| p.key == "x/a").unwrap().ips[0],
    );
    let (code, t) = tool(
        &l,
        &[
            "--socket",
            sock,
            "-o",
            "json",
            "trace",
            &ya.to_string(),
            &xa.to_string(),
            "80/tcp",
        ],
    );
    assert_eq!(code, 1, "{t}");
    assert_eq!(t["agree"], true, "{t}");
    let ingress = &t["directions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(ingress["direction"], "ingress", "{t}");
    assert!(
        !ingress["kernelRules"].as_array().unwrap().is_empty(),
        "{t}"
    );

    // `lab denials`: every node's records as JSON lines; the probe
    // x/b -> x/a denied above is one of node-1's, naming the policy.
    // starts: underlay-lab
    let out = Command::new(binaries().join("underlay-lab"))
        .env("UNDERLAY_LAB_BIN_DIR", binaries())
        .arg("denials")
        .arg("--dir")
        .arg(&dir)
        .output()
        .expect("underlay-lab runs");
    assert!(out.status.success(), "{out:?}");
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        records.iter().any(|r| r["node"] == "node-1"
            && r["pod"] == "x/a"
            && r["source"] == ya.to_string()
            && r["policy"]
                .as_str()
                .unwrap_or("")
                .contains("networkpolicy/x/a-in")
            && r["audit"] == false),
        "{records:?}"
    );

    // Asking a node's agent that is not there is a clear error (exit 2).
    // starts: kubectl-underlay
    let out = Command::new(binaries().join("kubectl-underlay"))
        .args(["--socket", "/nonexistent/agent.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the underlay agent"));
    l.down().await;
}
