//! The real dataplane: rtnetlink sockets in the host's and the pod's network
//! namespaces, and sysctls under /proc/sys.
//!
//! The process never leaves the host namespace. To work inside the pod, a
//! short-lived thread enters the pod namespace (`setns` affects only the
//! calling thread) and either opens a netlink socket there — a socket stays
//! bound to the namespace it was created in, so the main thread can then use
//! it — or writes the pod's sysctls, which /proc/sys resolves against the
//! writing thread's namespace.
//!
//! The veth pair is created from inside the pod namespace with its peer
//! placed directly in the host namespace, so the pod's interface never
//! appears on the host under a temporary name.

use crate::dataplane::{DataplaneError, GATEWAY_V4, GATEWAY_V6, PodLink, PodRoute, Wired};
use crate::types::IpPrefix;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::neighbour::NeighbourFlags;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;

/// The netlink dataplane, bound to the namespace the process runs in (the
/// node's).
pub struct Netlink {
    host: Handle,
    host_ns: File,
}

impl Netlink {
    /// Opens a netlink socket in the current namespace. Must be called
    /// inside a tokio runtime.
    pub fn new() -> Result<Self, DataplaneError> {
        let (conn, host, _) =
            rtnetlink::new_connection().map_err(DataplaneError::io("open a netlink socket"))?;
        tokio::spawn(conn);
        // The thread's own namespace: the one to return the host side to.
        let host_ns = File::open("/proc/thread-self/ns/net")
            .map_err(DataplaneError::io("open the host network namespace"))?;
        Ok(Self { host, host_ns })
    }
}

fn open_netns(path: &Path) -> Result<File, DataplaneError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataplaneError::NetnsNotFound(path.into())
        } else {
            DataplaneError::Io {
                op: format!("open network namespace {}", path.display()),
                source: e,
            }
        }
    })
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &File,
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DataplaneError> {
    match underlay_netns::run_in_file(ns, path, f) {
        Ok(done) => done.map_err(DataplaneError::io(
            "work inside the pod's network namespace",
        )),
        Err(underlay_netns::Error::Enter { path, source }) => {
            Err(DataplaneError::NotANetns { path, source })
        }
        Err(underlay_netns::Error::Open { source, .. }) => Err(DataplaneError::Io {
            op: format!("open network namespace {}", path.display()),
            source,
        }),
        Err(underlay_netns::Error::Spawn { source, .. }) => Err(DataplaneError::Io {
            op: "start a thread".into(),
            source,
        }),
        Err(underlay_netns::Error::Panicked(_)) => {
            Err(DataplaneError::Mismatch("namespace thread panicked".into()))
        }
    }
}

/// A netlink handle whose socket lives in the namespace `ns`.
fn connect_in(ns: &File, path: &Path) -> Result<Handle, DataplaneError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = in_netns(ns, path, move || {
        // Registering the socket with the reactor needs the runtime context.
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok((conn, handle))
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn is_errno(e: &rtnetlink::Error, errnos: &[i32]) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if errnos.contains(&m.raw_code().abs()))
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, DataplaneError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(None),
        Err(e) => Err(DataplaneError::Netlink {
            op: format!("look up link {name}"),
            source: e,
        }),
    }
}

fn alias_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// Takes a pod's host interface out of service without deleting it: down
/// (so neither end of the pair carries a packet, and the kernel drops its
/// host routes) and in [`underlay_proto::RETIRED_LINK_GROUP`], whose links
/// the agent deletes in batches. Deleting a link blocks its caller for an
/// RCU grace period (17 ms here), most of a DEL; a sandbox's namespace,
/// removed by the runtime after DEL, takes the pair with it anyway.
async fn retire_link(h: &Handle, link: &LinkMessage, name: &str) -> Result<(), DataplaneError> {
    let message = LinkUnspec::new_with_index(link.header.index)
        .down()
        .append_extra_attribute(LinkAttribute::Group(underlay_proto::RETIRED_LINK_GROUP))
        .build();
    match h.link().set(message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(()),
        Err(e) => Err(DataplaneError::Netlink {
            op: format!("retire link {name}"),
            source: e,
        }),
    }
}

/// A netlink handle in the pod's namespace for DEL; `None` when the
/// namespace is gone (the path missing, or a bind mount whose namespace
/// was removed), which is not an error for DEL.
fn still_there(netns: &Path) -> Result<Option<Handle>, DataplaneError> {
    let ns = match open_netns(netns) {
        Ok(ns) => ns,
        Err(DataplaneError::NetnsNotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    match connect_in(&ns, netns) {
        Ok(pod) => Ok(Some(pod)),
        Err(DataplaneError::NotANetns { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pod's side of a retired pair, `ifname` in `netns` if its peer is
/// the host side `host_index`: down and renamed `udlr<host index>`, so the
/// namespace holds no `ifname` any more, as after a deletion, and a later
/// ADD (ours or another plugin's) can create one. A namespace already gone
/// is fine; a rename refused falls back to deleting the pair.
async fn retire_pod_side(
    netns: &Path,
    ifname: &str,
    host_index: u32,
) -> Result<(), DataplaneError> {
    let Some(pod) = still_there(netns)? else {
        return Ok(());
    };
    let Some(inside) = link_by_name(&pod, ifname).await? else {
        return Ok(());
    };
    if !inside.attributes.contains(&LinkAttribute::Link(host_index)) {
        return Ok(()); // not our pair's
    }
    let index = inside.header.index;
    let down = LinkUnspec::new_with_index(index).down().build();
    match pod.link().set(down).execute().await {
        Ok(()) => {}
        Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => return Ok(()),
        Err(source) => {
            return Err(DataplaneError::Netlink {
                op: format!("take {ifname} down"),
                source,
            });
        }
    }
    let renamed = LinkUnspec::new_with_index(index)
        .name(format!("udlr{host_index:x}"))
        .build();
    match pod.link().set(renamed).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(()),
        Err(_) => delete_link(&pod, &inside, ifname).await,
    }
}

async fn delete_link(h: &Handle, link: &LinkMessage, name: &str) -> Result<(), DataplaneError> {
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(()),
        Err(e) => Err(DataplaneError::Netlink {
            op: format!("delete link {name}"),
            source: e,
        }),
    }
}

fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Sysctls of the host side: answer ARP for the pod's gateway (proxy ARP)
/// and NDP for fe80::1 (proxy NDP) at once, forward the pod's packets.
fn host_sysctls(ifname: &str, v4: bool, v6: bool) -> std::io::Result<()> {
    if v4 {
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"), "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/proxy_arp"), "1")?;
        // Without this the kernel delays proxy answers by up to 0.8 s.
        write_sysctl(
            &format!("/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay"),
            "0",
        )?;
    }
    if v6 {
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"), "0")?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"), "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/proxy_ndp"), "1")?;
        write_sysctl(
            &format!("/proc/sys/net/ipv6/neigh/{ifname}/proxy_delay"),
            "0",
        )?;
    }
    Ok(())
}

/// Sysctls of the pod side: IPv6 on, no duplicate address detection delay
/// (addresses are unique by allocation), no router advertisements (routes
/// come from the plugin).
fn pod_sysctls(ifname: &str, v6: bool) -> std::io::Result<()> {
    if v6 {
        write_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "0",
        )?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra"), "0")?;
    }
    Ok(())
}

fn host_route(dst: IpPrefix, oif: u32) -> Result<RouteMessage, DataplaneError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr, dst.len)
        .map_err(|e| DataplaneError::Mismatch(format!("route {dst}: {e}")))?
        .output_interface(oif)
        .scope(RouteScope::Link)
        .build())
}

fn pod_route(r: &PodRoute, oif: u32) -> Result<RouteMessage, DataplaneError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr, r.dst.len)
        .map_err(|e| DataplaneError::Mismatch(format!("route {}: {e}", r.dst)))?
        .output_interface(oif);
    match r.gw {
        Some(gw) => {
            b = b
                .gateway(gw)
                .map_err(|e| DataplaneError::Mismatch(format!("gateway {gw}: {e}")))?;
        }
        None => b = b.scope(RouteScope::Link),
    }
    Ok(b.build())
}

fn route_dst(m: &RouteMessage) -> Option<IpPrefix> {
    let len = m.header.destination_prefix_length;
    let addr = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    });
    match (addr, m.header.address_family) {
        (Some(a), _) => IpPrefix::new(a, len),
        (None, AddressFamily::Inet) => IpPrefix::new(IpAddr::V4(0.into()), 0),
        (None, AddressFamily::Inet6) => IpPrefix::new(IpAddr::V6(0u128.into()), 0),
        _ => None,
    }
}

fn route_gw(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

async fn routes_via(
    h: &Handle,
    oif: u32,
) -> Result<Vec<(IpPrefix, Option<IpAddr>)>, DataplaneError> {
    let mut out = Vec::new();
    for req in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut s = h.route().get(req).execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(DataplaneError::netlink("list routes"))?
        {
            if route_oif(&m) == Some(oif)
                && let Some(dst) = route_dst(&m)
            {
                out.push((dst, route_gw(&m)));
            }
        }
    }
    Ok(out)
}

/// True when the pod gets an IPv4 address.
fn has_ipv4(link: &PodLink) -> bool {
    link.addresses.iter().any(IpPrefix::is_ipv4)
}

/// True when the pod gets an IPv6 address.
fn has_ipv6(link: &PodLink) -> bool {
    link.addresses.iter().any(|a| !a.is_ipv4())
}

/// The host route's destination for a pod address: the address alone.
fn host_prefix(a: &IpPrefix) -> IpPrefix {
    IpPrefix::new(a.addr, if a.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
}

/// The routes to add in the pod: the configured ones, preceded by an
/// on-link route to the IPv4 gateway when a route goes through it (the
/// gateway is in no on-link prefix).
fn pod_routes_with_gateway(routes: &[PodRoute]) -> Vec<PodRoute> {
    let mut all = Vec::new();
    if routes.iter().any(|r| r.gw == Some(IpAddr::V4(GATEWAY_V4))) {
        all.push(PodRoute {
            dst: IpPrefix::new(IpAddr::V4(GATEWAY_V4), 32).expect("valid"),
            gw: None,
        });
    }
    all.extend(routes.iter().cloned());
    all
}

impl Netlink {
    /// The host name belongs to this pod. A link already holding it is
    /// left over from this pod's previous sandbox (or an interrupted ADD
    /// of this one): its namespace is being replaced, so it goes.
    async fn remove_stale_host_side(&self, link: &PodLink) -> Result<(), DataplaneError> {
        if let Some(stale) = link_by_name(&self.host, &link.host_ifname).await? {
            tracing::warn!(
                host_interface = %link.host_ifname,
                owner = alias_of(&stale).unwrap_or(""),
                container_id = %link.container_id,
                "replacing a host interface left by an earlier sandbox of this pod"
            );
            delete_link(&self.host, &stale, &link.host_ifname).await?;
        }
        Ok(())
    }

    /// Creates the veth pair from inside the pod namespace (`pod`), its peer
    /// placed directly in the host namespace.
    async fn create_veth(&self, pod: &Handle, link: &PodLink) -> Result<(), DataplaneError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(link.host_ifname.clone())
            .mtu(link.mtu)
            .setns_by_fd(self.host_ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(link.ifname.clone())
            .mtu(link.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        pod.link()
            .add(veth)
            .execute()
            .await
            .map_err(DataplaneError::netlink(format!(
                "create veth {} (host side {})",
                link.ifname, link.host_ifname
            )))
    }

    /// Host side: owner alias, up, proxy ARP/NDP, host routes. Returns the
    /// host link as it was before it came up.
    async fn configure_host_side(&self, link: &PodLink) -> Result<LinkMessage, DataplaneError> {
        let v6 = has_ipv6(link);
        let host_link = link_by_name(&self.host, &link.host_ifname)
            .await?
            .ok_or_else(|| {
                DataplaneError::Mismatch(format!("host side {} vanished", link.host_ifname))
            })?;
        let host_index = host_link.header.index;
        self.host
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .alias(link.container_id.clone())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(DataplaneError::netlink(format!(
                "bring up {}",
                link.host_ifname
            )))?;
        host_sysctls(&link.host_ifname, has_ipv4(link), v6)
            .map_err(DataplaneError::io("host sysctls"))?;
        if v6 {
            self.host
                .neighbours()
                .add(host_index, IpAddr::V6(GATEWAY_V6))
                .flags(NeighbourFlags::Proxy)
                .execute()
                .await
                .map_err(DataplaneError::netlink(
                    "add the proxy NDP entry for fe80::1",
                ))?;
        }
        for a in &link.addresses {
            let full = host_prefix(a);
            self.host
                .route()
                .add(host_route(full, host_index)?)
                .replace()
                .execute()
                .await
                .map_err(DataplaneError::netlink(format!("add host route {full}")))?;
        }
        Ok(host_link)
    }
}

/// Pod side: sysctls, addresses, up, gateway and routes. Returns the pod
/// link as it is once up.
async fn configure_pod_side(
    pod: &Handle,
    ns: &File,
    link: &PodLink,
) -> Result<LinkMessage, DataplaneError> {
    let pod_link = link_by_name(pod, &link.ifname)
        .await?
        .ok_or_else(|| DataplaneError::Mismatch(format!("{} vanished", link.ifname)))?;
    let pod_index = pod_link.header.index;
    let ifname = link.ifname.clone();
    let v6 = has_ipv6(link);
    in_netns(ns, &link.netns, move || pod_sysctls(&ifname, v6))?;
    for a in &link.addresses {
        let mut req = pod.address().add(pod_index, a.addr, a.len);
        if !a.is_ipv4() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(DataplaneError::netlink(format!("add address {a}")))?;
    }
    pod.link()
        .set(LinkUnspec::new_with_index(pod_index).up().build())
        .execute()
        .await
        .map_err(DataplaneError::netlink(format!("bring up {}", link.ifname)))?;
    for r in &pod_routes_with_gateway(&link.routes) {
        pod.route()
            .add(pod_route(r, pod_index)?)
            .replace()
            .execute()
            .await
            .map_err(DataplaneError::netlink(format!("add pod route {}", r.dst)))?;
    }
    Ok(link_by_name(pod, &link.ifname).await?.unwrap_or(pod_link))
}

impl crate::dataplane::Dataplane for Netlink {
    async fn has_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError> {
        let ns = open_netns(netns)?;
        let pod = connect_in(&ns, netns)?;
        Ok(link_by_name(&pod, ifname).await?.is_some())
    }

    async fn setup(&self, link: &PodLink) -> Result<Wired, DataplaneError> {
        let ns = open_netns(&link.netns)?;
        let pod = connect_in(&ns, &link.netns)?;
        if link_by_name(&pod, &link.ifname).await?.is_some() {
            return Err(DataplaneError::InterfaceExists {
                netns: link.netns.clone(),
                ifname: link.ifname.clone(),
            });
        }
        self.remove_stale_host_side(link).await?;
        self.create_veth(&pod, link).await?;
        let host_link = self.configure_host_side(link).await?;
        let pod_link = configure_pod_side(&pod, &ns, link).await?;
        Ok(Wired {
            host_mac: mac_of(&host_link),
            pod_mac: mac_of(&pod_link),
        })
    }

    async fn teardown(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<(), DataplaneError> {
        // Our host side, found: retired, and the pod's side renamed out of
        // the way (a runtime may ADD into the namespace again).
        if let Some(host) = link_by_name(&self.host, host_ifname).await?
            && alias_of(&host) == Some(container_id)
        {
            retire_link(&self.host, &host, host_ifname).await?;
            if let Some(path) = netns {
                retire_pod_side(path, ifname, host.header.index).await?;
            }
            return Ok(());
        }
        if let Some(path) = netns
            && let Some(pod) = still_there(path)?
            && let Some(l) = link_by_name(&pod, ifname).await?
        {
            delete_link(&pod, &l, ifname).await?;
        }
        self.remove_host_interface(host_ifname, container_id)
            .await
            .map(|_| ())
    }

    async fn check(&self, link: &PodLink) -> Result<(), DataplaneError> {
        let mismatch = |m: String| Err(DataplaneError::Mismatch(m));
        let host = match link_by_name(&self.host, &link.host_ifname).await? {
            Some(h) => h,
            None => return mismatch(format!("host interface {} is missing", link.host_ifname)),
        };
        if alias_of(&host) != Some(link.container_id.as_str()) {
            return mismatch(format!(
                "host interface {} belongs to container {:?}, not this one",
                link.host_ifname,
                alias_of(&host).unwrap_or("")
            ));
        }
        let host_routes = routes_via(&self.host, host.header.index).await?;
        for a in &link.addresses {
            let full = host_prefix(a);
            if !host_routes.iter().any(|(d, _)| *d == full) {
                return mismatch(format!(
                    "host route {full} via {} is missing",
                    link.host_ifname
                ));
            }
        }
        let ns = open_netns(&link.netns)?;
        let pod = connect_in(&ns, &link.netns)?;
        let pl = match link_by_name(&pod, &link.ifname).await? {
            Some(l) => l,
            None => {
                return mismatch(format!(
                    "{} is missing in {}",
                    link.ifname,
                    link.netns.display()
                ));
            }
        };
        if !pl.header.flags.contains(LinkFlags::Up) {
            return mismatch(format!("{} is down", link.ifname));
        }
        let mut have = Vec::new();
        let mut s = pod
            .address()
            .get()
            .set_link_index_filter(pl.header.index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(DataplaneError::netlink("list addresses"))?
        {
            let len = m.header.prefix_len;
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a
                    && let Some(p) = IpPrefix::new(*ip, len)
                {
                    have.push(p);
                }
            }
        }
        for a in &link.addresses {
            if !have.contains(a) {
                return mismatch(format!("address {a} is missing on {}", link.ifname));
            }
        }
        let pod_routes = routes_via(&pod, pl.header.index).await?;
        for r in &link.routes {
            if !pod_routes.iter().any(|(d, g)| *d == r.dst && *g == r.gw) {
                return mismatch(format!(
                    "route {} via {} is missing in the pod",
                    r.dst,
                    r.gw.map(|g| g.to_string()).unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    async fn remove_host_interface(
        &self,
        host_ifname: &str,
        container_id: &str,
    ) -> Result<bool, DataplaneError> {
        match link_by_name(&self.host, host_ifname).await? {
            Some(l) if alias_of(&l) == Some(container_id) => {
                delete_link(&self.host, &l, host_ifname).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
