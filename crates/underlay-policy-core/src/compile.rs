//! The compiler: a pure function from the index to the desired iptables
//! chains (filter table, one ruleset per family) and ipsets.
//!
//! Layout, per family:
//! - `UDL-FORWARD`, `UDL-INPUT`, `UDL-OUTPUT`: the only chains jumped to
//!   from the built-in chains. Conntrack first (INVALID dropped,
//!   ESTABLISHED/RELATED accepted), then dispatch.
//! - `UDL-FROM-POD` / `UDL-TO-POD`: dispatch by host interface to the
//!   endpoint's egress / ingress chain; any other pod interface is dropped.
//! - `UDL-E-<if>` / `UDL-I-<if>`: per endpoint. Empty when no policy of
//!   that direction selects the pod (open); otherwise a jump to each
//!   selecting policy's chain, returning as soon as one allowed, then drop.
//!   A drop alone while the endpoint's Pod object is unknown.
//! - `UDL-PI-<h>` / `UDL-PE-<h>`: per policy, shared by every endpoint it
//!   selects. Allowed packets get the policy mark bit; the endpoint chain
//!   tests it. The bit is cleared again in `UDL-ALLOW` so other
//!   components never see it.
//!
//! Peers are ipsets; named ports are `hash:ip,port` sets of (pod IP,
//! protocol, port) so one shared rule resolves the name per pod.

use crate::index::{Index, Members, SetKey, SetKind};
use crate::model::{Direction, Endpoint, Family, Peer, Policy, PortMatch, PortRef};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const CHAIN_PREFIX: &str = "UDL-";
pub const SET_PREFIX: &str = "udl";
pub const FORWARD: &str = "UDL-FORWARD";
pub const INPUT: &str = "UDL-INPUT";
pub const OUTPUT: &str = "UDL-OUTPUT";
pub const FROM_POD: &str = "UDL-FROM-POD";
pub const TO_POD: &str = "UDL-TO-POD";
pub const ALLOW: &str = "UDL-ALLOW";

/// The built-in chains we hook, with the chain each jumps to.
pub const HOOKS: [(&str, &str); 3] = [("FORWARD", FORWARD), ("INPUT", INPUT), ("OUTPUT", OUTPUT)];

/// Knobs of the generated ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Host-side interface name prefix of pod veths.
    pub interface_prefix: String,
    /// The packet mark bit policy chains set on allowed packets.
    pub mark: u32,
    /// Log denied packets of every namespace (otherwise only namespaces
    /// annotated with [`crate::model::LOG_ANNOTATION`]).
    pub log_all: bool,
    pub nflog_group: u16,
    /// iptables `limit` rate for logged packets, e.g. `10/second`.
    pub log_rate: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interface_prefix: "udl".into(),
            mark: 0x0010_0000,
            log_all: false,
            nflog_group: 100,
            log_rate: "10/second".into(),
        }
    }
}

/// A desired ipset.
#[derive(Debug, Clone)]
pub struct DesiredSet {
    pub family: Family,
    pub kind: SetKind,
    pub members: Arc<Members>,
    /// What the set stands for, for logs and debugging.
    pub describes: String,
}

/// The desired state of the dataplane.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Chain name to rules (each the text after `-A <chain> `), per family.
    pub chains: [BTreeMap<String, Vec<String>>; 2],
    pub sets: BTreeMap<String, DesiredSet>,
    pub policies: usize,
    pub endpoints: usize,
}

impl Desired {
    pub fn rule_count(&self) -> usize {
        self.chains
            .iter()
            .flat_map(|c| c.values())
            .map(|r| r.len())
            .sum()
    }

    pub fn member_count(&self) -> usize {
        self.sets.values().map(|s| s.members.len()).sum()
    }
}

/// FNV-1a: a stable hash for names and content digests (the std hasher
/// is not guaranteed stable across releases, and names must survive
/// restarts and upgrades).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Names chains and sets after text tenants choose (namespaces, policy
/// names, selectors) without ever giving two objects one name.
///
/// A name is the object's prefix and 48 bits of a hash of its identity.
/// The hash alone cannot promise that: FNV is easily inverted, and 48 bits
/// fall to a birthday search. So names are handed out in one pass over
/// every object (in a stable order), and an identity whose name another
/// identity already holds hashes again with a counter until it finds a free
/// one. Names stay stable across restarts as long as nobody collides.
#[derive(Debug, Default)]
pub struct Names {
    by_identity: HashMap<String, String>,
    owner: HashMap<String, String>,
}

impl Names {
    /// The ipset name of a set key in one family (at most 31 characters).
    pub fn set(&mut self, key: &SetKey, family: Family) -> String {
        let kind = match key.kind() {
            SetKind::HashIp => 'p',
            SetKind::HashNet => 'n',
            SetKind::HashIpPort => 'o',
        };
        let fam = match family {
            Family::V4 => '4',
            Family::V6 => '6',
        };
        self.assign(&format!("{SET_PREFIX}{fam}-{kind}-"), &key.canonical())
    }

    /// The chain of a policy in one direction (at most 28 characters).
    pub fn policy_chain(&mut self, policy: &Policy, dir: Direction) -> String {
        let d = match dir {
            Direction::Ingress => "PI",
            Direction::Egress => "PE",
        };
        let id = format!("{}/{}", policy.namespace, policy.name);
        self.assign(&format!("{CHAIN_PREFIX}{d}-"), &id)
    }

    fn assign(&mut self, prefix: &str, id: &str) -> String {
        let identity = format!("{prefix}{id}");
        if let Some(name) = self.by_identity.get(&identity) {
            return name.clone();
        }
        let mut text = id.to_string();
        let mut attempt = 0u32;
        let name = loop {
            let name = format!("{prefix}{:012x}", fnv64(text.as_bytes()) & 0xffff_ffff_ffff);
            if !self.owner.contains_key(&name) {
                break name;
            }
            attempt += 1;
            // NUL never occurs in an identity, so the retry text is no
            // other object's first choice.
            text = format!("{id}\0{attempt}");
        };
        self.owner.insert(name.clone(), identity.clone());
        self.by_identity.insert(identity, name.clone());
        name
    }
}

/// The chain of an endpoint in one direction.
pub fn endpoint_chain(interface: &str, dir: Direction) -> String {
    let d = match dir {
        Direction::Ingress => "I",
        Direction::Egress => "E",
    };
    format!("{CHAIN_PREFIX}{d}-{interface}")
}

/// Compiles the index (after [`Index::refresh_sets`]) into the desired state.
pub fn compile(index: &Index, config: &Config) -> Desired {
    let mut out = Desired::default();
    let m = format!("0x{:x}/0x{:x}", config.mark, config.mark);
    let any_pod = format!("{}+", config.interface_prefix);
    let mut names = Names::default();

    // Sets.
    for (key, data) in index.sets() {
        for family in Family::ALL {
            if let SetKey::Block { cidr, .. } = key
                && cidr.family() != family
            {
                continue;
            }
            out.sets.insert(
                names.set(key, family),
                DesiredSet {
                    family,
                    kind: key.kind(),
                    members: data.members[family.index()].clone(),
                    describes: key.canonical(),
                },
            );
        }
    }

    let endpoints: Vec<&Endpoint> = index.endpoints().collect();
    out.endpoints = endpoints.len();
    let active = index.active_policies();
    out.policies = active.len();
    // Policies claim their names in key order, not in the order endpoints
    // happen to reference them.
    for policy in active.values() {
        for dir in Direction::BOTH {
            names.policy_chain(policy, dir);
        }
    }

    for family in Family::ALL {
        let chains = &mut out.chains[family.index()];

        let mut fwd = vec![
            format!("-i {any_pod} -m conntrack --ctstate INVALID -j DROP"),
            format!("-o {any_pod} -m conntrack --ctstate INVALID -j DROP"),
            format!("-i {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            format!("-o {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ];
        fwd.push(format!("-i {any_pod} -j {FROM_POD}"));
        fwd.push(format!("-o {any_pod} -j {TO_POD}"));
        fwd.push(format!("-i {any_pod} -j ACCEPT"));
        fwd.push(format!("-o {any_pod} -j ACCEPT"));
        chains.insert(FORWARD.into(), fwd);

        // Pod to node: egress policy applies, but the host's own INPUT rules
        // still decide afterwards (RETURN, not ACCEPT).
        let mut input = vec![
            format!("-i {any_pod} -m conntrack --ctstate INVALID -j DROP"),
            format!("-i {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        ];
        if family == Family::V6 {
            // Neighbour discovery with the gateway must work whatever the
            // pod's egress policy says, or the pod loses its IPv6 link.
            for t in [
                "router-solicitation",
                "neighbour-solicitation",
                "neighbour-advertisement",
            ] {
                input.push(format!(
                    "-i {any_pod} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
                ));
            }
        }
        input.push(format!("-i {any_pod} -j {FROM_POD}"));
        chains.insert(INPUT.into(), input);

        // Node to its local pods (kubelet probes) is always allowed:
        // ingress policy is enforced in FORWARD only.
        chains.insert(
            OUTPUT.into(),
            vec![format!(
                "-o {any_pod} -m conntrack --ctstate INVALID -j DROP"
            )],
        );

        chains.insert(
            ALLOW.into(),
            vec![format!("-j MARK --set-xmark 0x0/0x{:x}", config.mark)],
        );

        let mut from_pod = Vec::new();
        let mut to_pod = Vec::new();
        for ep in &endpoints {
            from_pod.push(format!(
                "-i {} -g {}",
                ep.interface,
                endpoint_chain(&ep.interface, Direction::Egress)
            ));
            to_pod.push(format!(
                "-o {} -g {}",
                ep.interface,
                endpoint_chain(&ep.interface, Direction::Ingress)
            ));
        }
        // Fail closed: a pod interface we hold no endpoint for.
        from_pod.push("-j DROP".into());
        to_pod.push("-j DROP".into());
        chains.insert(FROM_POD.into(), from_pod);
        chains.insert(TO_POD.into(), to_pod);

        for ep in &endpoints {
            if index.pod(&ep.pod).is_none() {
                // Unknown means denied: without its Pod object nothing says
                // which policies select it (e.g. deleted while we were down).
                for dir in Direction::BOTH {
                    chains.insert(endpoint_chain(&ep.interface, dir), vec!["-j DROP".into()]);
                }
                continue;
            }
            let selection = index.selection(ep);
            let log = config.log_all
                || index
                    .namespace(&ep.pod.namespace)
                    .is_some_and(|n| n.log_denied);
            for dir in Direction::BOTH {
                let policies = selection.get(dir);
                let mut rules = Vec::new();
                if !policies.is_empty() {
                    rules.push(format!("-j MARK --set-xmark 0x0/0x{:x}", config.mark));
                    for p in policies {
                        rules.push(format!("-j {}", names.policy_chain(p, dir)));
                        rules.push(format!("-m mark --mark {m} -g {ALLOW}"));
                    }
                    if log {
                        let d = match dir {
                            Direction::Ingress => "in",
                            Direction::Egress => "out",
                        };
                        let mut prefix = format!("udl deny {d} {}", ep.pod);
                        prefix.truncate(63);
                        let prefix: String = prefix
                            .chars()
                            .map(|c| if c == '"' || c == '\\' { '_' } else { c })
                            .collect();
                        rules.push(format!(
                            "-m limit --limit {} -j NFLOG --nflog-group {} --nflog-prefix \"{prefix}\"",
                            config.log_rate, config.nflog_group
                        ));
                    }
                    rules.push("-j DROP".into());
                }
                chains.insert(endpoint_chain(&ep.interface, dir), rules);
            }
        }

        for policy in active.values() {
            for dir in Direction::BOTH {
                if policy.applies(dir) {
                    chains.insert(
                        names.policy_chain(policy, dir),
                        policy_rules(policy, dir, family, &m, &mut names),
                    );
                }
            }
        }
    }
    out
}

/// The rules of one policy chain.
fn policy_rules(
    policy: &Policy,
    dir: Direction,
    family: Family,
    mark: &str,
    names: &mut Names,
) -> Vec<String> {
    let (peer_dir, _) = match dir {
        Direction::Ingress => ("src", "dst"),
        Direction::Egress => ("dst", "src"),
    };
    let mut rules = Vec::new();
    for rule in policy.rules(dir) {
        let peers: Vec<String> = if rule.peers.is_empty() {
            vec![String::new()]
        } else {
            rule.peers
                .iter()
                .filter(|p| match p {
                    Peer::IpBlock { cidr, .. } => cidr.family() == family,
                    Peer::Pods { .. } => true,
                })
                .map(|p| {
                    let key = SetKey::for_peer(&policy.namespace, p);
                    format!("-m set --match-set {} {peer_dir}", names.set(&key, family))
                })
                .collect()
        };
        // A rule whose peers are all ipBlocks of the other family matches
        // nothing here (it must not turn into "any peer").
        let ports: Vec<String> = if rule.ports.is_empty() {
            vec![String::new()]
        } else {
            rule.ports
                .iter()
                .map(|p| port_match(p, family, names))
                .collect()
        };
        for peer in &peers {
            for port in &ports {
                let mut line = String::new();
                for part in [peer.as_str(), port.as_str()] {
                    if !part.is_empty() {
                        line.push_str(part);
                        line.push(' ');
                    }
                }
                line.push_str(&format!("-j MARK --set-xmark {mark}"));
                rules.push(line);
            }
        }
    }
    rules
}

fn port_match(p: &PortMatch, family: Family, names: &mut Names) -> String {
    let proto = p.protocol.name();
    match (&p.port, p.end_port) {
        (None, _) => format!("-p {proto}"),
        (Some(PortRef::Number(n)), None) => format!("-p {proto} -m {proto} --dport {n}"),
        (Some(PortRef::Number(n)), Some(end)) => {
            format!("-p {proto} -m {proto} --dport {n}:{end}")
        }
        (Some(PortRef::Name(name)), _) => {
            let set = names.set(&SetKey::NamedPort { name: name.clone() }, family);
            // The destination is the endpoint for ingress and the peer for
            // egress: either way the name resolves against the pod the
            // packet is addressed to.
            format!("-p {proto} -m set --match-set {set} dst,dst")
        }
    }
}
