//! OpenAPI v2 (`/openapi/v2`): the schemas and operations of every OpenAPI
//! v3 document (`openapi.rs`) in Swagger 2.0 form, one document for the whole
//! server, as kube-apiserver serves it. kubectl reads it (as protobuf, see
//! `openapi_v2_pb.rs`) to validate what the server cannot check for it: the
//! items of a `kind: List`, against the definition carrying their
//! `x-kubernetes-group-version-kind`.
//!
//! What Swagger 2.0 cannot say is turned into what kube-apiserver publishes
//! instead: `nullable` is dropped, `oneOf`/`anyOf`/`not` are dropped, an
//! int-or-string is a string of format `int-or-string`, and a schema that
//! preserves unknown fields keeps only its extensions (so it accepts any value
//! and kubectl never calls a preserved field unknown).

use serde_json::{Map, Value, json};

use super::error::ApiResult;
use super::openapi;
use super::resources::Registry;

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";

/// The whole server's API as one Swagger 2.0 document.
pub fn document(registry: &Registry) -> ApiResult<Value> {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let v3 = openapi::document(registry, &openapi::gv_path(&group, &version))?;
            let schemas = v3["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten();
            for (name, schema) in schemas {
                definitions.insert(name.clone(), schema_v2(schema));
            }
            for (path, item) in v3["paths"].as_object().into_iter().flatten() {
                paths.insert(path.clone(), path_item(path, item));
            }
        }
    }
    let (major, minor) = super::discovery::VERSION;
    Ok(json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "definitions": definitions,
    }))
}

fn path_item(path: &str, item: &Value) -> Value {
    let mut out = Map::new();
    for (method, op) in item.as_object().into_iter().flatten() {
        out.insert(method.clone(), operation(op));
    }
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "type": "string", "uniqueItems": true})
        })
        .collect();
    if !params.is_empty() {
        out.insert("parameters".into(), Value::Array(params));
    }
    Value::Object(out)
}

fn operation(op: &Value) -> Value {
    let mut parameters: Vec<Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "name": p["name"],
                "in": p["in"],
                "type": p["schema"]["type"],
                "uniqueItems": p["schema"]["uniqueItems"],
            })
        })
        .collect();
    let body = op["requestBody"]["content"].as_object();
    let consumes: Vec<&String> = body.into_iter().flat_map(|c| c.keys()).collect();
    if let Some(schema) = body.and_then(|c| c.values().next()).map(|c| &c["schema"]) {
        parameters.push(
            json!({"name": "body", "in": "body", "required": true, "schema": schema_v2(schema)}),
        );
    }
    let response = &op["responses"]["200"]["content"]["application/json"]["schema"];
    let mut out = json!({
        "operationId": op["operationId"],
        "schemes": ["https"],
        "produces": ["application/json", "application/yaml"],
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "schema": schema_v2(response)}},
        "x-kubernetes-action": op["x-kubernetes-action"],
        "x-kubernetes-group-version-kind": op["x-kubernetes-group-version-kind"],
    });
    if !consumes.is_empty() {
        out["consumes"] = json!(consumes);
    }
    out
}

/// One schema in Swagger 2.0 form.
pub fn schema_v2(schema: &Value) -> Value {
    let Some(map) = schema.as_object() else {
        return schema.clone();
    };
    if map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        let kept = map
            .iter()
            .filter(|(k, _)| k.starts_with("x-") || *k == "description")
            .map(|(k, v)| (k.clone(), v.clone()));
        return Value::Object(kept.collect());
    }
    let mut out = Map::new();
    for (key, value) in map {
        let converted = match key.as_str() {
            "nullable" | "oneOf" | "anyOf" | "not" => continue,
            "$ref" => match value.as_str().and_then(|r| r.strip_prefix(V3_REF)) {
                Some(name) => json!(format!("{V2_REF}{name}")),
                None => value.clone(),
            },
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), schema_v2(v)))
                    .collect(),
            ),
            "items" | "additionalProperties" => schema_v2(value),
            "allOf" => Value::Array(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(schema_v2)
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if map.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        out.insert("type".into(), json!("string"));
        out.insert("format".into(), json!("int-or-string"));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_only_forms_become_what_kube_apiserver_publishes() {
        let cases = [
            (
                json!({"type": "string", "nullable": true}),
                json!({"type": "string"}),
            ),
            (
                json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
                json!({"x-kubernetes-int-or-string": true, "type": "string", "format": "int-or-string"}),
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer"}}, "x-kubernetes-preserve-unknown-fields": true}),
                json!({"x-kubernetes-preserve-unknown-fields": true}),
            ),
            (
                json!({"type": "array", "items": {"$ref": "#/components/schemas/v1.Pod"}}),
                json!({"type": "array", "items": {"$ref": "#/definitions/v1.Pod"}}),
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "string", "nullable": true}}),
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
            ),
        ];
        for (v3, v2) in cases {
            assert_eq!(schema_v2(&v3), v2, "{v3}");
        }
    }

    #[test]
    fn one_document_holds_every_kind_with_its_group_version_kind() {
        let registry = Registry::default();
        let doc = document(&registry).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        let cm = &doc["definitions"]["v1.ConfigMap"];
        assert_eq!(
            cm["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "ConfigMap"}])
        );
        assert_eq!(
            cm["properties"]["data"]["additionalProperties"]["type"],
            "string"
        );
        let deploy = &doc["definitions"]["apps.v1.Deployment"];
        let containers = &deploy["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
            ["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        assert!(
            patch["patch"]["consumes"]
                .as_array()
                .unwrap()
                .contains(&json!("application/strategic-merge-patch+json")),
            "{patch}"
        );
        assert_eq!(patch["parameters"][1]["name"], "name");
        let body = patch["patch"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["in"] == "body");
        assert_eq!(
            body.unwrap()["schema"],
            json!({"type": "object"}),
            "{patch}"
        );
    }
}
