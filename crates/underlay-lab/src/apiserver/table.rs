//! Server-side printing: `meta.k8s.io/v1` Tables for clients that ask for
//! them (`kubectl get` does), with the columns kubectl users expect for the
//! kinds underlay works with and Name/Age for everything else.

use serde_json::{Value, json};

use super::meta;
use super::resources::{Builtin, ResourceType};

fn col(name: &str, ty: &str, format: &str, priority: u32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": name, "priority": priority})
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![col("Name", "string", "name", 0)];
    match rt.builtin {
        Some(Builtin::Pod) => cols.extend([
            col("Ready", "string", "", 0),
            col("Status", "string", "", 0),
            col("Restarts", "string", "", 0),
            col("Age", "string", "", 0),
            col("IP", "string", "", 1),
            col("Node", "string", "", 1),
        ]),
        Some(Builtin::Node) => cols.extend([
            col("Status", "string", "", 0),
            col("Roles", "string", "", 0),
            col("Age", "string", "", 0),
            col("Version", "string", "", 0),
            col("Internal-IP", "string", "", 1),
        ]),
        Some(Builtin::Namespace) => {
            cols.extend([col("Status", "string", "", 0), col("Age", "string", "", 0)])
        }
        Some(Builtin::NetworkPolicy) => cols.extend([
            col("Pod-Selector", "string", "", 0),
            col("Age", "string", "", 0),
        ]),
        Some(Builtin::ConfigMap) | Some(Builtin::Secret) => {
            cols.extend([col("Data", "integer", "", 0), col("Age", "string", "", 0)])
        }
        Some(Builtin::Lease) => {
            cols.extend([col("Holder", "string", "", 0), col("Age", "string", "", 0)])
        }
        Some(Builtin::Deployment) => cols.extend([
            col("Ready", "string", "", 0),
            col("Up-to-date", "string", "", 0),
            col("Available", "string", "", 0),
            col("Age", "string", "", 0),
        ]),
        Some(Builtin::DaemonSet) => cols.extend([
            col("Desired", "integer", "", 0),
            col("Current", "integer", "", 0),
            col("Ready", "integer", "", 0),
            col("Up-to-date", "integer", "", 0),
            col("Available", "integer", "", 0),
            col("Node Selector", "string", "", 0),
            col("Age", "string", "", 0),
        ]),
        Some(Builtin::PodDisruptionBudget) => cols.extend([
            col("Min Available", "string", "", 0),
            col("Max Unavailable", "string", "", 0),
            col("Allowed Disruptions", "integer", "", 0),
            col("Age", "string", "", 0),
        ]),
        Some(Builtin::PriorityClass) => cols.extend([
            col("Value", "integer", "", 0),
            col("Global-Default", "boolean", "", 0),
            col("Age", "string", "", 0),
            col("PreemptionPolicy", "string", "", 0),
        ]),
        Some(Builtin::RoleBinding) | Some(Builtin::ClusterRoleBinding) => {
            cols.extend([col("Role", "string", "", 0), col("Age", "string", "", 0)])
        }
        Some(Builtin::ClusterRole) => cols.push(col("Created At", "date", "", 0)),
        _ => cols.push(col("Age", "string", "", 0)),
    }
    cols
}

fn selector_text(sel: &Value) -> String {
    let mut parts = Vec::new();
    for (k, v) in sel["matchLabels"].as_object().into_iter().flatten() {
        parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(format!(
            "{} {} ({})",
            e["key"].as_str().unwrap_or(""),
            e["operator"].as_str().unwrap_or(""),
            values.join(",")
        ));
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = json!(meta::meta_str(o, "name"));
    let age = json!(meta::age(meta::meta_str(o, "creationTimestamp")));
    match rt.builtin {
        Some(Builtin::Pod) => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|s| s["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s["restartCount"].as_i64())
                .sum();
            let phase = if o["metadata"]["deletionTimestamp"].is_null() {
                o["status"]["phase"]
                    .as_str()
                    .unwrap_or("Unknown")
                    .to_string()
            } else {
                "Terminating".to_string()
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(phase),
                json!(restarts.to_string()),
                age,
                json!(o["status"]["podIP"].as_str().unwrap_or("<none>")),
                json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            ]
        }
        Some(Builtin::Node) => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if o["spec"]["unschedulable"].as_bool() == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect();
            let ip = o["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str())
                .unwrap_or("<none>");
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".to_string()
                } else {
                    roles.join(",")
                }),
                age,
                json!(
                    o["status"]["nodeInfo"]["kubeletVersion"]
                        .as_str()
                        .unwrap_or("")
                ),
                json!(ip),
            ]
        }
        Some(Builtin::Namespace) => vec![
            name,
            json!(o["status"]["phase"].as_str().unwrap_or("")),
            age,
        ],
        Some(Builtin::NetworkPolicy) => {
            vec![name, json!(selector_text(&o["spec"]["podSelector"])), age]
        }
        Some(Builtin::ConfigMap) | Some(Builtin::Secret) => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), age]
        }
        Some(Builtin::Lease) => vec![
            name,
            json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")),
            age,
        ],
        Some(Builtin::Deployment) => {
            let st = &o["status"];
            let n = |k: &str| st[k].as_i64().unwrap_or(0);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n("readyReplicas"),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                )),
                json!(n("updatedReplicas")),
                json!(n("availableReplicas")),
                age,
            ]
        }
        Some(Builtin::DaemonSet) => {
            let st = &o["status"];
            let n = |k: &str| json!(st[k].as_i64().unwrap_or(0));
            let selector: Vec<String> = o["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                name,
                n("desiredNumberScheduled"),
                n("currentNumberScheduled"),
                n("numberReady"),
                n("updatedNumberScheduled"),
                n("numberAvailable"),
                json!(if selector.is_empty() {
                    "<none>".to_string()
                } else {
                    selector.join(",")
                }),
                age,
            ]
        }
        Some(Builtin::PodDisruptionBudget) => {
            let bound = |k: &str| match &o["spec"][k] {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            vec![
                name,
                json!(bound("minAvailable")),
                json!(bound("maxUnavailable")),
                json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
                age,
            ]
        }
        Some(Builtin::PriorityClass) => vec![
            name,
            o["value"].clone(),
            json!(o["globalDefault"].as_bool().unwrap_or(false)),
            age,
            json!(o["preemptionPolicy"].as_str().unwrap_or("")),
        ],
        Some(Builtin::RoleBinding) | Some(Builtin::ClusterRoleBinding) => vec![
            name,
            json!(format!(
                "{}/{}",
                o["roleRef"]["kind"].as_str().unwrap_or(""),
                o["roleRef"]["name"].as_str().unwrap_or("")
            )),
            age,
        ],
        Some(Builtin::ClusterRole) => vec![name, json!(meta::meta_str(o, "creationTimestamp"))],
        _ => vec![name, age],
    }
}

/// A Table of `objects`; `include` is the `includeObject` parameter
/// (`None` (default: PartialObjectMetadata), `None`, `Object`).
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    rv: &str,
    with_columns: bool,
    include: Option<&str>,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            json!({"cells": cells(rt, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": if with_columns { Value::Array(columns(rt)) } else { json!([]) },
        "rows": rows,
    })
}
