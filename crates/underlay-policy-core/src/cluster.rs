//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) as the engine
//! sees it: the cluster administrator's two tiers around NetworkPolicy, and
//! the Nodes its `nodes` peers select.
//!
//! A packet meets, per direction at a local pod:
//! 1. the Admin tier: the policies selecting the pod by priority (lower
//!    first; equal priorities by name), their rules in order; the first
//!    rule that matches decides: Accept allows (NetworkPolicy is not
//!    consulted), Deny drops, Pass skips the rest of the Admin tier;
//! 2. NetworkPolicy, exactly as without cluster policies, when any selects
//!    the pod in that direction (it always decides);
//! 3. otherwise the Baseline tier the same way (Pass skips the rest of it);
//! 4. otherwise the default: allowed.

use crate::model::{Cidr, Labels, Mode, PortMatch, Selector};
use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;

/// The tier a cluster policy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub const BOTH: [Tier; 2] = [Tier::Admin, Tier::Baseline];
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Accept,
    Deny,
    /// Skip the rest of the tier.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// One peer of a cluster policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPeer {
    /// Pods of the namespaces `namespaces` selects that `pods` selects
    /// (a `namespaces` peer is this with every pod).
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// The addresses of the Nodes the selector picks (egress only).
    Nodes(Selector),
    /// Addresses in one CIDR (egress only; a peer with several CIDRs is
    /// one of these per CIDR).
    Network(Cidr),
    /// Every address: what a Deny or Pass rule with a peer the engine
    /// cannot enforce becomes (failing closed).
    Anything,
}

/// One entry of a rule's `protocols`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPort {
    /// A protocol with a port, a port range or any port (a numeric
    /// [`PortMatch`]; never a named one).
    Port(PortMatch),
    /// A container port name on the destination pod, whatever its
    /// protocol.
    Named(String),
}

/// One ingress or egress rule. Unlike NetworkPolicy, an empty `peers`
/// matches nothing; an empty `ports` matches every port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterRule {
    pub name: String,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    pub ports: Vec<ClusterPort>,
}

impl ClusterRule {
    pub fn new(action: Action, peers: Vec<ClusterPeer>) -> ClusterRule {
        ClusterRule {
            name: String::new(),
            action,
            peers,
            ports: Vec::new(),
        }
    }

    pub fn ports(mut self, ports: Vec<ClusterPort>) -> ClusterRule {
        self.ports = ports;
        self
    }
}

/// A ClusterNetworkPolicy. Its subject is the pods `subject_pods` selects
/// in the namespaces `subject_namespaces` selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject_namespaces: Selector,
    pub subject_pods: Selector,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    pub mode: Mode,
}

impl ClusterPolicy {
    /// A policy selecting every pod of the namespaces `namespaces` selects.
    pub fn new(name: &str, tier: Tier, priority: u16, namespaces: Selector) -> ClusterPolicy {
        ClusterPolicy {
            name: name.into(),
            tier,
            priority,
            subject_namespaces: namespaces,
            subject_pods: Selector::everything(),
            ingress: Vec::new(),
            egress: Vec::new(),
            mode: Mode::Inherit,
        }
    }

    pub fn rules(&self, dir: crate::model::Direction) -> &[ClusterRule] {
        match dir {
            crate::model::Direction::Ingress => &self.ingress,
            crate::model::Direction::Egress => &self.egress,
        }
    }

    /// Whether the subject holds a pod with these labels in a namespace
    /// with these labels.
    pub fn selects(&self, namespace: &Labels, pod: &Labels) -> bool {
        self.subject_namespaces.matches(namespace) && self.subject_pods.matches(pod)
    }

    /// The order of evaluation inside a tier: priority, then name (the API
    /// leaves equal priorities to the implementation; the name makes ours
    /// stable and predictable).
    pub fn precedence(&self, other: &ClusterPolicy) -> Ordering {
        (self.priority, &self.name).cmp(&(other.priority, &other.name))
    }
}

/// A Node as `nodes` peers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// The node's IP addresses from its status.
    pub ips: Vec<IpAddr>,
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            name: name.into(),
            labels: Labels::new(),
            ips: Vec::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Node {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn ip(mut self, ip: &str) -> Node {
        self.ips.push(ip.parse().expect("fixture ip"));
        self
    }
}
