//! `cargo xtask lab [up|down|status|exec|probe|demo|apiserver] ...`: builds
//! the binaries the lab runs and hands over to `underlay-lab`.
//!
//! With no subcommand it runs the demo: up → demo → report → down, exiting
//! non-zero when any expectation is not met.

use crate::util::{cargo, exec, is_root, root};
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// Subcommands that need the underlay binaries (they start a lab).
const STARTS_A_LAB: [&str; 3] = ["up", "demo", "supervise"];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

pub fn run(args: &[String]) -> Result<()> {
    let (sub, rest) = match args.split_first() {
        Some((sub, rest)) if !sub.starts_with('-') => (sub.as_str(), rest.to_vec()),
        _ => ("demo", args.to_vec()),
    };
    if sub == "apiserver" {
        // The embedded API server alone needs no root and no other binary.
        return exec(
            cargo()
                .args([
                    "run",
                    "-q",
                    "-p",
                    "underlay-lab",
                    "--bin",
                    "underlay-lab",
                    "--",
                    "apiserver",
                ])
                .args(&rest),
        );
    }
    if !is_root() && sub != "status" {
        bail!(
            "the lab creates network namespaces and needs root; run `sudo -E cargo xtask lab {sub}`"
        );
    }
    let mut build = cargo();
    build.args(["build", "-q", "-p", "underlay-lab", "--bin", "underlay-lab"]);
    if STARTS_A_LAB.contains(&sub) {
        build.args([
            "-p",
            "underlay-agent",
            "-p",
            "underlay-cni",
            "-p",
            "underlay-route-controller",
        ]);
    }
    exec(&mut build)?;
    let bin = target_dir().join("debug");
    let status = Command::new(bin.join("underlay-lab"))
        .current_dir(root())
        .arg(sub)
        .args(&rest)
        .env("UNDERLAY_LAB_BIN_DIR", &bin)
        .status()?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
