//! The API server the lab runs against — the embedded one, or one given by
//! kubeconfig — with the CustomResourceDefinitions the stack serves
//! installed, and the kubeconfigs that reach it: the lab's own and the
//! nodes' (pointed at the relay inside each node namespace).

use super::{Error, Lab, LabConfig, NODE_API_ADDR, Progress, Result, io};
use crate::apiserver;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The field manager of the definitions the lab installs.
const FIELD_MANAGER: &str = "underlay-lab";

impl Lab {
    /// Applies the CustomResourceDefinitions deploy/base carries (the same
    /// definitions: `crates/underlay-api` generates both) and waits until
    /// the server serves their kinds, so `kubectl apply` of a
    /// ClusterNetworkPolicy works as soon as the lab is up.
    pub(super) async fn install_crds(&self, progress: Progress<'_>) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in [underlay_api::cnp::crd()] {
            let name = crd.metadata.name.clone().unwrap_or_default();
            progress(&format!("installing the CustomResourceDefinition {name}"));
            let params = PatchParams::apply(FIELD_MANAGER).force();
            crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
            let what = format!("the CustomResourceDefinition {name} to be established");
            self.wait_for(&what, Duration::from_secs(30), || async {
                let live = crds.get(&name).await.ok()?;
                let conditions = live.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            })
            .await?;
        }
        Ok(())
    }
}

/// Starts the embedded API server (writing the lab's kubeconfig) or, when
/// the configuration names a kubeconfig, connects to that server and copies
/// its kubeconfig into the lab directory. Returns the embedded server's
/// handle, a client, and the address the relays forward to.
pub(super) async fn connect(
    config: &LabConfig,
) -> Result<(Option<apiserver::Handle>, kube::Client, SocketAddr)> {
    match &config.kubeconfig {
        None => {
            let handle = apiserver::ApiServer::start(apiserver::Config {
                kubeconfig_out: Some(config.kubeconfig_path()),
                ..Default::default()
            })
            .await?;
            let client = handle.client()?;
            let addr = handle.addr();
            Ok((Some(handle), client, addr))
        }
        Some(path) => {
            let (client, addr) = external_client(path).await?;
            std::fs::copy(path, config.kubeconfig_path())
                .map_err(io("cannot copy the kubeconfig into the lab directory"))?;
            Ok((None, client, addr))
        }
    }
}

/// Writes `<dir>/node-kubeconfig`, the lab's kubeconfig pointed at the
/// relay every node namespace has ([`NODE_API_ADDR`]), and returns its path.
pub(super) fn write_node_kubeconfig(config: &LabConfig) -> Result<PathBuf> {
    let node_kubeconfig = config.dir.join("node-kubeconfig");
    let kubeconfig_text = std::fs::read_to_string(config.kubeconfig_path())
        .map_err(io("cannot read the lab kubeconfig"))?;
    std::fs::write(
        &node_kubeconfig,
        rewrite_server(&kubeconfig_text, NODE_API_ADDR),
    )
    .map_err(io("cannot write the node kubeconfig"))?;
    Ok(node_kubeconfig)
}

/// Points every `server:` of a kubeconfig at `authority` (`host:port`),
/// keeping its scheme: the relay stands in for the server, TLS passes
/// through it unchanged.
pub fn rewrite_server(kubeconfig: &str, authority: &str) -> String {
    kubeconfig
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            match trimmed.strip_prefix("server:") {
                Some(url) => {
                    let url = url.trim().trim_matches(['"', '\'']);
                    let scheme = url.split_once("://").map_or("https", |(s, _)| s);
                    let indent = &line[..line.len() - trimmed.len()];
                    format!("{indent}server: {scheme}://{authority}")
                }
                None => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A client for an existing API server, and the address the relays forward
/// to (it must be on this machine's loopback).
async fn external_client(path: &Path) -> Result<(kube::Client, SocketAddr)> {
    let bad = |reason: String| Error::Kubeconfig {
        path: path.to_owned(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let server = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| bad("no cluster server".into()))?;
    let uri: http::Uri = server
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| bad(format!("server {server} is not an IP on this machine")))?
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    Ok((client, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_servers_are_rewritten_keeping_indentation() {
        let kc = "clusters:\n- cluster:\n    server: https://127.0.0.1:4321\n  name: lab\n";
        assert_eq!(
            rewrite_server(kc, "127.0.0.1:6443"),
            "clusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: lab\n"
        );
        assert!(
            rewrite_server("    server: \"http://[::1]:80\"", "127.0.0.1:6443")
                .ends_with("server: http://127.0.0.1:6443\n")
        );
    }
}
