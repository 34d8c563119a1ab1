//! The policy domain: pods, namespaces, NetworkPolicies and local endpoints
//! as the engine sees them, with label-selector matching. No Kubernetes
//! types and no I/O here; `convert` turns API objects into these.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub type Labels = BTreeMap<String, String>;

pub use underlay_ipam::{Cidr, Family};

/// The transport protocols NetworkPolicy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The lowercase name iptables and ipset use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            other => Err(format!(
                "unsupported protocol {other:?}; use TCP, UDP or SCTP"
            )),
        }
    }
}

/// Parses an address prefix as the API server accepts `ipBlock.cidr` and
/// its `except` entries: host bits are cleared (they do not change what
/// matches), and a bare address is a single-address prefix (as `ipset`
/// lists one).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR; write it as ADDRESS/PREFIX"))?;
    let Some(prefix) = prefix else {
        return Ok(Cidr::host(addr));
    };
    let prefix = prefix
        .parse::<u8>()
        .map_err(|_| format!("{s:?} has a bad prefix length; write it as ADDRESS/PREFIX"))?;
    let family = Family::of(addr);
    if prefix > family.bits() {
        return Err(format!(
            "prefix length {prefix} is too long for {family}; use at most {}",
            family.bits()
        ));
    }
    Cidr::containing(addr, prefix).map_err(|e| e.to_string())
}

/// One `matchExpressions` operator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expression {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A Kubernetes label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Expression>,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Selector {
        Selector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn with(mut self, expr: Expression) -> Selector {
        self.match_expressions.push(expr);
        self
    }

    /// All requirements ANDed, as the API defines.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| match e {
                Expression::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                // NotIn also matches when the key is absent.
                Expression::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Expression::Exists(k) => labels.contains_key(k),
                Expression::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// Identifies a pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> PodKey {
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port with a name, used to resolve named ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Succeeded and Failed pods hold no addresses any more.
    pub terminated: bool,
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    pub fn new(namespace: &str, name: &str) -> Pod {
        Pod {
            key: PodKey::new(namespace, name),
            labels: Labels::new(),
            ips: Vec::new(),
            host_network: false,
            terminated: false,
            named_ports: Vec::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Pod {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn ip(mut self, ip: &str) -> Pod {
        self.ips.push(ip.parse().expect("fixture ip"));
        self
    }

    pub fn port(mut self, name: &str, protocol: Protocol, port: u16) -> Pod {
        self.named_ports.push(NamedPort {
            name: name.into(),
            protocol,
            port,
        });
        self
    }

    /// Whether the pod takes part in selection as a peer or an endpoint.
    pub fn selectable(&self) -> bool {
        !self.host_network && !self.terminated
    }

    pub fn resolve(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The namespace annotation that turns on logging of denied packets.
pub const LOG_ANNOTATION: &str = "policy.underlay.dev/log-denied";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// Set by the [`LOG_ANNOTATION`] annotation (`"true"`).
    pub log_denied: bool,
}

impl Namespace {
    /// A namespace with the label the API server adds to every namespace.
    pub fn new(name: &str) -> Namespace {
        let mut labels = Labels::new();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        Namespace {
            name: name.into(),
            labels,
            log_denied: false,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Namespace {
        self.labels.insert(k.into(), v.into());
        self
    }
}

/// `port` of a NetworkPolicyPort.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// One NetworkPolicyPort: protocol (defaulted to TCP), optional port, and
/// optional `endPort` (numeric ports only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

impl PortMatch {
    pub fn tcp(port: u16) -> PortMatch {
        PortMatch::number(Protocol::Tcp, port)
    }

    pub fn number(protocol: Protocol, port: u16) -> PortMatch {
        PortMatch {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: None,
        }
    }

    pub fn named(protocol: Protocol, name: &str) -> PortMatch {
        PortMatch {
            protocol,
            port: Some(PortRef::Name(name.into())),
            end_port: None,
        }
    }

    pub fn range(protocol: Protocol, port: u16, end: u16) -> PortMatch {
        PortMatch {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: Some(end),
        }
    }

    pub fn any(protocol: Protocol) -> PortMatch {
        PortMatch {
            protocol,
            port: None,
            end_port: None,
        }
    }
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. `None` namespace selector
    /// means the policy's own namespace; `None` pod selector means all pods.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

impl Peer {
    pub fn pods(sel: Selector) -> Peer {
        Peer::Pods {
            namespaces: None,
            pods: Some(sel),
        }
    }

    pub fn namespaces(sel: Selector) -> Peer {
        Peer::Pods {
            namespaces: Some(sel),
            pods: None,
        }
    }

    pub fn both(namespaces: Selector, pods: Selector) -> Peer {
        Peer::Pods {
            namespaces: Some(namespaces),
            pods: Some(pods),
        }
    }

    pub fn block(cidr: &str, except: &[&str]) -> Peer {
        Peer::IpBlock {
            cidr: parse_cidr(cidr).expect("fixture cidr"),
            except: except
                .iter()
                .map(|c| parse_cidr(c).expect("fixture cidr"))
                .collect(),
        }
    }
}

/// One ingress or egress rule. Empty `peers` = every peer; empty `ports` =
/// every port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortMatch>,
}

impl Rule {
    pub fn allow_all() -> Rule {
        Rule::default()
    }

    pub fn from(peers: Vec<Peer>) -> Rule {
        Rule {
            peers,
            ports: Vec::new(),
        }
    }

    pub fn ports(mut self, ports: Vec<PortMatch>) -> Rule {
        self.ports = ports;
        self
    }
}

/// Which directions a policy isolates (its `policyTypes`, defaulted as the
/// API server does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// 0 for ingress, 1 for egress: the index of per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
}

/// The annotation that puts a NetworkPolicy or ClusterNetworkPolicy in
/// audit mode (`audit`) or enforce mode (`enforce`) whatever the agent's
/// default.
pub const MODE_ANNOTATION: &str = "policy.underlay.io/mode";

/// Whether a policy drops what it does not allow, or only reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The agent's default mode (see [`crate::index::Index::set_default_mode`]).
    #[default]
    Inherit,
    Enforce,
    /// Evaluated, never dropping: a packet the enforced policies allow and
    /// this one would deny is accepted and reported as an audit denial.
    Audit,
}

impl Mode {
    /// Reads the annotation's value (absent: inherit).
    pub fn parse(value: Option<&str>) -> Result<Mode, String> {
        match value {
            None => Ok(Mode::Inherit),
            Some("enforce") => Ok(Mode::Enforce),
            Some("audit") => Ok(Mode::Audit),
            Some(other) => Err(format!(
                "annotation {MODE_ANNOTATION}: {other:?} is neither \"enforce\" nor \"audit\""
            )),
        }
    }

    /// Whether a policy of this mode is audited when the default is
    /// `default`.
    pub fn audited(self, default: Mode) -> bool {
        match self {
            Mode::Inherit => default == Mode::Audit,
            m => m == Mode::Audit,
        }
    }
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    pub types: PolicyTypes,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub mode: Mode,
}

impl Policy {
    /// A policy with `policyTypes` defaulted: Ingress always, Egress when
    /// there are egress rules. Set `types` to override.
    pub fn new(namespace: &str, name: &str, pod_selector: Selector) -> Policy {
        Policy {
            namespace: namespace.into(),
            name: name.into(),
            pod_selector,
            types: PolicyTypes {
                ingress: true,
                egress: false,
            },
            ingress: Vec::new(),
            egress: Vec::new(),
            mode: Mode::Inherit,
        }
    }

    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }

    pub fn applies(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.types.ingress,
            Direction::Egress => self.types.egress,
        }
    }

    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The CNI attachment that owns an endpoint: a sandbox's container ID and
/// its interface name inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A pod attached on this node: its host-side interface and addresses (from
/// IPAM, authoritative even before the pod's status carries them).
///
/// A pod's host interface name is stable across its sandboxes, so two
/// attachments (the old sandbox and the new) can name the same interface
/// for a while; `owner` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: PodKey,
    pub interface: String,
    pub ips: Vec<IpAddr>,
    pub owner: Attachment,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_operators_follow_the_api() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases: Vec<(Selector, bool)> = vec![
            (Selector::everything(), true),
            (Selector::labels([("app", "web")]), true),
            (Selector::labels([("app", "db")]), false),
            (Selector::labels([("app", "web"), ("tier", "back")]), false),
            (
                Selector::default().with(Expression::In(
                    "app".into(),
                    vec!["db".into(), "web".into()],
                )),
                true,
            ),
            (
                Selector::default().with(Expression::In("missing".into(), vec!["x".into()])),
                false,
            ),
            (
                Selector::default().with(Expression::NotIn("app".into(), vec!["web".into()])),
                false,
            ),
            (
                Selector::default().with(Expression::NotIn("missing".into(), vec!["x".into()])),
                true,
            ),
            (
                Selector::default().with(Expression::Exists("tier".into())),
                true,
            ),
            (
                Selector::default().with(Expression::Exists("missing".into())),
                false,
            ),
            (
                Selector::default().with(Expression::DoesNotExist("tier".into())),
                false,
            ),
            (
                Selector::default().with(Expression::DoesNotExist("missing".into())),
                true,
            ),
            (
                Selector::labels([("app", "web")]).with(Expression::DoesNotExist("tier".into())),
                false,
            ),
        ];
        for (i, (sel, want)) in cases.iter().enumerate() {
            assert_eq!(sel.matches(&l), *want, "case {i}: {sel:?}");
        }
    }

    #[test]
    fn ipblock_cidrs_parse_with_host_bits_cleared() {
        let c = parse_cidr("10.1.2.3/16").unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains("10.1.255.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        let [lo, hi] = all.halves().unwrap();
        assert_eq!(
            (lo.to_string(), hi.to_string()),
            ("0.0.0.0/1".into(), "128.0.0.0/1".into())
        );
        let [lo, hi] = parse_cidr("::/0").unwrap().halves().unwrap();
        assert_eq!(
            (lo.to_string(), hi.to_string()),
            ("::/1".into(), "8000::/1".into())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
        assert!(parse_cidr("10.0.0.0/x").is_err());
        assert_eq!(parse_cidr("10.0.0.1").unwrap().prefix_len(), 32);
        assert_eq!(parse_cidr("fd00::1").unwrap().prefix_len(), 128);
        assert!(c.contains_cidr(&parse_cidr("10.1.3.0/24").unwrap()));
        assert!(!c.contains_cidr(&parse_cidr("10.0.0.0/8").unwrap()));
    }
}
