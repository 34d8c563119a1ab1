//! `cargo xtask`: the one entry point for building, testing and running
//! underlay. Each subcommand lives in its own module; this file only parses
//! the command line and dispatches.

mod bench;
mod build;
mod deploy;
mod hack;
mod image;
mod lab;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "underlay's build, test and lab tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the system packages the tests need and install the missing ones
    /// (as root on Debian/Ubuntu) or print the command that installs them.
    Setup(setup::Args),
    /// Formatting check, clippy with -D warnings and the whole test suite,
    /// including the tests that need root and network namespaces.
    Test(test::Args),
    /// Run benchmarks and report ratios against a reference run.
    Bench(bench::Args),
    /// Build the shipped binaries: statically linked, stripped, with the
    /// version and git commit embedded.
    Build(build::Args),
    /// Build the container images (OCI layout and docker archive) without a
    /// container daemon; optionally push them.
    Image(image::Args),
    /// Render deploy/base with the image references and apply it to a
    /// cluster with server-side apply; wait for the rollout.
    Deploy(deploy::Args),
    /// Regenerate crates/underlay-workspace-hack (one feature set for every
    /// third-party package, so builds of different packages share them).
    WorkspaceHack(hack::Args),
    /// Bring up the whole stack on this machine and run the demo.
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Deploy(args) => deploy::run(&args),
        Command::Lab { args } => lab::run(&args),
        Command::WorkspaceHack(args) => hack::run(&args),
    }
}
