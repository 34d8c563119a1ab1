//! Custom resources against their CRD's structural `openAPIV3Schema`: unknown
//! fields pruned, defaults applied, and the type, enum, required, length and
//! range constraints checked, as kube-apiserver does for custom resources.

use serde_json::{Map, Number, Value};

use super::error::Cause;

/// Prune, default and validate a custom resource in place.
pub fn prune_and_validate(schema: &Value, obj: &mut Value, causes: &mut Vec<Cause>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let props = schema["properties"].as_object();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if key == "apiVersion" || key == "kind" || key == "metadata" {
            continue;
        }
        match props.and_then(|p| p.get(&key)) {
            Some(sub) => {
                if let Some(v) = map.get_mut(&key) {
                    walk(sub, v, &key, causes);
                }
            }
            None if preserve => {}
            None => {
                map.remove(&key);
            }
        }
    }
    apply_defaults(schema, map, "", causes);
}

/// The paths of the fields of `obj` the schema prunes (its unknown fields).
pub fn pruned_fields(schema: &Value, obj: &Value) -> Vec<String> {
    let mut pruned = obj.clone();
    prune_and_validate(schema, &mut pruned, &mut Vec::new());
    let mut out = Vec::new();
    super::typed::unknown_fields(obj, &pruned, "", &mut out);
    out
}

fn apply_defaults(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, sub) in props {
            if path.is_empty() && (k == "apiVersion" || k == "kind" || k == "metadata") {
                continue;
            }
            if !map.contains_key(k)
                && let Some(d) = sub.get("default")
            {
                map.insert(k.clone(), d.clone());
            }
        }
    }
    for req in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if path.is_empty() && req == "metadata" {
            continue;
        }
        if !map.contains_key(req) {
            causes.push(Cause::required(join(path, req)));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(path: &str, v: &Value, want: &str) -> Cause {
    let have = type_name(v);
    Cause {
        reason: "FieldValueTypeInvalid",
        field: path.to_string(),
        message: format!(
            "Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""
        ),
    }
}

/// Prune, default and validate the value `v` at `path` against its schema.
fn walk(schema: &Value, v: &mut Value, path: &str, causes: &mut Vec<Cause>) {
    if !check_type(schema, v, path, causes) {
        return;
    }
    check_enum(schema, v, path, causes);
    match v {
        Value::Object(map) => walk_object(schema, map, path, causes),
        Value::Array(items) => walk_array(schema, items, path, causes),
        Value::String(s) => check_string(schema, s, path, causes),
        Value::Number(n) => check_number(schema, n, path, causes),
        _ => {}
    }
}

/// Whether the rest of the schema applies to `v`: not when `v` is null (an
/// error unless nullable or untyped), an int-or-string (which has no further
/// constraints), or of the wrong type.
fn check_type(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) -> bool {
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) && !schema["type"].is_null() {
            causes.push(type_error(
                path,
                v,
                schema["type"].as_str().unwrap_or("object"),
            ));
        }
        return false;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            causes.push(type_error(path, v, "integer or string"));
        }
        return false;
    }
    let want = schema["type"].as_str().unwrap_or("");
    let ok = match want {
        "" => true,
        "number" => v.is_number(),
        other => type_name(v) == other,
    };
    if !ok {
        causes.push(type_error(path, v, want));
    }
    ok
}

fn check_enum(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        let allowed: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "Unsupported value: {v}: supported values: {}",
                allowed.join(", ")
            ),
        });
    }
}

/// Each field walked against its property (or `additionalProperties`), the
/// unknown ones pruned unless preserved, then defaults and required fields.
fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    let props = schema["properties"].as_object();
    let additional = &schema["additionalProperties"];
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let sub = props
            .and_then(|p| p.get(&key))
            .or(additional.is_object().then_some(additional));
        match sub {
            Some(sub) => {
                if let Some(child) = map.get_mut(&key) {
                    walk(sub, child, &join(path, &key), causes);
                }
            }
            None if preserve || additional.as_bool() == Some(true) => {}
            None => {
                map.remove(&key);
            }
        }
    }
    apply_defaults(schema, map, path, causes);
}

/// The item count bounds, then each item against `items`.
fn walk_array(schema: &Value, items: &mut [Value], path: &str, causes: &mut Vec<Cause>) {
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: path.into(),
            message: format!("Too many: {}: must have at most {max} items", items.len()),
        });
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        causes.push(Cause::invalid(
            path,
            items.len(),
            &format!("should have at least {min} items"),
        ));
    }
    if schema["items"].is_object() {
        for (i, item) in items.iter_mut().enumerate() {
            walk(&schema["items"], item, &format!("{path}[{i}]"), causes);
        }
    }
}

/// `maxLength` and `minLength`, counted in characters.
fn check_string(schema: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: path.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        causes.push(Cause::invalid(
            path,
            s,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
}

/// `maximum` and `minimum`, inclusive.
fn check_number(schema: &Value, n: &Number, path: &str, causes: &mut Vec<Cause>) {
    let x = n.as_f64().unwrap_or(0.0);
    if let Some(max) = schema["maximum"].as_f64()
        && x > max
    {
        causes.push(Cause::invalid(
            path,
            n,
            &format!("{path} in body should be less than or equal to {max}"),
        ));
    }
    if let Some(min) = schema["minimum"].as_f64()
        && x < min
    {
        causes.push(Cause::invalid(
            path,
            n,
            &format!("{path} in body should be greater than or equal to {min}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["priority"], "properties": {
                "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
                "action": {"type": "string", "enum": ["Allow", "Deny", "Pass"]},
                "mode": {"type": "string", "default": "Strict"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "ports": {"type": "array", "items": {"x-kubernetes-int-or-string": true}},
            }},
        }})
    }

    #[test]
    fn unknown_fields_pruned_and_defaults_applied() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "junk": 1,
            "spec": {"priority": 5, "extra": true, "free": {"anything": [1]}, "ports": [80, "http"]}});
        let mut causes = Vec::new();
        prune_and_validate(&schema(), &mut obj, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        assert!(obj.get("junk").is_none());
        assert!(obj["spec"].get("extra").is_none());
        assert_eq!(obj["spec"]["mode"], "Strict");
        assert_eq!(obj["spec"]["free"]["anything"], json!([1]));
    }

    #[test]
    fn pruned_fields_are_the_unknown_ones() {
        let obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "junk": 1,
            "spec": {"priority": 5, "extra": true, "free": {"anything": [1]}}});
        assert_eq!(pruned_fields(&schema(), &obj), ["junk", "spec.extra"]);
    }

    #[test]
    fn schema_violations_are_reported_by_field() {
        let cases = [
            (json!({"priority": "high"}), "spec.priority"),
            (json!({"priority": 2000}), "spec.priority"),
            (json!({"priority": 1, "action": "Maybe"}), "spec.action"),
            (json!({}), "spec.priority"),
            (json!({"priority": 1, "ports": [true]}), "spec.ports[0]"),
        ];
        for (spec, field) in cases {
            let mut obj = json!({"metadata": {"name": "a"}, "spec": spec});
            let mut causes = Vec::new();
            prune_and_validate(&schema(), &mut obj, &mut causes);
            assert!(
                causes.iter().any(|c| c.field == field),
                "{field}: {causes:?}"
            );
        }
    }
}
