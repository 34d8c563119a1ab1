//! The conntrack table over ctnetlink, on `NETLINK_NETFILTER` sockets:
//! listing a family's entries with one `IPCTNL_MSG_CT_GET` dump, and
//! deleting entries with `IPCTNL_MSG_CT_DELETE` by original tuple,
//! pipelined on one socket, run inside the dataplane's named network
//! namespace. No `conntrack` tool: its `-D` spends a full table dump on
//! every entry, and its text output is not an interface.
//!
//! A [`Flow`] carries the original tuple as the kernel keeps it: for ICMP
//! and ICMPv6 the identifier sits where the source port would be and
//! `type << 8 | code` where the destination port would be, so an echo's
//! entry is found by its tuple like a TCP connection's.

use crate::dataplane::{DataplaneError, Result};
use crate::eval::Flow;
use crate::nl::{
    self, AF_INET, AF_INET6, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR, io, kernel_socket,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use nix::errno::Errno;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;
const NFGENMSG_LEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
// <linux/netfilter/nf_conntrack_common.h>, <linux/netfilter/nf_conntrack_tcp.h>
const IPS_SEEN_REPLY: u32 = 1 << 1;
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;

/// Requests in flight at once: their acks (a few hundred bytes at most
/// each) stay far below the socket's receive buffer, so none is dropped.
const WINDOW: usize = 128;

/// The attribute numbers of ICMP's identifier, type and code, by protocol.
fn icmp_attrs(protocol: u8) -> Option<[u16; 3]> {
    match protocol {
        IPPROTO_ICMP => Some([CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE]),
        IPPROTO_ICMPV6 => Some([
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
        ]),
        _ => None,
    }
}

/// Whether an entry of this protocol has ports in its tuple: TCP, UDP and
/// SCTP. ICMP's tuple has an identifier, type and code instead (see the
/// module's note); other protocols have addresses only.
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

fn push_addr(buf: &mut Vec<u8>, v4: u16, v6: u16, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => nl::push_attr(buf, v4, &a.octets()),
        IpAddr::V6(a) => nl::push_attr(buf, v6, &a.octets()),
    }
}

pub(crate) fn nfgenmsg(buf: &mut Vec<u8>, family: u8) {
    buf.extend_from_slice(&[family, NFNETLINK_V0]);
    buf.extend_from_slice(&0u16.to_be_bytes());
}

fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// One `IPCTNL_MSG_CT_DELETE` request (with `NLM_F_ACK`) for the entry
/// whose original direction is `flow`: ports for protocols that have them
/// ([`has_ports`]), identifier, type and code for ICMP and ICMPv6.
pub fn encode_ct_delete(seq: u32, flow: &Flow) -> Vec<u8> {
    let mut buf = nl::begin_message(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    nfgenmsg(&mut buf, family_of(&flow.src));
    let orig = nl::begin_nest(&mut buf, CTA_TUPLE_ORIG);
    let ip = nl::begin_nest(&mut buf, CTA_TUPLE_IP);
    push_addr(&mut buf, CTA_IP_V4_SRC, CTA_IP_V6_SRC, &flow.src);
    push_addr(&mut buf, CTA_IP_V4_DST, CTA_IP_V6_DST, &flow.dst);
    nl::end_nest(&mut buf, ip);
    let proto = nl::begin_nest(&mut buf, CTA_TUPLE_PROTO);
    nl::push_attr(&mut buf, CTA_PROTO_NUM, &[flow.protocol]);
    if has_ports(flow.protocol) {
        nl::push_attr(&mut buf, CTA_PROTO_SRC_PORT, &flow.sport.to_be_bytes());
        nl::push_attr(&mut buf, CTA_PROTO_DST_PORT, &flow.dport.to_be_bytes());
    } else if let Some([id, kind, code]) = icmp_attrs(flow.protocol) {
        nl::push_attr(&mut buf, id, &flow.sport.to_be_bytes());
        let [icmp_type, icmp_code] = flow.dport.to_be_bytes();
        nl::push_attr(&mut buf, kind, &[icmp_type]);
        nl::push_attr(&mut buf, code, &[icmp_code]);
    }
    nl::end_nest(&mut buf, proto);
    nl::end_nest(&mut buf, orig);
    nl::finish_message(&mut buf);
    buf
}

/// The dump request for every conntrack entry of one family.
pub fn encode_ct_dump(seq: u32, family: u8) -> Vec<u8> {
    let mut buf = nl::begin_message(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    nfgenmsg(&mut buf, family);
    nl::finish_message(&mut buf);
    buf
}

fn ip_from(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

fn be16(payload: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(payload?.try_into().ok()?))
}

fn byte(payload: Option<&[u8]>) -> Option<u8> {
    payload?.first().copied()
}

/// The original-direction tuple of one entry (`CTA_TUPLE_ORIG`'s payload).
fn parse_tuple(tuple: &[u8]) -> Option<Flow> {
    let ip = nl::attr(tuple, CTA_TUPLE_IP)?;
    let proto = nl::attr(tuple, CTA_TUPLE_PROTO)?;
    let src = ip_from(nl::attr(ip, CTA_IP_V4_SRC).or_else(|| nl::attr(ip, CTA_IP_V6_SRC))?)?;
    let dst = ip_from(nl::attr(ip, CTA_IP_V4_DST).or_else(|| nl::attr(ip, CTA_IP_V6_DST))?)?;
    let protocol = byte(nl::attr(proto, CTA_PROTO_NUM))?;
    let (sport, dport) = if has_ports(protocol) {
        (
            be16(nl::attr(proto, CTA_PROTO_SRC_PORT))?,
            be16(nl::attr(proto, CTA_PROTO_DST_PORT))?,
        )
    } else if let Some([id, kind, code]) = icmp_attrs(protocol) {
        let icmp_type = byte(nl::attr(proto, kind))?;
        let icmp_code = byte(nl::attr(proto, code))?;
        (
            be16(nl::attr(proto, id))?,
            u16::from_be_bytes([icmp_type, icmp_code]),
        )
    } else {
        (0, 0)
    };
    Some(Flow {
        protocol,
        src,
        dst,
        sport,
        dport,
    })
}

/// One `IPCTNL_MSG_CT_NEW` message of a dump: the entry's original tuple,
/// or `None` for an entry that carries no live connection — never
/// answered (the next packet is NEW and meets the policy anyway), or TCP
/// already closing — and for an entry it cannot read.
pub fn parse_entry(body: &[u8]) -> Option<Flow> {
    let attrs = body.get(NFGENMSG_LEN..)?;
    let status =
        nl::attr(attrs, CTA_STATUS).and_then(|p| Some(u32::from_be_bytes(p.try_into().ok()?)))?;
    if status & IPS_SEEN_REPLY == 0 {
        return None;
    }
    let flow = parse_tuple(nl::attr(attrs, CTA_TUPLE_ORIG)?)?;
    if flow.protocol == IPPROTO_TCP {
        let state = nl::attr(attrs, CTA_PROTOINFO)
            .and_then(|p| nl::attr(p, CTA_PROTOINFO_TCP))
            .and_then(|p| byte(nl::attr(p, CTA_PROTOINFO_TCP_STATE)));
        if matches!(state, Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)) {
            return None;
        }
    }
    Some(flow)
}

/// The original tuple of one conntrack message (an entry of a dump, an
/// event), whatever the entry's state.
fn original_tuple(body: &[u8]) -> Option<Flow> {
    parse_tuple(nl::attr(body.get(NFGENMSG_LEN..)?, CTA_TUPLE_ORIG)?)
}

/// What one conntrack event says (a message of the new or destroy
/// group): a connection's original tuple began or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    New(Flow),
    Destroyed(Flow),
}

/// One message of the conntrack event groups; `None` for any other
/// message and for one it cannot read. Unlike [`parse_entry`] it keeps
/// every tuple, answered or not: a new connection's event comes before any
/// answer, and no event says when one arrives.
pub fn parse_event(kind: u16, body: &[u8]) -> Option<Event> {
    let tuple = || original_tuple(body);
    match kind {
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => tuple().map(Event::New),
        k if k == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE => {
            tuple().map(Event::Destroyed)
        }
        _ => None,
    }
}

pub(crate) fn netfilter_socket() -> Result<netlink_sys::Socket> {
    kernel_socket(
        NETLINK_NETFILTER,
        [
            "open a netfilter socket",
            "bind the netfilter socket",
            "connect the netfilter socket",
        ],
    )
}

/// The live entries of one family (`AF_INET` or `AF_INET6`, or both with
/// `AF_UNSPEC`) in the conntrack table of the network namespace of
/// `socket` ([`parse_entry`]).
pub fn list(socket: &netlink_sys::Socket, family: u8) -> Result<Vec<Flow>> {
    list_with(socket, family, parse_entry)
}

/// Every entry's original tuple, live connection or not (the seed of a
/// table the events keep: see [`parse_event`]).
pub fn list_tuples(socket: &netlink_sys::Socket, family: u8) -> Result<Vec<Flow>> {
    list_with(socket, family, original_tuple)
}

fn list_with(
    socket: &netlink_sys::Socket,
    family: u8,
    parse: impl Fn(&[u8]) -> Option<Flow>,
) -> Result<Vec<Flow>> {
    let mut flows = Vec::new();
    nl::dump(socket, &encode_ct_dump(1, family), "conntrack dump", |m| {
        if m.kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
            flows.extend(parse(m.body));
        }
        Ok(())
    })?;
    Ok(flows)
}

/// The kernel's answer to one request: `error` is 0 on success, else a
/// negative errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u32,
    pub error: i32,
}

/// The acks (`NLMSG_ERROR` messages carrying a `nlmsgerr`) in one datagram;
/// other message types are skipped. A message whose length does not fit
/// the datagram is an error.
pub fn parse_acks(buf: &[u8]) -> Result<Vec<Ack>, String> {
    Ok(nl::messages(buf)?
        .into_iter()
        .filter(|m| m.kind == NLMSG_ERROR)
        .filter_map(|m| {
            Some(Ack {
                seq: m.seq,
                error: m.error()?,
            })
        })
        .collect())
}

/// Runs `work` in the named network namespace (a name under `/run/netns`,
/// or a path, as `ip netns exec` takes it), or in the current one for
/// `None` ([`underlay_netns::run_in`]: a thread of its own that entered
/// the namespace; one that cannot be entered is an error, never the
/// current namespace).
pub fn in_netns<T: Send>(
    netns: Option<&str>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match netns {
        None => work(),
        Some(name) => underlay_netns::run_in(&underlay_netns::path_of(name), work)?,
    }
}

/// Deletes the entries of `flows` from the conntrack table of the network
/// namespace of `socket`, up to [`WINDOW`] requests in flight. Returns how
/// many were deleted; entries already gone are not counted and not an
/// error. Any other refusal is reported after every ack was read.
pub fn delete(socket: &netlink_sys::Socket, flows: &[Flow]) -> Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
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
        nl::send(
            socket,
            &batch,
            "send to the netfilter socket",
            "the netfilter socket",
        )?;
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
    use crate::nl::NLMSG_HDRLEN;

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
        assert!(!has_ports(1) && !has_ports(58) && has_ports(132));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_icmp_deletion_carries_identifier_type_and_code() {
        // an echo request (type 8, code 0) with identifier 0x1234
        let echo = Flow {
            protocol: 1,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            sport: 0x1234,
            dport: 8 << 8,
        };
        let msg = encode_ct_delete(1, &echo);
        #[rustfmt::skip]
        let proto: &[u8] = &[
            36, 0, 0x02, 0x80,            // CTA_TUPLE_PROTO | NESTED
            5, 0, 1, 0, 1, 0, 0, 0,       // CTA_PROTO_NUM 1
            6, 0, 4, 0, 0x12, 0x34, 0, 0, // CTA_PROTO_ICMP_ID BE
            5, 0, 5, 0, 8, 0, 0, 0,       // CTA_PROTO_ICMP_TYPE
            5, 0, 6, 0, 0, 0, 0, 0,       // CTA_PROTO_ICMP_CODE
        ];
        assert_eq!(&msg[44..], proto);
        let v6 = Flow {
            protocol: 58,
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            sport: 7,
            dport: 128 << 8,
        };
        let msg = encode_ct_delete(1, &v6);
        let attrs: Vec<u16> = nl::attrs(&msg[msg.len() - 32..]).map(|(k, _)| k).collect();
        assert_eq!(attrs, [CTA_PROTO_NUM, 7, 8, 9]);
    }

    /// A dumped entry as the kernel sends it: nfgenmsg, original tuple,
    /// status, and for TCP its state.
    fn entry(flow: &Flow, status: u32, tcp_state: Option<u8>) -> Vec<u8> {
        use crate::nl::testing::{encoded_attr as attr, nest};
        let request = encode_ct_delete(0, flow);
        // the delete request's body is nfgenmsg + CTA_TUPLE_ORIG
        let mut body = request[nl::NLMSG_HDRLEN..].to_vec();
        body.extend(attr(CTA_STATUS, &status.to_be_bytes()));
        if let Some(state) = tcp_state {
            body.extend(nest(
                CTA_PROTOINFO,
                &[nest(
                    CTA_PROTOINFO_TCP,
                    &[attr(CTA_PROTOINFO_TCP_STATE, &[state])],
                )],
            ));
        }
        body
    }

    #[test]
    fn dumped_entries_parse_and_dead_ones_are_skipped() {
        let tcp = flow(6, "10.0.0.1", "10.0.0.2");
        let established = 3;
        assert_eq!(
            parse_entry(&entry(&tcp, 0x0e, Some(established))),
            Some(tcp)
        );
        // never answered
        assert_eq!(parse_entry(&entry(&tcp, 0x08, Some(established))), None);
        // closing
        assert_eq!(
            parse_entry(&entry(&tcp, 0x0e, Some(TCP_CONNTRACK_TIME_WAIT))),
            None
        );
        assert_eq!(
            parse_entry(&entry(&tcp, 0x0e, Some(TCP_CONNTRACK_CLOSE))),
            None
        );
        let udp6 = flow(17, "fd00::1", "fd00::2");
        assert_eq!(parse_entry(&entry(&udp6, 0x02, None)), Some(udp6));
        let echo = Flow {
            protocol: 58,
            src: "fd00::1".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
            sport: 99,
            dport: 128 << 8,
        };
        assert_eq!(parse_entry(&entry(&echo, 0x02, None)), Some(echo));
        let gre = Flow {
            sport: 0,
            dport: 0,
            ..flow(47, "10.0.0.1", "10.0.0.2")
        };
        assert_eq!(parse_entry(&entry(&gre, 0x02, None)), Some(gre));
    }

    #[test]
    fn cut_entries_are_skipped_not_panics() {
        let whole = entry(&flow(6, "10.0.0.1", "10.0.0.2"), 0x0e, Some(3));
        for cut in 0..whole.len() {
            let _ = parse_entry(&whole[..cut]);
        }
        assert_eq!(parse_entry(&whole[..whole.len() - 20]), None);
        let dump = encode_ct_dump(5, AF_INET6);
        assert_eq!(dump.len(), 20);
        assert_eq!(nl::u16_at(&dump, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(dump[16], AF_INET6);
    }

    #[test]
    fn events_say_which_tuple_began_or_ended_whatever_its_state() {
        let new = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        let destroy = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
        let tcp = flow(6, "10.0.0.1", "10.0.0.2");
        // A new connection's event comes before any answer.
        let unanswered = entry(&tcp, 0x08, Some(1));
        assert_eq!(parse_event(new, &unanswered), Some(Event::New(tcp)));
        assert_eq!(
            parse_event(destroy, &unanswered),
            Some(Event::Destroyed(tcp))
        );
        // Another subsystem's message, or one cut short, says nothing.
        assert_eq!(parse_event(IPCTNL_MSG_CT_NEW, &unanswered), None);
        for cut in 0..unanswered.len() {
            let _ = parse_event(new, &unanswered[..cut]);
        }
        assert_eq!(parse_event(new, &unanswered[..8]), None);
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
