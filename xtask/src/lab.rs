//! `cargo xtask lab [up|down|status|exec|probe|underlay|trace|denials|demo|apiserver|build] ...`:
//! installs what the lab needs (the same setup as `cargo xtask test`),
//! builds the binaries it runs and hands over to `underlay-lab`.
//!
//! With no subcommand it runs the demo: up → demo → report → down, exiting
//! non-zero when any expectation is not met.
//!
//! `cargo xtask lab build [--profile P]` only builds the shipped binaries
//! and the lab's, and prints the directory they are in (the end-to-end
//! tests and the benchmarks use it, so the list of binaries lives in one
//! place: `build::BINARIES`).

use crate::build;
use crate::util::{cargo, exec, is_root, root};
use anyhow::{Result, bail};
use std::process::Command;

/// Subcommands that need the underlay binaries (they start a lab, or run
/// the operators' tool against its agents).
const STARTS_A_LAB: [&str; 6] = ["up", "demo", "supervise", "underlay", "trace", "denials"];

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
    if sub == "build" {
        let profile = match rest.as_slice() {
            [] => "dev".to_string(),
            [flag, p] if flag == "--profile" => p.clone(),
            _ => bail!("usage: cargo xtask lab build [--profile dev|release]"),
        };
        if is_root() {
            // The end-to-end tests build through here: what they run comes
            // from the same setup as everything else.
            crate::setup::run_setup(false)?;
        }
        let dir = build::build_local(&profile, true)?;
        #[allow(clippy::print_stdout)] // the one line callers read
        {
            println!("{}", dir.display());
        }
        return Ok(());
    }
    if !is_root() && sub != "status" {
        bail!(
            "the lab creates network namespaces and needs root; run `sudo -E cargo xtask lab {sub}`"
        );
    }
    if is_root() {
        // Every lab subcommand runs ip, iptables, ipset or the CNI plugins.
        crate::setup::run_setup(false)?;
    }
    let bin = if STARTS_A_LAB.contains(&sub) {
        build::build_local("dev", true)?
    } else {
        exec(cargo().args(["build", "-q", "-p", build::LAB.0, "--bin", build::LAB.1]))?;
        build::profile_dir("dev")
    };
    // starts: underlay-lab
    let status = Command::new(bin.join(build::LAB.1))
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
