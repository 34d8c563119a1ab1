//! The node's conntrack entries, kept from the kernel's events instead of
//! dumped for every change.
//!
//! A conntrack dump walks every bucket of the kernel's connection hash,
//! which all network namespaces share (262,144 buckets on a machine with a
//! few GiB), so listing even an empty namespace costs about 10 ms; and a
//! policy change that could deny a connection lists it. The watch instead
//! joins the groups of new and destroyed connections of the node's
//! namespace, fills its table with one dump, and keeps it with the events;
//! a thread reads them as they come, and a listing reads whatever is still
//! queued before it answers.
//!
//! - Joined before the dump, every connection is in the dump or in an
//!   event read after it. Each event sets one tuple's presence, so
//!   replaying the queued events over the dump, in order, gives the table.
//! - Events the socket could not hold (`ENOBUFS`) leave the table unknown:
//!   the next listing dumps again.
//! - With `nf_conntrack_events` at 2 (the default), connections the kernel
//!   tracked before anyone listened send no destroy event. Their tuples
//!   stay until the next dump, at least every [`RESEED`]; a stale tuple
//!   costs one delete the kernel answers "no such entry".
//! - With `nf_conntrack_events` at 0 there are no events: every listing
//!   dumps (see [`super::CommandDataplane`]).
//!
//! The table holds every tuple, answered or not, closing or not: no event
//! says when a connection is answered. Deleting a denied entry that carries
//! no live connection changes nothing (its next packet is NEW either way).

use crate::ctnetlink::{self, Event};
use crate::dataplane::{DataplaneError, Result};
use crate::eval::Flow;
use crate::nl;
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_NETFILTER;
use nix::errno::Errno;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

// <linux/netfilter/nfnetlink_compat.h>: NFNLGRP_CONNTRACK_NEW, _DESTROY.
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;

/// The table is filled from a dump again at least this often, dropping the
/// tuples of connections that ended without an event.
pub const RESEED: Duration = Duration::from_secs(600);

/// The default receive buffer of the event socket: tens of thousands of
/// events between two reads of the thread.
pub const EVENT_BUFFER: usize = 8 << 20;

/// How long the thread waits for an event before it checks whether the
/// watch is still wanted.
const WAIT_SLICE: Duration = Duration::from_millis(500);

/// A conntrack table kept from events; dropping the last handle ends its
/// thread within [`WAIT_SLICE`].
#[derive(Clone)]
pub struct FlowWatch {
    shared: Arc<Shared>,
}

struct Shared {
    /// Read by the thread (a peek, waiting for an event) without the lock,
    /// and drained only under it.
    socket: Socket,
    table: Mutex<Table>,
}

struct Table {
    flows: HashSet<Flow>,
    /// The table holds every connection (a dump was read, no event lost
    /// since).
    known: bool,
    seeded: Instant,
}

impl FlowWatch {
    /// Joins the event groups on a socket of the current network namespace
    /// (call it inside the node's) with a receive buffer of `buffer` bytes;
    /// `None` when the namespace sends no conntrack events.
    pub fn open(buffer: usize) -> Result<Option<FlowWatch>> {
        let events = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")
            .unwrap_or_default();
        if events.trim() == "0" {
            return Ok(None);
        }
        let mut socket =
            Socket::new(NETLINK_NETFILTER).map_err(nl::io("open a conntrack event socket"))?;
        socket
            .bind_auto()
            .map_err(nl::io("bind the conntrack event socket"))?;
        // Beyond the system's limit needs CAP_NET_ADMIN, which the agent
        // has; otherwise the limit serves, and a full buffer means a dump.
        if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &buffer)
            .is_err()
        {
            let _ = socket.set_rx_buf_sz(buffer);
        }
        for group in [GROUP_NEW, GROUP_DESTROY] {
            socket
                .add_membership(group)
                .map_err(nl::io("join a conntrack event group"))?;
        }
        let slice = nix::sys::time::TimeVal::new(0, WAIT_SLICE.as_micros() as i64);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &slice)
            .map_err(|e| nl::io("set the conntrack event read timeout")(e.into()))?;
        let shared = Arc::new(Shared {
            socket,
            table: Mutex::new(Table {
                flows: HashSet::new(),
                known: false,
                seeded: Instant::now(),
            }),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("udl-conntrack-events".into())
            .spawn(move || follow(&weak))
            .map_err(nl::io("start the conntrack event thread"))?;
        Ok(Some(FlowWatch { shared }))
    }

    /// Every connection of the namespace: the table after the queued
    /// events, filled first by `dump` (every entry's tuple) when it is not
    /// known or is older than [`RESEED`]. Also says whether it dumped.
    pub fn list(&self, dump: impl FnOnce() -> Result<Vec<Flow>>) -> Result<(Vec<Flow>, bool)> {
        let mut table = self.shared.lock();
        self.shared.drain(&mut table)?;
        let dumped = !table.known || table.seeded.elapsed() > RESEED;
        if dumped {
            table.flows = dump()?.into_iter().collect();
            table.known = true;
            table.seeded = Instant::now();
            // What happened while the kernel dumped, in order, on top.
            self.shared.drain(&mut table)?;
        }
        Ok((table.flows.iter().copied().collect(), dumped))
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every queued event without waiting; events lost to a full
    /// buffer make the table unknown.
    fn drain(&self, table: &mut Table) -> Result<()> {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, nix::libc::MSG_DONTWAIT) {
                Ok(_) => table.apply(&buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                    debug!("conntrack events were lost; the table is read again");
                    table.known = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    table.known = false;
                    return Err(DataplaneError::Netlink {
                        op: "read conntrack events",
                        source: e,
                    });
                }
            }
        }
    }
}

impl Table {
    fn apply(&mut self, datagram: &[u8]) {
        let Ok(messages) = nl::messages(datagram) else {
            // A cut datagram: what it said is unknown.
            self.known = false;
            return;
        };
        for m in messages {
            match ctnetlink::parse_event(m.kind, m.body) {
                Some(Event::New(flow)) => {
                    self.flows.insert(flow);
                }
                Some(Event::Destroyed(flow)) => {
                    self.flows.remove(&flow);
                }
                None => {}
            }
        }
    }
}

/// The thread: waits, without the lock, until an event is queued (a peek
/// leaves it there), then applies what is queued under the lock, so a
/// listing never misses an event this thread holds; until the watch is
/// dropped.
fn follow(weak: &Weak<Shared>) {
    let mut peek = Vec::with_capacity(16);
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        peek.clear();
        let queued = match shared.socket.recv(&mut peek, nix::libc::MSG_PEEK) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                debug!("conntrack events were lost; the table is read again");
                shared.lock().known = false;
                true
            }
            Err(_) => false, // the slice passed (or a signal)
        };
        if queued {
            let mut table = shared.lock();
            if let Err(e) = shared.drain(&mut table) {
                warn!(error = %e, "reading conntrack events failed; the table is read again");
                // Not a busy loop on a broken socket.
                drop(table);
                std::thread::sleep(WAIT_SLICE);
            }
        }
    }
}
