//! The three PATCH formats besides apply: JSON patch (RFC 6902), JSON merge
//! patch (RFC 7386) and strategic merge patch. Strategic merge is driven by a
//! table of list strategies per kind and field path (the `patchStrategy` /
//! `patchMergeKey` tags of the Kubernetes API types), and understands the
//! `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and `$setElementOrder`
//! directives kubectl sends.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced as a whole (the default).
    Atomic,
    /// A set of scalars, merged by value.
    Set,
    /// Objects merged by the value of one key field.
    Map(&'static str),
}

/// The list strategy of the field at `path` (dotted, without indices) in `kind`.
pub fn list_strategy(kind: &str, path: &str) -> ListStrategy {
    use ListStrategy::*;
    match path {
        "metadata.finalizers" => return Set,
        "metadata.ownerReferences" => return Map("uid"),
        _ => {}
    }
    // A workload's pod template merges as a Pod does.
    if matches!(
        kind,
        "Deployment" | "DaemonSet" | "ReplicaSet" | "StatefulSet" | "Job"
    ) && let Some(rest) = path.strip_prefix("spec.template.")
    {
        return list_strategy("Pod", rest);
    }
    match kind {
        "Deployment" | "DaemonSet" | "PodDisruptionBudget" => match path {
            "status.conditions" => Map("type"),
            _ => Atomic,
        },
        "Pod" => {
            let container_path = [
                "spec.containers.",
                "spec.initContainers.",
                "spec.ephemeralContainers.",
            ]
            .iter()
            .find_map(|p| path.strip_prefix(p));
            if let Some(rest) = container_path {
                return match rest {
                    "ports" => Map("containerPort"),
                    "env" => Map("name"),
                    "volumeMounts" => Map("mountPath"),
                    "volumeDevices" => Map("devicePath"),
                    "resizePolicy" => Atomic,
                    _ => Atomic,
                };
            }
            match path {
                "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers" => {
                    Map("name")
                }
                "spec.volumes"
                | "spec.imagePullSecrets"
                | "spec.resourceClaims"
                | "spec.schedulingGates" => Map("name"),
                "spec.hostAliases" => Map("ip"),
                "spec.topologySpreadConstraints" => Map("topologyKey"),
                "status.conditions" => Map("type"),
                "status.podIPs" | "status.hostIPs" => Map("ip"),
                "status.resourceClaimStatuses" => Map("name"),
                _ => Atomic,
            }
        }
        "Node" => match path {
            "spec.podCIDRs" => Set,
            "status.conditions" | "status.addresses" => Map("type"),
            _ => Atomic,
        },
        "Namespace" => match path {
            "status.conditions" => Map("type"),
            _ => Atomic,
        },
        "ServiceAccount" => match path {
            "secrets" => Map("name"),
            _ => Atomic,
        },
        _ => Atomic,
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, body: &[u8]) -> ApiResult<()> {
    let patch: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the json patch is malformed: {e}")))?;
    json_patch::patch(doc, &patch).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the json patch cannot be applied: {e}"),
        )
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &mut Value, body: &[u8]) -> ApiResult<()> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the merge patch is malformed: {e}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "the merge patch must be a JSON object",
        ));
    }
    json_patch::merge(doc, &patch);
    Ok(())
}

/// Strategic merge patch.
pub fn strategic_merge_patch(doc: &mut Value, body: &[u8], kind: &str) -> ApiResult<()> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the strategic merge patch is malformed: {e}"))
    })?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad_request(
            "the strategic merge patch must be a JSON object",
        ));
    };
    let original = std::mem::take(doc);
    *doc = merge_map(original, patch, "", kind)?;
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn merge_map(
    original: Value,
    mut patch: Map<String, Value>,
    path: &str,
    kind: &str,
) -> ApiResult<Value> {
    let mut base = match original {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    match patch.remove("$patch") {
        Some(Value::String(d)) if d == "replace" => {
            strip_directives(&mut patch);
            return Ok(Value::Object(patch));
        }
        Some(Value::String(d)) if d == "delete" => return Ok(Value::Null),
        Some(Value::String(d)) if d == "merge" => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other} in map at {path}"
            )));
        }
        None => {}
    }
    let retain = patch.remove("$retainKeys");
    let keys: Vec<String> = patch.keys().cloned().collect();
    // Directives on sibling lists first, so the merge below sees their result.
    for key in &keys {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = patch.remove(key).unwrap_or_default();
            if let Some(list) = base.get_mut(field).and_then(Value::as_array_mut) {
                let remove = remove.as_array().cloned().unwrap_or_default();
                list.retain(|v| !remove.contains(v));
            }
        } else if key.starts_with("$setElementOrder/") {
            // Ordering hints only; merged lists keep the server's order.
            patch.remove(key);
        } else if key.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive {key} at {path}"
            )));
        }
    }
    for (key, value) in patch {
        let p = join(path, &key);
        if value.is_null() {
            base.remove(&key);
            continue;
        }
        let current = base.remove(&key).unwrap_or(Value::Null);
        let merged = match value {
            Value::Object(pm) => {
                let merged = merge_map(current, pm, &p, kind)?;
                if merged.is_null() {
                    continue;
                }
                merged
            }
            Value::Array(items) => merge_list(current, items, &p, kind)?,
            scalar => scalar,
        };
        base.insert(key, merged);
    }
    if let Some(Value::Array(keep)) = retain {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        base.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Value::Object(base))
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    for v in map.values_mut() {
        match v {
            Value::Object(m) => strip_directives(m),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(m) = item {
                        strip_directives(m);
                    }
                }
            }
            _ => {}
        }
    }
}

fn merge_list(current: Value, items: Vec<Value>, path: &str, kind: &str) -> ApiResult<Value> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list with the rest.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let mut rest: Vec<Value> = items
            .into_iter()
            .filter(|i| i.get("$patch").is_none())
            .collect();
        for item in &mut rest {
            if let Value::Object(m) = item {
                strip_directives(m);
            }
        }
        return Ok(Value::Array(rest));
    }
    let mut base = match current {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    match list_strategy(kind, path) {
        ListStrategy::Atomic => {
            let mut items = items;
            for item in &mut items {
                if let Value::Object(m) = item {
                    strip_directives(m);
                }
            }
            Ok(Value::Array(items))
        }
        ListStrategy::Set => {
            for item in items {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
            Ok(Value::Array(base))
        }
        ListStrategy::Map(key) => {
            for item in items {
                let Value::Object(mut pm) = item else {
                    return Err(ApiError::bad_request(format!(
                        "{path}: list items must be objects to merge by {key}"
                    )));
                };
                let Some(k) = pm.get(key).cloned() else {
                    return Err(ApiError::bad_request(format!(
                        "map: {pm:?} does not contain declared merge key: {key}"
                    )));
                };
                let pos = base.iter().position(|e| e.get(key) == Some(&k));
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(pos) = pos {
                        base.remove(pos);
                    }
                    continue;
                }
                pm.remove("$patch");
                match pos {
                    Some(pos) => {
                        let existing = std::mem::take(&mut base[pos]);
                        base[pos] = merge_map(existing, pm, path, kind)?;
                    }
                    None => base.push(merge_map(Value::Null, pm, path, kind)?),
                }
            }
            Ok(Value::Array(base))
        }
    }
}

/// Merge `applied` into `live` with the same list semantics (server-side apply).
pub fn structural_merge(live: Value, applied: &Value, path: &str, kind: &str) -> Value {
    match applied {
        Value::Object(am) => {
            let mut base = match live {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in am {
                let current = base.remove(k).unwrap_or(Value::Null);
                base.insert(
                    k.clone(),
                    structural_merge(current, v, &join(path, k), kind),
                );
            }
            Value::Object(base)
        }
        Value::Array(items) => match list_strategy(kind, path) {
            ListStrategy::Atomic => applied.clone(),
            ListStrategy::Set => {
                let mut base = live.as_array().cloned().unwrap_or_default();
                for item in items {
                    if !base.contains(item) {
                        base.push(item.clone());
                    }
                }
                Value::Array(base)
            }
            ListStrategy::Map(key) => {
                let mut base = live.as_array().cloned().unwrap_or_default();
                for item in items {
                    let k = item.get(key);
                    match base.iter().position(|e| e.get(key) == k) {
                        Some(pos) => {
                            let existing = std::mem::take(&mut base[pos]);
                            base[pos] = structural_merge(existing, item, path, kind);
                        }
                        None => base.push(item.clone()),
                    }
                }
                Value::Array(base)
            }
        },
        scalar => scalar.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, doc: Value, patch: Value) -> Value {
        let mut doc = doc;
        strategic_merge_patch(&mut doc, patch.to_string().as_bytes(), kind).unwrap();
        doc
    }

    #[test]
    fn node_conditions_merge_by_type() {
        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}});
        let out = smp(
            "Node",
            node,
            json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated"}]}}),
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([
            {"type": "Ready", "status": "True"},
            {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated"}])
        );
    }

    #[test]
    fn pod_ips_merge_by_ip_and_delete_directive_removes() {
        let pod = json!({"status": {"podIPs": [{"ip": "10.0.0.1"}], "conditions": [{"type": "Ready", "status": "False"}]}});
        let out = smp(
            "Pod",
            pod,
            json!({"status": {"podIPs": [{"ip": "fd00::1"}], "conditions": [{"type": "Ready", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["status"]["podIPs"],
            json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}])
        );
        assert_eq!(out["status"]["conditions"], json!([]));
    }

    #[test]
    fn atomic_lists_replace_and_nulls_delete() {
        let np = json!({"spec": {"ingress": [{"from": [{"podSelector": {}}]}], "podSelector": {"matchLabels": {"a": "b"}}}});
        let out = smp(
            "NetworkPolicy",
            np,
            json!({"spec": {"ingress": [], "podSelector": {"matchLabels": {"a": null}}}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"ingress": [], "podSelector": {"matchLabels": {}}}})
        );
    }

    #[test]
    fn directives_replace_retain_and_delete_from_primitive_list() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}, "spec": {"podCIDRs": ["10.0.0.0/24"]}});
        let out = smp(
            "Node",
            doc.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"], "labels": {"$patch": "replace", "z": "3"}}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({"z": "3"}));
        let out = smp(
            "Node",
            doc,
            json!({"metadata": {"$retainKeys": ["labels"], "labels": {"w": "0"}}, "$setElementOrder/spec": []}),
        );
        assert!(out["metadata"].get("finalizers").is_none());
        assert_eq!(out["metadata"]["labels"]["w"], "0");
    }

    #[test]
    fn list_replace_directive_and_containers_by_name() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "2"}]}});
        let out = smp(
            "Pod",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a", "image": "9", "env": [{"name": "Y", "value": "2"}]}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "9");
        assert_eq!(
            out["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
        let out = smp(
            "Pod",
            pod,
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "3"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "3"}])
        );
    }

    #[test]
    fn malformed_patches_are_bad_requests() {
        let mut doc = json!({});
        assert_eq!(
            strategic_merge_patch(&mut doc, b"[1]", "Pod")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            strategic_merge_patch(&mut doc, b"{", "Pod")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(merge_patch(&mut doc, b"3").unwrap_err().code, 400);
        assert_eq!(json_patch(&mut doc, b"{}").unwrap_err().code, 400);
        assert_eq!(
            json_patch(&mut doc, br#"[{"op":"remove","path":"/nope"}]"#)
                .unwrap_err()
                .code,
            422
        );
        let mut node = json!({"status": {"conditions": []}});
        assert_eq!(
            strategic_merge_patch(
                &mut node,
                br#"{"status":{"conditions":[{"status":"x"}]}}"#,
                "Node"
            )
            .unwrap_err()
            .code,
            400
        );
    }
}
