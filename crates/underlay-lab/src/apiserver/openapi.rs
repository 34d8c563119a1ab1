//! OpenAPI v3: the `/openapi/v3` index and one document per group/version.
//!
//! The documents are minimal but valid: every resource path with its
//! operations, each tagged with `x-kubernetes-group-version-kind` and
//! `x-kubernetes-action`, and the query parameters kube-apiserver accepts
//! (notably `fieldValidation`, which is how kubectl decides to leave schema
//! validation to the server). They carry no component schemas for built-in
//! kinds, so kubectl computes strategic merge patches from its own built-in
//! types (which carry the real merge keys); custom resources carry their CRD's
//! schema.

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::resources::{Registry, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
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
    let schema_ref = format!("#/components/schemas/{}", schema_name(rt));
    json!({
        "operationId": format!("{action}{}", rt.kind),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    })
}

fn schema_name(rt: &ResourceType) -> String {
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
        let mut schema = match (&rt.schema, rt.builtin) {
            (Some(s), None) => s.clone(),
            _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]);
        if rt.builtin.is_none() {
            schemas.insert(schema_name(rt), schema);
        } else {
            // A reference target only; kubectl finds no schema for the kind
            // and uses its built-in types.
            schemas.insert(
                schema_name(rt),
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::VERSION.0, super::discovery::VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
