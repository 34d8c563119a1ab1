//! Small process helpers shared by the xtask subcommands.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root, using the cargo that runs xtask.
pub fn cargo() -> Command {
    // starts: cargo
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    scrub_package_env(&mut cmd);
    cmd
}

/// Removes the variables cargo sets for the package it runs (`cargo run`
/// sets them for xtask, nextest for each test). A nested cargo passes them
/// on to build scripts, and some rerun when one changes (ring's reruns on
/// `CARGO_MANIFEST_DIR`): left in place, every `cargo xtask` would rebuild
/// ring and everything above it.
pub fn scrub_package_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            cmd.env_remove(key);
        }
    }
}

/// `cargo metadata --format-version 1 ARGS`, parsed.
pub fn metadata(args: &[&str]) -> Result<serde_json::Value> {
    let out = cargo()
        .args(["metadata", "--format-version", "1"])
        .args(args)
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parse cargo metadata output")
}

/// Runs a command to completion, echoing it first; fails on a non-zero exit.
pub fn exec(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

pub use underlay_netns::is_root;

/// True when `name` is an executable on PATH or an absolute path that exists.
pub fn have(name: &str) -> bool {
    if name.starts_with('/') {
        return std::path::Path::new(name).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}
