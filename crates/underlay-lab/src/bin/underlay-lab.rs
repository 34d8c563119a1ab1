//! `underlay-lab`: the lab's processes.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "underlay-lab",
    version,
    about = "underlay's lab: the whole stack on one machine"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        env = "UNDERLAY_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded Kubernetes API server.
    Apiserver(underlay_lab::apiserver::Args),
    /// Bring a lab up in the background (namespaces, API server, ARM service,
    /// route controllers, agents, kubelet emulator) and print its kubeconfig.
    Up(underlay_lab::cli::UpArgs),
    /// Stop the lab and remove every namespace, process and file it created.
    Down(underlay_lab::cli::Common),
    /// Show the lab's nodes, routes, pods and processes.
    Status(underlay_lab::cli::Common),
    /// Run a command in a pod's network namespace: exec NS/POD -- CMD...
    Exec(underlay_lab::cli::ExecArgs),
    /// Probe HOST PORT from a pod; exit 0 connected, 1 refused or timed out, 2 error.
    Probe(underlay_lab::cli::ProbeArgs),
    /// The operators' tool against NODE's agent: underlay NODE -- ARGS...
    Underlay(underlay_lab::cli::UnderlayArgs),
    /// Why a flow from a pod is allowed or denied, from the agents of both
    /// ends; exit 0 allowed, 1 denied, 2 error (as probe).
    Trace(underlay_lab::cli::TraceArgs),
    /// Every node's denial records as JSON lines.
    Denials(underlay_lab::cli::DenialsArgs),
    /// Add or remove a node of the running lab (`up`): node add|remove NAME.
    Node(underlay_lab::cli::NodeArgs),
    /// Up, run the demo, print the report, down; exit 1 if any expectation fails.
    Demo(underlay_lab::cli::UpArgs),
    /// Keep a lab running in the foreground (what `up` starts in the background).
    #[command(hide = true)]
    Supervise(underlay_lab::cli::UpArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init()
    } else {
        logs.init()
    }
    match cli.command {
        Command::Apiserver(args) => underlay_lab::apiserver::run(args).await,
        Command::Up(args) => underlay_lab::cli::up(args).await,
        Command::Down(args) => underlay_lab::cli::down(args).await,
        Command::Status(args) => underlay_lab::cli::status(args).await,
        Command::Exec(args) => std::process::exit(underlay_lab::cli::exec(args).await?),
        Command::Probe(args) => std::process::exit(underlay_lab::cli::probe(args).await),
        Command::Node(args) => underlay_lab::cli::node(args).await,
        Command::Underlay(args) => std::process::exit(underlay_lab::cli::underlay(args).await?),
        Command::Trace(args) => std::process::exit(underlay_lab::cli::trace(args).await),
        Command::Denials(args) => underlay_lab::cli::denials(args).await,
        Command::Demo(args) => {
            if !underlay_lab::cli::demo(args).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Supervise(args) => underlay_lab::cli::supervise(args).await,
    }
}
