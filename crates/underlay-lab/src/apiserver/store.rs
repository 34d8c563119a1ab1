//! The object store: every object as a `serde_json::Value` keyed by
//! (storage resource, namespace, name), the cluster-wide monotonic
//! resourceVersion, a bounded history of changes that watches resume from, and
//! the broadcast channel that fans every change out to the open watches.
//!
//! All writes happen under one mutex; the resourceVersion, the history and the
//! broadcast advance together, so a watch that subscribes under the same lock
//! sees every later change exactly once and in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// `pods`, `networkpolicies.networking.k8s.io`, `PLURAL.GROUP` for custom resources.
    pub storage: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(storage: &str, namespace: &str, name: &str) -> Self {
        ObjKey {
            storage: storage.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventType,
    /// The object after the change (for deletions: the last state, with the
    /// deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, so selector watches can turn a change
    /// that leaves their selection into a deletion.
    pub old: Option<Arc<Value>>,
    /// The serialized watch line for the common case (same type, storage view),
    /// computed once for all watchers.
    pub line: OnceLock<Bytes>,
}

/// Retained changes after a version, and the receiver of all later ones.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// The mutable state behind the store's lock.
#[derive(Debug)]
pub struct Inner {
    rv: u64,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Every change with a resourceVersion above this is in `history`.
    complete_after: u64,
    tx: broadcast::Sender<Arc<Change>>,
    dirty: Arc<AtomicBool>,
}

#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    dirty: Arc<AtomicBool>,
}

impl Store {
    pub fn new(history_cap: usize, broadcast_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(broadcast_cap.max(1));
        let dirty = Arc::new(AtomicBool::new(false));
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                complete_after: 1,
                tx,
                dirty: dirty.clone(),
            }),
            dirty,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once since the last call if anything was written.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
}

impl Inner {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.complete_after
    }

    pub fn get(&self, key: &ObjKey) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Objects of one storage resource, optionally in one namespace, in key order.
    pub fn range<'a>(
        &'a self,
        storage: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        let start = ObjKey::new(storage, namespace.unwrap_or(""), "");
        self.objects.range(start..).take_while(move |(k, _)| {
            k.storage == storage && namespace.is_none_or(|ns| k.namespace == ns)
        })
    }

    /// Every stored object (snapshots).
    pub fn all(&self) -> impl Iterator<Item = (&ObjKey, &Arc<Value>)> {
        self.objects.iter()
    }

    /// Store `object` under `key` with the next resourceVersion and tell the watches.
    pub fn put(&mut self, key: ObjKey, mut object: Value) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        set_rv(&mut object, rv);
        let object = Arc::new(object);
        let old = self.objects.insert(key.clone(), object.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Change {
            rv,
            key,
            kind,
            object: object.clone(),
            old,
            line: OnceLock::new(),
        });
        object
    }

    /// Remove the object under `key`; `last` is its final state.
    pub fn remove(&mut self, key: &ObjKey, mut last: Value) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        set_rv(&mut last, rv);
        let last = Arc::new(last);
        let old = self.objects.remove(key);
        self.record(Change {
            rv,
            key: key.clone(),
            kind: EventType::Deleted,
            object: last.clone(),
            old,
            line: OnceLock::new(),
        });
        last
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        if self.history.len() == self.history_cap
            && let Some(dropped) = self.history.pop_front()
        {
            self.complete_after = dropped.rv;
        }
        self.history.push_back(change.clone());
        self.dirty.store(true, Ordering::Release);
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Subscribe to future changes and return the retained changes after `rv`;
    /// `None` when `rv` is older than the retained history.
    pub fn watch_from(&self, rv: u64) -> Option<Subscription> {
        if rv < self.complete_after {
            return None;
        }
        let past = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Some((past, self.tx.subscribe()))
    }

    /// Forget the retained history: watches from any earlier version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.complete_after = self.rv;
    }

    /// Restore from a snapshot: objects keep their resourceVersions and the
    /// counter continues above all of them.
    pub fn load(&mut self, rv: u64, objects: Vec<(ObjKey, Value)>) {
        let mut max = rv;
        for (key, object) in objects {
            if let Some(v) = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                max = max.max(v);
            }
            self.objects.insert(key, Arc::new(object));
        }
        self.rv = max.max(self.rv);
        self.history.clear();
        self.complete_after = self.rv;
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name}})
    }

    #[test]
    fn resource_versions_increase_across_resources() {
        let store = Store::new(10, 10);
        let mut inner = store.lock();
        let a = inner.put(ObjKey::new("pods", "ns", "a"), obj("a"));
        let b = inner.put(ObjKey::new("nodes", "", "b"), obj("b"));
        let ra: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let rb: u64 = b["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rb > ra);
        assert_eq!(inner.resource_version(), rb);
    }

    #[test]
    fn range_is_limited_to_storage_and_namespace() {
        let store = Store::new(10, 10);
        let mut inner = store.lock();
        inner.put(ObjKey::new("pods", "a", "x"), obj("x"));
        inner.put(ObjKey::new("pods", "b", "y"), obj("y"));
        inner.put(ObjKey::new("podz", "a", "z"), obj("z"));
        assert_eq!(inner.range("pods", None).count(), 2);
        assert_eq!(inner.range("pods", Some("a")).count(), 1);
        assert_eq!(inner.range("pods", Some("c")).count(), 0);
    }

    #[test]
    fn watch_from_before_retained_history_is_refused() {
        let store = Store::new(2, 10);
        let mut inner = store.lock();
        for i in 0..5 {
            inner.put(ObjKey::new("pods", "a", &i.to_string()), obj("x"));
        }
        let rv = inner.resource_version();
        assert!(inner.watch_from(rv - 2).is_some());
        assert!(inner.watch_from(rv - 3).is_none());
        let (past, _) = inner.watch_from(rv - 1).unwrap();
        assert_eq!(past.len(), 1);
        inner.compact();
        assert!(inner.watch_from(rv - 1).is_none());
        assert!(inner.watch_from(rv).is_some());
    }
}
