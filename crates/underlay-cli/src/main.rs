//! `kubectl-underlay` (as a kubectl plugin: `kubectl underlay …`): what
//! underlay's node agents know, for the operator asking "is it the network
//! policy, and which one?".
//!
//! - `status` with no agent named: the cluster view, from the API server
//!   (every node's pod CIDRs, route state and agent readiness).
//! - `--socket PATH` (on a node, or inside the agent's pod): that agent's
//!   `status`, `endpoints`, `trace SRC DST PORT/PROTO` and
//!   `denials [--follow]`, over its gRPC unix socket.
//! - `--node NODE`: the same, run inside the agent pod on NODE with
//!   `kubectl exec`.
//!
//! `-o json` for every command. `trace` exits 0 when the flow is allowed, 1
//! when it is denied, 2 on an error (as `cargo xtask lab probe`), and
//! reports a disagreement between the agent's model and the kernel's rules
//! as an error.

// A command-line tool: standard output and error are its interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod cluster;
mod render;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `--version` prints: `cargo xtask build` embeds the version and git
/// commit; a plain `cargo build` shows the crate version alone.
pub const VERSION: &str = match option_env!("UNDERLAY_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[derive(Parser, Debug)]
#[command(name = "kubectl-underlay", version = VERSION, about = "underlay's node agents: status, endpoints, policy trace, denials")]
pub struct Cli {
    /// The agent's gRPC socket on this node.
    #[arg(long, env = "UNDERLAY_AGENT_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Ask the agent on NODE, through `kubectl exec` into its pod.
    #[arg(long, global = true, conflicts_with = "socket")]
    node: Option<String>,
    /// The namespace underlay's agents run in (for --node).
    #[arg(long, default_value = "underlay-system", global = true)]
    agent_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Output,
    /// Seconds to wait for the agent or the API server.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// The agent's state; with no --socket or --node, every node of the
    /// cluster from the API server.
    Status,
    /// The node's pods: addresses, interface, sandbox and the policies
    /// deciding each direction.
    Endpoints,
    /// The verdict for a flow at this node's pods and why, from the model
    /// and from the kernel's rules. SRC and DST are IP addresses.
    Trace {
        source: String,
        destination: String,
        /// PORT/PROTOCOL, e.g. 80/tcp (protocol defaults to tcp).
        port: String,
    },
    /// Denied connections the agent saw, aggregated.
    Denials {
        /// Keep following new denials.
        #[arg(long, short)]
        follow: bool,
        /// Only pods of this namespace.
        #[arg(long, short)]
        namespace: Option<String>,
    },
}

/// `PORT[/PROTOCOL]` into (port, protocol).
fn port_protocol(s: &str) -> Result<(u32, String)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        bail!("unknown protocol {proto:?}; use tcp, udp or sctp");
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("{port:?} is not a port (1-65535)"))?;
    Ok((u32::from(port), proto))
}

async fn run(cli: Cli) -> Result<u8> {
    if let Some(node) = &cli.node {
        return agent::exec_on_node(&cli, node);
    }
    let timeout = std::time::Duration::from_secs(cli.timeout);
    let Some(socket) = cli.socket.clone() else {
        return match cli.command {
            Command::Status => {
                let view = cluster::view(timeout).await?;
                render::cluster(&view, cli.output);
                Ok(0)
            }
            _ => bail!("name the agent: --socket PATH on a node, or --node NODE from anywhere"),
        };
    };
    let mut client = agent::connect(&socket, timeout).await?;
    match &cli.command {
        Command::Status => {
            let st = agent::status(&mut client).await?;
            render::status(&st, cli.output);
            Ok(0)
        }
        Command::Endpoints => {
            let eps = agent::endpoints(&mut client).await?;
            render::endpoints(&eps, cli.output);
            Ok(0)
        }
        Command::Trace {
            source,
            destination,
            port,
        } => {
            let (port, protocol) = port_protocol(port)?;
            let t = agent::trace(&mut client, source, destination, port, &protocol).await?;
            render::trace(&t, cli.output);
            if !t.agree {
                bail!(
                    "the agent's model and the kernel's rules disagree on this flow: a bug in underlay; please report it with this output"
                );
            }
            Ok(if t.allowed { 0 } else { 1 })
        }
        Command::Denials { follow, namespace } => {
            agent::denials(&mut client, *follow, namespace.clone(), cli.output).await?;
            Ok(0)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kubectl-underlay: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols_parse_or_say_why_not() {
        assert_eq!(port_protocol("80").unwrap(), (80, "tcp".into()));
        assert_eq!(port_protocol("53/UDP").unwrap(), (53, "udp".into()));
        assert_eq!(port_protocol("9000/sctp").unwrap(), (9000, "sctp".into()));
        for bad in ["0", "65536", "x/tcp", "80/icmp", ""] {
            assert!(port_protocol(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["k", "--socket", "/s", "--node", "n", "status"]).is_err());
    }
}
