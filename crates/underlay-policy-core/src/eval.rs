//! Decides in user space whether the current policy allows a flow, from
//! the same index the compiler reads. The engine uses it to find the
//! conntrack entries of connections a change has newly denied.

use crate::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Tier};
use crate::index::Index;
use crate::model::{
    Direction, Endpoint, Peer, PodKey, Policy, PortMatch, PortRef, Protocol, Rule, Selector,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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

/// Which policies an evaluation counts.
#[derive(Clone, Copy)]
enum Scope {
    /// The enforced ones: what the kernel does.
    Enforced,
    /// Every policy, audited ones as if enforced.
    All,
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

    /// Whether the enforced policies allow the flow but the audited ones,
    /// were they enforced, would deny it: an audit denial.
    pub fn audit_denied(&self, flow: &Flow) -> bool {
        self.allowed(flow) && !self.decides(flow, Scope::All)
    }

    fn decides(&self, flow: &Flow, scope: Scope) -> bool {
        if let Some(ep) = self.local.get(&flow.src)
            && !self.direction_allows_in(ep, Direction::Egress, flow, scope)
        {
            return false;
        }
        if let Some(ep) = self.local.get(&flow.dst)
            && !self.direction_allows_in(ep, Direction::Ingress, flow, scope)
        {
            return false;
        }
        true
    }

    fn direction_allows(&self, ep: &Endpoint, dir: Direction, flow: &Flow) -> bool {
        self.direction_allows_in(ep, dir, flow, Scope::Enforced)
    }

    fn direction_allows_in(
        &self,
        ep: &Endpoint,
        dir: Direction,
        flow: &Flow,
        scope: Scope,
    ) -> bool {
        if self.index.pod(&ep.pod).is_none() {
            return false;
        }
        let selection = match scope {
            Scope::Enforced => self.index.selection(ep).enforced(self.index.default_mode()),
            Scope::All => self.index.selection(ep),
        };
        let peer_ip = match dir {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        match self.tier_decides(selection.tier(Tier::Admin, dir), dir, flow, &peer_ip) {
            Some(Action::Accept) => return true,
            Some(Action::Deny) => return false,
            Some(Action::Pass) | None => {}
        }
        let policies = selection.get(dir);
        if !policies.is_empty() {
            return policies.iter().any(|p| {
                p.rules(dir)
                    .iter()
                    .any(|rule| self.rule_matches(p, rule, flow, &peer_ip))
            });
        }
        !matches!(
            self.tier_decides(selection.tier(Tier::Baseline, dir), dir, flow, &peer_ip),
            Some(Action::Deny)
        )
    }

    /// The action of the first rule of a tier's policies (in evaluation
    /// order) that matches the flow.
    fn tier_decides(
        &self,
        policies: &[Arc<ClusterPolicy>],
        dir: Direction,
        flow: &Flow,
        peer_ip: &IpAddr,
    ) -> Option<Action> {
        policies
            .iter()
            .flat_map(|p| p.rules(dir))
            .find(|rule| self.cluster_rule_matches(rule, flow, peer_ip))
            .map(|rule| rule.action)
    }

    fn cluster_rule_matches(&self, rule: &ClusterRule, flow: &Flow, peer_ip: &IpAddr) -> bool {
        let peer_ok = rule.peers.iter().any(|peer| match peer {
            ClusterPeer::Anything => true,
            ClusterPeer::Network(cidr) => cidr.contains(*peer_ip),
            ClusterPeer::Nodes(sel) => self
                .index
                .nodes()
                .any(|n| sel.matches(&n.labels) && n.ips.contains(peer_ip)),
            ClusterPeer::Pods { namespaces, pods } => {
                self.pod_peer_matches(Some(namespaces), Some(pods), "", peer_ip)
            }
        });
        let port_ok = rule.ports.is_empty()
            || rule.ports.iter().any(|port| match port {
                ClusterPort::Port(p) => self.port_matches(p, flow),
                ClusterPort::Named(name) => Protocol::from_number(flow.protocol)
                    .is_some_and(|proto| self.named_port(name, proto, flow)),
            });
        peer_ok && port_ok
    }

    fn rule_matches(&self, p: &Policy, rule: &Rule, flow: &Flow, peer_ip: &IpAddr) -> bool {
        let peer_ok = rule.peers.is_empty()
            || rule
                .peers
                .iter()
                .any(|peer| self.peer_matches(&p.namespace, peer, peer_ip));
        let port_ok =
            rule.ports.is_empty() || rule.ports.iter().any(|port| self.port_matches(port, flow));
        peer_ok && port_ok
    }

    fn port_matches(&self, port: &PortMatch, flow: &Flow) -> bool {
        let Some(proto) = Protocol::from_number(flow.protocol) else {
            return false;
        };
        if proto != port.protocol {
            return false;
        }
        match (&port.port, port.end_port) {
            (None, _) => true,
            (Some(PortRef::Number(n)), None) => flow.dport == *n,
            (Some(PortRef::Number(n)), Some(end)) => (*n..=end).contains(&flow.dport),
            (Some(PortRef::Name(name)), _) => self.named_port(name, proto, flow),
        }
    }

    /// Whether the flow's destination pod has a container port `name` of
    /// the flow's protocol and port.
    fn named_port(&self, name: &str, proto: Protocol, flow: &Flow) -> bool {
        self.owners
            .get(&flow.dst)
            .and_then(|k| self.index.pod(k))
            .and_then(|pod| pod.resolve(name, proto))
            == Some(flow.dport)
    }

    fn peer_matches(&self, policy_ns: &str, peer: &Peer, ip: &IpAddr) -> bool {
        match peer {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(*ip) && !except.iter().any(|e| e.contains(*ip))
            }
            Peer::Pods { namespaces, pods } => {
                self.pod_peer_matches(namespaces.as_ref(), pods.as_ref(), policy_ns, ip)
            }
        }
    }

    /// Whether `ip` belongs to a pod the selectors pick (no namespace
    /// selector: the pods of `own_ns`; no pod selector: every pod).
    fn pod_peer_matches(
        &self,
        namespaces: Option<&Selector>,
        pods: Option<&Selector>,
        own_ns: &str,
        ip: &IpAddr,
    ) -> bool {
        let Some(key) = self.owners.get(ip) else {
            return false;
        };
        let Some(pod) = self.index.pod(key) else {
            return false;
        };
        let ns_ok = match namespaces {
            None => key.namespace == own_ns,
            Some(sel) => self
                .index
                .namespace(&key.namespace)
                .is_some_and(|n| sel.matches(&n.labels)),
        };
        ns_ok && pods.is_none_or(|s| s.matches(&pod.labels))
    }
}
