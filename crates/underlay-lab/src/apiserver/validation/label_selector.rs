//! Label selectors as objects carry them (`matchLabels`, `matchExpressions`):
//! the keys, values and operators kube-apiserver accepts.

use serde_json::Value;

use super::super::error::Cause;
use super::names::{label_value, qualified_name};

pub fn validate_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(labels) = sel["matchLabels"].as_object() {
        for (k, v) in labels {
            if let Err(why) = qualified_name(k) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), k, &why));
            }
            if let Err(why) = label_value(v.as_str().unwrap_or("")) {
                causes.push(Cause::invalid(format!("{path}.matchLabels"), v, &why));
            }
        }
    }
    for (i, expr) in sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = expr["values"].as_array().map_or(0, Vec::len);
        match expr["operator"].as_str().unwrap_or("") {
            "In" | "NotIn" if values == 0 => {
                causes.push(Cause::required(format!("{p}.values")));
            }
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::unsupported(
                format!("{p}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
        if let Err(why) = qualified_name(expr["key"].as_str().unwrap_or("")) {
            causes.push(Cause::invalid(
                format!("{p}.key"),
                expr["key"].as_str().unwrap_or(""),
                &why,
            ));
        }
    }
}
