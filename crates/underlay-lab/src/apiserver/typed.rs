//! Typed decoding of built-in kinds: every write of a built-in object goes
//! through its k8s-openapi type and back, which checks field types the way
//! kube-apiserver's decoder does, drops unknown fields, and reports them for
//! `fieldValidation` (Strict fails, Warn warns, Ignore says nothing).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::{apps, coordination, core, networking, policy, rbac, scheduling};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

use super::error::{ApiError, ApiResult, Cause};
use super::resources::{Builtin, ResourceType};

fn round_trip<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// The object as the built-in type `which` keeps it, and the paths of the
/// fields that type does not have.
pub fn normalize(
    rt: &ResourceType,
    which: Builtin,
    value: Value,
) -> ApiResult<(Value, Vec<String>)> {
    let input = value.clone();
    let out = match which {
        Builtin::Namespace => round_trip::<core::v1::Namespace>(value),
        Builtin::Node => round_trip::<core::v1::Node>(value),
        Builtin::Pod => round_trip::<core::v1::Pod>(value),
        Builtin::CoreEvent | Builtin::EventsV1 => round_trip::<core::v1::Event>(value),
        Builtin::ConfigMap => round_trip::<core::v1::ConfigMap>(value),
        Builtin::Secret => round_trip::<core::v1::Secret>(value),
        Builtin::ServiceAccount => round_trip::<core::v1::ServiceAccount>(value),
        Builtin::NetworkPolicy => round_trip::<networking::v1::NetworkPolicy>(value),
        Builtin::Lease => round_trip::<coordination::v1::Lease>(value),
        Builtin::Crd => round_trip::<apiext::CustomResourceDefinition>(value),
        Builtin::Deployment => round_trip::<apps::v1::Deployment>(value),
        Builtin::DaemonSet => round_trip::<apps::v1::DaemonSet>(value),
        Builtin::ClusterRole => round_trip::<rbac::v1::ClusterRole>(value),
        Builtin::ClusterRoleBinding => round_trip::<rbac::v1::ClusterRoleBinding>(value),
        Builtin::Role => round_trip::<rbac::v1::Role>(value),
        Builtin::RoleBinding => round_trip::<rbac::v1::RoleBinding>(value),
        Builtin::PodDisruptionBudget => round_trip::<policy::v1::PodDisruptionBudget>(value),
        Builtin::PriorityClass => round_trip::<scheduling::v1::PriorityClass>(value),
    };
    let out = out.map_err(|e| decode_error(rt, &input, &e))?;
    let mut unknown = Vec::new();
    unknown_fields(&input, &out, "", &mut unknown);
    Ok((out, unknown))
}

/// A missing required field is a validation failure (422) as on a real
/// server, where it decodes to the zero value and validation rejects it; any
/// other decoding failure is a malformed request (400).
fn decode_error(rt: &ResourceType, input: &Value, e: &str) -> ApiError {
    let name = input["metadata"]["name"].as_str().unwrap_or("");
    if let Some(rest) = e.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        return ApiError::invalid(rt, name, &[Cause::required(field)]);
    }
    ApiError::bad_request(format!(
        "the object provided is unrecognized or malformed: {e}"
    ))
}

fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None => out.push(p),
                    Some(ov) => unknown_fields(v, ov, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;
    use serde_json::json;

    fn pods() -> ResourceType {
        builtins().into_iter().find(|t| t.kind == "Pod").unwrap()
    }

    #[test]
    fn unknown_fields_are_dropped_and_reported() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imagez": "x"}]}});
        let (out, unknown) = normalize(&pods(), Builtin::Pod, pod).unwrap();
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus".to_string(),
                "spec.containers[0].imagez".to_string()
            ]
        );
        assert!(out["metadata"].get("bogus").is_none());
        assert_eq!(out["spec"]["containers"][0]["image"], "i");
    }

    #[test]
    fn wrong_types_are_bad_requests_and_missing_fields_decode_empty() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}});
        assert_eq!(normalize(&pods(), Builtin::Pod, pod).unwrap_err().code, 400);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"image": "i"}]}});
        let (out, _) = normalize(&pods(), Builtin::Pod, pod).unwrap();
        assert_eq!(out["spec"]["containers"][0]["name"], "");
        let mut out = out;
        let err = crate::apiserver::validation::default_and_validate(&pods(), &mut out, None)
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .contains("spec.containers[0].name: Required value"),
            "{}",
            err.message
        );
    }
}
