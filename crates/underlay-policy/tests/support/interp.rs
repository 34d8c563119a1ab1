//! A small interpreter of the filter-table rules the compiler emits, run
//! over the fake dataplane's tables and sets, so the compiled ruleset can
//! be checked packet by packet without root. It implements only the
//! matches and targets iptables documents for the words used, and panics
//! on anything else so a new kind of rule cannot pass unexamined.

use std::collections::BTreeMap;
use std::net::IpAddr;
use underlay_policy::dataplane::{FakeSet, split_words};
use underlay_policy::model::{Protocol, parse_cidr};

pub struct Packet {
    pub iif: Option<String>,
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

pub struct Tables<'a> {
    pub chains: &'a BTreeMap<String, Vec<String>>,
    pub sets: &'a BTreeMap<String, FakeSet>,
}

fn iface_matches(pattern: &str, iface: &Option<String>) -> bool {
    let Some(i) = iface else { return false };
    match pattern.strip_suffix('+') {
        Some(prefix) => i.starts_with(prefix),
        None => i == pattern,
    }
}

fn parse_mark(s: &str) -> (u32, u32) {
    let (v, m) = s.split_once('/').unwrap_or((s, "0xffffffff"));
    let p = |x: &str| u32::from_str_radix(x.trim_start_matches("0x"), 16).expect("hex mark");
    (p(v), p(m))
}

impl Tables<'_> {
    fn set_contains(&self, name: &str, dirs: &str, pkt: &Packet) -> bool {
        let set = self
            .sets
            .get(name)
            .unwrap_or_else(|| panic!("rule uses missing set {name}"));
        let ip = match dirs.split(',').next() {
            Some("src") => pkt.src,
            Some("dst") => pkt.dst,
            other => panic!("unknown set direction {other:?}"),
        };
        match set.kind.as_str() {
            "hash:ip" => set.members.contains(&ip.to_string()),
            "hash:net" => {
                // The most specific entry decides; nomatch entries exclude.
                let mut best: Option<(u8, bool)> = None;
                for m in &set.members {
                    let mut w = m.split_whitespace();
                    let c = parse_cidr(w.next().unwrap()).unwrap();
                    let nomatch = w.next() == Some("nomatch");
                    if c.contains(ip) && best.is_none_or(|(p, _)| c.prefix_len() > p) {
                        best = Some((c.prefix_len(), nomatch));
                    }
                }
                matches!(best, Some((_, false)))
            }
            "hash:ip,port" => {
                assert_eq!(
                    dirs, "dst,dst",
                    "named-port sets are matched on the destination"
                );
                set.members
                    .contains(&format!("{ip},{}:{}", pkt.protocol.name(), pkt.dport))
            }
            other => panic!("unknown set type {other}"),
        }
    }

    /// Runs a chain: Some(verdict) when a terminal target decided, None
    /// when the chain returned.
    pub fn run(&self, chain: &str, pkt: &mut Packet, depth: usize) -> Option<Verdict> {
        assert!(depth < 16, "chain loop at {chain}");
        let rules = self
            .chains
            .get(chain)
            .unwrap_or_else(|| panic!("jump to missing chain {chain}"));
        for rule in rules {
            let w = split_words(rule);
            let mut i = 0;
            let mut matched = true;
            let mut target: Option<(String, String, Vec<String>)> = None;
            while i < w.len() {
                let arg = |k: usize| w.get(i + k).cloned().unwrap_or_default();
                match w[i].as_str() {
                    "-i" => {
                        matched &= iface_matches(&arg(1), &pkt.iif);
                        i += 2;
                    }
                    "-o" => {
                        matched &= iface_matches(&arg(1), &pkt.oif);
                        i += 2;
                    }
                    "-p" => {
                        matched &= arg(1) == pkt.protocol.name();
                        i += 2;
                    }
                    "-m" => {
                        match arg(1).as_str() {
                            "tcp" | "udp" | "sctp" | "comment" | "limit" | "set" | "mark"
                            | "conntrack" | "icmp6" => {}
                            other => panic!("unknown match {other}"),
                        }
                        i += 2;
                    }
                    "--comment" => i += 2,
                    "--limit" | "--limit-burst" => i += 2,
                    "--dport" => {
                        let a = arg(1);
                        let (lo, hi) = match a.split_once(':') {
                            Some((l, h)) => (l.parse::<u16>().unwrap(), h.parse::<u16>().unwrap()),
                            None => (a.parse().unwrap(), a.parse().unwrap()),
                        };
                        matched &= (lo..=hi).contains(&pkt.dport);
                        i += 2;
                    }
                    "--ctstate" => {
                        // Every probe packet opens a new connection.
                        matched &= arg(1).split(',').any(|s| s == "NEW");
                        i += 2;
                    }
                    "--icmpv6-type" => {
                        matched = false;
                        i += 2;
                    }
                    "--match-set" => {
                        matched &= self.set_contains(&arg(1), &arg(2), pkt);
                        i += 3;
                    }
                    "--mark" => {
                        let (v, m) = parse_mark(&arg(1));
                        matched &= pkt.mark & m == v;
                        i += 2;
                    }
                    "-j" | "-g" => {
                        target = Some((w[i].clone(), arg(1), w[i + 2..].to_vec()));
                        break;
                    }
                    other => panic!("unknown rule word {other} in {rule}"),
                }
            }
            if !matched {
                continue;
            }
            let Some((kind, name, rest)) = target else {
                continue;
            };
            match name.as_str() {
                "ACCEPT" => return Some(Verdict::Accept),
                "DROP" => return Some(Verdict::Drop),
                "RETURN" => return None,
                "NFLOG" => continue,
                "MARK" => {
                    assert_eq!(rest[0], "--set-xmark");
                    let (v, m) = parse_mark(&rest[1]);
                    pkt.mark = (pkt.mark & !m) ^ v;
                }
                callee => {
                    let r = self.run(callee, pkt, depth + 1);
                    if kind == "-g" || r.is_some() {
                        return r;
                    }
                }
            }
        }
        None
    }
}
