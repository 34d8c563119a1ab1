//! The kubectl workflows users run against a cluster, against the embedded
//! API server: `apply -f` of a `kind: List` (validated by kubectl against
//! `/openapi/v2`), of a multi-document file and of a directory, `apply -k`,
//! the `get -o yaml | apply -f -` round trip, `diff` (server-side dry run),
//! `explain` (OpenAPI v3) and `wait` for a condition and for deletion.

mod support;

use std::path::Path;
use std::time::Duration;

use support::kubectl::{Lab, apply, kubectl, kubectl_code, ok};

const LIST: &str = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: first}
  data: {a: b}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, labels: {app: web}}
  spec:
    replicas: 2
    selector: {matchLabels: {app: web}}
    strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 25%}}
    template:
      metadata: {labels: {app: web}}
      spec:
        containers:
        - name: web
          image: web:1
          ports: [{containerPort: 80}]
          resources: {limits: {cpu: 500m, memory: 64Mi}}
EXTRA
";

async fn missing(kc: &Path, what: &str) -> bool {
    let (success, _, err) = kubectl(kc, &["get", what], None).await;
    !success && err.contains("NotFound")
}

#[tokio::test]
async fn apply_of_a_list_validates_every_item_before_applying_any() {
    let Some(lab) = Lab::start("apply_of_a_list_validates_every_item_before_applying_any").await
    else {
        return;
    };
    let kc = lab.kc.clone();
    let bad_item = "- apiVersion: v1
  kind: ConfigMap
  metadata: {name: second}
  data: {c: d}
  bogus: true";
    let file = lab.dir.path().join("list.yaml");
    std::fs::write(&file, LIST.replace("EXTRA", bad_item)).unwrap();
    let (success, out, err) = kubectl(&kc, &["apply", "-f", file.to_str().unwrap()], None).await;
    assert!(!success, "a list with an unknown field applied: {out}");
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    // Validation happens before anything is sent: the valid items are not
    // applied either.
    assert!(missing(&kc, "configmap/first").await);
    assert!(missing(&kc, "deployment/web").await);

    let good_item = "- apiVersion: v1
  kind: ConfigMap
  metadata: {name: second}
  data: {c: d}";
    std::fs::write(&file, LIST.replace("EXTRA", good_item)).unwrap();
    let out = ok(&kc, &["apply", "-f", file.to_str().unwrap()], None).await;
    for want in [
        "configmap/first created",
        "deployment.apps/web created",
        "configmap/second created",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let out = ok(&kc, &["apply", "-f", file.to_str().unwrap()], None).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

#[tokio::test]
async fn unknown_fields_of_custom_resources_are_refused_alone_and_in_a_list() {
    let Some(lab) =
        Lab::start("unknown_fields_of_custom_resources_are_refused_alone_and_in_a_list").await
    else {
        return;
    };
    let kc = lab.kc.clone();
    apply(&kc, CRD).await;
    // Alone: the server checks (kubectl asks for strict field validation).
    let alone = widget("w1", "{size: 1, colour: red}");
    let (success, _, err) = kubectl(&kc, &["apply", "-f", "-"], Some(&alone)).await;
    assert!(
        !success && err.contains("unknown field \"spec.colour\""),
        "{err}"
    );
    assert!(missing(&kc, "widget/w1").await);
    // In a List: kubectl checks against /openapi/v2 before sending anything.
    let list = |second: &str| {
        format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}",
            widget("w1", "{size: 1, extra: {any: thing}}").replace('\n', "\n  "),
            widget("w2", second).replace('\n', "\n  "),
        )
    };
    let (success, _, err) = kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(&list("{size: 2, colour: red}")),
    )
    .await;
    assert!(
        !success && err.contains("unknown field \"colour\""),
        "{err}"
    );
    assert!(missing(&kc, "widget/w1").await);
    let out = apply(&kc, &list("{size: 2}")).await;
    assert!(
        out.contains("widget.example.com/w1 created")
            && out.contains("widget.example.com/w2 created"),
        "{out}"
    );
}

#[tokio::test]
async fn apply_of_a_multi_document_file_and_of_a_directory() {
    let Some(lab) = Lab::start("apply_of_a_multi_document_file_and_of_a_directory").await else {
        return;
    };
    let kc = lab.kc.clone();
    let multi = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {mode: fast}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: runner, namespace: shop}
";
    let file = lab.dir.path().join("multi.yaml");
    std::fs::write(&file, multi).unwrap();
    let out = ok(&kc, &["apply", "-f", file.to_str().unwrap()], None).await;
    for want in [
        "namespace/shop created",
        "configmap/settings created",
        "serviceaccount/runner created",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }

    let manifests = lab.dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("a.yaml"), multi.replace("fast", "slow")).unwrap();
    std::fs::write(
        manifests.join("b.json"),
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": "shop"}, "stringData": {"t": "x"}}"#,
    )
    .unwrap();
    std::fs::write(manifests.join("notes.txt"), "not a manifest").unwrap();
    let out = ok(&kc, &["apply", "-f", manifests.to_str().unwrap()], None).await;
    for want in [
        "namespace/shop unchanged",
        "configmap/settings configured",
        "serviceaccount/runner unchanged",
        "secret/token created",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let mode = ok(
        &kc,
        &[
            "-n",
            "shop",
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.data.mode}",
        ],
        None,
    )
    .await;
    assert_eq!(mode, "slow");
}

#[tokio::test]
async fn apply_of_a_kustomization() {
    let Some(lab) = Lab::start("apply_of_a_kustomization").await else {
        return;
    };
    let kc = lab.kc.clone();
    let base = lab.dir.path().join("app");
    std::fs::create_dir(&base).unwrap();
    let files = [
        (
            "kustomization.yaml",
            "namespace: kz
labels:
- pairs: {team: net}
  includeSelectors: false
resources: [namespace.yaml, role.yaml, binding.yaml]
configMapGenerator:
- name: settings
  literals: [mode=fast]
",
        ),
        (
            "namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: kz}\n",
        ),
        (
            "binding.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: default, namespace: kz}]
",
        ),
        (
            "role.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules: [{apiGroups: [\"\"], resources: [configmaps], verbs: [get]}]
",
        ),
    ];
    for (name, text) in files {
        std::fs::write(base.join(name), text).unwrap();
    }
    let out = ok(&kc, &["apply", "-k", base.to_str().unwrap()], None).await;
    assert!(out.contains("namespace/kz created"), "{out}");
    assert!(
        out.contains("role.rbac.authorization.k8s.io/reader created"),
        "{out}"
    );
    // The generated ConfigMap's name carries a hash of its contents.
    let names = ok(
        &kc,
        &["-n", "kz", "get", "cm", "-l", "team=net", "-o", "name"],
        None,
    )
    .await;
    assert!(names.trim().starts_with("configmap/settings-"), "{names}");
    let out = ok(&kc, &["apply", "-k", base.to_str().unwrap()], None).await;
    // A second apply of the same kustomization changes nothing.
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{out}");
}

#[tokio::test]
async fn get_as_yaml_applies_back_without_changing_specs() {
    let Some(lab) = Lab::start("get_as_yaml_applies_back_without_changing_specs").await else {
        return;
    };
    let kc = lab.kc.clone();
    apply(&kc, &LIST.replace("EXTRA", "")).await;
    ok(
        &kc,
        &["create", "configmap", "made", "--from-literal=x=y"],
        None,
    )
    .await;
    let yaml = ok(&kc, &["get", "cm,deploy", "-o", "yaml"], None).await;
    assert!(
        yaml.contains("kind: List") && yaml.contains("status:"),
        "{yaml}"
    );
    let spec = "jsonpath={.metadata.generation} {.spec.template.spec.containers[0].image}";
    let before = ok(&kc, &["get", "deploy", "web", "-o", spec], None).await;
    // As on kube-apiserver every object is configured: the last-applied
    // annotation now records the whole object as read.
    let out = apply(&kc, &yaml).await;
    for want in [
        "deployment.apps/web configured",
        "configmap/first configured",
        "configmap/made configured",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    let after = ok(&kc, &["get", "deploy", "web", "-o", spec], None).await;
    assert_eq!(
        before, after,
        "the round trip changed the deployment's spec"
    );
    let data = ok(&kc, &["get", "cm", "made", "-o", "jsonpath={.data}"], None).await;
    assert_eq!(data, r#"{"x":"y"}"#);
    // And what it wrote reads back and applies again.
    let yaml = ok(&kc, &["get", "cm,deploy", "-o", "yaml"], None).await;
    apply(&kc, &yaml).await;
}

const CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: MODE}
";

#[tokio::test]
async fn diff_shows_changes_with_exit_1_and_none_with_exit_0_and_stores_nothing() {
    let Some(lab) =
        Lab::start("diff_shows_changes_with_exit_1_and_none_with_exit_0_and_stores_nothing").await
    else {
        return;
    };
    let kc = lab.kc.clone();
    let manifest = |mode: &str| CONFIG.replace("MODE", mode);

    // A new object: all of it is a difference, and it is not created.
    let (code, out, err) = kubectl_code(&kc, &["diff", "-f", "-"], Some(&manifest("fast"))).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("+  mode: fast"), "{out}");
    assert!(missing(&kc, "configmap/settings").await);

    apply(&kc, &manifest("fast")).await;
    let rv = lab.server.resource_version();
    let (code, out, err) = kubectl_code(&kc, &["diff", "-f", "-"], Some(&manifest("fast"))).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.is_empty(), "{out}");

    let (code, out, err) = kubectl_code(&kc, &["diff", "-f", "-"], Some(&manifest("slow"))).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("-  mode: fast") && out.contains("+  mode: slow"),
        "{out}"
    );
    let (code, out, err) = kubectl_code(
        &kc,
        &["diff", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&manifest("slow")),
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("+  mode: slow"), "{out}");
    assert_eq!(
        lab.server.resource_version(),
        rv,
        "a dry run stored something"
    );
    let mode = ok(
        &kc,
        &["get", "cm", "settings", "-o", "jsonpath={.data.mode}"],
        None,
    )
    .await;
    assert_eq!(mode, "fast");

    // A manifest the server rejects is an error, not a difference.
    let (code, out, err) = kubectl_code(
        &kc,
        &["diff", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n"),
    )
    .await;
    assert!(code.is_some_and(|c| c > 1), "{code:?} {out}{err}");
    assert!(err.contains("Invalid"), "{err}");
}

#[tokio::test]
async fn explain_describes_kinds_and_fields() {
    let Some(lab) = Lab::start("explain_describes_kinds_and_fields").await else {
        return;
    };
    let kc = lab.kc.clone();
    let out = ok(&kc, &["explain", "configmap"], None).await;
    assert!(out.contains("KIND:") && out.contains("ConfigMap"), "{out}");
    assert!(
        out.contains("binaryData") && out.contains("immutable"),
        "{out}"
    );
    let out = ok(
        &kc,
        &["explain", "deployment.spec.template.spec.containers.ports"],
        None,
    )
    .await;
    assert!(
        out.contains("containerPort") && out.contains("<integer>"),
        "{out}"
    );
    let out = ok(
        &kc,
        &["explain", "networkpolicies.spec", "--recursive"],
        None,
    )
    .await;
    assert!(
        out.contains("podSelector") && out.contains("ipBlock"),
        "{out}"
    );
    let (success, _, err) = kubectl(&kc, &["explain", "configmap.nosuchfield"], None).await;
    assert!(!success && err.contains("nosuchfield"), "{err}");
}

/// `kubectl wait` has not returned half a second after it started.
async fn still_waiting<T: std::fmt::Debug>(waiter: &mut tokio::task::JoinHandle<T>, before: &str) {
    let early = tokio::time::timeout(Duration::from_millis(500), waiter).await;
    assert!(
        early.is_err(),
        "kubectl wait returned before {before}: {early:?}"
    );
}

#[tokio::test]
async fn wait_for_a_condition_and_for_deletion() {
    let Some(lab) = Lab::start("wait_for_a_condition_and_for_deletion").await else {
        return;
    };
    let kc = lab.kc.clone();
    apply(&kc, &LIST.replace("EXTRA", "")).await;

    let waiter = {
        let kc = kc.clone();
        tokio::spawn(async move {
            kubectl(
                &kc,
                &[
                    "wait",
                    "--for=condition=Available",
                    "deploy/web",
                    "--timeout=30s",
                ],
                None,
            )
            .await
        })
    };
    let mut waiter = waiter;
    still_waiting(&mut waiter, "the condition was set").await;
    ok(
        &kc,
        &[
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status": {"conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}}"#,
        ],
        None,
    )
    .await;
    let (success, out, err) = waiter.await.unwrap();
    assert!(success, "{out}{err}");
    assert!(out.contains("deployment.apps/web condition met"), "{out}");

    // A condition that does not hold times out with an error.
    let (success, _, err) = kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Progressing",
            "deploy/web",
            "--timeout=1s",
        ],
        None,
    )
    .await;
    assert!(!success && err.contains("timed out"), "{err}");

    let waiter = {
        let kc = kc.clone();
        tokio::spawn(async move {
            kubectl(
                &kc,
                &["wait", "--for=delete", "configmap/first", "--timeout=30s"],
                None,
            )
            .await
        })
    };
    let mut waiter = waiter;
    still_waiting(&mut waiter, "the delete").await;
    ok(&kc, &["delete", "configmap", "first"], None).await;
    let (success, out, err) = waiter.await.unwrap();
    assert!(success, "{out}{err}");
    assert!(out.contains("configmap/first condition met"), "{out}");
}
