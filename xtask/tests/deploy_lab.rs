//! `cargo xtask deploy` against the lab's embedded API server over HTTP, with
//! deploy/base exactly as shipped: apply (the ClusterNetworkPolicy CRD is
//! established and its kind served), re-apply (nothing changes, not even a
//! resourceVersion), upgrade to a new image tag (only the pod templates
//! change), wait for the rollout (timing out while no controller reports
//! progress, succeeding once one does) and delete (the kind is no longer
//! served).
//!
//! A cluster runs kube-controller-manager beside its API server; the lab
//! does not, so the test plays the deployment and daemon set controllers: it
//! watches the workloads and, for each generation it has not observed yet,
//! writes through `/status` what those controllers write once the new pods
//! are up.

mod common;
use common::root;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use underlay_api::cnp::ClusterNetworkPolicy;
use underlay_lab::apiserver::{ApiServer, Config};

const NAMESPACE: &str = "underlay-system";
/// The nodes the stand-in daemon set controller schedules agents on.
const NODES: i32 = 3;

fn deploy(kubeconfig: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("deploy")
        .arg("--kubeconfig")
        .arg(kubeconfig)
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

/// The objects of deploy/base as (apiVersion, kind, namespace, name), read
/// from the files the kustomization lists.
fn base_objects() -> Vec<(String, String, Option<String>, String)> {
    let base = root().join("deploy/base");
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for file in k["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(base.join(file.as_str().unwrap())).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            out.push((
                v["apiVersion"].as_str().unwrap().to_string(),
                v["kind"].as_str().unwrap().to_string(),
                v["metadata"]["namespace"].as_str().map(str::to_string),
                v["metadata"]["name"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Every object of the base as the server has it now, by `kind ns/name`.
async fn live(client: &Client) -> BTreeMap<String, Option<DynamicObject>> {
    let mut out = BTreeMap::new();
    for (api_version, kind, ns, name) in base_objects() {
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the lab serves {api_version} {kind}: {e}"));
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let what = match &ns {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        out.insert(what, api.get_opt(&name).await.unwrap());
    }
    out
}

fn resource_version(o: &Option<DynamicObject>) -> String {
    o.as_ref()
        .and_then(|o| o.metadata.resource_version.clone())
        .expect("the object exists")
}

/// The spec without the images of its pod template.
fn spec_without_images(o: &DynamicObject) -> Value {
    let mut spec = o.data["spec"].clone();
    for list in ["containers", "initContainers"] {
        for c in spec["template"]["spec"][list]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c.as_object_mut().unwrap().remove("image");
        }
    }
    spec
}

/// The CRD deploy/base carries is established, and a ClusterNetworkPolicy
/// is then created and read back with every field.
async fn cluster_network_policies_are_served(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("clusternetworkpolicies.policy.networking.k8s.io")
        .await
        .expect("deploy created the ClusterNetworkPolicy CRD");
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "{conditions:?}"
    );
    let policy: ClusterNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-ssh"},
        "spec": {"tier": "Admin", "priority": 3, "subject": {"namespaces": {}},
                 "ingress": [{"name": "ssh", "action": "Deny", "from": [{"namespaces": {}}],
                              "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]}]},
    }))
    .unwrap();
    let policies: Api<ClusterNetworkPolicy> = Api::all(client.clone());
    policies
        .create(&Default::default(), &policy)
        .await
        .expect("the lab accepts a ClusterNetworkPolicy once the CRD is deployed");
    let read = policies.get("deny-ssh").await.unwrap();
    assert_eq!(read.spec, policy.spec);
}

/// Deployment controller, as far as `/status` goes: once it has seen a
/// generation, every replica runs it and is available.
async fn deployment_controller(api: Api<Deployment>) {
    let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(d)) = stream.try_next().await {
        let generation = d.metadata.generation.unwrap_or(0);
        let seen = d.status.as_ref().and_then(|s| s.observed_generation);
        if seen == Some(generation) {
            continue;
        }
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": generation,
            "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }});
        api.patch_status(
            d.meta().name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .expect("write the deployment status");
    }
}

/// DaemonSet controller, as far as `/status` goes, on a cluster of [`NODES`].
async fn daemon_set_controller(api: Api<DaemonSet>) {
    let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    while let Ok(Some(ds)) = stream.try_next().await {
        let generation = ds.metadata.generation.unwrap_or(0);
        let seen = ds.status.as_ref().and_then(|s| s.observed_generation);
        if seen == Some(generation) {
            continue;
        }
        let status = json!({"status": {
            "observedGeneration": generation,
            "desiredNumberScheduled": NODES, "currentNumberScheduled": NODES,
            "updatedNumberScheduled": NODES, "numberReady": NODES,
            "numberAvailable": NODES, "numberMisscheduled": 0,
        }});
        api.patch_status(
            ds.meta().name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .expect("write the daemon set status");
    }
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
    let server = rt
        .block_on(ApiServer::start(Config {
            kubeconfig_out: Some(kubeconfig.clone()),
            ..Config::default()
        }))
        .unwrap();
    // The client's connection pool lives on the runtime.
    let _entered = rt.enter();
    let client = server.client().unwrap();
    let total = base_objects().len();

    // First apply: everything is created, owned by the deploy's field manager.
    let first = outcomes(&ok(&deploy(&kubeconfig, &["--no-wait"])));
    assert_eq!(first.len(), total, "{first:?}");
    assert!(first.iter().all(|(_, o)| o == "created"), "{first:?}");
    let created = rt.block_on(live(&client));
    for (what, obj) in &created {
        let obj = obj.as_ref().unwrap_or_else(|| panic!("{what} exists"));
        let managers = obj.metadata.managed_fields.clone().unwrap_or_default();
        assert!(
            managers.iter().any(|m| {
                m.manager.as_deref() == Some("underlay-deploy")
                    && m.operation.as_deref() == Some("Apply")
            }),
            "{what}: {managers:?}"
        );
    }
    let deployment = created["Deployment underlay-system/underlay-route-controller"]
        .clone()
        .unwrap();
    // Defaults as kube-apiserver sets them; the agent's rollout parameters as written.
    assert_eq!(deployment.metadata.generation, Some(1));
    assert_eq!(deployment.data["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(deployment.data["status"], json!({}));
    let daemon_set = created["DaemonSet underlay-system/underlay-agent"]
        .clone()
        .unwrap();
    assert_eq!(
        daemon_set.data["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert_eq!(daemon_set.data["status"]["numberReady"], 0);
    rt.block_on(cluster_network_policies_are_served(&client));

    // Re-apply: nothing changes, not even a resourceVersion.
    let again = outcomes(&ok(&deploy(&kubeconfig, &["--no-wait"])));
    assert_eq!(again.len(), total, "{again:?}");
    assert!(again.iter().all(|(_, o)| o == "unchanged"), "{again:?}");
    let reapplied = rt.block_on(live(&client));
    for (what, obj) in &reapplied {
        assert_eq!(
            resource_version(obj),
            resource_version(&created[what]),
            "{what}"
        );
    }

    // Upgrade: only the workloads change, and in them only the images of
    // the pod templates; their generation moves on, their status does not.
    let upgrade = outcomes(&ok(&deploy(
        &kubeconfig,
        &["--no-wait", "--image-tag", "0.2.0"],
    )));
    assert_eq!(upgrade.len(), total, "{upgrade:?}");
    let upgraded = rt.block_on(live(&client));
    for (what, outcome) in &upgrade {
        let workload = what.starts_with("Deployment ") || what.starts_with("DaemonSet ");
        assert_eq!(
            outcome,
            if workload { "configured" } else { "unchanged" },
            "{what}"
        );
        let (before, after) = (
            created[what].as_ref().unwrap(),
            upgraded[what].as_ref().unwrap(),
        );
        if workload {
            assert_eq!(
                spec_without_images(before),
                spec_without_images(after),
                "{what}"
            );
            assert_ne!(before.data["spec"], after.data["spec"], "{what}");
            assert_eq!(
                after.metadata.generation,
                before.metadata.generation.map(|g| g + 1),
                "{what}"
            );
            assert_eq!(before.data["status"], after.data["status"], "{what}");
        } else {
            assert_eq!(
                before.metadata.resource_version, after.metadata.resource_version,
                "{what}"
            );
        }
    }
    let deployment = upgraded["Deployment underlay-system/underlay-route-controller"]
        .clone()
        .unwrap();
    let daemon_set = upgraded["DaemonSet underlay-system/underlay-agent"]
        .clone()
        .unwrap();
    let pod = |o: &DynamicObject| o.data["spec"]["template"]["spec"].clone();
    let image =
        |spec: &serde_json::Value, list: &str| spec[list][0]["image"].as_str().unwrap().to_string();
    assert!(image(&pod(&deployment), "containers").ends_with("/underlay-route-controller:0.2.0"));
    assert!(image(&pod(&daemon_set), "containers").ends_with("/underlay-agent:0.2.0"));
    assert!(image(&pod(&daemon_set), "initContainers").ends_with("/underlay-agent:0.2.0"));

    // No controller reports progress: waiting times out and says on what.
    let stuck = deploy(&kubeconfig, &["--image-tag", "0.2.0", "--timeout", "1"]);
    assert!(!stuck.status.success());
    let err = String::from_utf8_lossy(&stuck.stderr);
    assert!(
        err.contains("did not finish")
            && err.contains("Deployment underlay-system/underlay-route-controller"),
        "{err}"
    );

    // The controllers run: they observe the new generations and report the
    // new pods ready, and the wait succeeds.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let controllers = [
        rt.spawn(deployment_controller(deployments.clone())),
        rt.spawn(daemon_set_controller(daemon_sets.clone())),
    ];
    let done = ok(&deploy(
        &kubeconfig,
        &["--image-tag", "0.2.0", "--timeout", "30"],
    ));
    assert!(done.contains("Deployment underlay-system/underlay-route-controller: rolled out, 2 of 2 replicas available"), "{done}");
    assert!(
        done.contains("DaemonSet underlay-system/underlay-agent: rolled out, 3 of 3 nodes ready"),
        "{done}"
    );
    // The status writes moved neither the generation nor the spec.
    let rolled = rt
        .block_on(deployments.get("underlay-route-controller"))
        .unwrap();
    assert_eq!(rolled.metadata.generation, deployment.metadata.generation);
    assert_eq!(
        rolled.status.unwrap().observed_generation,
        deployment.metadata.generation
    );
    for c in controllers {
        c.abort();
    }

    // Delete: everything goes, in reverse order; the cluster's own objects stay.
    let deleted = outcomes(&ok(&deploy(&kubeconfig, &["--delete"])));
    assert_eq!(deleted.len(), total);
    assert!(deleted.iter().all(|(_, o)| o == "deleted"), "{deleted:?}");
    let order: Vec<&str> = deleted
        .iter()
        .rev()
        .take(2)
        .map(|(w, _)| w.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "CustomResourceDefinition clusternetworkpolicies.policy.networking.k8s.io",
            "Namespace underlay-system"
        ]
    );
    let gone = rt.block_on(live(&client));
    assert!(gone.values().all(Option::is_none), "{gone:?}");
    let policies: Api<ClusterNetworkPolicy> = Api::all(client.clone());
    match rt.block_on(policies.list(&Default::default())) {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404, "{status:?}"),
        other => panic!("ClusterNetworkPolicies are still served: {other:?}"),
    }
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    let names: Vec<String> = rt
        .block_on(classes.list(&Default::default()))
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        names.contains(&"system-node-critical".to_string()),
        "{names:?}"
    );
    // Deleting again finds nothing to delete.
    let absent = outcomes(&ok(&deploy(&kubeconfig, &["--delete"])));
    assert!(
        absent.iter().all(|(_, o)| o == "already absent"),
        "{absent:?}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
