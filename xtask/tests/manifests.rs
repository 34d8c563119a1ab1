//! The manifests under deploy/: every object parses into its k8s-openapi type
//! without losing a field, the base renders the same with `cargo xtask deploy
//! --dry-run` as with `kubectl kustomize`, and the workloads have what the
//! stack needs (replicas, probes, capabilities, host paths, tolerations...).

mod common;
use common::root;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

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
        // 65535 and 65535.0 are one number (a CRD's schema holds its bounds
        // as floats; the manifests write whole numbers as integers).
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
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
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(obj)
        }
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
    // The definitions of custom resources first (objects of their kinds need
    // them), then the namespace: everything else lives in it.
    let kinds: Vec<Vec<String>> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let text = std::fs::read_to_string(base().join(r.as_str().unwrap())).unwrap();
            docs(&text)
                .iter()
                .map(|o| o["kind"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .collect();
    let crds = kinds
        .iter()
        .take_while(|file| file.iter().all(|k| k == "CustomResourceDefinition"))
        .count();
    assert!(
        crds >= 1,
        "no CustomResourceDefinition file first: {kinds:?}"
    );
    assert!(
        kinds[crds..]
            .iter()
            .flatten()
            .all(|k| k != "CustomResourceDefinition"),
        "a CustomResourceDefinition after other objects: {kinds:?}"
    );
    assert_eq!(k["resources"][crds], "namespace.yaml");
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

/// Each image's entrypoint (as `cargo xtask image` writes it): the route
/// controller's is the binary itself; the agent's is a script that picks the
/// iptables backend (reading `UNDERLAY_IPTABLES_MODE`) and runs its arguments.
const ENTRYPOINTS: &[(&str, &[&str])] = &[
    (
        "underlay-route-controller",
        &["/usr/local/bin/underlay-route-controller"],
    ),
    ("underlay-agent", &["/usr/local/bin/underlay-entrypoint"]),
];

/// Variables read by something other than the binary's argument parser:
/// the agent image's entrypoint, the log filter of every binary, and the
/// node address the agent's metrics address is built from (`$(HOST_IP)`).
const NOT_FLAGS: &[&str] = &["UNDERLAY_IPTABLES_MODE", "RUST_LOG", "HOST_IP"];

/// What the kubelet would run for one container: its argv (entrypoint or
/// `command`, then `args`) and its environment, with ConfigMap references
/// resolved from the base and downward-API fields given plausible values.
fn container_invocation(
    pod_meta: (&str, &str),
    container: &k8s_openapi::api::core::v1::Container,
) -> (Vec<String>, Vec<(String, String)>) {
    let image = container.image.as_deref().unwrap();
    let image = image.rsplit('/').next().unwrap().split(':').next().unwrap();
    let mut argv: Vec<String> = match &container.command {
        Some(command) => command.clone(),
        None => ENTRYPOINTS
            .iter()
            .find(|(i, _)| *i == image)
            .unwrap_or_else(|| panic!("no entrypoint known for the image {image}"))
            .1
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    argv.extend(container.args.clone().unwrap_or_default());
    let mut env = Vec::new();
    for from in container.env_from.iter().flatten() {
        let name = &from
            .config_map_ref
            .as_ref()
            .expect("env from ConfigMaps only")
            .name;
        for (k, v) in config_map(name) {
            env.push((k, v));
        }
    }
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => pod_meta.0.to_string(),
                        "metadata.namespace" => pod_meta.1.to_string(),
                        "spec.nodeName" => "node-0".to_string(),
                        "status.hostIP" => "10.0.0.4".to_string(),
                        other => panic!("{}: downward API field {other} not modelled", e.name),
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    config_map(&key.name)
                        .get(&key.key)
                        .unwrap_or_else(|| panic!("{}: no key {} in {}", e.name, key.key, key.name))
                        .clone()
                } else {
                    panic!("{}: only fieldRef and configMapKeyRef are modelled", e.name)
                }
            }
            (None, None) => String::new(),
        };
        // A later entry overrides an earlier one, as in the kubelet.
        env.retain(|(k, _)| *k != e.name);
        env.push((e.name.clone(), value));
    }
    (argv, env)
}

/// `$(NAME)` in an env value replaced by the variable defined before it,
/// as the kubelet does; an unknown name stays as written.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        match tail.find(')') {
            Some(end) => {
                let name = &tail[..end];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[at..at + 3 + end]),
                }
                rest = &tail[end + 1..];
            }
            None => {
                out.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The argv clap would see if every variable of `env` that the command reads
/// were given as its flag instead; fails on a variable no argument reads.
fn flags_from_env(cmd: &clap::Command, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (name, value) in env {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
        else {
            if NOT_FLAGS.contains(&name.as_str()) {
                continue;
            }
            return Err(format!("{name} is read by no flag of {}", cmd.get_name()));
        };
        let long = arg.get_long().expect("env flags have a long form");
        if arg.get_action().takes_values() {
            out.push(format!("--{long}={value}"));
        } else {
            // A flag without a value reads its variable as a bool literal.
            match value.as_str() {
                "true" => out.push(format!("--{long}")),
                "false" => {}
                other => return Err(format!("{name}={other} is not true or false")),
            }
        }
    }
    Ok(out)
}

/// Parses one container's invocation with the binary's own parser.
fn parse_invocation(argv: &[String], env: &[(String, String)]) -> Result<String, String> {
    use clap::{CommandFactory, Parser};
    let mut argv = argv.to_vec();
    // The agent image's entrypoint runs its arguments.
    if argv[0].ends_with("/underlay-entrypoint") {
        argv.remove(0);
    }
    let program = argv[0].rsplit('/').next().unwrap().to_string();
    match program.as_str() {
        "underlay-route-controller" => {
            let cmd = underlay_route_controller::runtime::Args::command();
            let mut full = argv.clone();
            full.extend(flags_from_env(&cmd, env)?);
            underlay_route_controller::runtime::Args::try_parse_from(&full)
                .map_err(|e| format!("{full:?}: {e}"))?;
        }
        "underlay-agent" => {
            let mut full = argv.clone();
            full.extend(flags_from_env(&underlay_agent::Args::command(), env)?);
            underlay_agent::Args::try_parse_from(&full).map_err(|e| format!("{full:?}: {e}"))?;
        }
        "underlay-cni" => {
            let sub = argv.get(1).cloned().unwrap_or_default();
            let cmd = underlay_cni::Cli::command();
            let sub_cmd = cmd
                .find_subcommand(&sub)
                .ok_or_else(|| format!("underlay-cni has no subcommand {sub:?}"))?
                .clone();
            let mut full = argv.clone();
            full.extend(flags_from_env(&sub_cmd, env)?);
            underlay_cni::Cli::try_parse_from(&full).map_err(|e| format!("{full:?}: {e}"))?;
        }
        other => return Err(format!("{other} is not an underlay binary")),
    }
    Ok(program)
}

/// The pod templates of the base's workloads: (workload, pod name, namespace, spec).
fn pod_templates() -> Vec<(String, String, String, PodSpec)> {
    let mut out = Vec::new();
    for obj in objects() {
        let kind = obj["kind"].as_str().unwrap_or("");
        if kind != "Deployment" && kind != "DaemonSet" {
            continue;
        }
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
        let spec: PodSpec =
            serde_json::from_value(obj["spec"]["template"]["spec"].clone()).unwrap();
        out.push((format!("{kind} {name}"), format!("{name}-0"), ns, spec));
    }
    out
}

#[test]
fn every_setting_the_manifests_pass_is_accepted_by_the_binary_that_reads_it() {
    let mut parsed = Vec::new();
    for (workload, pod, ns, spec) in pod_templates() {
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            let (argv, env) = container_invocation((&pod, &ns), c);
            match parse_invocation(&argv, &env) {
                Ok(program) => parsed.push(program),
                Err(e) => panic!("{workload} container {}: {e}", c.name),
            }
        }
    }
    parsed.sort();
    assert_eq!(
        parsed,
        [
            "underlay-agent",
            "underlay-cni",
            "underlay-route-controller"
        ]
    );
}

#[test]
fn the_settings_check_rejects_what_the_binaries_would() {
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let env = |e: &[(&str, &str)]| {
        e.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let rc = argv(&["/usr/local/bin/underlay-route-controller"]);
    assert!(
        parse_invocation(
            &rc,
            &env(&[("UNDERLAY_CLUSTER_CIDR", "10.244.0.0/16,fd00::/56")])
        )
        .is_ok()
    );
    for bad in [
        ("UNDERLAY_CLUSTER_CIDR", "10.244.0.0/16 fd00::/56"),
        ("UNDERLAY_LEADER_ELECT", "yes please"),
        ("UNDERLAY_ROUTE_BATCH_INTERVAL", "soon"),
        ("UNDERLAY_NO_SUCH_SETTING", "1"),
        ("POD_NAMESPACE", "underlay-system"),
    ] {
        assert!(
            parse_invocation(&rc, &env(&[bad])).is_err(),
            "{bad:?} was accepted"
        );
    }
    let agent = argv(&["/usr/local/bin/underlay-entrypoint", "underlay-agent"]);
    assert!(
        parse_invocation(
            &agent,
            &env(&[("UNDERLAY_IPTABLES_MODE", "auto"), ("NODE_NAME", "n")])
        )
        .is_ok()
    );
    assert!(parse_invocation(&agent, &env(&[("UNDERLAY_METRICS_ADDR", "9650")])).is_err());
    let cni = argv(&["/usr/local/bin/underlay-cni", "install", "--bin-dir=/x"]);
    assert!(parse_invocation(&cni, &[]).is_ok());
    let cni = argv(&[
        "/usr/local/bin/underlay-cni",
        "install",
        "--bin-directory=/x",
    ]);
    assert!(parse_invocation(&cni, &[]).is_err());
}

#[test]
fn the_route_controller_takes_the_lease_its_role_allows() {
    use clap::{CommandFactory, Parser};
    use underlay_route_controller::runtime::Args;
    let (_, pod, ns, spec) = pod_templates()
        .into_iter()
        .find(|(w, ..)| w == "Deployment underlay-route-controller")
        .unwrap();
    let (mut argv, env) = container_invocation((&pod, &ns), &spec.containers[0]);
    argv.extend(flags_from_env(&Args::command(), &env).unwrap());
    let args = Args::try_parse_from(&argv).unwrap();
    assert!(args.leader_elect);
    assert_eq!(args.leader_elect_identity.as_deref(), Some(pod.as_str()));
    let role: Role = typed("Role", "underlay-route-controller-leader-election");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(args.leader_elect_namespace.as_str())
    );
    let names: Vec<String> = role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|r| r.resource_names.unwrap_or_default())
        .collect();
    assert_eq!(names, std::slice::from_ref(&args.leader_elect_name));
    assert_eq!(args.cluster_cidr.len(), 1);
    assert!(args.allocate_node_cidrs);
}
