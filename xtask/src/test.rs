//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::util::{cargo, exec, have, is_root};
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (the system package check).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip the formatting check and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the test runner (e.g. a filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_setup {
        crate::setup::run_setup(false)?;
    }
    if !is_root() {
        bail!(
            "the test suite includes tests that need root (network namespaces, iptables); \
             run `sudo -E cargo xtask test`"
        );
    }
    if !args.no_lint {
        exec(cargo().args(["fmt", "--all", "--check"]))?;
        exec(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Tests that need root fail instead of skipping when this is set.
    let nextest = have("cargo-nextest");
    if nextest {
        exec(
            cargo()
                .args([
                    "nextest",
                    "run",
                    "--workspace",
                    "--locked",
                    "--no-fail-fast",
                ])
                .args(&args.rest)
                .env("UNDERLAY_REQUIRE_ROOT", "1"),
        )?;
        exec(
            cargo()
                .args(["test", "--workspace", "--locked", "--doc"])
                .env("UNDERLAY_REQUIRE_ROOT", "1"),
        )?;
    } else {
        exec(
            cargo()
                .args(["test", "--workspace", "--locked", "--no-fail-fast"])
                .args(&args.rest)
                .env("UNDERLAY_REQUIRE_ROOT", "1"),
        )?;
    }
    Ok(())
}
