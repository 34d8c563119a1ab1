//! The metadata every kind shares: the name's format (a DNS subdomain, a DNS
//! label for Namespaces, a path segment for Events), label keys and values,
//! and annotation keys and total size.

use serde_json::{Map, Value};

use super::super::error::Cause;
use super::super::resources::{Builtin, ResourceType};
use super::names::{dns1123_label, dns1123_subdomain, label_value, qualified_name};

/// The most bytes (keys and values) the annotations of one object may hold.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

pub fn validate_metadata(rt: &ResourceType, obj: &Value, causes: &mut Vec<Cause>) {
    validate_name(rt, obj["metadata"]["name"].as_str().unwrap_or(""), causes);
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        validate_labels(labels, causes);
    }
    if let Some(annotations) = obj["metadata"]["annotations"].as_object() {
        validate_annotations(annotations, causes);
    }
}

fn validate_name(rt: &ResourceType, name: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
        return;
    }
    let check = match rt.builtin {
        Some(Builtin::Namespace) => dns1123_label(name),
        Some(Builtin::CoreEvent) | Some(Builtin::EventsV1) => {
            // Event names are path segments, not DNS names.
            if name.contains('/') || name == "." || name == ".." {
                Err("may not contain '/'".into())
            } else {
                Ok(())
            }
        }
        _ => dns1123_subdomain(name),
    };
    if let Err(why) = check {
        causes.push(Cause::invalid("metadata.name", name, &why));
    }
}

fn validate_labels(labels: &Map<String, Value>, causes: &mut Vec<Cause>) {
    for (k, v) in labels {
        if let Err(why) = qualified_name(k) {
            causes.push(Cause::invalid("metadata.labels", k, &why));
        }
        match v.as_str() {
            Some(s) => {
                if let Err(why) = label_value(s) {
                    causes.push(Cause::invalid("metadata.labels", s, &why));
                }
            }
            None => causes.push(Cause::invalid(
                "metadata.labels",
                v,
                "label values must be strings",
            )),
        }
    }
}

fn validate_annotations(annotations: &Map<String, Value>, causes: &mut Vec<Cause>) {
    let mut total = 0;
    for (k, v) in annotations {
        total += k.len() + v.as_str().map_or(0, str::len);
        if let Err(why) = qualified_name(&k.to_lowercase()) {
            causes.push(Cause::invalid("metadata.annotations", k, &why));
        }
    }
    if total > ANNOTATIONS_MAX_BYTES {
        causes.push(Cause::invalid(
            "metadata.annotations",
            "",
            "Too long: must have at most 262144 bytes",
        ));
    }
}
