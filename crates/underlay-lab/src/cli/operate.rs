//! The operators' tool (`kubectl-underlay`) against the lab's agents:
//! `lab underlay NODE -- ARGS` runs it on one node's agent socket,
//! `lab trace` asks the source node's agent for the egress verdict and the
//! destination node's for ingress, and `lab denials` collects every node's
//! denial records as JSON lines.

use super::{Common, abs};
use crate::lab::LabState;
use crate::traffic::Protocol;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(clap::Args, Debug, Clone)]
pub struct UnderlayArgs {
    #[command(flatten)]
    pub common: Common,
    /// The node whose agent to ask.
    pub node: String,
    /// The tool's arguments, e.g. `-- endpoints -o json`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub common: Common,
    /// The source pod, NAMESPACE/NAME.
    pub pod: String,
    /// An IP address, or a pod NAMESPACE/NAME.
    pub host: String,
    pub port: u16,
    #[arg(long, env = "UNDERLAY_LAB_PROTOCOL", default_value = "tcp")]
    pub protocol: Protocol,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DenialsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Keep following new denials.
    #[arg(long, short)]
    pub follow: bool,
}

/// The tool beside the lab's binaries.
fn tool() -> PathBuf {
    let dir = std::env::var_os("UNDERLAY_LAB_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .unwrap_or_default();
    dir.join("kubectl-underlay")
}

fn socket(st: &LabState, node: &str) -> Result<PathBuf> {
    if !st.nodes.iter().any(|n| n.name == node) {
        let names: Vec<&str> = st.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!("no node {node} in the lab (nodes: {})", names.join(", "));
    }
    Ok(st.dir.join("nodes").join(node).join("agent.sock"))
}

fn load(common: &Common) -> Result<LabState> {
    LabState::load(&abs(&common.dir).join("state.json"))
        .context("no lab is up; run `cargo xtask lab up` first")
}

fn command(st: &LabState, node: &str) -> Result<tokio::process::Command> {
    // starts: kubectl-underlay
    let mut cmd = tokio::process::Command::new(tool());
    cmd.env("KUBECONFIG", &st.kubeconfig)
        .arg("--socket")
        .arg(socket(st, node)?);
    Ok(cmd)
}

/// `lab underlay NODE -- ARGS`: the tool's exit code.
pub async fn underlay(args: UnderlayArgs) -> Result<i32> {
    let st = load(&args.common)?;
    let status = command(&st, &args.node)?
        .args(&args.args)
        .status()
        .await
        .with_context(|| format!("cannot run {}", tool().display()))?;
    Ok(status.code().unwrap_or(2))
}

/// One node's trace of the flow, as the tool's JSON.
async fn trace_on(
    st: &LabState,
    node: &str,
    src: IpAddr,
    dst: IpAddr,
    args: &TraceArgs,
) -> Result<Value> {
    let out = command(st, node)?
        .args(["-o", "json", "trace"])
        .arg(src.to_string())
        .arg(dst.to_string())
        .arg(format!("{}/{}", args.port, args.protocol))
        .output()
        .await
        .with_context(|| format!("cannot run {}", tool().display()))?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the agent on {node} gave no trace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `lab trace`: 0 allowed, 1 denied, 2 error (a disagreement between an
/// agent's model and its kernel rules is an error).
pub async fn trace(args: TraceArgs) -> i32 {
    match trace_inner(&args).await {
        Ok(allowed) => i32::from(!allowed),
        Err(e) => {
            eprintln!("lab trace: {e:#}");
            2
        }
    }
}

/// The destination address and, when it is a lab pod, its node.
fn destination(st: &LabState, host: &str) -> Result<(IpAddr, Option<String>)> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        let node = st.pods.iter().find(|p| p.ips.contains(&ip));
        return Ok((ip, node.map(|p| p.node.clone())));
    }
    let p = st
        .pod(host)
        .with_context(|| format!("{host} is neither an IP address nor a running pod"))?;
    let ip = *p
        .ips
        .first()
        .context("the destination pod has no address")?;
    Ok((ip, Some(p.node.clone())))
}

async fn trace_inner(args: &TraceArgs) -> Result<bool> {
    let st = load(&args.common)?;
    let src_pod = st
        .pod(&args.pod)
        .with_context(|| format!("no running pod {}; see `cargo xtask lab status`", args.pod))?;
    let (dst, dst_node) = destination(&st, &args.host)?;
    let src = *src_pod
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .with_context(|| format!("{} has no address of the destination's family", args.pod))?;
    let mut nodes = vec![src_pod.node.clone()];
    if let Some(n) = dst_node
        && n != src_pod.node
    {
        nodes.push(n);
    }
    let (mut allowed, mut agree) = (true, true);
    let mut out = std::io::stdout();
    for node in &nodes {
        let t = trace_on(&st, node, src, dst, args).await?;
        for d in t["directions"].as_array().into_iter().flatten() {
            let verdict = if d["kernel"]["allowed"] == true {
                "allowed"
            } else {
                "denied"
            };
            let _ = writeln!(
                out,
                "{} at {} (node {node}): {verdict}\n  model:  {}\n  kernel: {}",
                d["direction"].as_str().unwrap_or("?"),
                d["pod"].as_str().unwrap_or("?"),
                d["model"]["reason"].as_str().unwrap_or(""),
                d["kernel"]["reason"].as_str().unwrap_or(""),
            );
        }
        allowed &= t["allowed"] == true;
        agree &= t["agree"] == true;
    }
    let _ = writeln!(
        out,
        "{} -> {dst}:{}/{}: {}",
        args.pod,
        args.port,
        args.protocol,
        if allowed { "allowed" } else { "denied" }
    );
    if !agree {
        bail!("an agent's model and its kernel rules disagree on this flow (a bug in underlay)");
    }
    Ok(allowed)
}

/// `lab denials [--follow]`: every node's denial records as JSON lines,
/// each with the node it came from.
pub async fn denials(args: DenialsArgs) -> Result<()> {
    let st = load(&args.common)?;
    let mut tasks = Vec::new();
    for node in st.nodes.iter().map(|n| n.name.clone()) {
        let mut cmd = command(&st, &node)?;
        cmd.args(["-o", "json", "denials"]);
        if args.follow {
            cmd.arg("--follow");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", tool().display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        tasks.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(mut v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                v["node"] = Value::String(node.clone());
                let _ = writeln!(std::io::stdout(), "{v}");
            }
            child.wait().await.ok().and_then(|s| s.code())
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.ok().flatten() != Some(0) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} node(s) could not list their denials");
    }
    Ok(())
}
