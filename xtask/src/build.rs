//! `cargo xtask build`: the shipped binaries, statically linked and stripped,
//! with the version and git commit embedded.
//!
//! The static build uses an explicit `--target`, so `RUSTFLAGS` reach only the
//! binaries and their dependencies, never build scripts or proc-macros (those
//! keep linking dynamically against the host). Artifacts land in
//! `target/x86_64-unknown-linux-gnu/<profile>/`.
//!
//! The version reaches the binaries through two environment variables read at
//! compile time with `option_env!` (rustc tracks them, so a new commit rebuilds
//! only the crates that read them):
//! - `UNDERLAY_BUILD_VERSION`: what `--version` prints after the binary name,
//!   e.g. `0.1.0 (git 44ab7b2c1d2e)`;
//! - `UNDERLAY_GIT_COMMIT`: the full commit id alone (for build-info metrics).

use crate::util::{cargo, exec, root};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The target triple of the static build.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Every binary underlay ships: (package, binary). The one list: the image
/// build, the lab, the benchmarks and the end-to-end tests all build from it.
pub const BINARIES: &[(&str, &str)] = &[
    ("underlay-agent", "underlay-agent"),
    ("underlay-cni", "underlay-cni"),
    ("underlay-route-controller", "underlay-route-controller"),
    ("underlay-cli", "kubectl-underlay"),
];

/// The lab's own binary, built beside the shipped ones whenever a lab runs.
pub const LAB: (&str, &str) = ("underlay-lab", "underlay-lab");

/// `cargo build` of the shipped binaries (and the lab's when `with_lab`) in
/// `profile`, for running them in place (no static linking). Every package is
/// paired with its own `--bin`: cargo applies each `--bin` to every selected
/// package, so a single `--bin` would leave the other packages unbuilt.
pub fn local_build(profile: &str, with_lab: bool) -> Command {
    let mut cmd = cargo();
    cmd.args(["build", "-q", "--profile", profile]);
    let lab = with_lab.then_some(&LAB);
    for (pkg, bin) in BINARIES.iter().chain(lab) {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    cmd
}

/// The directory `cargo build --profile PROFILE` puts binaries in.
pub fn profile_dir(profile: &str) -> PathBuf {
    target_dir().join(match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    })
}

/// The target directory (`CARGO_TARGET_DIR`, relative to the root, or
/// `target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

/// Builds the shipped binaries (and the lab's) in `profile` and checks that
/// each is where the lab will look for it; returns that directory.
pub fn build_local(profile: &str, with_lab: bool) -> Result<PathBuf> {
    exec(&mut local_build(profile, with_lab))?;
    let dir = profile_dir(profile);
    let lab = with_lab.then_some(&LAB);
    for (_, bin) in BINARIES.iter().chain(lab) {
        if !dir.join(bin).is_file() {
            bail!(
                "cargo build succeeded but {} is missing",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Build with the release profile (what the images ship).
    #[arg(long, env = "UNDERLAY_RELEASE")]
    pub release: bool,
    /// Fail when one of the shipped binaries has no crate in the workspace
    /// (otherwise the missing ones are reported and the others built).
    #[arg(long, env = "UNDERLAY_REQUIRE_ALL")]
    pub require_all: bool,
}

/// What was built: the version string embedded and each binary's path.
#[derive(Clone, Debug)]
pub struct Output {
    pub version: VersionInfo,
    /// (binary name, path to the static binary)
    pub binaries: Vec<(String, PathBuf)>,
    /// Shipped binaries whose crate does not exist (yet).
    pub missing: Vec<String>,
}

/// The version and revision every artifact is stamped with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The workspace version (`[workspace.package] version`).
    pub version: String,
    /// Full git commit id of HEAD.
    pub commit: String,
    /// True when the working tree has changes not in HEAD.
    pub dirty: bool,
    /// Commit time of HEAD in seconds since the epoch (or SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
}

impl VersionInfo {
    /// Reads the version from the root manifest and the revision from git.
    pub fn detect() -> Result<Self> {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml"))
            .context("read the root Cargo.toml")?;
        let version = workspace_version(&manifest)
            .context("the root Cargo.toml has no [workspace.package] version; add one")?;
        let commit = git(&["rev-parse", "HEAD"])?;
        let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
        let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
            Err(_) => git(&["log", "-1", "--format=%ct", "HEAD"])?
                .parse()
                .context("git log printed a commit time that is not a number")?,
        };
        Ok(Self {
            version,
            commit,
            dirty,
            source_date_epoch,
        })
    }

    /// The short commit id (12 hex digits).
    pub fn short_commit(&self) -> &str {
        &self.commit[..self.commit.len().min(12)]
    }

    /// What `--version` prints after the program name.
    pub fn display(&self) -> String {
        let dirty = if self.dirty { ", modified" } else { "" };
        format!("{} (git {}{dirty})", self.version, self.short_commit())
    }

    /// The image tag: the version, as released.
    pub fn tag(&self) -> String {
        self.version.clone()
    }
}

/// The `version = "..."` of `[workspace.package]` in a root manifest. A tiny
/// line scanner rather than a TOML parser keeps xtask's dependencies few.
pub fn workspace_version(manifest: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
            continue;
        }
        if in_section
            && let Some(rest) = line.strip_prefix("version")
            && let Some(value) = rest.trim_start().strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .context("run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}; run from a git checkout of underlay",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The packages of the workspace that exist now (from `cargo metadata`).
fn workspace_packages() -> Result<Vec<String>> {
    let meta = crate::util::metadata(&["--no-deps"])?;
    Ok(meta["packages"]
        .as_array()
        .map(|pkgs| {
            pkgs.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The `RUSTFLAGS` of the static build, appended to any the caller set.
pub fn rustflags(existing: Option<&str>) -> String {
    let ours = "-C target-feature=+crt-static -C strip=symbols";
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(theirs) => format!("{theirs} {ours}"),
        None => ours.to_string(),
    }
}

/// The directory the static binaries of a profile land in.
pub fn out_dir(release: bool) -> PathBuf {
    target_dir()
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
}

pub fn build(args: &Args) -> Result<Output> {
    let version = VersionInfo::detect()?;
    let packages = workspace_packages()?;
    let (present, missing): (Vec<_>, Vec<_>) = BINARIES
        .iter()
        .partition(|(pkg, _)| packages.iter().any(|p| p == pkg));
    let missing: Vec<String> = missing.iter().map(|(pkg, _)| pkg.to_string()).collect();
    if !missing.is_empty() {
        if args.require_all || present.is_empty() {
            bail!(
                "the workspace has no crate for {}; every shipped binary must exist before images are built",
                missing.join(", ")
            );
        }
        eprintln!(
            "build: skipping {} (no such crate in the workspace yet)",
            missing.join(", ")
        );
    }
    let binaries = build_static(args.release, &present, &version)?;
    Ok(Output {
        version,
        binaries,
        missing,
    })
}

/// Builds `bins` (package, binary) statically for [`TARGET`], as the images
/// ship them, stamped with `version`; returns each binary's path.
pub fn build_static(
    release: bool,
    bins: &[(&str, &str)],
    version: &VersionInfo,
) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "--target", TARGET]);
    if release {
        cmd.arg("--release");
    }
    for (pkg, bin) in bins {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    cmd.env(
        "RUSTFLAGS",
        rustflags(std::env::var("RUSTFLAGS").ok().as_deref()),
    )
    .env("UNDERLAY_BUILD_VERSION", version.display())
    .env("UNDERLAY_GIT_COMMIT", &version.commit);
    exec(&mut cmd)?;
    let dir = out_dir(release);
    let binaries = bins
        .iter()
        .map(|(_, bin)| (bin.to_string(), dir.join(bin)))
        .collect::<Vec<_>>();
    for (bin, path) in &binaries {
        if !path.is_file() {
            bail!(
                "cargo build succeeded but {} is missing; is {bin} a [[bin]] target?",
                path.display()
            );
        }
        if bin == "underlay-cni" {
            let mut header = [0u8; 18];
            std::io::Read::read_exact(
                &mut std::fs::File::open(path)
                    .with_context(|| format!("open {}", path.display()))?,
                &mut header,
            )
            .with_context(|| format!("read the ELF header of {}", path.display()))?;
            if elf_type(&header) != Some(ELF_EXECUTABLE) {
                bail!(
                    "{} is not a fixed-address executable (ELF type {:?}); crates/underlay-cni/build.rs links the static plugin with -no-pie so that each start applies no relocations",
                    path.display(),
                    elf_type(&header)
                );
            }
        }
        eprintln!("build: {bin} -> {}", path.display());
    }
    Ok(binaries)
}

/// `e_type` of an ELF executable: [`ELF_EXECUTABLE`] (fixed address) or 3
/// (position independent).
const ELF_EXECUTABLE: u16 = 2;

/// The `e_type` of a little-endian ELF file's header, `None` when `bytes`
/// is not one.
fn elf_type(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 18 || &bytes[..4] != b"\x7fELF" || bytes[5] != 1 {
        return None;
    }
    Some(u16::from_le_bytes([bytes[16], bytes[17]]))
}

pub fn run(args: &Args) -> Result<()> {
    let out = build(args)?;
    eprintln!(
        "build: {} built as {}{}",
        out.binaries.len(),
        out.version.display(),
        if out.missing.is_empty() {
            String::new()
        } else {
            format!("; not built (no crate yet): {}", out.missing.join(", "))
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_version_reads_only_the_workspace_package_section() {
        let manifest = "[package]\nversion = \"9.9.9\"\n\n[workspace.package]\nedition = \"2024\"\nversion = \"0.3.1\"\n[workspace.dependencies]\nversion = \"1\"\n";
        assert_eq!(workspace_version(manifest).as_deref(), Some("0.3.1"));
        assert_eq!(workspace_version("[workspace]\nmembers = []\n"), None);
    }

    #[test]
    fn elf_type_reads_the_header_of_a_little_endian_elf_file() {
        let mut header = [0u8; 18];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[16] = 2;
        assert_eq!(elf_type(&header), Some(ELF_EXECUTABLE));
        header[16] = 3;
        assert_eq!(elf_type(&header), Some(3));
        assert_eq!(elf_type(&header[..17]), None);
        assert_eq!(elf_type(b"#!/bin/sh\nexec true\n"), None);
        header[5] = 2; // big-endian
        assert_eq!(elf_type(&header), None);
    }

    #[test]
    fn rustflags_keep_the_callers_flags_and_add_static_linking() {
        assert_eq!(
            rustflags(None),
            "-C target-feature=+crt-static -C strip=symbols"
        );
        assert_eq!(
            rustflags(Some("  ")),
            "-C target-feature=+crt-static -C strip=symbols"
        );
        assert_eq!(
            rustflags(Some("-C opt-level=1")),
            "-C opt-level=1 -C target-feature=+crt-static -C strip=symbols"
        );
    }

    #[test]
    fn version_display_names_the_commit_and_a_modified_tree() {
        let mut v = VersionInfo {
            version: "0.1.0".into(),
            commit: "44ab7b2c1d2e3f405162738495a6b7c8d9e0f1a2".into(),
            dirty: false,
            source_date_epoch: 0,
        };
        assert_eq!(v.display(), "0.1.0 (git 44ab7b2c1d2e)");
        v.dirty = true;
        assert_eq!(v.display(), "0.1.0 (git 44ab7b2c1d2e, modified)");
        assert_eq!(v.tag(), "0.1.0");
    }

    #[test]
    fn local_build_pairs_every_package_with_its_binary() {
        let cmd = local_build("dev", true);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for (pkg, bin) in BINARIES.iter().chain([&LAB]) {
            let at = args
                .windows(4)
                .position(|w| w == ["-p", pkg, "--bin", bin])
                .unwrap_or_else(|| panic!("`-p {pkg} --bin {bin}` in {args:?}"));
            assert!(at > 0);
        }
        let without: Vec<String> = local_build("dev", false)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!without.iter().any(|a| a == "underlay-lab"), "{without:?}");
    }
}
