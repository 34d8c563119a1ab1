//! Server-side apply and `metadata.managedFields`.
//!
//! Field ownership is tracked per manager as sets of field paths in the
//! `FieldsV1` encoding (`f:name`, `k:{"key":"value"}` for list elements merged
//! by key, `v:value` for set members, `.` for an element itself). An apply
//! owns exactly the fields in the applied configuration: it reports a 409
//! conflict when another manager owns a field it would change (unless forced,
//! which takes the field over), removes fields it applied before and no longer
//! applies (unless someone else still owns them), and is a no-op when nothing
//! changes. Every other write (create, update, patch) takes ownership of the
//! fields it changed, without conflicts, as kube-apiserver does.
//!
//! List semantics come from the same table as strategic merge patch, so a
//! list merges by key in apply exactly when it does in a strategic merge.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};
use super::patch::{ListStrategy, list_strategy, structural_merge};
use super::resources::ResourceType;

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// Which part of an object a write owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything but `status` (when the type has a status subresource).
    Main { status_subresource: bool },
    /// Only `status`.
    Status,
}

impl Scope {
    pub fn new(rt: &ResourceType, subresource: Option<&str>) -> Self {
        if subresource == Some("status") {
            Scope::Status
        } else {
            Scope::Main {
                status_subresource: rt.status,
            }
        }
    }

    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Status => Some("status"),
            Scope::Main { .. } => None,
        }
    }

    fn includes_top(self, key: &str) -> bool {
        match self {
            Scope::Status => key == "status",
            Scope::Main { status_subresource } => {
                key != "apiVersion" && key != "kind" && !(status_subresource && key == "status")
            }
        }
    }
}

const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

fn field_set(obj: &Value, kind: &str, scope: Scope) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return set;
    };
    for (k, v) in map {
        if !scope.includes_top(k) {
            continue;
        }
        if k == "metadata" {
            for (mk, mv) in v.as_object().into_iter().flatten() {
                if SYSTEM_META.contains(&mk.as_str()) {
                    continue;
                }
                collect(
                    mv,
                    &mut vec!["f:metadata".into(), format!("f:{mk}")],
                    &format!("metadata.{mk}"),
                    kind,
                    &mut set,
                );
            }
            continue;
        }
        collect(v, &mut vec![format!("f:{k}")], k, kind, &mut set);
    }
    set
}

fn element_key(key: &str, item: &Value) -> Option<String> {
    item.get(key).map(|k| format!("k:{}", json!({key: k})))
}

fn collect(v: &Value, path: &mut Path, dotted: &str, kind: &str, set: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                collect(child, path, &format!("{dotted}.{k}"), kind, set);
                path.pop();
            }
        }
        Value::Array(items) => match list_strategy(kind, dotted) {
            ListStrategy::Map(key) if items.iter().all(|i| i.get(key).is_some()) => {
                for item in items {
                    let Some(elem) = element_key(key, item) else {
                        continue;
                    };
                    path.push(elem);
                    set.insert(path.clone());
                    if let Some(m) = item.as_object() {
                        for (k, child) in m {
                            path.push(format!("f:{k}"));
                            collect(child, path, &format!("{dotted}.{k}"), kind, set);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            ListStrategy::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            _ => {
                set.insert(path.clone());
            }
        },
        _ => {
            set.insert(path.clone());
        }
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            node = node
                .entry(elem.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fields nodes are objects");
        }
    }
    for path in set {
        let mut node = &mut root;
        for elem in path {
            node = node
                .get_mut(elem)
                .and_then(Value::as_object_mut)
                .expect("inserted above");
        }
        if !node.is_empty() && !node.contains_key(".") {
            node.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

fn from_fields_v1(tree: &Value, path: &mut Path, set: &mut FieldSet) {
    for (k, v) in tree.as_object().into_iter().flatten() {
        if k == "." {
            set.insert(path.clone());
            continue;
        }
        path.push(k.clone());
        if v.as_object().is_none_or(|m| m.is_empty()) {
            set.insert(path.clone());
        } else {
            from_fields_v1(v, path, set);
        }
        path.pop();
    }
}

fn step<'a>(v: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(name) = elem.strip_prefix("f:") {
        return v.get(name);
    }
    if let Some(key) = elem.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(key).ok()?;
        return v
            .as_array()?
            .iter()
            .find(|item| want.iter().all(|(k, val)| item.get(k) == Some(val)));
    }
    if let Some(value) = elem.strip_prefix("v:") {
        let want: Value = serde_json::from_str(value).ok()?;
        return v.as_array()?.iter().find(|item| **item == want);
    }
    None
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, elem| step(cur, elem))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for elem in parents {
        let next: Option<&mut Value> = if let Some(name) = elem.strip_prefix("f:") {
            cur.get_mut(name)
        } else {
            let found = step(cur, elem).cloned();
            match (found, cur.as_array_mut()) {
                (Some(found), Some(items)) => items.iter_mut().find(|i| **i == found),
                _ => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(found) = step(cur, last).cloned()
        && let Some(items) = cur.as_array_mut()
    {
        items.retain(|i| *i != found);
    }
}

/// `.spec.containers[name="c"].image`, as conflict messages name fields.
fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for elem in path {
        if let Some(name) = elem.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = elem.strip_prefix("k:") {
            let parsed: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = parsed.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = elem.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// Leaves conflict when their values differ; list elements and maps are
/// containers whose children decide.
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Object(_)), Some(Value::Object(_))) => true,
        (a, b) => a == b,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Value,
    subresource: Option<String>,
    set: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = FieldSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut set);
            Entry {
                manager: e["manager"].as_str().unwrap_or("").to_string(),
                operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                time: e["time"].clone(),
                subresource: e["subresource"].as_str().map(str::to_string),
                set,
            }
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.set),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    let meta = super::meta::metadata_mut(obj);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

fn without_times(obj: &Value) -> Value {
    let mut o = obj.clone();
    for e in o["metadata"]["managedFields"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(m) = e.as_object_mut() {
            m.remove("time");
        }
    }
    o
}

/// Whether two objects are equal apart from managedFields timestamps.
pub fn same_ignoring_times(a: &Value, b: &Value) -> bool {
    without_times(a) == without_times(b)
}

/// Record that `manager` wrote `new` over `old` (a non-apply write).
pub fn track_update(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
) {
    let kind = rt.kind.as_str();
    let old_set = old.map(|o| field_set(o, kind, scope)).unwrap_or_default();
    let new_set = field_set(new, kind, scope);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            !old_set.contains(*p) || !same_value(old.and_then(|o| value_at(o, p)), value_at(new, p))
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let mut list = old.map(entries).unwrap_or_default();
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, list);
        return;
    }
    let sub = scope.subresource().map(str::to_string);
    for e in &mut list {
        if e.manager == manager && e.operation == "Update" && e.subresource == sub {
            continue;
        }
        e.set
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    let now = json!(super::meta::now());
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
    {
        Some(e) => {
            e.set.retain(|p| !removed.contains(p));
            e.set.extend(changed);
            e.time = now;
            e.api_version = rt.api_version();
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: rt.api_version(),
            time: now,
            subresource: sub,
            set: changed,
        }),
    }
    write_entries(new, list);
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create).
/// Returns the object to store (the caller defaults, validates and commits).
pub fn apply(
    rt: &ResourceType,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
) -> ApiResult<Value> {
    let kind = rt.kind.as_str();
    let name = applied["metadata"]["name"].as_str().unwrap_or("");
    let applied = within_scope(applied, scope);
    let new_set = field_set(&applied, kind, scope);
    let sub = scope.subresource().map(str::to_string);
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut list = live.map(entries).unwrap_or_default();
    let is_mine =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == sub;

    let others = list.iter().filter(|e| !is_mine(e));
    let (conflicts, taken) = conflicts(others, &new_set, &base, &applied);
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflicts(rt, name, &conflicts));
    }
    for e in list.iter_mut().filter(|e| !is_mine(e)) {
        e.set.retain(|p| !taken.contains(p));
    }
    let merged = without_unapplied(&base, &list, is_mine, &new_set);
    let mut merged = structural_merge(merged, &configuration(&applied), "", kind);

    let old_time = list.iter().find(|e| is_mine(e)).map(|e| e.time.clone());
    list.retain(|e| !is_mine(e));
    list.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: rt.api_version(),
        time: old_time.unwrap_or(Value::Null),
        subresource: sub,
        set: new_set,
    });
    write_apply_entries(&mut merged, list, live);
    Ok(merged)
}

/// The applied object cut to the scope's fields (and `metadata` outside the
/// status scope); the rest of the request is ignored.
fn within_scope(applied: &Value, scope: Scope) -> Value {
    let mut applied = applied.clone();
    if let Some(m) = applied.as_object_mut() {
        let keep_meta = scope != Scope::Status;
        m.retain(|k, _| {
            k == "apiVersion"
                || k == "kind"
                || (k == "metadata" && keep_meta)
                || scope.includes_top(k)
        });
    }
    applied
}

/// The fields of `others` that this apply would change, as `(manager, path)`
/// for the 409 and as the set a forced apply takes over.
fn conflicts<'a>(
    others: impl Iterator<Item = &'a Entry>,
    new_set: &FieldSet,
    base: &Value,
    applied: &Value,
) -> (Vec<(String, String)>, FieldSet) {
    let mut conflicts = Vec::new();
    let mut taken = FieldSet::new();
    for e in others {
        for p in e.set.intersection(new_set) {
            if !same_value(value_at(base, p), value_at(applied, p)) {
                conflicts.push((e.manager.clone(), display_path(p)));
                taken.insert(p.clone());
            }
        }
    }
    (conflicts, taken)
}

/// `base` without the fields this manager applied before and applies no
/// longer, unless another manager or this apply still owns them.
fn without_unapplied(
    base: &Value,
    list: &[Entry],
    is_mine: impl Fn(&Entry) -> bool,
    new_set: &FieldSet,
) -> Value {
    let old_set = list
        .iter()
        .find(|e| is_mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others: FieldSet = list
        .iter()
        .filter(|e| !is_mine(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut merged = base.clone();
    let mut dropped: Vec<&Path> = old_set.difference(new_set).collect();
    // Deepest first, so removing an element happens after its fields.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        let still_owned =
            others.iter().any(|o| o.starts_with(p)) || new_set.iter().any(|n| n.starts_with(p));
        if !still_owned {
            remove_at(&mut merged, p);
        }
    }
    merged
}

/// What an apply merges into the object: the applied configuration without
/// the system metadata the server owns (but with name and namespace).
fn configuration(applied: &Value) -> Value {
    let mut body = applied.clone();
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| !SYSTEM_META.contains(&k.as_str()) || k == "name" || k == "namespace");
    }
    body
}

/// Writes the managed fields, the apply's entry last: stamped now when the
/// apply changed the object, keeping its old time when it did not (a no-op).
fn write_apply_entries(merged: &mut Value, mut list: Vec<Entry>, live: Option<&Value>) {
    write_entries(merged, list.clone());
    let unchanged = live.is_some_and(|l| same_ignoring_times(l, merged));
    if !unchanged {
        if let Some(e) = list.last_mut() {
            e.time = json!(super::meta::now());
        }
        write_entries(merged, list);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn nodes() -> ResourceType {
        builtins().into_iter().find(|t| t.kind == "Node").unwrap()
    }

    fn node(labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n", "labels": labels}})
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"metadata": {"name": "n", "labels": {"a": "1"}, "finalizers": ["x"]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let set = field_set(&obj, "Node", Scope::Status);
        let tree = to_fields_v1(&set);
        assert_eq!(
            tree,
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}}}})
        );
        let mut back = FieldSet::new();
        from_fields_v1(&tree, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
        let main = field_set(
            &obj,
            "Node",
            Scope::Main {
                status_subresource: true,
            },
        );
        assert!(main.contains(&vec![
            "f:metadata".to_string(),
            "f:finalizers".into(),
            "v:\"x\"".into()
        ]));
        assert!(!main.iter().any(|p| p[0] == "f:status"));
    }

    #[test]
    fn reapply_is_a_no_op_and_dropped_fields_are_removed() {
        let rt = nodes();
        let scope = Scope::Main {
            status_subresource: true,
        };
        let first = apply(
            &rt,
            None,
            &node(json!({"a": "1", "b": "2"})),
            "m",
            false,
            scope,
        )
        .unwrap();
        let again = apply(
            &rt,
            Some(&first),
            &node(json!({"a": "1", "b": "2"})),
            "m",
            false,
            scope,
        )
        .unwrap();
        assert!(same_ignoring_times(&first, &again));
        assert_eq!(
            first["metadata"]["managedFields"][0]["time"],
            again["metadata"]["managedFields"][0]["time"]
        );
        let fewer = apply(
            &rt,
            Some(&first),
            &node(json!({"a": "1"})),
            "m",
            false,
            scope,
        )
        .unwrap();
        assert_eq!(fewer["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn conflicting_managers_need_force() {
        let rt = nodes();
        let scope = Scope::Main {
            status_subresource: true,
        };
        let first = apply(&rt, None, &node(json!({"a": "1"})), "one", false, scope).unwrap();
        let err = apply(
            &rt,
            Some(&first),
            &node(json!({"a": "2"})),
            "two",
            false,
            scope,
        )
        .unwrap_err();
        err.assert_refusal(409, "conflict with \"one\": .metadata.labels.a");
        // Same value: shared ownership, no conflict.
        let shared = apply(
            &rt,
            Some(&first),
            &node(json!({"a": "1"})),
            "two",
            false,
            scope,
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = apply(
            &rt,
            Some(&first),
            &node(json!({"a": "2"})),
            "two",
            true,
            scope,
        )
        .unwrap();
        assert_eq!(forced["metadata"]["labels"]["a"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["two"]);
    }

    #[test]
    fn updates_take_ownership_without_conflict() {
        let rt = nodes();
        let scope = Scope::Main {
            status_subresource: true,
        };
        let applied = apply(&rt, None, &node(json!({"a": "1"})), "applier", false, scope).unwrap();
        let mut updated = applied.clone();
        updated["metadata"]["labels"]["a"] = json!("9");
        track_update(&rt, Some(&applied), &mut updated, "editor", scope);
        let entries = updated["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["manager"], "editor");
        assert_eq!(entries[0]["operation"], "Update");
        // The applier no longer owns the field, so re-applying conflicts.
        let err = apply(
            &rt,
            Some(&updated),
            &node(json!({"a": "1"})),
            "applier",
            false,
            scope,
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
    }
}
