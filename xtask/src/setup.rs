//! `cargo xtask setup`: the system packages the tests, the lab and the
//! benchmarks need. Every program the workspace starts is provided or
//! checked here (`xtask/tests/programs.rs` fails on one that is not).

use crate::util::{exec, have, is_root};
use anyhow::{Result, bail};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Only report what is missing; never install.
    #[arg(long)]
    pub check: bool,
}

/// (the command or file that must exist, the Debian package(s) that provide
/// it: alternatives separated by `|`, the first one apt knows is installed)
const REQUIREMENTS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
    ("iptables-nft-save", "iptables"),
    ("ip6tables", "iptables"),
    ("ip6tables-save", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("iptables-legacy", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("ip6tables-legacy-save", "iptables"),
    ("ipset", "ipset"),
    ("conntrack", "conntrack"),
    ("sysctl", "procps"),
    ("protoc", "protobuf-compiler"),
    ("/usr/lib/cni/ptp", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    ("/usr/lib/cni/bandwidth", "containernetworking-plugins"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("git", "git"),
    // Google's `kubectl` package where its repository is configured (a
    // current client); otherwise Debian's own `kubernetes-client`.
    ("kubectl", "kubectl|kubernetes-client"),
];

/// The requirements not met, each with its package alternatives.
fn missing() -> Vec<(&'static str, &'static str)> {
    REQUIREMENTS
        .iter()
        .filter(|(what, _)| !have(what))
        .copied()
        .collect()
}

/// The packages to install for `missing`: per requirement the first
/// alternative apt has a candidate for (or the first, to fail clearly).
fn packages_for(
    missing: &[(&str, &'static str)],
    known: &dyn Fn(&str) -> bool,
) -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = Vec::new();
    for (_, alternatives) in missing {
        let mut options = alternatives.split('|');
        let first = options.next().unwrap_or(alternatives);
        let pick = std::iter::once(first)
            .chain(options)
            .find(|p| known(p))
            .unwrap_or(first);
        if !pkgs.contains(&pick) {
            pkgs.push(pick);
        }
    }
    pkgs
}

/// Whether apt has an installation candidate for `package`.
fn apt_knows(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().any(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .is_some_and(|c| c.trim() != "(none)")
            })
        })
        .unwrap_or(false)
}

pub fn run_setup(check_only: bool) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        eprintln!("setup: every system package the tests need is installed");
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(what, _)| *what).collect();
    if check_only || !is_root() || !have("apt-get") {
        let list = packages_for(&missing, &|_| false).join(" ");
        bail!(
            "missing: {}; install them with `sudo apt-get update && sudo apt-get install -y {list}`",
            names.join(", ")
        );
    }
    exec(
        Command::new("apt-get")
            .arg("update")
            .arg("-qq")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let pkgs = packages_for(&missing, &apt_knows);
    eprintln!(
        "setup: installing {} (for {})",
        pkgs.join(" "),
        names.join(", ")
    );
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = self::missing().iter().map(|(what, _)| *what).collect();
    if !still.is_empty() {
        bail!(
            "apt-get ran but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    run_setup(args.check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_picked_from_the_alternatives_apt_knows() {
        let missing = [
            ("kubectl", "kubectl|kubernetes-client"),
            ("ip", "iproute2"),
            ("bridge", "iproute2"),
        ];
        assert_eq!(
            packages_for(&missing, &|p| p == "kubernetes-client" || p == "iproute2"),
            ["kubernetes-client", "iproute2"]
        );
        assert_eq!(packages_for(&missing, &|_| true), ["kubectl", "iproute2"]);
        // Nothing known: the first alternative, so apt-get names it in its error.
        assert_eq!(packages_for(&missing, &|_| false), ["kubectl", "iproute2"]);
    }
}
