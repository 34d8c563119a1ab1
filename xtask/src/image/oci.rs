//! Writing container images without a container daemon: filesystem layers as
//! reproducible tar archives, the OCI image config and manifest, an OCI image
//! layout directory and a `docker load`-compatible archive.
//!
//! Reproducibility comes from three rules: entries are sorted by path, every
//! entry has the same fixed mtime, owner 0:0 and no user/group names, and the
//! JSON documents carry no wall-clock time (the `created` field is the source
//! date, derived from the git commit). gzip streams carry mtime 0.

use anyhow::{Context, Result, bail};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What an entry of a layer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// One filesystem layer, kept sorted by path. Paths are relative to the root
/// (`usr/sbin/ipset`), normalised, and their parent directories are created
/// on demand (0755, root-owned).
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

/// Normalises a path inside a layer: no leading `/` or `./`, no `.`/`..`
/// components, no trailing `/`. Returns `None` for the root itself.
pub fn normalize(path: &str) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("layer path {path:?} escapes the root; use a path without `..`"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

impl Layer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path)
            .ok()
            .flatten()
            .and_then(|p| self.entries.get(&p))
    }

    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Adds an entry. Directories may be added more than once (the last mode
    /// wins); any other path added twice must be identical, so two packages
    /// that disagree about a file are caught rather than silently merged.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let Some(path) = normalize(path)? else {
            return Ok(());
        };
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            match self.entries.get(p) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                Some(_) => bail!("{p} is not a directory but {path} needs it as its parent"),
                None => {
                    self.entries.insert(
                        p.to_string(),
                        Entry {
                            kind: Kind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
            }
        }
        match self.entries.get(&path) {
            Some(old) if old.kind == Kind::Dir && entry.kind == Kind::Dir => {
                self.entries.insert(path, entry);
            }
            Some(old) if *old != entry => {
                bail!("{path} is added twice with different contents; remove one of the sources")
            }
            _ => {
                self.entries.insert(path, entry);
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(
            path,
            Entry {
                kind: Kind::Dir,
                mode,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(
            path,
            Entry {
                kind: Kind::File(data),
                mode,
                uid: 0,
                gid: 0,
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Entry {
                kind: Kind::Symlink(target.to_string()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
        )
    }

    /// The layer as an uncompressed tar archive: sorted, fixed mtime, numeric
    /// owners only.
    pub fn to_tar(&self, mtime: u64) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(mtime);
            header.set_uid(entry.uid);
            header.set_gid(entry.gid);
            header.set_mode(entry.mode);
            match &entry.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), std::io::empty())
                        .with_context(|| format!("write directory {path} to the layer"))?;
                }
                Kind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, data.as_slice())
                        .with_context(|| format!("write file {path} to the layer"))?;
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .with_context(|| format!("write symlink {path} to the layer"))?;
                }
            }
        }
        builder.into_inner().context("finish the layer archive")
    }
}

/// gzip with a fixed header (mtime 0, no file name) so the bytes depend only
/// on the input.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    enc.write_all(data).context("compress a layer")?;
    enc.finish().context("compress a layer")
}

/// A layer as stored: the uncompressed tar (for docker archives and the
/// config's diff_ids) and its gzip (for OCI and registries).
#[derive(Clone, Debug)]
pub struct Blob {
    pub tar: Vec<u8>,
    pub diff_id: String,
    pub gz: Vec<u8>,
    pub gz_digest: String,
    /// What made the layer, for the config's history.
    pub created_by: String,
}

impl Blob {
    pub fn from_layer(layer: &Layer, mtime: u64, created_by: &str) -> Result<Self> {
        let tar = layer.to_tar(mtime)?;
        let gz = gzip(&tar)?;
        Ok(Self {
            diff_id: digest(&tar),
            gz_digest: digest(&gz),
            tar,
            gz,
            created_by: created_by.to_string(),
        })
    }
}

/// What runs and how: the `config` object of the image config.
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

/// A complete image: its layers and configuration.
#[derive(Clone, Debug)]
pub struct Image {
    /// Repository name without registry, e.g. `underlay-agent`.
    pub name: String,
    pub tags: Vec<String>,
    pub layers: Vec<Blob>,
    pub run: RunConfig,
    /// Seconds since the epoch written as `created` (the source date).
    pub created: u64,
}

/// An image serialised: the config and manifest documents and their digests.
#[derive(Clone, Debug)]
pub struct Written {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// RFC 3339 UTC for seconds since the epoch; past year 9999, the last second of 9999.
pub fn rfc3339(secs: u64) -> String {
    let date = i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc());
    // Infallible: every component of a UTC date up to 9999 has a place in the format.
    date.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).context("serialise an image document")
}

impl Image {
    pub fn config_json(&self) -> Value {
        let created = rfc3339(self.created);
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"created": created, "created_by": l.created_by}))
            .collect();
        let mut config = serde_json::Map::new();
        if !self.run.user.is_empty() {
            config.insert("User".into(), json!(self.run.user));
        }
        if !self.run.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.run.entrypoint));
        }
        if !self.run.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.run.cmd));
        }
        config.insert("Env".into(), json!(self.run.env));
        config.insert(
            "WorkingDir".into(),
            json!(if self.run.working_dir.is_empty() {
                "/"
            } else {
                &self.run.working_dir
            }),
        );
        config.insert("Labels".into(), json!(self.run.labels));
        json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": Value::Object(config),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        })
    }

    pub fn write_documents(&self) -> Result<Written> {
        let config = json_bytes(&self.config_json())?;
        let config_digest = digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": MEDIA_LAYER_GZIP, "digest": l.gz_digest, "size": l.gz.len(),
            })).collect::<Vec<_>>(),
            "annotations": self.run.labels,
        });
        let manifest = json_bytes(&manifest)?;
        Ok(Written {
            manifest_digest: digest(&manifest),
            manifest,
            config,
            config_digest,
        })
    }

    /// Writes the image as an OCI image layout at `dir` (replacing any
    /// previous one), one index entry per tag.
    pub fn write_oci_layout(&self, dir: &Path) -> Result<Written> {
        let written = self.write_documents()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("remove the old image layout {}", dir.display()))?;
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
        let put = |digest: &str, bytes: &[u8]| -> Result<()> {
            let hex = digest.trim_start_matches("sha256:");
            write_file(&blobs.join(hex), bytes)
        };
        for layer in &self.layers {
            put(&layer.gz_digest, &layer.gz)?;
        }
        put(&written.config_digest, &written.config)?;
        put(&written.manifest_digest, &written.manifest)?;
        write_file(
            &dir.join("oci-layout"),
            &json_bytes(&json!({"imageLayoutVersion": "1.0.0"}))?,
        )?;
        let manifests: Vec<Value> = self
            .tags
            .iter()
            .map(|tag| {
                json!({
                    "mediaType": MEDIA_MANIFEST,
                    "digest": written.manifest_digest,
                    "size": written.manifest.len(),
                    "annotations": {REF_NAME: tag},
                })
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests});
        write_file(&dir.join("index.json"), &json_bytes(&index)?)?;
        Ok(written)
    }

    /// The image as a `docker load` archive (the classic `docker save`
    /// format: manifest.json, the config, one uncompressed tar per layer),
    /// tagged `repository/name:tag` for each tag.
    pub fn docker_archive(&self, repository: &str, mtime: u64) -> Result<Vec<u8>> {
        let written = self.write_documents()?;
        let config_name = format!(
            "{}.json",
            written.config_digest.trim_start_matches("sha256:")
        );
        let layer_names: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", l.diff_id.trim_start_matches("sha256:")))
            .collect();
        let repo = if repository.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", repository.trim_end_matches('/'), self.name)
        };
        let tags: Vec<String> = self.tags.iter().map(|t| format!("{repo}:{t}")).collect();
        let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]);
        let mut archive = Layer::new();
        archive.file(&config_name, written.config.clone(), 0o644)?;
        for (name, layer) in layer_names.iter().zip(&self.layers) {
            archive.file(name, layer.tar.clone(), 0o644)?;
        }
        archive.file("manifest.json", json_bytes(&manifest)?, 0o644)?;
        archive.to_tar(mtime)
    }
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

/// Reads a whole file from the build machine for an image, with its mode.
pub fn read_host_file(path: &Path) -> Result<(Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    Ok((data, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Layer {
        let mut l = Layer::new();
        l.file("usr/local/bin/tool", b"#!/bin/sh\n".to_vec(), 0o755)
            .unwrap();
        l.symlink("bin/sh", "dash").unwrap();
        l.file("etc/passwd", b"root:x:0:0::/:/bin/sh\n".to_vec(), 0o644)
            .unwrap();
        l
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs), want, "{secs}");
        }
    }

    #[test]
    fn normalize_rejects_escapes_and_strips_prefixes() {
        assert_eq!(
            normalize("./usr//bin/").unwrap().as_deref(),
            Some("usr/bin")
        );
        assert_eq!(normalize("/").unwrap(), None);
        assert!(normalize("usr/../../etc").is_err());
    }

    #[test]
    fn parents_are_created_and_entries_come_out_sorted() {
        let l = sample();
        let paths: Vec<_> = l.paths().collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/passwd",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/tool"
            ]
        );
        let tar = l.to_tar(1234).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 1234);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.username().unwrap(), Some(""));
            seen.push(
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
            );
        }
        assert_eq!(seen, paths);
    }

    #[test]
    fn conflicting_files_are_refused_but_identical_ones_merge() {
        let mut l = sample();
        l.file("etc/passwd", b"root:x:0:0::/:/bin/sh\n".to_vec(), 0o644)
            .unwrap();
        let err = l
            .file("etc/passwd", b"other\n".to_vec(), 0o644)
            .unwrap_err();
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        let err = l.file("bin/sh/x", vec![], 0o644).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn identical_inputs_give_identical_digests_and_any_change_shows() {
        let image = |data: &[u8]| {
            let mut l = sample();
            l.file("data", data.to_vec(), 0o644).unwrap();
            Image {
                name: "x".into(),
                tags: vec!["1.0".into()],
                layers: vec![Blob::from_layer(&l, 100, "test").unwrap()],
                run: RunConfig {
                    user: "65532:65532".into(),
                    entrypoint: vec!["/tool".into()],
                    ..Default::default()
                },
                created: 100,
            }
        };
        let a = image(b"a").write_documents().unwrap();
        let a2 = image(b"a").write_documents().unwrap();
        let b = image(b"b").write_documents().unwrap();
        assert_eq!(a.manifest_digest, a2.manifest_digest);
        assert_eq!(a.manifest, a2.manifest);
        assert_ne!(a.manifest_digest, b.manifest_digest);
        assert_eq!(
            image(b"a").docker_archive("r", 100).unwrap(),
            image(b"a").docker_archive("r", 100).unwrap()
        );
    }

    #[test]
    fn config_references_the_uncompressed_layers_and_manifest_the_compressed() {
        let blob = Blob::from_layer(&sample(), 0, "test").unwrap();
        let image = Image {
            name: "x".into(),
            tags: vec!["1".into()],
            layers: vec![blob.clone()],
            run: RunConfig::default(),
            created: 0,
        };
        let w = image.write_documents().unwrap();
        let config: Value = serde_json::from_slice(&w.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], json!(blob.diff_id));
        assert_eq!(config["created"], json!("1970-01-01T00:00:00Z"));
        let manifest: Value = serde_json::from_slice(&w.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], json!(blob.gz_digest));
        assert_eq!(manifest["config"]["digest"], json!(w.config_digest));
        assert_eq!(digest(&blob.tar), blob.diff_id);
        let mut gz = flate2::read::GzDecoder::new(blob.gz.as_slice());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut back).unwrap();
        assert_eq!(back, blob.tar);
    }
}
