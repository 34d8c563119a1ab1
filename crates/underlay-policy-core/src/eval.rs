//! Decides in user space whether the current policy allows a flow, from
//! the same index the compiler reads. The engine uses it to find the
//! conntrack entries of connections a change has newly denied; `Trace`
//! uses [`Evaluator::explain`], the same decisions with their reasons in
//! words, to compare with the kernel's verdict.

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

/// How a NetworkPolicy is named in reports.
pub fn network_policy(p: &Policy) -> String {
    format!("networkpolicy/{}/{}", p.namespace, p.name)
}

/// How a ClusterNetworkPolicy is named in reports, with its tier.
pub fn cluster_policy(p: &ClusterPolicy) -> String {
    format!("clusternetworkpolicy/{} ({})", p.name, p.tier)
}

/// What policy decides for one direction of a flow at one local pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub direction: Direction,
    pub pod: PodKey,
    pub allowed: bool,
    /// Why, in words: the deciding policy and rule, or what isolates the
    /// pod and that nothing admits the flow.
    pub reason: String,
}

/// The cluster policy rule that matched first in its tier.
struct Hit {
    policy: Arc<ClusterPolicy>,
    rule: usize,
    dir: Direction,
}

impl Hit {
    fn action(&self) -> Action {
        self.policy.rules(self.dir)[self.rule].action
    }

    /// `clusternetworkpolicy/p (Admin) rule 0 "name"`.
    fn describe(&self) -> String {
        let name = &self.policy.rules(self.dir)[self.rule].name;
        let mut out = format!("{} rule {}", cluster_policy(&self.policy), self.rule);
        if !name.is_empty() {
            out.push_str(&format!(" {name:?}"));
        }
        out
    }
}

/// How one direction was decided, holding what decided it.
enum Outcome {
    UnknownPod,
    /// A cluster policy rule decided (Admin Accept or Deny; any Baseline
    /// action: a Baseline Pass allows by default).
    Cluster(Hit),
    /// A NetworkPolicy rule admitted the flow (after an Admin Pass, if any).
    Allowed {
        policy: Arc<Policy>,
        rule: usize,
        passed: Option<Hit>,
    },
    /// NetworkPolicies select the pod and none admits the flow.
    Isolated {
        policies: Vec<Arc<Policy>>,
        passed: Option<Hit>,
    },
    /// No NetworkPolicy selects the pod and no cluster policy rule decided.
    Default {
        considered: Vec<Arc<ClusterPolicy>>,
        passed: Option<Hit>,
    },
}

impl Outcome {
    fn allowed(&self) -> bool {
        match self {
            Outcome::UnknownPod | Outcome::Isolated { .. } => false,
            Outcome::Cluster(hit) => hit.action() != Action::Deny,
            Outcome::Allowed { .. } | Outcome::Default { .. } => true,
        }
    }

    fn reason(&self, pod: &PodKey, dir: Direction) -> String {
        let dir_name = match dir {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let after_pass = |passed: &Option<Hit>| match passed {
            Some(hit) => format!("{} passes; ", hit.describe()),
            None => String::new(),
        };
        match self {
            Outcome::UnknownPod => format!("the pod {pod} is unknown: dropped"),
            Outcome::Cluster(hit) => match hit.action() {
                Action::Pass => format!("{} passes: allowed by default", hit.describe()),
                Action::Deny => format!("{} denies", hit.describe()),
                Action::Accept => format!("{} accepts", hit.describe()),
            },
            Outcome::Allowed {
                policy,
                rule,
                passed,
            } => format!(
                "{}allowed by {} rule {rule}",
                after_pass(passed),
                network_policy(policy)
            ),
            Outcome::Isolated { policies, passed } => format!(
                "{}isolated by {}; no rule admits it",
                after_pass(passed),
                policies
                    .iter()
                    .map(|p| network_policy(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Outcome::Default { considered, passed } if considered.is_empty() => format!(
                "{}no policy selects {pod} for {dir_name}: allowed by default",
                after_pass(passed)
            ),
            Outcome::Default { considered, passed } => format!(
                "{}no rule of {} matches and no networkpolicy selects {pod} for {dir_name}: allowed by default",
                after_pass(passed),
                considered
                    .iter()
                    .map(|p| cluster_policy(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
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
        Evaluator { index, local }
    }

    /// True when the flow touches a local endpoint.
    pub fn involves_local(&self, flow: &Flow) -> bool {
        self.local.contains_key(&flow.src) || self.local.contains_key(&flow.dst)
    }

    /// Whether policy allows the flow: the source endpoint's egress (when
    /// local) and the destination endpoint's ingress (when local). The same
    /// decisions [`Evaluator::explain`] puts in words.
    pub fn allowed(&self, flow: &Flow) -> bool {
        self.sides(flow)
            .all(|(ep, dir)| self.decide(ep, dir, flow).allowed())
    }

    /// Whether the enforced policies allow the flow but the audited ones,
    /// were they enforced, would deny it: an audit denial.
    pub fn audit_denied(&self, flow: &Flow) -> bool {
        self.allowed(flow)
            && !self
                .sides(flow)
                .all(|(ep, dir)| self.decide_in(ep, dir, flow, Scope::All).allowed())
    }

    /// The decision of each direction the node decides for the flow, in
    /// the order the packet meets them (the source's egress, then the
    /// destination's ingress), each with its reason in words.
    pub fn explain(&self, flow: &Flow) -> Vec<Decision> {
        self.sides(flow)
            .map(|(ep, dir)| {
                let outcome = self.decide(ep, dir, flow);
                let mut reason = outcome.reason(&ep.pod, dir);
                if outcome.allowed() {
                    let all = self.decide_in(ep, dir, flow, Scope::All);
                    if !all.allowed() {
                        reason.push_str(&format!(
                            "; audit: with the audited policies enforced, {}",
                            all.reason(&ep.pod, dir)
                        ));
                    }
                }
                Decision {
                    direction: dir,
                    pod: ep.pod.clone(),
                    allowed: outcome.allowed(),
                    reason,
                }
            })
            .collect()
    }

    /// The local endpoints the flow meets, with the direction each decides.
    fn sides<'s>(&'s self, flow: &Flow) -> impl Iterator<Item = (&'a Endpoint, Direction)> + 's {
        let egress = self.local.get(&flow.src).map(|ep| (*ep, Direction::Egress));
        let ingress = self
            .local
            .get(&flow.dst)
            .map(|ep| (*ep, Direction::Ingress));
        egress.into_iter().chain(ingress)
    }

    /// One direction of one endpoint as the kernel decides it (the
    /// enforced policies).
    fn decide(&self, ep: &Endpoint, dir: Direction, flow: &Flow) -> Outcome {
        self.decide_in(ep, dir, flow, Scope::Enforced)
    }

    /// One direction of one endpoint: the tiers in the API's order, over
    /// the policies `scope` counts.
    fn decide_in(&self, ep: &Endpoint, dir: Direction, flow: &Flow, scope: Scope) -> Outcome {
        if self.index.pod(&ep.pod).is_none() {
            return Outcome::UnknownPod;
        }
        let selection = match scope {
            Scope::Enforced => self.index.selection(ep).enforced(self.index.default_mode()),
            Scope::All => self.index.selection(ep).into_owned(),
        };
        let peer_ip = match dir {
            Direction::Ingress => flow.src,
            Direction::Egress => flow.dst,
        };
        let admin = selection.tier(Tier::Admin, dir);
        let passed = match self.tier_decides(admin, dir, flow, &peer_ip) {
            Some(hit) if hit.action() != Action::Pass => return Outcome::Cluster(hit),
            Some(hit) => Some(hit),
            None => None,
        };
        let policies = selection.get(dir);
        if !policies.is_empty() {
            let allowed = policies.iter().find_map(|p| {
                p.rules(dir)
                    .iter()
                    .position(|rule| self.rule_matches(p, rule, flow, &peer_ip))
                    .map(|rule| (p.clone(), rule))
            });
            return match allowed {
                Some((policy, rule)) => Outcome::Allowed {
                    policy,
                    rule,
                    passed,
                },
                None => Outcome::Isolated {
                    policies: policies.to_vec(),
                    passed,
                },
            };
        }
        let baseline = selection.tier(Tier::Baseline, dir);
        match self.tier_decides(baseline, dir, flow, &peer_ip) {
            Some(hit) => Outcome::Cluster(hit),
            None => Outcome::Default {
                considered: admin.iter().chain(baseline).cloned().collect(),
                passed,
            },
        }
    }

    /// The first rule of a tier's policies (in evaluation order) that
    /// matches the flow.
    fn tier_decides(
        &self,
        policies: &[Arc<ClusterPolicy>],
        dir: Direction,
        flow: &Flow,
        peer_ip: &IpAddr,
    ) -> Option<Hit> {
        policies.iter().find_map(|p| {
            p.rules(dir)
                .iter()
                .position(|rule| self.cluster_rule_matches(rule, flow, peer_ip))
                .map(|rule| Hit {
                    policy: p.clone(),
                    rule,
                    dir,
                })
        })
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
        self.index
            .owner_of(&flow.dst)
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
        let Some(key) = self.index.owner_of(ip) else {
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
