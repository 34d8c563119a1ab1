//! Deleting conntrack entries with ctnetlink messages on one
//! `NETLINK_NETFILTER` socket: the wire encoding of `IPCTNL_MSG_CT_DELETE`
//! by original tuple, the parser of the kernel's acks, and the pipelined
//! exchange, run inside the dataplane's named network namespace.
//!
//! The `conntrack` tool spends a full table dump on every `-D`; one message
//! per entry looked up by tuple costs the kernel a hash lookup instead.

use crate::dataplane::{DataplaneError, Result};
use crate::eval::Flow;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use std::collections::BTreeSet;
use std::net::IpAddr;

// <linux/netlink.h>
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// <linux/socket.h>
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Requests in flight at once: their acks (a few hundred bytes at most
/// each) stay far below the socket's receive buffer, so none is dropped.
const WINDOW: usize = 128;

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Whether an entry of this protocol is found by ports alone: TCP, UDP and
/// SCTP. The kernel needs more than addresses and ports for the others
/// (ICMP's type, code and id), which a [`Flow`] does not carry.
pub fn by_tuple(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Starts a nested attribute; [`end_nest`] writes its length.
fn begin_nest(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn push_addr(buf: &mut Vec<u8>, v4: u16, v6: u16, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => push_attr(buf, v4, &a.octets()),
        IpAddr::V6(a) => push_attr(buf, v6, &a.octets()),
    }
}

/// One `IPCTNL_MSG_CT_DELETE` request (with `NLM_F_ACK`) for the entry
/// whose original direction is `flow`. Ports are sent only for protocols
/// that have them ([`by_tuple`]).
pub fn encode_ct_delete(seq: u32, flow: &Flow) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    // nlmsghdr: length written last, pid 0 (the kernel fills it in).
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg
    let family = match flow.src {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    buf.extend_from_slice(&[family, NFNETLINK_V0]);
    buf.extend_from_slice(&0u16.to_be_bytes());

    let orig = begin_nest(&mut buf, CTA_TUPLE_ORIG);
    let ip = begin_nest(&mut buf, CTA_TUPLE_IP);
    push_addr(&mut buf, CTA_IP_V4_SRC, CTA_IP_V6_SRC, &flow.src);
    push_addr(&mut buf, CTA_IP_V4_DST, CTA_IP_V6_DST, &flow.dst);
    end_nest(&mut buf, ip);
    let proto = begin_nest(&mut buf, CTA_TUPLE_PROTO);
    push_attr(&mut buf, CTA_PROTO_NUM, &[flow.protocol]);
    if by_tuple(flow.protocol) {
        push_attr(&mut buf, CTA_PROTO_SRC_PORT, &flow.sport.to_be_bytes());
        push_attr(&mut buf, CTA_PROTO_DST_PORT, &flow.dport.to_be_bytes());
    }
    end_nest(&mut buf, proto);
    end_nest(&mut buf, orig);

    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// The kernel's answer to one request: `error` is 0 on success, else a
/// negative errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u32,
    pub error: i32,
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The acks (`NLMSG_ERROR` messages carrying a `nlmsgerr`) in one datagram;
/// other message types are skipped. A message whose length does not fit
/// the datagram is an error.
pub fn parse_acks(buf: &[u8]) -> Result<Vec<Ack>, String> {
    let mut acks = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let len = u32_at(rest, 0).ok_or_else(|| format!("netlink header cut short at byte {at}"))?
            as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!(
                "netlink message at byte {at} claims {len} bytes of {}",
                rest.len()
            ));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if kind == NLMSG_ERROR {
            let seq = u32_at(rest, 8).unwrap_or_default();
            let error = u32_at(&rest[..len], NLMSG_HDRLEN)
                .ok_or_else(|| format!("netlink ack at byte {at} has no error code"))?
                as i32;
            acks.push(Ack { seq, error });
        }
        at += len.next_multiple_of(4);
    }
    Ok(acks)
}

pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::Netlink { op, source }
}

/// A netlink socket of `protocol` bound and connected to the kernel; `ops`
/// name the three steps in errors (open, bind, connect).
pub(crate) fn kernel_socket(protocol: isize, ops: [&'static str; 3]) -> Result<Socket> {
    let mut socket = Socket::new(protocol).map_err(io(ops[0]))?;
    socket.bind_auto().map_err(io(ops[1]))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io(ops[2]))?;
    Ok(socket)
}

/// Runs `work` in the named network namespace (a name under `/run/netns`,
/// or a path, as `ip netns exec` takes it), or in the current one for
/// `None`. Sockets belong to the namespace of the thread that opens them,
/// so a namespaced run opens its socket on a thread of its own that entered
/// the namespace and ends with the work; a namespace that cannot be entered
/// is an error, never a fall-back to the current namespace.
pub fn in_netns<T: Send>(
    netns: Option<&str>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let Some(name) = netns else {
        return work();
    };
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("{NETNS_DIR}/{name}")
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).map_err(io("open the network namespace"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| DataplaneError::Netlink {
                op: "enter the network namespace",
                source: e.into(),
            })?;
            work()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(DataplaneError::Rejected(
                "the conntrack deletion thread panicked".into(),
            ))
        })
    })
}

/// Deletes the entries of `flows` from the conntrack table of the current
/// network namespace, on one socket, up to [`WINDOW`] requests in flight.
/// Returns how many were deleted; entries already gone are not counted and
/// not an error. Any other refusal is reported after every ack was read.
pub fn delete(flows: &[Flow]) -> Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    let socket = kernel_socket(
        NETLINK_NETFILTER,
        [
            "open a netfilter socket",
            "bind the netfilter socket",
            "connect the netfilter socket",
        ],
    )?;
    let mut deleted = 0;
    let mut refused: Option<(Flow, i32)> = None;
    let mut recv = Vec::with_capacity(64 * 1024);
    for (c, chunk) in flows.chunks(WINDOW).enumerate() {
        let first = (c * WINDOW) as u32 + 1;
        let mut batch = Vec::with_capacity(chunk.len() * 96);
        let mut pending = BTreeSet::new();
        for (i, flow) in chunk.iter().enumerate() {
            let seq = first + i as u32;
            batch.extend_from_slice(&encode_ct_delete(seq, flow));
            pending.insert(seq);
        }
        // One datagram: the kernel handles each message in turn and acks
        // each, whether or not an earlier one failed.
        let sent = socket
            .send(&batch, 0)
            .map_err(io("send to the netfilter socket"))?;
        if sent != batch.len() {
            return Err(DataplaneError::Rejected(format!(
                "the netfilter socket took {sent} of {} bytes",
                batch.len()
            )));
        }
        while !pending.is_empty() {
            recv.clear();
            socket
                .recv(&mut recv, 0)
                .map_err(io("receive from the netfilter socket"))?;
            for ack in parse_acks(&recv).map_err(DataplaneError::Rejected)? {
                if !pending.remove(&ack.seq) {
                    continue;
                }
                match ack.error {
                    0 => deleted += 1,
                    e if e == -(Errno::ENOENT as i32) => {}
                    e => {
                        let flow = chunk[(ack.seq - first) as usize];
                        refused.get_or_insert((flow, e));
                    }
                }
            }
        }
    }
    match refused {
        None => Ok(deleted),
        Some((flow, e)) => Err(DataplaneError::Rejected(format!(
            "the kernel refused to delete the conntrack entry {flow:?}: {}; \
             {deleted} other entries were deleted",
            Errno::from_raw(-e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(protocol: u8, src: &str, dst: &str) -> Flow {
        Flow {
            protocol,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 80,
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_ipv4_tcp_deletion_is_encoded_byte_for_byte() {
        let msg = encode_ct_delete(7, &flow(6, "10.0.0.1", "10.0.0.2"));
        #[rustfmt::skip]
        let want: &[u8] = &[
            72, 0, 0, 0,        // nlmsg_len
            0x02, 0x01,         // CTNETLINK << 8 | CT_DELETE
            0x05, 0x00,         // REQUEST | ACK
            7, 0, 0, 0,         // seq
            0, 0, 0, 0,         // pid
            2, 0, 0, 0,         // AF_INET, V0, res_id 0
            52, 0, 0x01, 0x80,  // CTA_TUPLE_ORIG | NESTED
            20, 0, 0x01, 0x80,  //   CTA_TUPLE_IP | NESTED
            8, 0, 1, 0, 10, 0, 0, 1, // CTA_IP_V4_SRC
            8, 0, 2, 0, 10, 0, 0, 2, // CTA_IP_V4_DST
            28, 0, 0x02, 0x80,  //   CTA_TUPLE_PROTO | NESTED
            5, 0, 1, 0, 6, 0, 0, 0,          // CTA_PROTO_NUM, padded
            6, 0, 2, 0, 0x9c, 0x40, 0, 0,    // CTA_PROTO_SRC_PORT 40000 BE
            6, 0, 3, 0, 0x00, 0x50, 0, 0,    // CTA_PROTO_DST_PORT 80 BE
        ];
        assert_eq!(msg, want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_ipv6_udp_deletion_is_encoded_byte_for_byte() {
        let msg = encode_ct_delete(0x0102_0304, &flow(17, "fd00::1", "fd00::2"));
        let mut want: Vec<u8> = vec![
            96, 0, 0, 0, 0x02, 0x01, 0x05, 0x00, 4, 3, 2, 1, 0, 0, 0, 0, //
            10, 0, 0, 0, // AF_INET6
            76, 0, 0x01, 0x80, //
            44, 0, 0x01, 0x80, //
            20, 0, 3, 0,
        ];
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[20, 0, 4, 0]);
        want.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[
            28, 0, 0x02, 0x80, 5, 0, 1, 0, 17, 0, 0, 0, 6, 0, 2, 0, 0x9c, 0x40, 0, 0, 6, 0, 3, 0,
            0x00, 0x50, 0, 0,
        ]);
        assert_eq!(msg, want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_protocol_without_ports_sends_only_its_number() {
        let msg = encode_ct_delete(1, &flow(47, "10.0.0.1", "10.0.0.2"));
        assert_eq!(msg.len(), 56);
        assert_eq!(&msg[44..], &[12, 0, 0x02, 0x80, 5, 0, 1, 0, 47, 0, 0, 0]);
        assert!(!by_tuple(1) && !by_tuple(58) && by_tuple(132));
    }

    fn ack(seq: u32, error: i32, payload: usize) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + 4 + NLMSG_HDRLEN + payload) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0x100u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(&error.to_ne_bytes());
        // the request's header (and with an error, its payload)
        m.extend_from_slice(&[0; NLMSG_HDRLEN]);
        m.resize(m.len() + payload, 0xaa);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn acks_parse_success_missing_and_refused() {
        let mut datagram = ack(1, 0, 0);
        datagram.extend(ack(2, -2, 58));
        // a message of another type is skipped
        datagram.extend_from_slice(&16u32.to_ne_bytes());
        datagram.extend_from_slice(&3u16.to_ne_bytes());
        datagram.extend_from_slice(&[0; 10]);
        datagram.extend(ack(3, -22, 56));
        assert_eq!(
            parse_acks(&datagram).unwrap(),
            vec![
                Ack { seq: 1, error: 0 },
                Ack { seq: 2, error: -2 },
                Ack { seq: 3, error: -22 }
            ]
        );
        assert_eq!(parse_acks(&[]).unwrap(), vec![]);
    }

    #[test]
    fn cut_acks_are_errors_not_panics() {
        let whole = ack(9, 0, 0);
        for cut in 1..whole.len() {
            assert!(parse_acks(&whole[..cut]).is_err(), "cut at {cut}");
        }
        // a header claiming less than a header
        let mut short = whole.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_acks(&short).is_err());
        // an error message too short for its error code
        let mut bare = whole[..NLMSG_HDRLEN].to_vec();
        bare[..4].copy_from_slice(&(NLMSG_HDRLEN as u32).to_ne_bytes());
        assert!(parse_acks(&bare).is_err());
    }

    #[test]
    fn a_missing_namespace_is_an_error_not_the_current_one() {
        let name = format!("underlay-no-such-ns-{}", std::process::id());
        let ran = std::sync::atomic::AtomicBool::new(false);
        let r = in_netns(Some(&name), || {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        assert!(r.is_err());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
