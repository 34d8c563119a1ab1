//! The agent's command line. Every flag also reads `UNDERLAY_<FLAG>` from
//! the environment, except `--node-name`, which reads `NODE_NAME` (the
//! DaemonSet sets it from the downward API).

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s == "off" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|_| format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:9962) or off"))
    }
}

/// What `--version` prints: `cargo xtask build` embeds the version and git
/// commit (`0.1.0 (git 0123456789ab)`); a plain `cargo build` shows the crate
/// version alone.
pub const VERSION: &str = match option_env!("UNDERLAY_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "underlay-agent",
    version = VERSION,
    about = "underlay's node agent: pod IPAM and endpoints for the CNI plugin, network policy"
)]
pub struct Args {
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// The unix socket the CNI plugin calls (mode 0600; the parent
    /// directory is created).
    #[arg(
        long,
        env = "UNDERLAY_SOCKET",
        default_value = "/run/underlay/agent.sock"
    )]
    pub socket: PathBuf,
    /// Where the endpoint store lives.
    #[arg(long, env = "UNDERLAY_STATE_DIR", default_value = "/var/lib/underlay")]
    pub state_dir: PathBuf,
    /// kubeconfig file; default: in-cluster configuration, then KUBECONFIG.
    #[arg(long, env = "UNDERLAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node's pod CIDR, once per family. Standalone mode: the Node
    /// object is not consulted.
    #[arg(long = "pod-cidr", env = "UNDERLAY_POD_CIDR", value_delimiter = ',')]
    pub pod_cidrs: Vec<String>,
    /// Prometheus metrics listen address (`/metrics`), or `off`. Served
    /// without authentication, so loopback by default: with host
    /// networking any address here is reachable by everything that can
    /// reach the node on that address, pods included (NetworkPolicy does
    /// not cover the node's own ports). Give the node's address (the
    /// DaemonSet uses `$(HOST_IP):9650`) for Prometheus to scrape.
    #[arg(long, env = "UNDERLAY_METRICS_ADDR", default_value = "127.0.0.1:9962")]
    pub metrics_addr: Listen,
    /// Health listen address (`/healthz`, `/readyz`), or `off`; loopback by
    /// default (the kubelet's probes of a host-network pod reach it).
    #[arg(long, env = "UNDERLAY_HEALTH_ADDR", default_value = "127.0.0.1:9963")]
    pub health_addr: Listen,
    /// Log format on stderr (`RUST_LOG` sets the level).
    #[arg(long, env = "UNDERLAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Enforce Kubernetes NetworkPolicy; `false` leaves every pod open.
    #[arg(long, env = "UNDERLAY_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub policy: bool,
    #[command(flatten)]
    pub policy_args: underlay_policy::PolicyArgs,
    /// Pod interface MTU when the CNI configuration sets none.
    #[arg(long, env = "UNDERLAY_MTU", default_value_t = 1500)]
    pub mtu: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_parse_with_defaults_and_repeats() {
        let a = Args::try_parse_from([
            "underlay-agent",
            "--node-name",
            "n1",
            "--pod-cidr",
            "10.244.1.0/24",
            "--pod-cidr",
            "fd00:1::/64",
            "--metrics-addr",
            "off",
            "--policy=false",
        ])
        .unwrap();
        assert_eq!(a.pod_cidrs.len(), 2);
        assert_eq!(a.metrics_addr, Listen(None));
        assert_eq!(a.health_addr.0.unwrap().port(), 9963);
        assert!(!a.policy);
        assert_eq!(a.socket, PathBuf::from("/run/underlay/agent.sock"));
        assert!(Args::try_parse_from(["underlay-agent", "--metrics-addr", "nope"]).is_err());
    }

    #[test]
    fn metrics_and_health_listen_on_loopback_unless_told_otherwise() {
        let a = Args::try_parse_from(["underlay-agent"]).unwrap();
        for listen in [a.metrics_addr, a.health_addr] {
            assert!(listen.0.unwrap().ip().is_loopback(), "{listen:?}");
        }
    }
}
