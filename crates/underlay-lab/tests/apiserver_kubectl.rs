//! The embedded API server through `kubectl`, run as a subprocess with the
//! kubeconfig the server writes: get, create, apply (client- and server-side),
//! label, patch, delete and get -w. Without kubectl each test fails when
//! kubectl is required (`UNDERLAY_REQUIRE_KUBECTL` or `CI`) and otherwise
//! reports itself skipped.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::kubectl::{Lab, apply, kubectl, ok, present_or_skip};

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{port: PORT}]
";

#[tokio::test]
async fn kubectl_create_apply_label_patch_delete() {
    let Some(lab) = Lab::start("kubectl_create_apply_label_patch_delete").await else {
        return;
    };
    let kc = lab.kc.clone();
    let out = ok(&kc, &["get", "namespaces"], None).await;
    assert!(
        out.contains("kube-system") && out.contains("Active"),
        "{out}"
    );

    ok(&kc, &["create", "namespace", "demo"], None).await;
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "create",
            "configmap",
            "c1",
            "--from-literal=a=b",
        ],
        None,
    )
    .await;
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "s1",
            "--from-literal=p=q",
        ],
        None,
    )
    .await;
    let out = ok(
        &kc,
        &[
            "-n",
            "demo",
            "get",
            "secret",
            "s1",
            "-o",
            "jsonpath={.data.p}",
        ],
        None,
    )
    .await;
    assert_eq!(out, "cQ==");

    // Client-side apply: create, then update by strategic merge patch.
    apply(&kc, &POLICY.replace("PORT", "80")).await;
    let out = apply(&kc, &POLICY.replace("PORT", "443")).await;
    assert!(out.contains("configured"), "{out}");
    let out = ok(
        &kc,
        &[
            "-n",
            "demo",
            "get",
            "netpol",
            "web",
            "-o",
            "jsonpath={.spec.ingress[0].ports[0].port} {.spec.policyTypes}",
        ],
        None,
    )
    .await;
    assert_eq!(out, "443 [\"Ingress\"]");
    // Re-applying the same manifest writes nothing.
    let rv = [
        "-n",
        "demo",
        "get",
        "netpol",
        "web",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ];
    let before = ok(&kc, &rv, None).await;
    apply(&kc, &POLICY.replace("PORT", "443")).await;
    assert_eq!(ok(&kc, &rv, None).await, before);

    // Invalid objects are refused with the server's message.
    let (success, _, err) = kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(
            &POLICY
                .replace("PORT", "443")
                .replace("10.0.0.0/8", "10.0.0.0/33"),
        ),
    )
    .await;
    assert!(!success && err.contains("ipBlock.cidr"), "{err}");

    ok(
        &kc,
        &["-n", "demo", "label", "configmap", "c1", "tier=front"],
        None,
    )
    .await;
    let out = ok(
        &kc,
        &[
            "-n",
            "demo",
            "get",
            "configmaps",
            "-l",
            "tier=front",
            "-o",
            "name",
        ],
        None,
    )
    .await;
    assert_eq!(out.trim(), "configmap/c1");
    // Every patch type kubectl sends.
    for (patch_type, patch) in [
        ("strategic", r#"{"data":{"s":"1"}}"#),
        ("merge", r#"{"data":{"m":"2"}}"#),
        ("json", r#"[{"op":"add","path":"/data/j","value":"3"}]"#),
    ] {
        let patch_type = format!("--type={patch_type}");
        let args = [
            "-n",
            "demo",
            "patch",
            "configmap",
            "c1",
            &patch_type,
            "-p",
            patch,
        ];
        ok(&kc, &args, None).await;
    }
    let out = ok(
        &kc,
        &[
            "-n",
            "demo",
            "get",
            "configmap",
            "c1",
            "-o",
            "jsonpath={.data}",
        ],
        None,
    )
    .await;
    assert_eq!(out, r#"{"a":"b","j":"3","m":"2","s":"1"}"#);

    // Server-side apply with a conflict between managers.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {role: ROLE}}\nspec: {podCIDR: 10.244.1.0/24}\n";
    ok(
        &kc,
        &["apply", "--server-side", "-f", "-"],
        Some(&node.replace("ROLE", "worker")),
    )
    .await;
    let (success, _, err) = kubectl(
        &kc,
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        Some(&node.replace("ROLE", "infra")),
    )
    .await;
    assert!(!success && err.contains("conflict"), "{err}");
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=other",
            "-f",
            "-",
        ],
        Some(&node.replace("ROLE", "infra")),
    )
    .await;
    let out = ok(
        &kc,
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.metadata.labels.role} {.spec.podCIDRs}",
        ],
        None,
    )
    .await;
    assert_eq!(out, "infra [\"10.244.1.0/24\"]");
    let (success, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "node",
            "node-1",
            "-p",
            r#"{"spec":{"podCIDR":"10.244.9.0/24","podCIDRs":["10.244.9.0/24"]}}"#,
        ],
        None,
    )
    .await;
    assert!(!success && err.contains("may not change podCIDR"), "{err}");
    let out = ok(
        &kc,
        &[
            "patch",
            "node",
            "node-1",
            "--subresource=status",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
        ],
        None,
    )
    .await;
    assert!(out.contains("patched"), "{out}");

    ok(&kc, &["-n", "demo", "delete", "configmap", "c1"], None).await;
    let (success, _, err) = kubectl(&kc, &["-n", "demo", "get", "configmap", "c1"], None).await;
    assert!(!success && err.contains("NotFound"), "{err}");
    ok(&kc, &["delete", "namespace", "demo"], None).await;
    let out = ok(&kc, &["get", "namespaces", "-o", "name"], None).await;
    assert!(!out.contains("demo"), "{out}");
}

#[tokio::test]
async fn kubectl_get_watch_sees_changes() {
    let Some(lab) = Lab::start("kubectl_get_watch_sees_changes").await else {
        return;
    };
    let kc = lab.kc.clone();
    let mut watch = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", &kc)
        .env("HOME", lab.dir.path())
        .args([
            "get",
            "configmaps",
            "-w",
            "-o",
            "name",
            "--request-timeout=0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // Keep creating until the watch has started and reports the object.
    let mut n = 0;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            n += 1;
            ok(&kc, &["create", "configmap", &format!("w{n}")], None).await;
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
            {
                return line;
            }
        }
    })
    .await
    .expect("kubectl get -w reports a configmap");
    assert!(seen.starts_with("configmap/w"), "{seen}");
    watch.kill().await.unwrap();
}

const WORKLOADS: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      priorityClassName: system-cluster-critical
      containers: [{name: web, image: web:IMAGE}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: agent:1}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
- apiGroups: [\"\"]
  resources: [pods]
  verbs: [get, list, watch]
";

#[tokio::test]
async fn kubectl_applies_and_lists_workloads_and_roles() {
    let Some(lab) = Lab::start("kubectl_applies_and_lists_workloads_and_roles").await else {
        return;
    };
    let kc = lab.kc.clone();
    let out = apply(&kc, &WORKLOADS.replace("IMAGE", "1")).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("daemonset.apps/agent created"), "{out}");
    assert!(
        out.contains("clusterrole.rbac.authorization.k8s.io/reader created"),
        "{out}"
    );
    // A client-side re-apply with a new image is a strategic merge patch
    // of the template.
    let out = apply(&kc, &WORKLOADS.replace("IMAGE", "2")).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("daemonset.apps/agent unchanged"), "{out}");
    let image = ok(
        &kc,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation} {.spec.template.spec.containers[*].image}",
        ],
        None,
    )
    .await;
    assert_eq!(image, "2 web:2");

    let out = ok(&kc, &["get", "deploy,ds,clusterrole", "-A"], None).await;
    for want in [
        "deployment.apps/web",
        "daemonset.apps/agent",
        "clusterrole.rbac.authorization.k8s.io/reader",
        "READY",
        "UP-TO-DATE",
        "NODE SELECTOR",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let out = ok(&kc, &["get", "priorityclasses"], None).await;
    assert!(
        out.contains("system-node-critical") && out.contains("2000001000"),
        "{out}"
    );
}

#[test]
fn missing_kubectl_fails_when_required_and_skips_otherwise() {
    let missing = "underlay-no-such-kubectl";
    assert!(!present_or_skip(missing, "probe", false));
    let required = std::panic::catch_unwind(|| present_or_skip(missing, "probe", true));
    let message = required.expect_err("a required, missing kubectl fails the test");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("UNDERLAY_REQUIRE_KUBECTL"), "{text}");
}
