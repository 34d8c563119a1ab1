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
//! The tool prints nothing when a `COMMIT` succeeds; the kernel does. Every
//! nf_tables transaction ends with a new-generation notification naming
//! the process that committed it, so a session listens on the nf_tables
//! multicast group of the same network namespace and counts its tool's
//! generations. A transaction that changes nothing produces no generation,
//! so each block we send creates and deletes an ack chain
//! ([`ACK_CHAIN`]) before its `COMMIT`: the block always changes something,
//! and the chain never exists outside the transaction.
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

/// Created and deleted in every block, so each block is a transaction the
/// kernel announces. Its prefix is ours; no other chain has this name.
pub const ACK_CHAIN: &str = "UDL-ACK";

// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
const NETLINK_NETFILTER: isize = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;
/// nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

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
    pid: u32,
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
            .field("pid", &self.pid)
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
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            stderr,
            socket,
            lines_before: 0,
            origin: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
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
        let (text, origin) = with_acks(script);
        let blocks = script.lines().filter(|l| l.trim() == "COMMIT").count();
        if blocks == 0 {
            return Ok(());
        }
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
        let mut committed = 0;
        let mut buf = Vec::with_capacity(64 * 1024);
        while committed < blocks {
            if Instant::now() >= deadline {
                return Err(self.hung(timeout));
            }
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => committed += generations_of(&buf, self.pid),
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
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(self.failed(&status.to_string())),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => return Err(self.hung(timeout)),
            }
        }
    }

    /// The tool ended (or stopped reading) with blocks not committed.
    fn ended(&mut self, what: &str, deadline: Instant) -> DataplaneError {
        // Its errors are complete once it exited and its pipe closed.
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(1));
                return self.failed(&format!("{what}: {status}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.failed(what)
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
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
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

/// `script` with the ack chain created and deleted before each `COMMIT`,
/// and for each line of it the line of `script` it is (1-based; `None`
/// for the ack lines).
pub fn with_acks(script: &str) -> (String, Vec<Option<usize>>) {
    let mut out = String::with_capacity(script.len() + 64);
    let mut origin = Vec::new();
    for (i, line) in script.lines().enumerate() {
        if line.trim() == "COMMIT" {
            out.push_str(&format!(":{ACK_CHAIN} - [0:0]\n-X {ACK_CHAIN}\n"));
            origin.extend([None, None]);
        }
        out.push_str(line);
        out.push('\n');
        origin.push(Some(i + 1));
    }
    (out, origin)
}

/// The tool's `line N failed` counts every line it was ever sent; say
/// instead which line of the change failed, as a one-shot run would.
pub fn renumber(stderr: &str, lines_before: usize, origin: &[Option<usize>]) -> String {
    const AT: &str = "line ";
    let Some(start) = stderr.find(AT).map(|i| i + AT.len()) else {
        return stderr.to_string();
    };
    let digits = stderr[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let Ok(n) = stderr[start..start + digits].parse::<usize>() else {
        return stderr.to_string();
    };
    let ours = match n.checked_sub(lines_before + 1).and_then(|i| origin.get(i)) {
        Some(Some(line)) => line.to_string(),
        Some(None) => format!("{n} (the {ACK_CHAIN} chain's)"),
        None => n.to_string(),
    };
    format!("{}{ours}{}", &stderr[..start], &stderr[start + digits..])
}

/// How many new-generation notifications in one datagram name `pid` as
/// the committing process. Anything malformed counts as none.
pub fn generations_of(datagram: &[u8], pid: u32) -> usize {
    let Ok(messages) = nl::messages(datagram) else {
        return 0;
    };
    messages
        .iter()
        .filter(|m| m.kind == (NFT_MSG_NEWGEN | (NFNL_SUBSYS_NFTABLES << 8)))
        .filter_map(|m| m.body.get(NFGENMSG_LEN..))
        .filter_map(|attrs| nl::attr(attrs, NFTA_GEN_PROC_PID))
        .filter_map(|p| Some(u32::from_be_bytes(p.try_into().ok()?)))
        .filter(|committer| *committer == pid)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::testing::{encoded_attr, message};

    fn newgen(pid: u32) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        body.extend(encoded_attr(1, &7u32.to_be_bytes()));
        body.extend(encoded_attr(NFTA_GEN_PROC_PID, &pid.to_be_bytes()));
        body.extend(encoded_attr(3, b"iptables-restor\0"));
        message(NFT_MSG_NEWGEN | (NFNL_SUBSYS_NFTABLES << 8), &body)
    }

    #[test]
    fn only_our_tools_generations_count() {
        let mut datagram = newgen(41);
        datagram.extend(message((NFNL_SUBSYS_NFTABLES << 8) | 6, &[0; 8])); // a new rule
        datagram.extend(newgen(42));
        datagram.extend(newgen(41));
        assert_eq!(generations_of(&datagram, 41), 2);
        assert_eq!(generations_of(&datagram, 42), 1);
        assert_eq!(generations_of(&datagram, 43), 0);
        for cut in 0..datagram.len() {
            let _ = generations_of(&datagram[..cut], 41);
        }
        // a generation without its process, or a short body, is no ack
        let bare = message(NFT_MSG_NEWGEN | (NFNL_SUBSYS_NFTABLES << 8), &[0, 0]);
        assert_eq!(generations_of(&bare, 0), 0);
    }

    #[test]
    fn every_block_gets_the_ack_chain_before_its_commit() {
        let (text, origin) = with_acks("*filter\n-F UDL-X\nCOMMIT\n*filter\n-X UDL-Y\nCOMMIT\n");
        assert_eq!(
            text,
            "*filter\n-F UDL-X\n:UDL-ACK - [0:0]\n-X UDL-ACK\nCOMMIT\n\
             *filter\n-X UDL-Y\n:UDL-ACK - [0:0]\n-X UDL-ACK\nCOMMIT\n"
        );
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
        assert!(with_acks("").1.is_empty());
    }

    #[test]
    fn a_failed_line_is_numbered_within_the_change() {
        let (_, origin) = with_acks("*filter\n-A UDL-MISSING -j ACCEPT\nCOMMIT\n");
        let err = "iptables-restore: line 32 failed: No chain/target/match by that name.";
        assert_eq!(
            renumber(err, 30, &origin),
            "iptables-restore: line 2 failed: No chain/target/match by that name."
        );
        assert!(
            renumber("iptables-restore: line 33 failed: x", 30, &origin)
                .contains("line 33 (the UDL-ACK chain's) failed")
        );
        // numbers outside the change, and no number, are left alone
        assert_eq!(renumber("line 2 failed", 30, &origin), "line 2 failed");
        assert_eq!(renumber("line 99 failed", 30, &origin), "line 99 failed");
        assert_eq!(renumber("Bad rule", 30, &origin), "Bad rule");
        assert_eq!(renumber("line x", 30, &origin), "line x");
    }
}
