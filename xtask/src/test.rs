//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::util::{cargo, exec, have, is_root};
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// The quick inner loop: the formatting check, then the unit tests and
    /// the integration tests that need no root (nextest's default profile;
    /// it reports the root tests as skipped). No setup, no clippy.
    #[arg(long)]
    pub fast: bool,
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
    if args.fast {
        exec(cargo().args(["fmt", "--all", "--check"]))?;
        if !have("cargo-nextest") {
            bail!(
                "--fast runs cargo-nextest; install it with `cargo install cargo-nextest --locked`"
            );
        }
        return exec(
            cargo()
                .args(["nextest", "run", "--workspace", "--locked"])
                .args(&args.rest),
        );
    }
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
                    "--profile",
                    "full",
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
