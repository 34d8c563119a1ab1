//! ipsets over netlink (`NFNL_SUBSYS_IPSET` on a `NETLINK_NETFILTER`
//! socket): the `ipset restore` scripts the engine writes, run in the
//! agent's own process. Starting the `ipset` tool costs 3–8 ms per change,
//! far more than the few members a label change or a new pod adds.
//!
//! The script language is the subset the engine writes, one command a
//! line, as `ipset restore` reads it:
//! `create NAME TYPE family inet|inet6 maxelem N -exist`, `flush NAME`,
//! `destroy NAME`, `swap FROM TO`, `add NAME MEMBER [nomatch] -exist` and
//! `del NAME MEMBER -exist`, where MEMBER is `IP`, `IP/PREFIX` or
//! `IP,PROTO:PORT`. Anything else is refused before the kernel is asked.
//!
//! Like the tool, a script stops at its first refused command and
//! everything before it is done; the error names the line
//! (`Error in line N: …`, with the tool's wording for the refusals the
//! engine tells apart). Consecutive `add`s or `del`s of one set travel in
//! one message (`IPSET_ATTR_ADT`), so a set of thousands of members is a
//! few round trips.

use crate::ctnetlink::nfgenmsg;
use crate::dataplane::{DataplaneError, Result};
use crate::nl::{self, AF_INET, AF_INET6, AF_UNSPEC, NLM_F_ACK, NLM_F_REQUEST};
use std::collections::HashMap;
use std::net::IpAddr;

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/ipset/ip_set.h>
const NFNL_SUBSYS_IPSET: u16 = 6;
/// The oldest protocol revision current kernels accept (they speak 6 and 7).
const IPSET_PROTOCOL: u8 = 6;
const IPSET_CMD_CREATE: u16 = 2;
const IPSET_CMD_DESTROY: u16 = 3;
const IPSET_CMD_FLUSH: u16 = 4;
const IPSET_CMD_SWAP: u16 = 6;
const IPSET_CMD_ADD: u16 = 9;
const IPSET_CMD_DEL: u16 = 10;
const IPSET_CMD_TYPE: u16 = 13;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_TYPENAME: u16 = 3;
const IPSET_ATTR_SETNAME2: u16 = 3;
const IPSET_ATTR_REVISION: u16 = 4;
const IPSET_ATTR_FAMILY: u16 = 5;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_ADT: u16 = 8;
const IPSET_ATTR_LINENO: u16 = 9;
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_CIDR: u16 = 3;
const IPSET_ATTR_PORT: u16 = 4;
const IPSET_ATTR_PROTO: u16 = 7;
const IPSET_ATTR_CADT_FLAGS: u16 = 8;
const IPSET_ATTR_CADT_LINENO: u16 = 9;
const IPSET_ATTR_MAXELEM: u16 = 19;
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const IPSET_FLAG_NOMATCH: u32 = 1 << 2;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
#[cfg(test)]
const NLM_F_EXCL: u16 = 0x200;
const IPSET_ERR_PROTOCOL: i32 = 4097;
const IPSET_ERR_FIND_TYPE: i32 = 4098;
const IPSET_ERR_MAX_SETS: i32 = 4099;
const IPSET_ERR_BUSY: i32 = 4100;
const IPSET_ERR_EXIST_SETNAME2: i32 = 4101;
const IPSET_ERR_TYPE_MISMATCH: i32 = 4102;
const IPSET_ERR_INVALID_CIDR: i32 = 4104;
const IPSET_ERR_INVALID_FAMILY: i32 = 4106;
const IPSET_ERR_REFERENCED: i32 = 4108;
const IPSET_ERR_HASH_FULL: i32 = 4352;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Members per `add`/`del` message: about 16 KiB of attributes.
const MEMBERS_PER_MESSAGE: usize = 512;

/// One member as the kernel takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    ip: IpAddr,
    prefix: Option<u8>,
    port: Option<(u8, u16)>,
    nomatch: bool,
}

/// One command of a script, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Create {
        name: String,
        kind: String,
        family: u8,
        maxelem: u32,
    },
    Flush(String),
    Destroy(String),
    Swap(String, String),
    /// `add` (true) or `del` of one member.
    Edit {
        add: bool,
        name: String,
        member: Member,
    },
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Command::Create { .. } => "create",
            Command::Flush(_) => "flush",
            Command::Destroy(_) => "destroy",
            Command::Swap(..) => "swap",
            Command::Edit { add: true, .. } => "add",
            Command::Edit { add: false, .. } => "del",
        }
    }
}

fn parse_member(text: &str, nomatch: bool) -> std::result::Result<Member, String> {
    let (addr, port) = match text.split_once(',') {
        Some((addr, rest)) => {
            let (proto, port) = rest
                .split_once(':')
                .ok_or_else(|| format!("{text:?}: expected IP,PROTO:PORT"))?;
            let proto = match proto {
                "tcp" => IPPROTO_TCP,
                "udp" => IPPROTO_UDP,
                "sctp" => IPPROTO_SCTP,
                other => return Err(format!("{text:?}: unknown protocol {other:?}")),
            };
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: bad port"))?;
            (addr, Some((proto, port)))
        }
        None => (text, None),
    };
    let (ip, prefix) = match addr.split_once('/') {
        Some((ip, len)) => {
            let len = len
                .parse::<u8>()
                .map_err(|_| format!("{text:?}: bad prefix length"))?;
            (ip, Some(len))
        }
        None => (addr, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("{text:?}: bad address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix.is_some_and(|p| p > max) {
        return Err(format!("{text:?}: prefix longer than the address"));
    }
    Ok(Member {
        ip,
        prefix,
        port,
        nomatch,
    })
}

/// A set name the kernel takes: 1 to 31 bytes.
fn set_name(word: Option<&str>) -> std::result::Result<String, String> {
    match word {
        Some(n) if !n.is_empty() && n.len() < 32 && !n.contains('\0') => Ok(n.to_string()),
        Some(n) => Err(format!("bad set name {n:?}")),
        None => Err("missing set name".into()),
    }
}

fn parse_line(line: &str) -> std::result::Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let verb = words.first().copied().unwrap_or_default();
    let name = || set_name(words.get(1).copied());
    let flags = |from: usize, allowed: &[&str]| {
        for w in words.iter().skip(from) {
            if !allowed.contains(w) {
                return Err(format!("unexpected {w:?}"));
            }
        }
        Ok(())
    };
    match verb {
        "create" => {
            let kind = words.get(2).copied().unwrap_or_default();
            if !matches!(kind, "hash:ip" | "hash:net" | "hash:ip,port") {
                return Err(format!("unsupported set type {kind:?}"));
            }
            let mut family = None;
            let mut maxelem = None;
            let mut rest = words.iter().skip(3);
            while let Some(w) = rest.next() {
                match *w {
                    "family" => {
                        family = match rest.next().copied() {
                            Some("inet") => Some(AF_INET),
                            Some("inet6") => Some(AF_INET6),
                            other => return Err(format!("bad family {other:?}")),
                        }
                    }
                    "maxelem" => {
                        maxelem = Some(
                            rest.next()
                                .and_then(|m| m.parse::<u32>().ok())
                                .ok_or("bad maxelem")?,
                        )
                    }
                    "-exist" => {}
                    other => return Err(format!("unexpected {other:?}")),
                }
            }
            Ok(Command::Create {
                name: name()?,
                kind: kind.to_string(),
                family: family.ok_or("missing family")?,
                maxelem: maxelem.ok_or("missing maxelem")?,
            })
        }
        "flush" => {
            flags(2, &[])?;
            Ok(Command::Flush(name()?))
        }
        "destroy" => {
            flags(2, &[])?;
            Ok(Command::Destroy(name()?))
        }
        "swap" => {
            flags(3, &[])?;
            Ok(Command::Swap(name()?, set_name(words.get(2).copied())?))
        }
        "add" | "del" => {
            let text = words.get(2).ok_or("missing member")?;
            flags(3, &["nomatch", "-exist"])?;
            let nomatch = words[3..].contains(&"nomatch");
            Ok(Command::Edit {
                add: verb == "add",
                name: name()?,
                member: parse_member(text, nomatch)?,
            })
        }
        other => Err(format!("unsupported command {other:?}")),
    }
}

/// The commands of a script, each with its line number (blank lines and
/// `#` comments skipped).
fn parse(script: &str) -> Result<Vec<(usize, Command)>> {
    let mut out = Vec::new();
    for (i, line) in script.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let command = parse_line(line).map_err(|e| refused("parse", i + 1, &e))?;
        out.push((i + 1, command));
    }
    Ok(out)
}

fn message(cmd: u16, flags: u16, family: u8) -> Vec<u8> {
    let mut buf = nl::begin_message((NFNL_SUBSYS_IPSET << 8) | cmd, flags, 0);
    nfgenmsg(&mut buf, family);
    nl::push_attr(&mut buf, IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
    buf
}

fn push_name(buf: &mut Vec<u8>, kind: u16, name: &str) {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    nl::push_attr(buf, kind, &bytes);
}

fn push_member(buf: &mut Vec<u8>, m: &Member, line: usize) {
    let data = nl::begin_nest(buf, IPSET_ATTR_DATA);
    let ip = nl::begin_nest(buf, IPSET_ATTR_IP);
    match m.ip {
        IpAddr::V4(a) => nl::push_attr(
            buf,
            IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER,
            &a.octets(),
        ),
        IpAddr::V6(a) => nl::push_attr(
            buf,
            IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER,
            &a.octets(),
        ),
    }
    nl::end_nest(buf, ip);
    if let Some(prefix) = m.prefix {
        nl::push_attr(buf, IPSET_ATTR_CIDR, &[prefix]);
    }
    if let Some((proto, port)) = m.port {
        nl::push_attr(
            buf,
            IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER,
            &port.to_be_bytes(),
        );
        nl::push_attr(buf, IPSET_ATTR_PROTO, &[proto]);
    }
    if m.nomatch {
        nl::push_attr(
            buf,
            IPSET_ATTR_CADT_FLAGS | NLA_F_NET_BYTEORDER,
            &IPSET_FLAG_NOMATCH.to_be_bytes(),
        );
    }
    nl::push_attr(buf, IPSET_ATTR_CADT_LINENO, &(line as u32).to_ne_bytes());
    nl::end_nest(buf, data);
}

/// The request of one command, or of a run of `add`s / `del`s of one set.
/// Without `NLM_F_EXCL` the kernel takes every command as `-exist` does:
/// creating a set that exists alike, adding a member it holds or deleting
/// one it does not is no error.
///
/// An edit run carries each member's line (`IPSET_ATTR_CADT_LINENO`, and
/// the run's first at the top, which the kernel requires): the kernel
/// writes the refused member's line into the top one of the request it
/// echoes in its error.
fn encode(commands: &[(usize, Command)], revision: impl Fn(&str, u8) -> u8) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut buf = match &commands[0].1 {
        Command::Create {
            name,
            kind,
            family,
            maxelem,
        } => {
            let mut buf = message(IPSET_CMD_CREATE, flags, *family);
            push_name(&mut buf, IPSET_ATTR_SETNAME, name);
            push_name(&mut buf, IPSET_ATTR_TYPENAME, kind);
            nl::push_attr(&mut buf, IPSET_ATTR_REVISION, &[revision(kind, *family)]);
            nl::push_attr(&mut buf, IPSET_ATTR_FAMILY, &[*family]);
            let data = nl::begin_nest(&mut buf, IPSET_ATTR_DATA);
            nl::push_attr(
                &mut buf,
                IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER,
                &maxelem.to_be_bytes(),
            );
            nl::end_nest(&mut buf, data);
            buf
        }
        Command::Flush(name) | Command::Destroy(name) => {
            let cmd = if matches!(commands[0].1, Command::Flush(_)) {
                IPSET_CMD_FLUSH
            } else {
                IPSET_CMD_DESTROY
            };
            let mut buf = message(cmd, flags, AF_UNSPEC);
            push_name(&mut buf, IPSET_ATTR_SETNAME, name);
            buf
        }
        Command::Swap(from, to) => {
            let mut buf = message(IPSET_CMD_SWAP, flags, AF_UNSPEC);
            push_name(&mut buf, IPSET_ATTR_SETNAME, from);
            push_name(&mut buf, IPSET_ATTR_SETNAME2, to);
            buf
        }
        Command::Edit { add, name, member } => {
            let cmd = if *add { IPSET_CMD_ADD } else { IPSET_CMD_DEL };
            let family = if member.ip.is_ipv4() {
                AF_INET
            } else {
                AF_INET6
            };
            let mut buf = message(cmd, flags, family);
            push_name(&mut buf, IPSET_ATTR_SETNAME, name);
            nl::push_attr(
                &mut buf,
                IPSET_ATTR_LINENO,
                &(commands[0].0 as u32).to_ne_bytes(),
            );
            let adt = nl::begin_nest(&mut buf, IPSET_ATTR_ADT);
            for (line, c) in commands {
                if let Command::Edit { member, .. } = c {
                    push_member(&mut buf, member, *line);
                }
            }
            nl::end_nest(&mut buf, adt);
            buf
        }
    };
    nl::finish_message(&mut buf);
    buf
}

/// The commands of a script in requests: each alone, but consecutive
/// edits of one set of the same kind together, up to
/// [`MEMBERS_PER_MESSAGE`].
fn requests(commands: &[(usize, Command)]) -> Vec<&[(usize, Command)]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < commands.len() {
        let mut end = start + 1;
        if let Command::Edit { add, name, .. } = &commands[start].1 {
            while end < commands.len()
                && end - start < MEMBERS_PER_MESSAGE
                && matches!(&commands[end].1,
                    Command::Edit { add: a, name: n, .. } if a == add && n == name)
            {
                end += 1;
            }
        }
        out.push(&commands[start..end]);
        start = end;
    }
    out
}

/// What the `ipset` tool says of a refusal, for the ones the engine tells
/// apart and those a user may meet.
fn describe(verb: &str, code: i32) -> String {
    match code {
        IPSET_ERR_BUSY => "Set cannot be destroyed: it is in use by a kernel component".into(),
        IPSET_ERR_REFERENCED => "Set cannot be destroyed: it is referenced by a list set".into(),
        IPSET_ERR_EXIST_SETNAME2 => "Set cannot be swapped: the second set does not exist".into(),
        IPSET_ERR_TYPE_MISMATCH if verb == "swap" => {
            "The sets cannot be swapped: their type does not match".into()
        }
        IPSET_ERR_TYPE_MISMATCH | 17 => {
            "Set cannot be created: set with the same name already exists".into()
        }
        IPSET_ERR_FIND_TYPE => "Kernel error received: set type not supported".into(),
        IPSET_ERR_PROTOCOL => "Kernel error received: ipset protocol error".into(),
        IPSET_ERR_MAX_SETS => "Kernel error received: maximal number of sets reached".into(),
        IPSET_ERR_INVALID_CIDR => {
            "The value of the CIDR parameter of the IP address is invalid".into()
        }
        IPSET_ERR_INVALID_FAMILY => "The protocol family of the set does not match".into(),
        IPSET_ERR_HASH_FULL => "Hash is full, cannot add more elements".into(),
        2 => "The set with the given name does not exist".into(),
        1 => "Operation not permitted (the agent needs CAP_NET_ADMIN)".into(),
        c if c > 0 && c < 4096 => nix::errno::Errno::from_raw(c).desc().to_string(),
        c => format!("ipset error {c}"),
    }
}

/// A script line refused, by us or by the kernel, in the tool's form.
fn refused(verb: &str, line: usize, why: &str) -> DataplaneError {
    DataplaneError::Failed {
        program: "ipset (netlink)".into(),
        status: format!("{verb} refused"),
        stderr: format!("Error in line {line}: {why}"),
    }
}

/// Sends one request and hands each message of the answer to `answer`
/// until it returns something.
fn ask<T>(
    socket: &netlink_sys::Socket,
    request: &[u8],
    recv: &mut Vec<u8>,
    mut answer: impl FnMut(nl::Message<'_>) -> Option<T>,
) -> Result<T> {
    nl::send(
        socket,
        request,
        "send to the netfilter socket",
        "the netfilter socket",
    )?;
    loop {
        recv.clear();
        socket
            .recv(recv, 0)
            .map_err(nl::io("receive from the netfilter socket"))?;
        for m in nl::messages(recv).map_err(DataplaneError::Rejected)? {
            if let Some(found) = answer(m) {
                return Ok(found);
            }
        }
    }
}

/// Sends one request and reads its ack: 0, or the kernel's error code,
/// and the line the kernel wrote into the request it echoes (an edit run's
/// refused member).
fn exchange(
    socket: &netlink_sys::Socket,
    request: &[u8],
    recv: &mut Vec<u8>,
) -> Result<(i32, Option<usize>)> {
    ask(socket, request, recv, |m| {
        let code = -m.error()?;
        // errno, the echoed header, its nfgenmsg, then its attributes.
        let line = m
            .body
            .get(4 + nl::NLMSG_HDRLEN + 4..)
            .and_then(|attrs| nl::attr(attrs, IPSET_ATTR_LINENO))
            .and_then(|l| nl::u32_at(l, 0))
            .map(|l| l as usize);
        Some((code, line))
    })
}

/// The newest revision of a set type the kernel has (`IPSET_CMD_TYPE`).
fn kernel_revision(
    socket: &netlink_sys::Socket,
    kind: &str,
    family: u8,
    recv: &mut Vec<u8>,
) -> Result<u8> {
    let mut buf = message(IPSET_CMD_TYPE, NLM_F_REQUEST, family);
    push_name(&mut buf, IPSET_ATTR_TYPENAME, kind);
    nl::push_attr(&mut buf, IPSET_ATTR_FAMILY, &[family]);
    nl::finish_message(&mut buf);
    ask(socket, &buf, recv, |m| {
        if let Some(code) = m.error() {
            return Some(Err(DataplaneError::Rejected(format!(
                "ipset: the kernel has no {kind} sets: {}",
                describe("create", -code)
            ))));
        }
        // nfgenmsg, then the attributes.
        m.body
            .get(4..)
            .and_then(|attrs| nl::attr(attrs, IPSET_ATTR_REVISION))
            .and_then(|r| r.first())
            .map(|rev| Ok(*rev))
    })?
}

/// Runs an ipset restore script (see the module's documentation) against
/// the network namespace of `socket`.
pub fn restore(socket: &netlink_sys::Socket, script: &str) -> Result<()> {
    let commands = parse(script)?;
    if commands.is_empty() {
        return Ok(());
    }
    let mut recv = Vec::with_capacity(8 * 1024);
    let mut revisions: HashMap<(String, u8), u8> = HashMap::new();
    for (kind, family) in commands.iter().filter_map(|(_, c)| match c {
        Command::Create { kind, family, .. } => Some((kind, *family)),
        _ => None,
    }) {
        if let std::collections::hash_map::Entry::Vacant(e) =
            revisions.entry((kind.clone(), family))
        {
            e.insert(kernel_revision(socket, kind, family, &mut recv)?);
        }
    }
    for group in requests(&commands) {
        let request = encode(group, |kind, family| {
            revisions
                .get(&(kind.to_string(), family))
                .copied()
                .unwrap_or_default()
        });
        let (code, echoed) = exchange(socket, &request, &mut recv)?;
        if code == 0 {
            continue;
        }
        let (first, command) = &group[0];
        let lines = *first..=group[group.len() - 1].0;
        let line = echoed.filter(|l| lines.contains(l)).unwrap_or(*first);
        return Err(refused(
            command.verb(),
            line,
            &describe(command.verb(), code),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_script_lines_parse_and_anything_else_is_refused() {
        let script = "create udl4-p-a hash:ip family inet maxelem 1048576 -exist\n\
                      flush udl4-p-a\n\
                      add udl4-p-a 10.0.0.1 -exist\n\
                      add udl4-n-b 10.1.0.0/16 nomatch -exist\n\
                      del udl6-o-c fd00::1,tcp:8080 -exist\n\
                      swap udl4-p-a-t udl4-p-a\n\
                      destroy udl4-p-a-t\n";
        let commands = parse(script).unwrap();
        assert_eq!(commands.len(), 7);
        assert_eq!(
            commands[3].1,
            Command::Edit {
                add: true,
                name: "udl4-n-b".into(),
                member: Member {
                    ip: "10.1.0.0".parse().unwrap(),
                    prefix: Some(16),
                    port: None,
                    nomatch: true,
                },
            }
        );
        for bad in [
            "add udl4-p-a 10.0.0.300 -exist",
            "add udl4-p-a 10.0.0.0/33",
            "add udl4-o-a 10.0.0.1,icmp:3",
            "add udl4-o-a 10.0.0.1,tcp:70000",
            "create x hash:mac family inet maxelem 1",
            "create x hash:ip family ipx maxelem 1",
            "list udl4-p-a",
            "flush a-name-that-is-longer-than-31-bytes",
            "destroy a b",
        ] {
            let err = parse(&format!("flush ok\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("Error in line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn edits_of_one_set_travel_together_up_to_the_message_size() {
        let mut script = String::from("create s hash:ip family inet maxelem 10 -exist\n");
        for i in 0..(MEMBERS_PER_MESSAGE + 3) {
            script.push_str(&format!("add s 10.0.{}.{} -exist\n", i / 250, i % 250));
        }
        script.push_str("del s 10.9.9.9 -exist\nadd t 10.0.0.1 -exist\n");
        let commands = parse(&script).unwrap();
        let sizes: Vec<usize> = requests(&commands).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![1, MEMBERS_PER_MESSAGE, 3, 1, 1]);
    }

    #[test]
    fn a_member_is_encoded_with_the_byte_order_flags_the_kernel_checks() {
        let commands = parse("add s 10.1.2.3,udp:53 -exist\n").unwrap();
        let request = encode(&commands, |_, _| 0);
        let messages = nl::messages(&request).unwrap();
        assert_eq!(messages[0].kind, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD);
        let attrs = &messages[0].body[4..];
        let adt = nl::attr(attrs, IPSET_ATTR_ADT).unwrap();
        let data = nl::attr(adt, IPSET_ATTR_DATA).unwrap();
        // The raw types, flags included.
        let raw: Vec<u16> = {
            let mut at = 0;
            let mut out = Vec::new();
            while let (Some(len), Some(kind)) = (nl::u16_at(data, at), nl::u16_at(data, at + 2)) {
                out.push(kind);
                at += usize::from(len).next_multiple_of(4);
            }
            out
        };
        assert_eq!(
            raw,
            vec![
                IPSET_ATTR_IP | nl::NLA_F_NESTED,
                IPSET_ATTR_PORT | NLA_F_NET_BYTEORDER,
                IPSET_ATTR_PROTO,
                IPSET_ATTR_CADT_LINENO,
            ]
        );
        assert_eq!(
            nl::attr(attrs, IPSET_ATTR_LINENO),
            Some(&1u32.to_ne_bytes()[..])
        );
        let ip = nl::attr(data, IPSET_ATTR_IP).unwrap();
        assert_eq!(
            nl::attr(ip, IPSET_ATTR_IPADDR_IPV4),
            Some(&[10, 1, 2, 3][..])
        );
        assert_eq!(
            nl::attr(data, IPSET_ATTR_PORT),
            Some(&53u16.to_be_bytes()[..])
        );
        assert_eq!(nl::attr(data, IPSET_ATTR_PROTO), Some(&[IPPROTO_UDP][..]));
        let flags = nl::u16_at(&request, 6).unwrap();
        assert_eq!(flags & NLM_F_EXCL, 0, "-exist: no NLM_F_EXCL");
    }
}
