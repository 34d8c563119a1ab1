//! `cargo xtask bench <suite>`: benchmarks reported as ratios against a
//! reference measured in the same run.

use crate::build;
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
    /// Pod-to-pod TCP throughput (iperf3), request latency and new TCP
    /// connections per second across two lab nodes: native routing vs a
    /// VXLAN overlay, then 0 vs 1,000 NetworkPolicies, each pair alternated
    /// over rounds and reported as medians with their spread (needs root).
    /// The underlay binaries are built and run in the release profile.
    Datapath {
        /// Build and run the underlay binaries in the dev profile instead
        /// (quicker to build; the policy figures are then not representative).
        #[arg(long)]
        dev: bool,
        /// Extra arguments: `--quick` for a short run, `--rounds N` (default
        /// 5), `--policies N` (default 1,000).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Policy engine on a 100-pod node in a 10,000-pod, 1,000-namespace,
    /// 2,000-policy cluster, in a network namespace it creates (needs
    /// root): first programming and one policy / label / pod change
    /// (p50/p99), against restoring the full ruleset from scratch.
    Policy {
        /// Extra arguments (`--pods N --namespaces N --policies N --local N
        /// --iterations N`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Route table convergence and ARM write count: 400 nodes join, then 50
    /// leave and 50 join, against the lab's ARM service with scaled-down
    /// Azure latency; underlay against per-route PUTs and a fixed 30 s batch
    /// + 30 s settle, as ratios.
    Routes,
    /// CNI ADD+DEL latency (p50/p99), one at a time and 8 at a time:
    /// underlay (plugin + agent) against the reference ptp + host-local
    /// plugins in the same run, as ratios (needs root). The plugin and the
    /// agent are the shipped builds (static, release).
    Cni,
}

pub fn run(args: &Args) -> Result<()> {
    if !matches!(args.suite, Suite::Ipam { .. } | Suite::Routes) {
        // The other suites run iptables, ipset, the reference CNI plugins
        // and iperf3 in network namespaces.
        if !crate::util::is_root() {
            anyhow::bail!(
                "this benchmark creates network namespaces and needs root; run `sudo -E cargo xtask bench ...`"
            );
        }
        crate::setup::run_setup(false)?;
    }
    match &args.suite {
        Suite::Cni => {
            // The plugin and the agent as the images ship them: static,
            // release, the plugin linked at a fixed address.
            let version = build::VersionInfo::detect()?;
            let shipped: Vec<_> = build::BINARIES
                .iter()
                .filter(|(pkg, _)| matches!(*pkg, "underlay-agent" | "underlay-cni"))
                .copied()
                .collect();
            let built = build::build_static(true, &shipped, &version)?;
            let path = |name: &str| {
                built
                    .iter()
                    .find(|(bin, _)| bin == name)
                    .map(|(_, path)| path.clone())
                    .expect("built above")
            };
            exec(
                cargo()
                    .args(["bench", "-p", "underlay-cni", "--bench", "cni"])
                    .env("UNDERLAY_CNI_BIN", path("underlay-cni"))
                    .env("UNDERLAY_AGENT_BIN", path("underlay-agent")),
            )
        }
        // The routes suite waits on (scaled) Azure latency, not on CPU, so
        // the quick-to-build dev profile measures the same thing.
        Suite::Routes => exec(cargo().args([
            "bench",
            "-p",
            "underlay-route-controller",
            "--bench",
            "routes",
            "--profile",
            "dev",
        ])),
        Suite::Ipam { rest } => exec(
            cargo()
                .args(["bench", "-p", "underlay-ipam", "--bench", "allocator", "--"])
                .args(rest),
        ),
        Suite::Policy { rest } => exec(
            cargo()
                .args(["bench", "-p", "underlay-policy", "--bench", "policy", "--"])
                .args(rest),
        ),
        Suite::Datapath { dev, rest } => {
            let bin = build::build_local(if *dev { "dev" } else { "release" }, false)?;
            exec(
                cargo()
                    .args(["bench", "-p", "underlay-lab", "--bench", "datapath", "--"])
                    .args(rest)
                    .env("UNDERLAY_LAB_BIN_DIR", bin),
            )
        }
    }
}
