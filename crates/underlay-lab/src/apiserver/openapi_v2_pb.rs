//! The protobuf form of the OpenAPI v2 document, which is the only form
//! kubectl reads: `openapi.v2.Document` of gnostic's `OpenAPIv2.proto`. Only
//! the messages and fields the server fills are declared, with gnostic's
//! field numbers (a oneof is declared as its optional fields, the same bytes
//! on the wire); values that are free-form JSON (vendor extensions,
//! defaults, enums, examples) travel as gnostic's `Any` with the value written
//! as YAML (JSON is YAML), which is how kubectl reads them back.

use prost::Message;
use serde_json::{Map, Value};

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
    #[prost(message, repeated, tag = "16")]
    pub vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

/// A free-form value, as YAML.
#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub xref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(double, tag = "6")]
    pub multiple_of: f64,
    #[prost(double, tag = "7")]
    pub maximum: f64,
    #[prost(bool, tag = "8")]
    pub exclusive_maximum: bool,
    #[prost(double, tag = "9")]
    pub minimum: f64,
    #[prost(bool, tag = "10")]
    pub exclusive_minimum: bool,
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    #[prost(string, tag = "13")]
    pub pattern: String,
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    #[prost(int64, tag = "17")]
    pub max_properties: i64,
    #[prost(int64, tag = "18")]
    pub min_properties: i64,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, tag = "21")]
    pub additional_properties: Option<AdditionalPropertiesItem>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// A oneof of `schema` and `boolean`.
#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(message, optional, boxed, tag = "1")]
    pub schema: Option<Box<Schema>>,
    #[prost(bool, optional, tag = "2")]
    pub boolean: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(string, repeated, tag = "10")]
    pub schemes: Vec<String>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// A oneof of `parameter` and a JSON reference (never sent).
#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

/// A oneof of `body_parameter` and `non_body_parameter`.
#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "1")]
    pub body_parameter: Option<BodyParameter>,
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BodyParameter {
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub r#in: String,
    #[prost(bool, tag = "4")]
    pub required: bool,
    #[prost(message, optional, tag = "5")]
    pub schema: Option<Schema>,
}

/// A oneof of the kinds of parameter besides the body (header and form
/// parameters are never sent).
#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    #[prost(message, optional, tag = "4")]
    pub path_parameter_sub_schema: Option<PathParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub r#type: String,
    #[prost(bool, tag = "19")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

/// A oneof of `response` and a JSON reference (never sent).
#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
}

/// A oneof of `schema` and a file schema (never sent).
#[derive(Clone, PartialEq, Message)]
pub struct SchemaItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
}

/// The Swagger 2.0 JSON document (`openapi_v2::document`) as protobuf.
pub fn encode(doc: &Value) -> Vec<u8> {
    Document {
        swagger: text(&doc["swagger"]),
        info: Some(Info {
            title: text(&doc["info"]["title"]),
            version: text(&doc["info"]["version"]),
        }),
        paths: Some(Paths {
            path: entries(&doc["paths"])
                .map(|(name, item)| NamedPathItem {
                    name: name.clone(),
                    value: Some(path_item(item)),
                })
                .collect(),
        }),
        definitions: Some(Definitions {
            additional_properties: named_schemas(&doc["definitions"]),
        }),
        vendor_extension: extensions(doc),
    }
    .encode_to_vec()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn entries(v: &Value) -> impl Iterator<Item = (&String, &Value)> {
    v.as_object().into_iter().flat_map(Map::iter)
}

fn any(v: &Value) -> Any {
    Any {
        yaml: v.to_string(),
    }
}

fn extensions(v: &Value) -> Vec<NamedAny> {
    entries(v)
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

fn named_schemas(v: &Value) -> Vec<NamedSchema> {
    entries(v)
        .map(|(name, s)| NamedSchema {
            name: name.clone(),
            value: Some(schema(s)),
        })
        .collect()
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_default()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}

fn flag(v: &Value) -> bool {
    v.as_bool().unwrap_or_default()
}

fn schema(s: &Value) -> Schema {
    let additional = match &s["additionalProperties"] {
        Value::Bool(b) => Some(AdditionalPropertiesItem {
            schema: None,
            boolean: Some(*b),
        }),
        Value::Object(_) => Some(AdditionalPropertiesItem {
            schema: Some(Box::new(schema(&s["additionalProperties"]))),
            boolean: None,
        }),
        _ => None,
    };
    Schema {
        xref: text(&s["$ref"]),
        format: text(&s["format"]),
        title: text(&s["title"]),
        description: text(&s["description"]),
        default: s.get("default").map(any),
        multiple_of: number(&s["multipleOf"]),
        maximum: number(&s["maximum"]),
        exclusive_maximum: flag(&s["exclusiveMaximum"]),
        minimum: number(&s["minimum"]),
        exclusive_minimum: flag(&s["exclusiveMinimum"]),
        max_length: int(&s["maxLength"]),
        min_length: int(&s["minLength"]),
        pattern: text(&s["pattern"]),
        max_items: int(&s["maxItems"]),
        min_items: int(&s["minItems"]),
        unique_items: flag(&s["uniqueItems"]),
        max_properties: int(&s["maxProperties"]),
        min_properties: int(&s["minProperties"]),
        required: texts(&s["required"]),
        r#enum: s["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .map(any)
            .collect(),
        additional_properties: additional,
        r#type: s["type"].as_str().map(|t| TypeItem {
            value: vec![t.to_string()],
        }),
        items: s.get("items").map(|i| ItemsItem {
            schema: vec![schema(i)],
        }),
        all_of: s["allOf"]
            .as_array()
            .into_iter()
            .flatten()
            .map(schema)
            .collect(),
        properties: s.get("properties").map(|p| Properties {
            additional_properties: named_schemas(p),
        }),
        read_only: flag(&s["readOnly"]),
        example: s.get("example").map(any),
        vendor_extension: extensions(s),
    }
}

fn path_item(item: &Value) -> PathItem {
    let op = |method: &str| item.get(method).map(operation);
    PathItem {
        get: op("get"),
        put: op("put"),
        post: op("post"),
        delete: op("delete"),
        patch: op("patch"),
        parameters: item["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(parameter)
            .collect(),
    }
}

fn operation(op: &Value) -> Operation {
    let response = Response {
        description: text(&op["responses"]["200"]["description"]),
        schema: Some(SchemaItem {
            schema: Some(schema(&op["responses"]["200"]["schema"])),
        }),
    };
    Operation {
        operation_id: text(&op["operationId"]),
        produces: texts(&op["produces"]),
        consumes: texts(&op["consumes"]),
        parameters: op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(parameter)
            .collect(),
        responses: Some(Responses {
            response_code: vec![NamedResponseValue {
                name: "200".into(),
                value: Some(ResponseValue {
                    response: Some(response),
                }),
            }],
        }),
        schemes: texts(&op["schemes"]),
        vendor_extension: extensions(op),
    }
}

fn parameter(p: &Value) -> ParametersItem {
    let (name, place, required) = (text(&p["name"]), text(&p["in"]), flag(&p["required"]));
    let (ty, unique_items) = (text(&p["type"]), flag(&p["uniqueItems"]));
    let mut parameter = Parameter::default();
    let mut other = NonBodyParameter::default();
    match place.as_str() {
        "body" => {
            parameter.body_parameter = Some(BodyParameter {
                name,
                r#in: place,
                required,
                schema: Some(schema(&p["schema"])),
            })
        }
        "path" => {
            other.path_parameter_sub_schema = Some(PathParameterSubSchema {
                required,
                r#in: place,
                name,
                r#type: ty,
                unique_items,
            })
        }
        _ => {
            other.query_parameter_sub_schema = Some(QueryParameterSubSchema {
                required,
                r#in: place,
                name,
                r#type: ty,
                unique_items,
            })
        }
    }
    if parameter.body_parameter.is_none() {
        parameter.non_body_parameter = Some(other);
    }
    ParametersItem {
        parameter: Some(parameter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_keep_structure_and_extensions_through_protobuf() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.34.0"},
            "paths": {"/api/v1/namespaces/{namespace}/configmaps/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": true, "type": "string"}],
                "patch": {"operationId": "patchConfigMap", "consumes": ["application/merge-patch+json"],
                    "parameters": [{"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true},
                        {"name": "body", "in": "body", "required": true, "schema": {"type": "object"}}],
                    "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/v1.ConfigMap"}}},
                    "x-kubernetes-action": "patch"}}},
            "definitions": {"v1.ConfigMap": {
                "type": "object",
                "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}},
                    "list": {"type": "array", "items": {"type": "integer"}, "x-kubernetes-patch-strategy": "merge"}},
                "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "ConfigMap"}]}},
        });
        let decoded = Document::decode(encode(&doc).as_slice()).unwrap();
        let def = &decoded.definitions.unwrap().additional_properties[0];
        assert_eq!(def.name, "v1.ConfigMap");
        let cm = def.value.as_ref().unwrap();
        assert_eq!(cm.r#type.as_ref().unwrap().value, ["object"]);
        let gvk = &cm.vendor_extension[0];
        assert_eq!(gvk.name, "x-kubernetes-group-version-kind");
        let yaml: Value = serde_yaml::from_str(&gvk.value.as_ref().unwrap().yaml).unwrap();
        assert_eq!(yaml[0]["kind"], "ConfigMap");
        let props = &cm.properties.as_ref().unwrap().additional_properties;
        let data = props
            .iter()
            .find(|p| p.name == "data")
            .unwrap()
            .value
            .clone();
        let values = data.unwrap().additional_properties.unwrap().schema.unwrap();
        assert_eq!(values.r#type.unwrap().value, ["string"]);
        let paths = decoded.paths.unwrap().path;
        let patch = paths[0].value.as_ref().unwrap().patch.as_ref().unwrap();
        assert_eq!(patch.consumes, ["application/merge-patch+json"]);
        assert_eq!(patch.parameters.len(), 2);
        assert_eq!(paths[0].value.as_ref().unwrap().parameters.len(), 1);
    }
}
