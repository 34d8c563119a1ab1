//! The netlink wire format shared by the route ([`crate::rtnl`]) and
//! conntrack ([`crate::ctnetlink`]) clients: message headers, attributes,
//! the walk over one datagram's messages, sockets, and dump exchanges.
//! Everything read from the kernel is bounds-checked: a malformed answer
//! is an error or a skipped attribute, never a panic.

use crate::dataplane::{DataplaneError, Result};
use netlink_sys::{Socket, SocketAddr};

// <linux/netlink.h>
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
pub const NLMSG_HDRLEN: usize = 16;
// <linux/socket.h>
pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

pub fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// A message header with a zero length; [`finish_message`] writes it.
pub fn begin_message(kind: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel fills it in
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

/// Writes the message's length into its header.
pub fn finish_message(buf: &mut [u8]) {
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
}

pub fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Starts a nested attribute; [`end_nest`] writes its length.
pub fn begin_nest(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

pub fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The attributes of `buf` as (type without flags, payload). A truncated
/// attribute ends the walk: nothing is read past the end.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, at)?);
        let kind = u16_at(buf, at + 2)? & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let payload = &buf[at + 4..at + len];
        at += len.next_multiple_of(4);
        Some((kind, payload))
    })
}

/// The payload of the first attribute of `kind` in `buf`.
pub fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub seq: u32,
    /// Everything after the header.
    pub body: &'a [u8],
}

impl Message<'_> {
    /// For an `NLMSG_ERROR` message, its error code: 0 for an ack, else a
    /// negative errno. `None` for other messages and a cut-short error.
    pub fn error(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR)
            .then(|| u32_at(self.body, 0).map(|e| e as i32))
            .flatten()
    }
}

/// The messages of one datagram. A header cut short or a length that does
/// not fit the datagram is an error.
pub fn messages(buf: &[u8]) -> std::result::Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let (Some(len), Some(kind), Some(seq)) =
            (u32_at(rest, 0), u16_at(rest, 4), u32_at(rest, 8))
        else {
            return Err(format!("netlink header cut short at byte {at}"));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(format!(
                "netlink message at byte {at} claims {len} bytes of {}",
                rest.len()
            ));
        }
        if kind == NLMSG_ERROR && len < NLMSG_HDRLEN + 4 {
            return Err(format!(
                "netlink error message at byte {at} has no error code"
            ));
        }
        out.push(Message {
            kind,
            seq,
            body: &rest[NLMSG_HDRLEN..len],
        });
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// Sends `buf` whole on `socket`; `op` names the send in errors, `what`
/// the socket.
pub fn send(socket: &Socket, buf: &[u8], op: &'static str, what: &str) -> Result<()> {
    let sent = socket.send(buf, 0).map_err(io(op))?;
    if sent != buf.len() {
        return Err(DataplaneError::Rejected(format!(
            "{what} took {sent} of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

pub fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::Netlink { op, source }
}

/// A netlink socket of `protocol` bound and connected to the kernel; `ops`
/// name the three steps in errors (open, bind, connect).
pub fn kernel_socket(protocol: isize, ops: [&'static str; 3]) -> Result<Socket> {
    let mut socket = Socket::new(protocol).map_err(io(ops[0]))?;
    socket.bind_auto().map_err(io(ops[1]))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io(ops[2]))?;
    Ok(socket)
}

/// Sends the dump `request` and hands every message of the answer to
/// `each` until the kernel's `NLMSG_DONE`; an error message refuses the
/// dump (`what` names it in the error).
pub fn dump(
    socket: &Socket,
    request: &[u8],
    what: &'static str,
    mut each: impl FnMut(Message<'_>) -> std::result::Result<(), String>,
) -> Result<()> {
    socket.send(request, 0).map_err(io(what))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0).map_err(io(what))?;
        if read_dump_datagram(&buf, what, &mut each).map_err(DataplaneError::Rejected)? {
            return Ok(());
        }
    }
}

/// Hands the messages of one datagram of a dump answer to `each`; true
/// once the kernel's `NLMSG_DONE` was read.
fn read_dump_datagram(
    buf: &[u8],
    what: &str,
    each: &mut impl FnMut(Message<'_>) -> std::result::Result<(), String>,
) -> std::result::Result<bool, String> {
    for message in messages(buf)? {
        match message.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => match message.error() {
                Some(0) | None => {}
                Some(code) => {
                    return Err(format!(
                        "the kernel refused the {what}: {}",
                        nix::errno::Errno::from_raw(-code)
                    ));
                }
            },
            _ => each(message)?,
        }
    }
    Ok(false)
}

#[cfg(test)]
pub mod testing {
    //! Builders of kernel answers for the parsers' tests.
    use super::*;

    pub fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = begin_message(kind, 0, 0);
        m.extend_from_slice(body);
        finish_message(&mut m);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    pub fn encoded_attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        push_attr(&mut a, kind, payload);
        a
    }

    pub fn nest(kind: u16, inner: &[Vec<u8>]) -> Vec<u8> {
        let mut a = Vec::new();
        let at = begin_nest(&mut a, kind);
        for i in inner {
            a.extend_from_slice(i);
        }
        end_nest(&mut a, at);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn attributes_are_walked_with_flags_masked_and_stop_at_a_cut() {
        let mut body = encoded_attr(1, &[10, 0, 0, 1]);
        body.extend(nest(2, &[encoded_attr(3, &[7])]));
        let walked: Vec<_> = attrs(&body).collect();
        assert_eq!(walked.len(), 2);
        assert_eq!(walked[0], (1, &[10, 0, 0, 1][..]));
        assert_eq!(walked[1].0, 2);
        assert_eq!(attr_payloads(walked[1].1), vec![(3, vec![7])]);
        // an attribute claiming more than is there ends the walk
        body.extend_from_slice(&[40, 0, 5, 0, 1, 2]);
        assert_eq!(attrs(&body).count(), 2);
        for cut in 0..body.len() {
            let _ = attrs(&body[..cut]).count();
        }
    }

    fn attr_payloads(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
        attrs(buf).map(|(k, p)| (k, p.to_vec())).collect()
    }

    #[test]
    fn messages_are_split_and_cut_datagrams_are_errors() {
        let mut datagram = message(20, &[1, 2, 3]);
        datagram.extend(message(NLMSG_ERROR, &(-2i32).to_ne_bytes()));
        datagram.extend(message(NLMSG_DONE, &[0; 4]));
        let walked = messages(&datagram).unwrap();
        assert_eq!(
            walked.iter().map(|m| m.kind).collect::<Vec<_>>(),
            [20, NLMSG_ERROR, NLMSG_DONE]
        );
        assert_eq!(walked[0].body, &[1, 2, 3]);
        assert_eq!(walked[1].error(), Some(-2));
        assert_eq!(walked[0].error(), None);
        let first = message(NLMSG_ERROR, &0i32.to_ne_bytes());
        for cut in 1..first.len() {
            assert!(messages(&first[..cut]).is_err(), "cut at {cut}");
        }
        let bare = message(NLMSG_ERROR, &[]);
        assert!(messages(&bare).is_err());
        assert_eq!(messages(&[]).unwrap(), vec![]);
    }

    #[test]
    fn a_dump_reads_until_done_and_a_refusal_is_an_error() {
        let mut seen = Vec::new();
        let mut each = |m: Message<'_>| {
            seen.push(m.kind);
            Ok(())
        };
        let mut first = message(20, &[1]);
        first.extend(message(NLMSG_ERROR, &0i32.to_ne_bytes()));
        assert_eq!(read_dump_datagram(&first, "dump", &mut each), Ok(false));
        let mut last = message(20, &[2]);
        last.extend(message(NLMSG_DONE, &[0; 4]));
        last.extend(message(21, &[3]));
        assert_eq!(read_dump_datagram(&last, "dump", &mut each), Ok(true));
        assert_eq!(seen, [20, 20]);
        let refused = message(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        let err = read_dump_datagram(&refused, "address dump", &mut |_| Ok(())).unwrap_err();
        assert!(err.contains("refused the address dump"), "{err}");
    }
}
