//! One long-lived `iptables-restore --noflush` per family, for the
//! nf_tables back end.
//!
//! Started once per change, the tool reads the whole table from the kernel
//! before it applies anything that deletes a rule, which in a table of
//! thousands of rules costs tens of milliseconds; kept running, it reads
//! the table once and keeps its copy current (the kernel refuses a
//! transaction built on a stale copy, and the tool then re-reads and
//! retries), so a change costs what it writes.
//!
//! The tool prints nothing when a `COMMIT` succeeds; the kernel does: it
//! announces every committed change on the nf_tables multicast group. Each
//! block we send creates and deletes an ack chain with a name of its own
//! ([`ACK_CHAIN`] and a token) before its `COMMIT`, so the block is never
//! a no-op transaction, the chain never exists outside it, and the
//! kernel's notice of that chain's deletion says the block was committed.
//! (The new-generation notice names the committing process, but by its
//! pid in the node's first pid namespace, which an agent in a pod cannot
//! match with its child's.)
//!
//! The tool exits at the first block it cannot apply (that block is not
//! committed, as with a one-shot run); the session then reports its
//! errors and is replaced. Should the kernel drop notifications (a full
//! socket buffer), the session closes the tool's input and takes its exit
//! status as the answer.

use super::{DataplaneError, Result};
use crate::nl;
use netlink_sys::Socket;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The prefix of the chain created and deleted in every block, so each
/// block is a transaction the kernel announces; the rest of the name is
/// the session's token and the block's number (28 characters at most).
pub const ACK_CHAIN: &str = "UDL-ACK-";

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
const NETLINK_NETFILTER: isize = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFTA_CHAIN_NAME: u16 = 3;
/// nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// One rule of each match extension the policy chains write as native
/// expressions: the protocol and port matches and the verdict mark.
pub const WARM_MATCHES: [&str; 4] = [
    "-p tcp -m tcp --dport 1",
    "-p udp -m udp --dport 1",
    "-p sctp -m sctp --dport 1",
    "-m mark --mark 0x0/0x1",
];

/// How long one read of the notification socket waits before the session
/// checks whether its tool is still running.
const READ_SLICE: Duration = Duration::from_millis(20);
/// The notification socket's buffer: a whole first programming's rule
/// notifications fit (a full buffer falls back to the exit status).
const RECEIVE_BUFFER: usize = 32 << 20;

/// A running `iptables-restore --noflush` and the socket that hears its
/// commits.
pub struct Session {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<Vec<u8>>>,
    socket: Socket,
    /// Names this session's ack chains apart from any other's.
    token: String,
    /// Blocks sent so far, wrapping (numbers the ack chains).
    blocks_sent: u32,
    /// Lines sent before the change being applied: the tool numbers the
    /// lines of its whole input.
    lines_before: usize,
    /// For each line of the change being applied, its line in the caller's
    /// script (`None`: an ack line).
    origin: Vec<Option<usize>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("program", &self.program)
            .field("pid", &self.child.id())
            .finish()
    }
}

/// The last this many bytes of the tool's errors are kept.
const STDERR_KEPT: usize = 16 * 1024;

impl Session {
    /// Starts `cmd` (an `iptables-restore --noflush`, possibly behind `ip
    /// netns exec`, which runs it in place) with the notification socket
    /// opened in `netns`.
    pub fn start(program: &str, mut cmd: Command, netns: Option<&str>) -> Result<Session> {
        let socket = crate::ctnetlink::in_netns(netns, open_socket)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| DataplaneError::Spawn {
            program: program.to_string(),
            source,
        })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let kept = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(STDERR_KEPT);
                    kept.drain(..excess);
                }
            });
        }
        Ok(Session {
            program: program.to_string(),
            stdin: child.stdin.take(),
            child,
            stderr,
            socket,
            token: token(),
            blocks_sent: 0,
            lines_before: 0,
            origin: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Makes the tool load, once, the match extensions the policy chains
    /// use ([`WARM_MATCHES`]), with a block that adds a rule of each to a
    /// chain of its own and deletes the chain. The first use of an
    /// extension in a process loads its library and asks the kernel for
    /// its revision, and the transaction carrying it waited 5 to 24 ms for
    /// it on the nf_tables back end; warmed, every later change pays
    /// nothing for it. The matches are ones the tool writes as native
    /// expressions, so the block leaves nothing for the kernel to release.
    pub fn warm_up(&mut self, timeout: Duration) -> Result<()> {
        let chain = format!("{ACK_CHAIN}{}-w", self.token);
        let mut script = format!("*filter\n:{chain} - [0:0]\n");
        for m in WARM_MATCHES {
            script.push_str(&format!("-A {chain} {m} -j RETURN\n"));
        }
        script.push_str(&format!("-F {chain}\n-X {chain}\nCOMMIT\n"));
        self.apply(&script, timeout)
    }

    /// The tool has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Applies `script` (blocks of `*filter` … `COMMIT`): returns once the
    /// kernel committed every block. An error leaves the session unusable:
    /// drop it and start another.
    pub fn apply(&mut self, script: &str, timeout: Duration) -> Result<()> {
        // The group is joined only while a change is applied: between
        // changes other programs' transactions (kube-proxy's rewrites)
        // would fill the socket's buffer with kernel memory.
        self.discard_notifications();
        self.socket
            .add_membership(NFNLGRP_NFTABLES)
            .map_err(nl::io("join the nf_tables notification group"))?;
        let applied = self.apply_heard(script, timeout);
        let _ = self.socket.drop_membership(NFNLGRP_NFTABLES);
        applied
    }

    fn apply_heard(&mut self, script: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let first = self.blocks_sent;
        let (text, origin, acks) = with_acks(script, |n| {
            format!(
                "{ACK_CHAIN}{}-{:x}",
                self.token,
                first.wrapping_add(n as u32)
            )
        });
        if acks.is_empty() {
            return Ok(());
        }
        self.blocks_sent = self.blocks_sent.wrapping_add(acks.len() as u32);
        let mut pending: std::collections::HashSet<String> = acks.into_iter().collect();
        self.lines_before += self.origin.len();
        self.origin = origin;
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(text.as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = written {
            // It exited: its errors say why.
            return Err(self.ended(&format!("it stopped reading its input: {e}"), deadline));
        }
        let mut buf = Vec::with_capacity(64 * 1024);
        while !pending.is_empty() {
            if Instant::now() >= deadline {
                return Err(self.hung(timeout));
            }
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {
                    for name in deleted_chains(&buf) {
                        pending.remove(name);
                    }
                }
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                    // Notifications were dropped, ours perhaps among them:
                    // the exit status is the only sure answer left.
                    return self.finish(deadline, timeout);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return Err(self.ended("it exited", deadline));
                    }
                }
                Err(e) => return Err(nl::io("read nf_tables notifications")(e)),
            }
        }
        Ok(())
    }

    /// Reads whatever arrived since the last change (other programs'
    /// transactions), and the report of an overflow among them.
    fn discard_notifications(&mut self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits();
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, flags) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {}
                Err(_) => return,
            }
        }
    }

    /// Closes the tool's input and waits for its exit: success means every
    /// block was committed.
    fn finish(&mut self, deadline: Instant, timeout: Duration) -> Result<()> {
        drop(self.stdin.take());
        match crate::tool::wait_until(&mut self.child, deadline) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(self.failed(&status.to_string())),
            _ => Err(self.hung(timeout)),
        }
    }

    /// The tool ended (or stopped reading) with blocks not committed.
    fn ended(&mut self, what: &str, deadline: Instant) -> DataplaneError {
        match crate::tool::wait_until(&mut self.child, deadline) {
            Ok(Some(status)) => {
                // Let the reader take in the last of its errors.
                std::thread::sleep(Duration::from_millis(1));
                self.failed(&format!("{what}: {status}"))
            }
            _ => self.failed(what),
        }
    }

    fn failed(&self, status: &str) -> DataplaneError {
        let stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let stderr = String::from_utf8_lossy(&stderr);
        DataplaneError::Failed {
            program: self.program.clone(),
            status: status.to_string(),
            stderr: renumber(stderr.trim(), self.lines_before, &self.origin),
        }
    }

    fn hung(&self, timeout: Duration) -> DataplaneError {
        DataplaneError::Hung {
            program: self.program.clone(),
            reason: format!("did not commit within {timeout:?} and was stopped"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // End of input ends the tool; a tool stuck mid-block is killed.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        if !matches!(
            crate::tool::wait_until(&mut self.child, deadline),
            Ok(Some(_))
        ) {
            crate::tool::kill_group(&mut self.child);
        }
    }
}

/// A socket for the nf_tables multicast group of the current network
/// namespace (joined while a change is applied), its reads bounded by
/// [`READ_SLICE`].
fn open_socket() -> Result<Socket> {
    let socket = nl::kernel_socket(
        NETLINK_NETFILTER,
        [
            "open an nf_tables netlink socket",
            "bind the nf_tables netlink socket",
            "connect the nf_tables netlink socket",
        ],
    )?;
    // Beyond the system's limit needs CAP_NET_ADMIN, which the agent has;
    // without it the default buffer serves, with the exit-status fallback.
    if nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    )
    .is_err()
    {
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
    }
    let slice = nix::sys::time::TimeVal::new(0, READ_SLICE.as_micros() as i64);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &slice)
        .map_err(|e| nl::io("set the nf_tables read timeout")(e.into()))?;
    Ok(socket)
}

/// `script` with an ack chain (named by `name` from the block's index)
/// created and deleted before each `COMMIT`; for each line of it, the line
/// of `script` it is (1-based; `None` for the ack lines); and the ack
/// chains' names.
pub fn with_acks(
    script: &str,
    mut name: impl FnMut(usize) -> String,
) -> (String, Vec<Option<usize>>, Vec<String>) {
    let mut out = String::with_capacity(script.len() + 64);
    let mut origin = Vec::new();
    let mut acks = Vec::new();
    for (i, line) in script.lines().enumerate() {
        if line.trim() == "COMMIT" {
            let ack = name(acks.len());
            out.push_str(&format!(":{ack} - [0:0]\n-X {ack}\n"));
            origin.extend([None, None]);
            acks.push(ack);
        }
        out.push_str(line);
        out.push('\n');
        origin.push(Some(i + 1));
    }
    (out, origin, acks)
}

/// A session's token: this process, a counter, and the clock, in hex.
fn token() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SESSIONS: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(n) << 24) ^ u64::from(nanos);
    format!("{:010x}", mixed & 0xff_ffff_ffff)
}

/// The tool's `line N failed` counts every line it was ever sent; say
/// instead which line of the change failed, as a one-shot run would.
pub fn renumber(stderr: &str, lines_before: usize, origin: &[Option<usize>]) -> String {
    let Some((n, at)) = super::failed_line(stderr) else {
        return stderr.to_string();
    };
    let ours = match n.checked_sub(lines_before + 1).and_then(|i| origin.get(i)) {
        Some(Some(line)) => line.to_string(),
        Some(None) => format!("{n} (an ack chain's)"),
        None => n.to_string(),
    };
    format!("{}{ours}{}", &stderr[..at.start], &stderr[at.end..])
}

/// The names of the chains whose deletion one datagram of notifications
/// announces. Anything malformed announces nothing.
pub fn deleted_chains(datagram: &[u8]) -> Vec<&str> {
    let Ok(messages) = nl::messages(datagram) else {
        return Vec::new();
    };
    messages
        .into_iter()
        .filter(|m| m.kind == (NFT_MSG_DELCHAIN | (NFNL_SUBSYS_NFTABLES << 8)))
        .filter_map(|m| m.body.get(NFGENMSG_LEN..))
        .filter_map(|attrs| nl::attr(attrs, NFTA_CHAIN_NAME))
        .filter_map(|name| std::str::from_utf8(name).ok())
        .map(|name| name.trim_end_matches('\0'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::testing::{encoded_attr, message};

    fn chain_notice(kind: u16, name: &str) -> Vec<u8> {
        let mut body = vec![2, 0, 0, 0];
        body.extend(encoded_attr(1, b"filter\0"));
        body.extend(encoded_attr(
            NFTA_CHAIN_NAME,
            format!("{name}\0").as_bytes(),
        ));
        message(kind | (NFNL_SUBSYS_NFTABLES << 8), &body)
    }

    #[test]
    fn only_deleted_chains_are_read_from_the_notices() {
        let mut datagram = chain_notice(3, "UDL-ACK-a-0"); // created
        datagram.extend(chain_notice(NFT_MSG_DELCHAIN, "UDL-ACK-a-0"));
        datagram.extend(message((NFNL_SUBSYS_NFTABLES << 8) | 15, &[0; 8])); // a generation
        datagram.extend(chain_notice(NFT_MSG_DELCHAIN, "KUBE-SVC-X"));
        assert_eq!(deleted_chains(&datagram), ["UDL-ACK-a-0", "KUBE-SVC-X"]);
        for cut in 0..datagram.len() {
            let _ = deleted_chains(&datagram[..cut]);
        }
        // a notice without a name, or a short body, names nothing
        let bare = message(NFT_MSG_DELCHAIN | (NFNL_SUBSYS_NFTABLES << 8), &[0, 0]);
        assert!(deleted_chains(&bare).is_empty());
    }

    #[test]
    fn tokens_differ_and_ack_chains_fit_iptables_names() {
        let (a, b) = (token(), token());
        assert_ne!(a, b);
        let longest = format!("{ACK_CHAIN}{a}-{:x}", u32::MAX);
        assert!(longest.len() <= 28, "{longest}");
    }

    #[test]
    fn every_block_gets_the_ack_chain_before_its_commit() {
        let (text, origin, acks) = with_acks(
            "*filter\n-F UDL-X\nCOMMIT\n*filter\n-X UDL-Y\nCOMMIT\n",
            |n| format!("UDL-ACK-t-{n}"),
        );
        assert_eq!(
            text,
            "*filter\n-F UDL-X\n:UDL-ACK-t-0 - [0:0]\n-X UDL-ACK-t-0\nCOMMIT\n\
             *filter\n-X UDL-Y\n:UDL-ACK-t-1 - [0:0]\n-X UDL-ACK-t-1\nCOMMIT\n"
        );
        assert_eq!(acks, ["UDL-ACK-t-0", "UDL-ACK-t-1"]);
        assert_eq!(
            origin,
            [
                Some(1),
                Some(2),
                None,
                None,
                Some(3),
                Some(4),
                Some(5),
                None,
                None,
                Some(6)
            ]
        );
        assert!(with_acks("", |_| String::new()).2.is_empty());
    }

    #[test]
    fn a_failed_line_is_numbered_within_the_change() {
        let (_, origin, _) = with_acks("*filter\n-A UDL-MISSING -j ACCEPT\nCOMMIT\n", |n| {
            format!("UDL-ACK-t-{n}")
        });
        let err = "iptables-restore: line 32 failed: No chain/target/match by that name.";
        assert_eq!(
            renumber(err, 30, &origin),
            "iptables-restore: line 2 failed: No chain/target/match by that name."
        );
        assert!(
            renumber("iptables-restore: line 33 failed: x", 30, &origin)
                .contains("line 33 (an ack chain's) failed")
        );
        // numbers outside the change, and no number, are left alone
        assert_eq!(renumber("line 2 failed", 30, &origin), "line 2 failed");
        assert_eq!(renumber("line 99 failed", 30, &origin), "line 99 failed");
        assert_eq!(renumber("Bad rule", 30, &origin), "Bad rule");
        assert_eq!(renumber("line x", 30, &origin), "line x");
    }
}
