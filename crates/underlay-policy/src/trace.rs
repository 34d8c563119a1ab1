//! `Trace`: the verdict for one flow at this node's pods, computed twice —
//! by the model ([`crate::eval::Evaluator::explain`]) and by walking the
//! packet through the kernel's saved rules ([`crate::kernel_trace`]) — and
//! compared. A difference is a bug, reported, never hidden.
//!
//! Each direction the node decides is walked on its own: the source pod's
//! egress as if the packet then left the node (through INPUT when it is
//! addressed to the node itself), the destination pod's ingress as if it
//! came from outside (through OUTPUT when the node sends it), so each
//! direction's kernel verdict is its own even when the other one drops
//! the packet first.

use crate::eval::{Evaluator, Flow};
use crate::index::Index;
use crate::kernel_trace::{self, Kernel, KernelError, Packet};
use crate::model::{Direction, Family, PodKey, Protocol};
use std::net::IpAddr;

/// One flow to trace: what the `Trace` RPC asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl Query {
    /// Reads a request's fields; the error says which one is wrong.
    pub fn parse(
        source: &str,
        destination: &str,
        protocol: &str,
        port: u32,
    ) -> Result<Query, String> {
        let ip = |what: &str, s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{what} {s:?} is not an IP address"))
        };
        let (src, dst) = (ip("source", source)?, ip("destination", destination)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(format!(
                "source {src} and destination {dst} are of different IP families"
            ));
        }
        let protocol = protocol.parse::<Protocol>()?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {port} is out of range; use 1 to 65535"))?;
        Ok(Query {
            src,
            dst,
            protocol,
            port,
        })
    }

    fn family(&self) -> Family {
        if self.src.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A verdict with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: String,
}

/// One direction the node decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionTrace {
    pub direction: Direction,
    pub pod: PodKey,
    pub model: Verdict,
    pub kernel: Verdict,
    /// The rules the packet matched, in order, as "CHAIN: rule".
    pub kernel_rules: Vec<String>,
    pub agree: bool,
}

/// The whole flow at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTrace {
    /// Empty when neither address is a pod of this node.
    pub directions: Vec<DirectionTrace>,
    /// Every decided direction is allowed by the kernel.
    pub allowed: bool,
    /// Every direction's model and kernel verdicts agree.
    pub agree: bool,
}

/// Traces `query` against the index (the model) and the saved kernel state;
/// `host` are the node's own addresses.
pub fn trace(
    index: &Index,
    kernel: &Kernel,
    host: &[IpAddr],
    query: &Query,
) -> Result<FlowTrace, KernelError> {
    let flow = Flow {
        protocol: query.protocol.number(),
        src: query.src,
        dst: query.dst,
        sport: 0,
        dport: query.port,
    };
    let mut directions = Vec::new();
    for decision in Evaluator::new(index).explain(&flow) {
        let mut model = Verdict {
            allowed: decision.allowed,
            reason: decision.reason,
        };
        let (hook, pkt) = packet(index, query, decision.direction, host);
        if hook == "OUTPUT" {
            model = Verdict {
                allowed: true,
                reason: "sent by this node: ingress policy applies to forwarded packets only"
                    .into(),
            };
        }
        let walk = kernel.walk(query.family(), hook, &pkt)?;
        let allowed = walk.verdict == kernel_trace::Verdict::Accept;
        let word = if allowed { "accepted" } else { "dropped" };
        let kernel = Verdict {
            allowed,
            reason: format!("{word} by {}", walk.decided_by),
        };
        directions.push(DirectionTrace {
            direction: decision.direction,
            pod: decision.pod,
            agree: model.allowed == kernel.allowed,
            model,
            kernel,
            kernel_rules: walk.rules,
        });
    }
    Ok(FlowTrace {
        allowed: directions.iter().all(|d| d.kernel.allowed),
        agree: directions.iter().all(|d| d.agree),
        directions,
    })
}

/// The built-in chain and packet that decide one direction: only the
/// deciding pod's interface is set (see the module's comment).
fn packet(index: &Index, query: &Query, dir: Direction, host: &[IpAddr]) -> (&'static str, Packet) {
    let interface = |ip: &IpAddr| {
        index
            .endpoints()
            .find(|ep| ep.ips.contains(ip))
            .map(|ep| ep.interface.clone())
    };
    let mut pkt = Packet {
        iif: None,
        oif: None,
        src: query.src,
        dst: query.dst,
        protocol: query.protocol,
        dport: query.port,
        mark: 0,
    };
    match dir {
        Direction::Egress => {
            pkt.iif = interface(&query.src);
            let hook = if host.contains(&query.dst) {
                "INPUT"
            } else {
                "FORWARD"
            };
            (hook, pkt)
        }
        Direction::Ingress => {
            pkt.oif = interface(&query.dst);
            let hook = if host.contains(&query.src) {
                "OUTPUT"
            } else {
                "FORWARD"
            };
            (hook, pkt)
        }
    }
}
