//! Custom resources against their CRD's structural `openAPIV3Schema`: unknown
//! fields and nulls the schema does not allow pruned, defaults applied, and
//! the type, enum, required, length, range, item and property count,
//! pattern and set constraints checked, then the `x-kubernetes-validations`
//! rules evaluated (`cel.rs`), as kube-apiserver does for custom resources.
//! [`rule_errors`] is the check kube-apiserver makes when a CRD is written:
//! every rule and pattern must compile.

use serde_json::{Map, Number, Value};

use super::cel;
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
    check_rules(schema, v, path, causes);
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
            // A null the schema does not allow is dropped, not refused.
            Some(sub)
                if map[&key].is_null()
                    && sub["nullable"].as_bool() != Some(true)
                    && !sub["type"].is_null() =>
            {
                map.remove(&key);
            }
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
    check_property_count(schema, map.len(), path, causes);
}

/// `minProperties` and `maxProperties`.
fn check_property_count(schema: &Value, count: usize, path: &str, causes: &mut Vec<Cause>) {
    let count = count as u64;
    if let Some(max) = schema["maxProperties"].as_u64()
        && count > max
    {
        causes.push(Cause::invalid_value(
            path,
            &Value::from(count),
            &format!("{path} in body should have at most {max} properties"),
        ));
    }
    if let Some(min) = schema["minProperties"].as_u64()
        && count < min
    {
        causes.push(Cause::invalid_value(
            path,
            &Value::from(count),
            &format!("{path} in body should have at least {min} properties"),
        ));
    }
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
    if schema["x-kubernetes-list-type"] == "set" {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                let shown = item
                    .as_str()
                    .map_or_else(|| item.to_string(), str::to_string);
                causes.push(Cause::duplicate(format!("{path}[{i}]"), shown));
            }
        }
    }
}

/// `maxLength` and `minLength`, counted in characters, and `pattern`.
fn check_string(schema: &Value, s: &str, path: &str, causes: &mut Vec<Cause>) {
    if let Some(pattern) = schema["pattern"].as_str() {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => causes.push(Cause::invalid(
                path,
                s,
                &format!("{path} in body should match '{pattern}'"),
            )),
            Err(e) => causes.push(Cause::invalid(
                path,
                s,
                &format!("the schema's pattern does not compile: {e}"),
            )),
        }
    }
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
        causes.push(Cause::invalid_value(
            path,
            &Value::Number(n.clone()),
            &format!("{path} in body should be less than or equal to {max}"),
        ));
    }
    if let Some(min) = schema["minimum"].as_f64()
        && x < min
    {
        causes.push(Cause::invalid_value(
            path,
            &Value::Number(n.clone()),
            &format!("{path} in body should be greater than or equal to {min}"),
        ));
    }
}

/// The `x-kubernetes-validations` rules of the schema against `v`: a rule
/// that does not hold is reported with its message (or the rule itself),
/// one that cannot be evaluated with why, both as kube-apiserver words them.
fn check_rules(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap_or("");
        let why = match cel::compile(text).and_then(|p| p.holds(v)) {
            Ok(true) => continue,
            Ok(false) => match rule["message"].as_str() {
                Some(m) if !m.is_empty() => m.to_string(),
                _ => format!("failed rule: {text}"),
            },
            Err(e) => format!("rule evaluation error: {text}: {e}"),
        };
        // kube-apiserver shows the value's type, not the value.
        causes.push(Cause::invalid(path, type_name(v), &why));
    }
}

/// The failures kube-apiserver reports when a CRD with this schema is
/// written: every `x-kubernetes-validations` rule must compile (within the
/// subset `cel.rs` evaluates, with only `rule` and `message` set) and
/// every `pattern` must be a regular expression. `path` is the schema's
/// field path in the CRD.
pub fn rule_errors(schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (i, rule) in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{path}.x-kubernetes-validations[{i}]");
        let text = rule["rule"].as_str().unwrap_or("");
        if text.is_empty() {
            causes.push(Cause::required(format!("{at}.rule")));
        } else if let Err(e) = cel::compile(text) {
            let why = format!("compilation failed: {e}");
            causes.push(Cause::invalid(format!("{at}.rule"), text, &why));
        }
        for key in [
            "messageExpression",
            "fieldPath",
            "reason",
            "optionalOldSelf",
        ] {
            if rule.get(key).is_some() {
                let why = "not supported by the lab API server (rule and message only)";
                causes.push(Cause::forbidden(format!("{at}.{key}"), why));
            }
        }
    }
    if let Some(pattern) = schema["pattern"].as_str()
        && let Err(e) = regex::Regex::new(pattern)
    {
        let why = format!("must be a valid regular expression: {e}");
        causes.push(Cause::invalid(format!("{path}.pattern"), pattern, &why));
    }
    for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
        rule_errors(sub, &format!("{path}.properties[{name}]"), causes);
    }
    for key in ["items", "additionalProperties"] {
        if schema[key].is_object() {
            rule_errors(&schema[key], &format!("{path}.{key}"), causes);
        }
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

    /// A schema using the keywords ClusterNetworkPolicy's CRD relies on.
    fn one_of_schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "subject": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
                "namespaces": {"type": "object"}, "pods": {"type": "object"}}},
            "networks": {"type": "array", "minItems": 1, "x-kubernetes-list-type": "set",
                "items": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "isCIDR(self)", "message": "not a CIDR"}]}},
            "names": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+\\.example$"}},
            "range": {"type": "object", "properties": {
                    "start": {"type": "integer"}, "end": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.start < self.end", "message": "start must be below end"}]},
        }}}})
    }

    fn causes_of(spec: Value) -> Vec<Cause> {
        let mut obj = json!({"metadata": {"name": "a"}, "spec": spec});
        let mut causes = Vec::new();
        prune_and_validate(&one_of_schema(), &mut obj, &mut causes);
        causes
    }

    #[test]
    fn what_the_one_of_schema_accepts() {
        let spec = json!({"subject": {"pods": {}}, "networks": ["10.0.0.0/8", "fd00::/8"],
            "names": ["a.example"], "range": {"start": 1, "end": 2}});
        assert_eq!(causes_of(spec), []);
    }

    #[test]
    fn property_counts_item_counts_patterns_sets_and_rules_are_checked() {
        let cases = [
            (
                json!({"subject": {}}),
                "spec.subject",
                "should have at least 1 properties",
            ),
            (
                json!({"subject": {"pods": {}, "namespaces": {}}}),
                "spec.subject",
                "should have at most 1 properties",
            ),
            (
                json!({"networks": []}),
                "spec.networks",
                "should have at least 1 items",
            ),
            (
                json!({"networks": ["10.0.0.0/8", "10.0.0.0/8"]}),
                "spec.networks[1]",
                "Duplicate value: \"10.0.0.0/8\"",
            ),
            (
                json!({"networks": ["10.0.0.0/33"]}),
                "spec.networks[0]",
                "Invalid value: \"string\": not a CIDR",
            ),
            (
                json!({"names": ["A.example"]}),
                "spec.names[0]",
                "spec.names[0] in body should match '^[a-z]+\\.example$'",
            ),
            (
                json!({"range": {"start": 5, "end": 5}}),
                "spec.range",
                "Invalid value: \"object\": start must be below end",
            ),
        ];
        for (spec, field, message) in cases {
            let causes = causes_of(spec.clone());
            assert!(
                causes
                    .iter()
                    .any(|c| c.field == field && c.message.contains(message)),
                "{spec}: want {field}: {message}, got {causes:?}"
            );
        }
    }

    #[test]
    fn a_null_field_is_pruned_unless_nullable() {
        let mut obj = json!({"metadata": {"name": "a"}, "spec": {"subject": {"pods": {}, "namespaces": null}}});
        let mut causes = Vec::new();
        prune_and_validate(&one_of_schema(), &mut obj, &mut causes);
        assert_eq!(causes, []);
        assert_eq!(obj["spec"]["subject"], json!({"pods": {}}));
    }
}
