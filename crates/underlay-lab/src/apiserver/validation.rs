//! Defaulting and validation: object names and labels for every kind, and the
//! kind-specific rules that matter to networking (NetworkPolicy defaulting and
//! ipBlock/port/protocol checks, Node podCIDR immutability, Pod IP
//! consistency, namespace labels, Pod spec immutability). Failures are
//! reported as `422 Invalid` with field causes, worded like kube-apiserver.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult, Cause};
use super::kinds;
use super::resources::{Builtin, ResourceType};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters and not empty; {LABEL_MSG}"
        ));
    }
    let ok = s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    if ok {
        Ok(())
    } else {
        Err(LABEL_MSG.to_string())
    }
}

pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters and not empty; {SUBDOMAIN_MSG}"
        ));
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_alnum_lower(c) || c == '-')
            && part.starts_with(is_alnum_lower)
            && part.ends_with(is_alnum_lower)
    });
    if ok {
        Ok(())
    } else {
        Err(SUBDOMAIN_MSG.to_string())
    }
}

fn qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label and annotation keys: `[prefix/]name`.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if !qualified_part(name) {
        return Err(QUALIFIED_MSG.to_string());
    }
    Ok(())
}

pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_part(s) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

/// `(network address, prefix length)` of a CIDR string.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max && !len.to_string().starts_with('+')).then_some((ip, len))
}

fn ip_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn masked(ip: IpAddr, len: u8) -> u128 {
    let (bits, width) = ip_bits(ip);
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (width - len)) & (u128::MAX >> (128 - width as u32))
    }
}

/// True when `inner` is a strict subset of `outer` (same family).
fn cidr_strictly_within(inner: (IpAddr, u8), outer: (IpAddr, u8)) -> bool {
    inner.0.is_ipv4() == outer.0.is_ipv4()
        && inner.1 > outer.1
        && masked(inner.0, outer.1) == masked(outer.0, outer.1)
}

fn validate_metadata(rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        let check = match rt.builtin {
            Some(Builtin::Namespace) => dns1123_label(name),
            Some(Builtin::CoreEvent) | Some(Builtin::EventsV1) => {
                // Event names are path segments, not DNS names.
                if name.contains('/') || name == "." || name == ".." {
                    Err("may not contain '/'".into())
                } else {
                    Ok(())
                }
            }
            _ => dns1123_subdomain(name),
        };
        if let Err(why) = check {
            causes.push(Cause::invalid("metadata.name", name, &why));
        }
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if let Err(why) = qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", k, &why));
            }
            match v.as_str() {
                Some(s) => {
                    if let Err(why) = label_value(s) {
                        causes.push(Cause::invalid("metadata.labels", s, &why));
                    }
                }
                None => causes.push(Cause::invalid(
                    "metadata.labels",
                    v,
                    "label values must be strings",
                )),
            }
        }
    }
    if let Some(annotations) = obj["metadata"]["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            if let Err(why) = qualified_name(&k.to_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", k, &why));
            }
        }
        if total > 256 * 1024 {
            causes.push(Cause::invalid(
                "metadata.annotations",
                "",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
}

pub(super) fn validate_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(labels) = sel["matchLabels"].as_object() {
        for (k, v) in labels {
            if let Err(why) = qualified_name(k) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), k, &why));
            }
            if let Err(why) = label_value(v.as_str().unwrap_or("")) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), v, &why));
            }
        }
    }
    for (i, expr) in sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = expr["values"].as_array().map_or(0, Vec::len);
        match expr["operator"].as_str().unwrap_or("") {
            "In" | "NotIn" if values == 0 => {
                causes.push(Cause::required(format!("{p}.values")));
            }
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::unsupported(
                format!("{p}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
        if let Err(why) = qualified_name(expr["key"].as_str().unwrap_or("")) {
            causes.push(Cause::invalid(
                format!("{p}.key"),
                expr["key"].as_str().unwrap_or(""),
                &why,
            ));
        }
    }
}

fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn network_policy(obj: &mut Value, causes: &mut Vec<Cause>) {
    let spec = obj
        .as_object_mut()
        .map(|m| m.entry("spec").or_insert_with(|| json!({})))
        .expect("object");
    if !spec.is_object() {
        causes.push(Cause::invalid("spec", spec.clone(), "must be an object"));
        return;
    }
    // Defaulting: ports default to TCP; policyTypes to Ingress, plus Egress when egress rules exist.
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
    validate_selector(&spec["podSelector"], "spec.podSelector", causes);
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
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                validate_np_port(port, &format!("spec.{dir}[{i}].ports[{j}]"), causes);
            }
            for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                validate_np_peer(peer, &format!("spec.{dir}[{i}].{peers}[{j}]"), causes);
            }
        }
    }
}

fn validate_np_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
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

/// Parses a CIDR field, reporting it when it is not one.
fn cidr_field(path: String, s: &str, causes: &mut Vec<Cause>) -> Option<(IpAddr, u8)> {
    let cidr = parse_cidr(s);
    if cidr.is_none() {
        causes.push(Cause::invalid(path, s, CIDR_MSG));
    }
    cidr
}

/// A dual-stack list (podCIDRs, podIPs): at most one entry per IP family.
fn one_per_family(
    path: String,
    values: &[String],
    ipv4: &[bool],
    what: &str,
    causes: &mut Vec<Cause>,
) {
    if values.len() > 2 || (ipv4.len() == 2 && ipv4[0] == ipv4[1]) {
        causes.push(Cause::invalid(
            path,
            values.join(","),
            &format!("may specify no more than one {what} for each IP family"),
        ));
    }
}

fn validate_np_peer(peer: &Value, path: &str, causes: &mut Vec<Cause>) {
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

fn node(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &mut obj["spec"];
    if spec.is_null() {
        *spec = json!({});
    }
    let pod_cidr = spec["podCIDR"].as_str().unwrap_or("").to_string();
    let cidrs: Vec<String> = spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
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
    let cidrs: Vec<String> = spec["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut families = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        if let Some((ip, _)) = cidr_field(format!("spec.podCIDRs[{i}]"), c, causes) {
            families.push(ip.is_ipv4());
        }
    }
    one_per_family("spec.podCIDRs".into(), &cidrs, &families, "CIDR", causes);
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
    if let Some(old) = old {
        let old_cidrs = &old["spec"]["podCIDRs"];
        let had = old_cidrs.as_array().is_some_and(|a| !a.is_empty());
        if had && *old_cidrs != obj["spec"]["podCIDRs"] {
            causes.push(Cause::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        let old_provider = old["spec"]["providerID"].as_str().unwrap_or("");
        if !old_provider.is_empty() && obj["spec"]["providerID"].as_str() != Some(old_provider) {
            causes.push(Cause::forbidden(
                "spec.providerID",
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
    }
}

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
pub(super) fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
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

fn pod(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if old.is_none() {
        pod_defaults(obj);
    }
    validate_pod_spec(&obj["spec"], "spec", causes);
    if let Some(status) = obj.get_mut("status").filter(|s| s.is_object()) {
        ips_consistent(status, "podIP", "podIPs", causes);
        ips_consistent(status, "hostIP", "hostIPs", causes);
    }
    if let Some(old) = old {
        let strip = |spec: &Value| {
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
        };
        if strip(&old["spec"]) != strip(&obj["spec"]) {
            causes.push(Cause::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
    }
}

pub(super) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// What kube-apiserver's admission adds to a new Pod (not to pod templates):
/// the service account, the priority and the not-ready/unreachable
/// tolerations; then the scheme defaults every pod spec gets.
fn pod_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    pod_spec_defaults(spec);
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !t.iter().any(|x| x["key"] == key) {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// The scheme defaults of a pod spec, in a Pod or a workload's template.
pub(super) fn pod_spec_defaults(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let latest = !image.contains(':') || image.ends_with(":latest");
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                }),
            );
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(probe) = c.get_mut(probe).and_then(Value::as_object_mut) else {
                    continue;
                };
                set_default(probe, "timeoutSeconds", json!(1));
                set_default(probe, "periodSeconds", json!(10));
                set_default(probe, "successThreshold", json!(1));
                set_default(probe, "failureThreshold", json!(3));
                if let Some(get) = probe.get_mut("httpGet").and_then(Value::as_object_mut) {
                    set_default(get, "path", json!("/"));
                    set_default(get, "scheme", json!("HTTP"));
                }
            }
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for source in ["secret", "configMap"] {
            if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
                set_default(src, "defaultMode", json!(420));
            }
        }
        if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
            set_default(hp, "type", json!(""));
        }
    }
}

fn namespace(obj: &mut Value, old: Option<&Value>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let meta = super::meta::metadata_mut(obj);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["kubernetes.io/metadata.name"] = json!(name);
    if old.is_none() {
        let spec = obj
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        if spec["finalizers"].is_null() {
            spec["finalizers"] = json!(["kubernetes"]);
        }
    }
}

fn data_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    for key in obj[field].as_object().into_iter().flat_map(|m| m.keys()) {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            causes.push(Cause::invalid(
                field.to_string(),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

fn immutable_data(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(old) = old
        && old["immutable"].as_bool() == Some(true)
    {
        for field in ["data", "binaryData", "stringData"] {
            if old[field] != obj[field] && field != "stringData" {
                causes.push(Cause::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj["immutable"].as_bool() != Some(true) {
            causes.push(Cause::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn secret(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    // stringData is a write-only convenience merged into data (base64).
    if let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = string_data.as_object()
    {
        let data = obj
            .as_object_mut()
            .expect("object")
            .entry("data")
            .or_insert_with(|| json!({}));
        for (k, v) in sd {
            data[k] = json!(super::meta::base64_encode(
                v.as_str().unwrap_or("").as_bytes()
            ));
        }
    }
    if obj["type"].as_str().unwrap_or("").is_empty() {
        obj["type"] = json!("Opaque");
    }
    if let Some(old) = old
        && old["type"] != obj["type"]
    {
        causes.push(Cause::invalid(
            "type",
            obj["type"].as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    data_keys(obj, "data", causes);
    immutable_data(obj, old, causes);
}

fn crd(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj["spec"].clone();
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let kind = spec["names"]["kind"].as_str().unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if let Err(why) = dns1123_label(plural) {
        causes.push(Cause::invalid("spec.names.plural", plural, &why));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or("");
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::unsupported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            storage.len(),
            "must have exactly one version marked as storage version",
        ));
    }
    if let Some(old) = old {
        if old["spec"]["group"] != obj["spec"]["group"] {
            causes.push(Cause::invalid("spec.group", group, "field is immutable"));
        }
        if old["spec"]["scope"] != obj["spec"]["scope"] {
            causes.push(Cause::invalid("spec.scope", scope, "field is immutable"));
        }
    }
    let storage_name = storage
        .first()
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_string();
    let names = obj["spec"]["names"].clone();
    let mut accepted = names.clone();
    if accepted["singular"].is_null() {
        accepted["singular"] = json!(kind.to_lowercase());
    }
    if accepted["listKind"].is_null() {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let now = super::meta::now();
    obj["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": [storage_name],
    });
    if obj["spec"]["names"]["singular"].is_null() {
        obj["spec"]["names"]["singular"] = json!(kind.to_lowercase());
    }
    if obj["spec"]["names"]["listKind"].is_null() {
        obj["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
    }
    if obj["spec"]["conversion"].is_null() {
        obj["spec"]["conversion"] = json!({"strategy": "None"});
    }
}

/// Default and validate `obj` (a create when `old` is None) in place.
pub fn default_and_validate(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let mut causes = Vec::new();
    match rt.builtin {
        Some(Builtin::Namespace) => namespace(obj, old),
        Some(Builtin::NetworkPolicy) => network_policy(obj, &mut causes),
        Some(Builtin::Node) => node(obj, old, &mut causes),
        Some(Builtin::Pod) => pod(obj, old, &mut causes),
        Some(Builtin::Secret) => secret(obj, old, &mut causes),
        Some(Builtin::ConfigMap) => {
            data_keys(obj, "data", &mut causes);
            data_keys(obj, "binaryData", &mut causes);
            immutable_data(obj, old, &mut causes);
        }
        Some(Builtin::Crd) => crd(obj, old, &mut causes),
        Some(Builtin::Deployment) => kinds::workload("Deployment", obj, old, &mut causes),
        Some(Builtin::DaemonSet) => kinds::workload("DaemonSet", obj, old, &mut causes),
        Some(Builtin::ClusterRole) => kinds::role(true, obj, &mut causes),
        Some(Builtin::Role) => kinds::role(false, obj, &mut causes),
        Some(Builtin::ClusterRoleBinding) => kinds::binding(true, obj, old, &mut causes),
        Some(Builtin::RoleBinding) => kinds::binding(false, obj, old, &mut causes),
        Some(Builtin::PodDisruptionBudget) => kinds::disruption_budget(obj, &mut causes),
        Some(Builtin::PriorityClass) => kinds::priority_class(obj, old, &mut causes),
        Some(Builtin::CoreEvent) | Some(Builtin::EventsV1)
            if obj["involvedObject"]
                .as_object()
                .is_none_or(|o| o.is_empty()) =>
        {
            causes.push(Cause::required("involvedObject"));
        }
        _ => {}
    }
    if let Some(schema) = &rt.schema {
        super::schema::prune_and_validate(schema, obj, &mut causes);
    }
    validate_metadata(rt, obj, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            obj["metadata"]["name"].as_str().unwrap_or(""),
            &causes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn rt(kind: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.kind == kind && t.group != "events.k8s.io")
            .unwrap()
    }

    fn np(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn policy_types_default_from_rules() {
        let cases = [
            (json!({"podSelector": {}}), json!(["Ingress"])),
            (
                json!({"podSelector": {}, "ingress": [{}]}),
                json!(["Ingress"]),
            ),
            (
                json!({"podSelector": {}, "egress": [{}]}),
                json!(["Ingress", "Egress"]),
            ),
            (json!({"podSelector": {}, "egress": []}), json!(["Ingress"])),
            (
                json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
                json!(["Egress"]),
            ),
        ];
        for (spec, want) in cases {
            let mut obj = np(spec.clone());
            default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap();
            assert_eq!(obj["spec"]["policyTypes"], want, "{spec}");
        }
    }

    #[test]
    fn network_policy_validation_rejects_bad_fields() {
        let cases = [
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 70000}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 0}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 100, "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "not_a_name!"}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"from": [{}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
        ];
        for (spec, field) in cases {
            let mut obj = np(spec.clone());
            let err = default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap_err();
            assert_eq!(err.code, 422, "{spec}");
            let causes = err.details.as_ref().unwrap()["causes"]
                .as_array()
                .unwrap()
                .clone();
            assert!(
                causes.iter().any(|c| c["field"] == field),
                "{spec}: {causes:?}"
            );
        }
    }

    #[test]
    fn valid_network_policy_gets_tcp_default() {
        let mut obj = np(
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}, {"port": "http"}, {"port": 1000, "endPort": 2000, "protocol": "SCTP"}], "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"namespaceSelector": {}, "podSelector": {}}]}]}),
        );
        default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap();
        assert_eq!(obj["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(obj["spec"]["ingress"][0]["ports"][2]["protocol"], "SCTP");
    }

    #[test]
    fn node_pod_cidrs_are_immutable_once_set() {
        let node = |cidrs: Value| json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": cidrs}});
        let mut old = node(json!([]));
        default_and_validate(&rt("Node"), &mut old, None).unwrap();
        let mut set = node(json!(["10.0.1.0/24"]));
        default_and_validate(&rt("Node"), &mut set, Some(&old)).unwrap();
        assert_eq!(set["spec"]["podCIDR"], "10.0.1.0/24");
        let mut changed = node(json!(["10.0.2.0/24"]));
        let err = default_and_validate(&rt("Node"), &mut changed, Some(&set)).unwrap_err();
        assert!(
            err.message
                .contains("node updates may not change podCIDR except from \"\" to valid"),
            "{}",
            err.message
        );
        let mut dual = node(json!(["10.0.1.0/24", "fd00::/64"]));
        default_and_validate(&rt("Node"), &mut dual, None).unwrap();
        let mut two_v4 = node(json!(["10.0.1.0/24", "10.0.2.0/24"]));
        assert_eq!(
            default_and_validate(&rt("Node"), &mut two_v4, None)
                .unwrap_err()
                .code,
            422
        );
        let mut bad = node(json!(["10.0.1.0/99"]));
        assert_eq!(
            default_and_validate(&rt("Node"), &mut bad, None)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn pod_ips_follow_pod_ip() {
        let pod = |status: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": status});
        let mut a = pod(json!({"podIP": "10.0.0.5"}));
        default_and_validate(&rt("Pod"), &mut a, None).unwrap();
        assert_eq!(a["status"]["podIPs"], json!([{"ip": "10.0.0.5"}]));
        let mut b = pod(json!({"podIPs": [{"ip": "10.0.0.6"}, {"ip": "fd00::6"}]}));
        default_and_validate(&rt("Pod"), &mut b, None).unwrap();
        assert_eq!(b["status"]["podIP"], "10.0.0.6");
        let mut c = pod(json!({"podIPs": [{"ip": "10.0.0.6"}, {"ip": "10.0.0.7"}]}));
        assert_eq!(
            default_and_validate(&rt("Pod"), &mut c, None)
                .unwrap_err()
                .code,
            422
        );
        let mut d = pod(json!({"podIPs": [{"ip": "not-an-ip"}]}));
        assert_eq!(
            default_and_validate(&rt("Pod"), &mut d, None)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn names_and_labels_are_validated() {
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("A").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(qualified_name("example.com/Key_1").is_ok());
        assert!(qualified_name("bad key").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
        let mut ns = json!({"metadata": {"name": "Bad_Name"}});
        assert_eq!(
            default_and_validate(&rt("Namespace"), &mut ns, None)
                .unwrap_err()
                .code,
            422
        );
        let mut ns = json!({"metadata": {"name": "good"}});
        default_and_validate(&rt("Namespace"), &mut ns, None).unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "good"
        );
    }

    #[test]
    fn secret_string_data_is_merged_as_base64() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"k": "hello"}});
        default_and_validate(&rt("Secret"), &mut s, None).unwrap();
        assert_eq!(s["data"]["k"], "aGVsbG8=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }
}
