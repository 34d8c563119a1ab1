//! ConfigMaps and Secrets: data keys, `immutable` objects whose data cannot
//! change, and a Secret's `stringData` merged into `data` and its `type`.

use serde_json::{Value, json};

use super::super::error::Cause;

pub fn config_map(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    data_keys(obj, "data", causes);
    data_keys(obj, "binaryData", causes);
    immutable_data(obj, old, causes);
}

pub fn secret(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    merge_string_data(obj);
    if obj["type"].as_str().unwrap_or("").is_empty() {
        obj["type"] = json!("Opaque");
    }
    if let Some(old) = old
        && old["type"] != obj["type"]
    {
        causes.push(Cause::invalid(
            "type",
            obj["type"].as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    data_keys(obj, "data", causes);
    immutable_data(obj, old, causes);
}

/// stringData is a write-only convenience merged into data (base64).
fn merge_string_data(obj: &mut Value) {
    if let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = string_data.as_object()
    {
        let data = obj
            .as_object_mut()
            .expect("object")
            .entry("data")
            .or_insert_with(|| json!({}));
        for (k, v) in sd {
            data[k] = json!(super::super::meta::base64_encode(
                v.as_str().unwrap_or("").as_bytes()
            ));
        }
    }
}

fn data_keys(obj: &Value, field: &str, causes: &mut Vec<Cause>) {
    for key in obj[field].as_object().into_iter().flat_map(|m| m.keys()) {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            causes.push(Cause::invalid(
                field.to_string(),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

fn immutable_data(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(old) = old
        && old["immutable"].as_bool() == Some(true)
    {
        for field in ["data", "binaryData", "stringData"] {
            if old[field] != obj[field] && field != "stringData" {
                causes.push(Cause::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj["immutable"].as_bool() != Some(true) {
            causes.push(Cause::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}
