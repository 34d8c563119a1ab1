//! The agent's own NFLOG consumer: a `NETLINK_NETFILTER` socket bound to
//! the group the deny rules log to (`-j NFLOG --nflog-group`), asking the
//! kernel for the first bytes of each packet (enough for the IP and
//! transport headers), and the parser of what it sends: the rule's prefix
//! (`udl deny in|out namespace/pod`), the packet's addresses, protocol and
//! destination port, and its time. No ulogd, no external process.
//!
//! Everything read from the kernel is bounds-checked: a message that is
//! not one of ours or is cut short is skipped and counted, never a panic.

use crate::dataplane::{DataplaneError, Result};
use crate::model::{Direction, PodKey};
use crate::nl::{self, AF_INET, AF_INET6, AF_UNSPEC, NLM_F_ACK, NLM_F_REQUEST, io};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_NETFILTER;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_log.h>
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFGENMSG_LEN: usize = 4;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_PF_BIND: u8 = 3;
const NFULNL_COPY_PACKET: u8 = 2;
// <netinet/in.h>
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Bytes of each packet the kernel copies: an IPv6 header with a few
/// extension headers and the transport ports fit.
pub const COPY_RANGE: u32 = 128;
/// The kernel sends a batch once this many packets wait, or after
/// [`FLUSH_CENTISECONDS`], whichever comes first.
const QUEUE_THRESHOLD: u32 = 16;
const FLUSH_CENTISECONDS: u32 = 5;
/// Size of the kernel's batch buffer.
const BATCH_BYTES: u32 = 16 * 1024;

/// The prefix every deny rule writes, before `in|out namespace/pod`.
const PREFIX: &str = "udl deny ";
/// The prefix of an audit chain's rules: a packet accepted that audited
/// policies would deny.
const AUDIT_PREFIX: &str = "udl audit ";

/// One logged denied packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub direction: Direction,
    /// The pod the rule's prefix names (cut when the prefix was longer than
    /// the kernel's 63 bytes).
    pub pod: PodKey,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Destination port for TCP, UDP and SCTP; 0 otherwise.
    pub port: u16,
    pub time: SystemTime,
    /// An audit denial: accepted, but audited policies would deny it.
    pub audit: bool,
}

/// What one datagram from the kernel held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub packets: Vec<Packet>,
    /// Messages skipped: cut short, not a packet of ours, or unreadable.
    pub malformed: u64,
}

/// Reads one datagram of the NFLOG socket. A datagram whose framing is
/// broken counts as one malformed message.
pub fn parse_datagram(buf: &[u8]) -> Batch {
    let mut batch = Batch::default();
    match nl::messages(buf) {
        Ok(messages) => {
            for m in messages {
                if m.kind == nl::NLMSG_ERROR || m.kind == nl::NLMSG_DONE {
                    continue;
                }
                match parse_packet(m.kind, m.body) {
                    Some(p) => batch.packets.push(p),
                    None => batch.malformed += 1,
                }
            }
        }
        Err(_) => batch.malformed += 1,
    }
    batch
}

/// One `NFULNL_MSG_PACKET` message (type and body after the netlink
/// header); `None` for anything else or anything unreadable.
pub fn parse_packet(kind: u16, body: &[u8]) -> Option<Packet> {
    if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
        return None;
    }
    let family = *body.first()?;
    let attrs = body.get(NFGENMSG_LEN..)?;
    let (audit, direction, pod) = parse_prefix(nl::attr(attrs, NFULA_PREFIX)?)?;
    let headers = parse_headers(family, nl::attr(attrs, NFULA_PAYLOAD)?)?;
    let time = nl::attr(attrs, NFULA_TIMESTAMP)
        .and_then(parse_timestamp)
        .unwrap_or_else(SystemTime::now);
    Some(Packet {
        direction,
        pod,
        src: headers.src,
        dst: headers.dst,
        protocol: headers.protocol,
        port: headers.port,
        time,
        audit,
    })
}

/// `udl deny|audit in|out namespace/pod`, NUL-terminated as the kernel
/// sends it: (audit, direction, pod).
fn parse_prefix(raw: &[u8]) -> Option<(bool, Direction, PodKey)> {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let text = std::str::from_utf8(&raw[..end]).ok()?;
    let (audit, rest) = match text.strip_prefix(PREFIX) {
        Some(rest) => (false, rest),
        None => (true, text.strip_prefix(AUDIT_PREFIX)?),
    };
    let (dir, pod) = rest.split_once(' ')?;
    let direction = match dir {
        "in" => Direction::Ingress,
        "out" => Direction::Egress,
        _ => return None,
    };
    let (namespace, name) = pod.split_once('/')?;
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    Some((audit, direction, PodKey::new(namespace, name)))
}

/// `struct nfulnl_msg_packet_timestamp`: seconds and microseconds, both
/// big-endian 64-bit.
fn parse_timestamp(raw: &[u8]) -> Option<SystemTime> {
    let sec = u64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
    let usec = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
    if usec >= 1_000_000 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(sec) + Duration::from_micros(usec))
}

/// The fields of a packet's headers a denial names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub port: u16,
}

/// The IPv4 or IPv6 header at the start of `payload` and the destination
/// port of TCP, UDP and SCTP (0 for other protocols, a non-first fragment,
/// or a transport header the copy cut off).
pub fn parse_headers(family: u8, payload: &[u8]) -> Option<Headers> {
    let (src, dst, protocol, l4) = match family {
        AF_INET => ipv4(payload)?,
        AF_INET6 => ipv6(payload)?,
        _ => return None,
    };
    let port = match (protocol, l4) {
        (IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP, Some(l4)) => {
            l4.get(2..4).map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
        }
        _ => 0,
    };
    Some(Headers {
        src,
        dst,
        protocol,
        port,
    })
}

type Parsed<'a> = (IpAddr, IpAddr, u8, Option<&'a [u8]>);

fn ipv4(p: &[u8]) -> Option<Parsed<'_>> {
    let first = *p.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || p.len() < 20 {
        return None;
    }
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?);
    let fragment_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    let l4 = (fragment_offset == 0).then(|| p.get(ihl..)).flatten();
    Some((src.into(), dst.into(), p[9], l4))
}

fn ipv6(p: &[u8]) -> Option<Parsed<'_>> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
    let (protocol, l4) = ipv6_transport(p[6], &p[40..]);
    Some((src.into(), dst.into(), protocol, l4))
}

/// Walks IPv6 extension headers (hop-by-hop, routing, fragment,
/// destination options) to the transport header: its protocol and bytes,
/// `None` when cut off or behind a non-first fragment.
fn ipv6_transport(mut next: u8, mut rest: &[u8]) -> (u8, Option<&[u8]>) {
    for _ in 0..8 {
        let len = match next {
            0 | 43 | 60 => rest.get(1).map(|l| (usize::from(*l) + 1) * 8),
            44 => {
                let offset = rest
                    .get(2..4)
                    .map(|o| u16::from_be_bytes([o[0], o[1]]) >> 3);
                if offset != Some(0) {
                    return (rest.first().copied().unwrap_or(next), None);
                }
                Some(8)
            }
            _ => return (next, Some(rest)),
        };
        match (rest.first(), len.and_then(|l| rest.get(l..))) {
            (Some(n), Some(after)) => (next, rest) = (*n, after),
            _ => return (next, None),
        }
    }
    (next, None)
}

/// One `NFULNL_MSG_CONFIG` request for `group` (`res_id`), family `pf`.
fn config_message(seq: u32, pf: u8, group: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut buf = nl::begin_message(
        (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    );
    buf.extend_from_slice(&[pf, 0]);
    buf.extend_from_slice(&group.to_be_bytes());
    for (kind, payload) in attrs {
        nl::push_attr(&mut buf, *kind, payload);
    }
    nl::finish_message(&mut buf);
    buf
}

/// The requests that bind `group` and set its copy mode, batch threshold,
/// flush timeout and buffer, in order. The first two (family binds) only
/// matter to kernels before 3.17, which refuse logging without them; newer
/// kernels accept and ignore them.
pub fn encode_config(group: u16) -> Vec<Vec<u8>> {
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    vec![
        config_message(
            1,
            AF_INET,
            0,
            &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_PF_BIND])],
        ),
        config_message(
            2,
            AF_INET6,
            0,
            &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_PF_BIND])],
        ),
        config_message(
            3,
            AF_UNSPEC,
            group,
            &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])],
        ),
        config_message(
            4,
            AF_UNSPEC,
            group,
            &[
                (NFULA_CFG_MODE, mode),
                (NFULA_CFG_QTHRESH, QUEUE_THRESHOLD.to_be_bytes().to_vec()),
                (NFULA_CFG_TIMEOUT, FLUSH_CENTISECONDS.to_be_bytes().to_vec()),
                (NFULA_CFG_NLBUFSIZ, BATCH_BYTES.to_be_bytes().to_vec()),
            ],
        ),
    ]
}

/// Opens a socket in the current network namespace bound to `group`, its
/// reads bounded by `poll` (so the reader can notice it should stop).
/// Fails when the kernel refuses the bind (another listener holds the
/// group) or the configuration.
pub fn open(group: u16, poll: Duration) -> Result<Socket> {
    let socket = nl::kernel_socket(
        NETLINK_NETFILTER,
        [
            "open an nflog netlink socket",
            "bind the nflog netlink socket",
            "connect the nflog netlink socket",
        ],
    )?;
    // Kernel batches are far larger than a read would miss; a burst the
    // buffer cannot hold is dropped by the kernel (ENOBUFS), not queued.
    let _ = socket.set_rx_buf_sz(1 << 20);
    let timeout =
        nix::sys::time::TimeVal::new(poll.as_secs() as i64, i64::from(poll.subsec_micros()));
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| io("set the nflog read timeout")(e.into()))?;
    for (i, request) in encode_config(group).iter().enumerate() {
        socket.send(request, 0).map_err(io("configure nflog"))?;
        let code = read_ack(&socket, (i + 1) as u32)?;
        // The family binds are best effort (see `encode_config`).
        if code != 0 && i >= 2 {
            return Err(DataplaneError::Rejected(format!(
                "the kernel refused nflog group {group} ({}); is another NFLOG listener (ulogd) bound to it? pick another with --policy-nflog-group",
                nix::errno::Errno::from_raw(-code)
            )));
        }
    }
    Ok(socket)
}

/// Reads until the ack of `seq`; packets arriving meanwhile are dropped.
fn read_ack(socket: &Socket, seq: u32) -> Result<i32> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        socket
            .recv(&mut buf, 0)
            .map_err(io("read the nflog configuration ack"))?;
        let messages = nl::messages(&buf).map_err(DataplaneError::Rejected)?;
        if let Some(code) = messages
            .iter()
            .filter(|m| m.seq == seq)
            .find_map(|m| m.error())
        {
            return Ok(code);
        }
    }
}

#[cfg(test)]
mod tests;
