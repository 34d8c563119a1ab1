//! Snapshot files: the whole store as one JSON document, written atomically
//! (temporary file, then rename) so a lab can stop and resume where it was.

use std::path::Path;

use serde_json::{Value, json};

use super::meta;
use super::resources::{Builtin, Registry, types_from_crd};
use super::store::{ObjKey, Store};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "cannot read snapshot {path}: {source}; check the path or remove the file to start empty"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot {path} is not valid: {reason}; remove the file to start empty")]
    Invalid { path: String, reason: String },
    #[error("cannot write snapshot {path}: {source}; check the directory exists and is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Write every object and the current resourceVersion to `path`.
pub fn save(store: &Store, path: &Path) -> Result<(), SnapshotError> {
    let doc = {
        let inner = store.lock();
        let objects: Vec<&Value> = inner.all().map(|(_, o)| o.as_ref()).collect();
        json!({"resourceVersion": inner.resource_version().to_string(), "objects": objects})
    };
    let werr = |source| SnapshotError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(&doc).map_err(|e| werr(std::io::Error::other(e)))?;
    std::fs::write(&tmp, bytes).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Load `path` into an empty store; CRDs are registered first so their
/// custom resources find their types.
pub fn load(store: &Store, registry: &Registry, path: &Path) -> Result<(), SnapshotError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Read {
        path: p.clone(),
        source,
    })?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Invalid {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let rv: u64 = doc["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let objects = doc["objects"]
        .as_array()
        .ok_or_else(|| SnapshotError::Invalid {
            path: p.clone(),
            reason: "no objects list".into(),
        })?;
    for o in objects {
        if o["kind"] == "CustomResourceDefinition" && o["apiVersion"] == "apiextensions.k8s.io/v1" {
            registry.set_custom(meta::meta_str(o, "name"), types_from_crd(o));
        }
    }
    let types = registry.storage_types();
    let mut keyed = Vec::new();
    for o in objects {
        let api_version = o["apiVersion"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = o["kind"].as_str().unwrap_or("");
        let rt = types
            .iter()
            .find(|t| t.group == group && t.kind == kind && t.builtin != Some(Builtin::EventsV1))
            .ok_or_else(|| SnapshotError::Invalid {
                path: p.clone(),
                reason: format!("unknown kind {api_version}/{kind}"),
            })?;
        let ns = if rt.namespaced {
            meta::meta_str(o, "namespace")
        } else {
            ""
        };
        keyed.push((
            ObjKey::new(&rt.storage, ns, meta::meta_str(o, "name")),
            o.clone(),
        ));
    }
    store.lock().load(rv, keyed);
    Ok(())
}
