//! NetworkPolicies: the defaults kube-apiserver writes (TCP ports,
//! `policyTypes` from the rules, an empty `podSelector`) and the checks of
//! selectors, policy types, ports and peers (ipBlock CIDRs and exceptions).

use serde_json::{Value, json};

use super::super::error::Cause;
use super::ip::{cidr_field, cidr_strictly_within};
use super::label_selector::validate_selector;
use super::names::iana_svc_name;

pub fn network_policy(obj: &mut Value, causes: &mut Vec<Cause>) {
    let spec = obj
        .as_object_mut()
        .map(|m| m.entry("spec").or_insert_with(|| json!({})))
        .expect("object");
    if !spec.is_object() {
        causes.push(Cause::invalid("spec", spec.clone(), "must be an object"));
        return;
    }
    default_spec(spec);
    validate_selector(&spec["podSelector"], "spec.podSelector", causes);
    validate_policy_types(spec, causes);
    validate_rules(spec, causes);
}

/// Ports default to TCP; policyTypes to Ingress, plus Egress when egress
/// rules exist; the pod selector to the empty one (every pod).
fn default_spec(spec: &mut Value) {
    for dir in ["ingress", "egress"] {
        for rule in spec
            .get_mut(dir)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for port in rule
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = port.as_object_mut()
                    && p.get("protocol").is_none_or(Value::is_null)
                {
                    p.insert("protocol".into(), json!("TCP"));
                }
            }
        }
    }
    let has_types = spec["policyTypes"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !has_types {
        let mut types = vec![json!("Ingress")];
        if spec["egress"].as_array().is_some_and(|a| !a.is_empty()) {
            types.push(json!("Egress"));
        }
        spec["policyTypes"] = Value::Array(types);
    }
    if spec.get("podSelector").is_none_or(Value::is_null) {
        spec["podSelector"] = json!({});
    }
}

fn validate_policy_types(spec: &Value, causes: &mut Vec<Cause>) {
    let types = spec["policyTypes"].as_array().cloned().unwrap_or_default();
    if types.len() > 2 {
        causes.push(Cause::forbidden(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or("");
        if t != "Ingress" && t != "Egress" {
            causes.push(Cause::unsupported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
}

/// The ports and peers of every ingress (`from`) and egress (`to`) rule.
fn validate_rules(spec: &Value, causes: &mut Vec<Cause>) {
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                validate_port(port, &format!("spec.{dir}[{i}].ports[{j}]"), causes);
            }
            for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                validate_peer(peer, &format!("spec.{dir}[{i}].{peers}[{j}]"), causes);
            }
        }
    }
}

fn validate_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
    let protocol = port["protocol"].as_str().unwrap_or("TCP");
    if !["TCP", "UDP", "SCTP"].contains(&protocol) {
        causes.push(Cause::unsupported(
            format!("{path}.protocol"),
            protocol,
            &["SCTP", "TCP", "UDP"],
        ));
    }
    let mut numeric = None;
    match &port["port"] {
        Value::Null => {}
        Value::Number(n) => {
            let v = n.as_i64().unwrap_or(0);
            port_number(&format!("{path}.port"), v, causes);
            numeric = Some(v);
        }
        Value::String(s) => {
            if !iana_svc_name(s) {
                causes.push(Cause::invalid(
                    format!("{path}.port"),
                    s,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), must contain at least one letter (a-z), must be no more than 15 characters",
                ));
            }
        }
        other => causes.push(Cause::invalid(
            format!("{path}.port"),
            other,
            "must be an integer or a service name",
        )),
    }
    if let Some(end) = port["endPort"].as_i64() {
        match (&port["port"], numeric) {
            (Value::Null, _) => causes.push(Cause::required(format!("{path}.port"))),
            (_, None) => causes.push(Cause::invalid(
                format!("{path}.endPort"),
                end,
                "may not be specified when `port` is non-numeric",
            )),
            (_, Some(p)) if end < p => causes.push(Cause::invalid(
                format!("{path}.endPort"),
                end,
                "must be greater than or equal to `port`",
            )),
            _ => {}
        }
        port_number(&format!("{path}.endPort"), end, causes);
    }
}

fn port_number(path: &str, port: i64, causes: &mut Vec<Cause>) {
    if !(1..=65535).contains(&port) {
        causes.push(Cause::invalid(
            path,
            port,
            "must be between 1 and 65535, inclusive",
        ));
    }
}

/// A peer is exactly one of an ipBlock or selectors (pod, namespace or both).
fn validate_peer(peer: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut count = 0;
    for sel in ["podSelector", "namespaceSelector"] {
        if !peer[sel].is_null() {
            count += 1;
            validate_selector(&peer[sel], &format!("{path}.{sel}"), causes);
        }
    }
    let block = &peer["ipBlock"];
    if !block.is_null() {
        count += 1;
        validate_ip_block(block, path, causes);
    }
    if count == 0 {
        causes.push(Cause::required(path.to_string()));
        if let Some(last) = causes.last_mut() {
            last.message = "Required value: must specify a peer".into();
        }
    } else if count > 1 && !block.is_null() {
        causes.push(Cause::forbidden(
            path.to_string(),
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// An ipBlock of the peer at `path`: a CIDR, and exceptions strictly inside it.
fn validate_ip_block(block: &Value, path: &str, causes: &mut Vec<Cause>) {
    let cidr_str = block["cidr"].as_str().unwrap_or("");
    let cidr = if cidr_str.is_empty() {
        causes.push(Cause::required(format!("{path}.ipBlock.cidr")));
        None
    } else {
        cidr_field(format!("{path}.ipBlock.cidr"), cidr_str, causes)
    };
    for (k, except) in block["except"].as_array().into_iter().flatten().enumerate() {
        let e = except.as_str().unwrap_or("");
        let p = format!("{path}.ipBlock.except[{k}]");
        if let (Some(inner), Some(outer)) = (cidr_field(p.clone(), e, causes), cidr)
            && !cidr_strictly_within(inner, outer)
        {
            causes.push(Cause::invalid(p, e, "must be a strict subset of `cidr`"));
        }
    }
}
