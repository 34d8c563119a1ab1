//! OpenAPI v3: the `/openapi/v3` index and one document per group/version.
//!
//! Every resource path with its operations, each tagged with
//! `x-kubernetes-group-version-kind` and `x-kubernetes-action`, the query
//! parameters kube-apiserver accepts (notably `fieldValidation`, which is how
//! kubectl decides to leave schema validation to the server) and the patch
//! types each accepts. Each kind's schema: for built-in kinds, the structure
//! of the type the server decodes it with (`reflect.rs`), its lists marked
//! with the strategic-merge keys the server merges them by (which kubectl
//! computes its patches from); for custom resources, their CRD's schema with
//! `apiVersion`, `kind` and `metadata` added. No descriptions, and no
//! `required` lists for built-in kinds.

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::patch::{ListStrategy, list_strategy};
use super::resources::{Registry, ResourceType};
use super::typed;

pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn hash(v: &Value) -> String {
    // FNV-1a: only needs to change when the document does.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for v in versions {
            let p = gv_path(&group, &v);
            if let Ok(doc) = document(registry, &p) {
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}),
                );
            }
        }
    }
    json!({"paths": paths})
}

fn param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
}

fn op(rt: &ResourceType, action: &str, params: &[&str]) -> Value {
    let mut parameters: Vec<Value> = params
        .iter()
        .map(|p| {
            param(
                p,
                if matches!(*p, "force" | "watch" | "allowWatchBookmarks") {
                    "boolean"
                } else {
                    "string"
                },
            )
        })
        .collect();
    parameters.push(param("pretty", "string"));
    let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(rt))});
    let mut op = json!({
        "operationId": format!("{action}{}", rt.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    });
    let body_types: &[&str] = match action {
        "post" | "put" => &["application/json", "application/yaml"],
        "patch" if rt.builtin.is_some() => &[
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ],
        "patch" => &[
            "application/apply-patch+yaml",
            "application/json-patch+json",
            "application/merge-patch+json",
        ],
        _ => &[],
    };
    if !body_types.is_empty() {
        let schema = if action == "patch" {
            json!({"type": "object"})
        } else {
            schema_ref
        };
        let content: Map<String, Value> = body_types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

pub fn schema_name(rt: &ResourceType) -> String {
    let group: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), rt.version, rt.kind)
        .trim_start_matches('.')
        .to_string()
}

const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];

pub fn document(registry: &Registry, path: &str) -> ApiResult<Value> {
    let types: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|t| gv_path(&t.group, &t.version) == path)
        .collect();
    if types.is_empty() {
        return Err(ApiError::not_found_path());
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rt in &types {
        let base = if rt.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("/{path}/{}", rt.plural)
        };
        let list = [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "sendInitialEvents",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
        ];
        paths.insert(base.clone(), json!({
            "get": op(rt, "list", &list),
            "post": op(rt, "post", WRITE),
            "delete": op(rt, "deletecollection", &["dryRun", "gracePeriodSeconds", "propagationPolicy", "labelSelector", "fieldSelector"]),
        }));
        let mut patch_params = WRITE.to_vec();
        patch_params.push("force");
        let item = json!({
            "get": op(rt, "get", &[]),
            "put": op(rt, "put", WRITE),
            "patch": op(rt, "patch", &patch_params),
            "delete": op(rt, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        });
        paths.insert(format!("{base}/{{name}}"), item.clone());
        if rt.status {
            let mut status = item;
            if let Some(m) = status.as_object_mut() {
                m.remove("delete");
            }
            paths.insert(format!("{base}/{{name}}/status"), status);
        }
        let mut schema = kind_schema(rt)?;
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]);
        schemas.insert(schema_name(rt), schema);
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::VERSION.0, super::discovery::VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The schema of one kind's objects.
fn kind_schema(rt: &ResourceType) -> ApiResult<Value> {
    let traced = |r: Result<Value, _>| {
        r.map_err(|e| ApiError::internal(format!("cannot describe {}: {e}", rt.kind)))
    };
    if let Some(which) = rt.builtin {
        let mut schema = traced(typed::schema(which))?;
        mark_lists(&rt.kind, &mut schema, "");
        return Ok(schema);
    }
    let mut schema = rt
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    // As kube-apiserver publishes them: every object has these, whether the
    // CRD's schema names them or not.
    let mut props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    props.insert("apiVersion".into(), json!({"type": "string"}));
    props.insert("kind".into(), json!({"type": "string"}));
    props.insert("metadata".into(), traced(typed::object_meta_schema())?);
    schema["type"] = json!("object");
    schema["properties"] = Value::Object(props);
    Ok(schema)
}

/// Mark each list with the strategic-merge strategy the server merges it by.
fn mark_lists(kind: &str, schema: &mut Value, path: &str) {
    if schema["type"] == "array" {
        match list_strategy(kind, path) {
            ListStrategy::Map(key) => {
                schema["x-kubernetes-patch-strategy"] = json!("merge");
                schema["x-kubernetes-patch-merge-key"] = json!(key);
            }
            ListStrategy::Set => schema["x-kubernetes-patch-strategy"] = json!("merge"),
            ListStrategy::Atomic => {}
        }
        if let Some(items) = schema.get_mut("items") {
            mark_lists(kind, items, path);
        }
        return;
    }
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, sub) in props.iter_mut() {
            let sub_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            mark_lists(kind, sub, &sub_path);
        }
    }
}
