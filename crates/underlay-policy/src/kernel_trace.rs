//! The kernel's half of `Trace`: the filter table as `iptables-save`
//! prints it and the ipsets as `ipset save` prints them, and one packet
//! walked through a built-in chain the way netfilter would, recording every
//! rule it matched.
//!
//! Every match and target the compiler emits is interpreted; a rule of one
//! of our chains (`UDL-*`) that uses anything else is an error, so a new
//! kind of rule cannot pass unexamined. Other components' chains
//! (kube-proxy's `KUBE-*`, ...) are entered like ours, because what they
//! accept before our hooks bypasses policy and a trace must show it; a
//! rule of theirs that uses what we do not interpret (`-m addrtype`, a
//! target such as `MASQUERADE`) is skipped with a note in the walk's rules
//! instead. Connection tracking state is taken as NEW (a first packet).
//! Nothing here panics on input: malformed text is an error.

use crate::compile::CHAIN_PREFIX;
use crate::dataplane::split_words;
use crate::model::{Cidr, Family, Protocol, parse_cidr};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("saved filter table, line {line}: {reason}")]
    Table { line: usize, reason: String },
    #[error("saved ipsets, line {line}: {reason}")]
    Sets { line: usize, reason: String },
    #[error("{chain}: {rule}: {reason}")]
    Rule {
        chain: String,
        rule: String,
        reason: String,
    },
    #[error("no chain {0} in the saved filter table")]
    MissingChain(String),
    #[error("chains nest deeper than {MAX_DEPTH} at {0}: a loop")]
    Loop(String),
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Deeper nesting than the kernel's own limits: certainly a loop.
const MAX_DEPTH: usize = 32;

/// One packet as netfilter sees it at a built-in chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Input interface (FORWARD, INPUT); `None` for one that is no pod's.
    pub iif: Option<String>,
    /// Output interface (FORWARD, OUTPUT); `None` for one that is no pod's.
    pub oif: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub dport: u16,
    pub mark: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// The result of one walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    pub verdict: Verdict,
    /// What decided, as "CHAIN: rule" (or "CHAIN: policy ACCEPT").
    pub decided_by: String,
    /// Every rule the packet matched, in order, as "CHAIN: rule", and a
    /// note for each rule or chain not interpreted.
    pub rules: Vec<String>,
    /// The packet's mark when the walk ended.
    pub mark: u32,
}

#[derive(Debug, Clone, Default)]
struct Chain {
    /// The policy of a built-in chain (`None` for user chains).
    policy: Option<String>,
    rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Set {
    Ip(Vec<IpAddr>),
    /// Entries with their `nomatch` flag.
    Net(Vec<(Cidr, bool)>),
    IpPort(Vec<(IpAddr, String, u16)>),
    Other(String),
}

/// The filter table of both families and the ipsets, as saved.
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    tables: [BTreeMap<String, Chain>; 2],
    sets: BTreeMap<String, Set>,
}

impl Kernel {
    /// Reads `iptables-save -t filter` and `ip6tables-save -t filter`
    /// (indexed by [`Family::index`]) and `ipset save`.
    pub fn parse(filter: [&str; 2], sets: &str) -> Result<Kernel> {
        Ok(Kernel {
            tables: [parse_table(filter[0])?, parse_table(filter[1])?],
            sets: parse_sets(sets)?,
        })
    }

    /// Walks `pkt` through the built-in chain `hook` of `family`'s table.
    pub fn walk(&self, family: Family, hook: &str, pkt: &Packet) -> Result<Walk> {
        let table = &self.tables[family.index()];
        let chain = table
            .get(hook)
            .ok_or_else(|| KernelError::MissingChain(hook.into()))?;
        let mut walker = Walker {
            table,
            sets: &self.sets,
            pkt: pkt.clone(),
            rules: Vec::new(),
        };
        let decided = walker.run(hook, 0)?;
        let (verdict, decided_by) = match decided {
            Some(d) => d,
            None => {
                let policy = chain.policy.as_deref().unwrap_or("ACCEPT");
                let verdict = if policy == "DROP" {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                };
                (verdict, format!("{hook}: policy {policy}"))
            }
        };
        Ok(Walk {
            verdict,
            decided_by,
            rules: walker.rules,
            mark: walker.pkt.mark,
        })
    }
}

fn ours(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

fn parse_table(text: &str) -> Result<BTreeMap<String, Chain>> {
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    let mut in_filter = false;
    let mut seen = false;
    for (n, line) in text.lines().enumerate() {
        let err = |reason: &str| KernelError::Table {
            line: n + 1,
            reason: format!("{reason}: {line}"),
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
            seen |= in_filter;
            continue;
        }
        if !in_filter {
            continue;
        }
        if line == "COMMIT" {
            in_filter = false;
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let name = w.next().ok_or_else(|| err("a chain without a name"))?;
            let policy = w.next().filter(|p| *p != "-").map(str::to_string);
            chains.insert(
                name.to_string(),
                Chain {
                    policy,
                    rules: Vec::new(),
                },
            );
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (name, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            let chain = chains
                .get_mut(name)
                .ok_or_else(|| err("a rule of an undeclared chain"))?;
            chain.rules.push(rule.trim().to_string());
        } else {
            return Err(err("not a chain, a rule or COMMIT"));
        }
    }
    if !seen {
        return Err(KernelError::Table {
            line: 0,
            reason: "no *filter table".into(),
        });
    }
    Ok(chains)
}

fn parse_sets(text: &str) -> Result<BTreeMap<String, Set>> {
    let mut sets = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let err = |reason: &str| KernelError::Sets {
            line: n + 1,
            reason: format!("{reason}: {line}"),
        };
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            [] => {}
            ["create", name, kind, ..] => {
                let set = match *kind {
                    "hash:ip" => Set::Ip(Vec::new()),
                    "hash:net" => Set::Net(Vec::new()),
                    "hash:ip,port" => Set::IpPort(Vec::new()),
                    other => Set::Other(other.to_string()),
                };
                sets.insert(name.to_string(), set);
            }
            ["add", name, member, flags @ ..] => {
                let set = sets
                    .get_mut(*name)
                    .ok_or_else(|| err("a member of an undeclared set"))?;
                add_member(set, member, flags.contains(&"nomatch")).map_err(|r| err(&r))?;
            }
            _ => return Err(err("neither create nor add")),
        }
    }
    Ok(sets)
}

fn add_member(set: &mut Set, member: &str, nomatch: bool) -> Result<(), String> {
    let ip = |s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an address"))
    };
    match set {
        Set::Ip(v) => v.push(ip(member)?),
        Set::Net(v) => v.push((parse_cidr(member)?, nomatch)),
        Set::IpPort(v) => {
            let (addr, port) = member
                .rsplit_once(',')
                .ok_or_else(|| format!("{member:?} is not address,protocol:port"))?;
            let (proto, port) = port.split_once(':').unwrap_or(("tcp", port));
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{member:?} has no valid port"))?;
            v.push((ip(addr)?, proto.to_string(), port));
        }
        Set::Other(_) => {}
    }
    Ok(())
}

/// One rule, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    matches: Vec<(bool, Match)>,
    target: Option<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    In(String),
    Out(String),
    Src(Cidr),
    Dst(Cidr),
    Proto(String),
    Dport(u16, u16),
    CtState(Vec<String>),
    Set {
        name: String,
        dirs: String,
    },
    Mark(u32, u32),
    /// `--icmpv6-type`: a traced packet is never ICMP.
    Icmp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Accept,
    Drop,
    Return,
    /// NFLOG, LOG: the packet goes on.
    Log,
    SetMark(u32, u32),
    /// A chain (`-j`), or another target extension when the table has no
    /// chain of that name.
    Jump(String),
    /// `-g`: when the chain returns, so does the one that went to it.
    Goto(String),
}

/// The match modules whose options are all understood below.
const MODULES: [&str; 10] = [
    "tcp",
    "udp",
    "sctp",
    "comment",
    "limit",
    "set",
    "mark",
    "conntrack",
    "icmp6",
    "state",
];

fn number(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number"))
}

fn value_mask(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((number(v)?, number(m)?)),
        None => Ok((number(s)?, u32::MAX)),
    }
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let p = |x: &str| x.parse::<u16>().map_err(|_| format!("{x:?} is not a port"));
    match s.split_once(':') {
        Some((lo, hi)) => Ok((p(lo)?, p(hi)?)),
        None => Ok((p(s)?, p(s)?)),
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let w = split_words(text);
    let mut rule = Rule {
        matches: Vec::new(),
        target: None,
    };
    let mut i = 0;
    let mut negate = false;
    while i < w.len() {
        let arg = |k: usize| {
            w.get(i + k)
                .map(String::as_str)
                .ok_or_else(|| format!("{} needs a value", w[i]))
        };
        let (m, used) = match w[i].as_str() {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-m" => match arg(1)? {
                module if MODULES.contains(&module) => {
                    i += 2;
                    continue;
                }
                other => return Err(format!("unknown match module {other}")),
            },
            "--comment" | "--limit" | "--limit-burst" => {
                i += 2;
                continue;
            }
            "-i" => (Match::In(arg(1)?.into()), 2),
            "-o" => (Match::Out(arg(1)?.into()), 2),
            "-s" => (Match::Src(parse_cidr(arg(1)?)?), 2),
            "-d" => (Match::Dst(parse_cidr(arg(1)?)?), 2),
            "-p" => (Match::Proto(arg(1)?.into()), 2),
            "--dport" => {
                let (lo, hi) = port_range(arg(1)?)?;
                (Match::Dport(lo, hi), 2)
            }
            "--ctstate" | "--state" => (
                Match::CtState(arg(1)?.split(',').map(str::to_string).collect()),
                2,
            ),
            "--icmpv6-type" => (Match::Icmp, 2),
            "--match-set" => (
                Match::Set {
                    name: arg(1)?.into(),
                    dirs: arg(2)?.into(),
                },
                3,
            ),
            "--mark" => {
                let (v, m) = value_mask(arg(1)?)?;
                (Match::Mark(v, m), 2)
            }
            "-j" | "-g" => {
                rule.target = Some(parse_target(&w[i], &w[i + 1..])?);
                break;
            }
            other => return Err(format!("unknown option {other}")),
        };
        rule.matches.push((std::mem::take(&mut negate), m));
        i += used;
    }
    Ok(rule)
}

/// `words` starts at the target's name; `kind` is `-j` or `-g`.
fn parse_target(kind: &str, words: &[String]) -> Result<Target, String> {
    let name = words
        .first()
        .ok_or_else(|| format!("{kind} needs a target"))?;
    Ok(match name.as_str() {
        "ACCEPT" => Target::Accept,
        "DROP" | "REJECT" => Target::Drop,
        "RETURN" => Target::Return,
        "NFLOG" | "LOG" => Target::Log,
        "MARK" => match words.get(1..3) {
            Some([opt, mark]) if opt == "--set-xmark" => {
                let (v, m) = value_mask(mark)?;
                Target::SetMark(v, m)
            }
            _ => return Err("MARK without --set-xmark".into()),
        },
        chain if kind == "-g" => Target::Goto(chain.into()),
        other => Target::Jump(other.into()),
    })
}

struct Walker<'a> {
    table: &'a BTreeMap<String, Chain>,
    sets: &'a BTreeMap<String, Set>,
    pkt: Packet,
    rules: Vec<String>,
}

/// A terminal verdict and the rule that gave it.
type Decided = Option<(Verdict, String)>;

impl Walker<'_> {
    /// Runs one chain: `Some` when a rule decided, `None` when the chain
    /// returned (or ended).
    fn run(&mut self, chain: &str, depth: usize) -> Result<Decided> {
        if depth > MAX_DEPTH {
            return Err(KernelError::Loop(chain.into()));
        }
        let rules = &self
            .table
            .get(chain)
            .ok_or_else(|| KernelError::MissingChain(chain.into()))?
            .rules;
        for text in rules {
            let at = format!("{chain}: {text}");
            let understood = parse_rule(text).and_then(|rule| Ok((self.matches(&rule)?, rule)));
            let (matched, rule) = match understood {
                Ok(r) => r,
                Err(reason) if ours(chain) => {
                    return Err(KernelError::Rule {
                        chain: chain.into(),
                        rule: text.clone(),
                        reason,
                    });
                }
                Err(reason) => {
                    self.rules
                        .push(format!("{at} (not ours, skipped: {reason})"));
                    continue;
                }
            };
            if !matched {
                continue;
            }
            let Some(target) = rule.target else { continue };
            if let Some(done) = self.apply(chain, at, target, depth)? {
                return Ok(done);
            }
        }
        Ok(None)
    }

    /// What a matched rule's target does: `Some(Some(..))` decided,
    /// `Some(None)` returned from the chain, `None` goes on.
    fn apply(
        &mut self,
        chain: &str,
        at: String,
        target: Target,
        depth: usize,
    ) -> Result<Option<Decided>> {
        let (callee, goto) = match target {
            Target::Jump(c) => (c, false),
            Target::Goto(c) => (c, true),
            Target::Accept => return Ok(Some(Some((Verdict::Accept, self.record(at))))),
            Target::Drop => return Ok(Some(Some((Verdict::Drop, self.record(at))))),
            Target::Return => {
                self.rules.push(at);
                return Ok(Some(None));
            }
            Target::SetMark(v, m) => {
                self.pkt.mark = (self.pkt.mark & !m) ^ v;
                self.rules.push(at);
                return Ok(None);
            }
            Target::Log => {
                self.rules.push(at);
                return Ok(None);
            }
        };
        if !self.table.contains_key(&callee) {
            // A target extension (MASQUERADE, CT, ...), or a missing chain.
            if ours(chain) {
                return Err(KernelError::Rule {
                    chain: chain.into(),
                    rule: at,
                    reason: format!("unknown target or missing chain {callee}"),
                });
            }
            self.rules
                .push(format!("{at} (not ours, skipped: target {callee})"));
            return Ok(None);
        }
        self.rules.push(at);
        let returned = self.run(&callee, depth + 1)?;
        // A goto's chain returning returns from this chain too.
        Ok(if goto {
            Some(returned)
        } else {
            returned.map(Some)
        })
    }

    fn record(&mut self, at: String) -> String {
        self.rules.push(at.clone());
        at
    }

    fn matches(&self, rule: &Rule) -> Result<bool, String> {
        for (negate, m) in &rule.matches {
            if self.one(m)? == *negate {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn one(&self, m: &Match) -> Result<bool, String> {
        let p = &self.pkt;
        Ok(match m {
            Match::In(pattern) => iface_matches(pattern, p.iif.as_deref()),
            Match::Out(pattern) => iface_matches(pattern, p.oif.as_deref()),
            Match::Src(cidr) => cidr.contains(p.src),
            Match::Dst(cidr) => cidr.contains(p.dst),
            Match::Proto(name) => name == p.protocol.name() || name == "all",
            Match::Dport(lo, hi) => (*lo..=*hi).contains(&p.dport),
            Match::CtState(states) => states.iter().any(|s| s == "NEW"),
            Match::Icmp => false,
            Match::Mark(v, m) => p.mark & m == *v,
            Match::Set { name, dirs } => self.in_set(name, dirs)?,
        })
    }

    fn in_set(&self, name: &str, dirs: &str) -> Result<bool, String> {
        let p = &self.pkt;
        let set = self
            .sets
            .get(name)
            .ok_or_else(|| format!("no set {name} in the saved ipsets"))?;
        let mut dirs = dirs.split(',');
        let ip = match dirs.next() {
            Some("src") => p.src,
            Some("dst") => p.dst,
            other => return Err(format!("unknown set direction {other:?}")),
        };
        Ok(match set {
            Set::Ip(members) => members.contains(&ip),
            Set::Net(members) => {
                // The most specific entry decides; nomatch entries exclude.
                let best = members
                    .iter()
                    .filter(|(c, _)| c.contains(ip))
                    .max_by_key(|(c, _)| c.prefix_len());
                matches!(best, Some((_, false)))
            }
            Set::IpPort(members) => {
                if dirs.next() != Some("dst") {
                    return Err(format!("{name} is matched on a source port"));
                }
                let proto = p.protocol.name();
                members
                    .iter()
                    .any(|(a, pr, port)| *a == ip && pr == proto && *port == p.dport)
            }
            Set::Other(kind) => return Err(format!("set {name} has unsupported type {kind}")),
        })
    }
}

fn iface_matches(pattern: &str, iface: Option<&str>) -> bool {
    let Some(i) = iface else { return false };
    match pattern.strip_suffix('+') {
        Some(prefix) => i.starts_with(prefix),
        None => i == pattern,
    }
}

#[cfg(test)]
mod tests;
