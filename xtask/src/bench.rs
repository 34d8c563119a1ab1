//! `cargo xtask bench <suite>`: benchmarks reported as ratios against a
//! reference measured in the same run.

use crate::util::{cargo, exec};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub suite: Suite,
}

#[derive(clap::Subcommand)]
pub enum Suite {
    /// IPAM allocator throughput (criterion): a /16 node range filled to 99%
    /// and a /64, against allocation on an empty range.
    Ipam {
        /// Extra arguments for criterion (e.g. `--quick`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    match &args.suite {
        Suite::Ipam { rest } => exec(
            cargo()
                .args(["bench", "-p", "underlay-ipam", "--bench", "allocator", "--"])
                .args(rest),
        ),
    }
}
