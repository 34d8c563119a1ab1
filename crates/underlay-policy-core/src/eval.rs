//! Decides in user space whether the current policy allows a flow, from
//! the same index the compiler reads. The engine uses it to find the
//! conntrack entries of connections a change has newly denied.

use crate::index::Index;
use crate::model::{Direction, Endpoint, Peer, PodKey, PortRef, Protocol};
use std::collections::HashMap;
use std::net::IpAddr;

/// One connection as conntrack reports it (original direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// IP protocol number.
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A view of the index prepared for evaluating many flows.
pub struct Evaluator<'a> {
    index: &'a Index,
    owners: HashMap<IpAddr, PodKey>,
    local: HashMap<IpAddr, &'a Endpoint>,
}

impl<'a> Evaluator<'a> {
    pub fn new(index: &'a Index) -> Evaluator<'a> {
        let mut local = HashMap::new();
        for ep in index.endpoints() {
            for ip in &ep.ips {
                local.insert(*ip, ep);
            }
        }
        Evaluator {
            index,
            owners: index.ip_owners(),
            local,
        }
    }

    /// True when the flow touches a local endpoint.
    pub fn involves_local(&self, flow: &Flow) -> bool {
        self.local.contains_key(&flow.src) || self.local.contains_key(&flow.dst)
    }

    /// Whether policy allows the flow: the source endpoint's egress (when
    /// local) and the destination endpoint's ingress (when local).
    pub fn allowed(&self, flow: &Flow) -> bool {
        if let Some(ep) = self.local.get(&flow.src)
            && !self.direction_allows(ep, Direction::Egress, flow)
        {
            return false;
        }
        if let Some(ep) = self.local.get(&flow.dst)
            && !self.direction_allows(ep, Direction::Ingress, flow)
        {
            return false;
        }
        true
    }

    fn direction_allows(&self, ep: &Endpoint, dir: Direction, flow: &Flow) -> bool {
        if self.index.pod(&ep.pod).is_none() {
            return false;
        }
        let selection = self.index.selection(ep);
        let policies = selection.get(dir);
        if policies.is_empty() {
            return true;
        }
        let peer_ip = match dir {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        policies.iter().any(|p| {
            p.rules(dir).iter().any(|rule| {
                let peer_ok = rule.peers.is_empty()
                    || rule
                        .peers
                        .iter()
                        .any(|peer| self.peer_matches(&p.namespace, peer, &peer_ip));
                let port_ok = rule.ports.is_empty()
                    || rule.ports.iter().any(|port| {
                        let Some(proto) = Protocol::from_number(flow.protocol) else {
                            return false;
                        };
                        if proto != port.protocol {
                            return false;
                        }
                        match (&port.port, port.end_port) {
                            (None, _) => true,
                            (Some(PortRef::Number(n)), None) => flow.dport == *n,
                            (Some(PortRef::Number(n)), Some(end)) => {
                                (*n..=end).contains(&flow.dport)
                            }
                            (Some(PortRef::Name(name)), _) => {
                                self.owners
                                    .get(&flow.dst)
                                    .and_then(|k| self.index.pod(k))
                                    .and_then(|pod| pod.resolve(name, proto))
                                    == Some(flow.dport)
                            }
                        }
                    });
                peer_ok && port_ok
            })
        })
    }

    fn peer_matches(&self, policy_ns: &str, peer: &Peer, ip: &IpAddr) -> bool {
        match peer {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(*ip) && !except.iter().any(|e| e.contains(*ip))
            }
            Peer::Pods { namespaces, pods } => {
                let Some(key) = self.owners.get(ip) else {
                    return false;
                };
                let Some(pod) = self.index.pod(key) else {
                    return false;
                };
                let ns_ok = match namespaces {
                    None => key.namespace == policy_ns,
                    Some(sel) => self
                        .index
                        .namespace(&key.namespace)
                        .is_some_and(|n| sel.matches(&n.labels)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
        }
    }
}
