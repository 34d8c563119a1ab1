//! underlay-cni: the CNI 1.1 plugin of underlay.
//!
//! Run by the container runtime with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; or by the agent
//! DaemonSet's init container as `underlay-cni install`. Module map:
//! [`env`] and [`config`] read the invocation, [`commands`] decide,
//! [`agent`] and [`dataplane`]/[`netlink`] do the side effects, [`types`]
//! and [`error`] print the answer.

#![forbid(unsafe_code)]

pub mod agent;
pub mod commands;
pub mod config;
pub mod dataplane;
pub mod env;
pub mod error;
pub mod install;
pub mod names;
pub mod netlink;
pub mod types;

use clap::{Parser, Subcommand};
use error::{CniError, code};
use std::io::{Read, Write};

/// What `--version` prints: `cargo xtask build` embeds the version and git
/// commit (`0.1.0 (git 0123456789ab)`); a plain `cargo build` shows the crate
/// version alone.
pub const VERSION: &str = match option_env!("UNDERLAY_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The command line. With no subcommand the binary is a CNI plugin and
/// reads its invocation from the environment and stdin.
#[derive(Parser, Debug)]
#[command(name = "underlay-cni", version = VERSION, about = "underlay's CNI plugin")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Copy this binary into the CNI bin directory and write the network
    /// configuration list (atomically), for the agent's init container.
    Install(install::Args),
}

/// What one CNI invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one CNI invocation: `get` reads the environment, `stdin` is the
/// network configuration.
pub fn run_cni(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let requested = config::peek_version(stdin)
        .filter(|v| types::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| types::LATEST.to_string());
    match dispatch(get, stdin) {
        Ok(Some(doc)) => Outcome {
            stdout: doc.to_string(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "cni command failed");
            Outcome {
                stdout: e.to_json(&requested),
                exit_code: 1,
            }
        }
    }
}

fn dispatch(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    let env = env::parse(get)?;
    if env.command == env::Command::Version {
        return Ok(Some(commands::version()));
    }
    let conf = config::parse(stdin)?;
    commands::require_version(env.command, conf.version)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(code::IO_FAILURE, "cannot start the async runtime").with_details(e)
        })?;
    rt.block_on(async {
        let agent = agent::GrpcAgent::new(conf.agent_socket.clone(), conf.agent_timeout);
        let span = tracing::info_span!("cni", command = env.command.as_str(), container_id = %env.container_id);
        let _e = span.enter();
        match env.command {
            env::Command::Status => commands::status(&agent).await.map(|()| None),
            env::Command::Version => Ok(Some(commands::version())),
            cmd => {
                let dp = netlink::Netlink::new().map_err(commands::dataplane_error)?;
                match cmd {
                    env::Command::Add => commands::add(&env, &conf, &agent, &dp).await.map(Some),
                    env::Command::Del => commands::del(&env, &agent, &dp).await.map(|()| None),
                    env::Command::Check => commands::check(&env, &conf, &agent, &dp).await.map(|()| None),
                    _ => commands::gc(&conf, &agent, &dp).await.map(|()| None),
                }
            }
        }
    })
}

/// The binary's entry point; returns the process exit code.
pub fn main_entry() -> i32 {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Some(CliCommand::Install(args)) => match install::run(&args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("underlay-cni install: {e:#}");
                1
            }
        },
        None => {
            let mut stdin = Vec::new();
            let read = std::io::stdin().read_to_end(&mut stdin);
            let outcome = match read {
                Ok(_) => run_cni(|k| std::env::var(k).ok(), &stdin),
                Err(e) => Outcome {
                    stdout: CniError::new(
                        code::IO_FAILURE,
                        "cannot read the network configuration from stdin",
                    )
                    .with_details(e)
                    .to_json(types::LATEST),
                    exit_code: 1,
                },
            };
            let mut out = std::io::stdout().lock();
            // A runtime that closed our stdout cannot be told anything more.
            let _ = out.write_all(outcome.stdout.as_bytes());
            let _ = out.flush();
            outcome.exit_code
        }
    }
}

fn init_tracing() {
    // Logs go to stderr: stdout carries only the CNI result.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
