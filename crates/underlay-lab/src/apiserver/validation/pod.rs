//! Pods: the checks of a pod spec (shared with workload templates), the
//! single and plural IP fields of the status kept consistent, and the spec's
//! immutability after creation.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::super::error::Cause;
use super::ip::one_per_family;
use super::names::dns1123_label;
use super::pod_defaults::pod_defaults;

pub fn pod(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if old.is_none() {
        pod_defaults(obj);
    }
    validate_pod_spec(&obj["spec"], "spec", causes);
    if let Some(status) = obj.get_mut("status").filter(|s| s.is_object()) {
        ips_consistent(status, "podIP", "podIPs", causes);
        ips_consistent(status, "hostIP", "hostIPs", causes);
    }
    if let Some(old) = old
        && without_updatable_fields(&old["spec"]) != without_updatable_fields(&obj["spec"])
    {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

/// A pod spec without the fields an update may change (images, tolerations,
/// activeDeadlineSeconds, terminationGracePeriodSeconds).
fn without_updatable_fields(spec: &Value) -> Value {
    let mut s = spec.clone();
    for list in ["containers", "initContainers"] {
        for c in s
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                c.remove("image");
            }
        }
    }
    if let Some(m) = s.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    s
}

/// `single` (podIP) and `plural` (podIPs) of a status in step, each a valid
/// IP, at most one per family.
fn ips_consistent(status: &mut Value, single: &str, plural: &str, causes: &mut Vec<Cause>) {
    let one = status[single].as_str().unwrap_or("").to_string();
    let many: Vec<String> = status[plural]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["ip"].as_str().map(str::to_string))
        .collect();
    // As kube-apiserver's conversion does: the singular field wins when both
    // are set and disagree, and each fills the other when only one is set.
    if !one.is_empty() && (many.is_empty() || many[0] != one) {
        status[plural] = json!([{"ip": one}]);
    } else if one.is_empty() && !many.is_empty() {
        status[single] = json!(many[0]);
    }
    let many: Vec<String> = status[plural]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v["ip"].as_str().unwrap_or("").to_string())
        .collect();
    let mut families = Vec::new();
    for (i, ip) in many.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(addr) => families.push(addr.is_ipv4()),
            Err(_) => causes.push(Cause::invalid(
                format!("status.{plural}[{i}]"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
        }
    }
    one_per_family(format!("status.{plural}"), &many, &families, "IP", causes);
}

/// The checks of a pod spec at `path` (a Pod's `spec`, a template's
/// `spec.template.spec`): containers present, named uniquely, with images.
pub fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = std::collections::BTreeSet::new();
    for (list, items) in [
        ("containers", containers),
        (
            "initContainers",
            spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
    ] {
        for (i, c) in items.iter().enumerate() {
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(format!("{path}.{list}[{i}].name")));
            } else if let Err(why) = dns1123_label(name) {
                causes.push(Cause::invalid(
                    format!("{path}.{list}[{i}].name"),
                    name,
                    &why,
                ));
            } else if !names.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{path}.{list}[{i}].name"), name));
            }
            if c["image"].as_str().unwrap_or("").is_empty() && list == "containers" {
                causes.push(Cause::required(format!("{path}.{list}[{i}].image")));
            }
        }
    }
}
