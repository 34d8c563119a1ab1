//! Typed decoding of built-in kinds: every write of a built-in object goes
//! through its k8s-openapi type and back, which checks field types the way
//! kube-apiserver's decoder does, drops unknown fields, and reports them for
//! `fieldValidation` (Strict fails, Warn warns, Ignore says nothing). The
//! same types give the OpenAPI schemas the server publishes for them.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::Resource;
use k8s_openapi::api::{apps, coordination, core, events, networking, policy, rbac, scheduling};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

use super::error::{ApiError, ApiResult, Cause};
use super::reflect;
use super::resources::{Builtin, ResourceType};

fn round_trip<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// What the server does with one built-in type.
struct Ops {
    round_trip: fn(Value) -> Result<Value, String>,
    schema: fn() -> Result<Value, reflect::TraceError>,
}

fn ops<T: DeserializeOwned + Serialize + Resource>() -> Ops {
    Ops {
        round_trip: round_trip::<T>,
        schema: || reflect::schema::<T>(T::API_VERSION, T::KIND),
    }
}

/// The k8s-openapi type of each built-in kind.
fn ops_of(which: Builtin) -> Ops {
    match which {
        Builtin::Namespace => ops::<core::v1::Namespace>(),
        Builtin::Node => ops::<core::v1::Node>(),
        Builtin::Pod => ops::<core::v1::Pod>(),
        Builtin::CoreEvent => ops::<core::v1::Event>(),
        // Stored as core Events, so written through that type; clients see
        // and send the events.k8s.io form.
        Builtin::EventsV1 => Ops {
            schema: || {
                type Event = events::v1::Event;
                reflect::schema::<Event>(Event::API_VERSION, Event::KIND)
            },
            ..ops::<core::v1::Event>()
        },
        Builtin::ConfigMap => ops::<core::v1::ConfigMap>(),
        Builtin::Secret => ops::<core::v1::Secret>(),
        Builtin::ServiceAccount => ops::<core::v1::ServiceAccount>(),
        Builtin::NetworkPolicy => ops::<networking::v1::NetworkPolicy>(),
        Builtin::Lease => ops::<coordination::v1::Lease>(),
        Builtin::Crd => ops::<apiext::CustomResourceDefinition>(),
        Builtin::Deployment => ops::<apps::v1::Deployment>(),
        Builtin::DaemonSet => ops::<apps::v1::DaemonSet>(),
        Builtin::ClusterRole => ops::<rbac::v1::ClusterRole>(),
        Builtin::ClusterRoleBinding => ops::<rbac::v1::ClusterRoleBinding>(),
        Builtin::Role => ops::<rbac::v1::Role>(),
        Builtin::RoleBinding => ops::<rbac::v1::RoleBinding>(),
        Builtin::PodDisruptionBudget => ops::<policy::v1::PodDisruptionBudget>(),
        Builtin::PriorityClass => ops::<scheduling::v1::PriorityClass>(),
    }
}

/// The OpenAPI v3 schema of a built-in kind, as its type decodes it
/// (traced once per process).
pub fn schema(which: Builtin) -> Result<Value, reflect::TraceError> {
    static TRACED: LazyLock<Mutex<HashMap<Builtin, Value>>> = LazyLock::new(Default::default);
    let mut traced = TRACED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(schema) = traced.get(&which) {
        return Ok(schema.clone());
    }
    let schema = (ops_of(which).schema)()?;
    traced.insert(which, schema.clone());
    Ok(schema)
}

/// The OpenAPI v3 schema of object metadata, for custom resources.
pub fn object_meta_schema() -> Result<Value, reflect::TraceError> {
    reflect::schema::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>("", "")
}

/// The object as the built-in type `which` keeps it, and the paths of the
/// fields that type does not have.
pub fn normalize(
    rt: &ResourceType,
    which: Builtin,
    value: Value,
) -> ApiResult<(Value, Vec<String>)> {
    let input = value.clone();
    let out = (ops_of(which).round_trip)(value);
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

/// The paths of the fields of `input` that `output` (its decoded or pruned
/// form) lost.
pub fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
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
    fn every_builtin_kind_has_a_schema_with_its_metadata() {
        for rt in builtins() {
            let which = rt.builtin.unwrap();
            let s = schema(which).unwrap_or_else(|e| panic!("{}: {e}", rt.kind));
            let props = &s["properties"];
            assert_eq!(props["kind"]["type"], "string", "{}", rt.kind);
            assert_eq!(
                props["metadata"]["properties"]["labels"]["additionalProperties"]["type"], "string",
                "{}",
                rt.kind
            );
        }
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
        err.assert_refusal(422, "spec.containers[0].name: Required value");
    }
}
