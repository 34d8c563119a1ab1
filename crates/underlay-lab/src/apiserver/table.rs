//! Server-side printing: `meta.k8s.io/v1` Tables for clients that ask for
//! them (`kubectl get` does), with the columns kubectl users expect for the
//! kinds underlay works with, a custom resource's `additionalPrinterColumns`
//! when its CRD has them, and Name/Age for everything else.

use serde_json::{Value, json};

use super::meta;
use super::resources::{Builtin, ResourceType};

/// A column after Name: its header and type; a `wide` one is printed only
/// with `-o wide` (priority 1).
struct Column {
    name: &'static str,
    ty: &'static str,
    wide: bool,
}

fn column(name: &'static str, ty: &'static str, wide: bool) -> Column {
    Column { name, ty, wide }
}

fn text(name: &'static str) -> Column {
    column(name, "string", false)
}

fn int(name: &'static str) -> Column {
    column(name, "integer", false)
}

fn wide(name: &'static str) -> Column {
    column(name, "string", true)
}

/// The columns after Name of each kind, in the order [`cells`] fills them.
fn kind_columns(builtin: Option<Builtin>) -> Vec<Column> {
    match builtin {
        Some(Builtin::Pod) => vec![
            text("Ready"),
            text("Status"),
            text("Restarts"),
            text("Age"),
            wide("IP"),
            wide("Node"),
        ],
        Some(Builtin::Node) => vec![
            text("Status"),
            text("Roles"),
            text("Age"),
            text("Version"),
            wide("Internal-IP"),
        ],
        Some(Builtin::Namespace) => vec![text("Status"), text("Age")],
        Some(Builtin::NetworkPolicy) => vec![text("Pod-Selector"), text("Age")],
        Some(Builtin::ConfigMap) | Some(Builtin::Secret) => vec![int("Data"), text("Age")],
        Some(Builtin::Lease) => vec![text("Holder"), text("Age")],
        Some(Builtin::Deployment) => vec![
            text("Ready"),
            text("Up-to-date"),
            text("Available"),
            text("Age"),
        ],
        Some(Builtin::DaemonSet) => vec![
            int("Desired"),
            int("Current"),
            int("Ready"),
            int("Up-to-date"),
            int("Available"),
            text("Node Selector"),
            text("Age"),
        ],
        Some(Builtin::PodDisruptionBudget) => vec![
            text("Min Available"),
            text("Max Unavailable"),
            int("Allowed Disruptions"),
            text("Age"),
        ],
        Some(Builtin::PriorityClass) => vec![
            int("Value"),
            column("Global-Default", "boolean", false),
            text("Age"),
            text("PreemptionPolicy"),
        ],
        Some(Builtin::RoleBinding) | Some(Builtin::ClusterRoleBinding) => {
            vec![text("Role"), text("Age")]
        }
        Some(Builtin::ClusterRole) => vec![column("Created At", "date", false)],
        _ => vec![text("Age")],
    }
}

fn column_definition(name: &str, ty: &str, format: &str, priority: u32) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": name, "priority": priority})
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    if !rt.printer_columns.is_empty() {
        let rest = rt.printer_columns.iter().map(|c| {
            let name = c["name"].as_str().unwrap_or("");
            let ty = c["type"].as_str().unwrap_or("string");
            let format = c["format"].as_str().unwrap_or("");
            let priority = c["priority"].as_u64().unwrap_or(0);
            let mut def = column_definition(name, ty, format, priority as u32);
            if let Some(d) = c["description"].as_str() {
                def["description"] = json!(d);
            }
            def
        });
        return std::iter::once(column_definition("Name", "string", "name", 0))
            .chain(rest)
            .collect();
    }
    let rest = kind_columns(rt.builtin)
        .into_iter()
        .map(|c| column_definition(c.name, c.ty, "", u32::from(c.wide)));
    std::iter::once(column_definition("Name", "string", "name", 0))
        .chain(rest)
        .collect()
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

/// The cells of a custom resource's printer columns: the value at each
/// column's JSON path (simple `.field.field[index]` paths), a `date` as its
/// age, a `string` column's number or boolean as text, and null when the
/// path finds nothing, as kube-apiserver's table converter gives them.
fn printer_cells(columns: &[Value], o: &Value) -> Vec<Value> {
    let name = json!(meta::meta_str(o, "name"));
    let rest = columns.iter().map(|c| {
        let found = json_path(o, c["jsonPath"].as_str().unwrap_or(""));
        match (c["type"].as_str().unwrap_or("string"), found) {
            (_, None) => Value::Null,
            ("date", Some(v)) => json!(meta::age(v.as_str().unwrap_or(""))),
            ("string", Some(v)) if !v.is_string() => json!(v.to_string()),
            (_, Some(v)) => v.clone(),
        }
    });
    std::iter::once(name).chain(rest).collect()
}

/// The value at a simple JSON path (`.spec.rules[0].name`).
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = o;
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (field, indexes) = step.split_once('[').unwrap_or((step, ""));
        if !field.is_empty() {
            at = at.get(field)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            at = at.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    if !rt.printer_columns.is_empty() {
        return printer_cells(&rt.printer_columns, o);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::types_from_crd;

    #[test]
    fn a_custom_resource_is_printed_with_its_crds_columns() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Cluster",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "additionalPrinterColumns": [
            {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
            {"name": "First", "type": "integer", "jsonPath": ".spec.parts[0].n"},
            {"name": "Missing", "type": "string", "jsonPath": ".spec.none", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]}]}});
        let rt = types_from_crd(&crd).remove(0);
        let widget = json!({"metadata": {"name": "w", "creationTimestamp": meta::now()},
            "spec": {"size": 7, "parts": [{"n": 3}]}});
        let t = table(&rt, &[widget], "1", true, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Size", "First", "Missing", "Age"]);
        assert_eq!(t["columnDefinitions"][3]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"], json!(["w", "7", 3, null, "0s"]));
    }
}
