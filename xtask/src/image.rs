//! `cargo xtask image`: the two container images underlay ships, built
//! without a container daemon and reproducibly (see `oci` for how).
//!
//! - `underlay-route-controller`: the static binary, `/etc/passwd` and
//!   `/etc/group` naming the non-root user 65532 it runs as, nothing else (no
//!   shell).
//! - `underlay-agent`: a layer of pinned Debian packages (iptables with both
//!   the nft and legacy backends, ipset, conntrack, their libraries, dash for
//!   the entrypoint, each with its copyright file), then a layer with the
//!   agent, the CNI plugin (for the install init container), the entrypoint
//!   that picks the host's iptables backend, and one directory of
//!   `iptables*`/`ip6tables*` links per backend for it to put on PATH.
//!
//! Output under `--out` (default `target/images/`): `<name>/` is an OCI image
//! layout (one `org.opencontainers.image.ref.name` per tag),
//! `<name>-<tag>.docker.tar` a `docker load` archive, and `images.json` the
//! digests of everything written.

pub mod debian;
pub mod oci;

use crate::build::{self, VersionInfo};
use crate::util::root;
use anyhow::{Context, Result, bail};
use oci::{Blob, Image, Layer, RunConfig, read_host_file, write_file};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository prefix images are named under unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/underlay-net";
pub const ROUTE_CONTROLLER: &str = "underlay-route-controller";
pub const AGENT: &str = "underlay-agent";
const NONROOT: u64 = 65532;
const IPTABLES_TOOLS: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
];

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Cargo profile of the binaries packed: `release` (what is shipped) or
    /// `debug` (faster to build; for tests).
    #[arg(long, default_value = "release", env = "UNDERLAY_PROFILE", value_parser = ["release", "debug"])]
    pub profile: String,
    /// Take the three binaries from this directory instead of building them.
    #[arg(long, env = "UNDERLAY_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the images are written.
    #[arg(long, default_value = "target/images", env = "UNDERLAY_OUT")]
    pub out: PathBuf,
    /// Repository prefix of the image names in docker archives and pushes.
    #[arg(long, default_value = DEFAULT_REGISTRY, env = "UNDERLAY_IMAGE_REGISTRY")]
    pub image_registry: String,
    /// Push the images to this registry (e.g. `registry.example:5000/underlay`)
    /// with `skopeo copy` after building.
    #[arg(long, env = "UNDERLAY_PUSH")]
    pub push: Option<String>,
    /// Push over plain HTTP / without verifying TLS (local registries).
    #[arg(long, env = "UNDERLAY_PUSH_INSECURE")]
    pub push_insecure: bool,
    /// Re-pin images/agent/debian-packages.txt to Debian's current versions
    /// before building.
    #[arg(long, env = "UNDERLAY_UPDATE_PACKAGES")]
    pub update_packages: bool,
}

/// What `image` wrote, as recorded in `images.json`.
#[derive(Clone, Debug)]
pub struct Built {
    pub name: String,
    pub tags: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layout: PathBuf,
    pub docker_archive: PathBuf,
}

/// The source repository URL from the root manifest's `[workspace.package]`.
fn repository_url() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let mut in_section = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section
            && let Some(rest) = line.strip_prefix("repository")
            && let Some(v) = rest.trim_start().strip_prefix('=')
        {
            return Ok(v.trim().trim_matches('"').to_string());
        }
    }
    bail!("the root Cargo.toml has no [workspace.package] repository; add one")
}

/// The SPDX expression of a set of licence expressions joined by AND: the
/// distinct terms, sorted.
pub fn combine_licences<'a>(exprs: impl IntoIterator<Item = &'a str>) -> String {
    let terms: BTreeSet<&str> = exprs
        .into_iter()
        .flat_map(|e| e.split(" AND "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    terms.into_iter().collect::<Vec<_>>().join(" AND ")
}

fn labels(
    v: &VersionInfo,
    source: &str,
    title: &str,
    description: &str,
    licences: &str,
) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", title),
        ("org.opencontainers.image.description", description),
        ("org.opencontainers.image.source", source),
        ("org.opencontainers.image.revision", v.commit.as_str()),
        ("org.opencontainers.image.version", v.version.as_str()),
        ("org.opencontainers.image.licenses", licences),
        (
            "org.opencontainers.image.created",
            oci::rfc3339(v.source_date_epoch).as_str(),
        ),
    ]
    .into_iter()
    .map(|(k, val)| (k.to_string(), val.to_string()))
    .collect()
}

/// Files every image has: the users (root and nonroot 65532) and the name
/// service order static glibc binaries read.
fn base_files(layer: &mut Layer) -> Result<()> {
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
        0o644,
    )?;
    layer.file(
        "etc/group",
        b"root:x:0:\nnonroot:x:65532:\n".to_vec(),
        0o644,
    )?;
    layer.file("etc/nsswitch.conf", b"hosts: files dns\n".to_vec(), 0o644)?;
    layer.insert(
        "home/nonroot",
        oci::Entry {
            kind: oci::Kind::Dir,
            mode: 0o700,
            uid: NONROOT,
            gid: NONROOT,
        },
    )?;
    layer.dir("tmp", 0o1777)?;
    // iptables-legacy takes its lock under /run (the DaemonSet mounts the
    // host's /run/xtables.lock there).
    layer.dir("run", 0o755)?;
    Ok(())
}

fn binary(bins: &BTreeMap<String, PathBuf>, name: &str) -> Result<(Vec<u8>, u32)> {
    let path = bins.get(name).with_context(|| {
        format!("no {name} binary to pack; its crate must exist and build (cargo xtask build --require-all)")
    })?;
    let (data, _) = read_host_file(path)?;
    Ok((data, 0o755))
}

pub fn route_controller_image(
    v: &VersionInfo,
    source: &str,
    bins: &BTreeMap<String, PathBuf>,
) -> Result<Image> {
    let mut layer = Layer::new();
    base_files(&mut layer)?;
    let (data, mode) = binary(bins, ROUTE_CONTROLLER)?;
    layer.file("usr/local/bin/underlay-route-controller", data, mode)?;
    Ok(Image {
        name: ROUTE_CONTROLLER.into(),
        tags: vec![v.tag()],
        layers: vec![Blob::from_layer(
            &layer,
            v.source_date_epoch,
            "cargo xtask image: underlay-route-controller",
        )?],
        run: RunConfig {
            user: format!("{NONROOT}:{NONROOT}"),
            entrypoint: vec!["/usr/local/bin/underlay-route-controller".into()],
            cmd: vec![],
            env: vec!["PATH=/usr/local/bin".into()],
            working_dir: "/".into(),
            labels: labels(
                v,
                source,
                ROUTE_CONTROLLER,
                "underlay route controller: node pod CIDRs and the Azure route table",
                "Apache-2.0",
            ),
        },
        created: v.source_date_epoch,
    })
}

/// The Debian layer of the agent image, with the pins it was made from.
pub fn debian_layer(pins_file: &Path, cache: &Path) -> Result<(Layer, Vec<debian::Pin>)> {
    let text = std::fs::read_to_string(pins_file)
        .with_context(|| format!("read {}", pins_file.display()))?;
    let pins = debian::parse_pins(&text).with_context(|| format!("in {}", pins_file.display()))?;
    let debs = debian::fetch(&pins, cache)?;
    let mut depends = BTreeMap::new();
    for (pin, deb) in pins.iter().zip(&debs) {
        let version = debian::control_field(deb, "Version")?;
        if version != pin.version {
            bail!(
                "{} is version {version}, not the pinned {}; delete it so it is downloaded again",
                deb.display(),
                pin.version
            );
        }
        let mut fields = debian::control_field(deb, "Depends")?;
        let pre = debian::control_field(deb, "Pre-Depends")?;
        if !pre.is_empty() {
            fields = format!("{fields}, {pre}");
        }
        depends.insert(pin.name.clone(), fields);
    }
    debian::check_closure(&pins, &depends)?;
    let mut layer = Layer::new();
    for deb in &debs {
        debian::unpack_into(deb, &mut layer)?;
    }
    debian::check_licences(&pins, &layer)?;
    Ok((layer, pins))
}

pub fn agent_image(
    v: &VersionInfo,
    source: &str,
    bins: &BTreeMap<String, PathBuf>,
    debian_layer: &Layer,
    pins: &[debian::Pin],
) -> Result<Image> {
    require_iptables(debian_layer)?;
    let layer = agent_layer(bins, pins)?;
    Ok(Image {
        name: AGENT.into(),
        tags: vec![v.tag()],
        layers: vec![
            Blob::from_layer(
                debian_layer,
                v.source_date_epoch,
                "cargo xtask image: Debian packages from images/agent/debian-packages.txt",
            )?,
            Blob::from_layer(
                &layer,
                v.source_date_epoch,
                "cargo xtask image: underlay-agent",
            )?,
        ],
        run: RunConfig {
            user: "0:0".into(),
            entrypoint: vec!["/usr/local/bin/underlay-entrypoint".into()],
            cmd: vec![AGENT.into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: "/".into(),
            labels: agent_labels(v, source, pins),
        },
        created: v.source_date_epoch,
    })
}

/// The agent's policy dataplane needs both iptables back ends.
fn require_iptables(debian_layer: &Layer) -> Result<()> {
    for tool in [
        "usr/sbin/xtables-nft-multi",
        "usr/sbin/xtables-legacy-multi",
    ] {
        if debian_layer.get(tool).is_none() {
            bail!(
                "the Debian layer has no {tool}; images/agent/debian-packages.txt must list iptables"
            );
        }
    }
    Ok(())
}

/// The agent image's own layer: the base files, the agent, the CNI
/// plugin and the operators' tool (`kubectl-underlay`), the entrypoint, the iptables tools of each back end, and the
/// inventory of the Debian packages.
fn agent_layer(bins: &BTreeMap<String, PathBuf>, pins: &[debian::Pin]) -> Result<Layer> {
    let mut layer = Layer::new();
    base_files(&mut layer)?;
    for name in [AGENT, "underlay-cni", "kubectl-underlay"] {
        let (data, mode) = binary(bins, name)?;
        layer.file(&format!("usr/local/bin/{name}"), data, mode)?;
    }
    let (script, _) = read_host_file(&root().join("images/agent/underlay-entrypoint"))?;
    layer.file("usr/local/bin/underlay-entrypoint", script, 0o755)?;
    for mode in ["nft", "legacy"] {
        for tool in IPTABLES_TOOLS {
            layer.symlink(
                &format!("usr/lib/underlay/iptables-{mode}/{tool}"),
                &format!("/usr/sbin/xtables-{mode}-multi"),
            )?;
        }
    }
    let mut inventory = String::from("# Debian packages in this image: name version licence\n");
    for p in pins {
        inventory.push_str(&format!("{} {} {}\n", p.name, p.version, p.license));
    }
    layer.file(
        "usr/share/underlay/debian-packages.txt",
        inventory.into_bytes(),
        0o644,
    )?;
    Ok(layer)
}

/// The agent image's labels: ours and the Debian packages' licences, and
/// the packages with their versions.
fn agent_labels(v: &VersionInfo, source: &str, pins: &[debian::Pin]) -> BTreeMap<String, String> {
    let licences = combine_licences(
        std::iter::once("Apache-2.0").chain(pins.iter().map(|p| p.license.as_str())),
    );
    let mut labels = labels(
        v,
        source,
        AGENT,
        "underlay node agent: pod IPAM, the CNI plugin and NetworkPolicy with iptables",
        &licences,
    );
    labels.insert(
        "net.underlay.debian-packages".into(),
        pins.iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(","),
    );
    labels
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root().join(path)
    }
}

/// Writes one image as an OCI layout and a docker archive under `out`.
pub fn write(image: &Image, out: &Path, registry: &str, mtime: u64) -> Result<Built> {
    let layout = out.join(&image.name);
    let written = image.write_oci_layout(&layout)?;
    let tag = image.tags.first().context("an image needs a tag")?;
    let docker_archive = out.join(format!("{}-{tag}.docker.tar", image.name));
    write_file(&docker_archive, &image.docker_archive(registry, mtime)?)?;
    Ok(Built {
        name: image.name.clone(),
        tags: image.tags.clone(),
        manifest_digest: written.manifest_digest,
        config_digest: written.config_digest,
        layout,
        docker_archive,
    })
}

/// `skopeo copy` of every tag of an image to `registry`.
pub fn push(built: &Built, registry: &str, insecure: bool) -> Result<()> {
    for tag in &built.tags {
        let src = format!("oci:{}:{tag}", built.layout.display());
        let dest = format!(
            "docker://{}/{}:{tag}",
            registry.trim_end_matches('/'),
            built.name
        );
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--retry-times", "2"]);
        if insecure {
            cmd.arg("--dest-tls-verify=false");
        }
        cmd.args([&src, &dest]);
        eprintln!("+ skopeo copy {src} {dest}");
        let out = cmd
            .output()
            .context("run skopeo (install it: apt-get install skopeo)")?;
        if !out.status.success() {
            bail!(
                "pushing {dest} failed: {}; check that the registry is reachable and you are logged in (skopeo login)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    let release = args.profile == "release";
    let (version, bins) = match &args.bin_dir {
        Some(dir) => {
            let dir = absolute(dir);
            let bins = build::BINARIES
                .iter()
                .map(|(_, b)| (b.to_string(), dir.join(b)))
                .collect::<BTreeMap<_, _>>();
            (VersionInfo::detect()?, bins)
        }
        None => {
            let built = build::build(&build::Args {
                release,
                require_all: true,
            })?;
            (built.version, built.binaries.into_iter().collect())
        }
    };
    let out = absolute(&args.out);
    let source = repository_url()?;
    let pins_file = root().join("images/agent/debian-packages.txt");
    if args.update_packages {
        let text = std::fs::read_to_string(&pins_file)?;
        let names: Vec<String> = debian::parse_pins(&text)?
            .into_iter()
            .map(|p| p.name)
            .collect();
        let versions = debian::candidates(&names)?;
        write_file(&pins_file, debian::repin(&text, &versions).as_bytes())?;
        eprintln!("image: re-pinned {} Debian packages", names.len());
    }
    let cache = root().join("target/debian-cache");
    let (deb_layer, pins) = debian_layer(&pins_file, &cache)?;
    let images = [
        route_controller_image(&version, &source, &bins)?,
        agent_image(&version, &source, &bins, &deb_layer, &pins)?,
    ];
    let mut summary = Vec::new();
    for image in &images {
        let built = write(image, &out, &args.image_registry, version.source_date_epoch)?;
        eprintln!(
            "image: {}:{} manifest {} -> {} and {}",
            built.name,
            built.tags.join(","),
            built.manifest_digest,
            built.layout.display(),
            built.docker_archive.display()
        );
        summary.push(json!({
            "name": built.name,
            "tags": built.tags,
            "manifestDigest": built.manifest_digest,
            "configDigest": built.config_digest,
            "ociLayout": built.layout,
            "dockerArchive": built.docker_archive,
        }));
        if let Some(registry) = &args.push {
            push(&built, registry, args.push_insecure)?;
        }
    }
    write_file(
        &out.join("images.json"),
        &serde_json::to_vec_pretty(
            &json!({"version": version.version, "revision": version.commit, "images": summary}),
        )?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licences_combine_into_distinct_sorted_terms() {
        assert_eq!(
            combine_licences(["Apache-2.0", "GPL-2.0-only AND MIT", "MIT", ""]),
            "Apache-2.0 AND GPL-2.0-only AND MIT"
        );
    }
}
