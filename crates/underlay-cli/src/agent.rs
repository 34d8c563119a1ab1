//! The agent's gRPC API over its unix socket, and `--node`: the same tool
//! run inside the agent's pod on that node with `kubectl exec`.

use crate::{Cli, Output, render};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;
use underlay_proto::v1::{self, agent_client::AgentClient};

/// The agent's socket inside its pod (the DaemonSet's `UNDERLAY_SOCKET`).
pub const POD_SOCKET: &str = "/run/underlay/agent.sock";

/// The agent container of the DaemonSet.
const CONTAINER: &str = "agent";

pub async fn connect(socket: &Path, timeout: Duration) -> Result<AgentClient<Channel>> {
    let channel = underlay_proto::unix_channel(socket, timeout, None)
        .await
        .with_context(|| {
            format!(
                "cannot reach the underlay agent at {}; is the agent running on this node?",
                socket.display()
            )
        })?;
    Ok(AgentClient::new(channel))
}

fn rpc_error(rpc: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{rpc}: {} ({:?})", s.message(), s.code())
}

pub async fn status(c: &mut AgentClient<Channel>) -> Result<v1::StatusResponse> {
    Ok(c.status(v1::StatusRequest {})
        .await
        .map_err(|s| rpc_error("Status", s))?
        .into_inner())
}

pub async fn endpoints(c: &mut AgentClient<Channel>) -> Result<v1::EndpointsResponse> {
    Ok(c.endpoints(v1::EndpointsRequest {})
        .await
        .map_err(|s| rpc_error("Endpoints", s))?
        .into_inner())
}

pub async fn trace(
    c: &mut AgentClient<Channel>,
    source: &str,
    destination: &str,
    port: u32,
    protocol: &str,
) -> Result<v1::TraceResponse> {
    // The agent checks the addresses (and says what is wrong with them).
    Ok(c.trace(v1::TraceRequest {
        source: source.into(),
        destination: destination.into(),
        protocol: protocol.into(),
        port,
    })
    .await
    .map_err(|s| rpc_error("Trace", s))?
    .into_inner())
}

/// Prints denials as they arrive (one line each; JSON lines with `-o json`).
pub async fn denials(
    c: &mut AgentClient<Channel>,
    follow: bool,
    namespace: Option<String>,
    output: Output,
) -> Result<()> {
    let mut stream = c
        .denials(v1::DenialsRequest {
            follow,
            namespace: namespace.unwrap_or_default(),
        })
        .await
        .map_err(|s| rpc_error("Denials", s))?
        .into_inner();
    render::denial_header(output);
    while let Some(d) = stream.next().await {
        let d = d.map_err(|s| rpc_error("Denials", s))?;
        render::denial(&d, output);
    }
    Ok(())
}

/// The arguments to hand the tool inside the agent's pod: ours without
/// `--node NODE` (either spelling), with the pod's socket.
pub fn forwarded_args(args: &[String]) -> Vec<String> {
    let mut out = vec!["--socket".to_string(), POD_SOCKET.to_string()];
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--node" {
            skip = true;
            continue;
        }
        if a.starts_with("--node=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Runs the command in the agent pod on `node` (`kubectl exec`), passing
/// its output through; returns its exit code.
pub fn exec_on_node(cli: &Cli, node: &str) -> Result<u8> {
    let ns = &cli.agent_namespace;
    // starts: kubectl
    let found = std::process::Command::new("kubectl")
        .args([
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/name=underlay-agent",
        ])
        .arg(format!("--field-selector=spec.nodeName={node}"))
        .args(["-o", "jsonpath={.items[0].metadata.name}"])
        .output()
        .context("cannot run kubectl to find the agent pod")?;
    let pod = String::from_utf8_lossy(&found.stdout).trim().to_string();
    if !found.status.success() || pod.is_empty() {
        bail!(
            "no underlay agent pod on node {node} in namespace {ns}: {}",
            String::from_utf8_lossy(&found.stderr).trim()
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // starts: kubectl
    let status = std::process::Command::new("kubectl")
        .args([
            "exec",
            "-n",
            ns,
            &pod,
            "-c",
            CONTAINER,
            "--",
            "kubectl-underlay",
        ])
        .args(forwarded_args(&args))
        .status()
        .context("cannot run kubectl exec")?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_become_the_pods_socket() {
        let args: Vec<String> = [
            "--node",
            "n1",
            "-o",
            "json",
            "trace",
            "10.0.0.1",
            "10.0.0.2",
            "80",
            "--node=n2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            forwarded_args(&args),
            [
                "--socket", POD_SOCKET, "-o", "json", "trace", "10.0.0.1", "10.0.0.2", "80"
            ]
        );
    }

    #[tokio::test]
    async fn an_absent_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(&dir.path().join("agent.sock"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot reach the underlay agent"),
            "{err:#}"
        );
    }
}
