//! Nodes: `podCIDR` and `podCIDRs` kept in step (one per IP family), taints,
//! and the fields that may only go from unset to set (`podCIDRs`,
//! `providerID`).

use serde_json::{Value, json};

use super::super::error::Cause;
use super::ip::{cidr_field, one_per_family};
use super::names::qualified_name;

pub fn node(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &mut obj["spec"];
    if spec.is_null() {
        *spec = json!({});
    }
    sync_pod_cidr(spec, causes);
    validate_pod_cidrs(spec, causes);
    validate_taints(spec, causes);
    if let Some(old) = old {
        validate_update(&old["spec"], &obj["spec"], causes);
    }
}

/// The string entries of `spec.podCIDRs`.
fn pod_cidrs(spec: &Value) -> Vec<String> {
    spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Fills whichever of `podCIDR` and `podCIDRs` is missing from the other;
/// when both are set, the single one must be the list's first.
fn sync_pod_cidr(spec: &mut Value, causes: &mut Vec<Cause>) {
    let pod_cidr = spec["podCIDR"].as_str().unwrap_or("").to_string();
    let cidrs = pod_cidrs(spec);
    if !pod_cidr.is_empty() && cidrs.is_empty() {
        spec["podCIDRs"] = json!([pod_cidr]);
    } else if pod_cidr.is_empty() && !cidrs.is_empty() {
        spec["podCIDR"] = json!(cidrs[0]);
    } else if !pod_cidr.is_empty() && cidrs.first() != Some(&pod_cidr) {
        causes.push(Cause::invalid(
            "spec.podCIDR",
            &pod_cidr,
            "must match first entry of spec.podCIDRs",
        ));
    }
}

fn validate_pod_cidrs(spec: &Value, causes: &mut Vec<Cause>) {
    let cidrs = pod_cidrs(spec);
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        if let Some((ip, _)) = cidr_field(format!("spec.podCIDRs[{i}]"), c, causes) {
            families.push(ip.is_ipv4());
        }
    }
    one_per_family("spec.podCIDRs".into(), &cidrs, &families, "CIDR", causes);
}

fn validate_taints(spec: &Value, causes: &mut Vec<Cause>) {
    for (i, taint) in spec["taints"].as_array().into_iter().flatten().enumerate() {
        let effect = taint["effect"].as_str().unwrap_or("");
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            causes.push(Cause::unsupported(
                format!("spec.taints[{i}].effect"),
                effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
        if let Err(why) = qualified_name(taint["key"].as_str().unwrap_or("")) {
            causes.push(Cause::invalid(
                format!("spec.taints[{i}].key"),
                taint["key"].as_str().unwrap_or(""),
                &why,
            ));
        }
    }
}

/// `podCIDRs` and `providerID` may be set once, never changed.
fn validate_update(old_spec: &Value, spec: &Value, causes: &mut Vec<Cause>) {
    let old_cidrs = &old_spec["podCIDRs"];
    let had = old_cidrs.as_array().is_some_and(|a| !a.is_empty());
    if had && *old_cidrs != spec["podCIDRs"] {
        causes.push(Cause::forbidden(
            "spec.podCIDRs",
            "node updates may not change podCIDR except from \"\" to valid",
        ));
    }
    let old_provider = old_spec["providerID"].as_str().unwrap_or("");
    if !old_provider.is_empty() && spec["providerID"].as_str() != Some(old_provider) {
        causes.push(Cause::forbidden(
            "spec.providerID",
            "node updates may not change providerID except from \"\" to valid",
        ));
    }
}
