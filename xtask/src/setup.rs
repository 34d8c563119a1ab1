//! `cargo xtask setup`: the system packages the tests and the lab need.

use crate::util::{exec, have, is_root};
use anyhow::{Result, bail};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Only report what is missing; never install.
    #[arg(long)]
    pub check: bool,
}

/// (the command or file that must exist, the Debian package that provides it)
const REQUIREMENTS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("iptables-legacy", "iptables"),
    ("ipset", "ipset"),
    ("conntrack", "conntrack"),
    ("protoc", "protobuf-compiler"),
    ("/usr/lib/cni/ptp", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
];

pub fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&str> = REQUIREMENTS
        .iter()
        .filter(|(what, _)| !have(what))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    missing
}

pub fn run_setup(check_only: bool) -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        eprintln!("setup: every system package the tests need is installed");
        return Ok(());
    }
    let list = missing.join(" ");
    if check_only || !is_root() || !have("apt-get") {
        bail!(
            "missing system packages: {list}; install them with \
             `sudo apt-get update && sudo apt-get install -y {list}`"
        );
    }
    eprintln!("setup: installing {list}");
    exec(
        Command::new("apt-get")
            .arg("update")
            .arg("-qq")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages();
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
