//! The end of an object's life: finalizers, cascades (a namespace's content,
//! a CRD's objects) and the garbage collector (objects whose owners are all gone).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::super::meta;
use super::super::resources::{Builtin, ResourceType};
use super::super::store::{Inner, ObjKey};
use super::ServerState;

/// Whether `obj` is being deleted and no finalizer holds it any longer.
pub(super) fn finalized(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
        && obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
}

/// Whether finalizers defer the deletion of `obj`.
pub(super) fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Remove `k` for good (with `last` as its final state), cascading to what it owns.
pub(super) fn remove_object(
    st: &ServerState,
    inner: &mut Inner,
    rt: &ResourceType,
    k: &ObjKey,
    last: Value,
) -> Arc<Value> {
    match rt.builtin {
        Some(Builtin::Namespace) => {
            let contained: Vec<(ObjKey, Arc<Value>)> = inner
                .all()
                .filter(|(ok, _)| ok.namespace == k.name && !ok.namespace.is_empty())
                .map(|(ok, o)| (ok.clone(), o.clone()))
                .collect();
            for (ok, o) in contained {
                inner.remove(&ok, (*o).clone());
            }
        }
        Some(Builtin::Crd) => {
            let storage = k.name.clone();
            let owned: Vec<(ObjKey, Arc<Value>)> = inner
                .range(&storage, None)
                .map(|(ok, o)| (ok.clone(), o.clone()))
                .collect();
            for (ok, o) in owned {
                inner.remove(&ok, (*o).clone());
            }
            st.registry.remove_custom(&storage);
        }
        _ => {}
    }
    inner.remove(k, last)
}

/// Delete objects whose only owners are gone, as the garbage collector would.
pub(super) fn collect_garbage(st: &ServerState, inner: &mut Inner, owner_uid: &str) {
    if owner_uid.is_empty() {
        return;
    }
    let live_uids: HashSet<String> = inner
        .all()
        .map(|(_, o)| meta::meta_str(o, "uid").to_string())
        .collect();
    let orphans: Vec<(ObjKey, Arc<Value>)> = inner
        .all()
        .filter(|(_, o)| {
            orphaned(
                o["metadata"]["ownerReferences"].as_array(),
                owner_uid,
                &live_uids,
            )
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (k, o) in orphans {
        let types = st.registry.storage_types();
        if let Some(rt) = types.iter().find(|t| t.storage == k.storage) {
            let uid = meta::meta_str(&o, "uid").to_string();
            remove_object(st, inner, rt, &k, (*o).clone());
            collect_garbage(st, inner, &uid);
        }
    }
}

/// Whether an object with these owner references is an orphan once the owner
/// `owner_uid` is gone: it names that owner, and no owner it names is alive.
fn orphaned(owners: Option<&Vec<Value>>, owner_uid: &str, live_uids: &HashSet<String>) -> bool {
    owners.is_some_and(|refs| {
        refs.iter().any(|r| r["uid"] == owner_uid)
            && refs
                .iter()
                .all(|r| !live_uids.contains(r["uid"].as_str().unwrap_or("")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_is_finalized_once_deleted_with_no_finalizers_left() {
        assert!(!finalized(&json!({"metadata": {}})));
        let held = json!({"metadata": {"deletionTimestamp": "t", "finalizers": ["f"]}});
        assert!(!finalized(&held) && has_finalizers(&held));
        assert!(finalized(
            &json!({"metadata": {"deletionTimestamp": "t", "finalizers": []}})
        ));
        assert!(finalized(&json!({"metadata": {"deletionTimestamp": "t"}})));
    }

    #[test]
    fn an_object_is_orphaned_only_when_every_owner_is_gone() {
        let live: HashSet<String> = ["b".to_string()].into();
        let refs = |uids: &[&str]| uids.iter().map(|u| json!({"uid": u})).collect::<Vec<_>>();
        assert!(orphaned(Some(&refs(&["a"])), "a", &live));
        assert!(!orphaned(Some(&refs(&["a", "b"])), "a", &live));
        assert!(!orphaned(Some(&refs(&["c"])), "a", &live));
        assert!(!orphaned(None, "a", &live));
    }
}
