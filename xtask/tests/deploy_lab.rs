//! `cargo xtask deploy` against the lab's embedded API server over HTTP:
//! apply, re-apply (nothing changes), upgrade to a new image tag, wait for
//! the rollout (timing out while no controller reports progress, succeeding
//! once the statuses say the rollout is done) and delete.
//!
//! The embedded server serves the core, networking, coordination and events
//! groups but not apps/v1, rbac.authorization.k8s.io/v1 or policy/v1, and (like
//! kube-apiserver) refuses CustomResourceDefinitions in those groups. The test
//! therefore deploys a copy of deploy/base whose workload, RBAC and budget
//! objects live in stand-in groups (`apps.underlay.test` ...) registered as
//! schema-less CRDs with a status subresource; everything else is the base as
//! shipped. With no kube-controller-manager or kubelet, the test writes the
//! workload statuses a controller would.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use underlay_lab::apiserver::{ApiServer, Config};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The API groups the lab does not serve, and their stand-ins.
const STAND_INS: &[(&str, &str)] = &[
    ("apps/v1", "apps.underlay.test/v1"),
    ("rbac.authorization.k8s.io/v1", "rbac.underlay.test/v1"),
    ("policy/v1", "policy.underlay.test/v1"),
];

/// A copy of deploy/base with the stand-in groups.
fn base_copy(dir: &Path) -> PathBuf {
    let out = dir.join("base");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(root().join("deploy/base")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (real, stand_in) in STAND_INS {
            text = text.replace(
                &format!("apiVersion: {real}\n"),
                &format!("apiVersion: {stand_in}\n"),
            );
        }
        std::fs::write(out.join(path.file_name().unwrap()), text).unwrap();
    }
    out
}

fn deploy(kubeconfig: &Path, base: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("deploy")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--manifests")
        .arg(base)
        .args(extra)
        .current_dir(root())
        .output()
        .expect("run xtask deploy")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "deploy failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kind ns/name: outcome` lines as (object, outcome).
fn outcomes(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.rsplit_once(": "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn crd(group: &str, kind: &str, plural: &str, namespaced: bool) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}},
            }],
        },
    }))
    .unwrap()
}

#[test]
fn deploy_applies_reapplies_upgrades_waits_and_deletes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("underlay-deploy-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let base = base_copy(&dir);
    let server = rt
        .block_on(ApiServer::start(Config {
            kubeconfig_out: Some(kubeconfig.clone()),
            ..Config::default()
        }))
        .unwrap();
    // The client's connection pool lives on the runtime.
    let _entered = rt.enter();
    let client = server.client().unwrap();

    rt.block_on(async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (group, kind, plural, namespaced) in [
            ("apps.underlay.test", "Deployment", "deployments", true),
            ("apps.underlay.test", "DaemonSet", "daemonsets", true),
            ("rbac.underlay.test", "ClusterRole", "clusterroles", false),
            (
                "rbac.underlay.test",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
            ),
            ("rbac.underlay.test", "Role", "roles", true),
            ("rbac.underlay.test", "RoleBinding", "rolebindings", true),
            (
                "policy.underlay.test",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
            ),
        ] {
            crds.create(
                &PostParams::default(),
                &crd(group, kind, plural, namespaced),
            )
            .await
            .unwrap_or_else(|e| panic!("register {kind}: {e}"));
        }
    });

    // First apply: everything is created.
    let first = outcomes(&ok(&deploy(&kubeconfig, &base, &["--no-wait"])));
    assert_eq!(first.len(), 14, "{first:?}");
    assert!(first.iter().all(|(_, o)| o == "created"), "{first:?}");

    // Re-apply: nothing changes.
    let again = outcomes(&ok(&deploy(&kubeconfig, &base, &["--no-wait"])));
    assert!(again.iter().all(|(_, o)| o == "unchanged"), "{again:?}");

    // Upgrade: only the workloads change, to the new tag.
    let upgrade = outcomes(&ok(&deploy(
        &kubeconfig,
        &base,
        &["--no-wait", "--image-tag", "0.2.0"],
    )));
    for (what, outcome) in &upgrade {
        let workload = what.starts_with("Deployment ") || what.starts_with("DaemonSet ");
        assert_eq!(
            outcome,
            if workload { "configured" } else { "unchanged" },
            "{what}"
        );
    }
    let workload = |kind: &str, plural: &str| {
        let gvk = GroupVersionKind::gvk("apps.underlay.test", "v1", kind);
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            "underlay-system",
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    };
    let deployments = workload("Deployment", "deployments");
    let daemon_sets = workload("DaemonSet", "daemonsets");
    let (deployment, daemon_set) = rt.block_on(async {
        (
            deployments.get("underlay-route-controller").await.unwrap(),
            daemon_sets.get("underlay-agent").await.unwrap(),
        )
    });
    let pod = |o: &DynamicObject| o.data["spec"]["template"]["spec"].clone();
    let image =
        |spec: &serde_json::Value, list: &str| spec[list][0]["image"].as_str().unwrap().to_string();
    assert!(image(&pod(&deployment), "containers").ends_with("/underlay-route-controller:0.2.0"));
    assert!(image(&pod(&daemon_set), "containers").ends_with("/underlay-agent:0.2.0"));
    assert!(image(&pod(&daemon_set), "initContainers").ends_with("/underlay-agent:0.2.0"));

    // Nobody reports progress: waiting times out and says on what.
    let stuck = deploy(
        &kubeconfig,
        &base,
        &["--image-tag", "0.2.0", "--timeout", "1"],
    );
    assert!(!stuck.status.success());
    let err = String::from_utf8_lossy(&stuck.stderr);
    assert!(
        err.contains("did not finish")
            && err.contains("Deployment underlay-system/underlay-route-controller"),
        "{err}"
    );

    // A controller reports the new pods ready: the wait succeeds.
    rt.block_on(async {
        let params = PatchParams::default();
        let d_gen = deployment.metadata.generation.unwrap_or(0);
        deployments
            .patch_status(
                "underlay-route-controller",
                &params,
                &Patch::Merge(json!({"status": {"observedGeneration": d_gen, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}})),
            )
            .await
            .unwrap();
        let ds_gen = daemon_set.metadata.generation.unwrap_or(0);
        daemon_sets
            .patch_status(
                "underlay-agent",
                &params,
                &Patch::Merge(json!({"status": {"observedGeneration": ds_gen, "desiredNumberScheduled": 3, "currentNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 3, "numberMisscheduled": 0}})),
            )
            .await
            .unwrap();
    });
    let done = ok(&deploy(
        &kubeconfig,
        &base,
        &["--image-tag", "0.2.0", "--timeout", "10"],
    ));
    assert!(done.contains("Deployment underlay-system/underlay-route-controller: rolled out, 2 of 2 replicas available"), "{done}");
    assert!(
        done.contains("DaemonSet underlay-system/underlay-agent: rolled out, 3 of 3 nodes ready"),
        "{done}"
    );

    // Delete: everything goes, in reverse order.
    let deleted = outcomes(&ok(&deploy(&kubeconfig, &base, &["--delete"])));
    assert_eq!(deleted.len(), 14);
    assert!(deleted.iter().all(|(_, o)| o == "deleted"), "{deleted:?}");
    assert_eq!(deleted.last().unwrap().0, "Namespace underlay-system");
    let gone = rt.block_on(daemon_sets.get_opt("underlay-agent"));
    assert!(matches!(gone, Ok(None)), "{gone:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
