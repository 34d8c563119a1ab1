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
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
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
    #[error("cannot {op} over netlink: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot open a route netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("listing the pod links took longer than {0:?}")]
    Timeout(Duration),
}

/// A link as the kernel lists it: (index, name, alias).
pub type ListedLink = (u32, String, String);
/// A route as the kernel lists it: (output interface, destination, prefix length).
pub type ListedRoute = (u32, IpAddr, u8);

/// The links named `prefix*` and their host routes (both families) in this
/// network namespace, read over route netlink (the agent's image carries
/// no iproute2).
pub async fn pod_links(prefix: &str, timeout: Duration) -> Result<Vec<KernelLink>, RecoverError> {
    let listing = async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RecoverError::Socket)?;
        let conn = tokio::spawn(conn);
        let result = list(&handle).await;
        conn.abort();
        result
    };
    let (links, routes) = tokio::time::timeout(timeout, listing)
        .await
        .map_err(|_| RecoverError::Timeout(timeout))??;
    Ok(links_from(prefix, links, &routes))
}

async fn list(
    handle: &rtnetlink::Handle,
) -> Result<(Vec<ListedLink>, Vec<ListedRoute>), RecoverError> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    let netlink = |op| move |source| RecoverError::Netlink { op, source };
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(m) = stream.try_next().await.map_err(netlink("list links"))? {
        let (mut name, mut alias) = (String::new(), String::new());
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::IfAlias(s) => alias = s.clone(),
                _ => {}
            }
        }
        links.push((m.header.index, name, alias));
    }
    let mut routes = Vec::new();
    for req in [
        rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut stream = handle.route().get(req).execute();
        while let Some(m) = stream.try_next().await.map_err(netlink("list routes"))? {
            let (mut oif, mut dst) = (None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a))
                    }
                    _ => {}
                }
            }
            if let (Some(oif), Some(dst)) = (oif, dst) {
                routes.push((oif, dst, m.header.destination_prefix_length));
            }
        }
    }
    Ok((links, routes))
}

/// The links named `prefix*` with the destinations of their host routes
/// (/32 and /128; wider routes over a pod link are not pod addresses).
pub fn links_from(prefix: &str, links: Vec<ListedLink>, routes: &[ListedRoute]) -> Vec<KernelLink> {
    let mut by_index: BTreeMap<u32, KernelLink> = links
        .into_iter()
        .filter(|(_, name, _)| name.starts_with(prefix))
        .map(|(index, name, owner)| {
            (
                index,
                KernelLink {
                    name,
                    owner,
                    ips: Vec::new(),
                },
            )
        })
        .collect();
    for (oif, dst, len) in routes {
        let host = match dst {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if *len == host
            && let Some(link) = by_index.get_mut(oif)
        {
            link.ips.push(*dst);
        }
    }
    let mut out: Vec<KernelLink> = by_index.into_values().collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
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

    fn listed_links() -> Vec<ListedLink> {
        vec![
            (1, "lo".into(), String::new()),
            (2, "udl0000000a".into(), "cid-1".into()),
            (3, "udl0000000b".into(), String::new()),
            (4, "eth0".into(), String::new()),
        ]
    }

    fn listed_routes() -> Vec<ListedRoute> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        vec![
            (2, ip("10.9.0.0"), 24),
            (2, ip("10.244.40.2"), 32),
            (3, ip("10.244.40.9"), 32),
            (4, ip("0.0.0.0"), 0),
            (2, ip("fd00:40::2"), 128),
            (2, ip("fe80::"), 64),
        ]
    }

    #[test]
    fn host_routes_of_prefixed_links_are_their_addresses() {
        let links = links_from("udl", listed_links(), &listed_routes());
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
        assert!(links_from("udl", Vec::new(), &[]).is_empty());
    }

    #[tokio::test]
    async fn the_current_namespace_has_no_pod_links_of_an_unused_prefix() {
        // The machine's own namespace holds no pod links of a made-up prefix.
        let links = pod_links("udl-test-none-", Duration::from_secs(10))
            .await
            .expect("list over netlink");
        assert!(links.is_empty(), "{links:?}");
    }

    #[test]
    fn recovered_attachments_are_named_after_the_pods_holding_their_addresses() {
        let links = links_from("udl", listed_links(), &listed_routes());
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
        let links = links_from("udl", listed_links(), &listed_routes());
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
