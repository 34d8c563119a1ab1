//! The policy flags of the agent's command line (flattened into its
//! `Args`); each also reads `UNDERLAY_<FLAG>` from the environment.

use crate::agent::Options;
use crate::compile::Config;
use crate::dataplane::CommandDataplane;
use crate::model::Mode;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct PolicyArgs {
    /// Log packets that policy drops, in every namespace, to the NFLOG
    /// group the agent reads its denial records from (on by default). With
    /// `--policy-log-denied=false` only namespaces annotated
    /// `policy.underlay.dev/log-denied: "true"` are logged.
    #[arg(long, env = "UNDERLAY_POLICY_LOG_DENIED", default_value_t = true, action = clap::ArgAction::Set)]
    pub policy_log_denied: bool,
    /// NFLOG group of logged denied packets; the agent binds it to read
    /// them (no other listener, such as ulogd, may hold it).
    #[arg(long, env = "UNDERLAY_POLICY_NFLOG_GROUP", default_value_t = 100)]
    pub policy_nflog_group: u16,
    /// Rate limit of logged denied packets (iptables `limit` syntax).
    #[arg(long, env = "UNDERLAY_POLICY_LOG_RATE", default_value = "10/second")]
    pub policy_log_rate: String,
    /// Seconds between checks that repair our chains and sets if someone
    /// changed them.
    #[arg(long, env = "UNDERLAY_POLICY_REPAIR_INTERVAL", default_value_t = 30)]
    pub policy_repair_interval: u64,
    /// Host-side interface prefix of pod veths (the CNI plugin's).
    #[arg(long, env = "UNDERLAY_POLICY_INTERFACE_PREFIX", default_value = "udl")]
    pub policy_interface_prefix: String,
    /// Packet mark bit used while evaluating policy, with the bit above it
    /// (together they hold a cluster policy's verdict; both are cleared
    /// afterwards); pick bits no other component on the node uses.
    #[arg(long, env = "UNDERLAY_POLICY_MARK", default_value = "0x100000", value_parser = parse_mark)]
    pub policy_mark: u32,
    /// iptables command prefix: `iptables` (the system's choice),
    /// `iptables-legacy` or `iptables-nft`; `-save`/`-restore` are appended
    /// and the IPv6 variant is derived.
    #[arg(long, env = "UNDERLAY_POLICY_IPTABLES", default_value = "iptables")]
    pub policy_iptables: String,
    /// Seconds one call of iptables, ipset or conntrack may run before it
    /// is killed (and the sync retried).
    #[arg(long, env = "UNDERLAY_POLICY_TOOL_TIMEOUT", default_value_t = 60)]
    pub policy_tool_timeout: u64,
    /// The mode of NetworkPolicies and ClusterNetworkPolicies that do not
    /// name one with the `policy.underlay.io/mode` annotation: `enforce`,
    /// or `audit` (evaluated and reported, never dropping).
    #[arg(long, env = "UNDERLAY_POLICY_DEFAULT_MODE", default_value = "enforce", value_parser = parse_mode)]
    pub policy_default_mode: Mode,
    /// Delete conntrack entries of connections a policy change denies.
    #[arg(long, env = "UNDERLAY_POLICY_CONNTRACK_CLEANUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub policy_conntrack_cleanup: bool,
    /// Keep one `iptables-restore` running per family and feed it every
    /// rule change, instead of starting one per change (nf_tables back end
    /// only; the legacy back end always starts one per change).
    #[arg(long, env = "UNDERLAY_POLICY_PERSISTENT_RESTORE", default_value_t = true, action = clap::ArgAction::Set)]
    pub policy_persistent_restore: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match Mode::parse(Some(s))? {
        Mode::Inherit => Err("use enforce or audit".into()),
        m => Ok(m),
    }
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not a number; write a single bit such as 0x100000"))?;
    if v.count_ones() != 1 {
        return Err(format!("{s:?} must be a single bit, such as 0x100000"));
    }
    if v == 0x8000_0000 {
        return Err(format!(
            "{s:?} is the top bit; policy also uses the bit above the one given, so pick a lower one such as 0x100000"
        ));
    }
    Ok(v)
}

impl PolicyArgs {
    pub fn config(&self) -> Config {
        Config {
            interface_prefix: self.policy_interface_prefix.clone(),
            mark: self.policy_mark,
            log_all: self.policy_log_denied,
            nflog_group: self.policy_nflog_group,
            log_rate: self.policy_log_rate.clone(),
        }
    }

    pub fn options(&self) -> Options {
        Options {
            repair_interval: Duration::from_secs(self.policy_repair_interval.max(1)),
            // The agent restores its recorded endpoints at every start.
            await_restore: true,
            // Logged packets (every namespace, or annotated ones) become
            // denial records.
            nflog_group: Some(self.policy_nflog_group),
            ..Options::default()
        }
    }

    pub fn dataplane(&self) -> CommandDataplane {
        let v6 = match self.policy_iptables.strip_prefix("iptables") {
            Some(rest) => format!("ip6tables{rest}"),
            None => format!("{}6", self.policy_iptables),
        };
        CommandDataplane {
            iptables: [self.policy_iptables.clone(), v6],
            timeout: Duration::from_secs(self.policy_tool_timeout.max(1)),
            persistent_restore: self.policy_persistent_restore,
            ..CommandDataplane::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    #[test]
    fn flags_default_and_validate() {
        let c = Cli::try_parse_from(["x"]).unwrap().policy;
        // Denied packets are logged everywhere by default, and read back.
        assert_eq!(
            c.config(),
            Config {
                log_all: true,
                ..Config::default()
            }
        );
        assert_eq!(c.options().nflog_group, Some(100));
        let off = Cli::try_parse_from(["x", "--policy-log-denied=false"])
            .unwrap()
            .policy;
        assert!(!off.config().log_all);
        // the group is still read: annotated namespaces log to it
        assert_eq!(off.options().nflog_group, Some(100));
        assert_eq!(
            c.dataplane().iptables,
            ["iptables".to_string(), "ip6tables".to_string()]
        );
        let c = Cli::try_parse_from([
            "x",
            "--policy-iptables",
            "iptables-legacy",
            "--policy-mark",
            "0x4",
        ])
        .unwrap()
        .policy;
        assert_eq!(c.dataplane().iptables[1], "ip6tables-legacy");
        assert_eq!(c.dataplane().timeout, Duration::from_secs(60));
        assert_eq!(c.policy_mark, 4);
        assert!(Cli::try_parse_from(["x", "--policy-mark", "0x3"]).is_err());
        assert!(Cli::try_parse_from(["x", "--policy-mark", "0x80000000"]).is_err());
        assert!(Cli::try_parse_from(["x", "--policy-mark", "zz"]).is_err());
    }
}
