//! Rebuilding endpoint records from the kernel. Every pod the plugin wired
//! has a host veth named with the plugin's prefix, whose alias names the
//! owning container and which carries a /32 (and /128) host route per pod
//! address. At start-up each such link whose addresses no record holds is
//! adopted as a record, so a store that was damaged, deleted or silently
//! lost records never lets a live pod's address be handed out again.
//! When the API server is reachable, each adopted attachment is named after
//! the pod of this node that holds its address, so its policy applies.

use crate::store::{Record, now_ms};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

/// One plugin host veth as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    pub name: String,
    /// The owning container's ID (the link's alias; empty when unset).
    pub owner: String,
    /// The destinations of its host routes.
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("cannot run ip {args}: {reason}; the agent needs iproute2 in its image")]
    Tool { args: String, reason: String },
    #[error("cannot read the output of ip {args}: {source}")]
    Parse {
        args: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct JsonLink {
    ifname: String,
    #[serde(default)]
    ifalias: String,
}

#[derive(Deserialize)]
struct JsonRoute {
    dst: String,
    #[serde(default)]
    dev: String,
}

fn ip_json(args: &[&str], timeout: Duration) -> Result<String, RecoverError> {
    let shown = args.join(" ");
    let mut cmd = Command::new("ip");
    cmd.arg("-j").args(args);
    let out = underlay_policy::tool::run(cmd, None, timeout).map_err(|e| RecoverError::Tool {
        args: shown.clone(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(RecoverError::Tool {
            args: shown,
            reason: format!("{}: {}", out.status, out.stderr.trim()),
        });
    }
    Ok(out.stdout)
}

fn parse<T: serde::de::DeserializeOwned>(args: &str, text: &str) -> Result<Vec<T>, RecoverError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|source| RecoverError::Parse {
        args: args.into(),
        source,
    })
}

/// The links named `prefix*` and their host routes, from `ip -j link` and
/// `ip -j route` (both families) in this network namespace.
pub fn pod_links(prefix: &str, timeout: Duration) -> Result<Vec<KernelLink>, RecoverError> {
    let links = ip_json(&["link", "show"], timeout)?;
    let v4 = ip_json(&["-4", "route", "show"], timeout)?;
    let v6 = ip_json(&["-6", "route", "show"], timeout)?;
    links_from_json(prefix, &links, &[&v4, &v6])
}

/// [`pod_links`] from the tools' JSON.
pub fn links_from_json(
    prefix: &str,
    links: &str,
    routes: &[&str],
) -> Result<Vec<KernelLink>, RecoverError> {
    let mut out: BTreeMap<String, KernelLink> = parse::<JsonLink>("link show", links)?
        .into_iter()
        .filter(|l| l.ifname.starts_with(prefix))
        .map(|l| {
            let link = KernelLink {
                name: l.ifname.clone(),
                owner: l.ifalias,
                ips: Vec::new(),
            };
            (l.ifname, link)
        })
        .collect();
    for text in routes {
        for r in parse::<JsonRoute>("route show", text)? {
            // Host routes show their destination without a prefix length.
            if let (Some(link), Ok(ip)) = (out.get_mut(&r.dev), r.dst.parse::<IpAddr>()) {
                link.ips.push(ip);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// Records for the links whose addresses no record in `existing` holds.
/// The pod's interface name is not in the kernel's view of the host side:
/// `eth0`, the interface every pod has. A link without an alias gets a
/// stand-in owner, so its addresses stay held until GC releases them.
pub fn adopt(existing: &[Record], links: &[KernelLink], mtu: u32) -> Vec<Record> {
    let held: HashSet<IpAddr> = existing.iter().flat_map(|r| r.ips.clone()).collect();
    links
        .iter()
        .filter(|l| !l.ips.is_empty() && l.ips.iter().all(|ip| !held.contains(ip)))
        .map(|l| {
            let owner = if l.owner.is_empty() {
                format!("recovered-{}", l.name)
            } else {
                l.owner.clone()
            };
            let mut ips = l.ips.clone();
            ips.sort_by_key(|ip| ip.is_ipv6());
            Record {
                container_id: owner.clone(),
                ifname: "eth0".into(),
                ips,
                namespace: String::new(),
                pod_name: String::new(),
                pod_uid: String::new(),
                infra_container_id: owner,
                host_interface: l.name.clone(),
                netns: String::new(),
                network_name: String::new(),
                mtu,
                created_unix_ms: now_ms(),
            }
        })
        .collect()
}

/// Names the records that have no pod after the pod holding one of their
/// addresses (`status.podIPs`).
pub fn name_by_address(records: &mut [Record], pods: &[Pod]) {
    let mut owners: BTreeMap<IpAddr, &Pod> = BTreeMap::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()));
        for ip in ips.filter_map(|ip| ip.parse().ok()) {
            owners.insert(ip, pod);
        }
    }
    for r in records.iter_mut().filter(|r| r.pod_name.is_empty()) {
        if let Some(pod) = r.ips.iter().find_map(|ip| owners.get(ip)) {
            r.namespace = pod.metadata.namespace.clone().unwrap_or_default();
            r.pod_name = pod.metadata.name.clone().unwrap_or_default();
            r.pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        }
    }
}

/// [`name_by_address`] with the pods the API server lists on `node`.
pub async fn name_from_api(client: &kube::Client, node: &str, records: &mut [Record]) {
    let pods: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    match tokio::time::timeout(Duration::from_secs(10), pods.list(&params)).await {
        Ok(Ok(list)) => name_by_address(records, &list.items),
        Ok(Err(e)) => {
            tracing::warn!(%node, error = %e, "cannot list this node's pods to name recovered attachments")
        }
        Err(_) => {
            tracing::warn!(%node, "listing this node's pods to name recovered attachments timed out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]},
        {"ifindex":2,"ifname":"udl0000000a","ifalias":"cid-1","link_netnsid":0},
        {"ifindex":3,"ifname":"udl0000000b"},
        {"ifindex":4,"ifname":"eth0"}]"#;
    const V4: &str = r#"[{"dst":"10.9.0.0/24","dev":"udl0000000a","scope":"link"},
        {"dst":"10.244.40.2","dev":"udl0000000a","scope":"link"},
        {"dst":"10.244.40.9","dev":"udl0000000b","scope":"link"},
        {"dst":"default","dev":"eth0"}]"#;
    const V6: &str = r#"[{"dst":"fd00:40::2","dev":"udl0000000a","metric":1024},
        {"dst":"fe80::/64","dev":"udl0000000a","protocol":"kernel"}]"#;

    #[test]
    fn host_routes_of_prefixed_links_are_their_addresses() {
        let links = links_from_json("udl", LINKS, &[V4, V6]).unwrap();
        assert_eq!(
            links,
            [
                KernelLink {
                    name: "udl0000000a".into(),
                    owner: "cid-1".into(),
                    ips: vec![
                        "10.244.40.2".parse().unwrap(),
                        "fd00:40::2".parse().unwrap()
                    ],
                },
                KernelLink {
                    name: "udl0000000b".into(),
                    owner: String::new(),
                    ips: vec!["10.244.40.9".parse().unwrap()],
                },
            ]
        );
        assert!(links_from_json("udl", "", &["", ""]).unwrap().is_empty());
        assert!(links_from_json("udl", "not json", &[]).is_err());
    }

    #[test]
    fn recovered_attachments_are_named_after_the_pods_holding_their_addresses() {
        let links = links_from_json("udl", LINKS, &[V4, V6]).unwrap();
        let mut records = adopt(&[], &links, 1500);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "a", "uid": "u-a"},
            "status": {"podIP": "10.244.40.2", "podIPs": [{"ip": "10.244.40.2"}, {"ip": "fd00:40::2"}]}
        }))
        .unwrap();
        name_by_address(&mut records, &[pod]);
        let named: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.namespace.as_str(),
                    r.pod_name.as_str(),
                    r.pod_uid.as_str(),
                )
            })
            .collect();
        assert_eq!(named, [("x", "a", "u-a"), ("", "", "")]);
    }

    #[test]
    fn only_links_whose_addresses_nobody_holds_are_adopted() {
        let links = links_from_json("udl", LINKS, &[V4, V6]).unwrap();
        let all = adopt(&[], &links, 1500);
        let keys: Vec<_> = all.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(keys, ["cid-1/eth0", "recovered-udl0000000b/eth0"]);
        assert_eq!(all[0].host_interface, "udl0000000a");
        // A record already holding the first link's address: only the
        // second is adopted.
        let again = adopt(&all[..1], &links, 1500);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].host_interface, "udl0000000b");
    }
}
