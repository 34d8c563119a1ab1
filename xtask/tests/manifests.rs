//! The manifests under deploy/: every object parses into its k8s-openapi type
//! without losing a field, the base renders the same with `cargo xtask deploy
//! --dry-run` as with `kubectl kustomize`, and the workloads have what the
//! stack needs (replicas, probes, capabilities, host paths, tolerations...).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn base() -> PathBuf {
    root().join("deploy/base")
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Every manifest file of the base, with its objects.
fn files() -> Vec<(PathBuf, Vec<Value>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(base()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, docs(&text)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn objects() -> Vec<Value> {
    files().into_iter().flat_map(|(_, o)| o).collect()
}

/// Paths present in `original` that the typed round trip dropped or changed.
fn lost(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => lost(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                lost(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn typed_round_trip(obj: &Value) -> Result<Value, String> {
    match (
        obj["apiVersion"].as_str().unwrap_or(""),
        obj["kind"].as_str().unwrap_or(""),
    ) {
        ("v1", "Namespace") => round_trip::<Namespace>(obj),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(obj),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(obj)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(obj),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(obj),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(obj),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(obj),
        (v, k) => Err(format!("no typed check for {v} {k}; add it to this test")),
    }
}

#[test]
fn every_object_parses_into_its_type_without_losing_a_field() {
    let mut problems = Vec::new();
    for (path, objs) in files() {
        assert!(!objs.is_empty(), "{} holds no object", path.display());
        for obj in objs {
            let what = format!("{} {}", path.display(), obj["metadata"]["name"]);
            match typed_round_trip(&obj) {
                Ok(back) => {
                    let mut out = Vec::new();
                    lost(&obj, &back, "", &mut out);
                    for l in out {
                        problems.push(format!("{what}: unknown or mistyped field {l}"));
                    }
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_typed_check_catches_an_unknown_field() {
    // The check above must be able to fail: a misspelt field is dropped by
    // the typed round trip and reported.
    let obj: Value = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [], "hostNetwrok": true}}},
    });
    let back = typed_round_trip(&obj).unwrap();
    let mut out = Vec::new();
    lost(&obj, &back, "", &mut out);
    assert_eq!(out, [".spec.template.spec.hostNetwrok"]);
}

#[test]
fn the_kustomization_lists_every_manifest_file_once() {
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(base().join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = files()
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
    // Namespace first: everything else lives in it.
    assert_eq!(k["resources"][0], "namespace.yaml");
}

#[test]
fn image_tags_follow_the_workspace_version() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = manifest
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.trim_start().starts_with("version")))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_string();
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(base().join("kustomization.yaml")).unwrap())
            .unwrap();
    let images = k["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for image in images {
        assert_eq!(image["newTag"], Value::String(version.clone()), "{image}");
    }
}

fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objs: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    objs.into_iter().map(|o| (key(&o), o)).collect()
}

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run xtask")
}

#[test]
fn dry_run_renders_what_kubectl_kustomize_renders() {
    let ours = xtask(&["deploy", "--dry-run", "--image-tag", "0.1.0"]);
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let theirs = Command::new("kubectl")
        .arg("kustomize")
        .arg(base())
        .output()
        .expect("kubectl is installed (cargo xtask setup)");
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    let ours = by_key(docs(&String::from_utf8(ours.stdout).unwrap()));
    let theirs = by_key(docs(&String::from_utf8(theirs.stdout).unwrap()));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (k, o) in &ours {
        assert_eq!(o, &theirs[k], "{k:?} differs");
    }
}

#[test]
fn dry_run_uses_the_registry_and_tag_given() {
    let out = xtask(&[
        "deploy",
        "--dry-run",
        "--image-registry",
        "127.0.0.1:5000/lab",
        "--image-tag",
        "9.9.9",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = by_key(docs(&String::from_utf8(out.stdout).unwrap()));
    let images = |kind: &str, name: &str| -> Vec<String> {
        let o = &objs[&(
            kind.to_string(),
            "underlay-system".to_string(),
            name.to_string(),
        )];
        let spec = &o["spec"]["template"]["spec"];
        ["initContainers", "containers"]
            .iter()
            .flat_map(|l| spec[l].as_array().cloned().unwrap_or_default())
            .map(|c| c["image"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        images("DaemonSet", "underlay-agent"),
        [
            "127.0.0.1:5000/lab/underlay-agent:9.9.9",
            "127.0.0.1:5000/lab/underlay-agent:9.9.9"
        ]
    );
    assert_eq!(
        images("Deployment", "underlay-route-controller"),
        ["127.0.0.1:5000/lab/underlay-route-controller:9.9.9"]
    );
}

fn typed<T: DeserializeOwned>(kind: &str, name: &str) -> T {
    let obj = objects()
        .into_iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(obj).unwrap()
}

fn config_map(name: &str) -> BTreeMap<String, String> {
    typed::<ConfigMap>("ConfigMap", name)
        .data
        .unwrap_or_default()
}

/// Common checks of both pod specs: the service account exists, every
/// container has probes (except init containers) and resource requests, the
/// config map it reads exists.
fn check_pod(spec: &PodSpec, service_account: &str, config: &str) {
    assert_eq!(spec.service_account_name.as_deref(), Some(service_account));
    let _: ServiceAccount = typed("ServiceAccount", service_account);
    assert_eq!(spec.host_network, Some(true));
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let res = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no resources", c.name));
        let req = res.requests.as_ref().unwrap();
        assert!(
            req.contains_key("cpu") && req.contains_key("memory"),
            "{}",
            c.name
        );
        assert!(
            res.limits.as_ref().unwrap().contains_key("memory"),
            "{}",
            c.name
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }
    for c in &spec.containers {
        assert!(
            c.liveness_probe.is_some() && c.readiness_probe.is_some(),
            "{} needs probes",
            c.name
        );
        let from = c.env_from.as_ref().unwrap();
        assert_eq!(from[0].config_map_ref.as_ref().unwrap().name, config);
        // The probes reach the health server the config map configures.
        let health = &config_map(config)["UNDERLAY_HEALTH_ADDR"];
        for probe in [&c.liveness_probe, &c.readiness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            let target = format!(
                "{}:{}",
                get.host.as_deref().unwrap_or(""),
                match &get.port {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) =>
                        p.to_string(),
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) =>
                        s.clone(),
                }
            );
            assert_eq!(&target, health, "{} probe", c.name);
        }
    }
}

#[test]
fn the_route_controller_runs_two_leader_elected_replicas_with_a_budget() {
    let d: Deployment = typed("Deployment", "underlay-route-controller");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    check_pod(
        &pod,
        "underlay-route-controller",
        "underlay-route-controller",
    );
    let settings = config_map("underlay-route-controller");
    assert_eq!(settings["UNDERLAY_LEADER_ELECT"], "true");
    assert!(
        pod.topology_spread_constraints
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    );
    let sc = pod.security_context.unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    // The azure.json Secret is mounted where --cloud-config points.
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "azure-config")
        .unwrap()
        .clone();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "azure-config")
        .unwrap();
    let secret = volume.secret.unwrap();
    let item = &secret.items.unwrap()[0];
    assert_eq!(
        settings["UNDERLAY_CLOUD_CONFIG"],
        format!("{}/{}", mount.mount_path, item.path)
    );
    assert_eq!(item.key, "azure.json");
    // Readable by the fsGroup, not by others.
    assert_eq!(secret.default_mode, Some(0o440));
    let pdb: PodDisruptionBudget = typed("PodDisruptionBudget", "underlay-route-controller");
    let pdb = pdb.spec.unwrap();
    assert_eq!(
        pdb.selector.unwrap().match_labels,
        spec.selector.match_labels
    );
    assert!(pdb.min_available.is_some() || pdb.max_unavailable.is_some());
}

#[test]
fn the_agent_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let ds: DaemonSet = typed("DaemonSet", "underlay-agent");
    let spec = ds.spec.unwrap();
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        update.rolling_update.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let pod = spec.template.spec.unwrap();
    check_pod(&pod, "underlay-agent", "underlay-agent");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // Tolerates every taint.
    let tolerations = pod.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none())
    );
    let agent = &pod.containers[0];
    let caps = agent
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
    );
    assert!(agent.env.as_ref().unwrap().iter().any(|e| {
        e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path
                == "spec.nodeName"
    }));
    // The init container installs the CNI plugin into the host's CNI dirs.
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let command = init.command.as_ref().unwrap();
    assert_eq!(&command[..2], ["/usr/local/bin/underlay-cni", "install"]);
    let host_paths: BTreeMap<String, String> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.clone(), h.path.clone()))
        })
        .collect();
    let mounted = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (host_paths[&m.name].clone(), m.mount_path.clone()))
            .collect()
    };
    let init_mounts = mounted(init);
    for (host, flag) in [
        ("/opt/cni/bin", "--bin-dir"),
        ("/etc/cni/net.d", "--conf-dir"),
    ] {
        let inside = &init_mounts[host];
        assert!(
            command.contains(&format!("{flag}={inside}")),
            "{flag} must point at {inside}"
        );
    }
    let agent_mounts = mounted(agent);
    let settings = config_map("underlay-agent");
    assert_eq!(
        agent_mounts["/var/lib/underlay"],
        settings["UNDERLAY_STATE_DIR"]
    );
    assert!(
        settings["UNDERLAY_SOCKET"].starts_with(&format!("{}/", agent_mounts["/run/underlay"]))
    );
    assert_eq!(agent_mounts["/run/xtables.lock"], "/run/xtables.lock");
}
