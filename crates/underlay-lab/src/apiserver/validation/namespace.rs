//! Namespaces: the `kubernetes.io/metadata.name` label every namespace
//! carries, and the `kubernetes` finalizer of a new one.

use serde_json::{Value, json};

pub fn namespace(obj: &mut Value, old: Option<&Value>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let meta = super::super::meta::metadata_mut(obj);
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["kubernetes.io/metadata.name"] = json!(name);
    if old.is_none() {
        let spec = obj
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        if spec["finalizers"].is_null() {
            spec["finalizers"] = json!(["kubernetes"]);
        }
    }
}
