//! The durable endpoint store: one redb database under `--state-dir`, one
//! table of endpoint records keyed by `container_id/ifname`. Every write is
//! a transaction committed with fsync before the caller goes on, so what
//! Attach answered survives `kill -9` and power loss, and a crash mid-write
//! leaves the previous state.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use underlay_ipam::AttachmentKey;

const ENDPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("endpoints_v1");

/// What the agent remembers about one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub infra_container_id: String,
    pub host_interface: String,
    pub netns: String,
    pub network_name: String,
    pub mtu: u32,
    pub created_unix_ms: i64,
}

impl Record {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey::new(self.container_id.clone(), self.ifname.clone())
    }
}

/// Milliseconds since the epoch (record times, file names).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db_key(key: &AttachmentKey) -> String {
    // Container IDs and interface names never contain '/'.
    format!("{}/{}", key.container_id, key.ifname)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the state directory {path}: {source}; check --state-dir and its permissions"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("endpoint store {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("endpoint record {key} cannot be decoded: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "cannot move the damaged endpoint store {path} aside: {source}; check the permissions of --state-dir"
    )]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`Store::open_or_replace`] found.
pub struct Opened {
    pub store: Store,
    /// The records it holds (none when the file was missing or damaged).
    pub records: Vec<Record>,
    /// Why the previous file could not be used, and where it went.
    pub damaged: Option<String>,
    /// There was no file: a new node, or one whose state was removed.
    pub missing: bool,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `state_dir/endpoints.redb`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        // Records name every pod and its addresses: root only, including a
        // directory or file an older version created world-readable.
        let private = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|source| {
                StoreError::CreateDir {
                    path: p.into(),
                    source,
                }
            })
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::CreateDir {
                path: state_dir.into(),
                source,
            })?;
        private(state_dir, 0o700)?;
        let path = state_dir.join("endpoints.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Database {
            path: path.clone(),
            source: e.into(),
        })?;
        private(&path, 0o600)?;
        let store = Self { db, path };
        // Make sure the table exists so reads never fail on a fresh file.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    /// Opens the store and reads every record. A file that cannot be opened
    /// or holds a record that cannot be decoded is moved aside (kept for
    /// inspection) and replaced by an empty store: the caller rebuilds the
    /// live attachments from the kernel.
    pub fn open_or_replace(state_dir: &Path) -> Result<Opened> {
        let path = state_dir.join("endpoints.redb");
        let missing = !path.exists();
        let damage = match Store::open(state_dir).and_then(|s| Ok((s.load()?, s))) {
            Ok((records, store)) => {
                return Ok(Opened {
                    store,
                    records,
                    damaged: None,
                    missing,
                });
            }
            Err(e @ StoreError::CreateDir { .. }) => return Err(e),
            Err(e) => e,
        };
        let aside = state_dir.join(format!("endpoints.redb.damaged-{}", now_ms()));
        std::fs::rename(&path, &aside).map_err(|source| StoreError::MoveAside {
            path: path.clone(),
            source,
        })?;
        Ok(Opened {
            store: Store::open(state_dir)?,
            records: Vec::new(),
            damaged: Some(format!("{damage}; moved to {}", aside.display())),
            missing,
        })
    }

    fn err(&self) -> impl Fn(redb::Error) -> StoreError + '_ {
        |source| StoreError::Database {
            path: self.path.clone(),
            source,
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<()> {
        let run = || -> Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(ENDPOINTS)?;
                f(&mut table)?;
            }
            txn.commit()?;
            Ok(())
        };
        run().map_err(self.err())
    }

    /// Every record, in key order.
    pub fn load(&self) -> Result<Vec<Record>> {
        let read = || -> Result<Vec<(String, Vec<u8>)>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENDPOINTS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        };
        read()
            .map_err(self.err())?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Decode { key, source })
            })
            .collect()
    }

    /// Inserts or replaces records and deletes keys, in one durable
    /// transaction.
    pub fn apply(&self, put: &[&Record], delete: &[AttachmentKey]) -> Result<()> {
        let encoded: Vec<(String, Vec<u8>)> = put
            .iter()
            .map(|r| {
                let bytes = serde_json::to_vec(r).map_err(|source| StoreError::Decode {
                    key: db_key(&r.key()),
                    source,
                })?;
                Ok((db_key(&r.key()), bytes))
            })
            .collect::<Result<_>>()?;
        self.write(|table| {
            for (k, v) in &encoded {
                table.insert(k.as_str(), v.as_slice())?;
            }
            for key in delete {
                table.remove(db_key(key).as_str())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, ip: &str) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            ips: vec![ip.parse().unwrap()],
            namespace: "ns".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            infra_container_id: id.into(),
            host_interface: "udl0".into(),
            netns: "/run/netns/x".into(),
            network_name: "underlay".into(),
            mtu: 1500,
            created_unix_ms: 1,
        }
    }

    #[test]
    fn records_survive_reopening_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert!(s.load().unwrap().is_empty());
            s.apply(&[&record("a", "10.0.0.2"), &record("b", "10.0.0.3")], &[])
                .unwrap();
            s.apply(&[], &[AttachmentKey::new("a", "eth0")]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), vec![record("b", "10.0.0.3")]);
    }

    #[test]
    fn the_state_dir_and_store_are_private_to_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("endpoints.redb")), 0o600);
        // An existing directory and file made by an older version are tightened.
        let old = dir.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(old.join("endpoints.redb"), b"").unwrap();
        std::fs::set_permissions(
            old.join("endpoints.redb"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        drop(Store::open(&old));
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("endpoints.redb")), 0o600);
    }

    #[test]
    fn an_unwritable_state_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file.join("sub")).err().unwrap().to_string();
        assert!(err.contains("--state-dir"), "{err}");
    }
}
