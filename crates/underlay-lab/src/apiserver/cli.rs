//! The `underlay-lab apiserver` command: run the server as a process until
//! SIGINT or SIGTERM, writing the kubeconfig (and snapshot) for others.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tracing::info;

use super::{ApiServer, Config};

/// Run the embedded Kubernetes API server.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "UNDERLAY_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for this server to FILE once it is listening.
    #[arg(
        long,
        env = "UNDERLAY_KUBECONFIG_OUT",
        value_name = "FILE",
        default_value = "underlay-lab.kubeconfig"
    )]
    pub kubeconfig_out: PathBuf,
    /// Keep state in FILE: loaded at start if present, saved while running and at exit.
    #[arg(long, env = "UNDERLAY_SNAPSHOT", value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Bearer token clients must present (random when unset).
    #[arg(long, env = "UNDERLAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve plain HTTP instead of HTTPS (kubectl then sends no token and gets 401).
    #[arg(long, env = "UNDERLAY_PLAIN_HTTP")]
    pub plain_http: bool,
    /// Changes retained for watches that resume from an older resourceVersion.
    #[arg(long, env = "UNDERLAY_WATCH_HISTORY", default_value_t = 10_000)]
    pub watch_history: usize,
}

/// Serve until SIGINT or SIGTERM, then shut down cleanly.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config {
        listen: args.listen,
        tls: !args.plain_http,
        token: args.token,
        kubeconfig_out: Some(args.kubeconfig_out.clone()),
        snapshot: args.snapshot,
        history: args.watch_history,
        ..Config::default()
    };
    let handle = ApiServer::start(config)
        .await
        .context("starting the api server")?;
    info!(url = %handle.url(), kubeconfig = %args.kubeconfig_out.display(), "serving the kubernetes api");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
    handle
        .shutdown()
        .await
        .context("shutting down the api server")?;
    Ok(())
}
