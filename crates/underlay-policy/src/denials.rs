//! Denial records: the packets the [`crate::nflog`] consumer reads,
//! aggregated per flow key (direction, pod, source, destination, protocol,
//! port) over a short window into one record each, named with the
//! policies that isolate the pod, logged, counted, kept in a bounded ring
//! of recent records and sent to followers.
//!
//! The kernel's `-m limit` on the log rule is the first bound on a flood;
//! this module is the second: at most [`Limits::keys_per_window`] distinct
//! keys are held per window and at most [`Limits::records_per_second`]
//! records leave per second. Whatever a cap refuses is counted
//! (`underlay_policy_denials_dropped_total`), never queued.

use crate::index::Index;
use crate::metrics::{DenialLabel, Metrics};
use crate::model::{Direction, Endpoint, PodKey};
use crate::nflog::{Batch, Packet};
use futures::Stream;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;
use tracing::info;

/// The bounds of aggregation and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Packets of one key within this window make one record.
    pub window: Duration,
    /// Recent records kept for a new reader.
    pub ring: usize,
    /// Distinct keys held in one window; packets of further keys are
    /// dropped (and counted).
    pub keys_per_window: usize,
    /// Records emitted per second; further ones are dropped (and counted).
    pub records_per_second: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_millis(500),
            ring: 1000,
            keys_per_window: 4096,
            records_per_second: 200,
        }
    }
}

/// One aggregated denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub first: SystemTime,
    pub last: SystemTime,
    pub direction: Direction,
    pub pod: PodKey,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Destination port for TCP, UDP and SCTP; 0 otherwise.
    pub port: u16,
    /// The policies that isolate the pod in this direction, in evaluation
    /// order (see [`crate::describe::isolation`]).
    pub policy: String,
    pub packets: u64,
    /// An audit denial: accepted, but audited policies would deny it.
    pub audit: bool,
}

/// A protocol number as operators name it.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    audit: bool,
    direction: Direction,
    pod: PodKey,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: u16,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first: SystemTime,
    last: SystemTime,
    packets: u64,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    keys: HashMap<Key, Seen>,
}

#[derive(Debug)]
struct Recent {
    ring: VecDeque<Denial>,
    second: Option<Instant>,
    emitted: usize,
}

/// Names the pod of a record and the policies isolating it in a
/// direction, given the pod as the rule's prefix names it and the pod's
/// address in the packet (see [`endpoint_of`]).
pub type Namer<'a> = &'a dyn Fn(&PodKey, Direction, IpAddr) -> (PodKey, String);

/// The endpoint a logged packet belongs to: the one holding the packet's
/// pod-side address whose name is the pod the rule's prefix names, or
/// starts with it (the kernel cuts prefixes at 63 bytes); else the
/// endpoint of that exact name.
pub fn endpoint_of<'a>(index: &'a Index, pod: &PodKey, pod_ip: IpAddr) -> Option<&'a Endpoint> {
    let cut = pod.to_string();
    index
        .endpoints()
        .filter(|ep| ep.ips.contains(&pod_ip))
        .find(|ep| &ep.pod == pod || ep.pod.to_string().starts_with(&cut))
        .or_else(|| index.endpoints().find(|ep| &ep.pod == pod))
}

/// The aggregator, the ring of recent records and the followers' channel.
pub struct Denials {
    limits: Limits,
    metrics: Metrics,
    window: Mutex<Window>,
    recent: Mutex<Recent>,
    live: broadcast::Sender<Denial>,
}

impl Denials {
    pub fn new(limits: Limits, metrics: Metrics) -> Denials {
        Denials {
            limits,
            metrics,
            window: Mutex::new(Window::default()),
            recent: Mutex::new(Recent {
                ring: VecDeque::with_capacity(limits.ring.min(1024)),
                second: None,
                emitted: 0,
            }),
            live: broadcast::channel(limits.ring.max(1)).0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts and aggregates what one datagram held.
    pub fn observe(&self, batch: Batch, now: Instant) {
        self.metrics.nflog_malformed.inc_by(batch.malformed);
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.started.get_or_insert(now);
        for p in batch.packets {
            self.count(&p);
            self.aggregate(&mut w.keys, p);
        }
    }

    fn count(&self, p: &Packet) {
        if p.audit {
            // Accepted: not a denied packet.
            return;
        }
        let direction = match p.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        self.metrics
            .denied_packets
            .get_or_create(&DenialLabel {
                namespace: p.pod.namespace.clone(),
                direction: direction.into(),
            })
            .inc();
    }

    fn aggregate(&self, keys: &mut HashMap<Key, Seen>, p: Packet) {
        let key = Key {
            audit: p.audit,
            direction: p.direction,
            pod: p.pod,
            src: p.src,
            dst: p.dst,
            protocol: p.protocol,
            port: p.port,
        };
        if let Some(seen) = keys.get_mut(&key) {
            seen.first = seen.first.min(p.time);
            seen.last = seen.last.max(p.time);
            seen.packets += 1;
        } else if keys.len() < self.limits.keys_per_window {
            let seen = Seen {
                first: p.time,
                last: p.time,
                packets: 1,
            };
            keys.insert(key, seen);
        } else {
            self.metrics.denials_dropped.inc();
        }
    }

    /// True when the current window holds packets and has ended.
    pub fn due(&self, now: Instant) -> bool {
        self.window.lock().is_ok_and(|w| {
            w.started
                .is_some_and(|s| now.saturating_duration_since(s) >= self.limits.window)
        })
    }

    /// Ends the current window: each key becomes a record named by `name`,
    /// logged, kept and sent to followers, up to the per-second cap.
    /// Returns how many records were emitted.
    pub fn flush(&self, now: Instant, name: Namer<'_>) -> usize {
        let keys = match self.window.lock() {
            Ok(mut w) => {
                w.started = None;
                std::mem::take(&mut w.keys)
            }
            Err(_) => return 0,
        };
        let mut names: HashMap<(PodKey, Direction, IpAddr), (PodKey, String)> = HashMap::new();
        let mut records: Vec<Denial> = keys
            .into_iter()
            .map(|(k, seen)| {
                let pod_ip = match k.direction {
                    Direction::Ingress => k.dst,
                    Direction::Egress => k.src,
                };
                let (pod, policy) = names
                    .entry((k.pod.clone(), k.direction, pod_ip))
                    .or_insert_with(|| name(&k.pod, k.direction, pod_ip))
                    .clone();
                record(Key { pod, ..k }, seen, policy)
            })
            .collect();
        records.sort_by_key(|d| d.first);
        self.emit(records, now)
    }

    fn emit(&self, records: Vec<Denial>, now: Instant) -> usize {
        let Ok(mut recent) = self.recent.lock() else {
            return 0;
        };
        if recent
            .second
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            recent.second = Some(now);
            recent.emitted = 0;
        }
        let room = self
            .limits
            .records_per_second
            .saturating_sub(recent.emitted);
        let refused = records.len().saturating_sub(room);
        self.metrics.denials_dropped.inc_by(refused as u64);
        let mut emitted = 0;
        for d in records.into_iter().take(room) {
            log(&d);
            if recent.ring.len() >= self.limits.ring {
                recent.ring.pop_front();
            }
            // No follower is not an error.
            let _ = self.live.send(d.clone());
            recent.ring.push_back(d);
            emitted += 1;
        }
        recent.emitted += emitted;
        emitted
    }

    /// Records held in the ring now (at most [`Limits::ring`]).
    pub fn recent_len(&self) -> usize {
        self.recent.lock().map(|r| r.ring.len()).unwrap_or(0)
    }

    /// Distinct keys of the current window (at most
    /// [`Limits::keys_per_window`]).
    pub fn pending_keys(&self) -> usize {
        self.window.lock().map(|w| w.keys.len()).unwrap_or(0)
    }

    /// The recent records, oldest first, then (with `follow`) every new
    /// one; only pods of `namespace` when given. Nothing is missed or
    /// repeated between the two: both are taken under one lock.
    pub fn stream(
        &self,
        namespace: Option<String>,
        follow: bool,
    ) -> impl Stream<Item = Denial> + Send + 'static {
        use futures::StreamExt;
        let (recent, rx) = match self.recent.lock() {
            Ok(r) => (r.ring.iter().cloned().collect(), self.live.subscribe()),
            Err(_) => (Vec::new(), self.live.subscribe()),
        };
        let live = futures::stream::unfold((rx, follow), |(mut rx, follow)| async move {
            if !follow {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(d) => return Some((d, (rx, follow))),
                    // A slow follower misses records rather than holding them.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::stream::iter(recent).chain(live).filter(move |d| {
            let keep = namespace.as_deref().is_none_or(|n| d.pod.namespace == n);
            std::future::ready(keep)
        })
    }
}

fn record(k: Key, seen: Seen, policy: String) -> Denial {
    Denial {
        first: seen.first,
        last: seen.last,
        direction: k.direction,
        pod: k.pod,
        src: k.src,
        dst: k.dst,
        protocol: k.protocol,
        port: k.port,
        policy,
        packets: seen.packets,
        audit: k.audit,
    }
}

fn log(d: &Denial) {
    let direction = match d.direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    info!(
        pod = %d.pod,
        direction,
        src = %d.src,
        dst = %d.dst,
        proto = %protocol_name(d.protocol),
        port = d.port,
        packets = d.packets,
        policy = %d.policy,
        "traffic denied by policy"
    );
}

pub mod consumer;

#[cfg(test)]
mod tests;
