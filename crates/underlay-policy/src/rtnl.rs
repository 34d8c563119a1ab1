//! The addresses of the node's own interfaces, read with one `RTM_GETADDR`
//! dump on a `NETLINK_ROUTE` socket (no `ip` tool: the agent's image does
//! not carry iproute2). Run it inside [`crate::ctnetlink::in_netns`] to
//! read another namespace's addresses.

use crate::dataplane::Result;
use crate::nl::{self, AF_INET, AF_INET6, AF_UNSPEC, NLM_F_DUMP, NLM_F_REQUEST, kernel_socket};
use netlink_sys::protocols::NETLINK_ROUTE;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// <linux/rtnetlink.h>, <linux/if_addr.h>
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// The dump request for every address of every family.
pub fn encode_getaddr(seq: u32) -> Vec<u8> {
    let mut buf = nl::begin_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq);
    // ifaddrmsg: family, prefixlen, flags, scope, index
    buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    nl::finish_message(&mut buf);
    buf
}

fn address(family: u8, payload: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

/// One `RTM_NEWADDR` message body: its family and the address it gives
/// the interface (`IFA_LOCAL` where present: on point-to-point links
/// `IFA_ADDRESS` is the peer's).
fn parse_newaddr(body: &[u8]) -> Option<IpAddr> {
    let family = *body.first()?;
    let attrs = body.get(IFADDRMSG_LEN..)?;
    nl::attr(attrs, IFA_LOCAL)
        .and_then(|p| address(family, p))
        .or_else(|| nl::attr(attrs, IFA_ADDRESS).and_then(|p| address(family, p)))
}

/// Every address of every interface of the current network namespace.
pub fn host_addresses() -> Result<Vec<IpAddr>> {
    let socket = kernel_socket(
        NETLINK_ROUTE,
        [
            "open a route netlink socket",
            "bind the route netlink socket",
            "connect the route netlink socket",
        ],
    )?;
    let mut addresses = Vec::new();
    nl::dump(&socket, &encode_getaddr(1), "address dump", |message| {
        if message.kind == RTM_NEWADDR {
            addresses.extend(parse_newaddr(message.body));
        }
        Ok(())
    })?;
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::testing::{encoded_attr as attr, message};
    use crate::nl::{u16_at, u32_at};

    #[test]
    fn the_request_is_a_dump_of_every_family() {
        let req = encode_getaddr(7);
        assert_eq!(req.len(), 24);
        assert_eq!(u32_at(&req, 0), Some(24));
        assert_eq!(u16_at(&req, 4), Some(RTM_GETADDR));
        assert_eq!(u16_at(&req, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&req, 8), Some(7));
        assert_eq!(req[16], AF_UNSPEC);
    }

    /// The addresses of a datagram of the dump answer, as `host_addresses`
    /// reads them.
    fn addresses(datagram: &[u8]) -> Result<Vec<IpAddr>, String> {
        Ok(nl::messages(datagram)?
            .into_iter()
            .filter(|m| m.kind == RTM_NEWADDR)
            .filter_map(|m| parse_newaddr(m.body))
            .collect())
    }

    #[test]
    fn addresses_prefer_local_over_the_peer_and_cover_both_families() {
        let mut v4 = vec![AF_INET, 32, 0, 0, 3, 0, 0, 0];
        v4.extend(attr(IFA_ADDRESS, &[10, 0, 0, 9]));
        v4.extend(attr(IFA_LOCAL, &[10, 0, 0, 4]));
        let mut v6 = vec![AF_INET6, 64, 0, 0, 3, 0, 0, 0];
        v6.extend(attr(
            IFA_ADDRESS,
            &"fd00::4".parse::<Ipv6Addr>().unwrap().octets(),
        ));
        let mut dump = message(RTM_NEWADDR, &v4);
        dump.extend(message(RTM_NEWADDR, &v6));
        dump.extend(message(nl::NLMSG_DONE, &[0; 4]));
        assert_eq!(
            addresses(&dump).unwrap(),
            vec![
                "10.0.0.4".parse::<IpAddr>().unwrap(),
                "fd00::4".parse().unwrap()
            ]
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let mut bad = message(RTM_NEWADDR, &[AF_INET, 0, 0, 0, 0, 0, 0, 0]);
        bad[0] = 200; // length past the end
        assert!(addresses(&bad).is_err());
        // A truncated attribute is ignored, not read past the end.
        let mut body = vec![AF_INET, 32, 0, 0, 1, 0, 0, 0];
        body.extend_from_slice(&[40, 0, 2, 0, 10, 0]);
        assert_eq!(
            addresses(&message(RTM_NEWADDR, &body)).unwrap(),
            Vec::<IpAddr>::new()
        );
        // A body too short for its header, or an address of the wrong size.
        assert_eq!(parse_newaddr(&[AF_INET, 0]), None);
        let mut odd = vec![AF_INET, 32, 0, 0, 1, 0, 0, 0];
        odd.extend(attr(IFA_LOCAL, &[10, 0, 0]));
        assert_eq!(parse_newaddr(&odd), None);
    }

    #[test]
    fn the_current_namespace_has_its_loopback_address() {
        let addresses = host_addresses().unwrap();
        assert!(
            addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }
}
