//! The `status` subresource: what a new object's status starts as, and which
//! half of an object a write to the main resource or to `/status` replaces.

use serde_json::{Value, json};

use super::super::apply::Scope;
use super::super::meta;
use super::super::resources::{Builtin, ResourceType};
use super::update::Managers;

/// The status a new object starts with, whatever the client sent.
pub(super) fn status_on_create(rt: &ResourceType, obj: &mut Value) {
    match rt.builtin {
        Some(Builtin::Pod) => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
        Some(Builtin::Namespace) => obj["status"] = json!({"phase": "Active"}),
        // Their controllers write status; a new object starts with the zero
        // status whatever the client sent.
        Some(Builtin::Deployment | Builtin::DaemonSet | Builtin::PodDisruptionBudget) => {
            obj["status"] = json!({})
        }
        None if rt.status => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        _ => {}
    }
}

/// The object a write in `scope` leaves: `/status` replaces only the status
/// (and, from apply, the managers); the main resource of a type with a
/// status subresource keeps the stored status. A null status is dropped.
pub(super) fn merge_by_scope(
    scope: Scope,
    old: &Value,
    mut new: Value,
    managers: Managers,
) -> Value {
    let mut merged = match scope {
        Scope::Status => {
            let mut merged = old.clone();
            merged["status"] = new["status"].take();
            if managers == Managers::FromApply {
                let mf = meta::metadata_mut(&mut new).remove("managedFields");
                let m = meta::metadata_mut(&mut merged);
                match mf {
                    Some(mf) => m.insert("managedFields".into(), mf),
                    None => m.remove("managedFields"),
                };
            }
            merged
        }
        Scope::Main {
            status_subresource: true,
        } => {
            new["status"] = old["status"].clone();
            new
        }
        Scope::Main { .. } => new,
    };
    if merged["status"].is_null()
        && let Some(m) = merged.as_object_mut()
    {
        m.remove("status");
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str =
        r#"{"spec": {"a": 1}, "status": {"s": 1}, "metadata": {"managedFields": [1]}}"#;
    const NEW: &str =
        r#"{"spec": {"a": 2}, "status": {"s": 2}, "metadata": {"managedFields": [2]}}"#;

    fn check(scope: Scope, managers: Managers, expect: Value) {
        let old: Value = serde_json::from_str(OLD).expect("json");
        let new: Value = serde_json::from_str(NEW).expect("json");
        assert_eq!(merge_by_scope(scope, &old, new, managers), expect);
    }

    #[test]
    fn a_status_write_changes_only_the_status() {
        let only_status =
            json!({"spec": {"a": 1}, "status": {"s": 2}, "metadata": {"managedFields": [1]}});
        check(Scope::Status, Managers::Track, only_status);
        let with_managers =
            json!({"spec": {"a": 1}, "status": {"s": 2}, "metadata": {"managedFields": [2]}});
        check(Scope::Status, Managers::FromApply, with_managers);
    }

    #[test]
    fn a_main_write_keeps_the_status_only_with_a_status_subresource() {
        let kept =
            json!({"spec": {"a": 2}, "status": {"s": 1}, "metadata": {"managedFields": [2]}});
        check(
            Scope::Main {
                status_subresource: true,
            },
            Managers::Track,
            kept,
        );
        let replaced: Value = serde_json::from_str(NEW).expect("json");
        check(
            Scope::Main {
                status_subresource: false,
            },
            Managers::Track,
            replaced,
        );
    }

    #[test]
    fn a_null_status_is_dropped() {
        let old = json!({"spec": {}});
        let merged = merge_by_scope(
            Scope::Main {
                status_subresource: true,
            },
            &old,
            json!({"spec": {}}),
            Managers::Track,
        );
        assert_eq!(merged, json!({"spec": {}}));
    }
}
