//! Views of stored objects: `events.k8s.io/v1` Events are the core/v1 Events
//! under other field names (as in kube-apiserver, both APIs list the same
//! objects), and custom resources are served in every served version of their
//! CRD with only `apiVersion` changed (conversion strategy `None`).

use serde_json::{Map, Value};

use super::resources::{Builtin, ResourceType};

/// (events.k8s.io/v1 field, core/v1 field)
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, to_core: bool, api_version: &str) -> Value {
    let Some(map) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = EVENT_FIELDS.iter().find_map(|(new, core)| {
            if to_core && k == new {
                Some(*core)
            } else if !to_core && k == core {
                Some(*new)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// The stored form of an object written through `rt`.
pub fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    match rt.builtin {
        Some(Builtin::EventsV1) => rename(&obj, true, "v1"),
        _ => obj,
    }
}

/// The object as `rt` serves it.
pub fn to_view(rt: &ResourceType, stored: &Value) -> Value {
    match rt.builtin {
        Some(Builtin::EventsV1) => rename(stored, false, "events.k8s.io/v1"),
        None => {
            let mut v = stored.clone();
            v["apiVersion"] = Value::String(rt.api_version());
            v
        }
        _ => stored.clone(),
    }
}

/// Whether `to_view` changes the stored object (so cached watch lines differ).
pub fn view_differs(rt: &ResourceType, stored: &Value) -> bool {
    match rt.builtin {
        Some(Builtin::EventsV1) => true,
        None => stored["apiVersion"].as_str() != Some(&rt.api_version()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_views() {
        let v1 = builtins()
            .into_iter()
            .find(|t| t.builtin == Some(Builtin::EventsV1))
            .unwrap();
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Node", "name": "n"}, "note": "hi", "reason": "R", "reportingController": "c"});
        let core = to_storage(&v1, new.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "n");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "c");
        assert_eq!(to_view(&v1, &core), new);
    }
}
