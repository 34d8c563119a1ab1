//! The addresses of the node's own interfaces, read with one `RTM_GETADDR`
//! dump on a `NETLINK_ROUTE` socket (no `ip` tool: the agent's image does
//! not carry iproute2). Run it inside [`crate::ctnetlink::in_netns`] to
//! read another namespace's addresses.

use crate::ctnetlink::{io, kernel_socket, u32_at};
use crate::dataplane::{DataplaneError, Result};
use netlink_sys::protocols::NETLINK_ROUTE;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// <linux/netlink.h>
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
// <linux/rtnetlink.h>, <linux/if_addr.h>
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The dump request for every address of every family.
pub fn encode_getaddr(seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + IFADDRMSG_LEN) as u32;
    let mut buf = Vec::with_capacity(len as usize);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefixlen, flags, scope, index
    buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
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
    let (mut local, mut addr) = (None, None);
    let mut at = IFADDRMSG_LEN;
    while at + 4 <= body.len() {
        let len = usize::from(u16_at(body, at)?);
        let kind = u16_at(body, at + 2)?;
        if len < 4 || at + len > body.len() {
            break;
        }
        let payload = &body[at + 4..at + len];
        match kind {
            IFA_LOCAL => local = address(family, payload),
            IFA_ADDRESS => addr = address(family, payload),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    local.or(addr)
}

/// What one datagram of the dump answer holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub addresses: Vec<IpAddr>,
    pub done: bool,
}

/// Parses one datagram of the answer to [`encode_getaddr`].
pub fn parse_dump(buf: &[u8]) -> std::result::Result<Batch, String> {
    let mut batch = Batch::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or("truncated header")? as usize;
        let kind = u16_at(buf, at + 4).ok_or("truncated header")?;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(format!(
                "a message of {len} bytes at {at} overruns the datagram"
            ));
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            RTM_NEWADDR => batch.addresses.extend(parse_newaddr(body)),
            NLMSG_DONE => batch.done = true,
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(i32::from_ne_bytes)
                    .unwrap_or(0);
                if code != 0 {
                    return Err(format!(
                        "the kernel refused the address dump: {}",
                        nix::errno::Errno::from_raw(-code)
                    ));
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(batch)
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
    socket
        .send(&encode_getaddr(1), 0)
        .map_err(io("send the address dump request"))?;
    let mut addresses = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        socket
            .recv(&mut buf, 0)
            .map_err(io("receive the address dump"))?;
        let batch = parse_dump(&buf).map_err(DataplaneError::Rejected)?;
        addresses.extend(batch.addresses);
        if batch.done {
            return Ok(addresses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

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
        dump.extend(message(NLMSG_DONE, &[0; 4]));
        let batch = parse_dump(&dump).unwrap();
        assert!(batch.done);
        assert_eq!(
            batch.addresses,
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
        assert!(parse_dump(&bad).is_err());
        // A truncated attribute is ignored, not read past the end.
        let mut body = vec![AF_INET, 32, 0, 0, 1, 0, 0, 0];
        body.extend_from_slice(&[40, 0, 2, 0, 10, 0]);
        let batch = parse_dump(&message(RTM_NEWADDR, &body)).unwrap();
        assert!(batch.addresses.is_empty());
        let refused = message(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(parse_dump(&refused).unwrap_err().contains("refused"));
        for cut in 0..20 {
            let _ = parse_dump(&refused[..cut.min(refused.len())]);
        }
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
