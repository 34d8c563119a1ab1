//! Admission of a write before it is stored: the object's type and identity
//! against the URL, decoding with defaulting and `fieldValidation`, the
//! namespace, Priority and ServiceAccount admission plugins, and the side
//! effects other controllers would have after a write.

use serde_json::{Value, json};

use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::resources::{Builtin, ResourceType, types_from_crd};
use super::super::schema;
use super::super::store::{Inner, ObjKey};
use super::super::typed;
use super::{Ctx, ServerState};

pub(super) fn check_type(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    let want = rt.api_version();
    match obj["apiVersion"].as_str() {
        Some(v) if v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
        _ => obj["apiVersion"] = json!(want),
    }
    match obj["kind"].as_str() {
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => obj["kind"] = json!(rt.kind),
    }
    Ok(())
}

/// What every write of a whole object to a named URL checks first: the
/// object's apiVersion, kind, name and namespace are the URL's (each filled
/// in when absent; the name only when `unnamed_ok`, as for apply).
pub(super) fn check_identity(
    rt: &ResourceType,
    ns: &str,
    name: &str,
    obj: &mut Value,
    unnamed_ok: bool,
) -> ApiResult<()> {
    check_type(rt, obj)?;
    let body_name = meta::meta_str(obj, "name");
    if body_name != name && !(unnamed_ok && body_name.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    meta::metadata_mut(obj).insert("name".into(), json!(name));
    check_namespace(rt, ns, obj)
}

pub(super) fn check_namespace(rt: &ResourceType, ns: &str, obj: &mut Value) -> ApiResult<()> {
    let m = meta::metadata_mut(obj);
    if rt.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Decode through the built-in type (if any), find the fields the type or
/// the CRD's schema does not have, and handle `fieldValidation`.
pub(super) fn normalize(
    ctx: &Ctx,
    rt: &ResourceType,
    obj: Value,
) -> ApiResult<(Value, Vec<String>)> {
    let (obj, unknown) = match (rt.builtin, &rt.schema) {
        (Some(which), _) => typed::normalize(rt, which, obj)?,
        (None, Some(schema)) => {
            let unknown = schema::pruned_fields(schema, &obj);
            (obj, unknown)
        }
        (None, None) => return Ok((obj, Vec::new())),
    };
    field_validation(
        ctx.params.get("fieldValidation").unwrap_or("Warn"),
        &unknown,
    )
    .map(|warnings| (obj, warnings))
}

/// `fieldValidation`: the warnings for the unknown fields, or the refusal.
fn field_validation(mode: &str, unknown: &[String]) -> ApiResult<Vec<String>> {
    let messages = || -> Vec<String> {
        unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect()
    };
    match mode {
        "Strict" if !unknown.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages().join(", ")
        ))),
        "Strict" | "Warn" => Ok(messages()),
        "Ignore" => Ok(Vec::new()),
        other => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
        ))),
    }
}

/// The Priority admission plugin: a pod naming a PriorityClass gets its
/// value and preemption policy; a pod naming a missing one is refused.
pub(super) fn admit_priority(inner: &Inner, name: &str, pod: &mut Value) -> ApiResult<()> {
    let class = pod["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if class.is_empty() {
        return Ok(());
    }
    let Some(pc) = inner.get(&ObjKey::new(PRIORITY_CLASSES, "", &class)) else {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: no PriorityClass with name {class} was found"
        )));
    };
    pod["spec"]["priority"] = pc["value"].clone();
    pod["spec"]["preemptionPolicy"] = pc["preemptionPolicy"].clone();
    Ok(())
}

/// The storage key of PriorityClasses.
const PRIORITY_CLASSES: &str = "priorityclasses.scheduling.k8s.io";

pub(super) fn admit_namespace(
    inner: &Inner,
    ns: &str,
    rt: &ResourceType,
    name: &str,
) -> ApiResult<()> {
    match inner.get(&ObjKey::new("namespaces", "", ns)) {
        None => Err(ApiError::namespace_not_found(ns)),
        Some(n) if n["status"]["phase"] == "Terminating" => Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            rt.group_resource()
        ))),
        Some(_) => Ok(()),
    }
}

/// The ServiceAccount admission plugin: a pod's service account must exist.
pub(super) fn admit_service_account(
    inner: &Inner,
    ns: &str,
    name: &str,
    pod: &Value,
) -> ApiResult<()> {
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    if inner.get(&ObjKey::new("serviceaccounts", ns, sa)).is_none() {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
        )));
    }
    Ok(())
}

/// Side effects of writes that other controllers would perform in a cluster.
pub(super) fn after_write(st: &ServerState, inner: &mut Inner, rt: &ResourceType, stored: &Value) {
    match rt.builtin {
        // The service account controller gives every namespace a default account.
        Some(Builtin::Namespace) => {
            let ns = meta::meta_str(stored, "name").to_string();
            let k = ObjKey::new("serviceaccounts", &ns, "default");
            if inner.get(&k).is_none() && stored["status"]["phase"] != "Terminating" {
                let sa = json!({
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": ns, "uid": meta::new_uid(), "creationTimestamp": meta::now()},
                });
                inner.put(k, sa);
            }
        }
        Some(Builtin::Crd) => st
            .registry
            .set_custom(meta::meta_str(stored, "name"), types_from_crd(stored)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn pods() -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.plural == "pods")
            .expect("pods")
    }

    #[test]
    fn field_validation_warns_refuses_or_ignores_unknown_fields() {
        let unknown = vec!["spec.x".to_string()];
        let warning = vec!["unknown field \"spec.x\"".to_string()];
        assert_eq!(
            field_validation("Warn", &unknown).ok(),
            Some(warning.clone())
        );
        assert_eq!(field_validation("Strict", &[]).ok(), Some(vec![]));
        assert_eq!(field_validation("Ignore", &unknown).ok(), Some(vec![]));
        let strict = field_validation("Strict", &unknown).unwrap_err();
        assert_eq!(
            strict.message,
            "strict decoding error: unknown field \"spec.x\""
        );
        assert_eq!(field_validation("Loud", &unknown).unwrap_err().code, 400);
    }

    #[test]
    fn identity_comes_from_the_url_and_must_agree_with_the_body() {
        let mut obj = json!({"metadata": {}});
        check_identity(&pods(), "ns", "p", &mut obj, true).expect("filled in");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["kind"], "Pod");
        assert_eq!(obj["metadata"], json!({"name": "p", "namespace": "ns"}));
        let mut unnamed = json!({"metadata": {}});
        assert!(check_identity(&pods(), "ns", "p", &mut unnamed, false).is_err());
        let mut other_kind = json!({"kind": "Node", "metadata": {"name": "p"}});
        assert!(check_identity(&pods(), "ns", "p", &mut other_kind, false).is_err());
        let mut other_ns = json!({"metadata": {"name": "p", "namespace": "x"}});
        assert!(check_identity(&pods(), "ns", "p", &mut other_ns, false).is_err());
    }
}
