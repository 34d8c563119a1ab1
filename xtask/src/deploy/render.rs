//! Rendering `deploy/base`: the subset of kustomize the base uses (`resources`
//! as files, in order, and `images` with `newName`/`newTag`), with the image
//! registry and tag overridable. `kubectl kustomize deploy/base` renders the
//! same objects (a test checks it).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    pub resources: Vec<String>,
    #[serde(default)]
    pub images: Vec<ImageOverride>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageOverride {
    /// The image name used in the manifests.
    pub name: String,
    pub new_name: String,
    pub new_tag: String,
}

/// Where images come from: a registry (repository prefix) and tag replacing
/// the kustomization's when set.
#[derive(Clone, Debug, Default)]
pub struct Images {
    pub registry: Option<String>,
    pub tag: Option<String>,
}

impl ImageOverride {
    /// The full image reference after the overrides.
    pub fn reference(&self, images: &Images) -> String {
        let name = match &images.registry {
            Some(r) => format!("{}/{}", r.trim_end_matches('/'), self.name),
            None => self.new_name.clone(),
        };
        let tag = images.tag.as_deref().unwrap_or(&self.new_tag);
        format!("{name}:{tag}")
    }
}

pub fn read_kustomization(dir: &Path) -> Result<Kustomization> {
    let path = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let k: Kustomization = serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{} is not a kustomization this renderer understands",
            path.display()
        )
    })?;
    if k.kind != "Kustomization" || !k.api_version.starts_with("kustomize.config.k8s.io/") {
        bail!(
            "{} is {} {}, not a kustomize.config.k8s.io Kustomization",
            path.display(),
            k.api_version,
            k.kind
        );
    }
    Ok(k)
}

/// Splits a multi-document YAML file into JSON values (empty documents are
/// skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("parse a YAML document")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The image name of a reference: without tag or digest.
pub fn image_name(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    // A ':' after the last '/' starts the tag (a ':' before it is a port).
    match without_digest.rfind(':') {
        Some(i) if !without_digest[i..].contains('/') => &without_digest[..i],
        _ => without_digest,
    }
}

/// Rewrites the `image` of every container and init container of a
/// workload's pod template that names one of the overrides.
pub fn set_images(obj: &mut Value, overrides: &[ImageOverride], images: &Images) {
    // `get_mut` rather than indexing: indexing a missing key would insert it.
    let Some(spec) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
    else {
        return;
    };
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                let Some(current) = c.get("image").and_then(Value::as_str) else {
                    continue;
                };
                if let Some(o) = overrides.iter().find(|o| o.name == image_name(current)) {
                    c["image"] = Value::String(o.reference(images));
                }
            }
        }
    }
}

/// All objects of the base, in the order of `resources`, images set.
pub fn render(dir: &Path, images: &Images) -> Result<Vec<Value>> {
    let k = read_kustomization(dir)?;
    let mut objects = Vec::new();
    for resource in &k.resources {
        let path = dir.join(resource);
        if !path.is_file() {
            bail!(
                "{} lists {resource}, which is not a file; this renderer supports file resources only",
                dir.join("kustomization.yaml").display()
            );
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for mut obj in parse_documents(&text).with_context(|| format!("in {}", path.display()))? {
            if obj["apiVersion"].as_str().is_none() || obj["kind"].as_str().is_none() {
                bail!("{}: an object has no apiVersion or kind", path.display());
            }
            if obj["metadata"]["name"].as_str().is_none() {
                bail!("{}: a {} has no metadata.name", path.display(), obj["kind"]);
            }
            set_images(&mut obj, &k.images, images);
            objects.push(obj);
        }
    }
    Ok(objects)
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String> {
    let mut out = String::new();
    for obj in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(obj).context("serialise an object as YAML")?);
    }
    Ok(out)
}

/// `kind namespace/name` for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_names_drop_tags_and_digests_but_keep_ports() {
        for (reference, name) in [
            ("underlay-agent", "underlay-agent"),
            ("underlay-agent:0.1.0", "underlay-agent"),
            (
                "localhost:5000/underlay-agent",
                "localhost:5000/underlay-agent",
            ),
            (
                "localhost:5000/underlay-agent:1",
                "localhost:5000/underlay-agent",
            ),
            ("r/underlay-agent@sha256:abc", "r/underlay-agent"),
        ] {
            assert_eq!(image_name(reference), name, "{reference}");
        }
    }

    #[test]
    fn images_of_containers_and_init_containers_are_replaced() {
        let overrides = vec![ImageOverride {
            name: "underlay-agent".into(),
            new_name: "ghcr.io/x/underlay-agent".into(),
            new_tag: "0.1.0".into(),
        }];
        let mut obj = json!({"spec": {"template": {"spec": {
            "initContainers": [{"name": "i", "image": "underlay-agent"}],
            "containers": [{"name": "a", "image": "underlay-agent:old"}, {"name": "b", "image": "busybox"}],
        }}}});
        set_images(&mut obj, &overrides, &Images::default());
        let spec = &obj["spec"]["template"]["spec"];
        assert_eq!(
            spec["initContainers"][0]["image"],
            "ghcr.io/x/underlay-agent:0.1.0"
        );
        assert_eq!(
            spec["containers"][0]["image"],
            "ghcr.io/x/underlay-agent:0.1.0"
        );
        assert_eq!(spec["containers"][1]["image"], "busybox");
        // The registry and tag of `--image-registry`/the version win over
        // the kustomization's newName/newTag.
        let images = Images {
            registry: Some("127.0.0.1:5000/lab/".into()),
            tag: Some("0.2.0".into()),
        };
        let mut obj = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "underlay-agent"}],
        }}}});
        set_images(&mut obj, &overrides, &images);
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            "127.0.0.1:5000/lab/underlay-agent:0.2.0"
        );
    }

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let docs = parse_documents("---\na: 1\n---\n# only a comment\n---\nb: 2\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
        assert!(parse_documents("a: [\n").is_err());
    }

    #[test]
    fn objects_without_a_pod_template_are_left_alone() {
        let mut obj = json!({"kind": "ConfigMap", "data": {"image": "underlay-agent"}});
        let before = obj.clone();
        set_images(&mut obj, &[], &Images::default());
        assert_eq!(obj, before);
    }
}
