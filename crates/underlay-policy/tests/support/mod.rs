//! The test world shared by the compiler tests (no root) and the dataplane
//! tests (root, network namespaces): namespaces x, y, z with pods a, b, c
//! each, and the policy scenarios with their truth tables, written from the
//! NetworkPolicy API reference.
#![allow(dead_code)]

pub mod cluster_scenarios;
pub mod lab;
pub mod scenarios;

use std::net::IpAddr;
use underlay_policy::dataplane::Saved;
use underlay_policy::index::Index;
use underlay_policy::kernel_trace::Kernel;
use underlay_policy::model::{Attachment, Endpoint, Family, Namespace, Pod, PodKey, Protocol};
use underlay_policy::trace::{self, Query};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];

/// One pod of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid {
    pub ns: usize,
    pub pod: usize,
}

impl Pid {
    pub fn all() -> Vec<Pid> {
        let mut v = Vec::new();
        for ns in 0..3 {
            for pod in 0..3 {
                v.push(Pid { ns, pod });
            }
        }
        v
    }

    pub fn ns_name(&self) -> &'static str {
        NAMESPACES[self.ns]
    }

    pub fn pod_name(&self) -> &'static str {
        PODS[self.pod]
    }

    /// True when this is `"x/a"`; `"x/*"` and `"*/a"` match a whole
    /// namespace or every pod of that name.
    pub fn is(&self, pat: &str) -> bool {
        let (n, p) = pat.split_once('/').expect("pattern ns/pod");
        (n == "*" || n == self.ns_name()) && (p == "*" || p == self.pod_name())
    }

    pub fn number(&self) -> usize {
        self.ns * 3 + self.pod
    }

    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => format!("10.88.0.{}", 10 + self.number()).parse().unwrap(),
            Family::V6 => format!("fd88::{}", 10 + self.number()).parse().unwrap(),
        }
    }

    /// Host-side veth name in the node namespace.
    pub fn interface(&self) -> String {
        format!("udl{}{}", self.ns_name(), self.pod_name())
    }

    pub fn key(&self) -> PodKey {
        PodKey::new(self.ns_name(), self.pod_name())
    }

    /// The pod as the API would show it: label `pod=<name>`, both
    /// addresses, and named ports `serve-<port>-<proto>` for every served
    /// port, plus `web`: 80 on pods a, 81 on pods b and c (one name, two
    /// numbers).
    pub fn pod(&self) -> Pod {
        let mut p = Pod::new(self.ns_name(), self.pod_name())
            .label("pod", self.pod_name())
            .ip(&self.ip(Family::V4).to_string())
            .ip(&self.ip(Family::V6).to_string());
        for proto in Protocol::ALL {
            for port in PORTS {
                p = p.port(&format!("serve-{port}-{}", proto.name()), proto, port);
            }
        }
        p.port("web", Protocol::Tcp, if self.pod == 0 { 80 } else { 81 })
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            pod: self.key(),
            interface: self.interface(),
            ips: vec![self.ip(Family::V4), self.ip(Family::V6)],
            owner: Attachment::new(format!("sandbox-{}", self.interface()), "eth0"),
        }
    }
}

/// Namespace labels: `ns=<name>`; x and y also carry `team` (red, blue).
pub fn namespace(i: usize) -> Namespace {
    let n = Namespace::new(NAMESPACES[i]).label("ns", NAMESPACES[i]);
    match i {
        0 => n.label("team", "red"),
        1 => n.label("team", "blue"),
        _ => n,
    }
}

/// Fills an index with the world, every pod a local endpoint.
pub fn load_world(idx: &mut Index) {
    for i in 0..3 {
        idx.apply_namespace(namespace(i));
    }
    for p in Pid::all() {
        idx.apply_pod(p.pod());
        idx.apply_endpoint(p.endpoint());
    }
}

/// One connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    pub src: Pid,
    pub dst: Pid,
    pub protocol: Protocol,
    pub port: u16,
    pub family: Family,
}

impl Probe {
    /// Every pair of distinct pods, every protocol, port and family.
    pub fn all() -> Vec<Probe> {
        let mut v = Vec::new();
        for src in Pid::all() {
            for dst in Pid::all() {
                if src == dst {
                    continue;
                }
                for protocol in Protocol::ALL {
                    for port in PORTS {
                        for family in Family::ALL {
                            v.push(Probe {
                                src,
                                dst,
                                protocol,
                                port,
                                family,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    pub fn describe(&self) -> String {
        format!(
            "{}/{} -> {}/{} {}:{} {}",
            self.src.ns_name(),
            self.src.pod_name(),
            self.dst.ns_name(),
            self.dst.pod_name(),
            self.protocol,
            self.port,
            self.family
        )
    }
}

/// Compares observed reachability with the truth table; returns the
/// mismatches, described.
pub fn mismatches(
    probes: &[Probe],
    observed: impl Fn(&Probe) -> bool,
    expect: &dyn Fn(&Probe) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in probes {
        let got = observed(p);
        let want = expect(p);
        if got != want {
            out.push(format!(
                "{}: expected {}, got {}",
                p.describe(),
                if want { "allowed" } else { "denied" },
                if got { "allowed" } else { "denied" }
            ));
        }
    }
    out
}

/// The mark kube-proxy puts on packets it will masquerade; its
/// `KUBE-FORWARD` chain accepts every packet carrying it.
pub const KUBE_MARK_MASQ: u32 = 0x4000;

/// What kube-proxy (iptables mode) does when it starts after us: its
/// chains, and its jumps inserted at position 1 of FORWARD, INPUT and
/// OUTPUT, above whatever was there. An `iptables-restore --noflush` script.
pub fn kube_proxy_reinserts_its_jumps() -> String {
    [
        "*filter",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-I INPUT 1 -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
        "-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "COMMIT",
        "",
    ]
    .join("\n")
}

/// The fake's tables and sets, read by the product's kernel walk exactly
/// as `Trace` reads a node's saved text.
pub fn kernel_of(fake: &underlay_policy::FakeDataplane) -> Kernel {
    kernel_of_state(&fake.state())
}

pub fn kernel_of_state(state: &underlay_policy::dataplane::FakeState) -> Kernel {
    kernel_of_saved(&state.saved())
}

pub fn kernel_of_saved(saved: &Saved) -> Kernel {
    Kernel::parse([&saved.filter[0], &saved.filter[1]], &saved.sets)
        .unwrap_or_else(|e| panic!("the saved state does not parse: {e}"))
}

/// Traces every probe (model and kernel, per direction) and returns where
/// either verdict differs from the truth table, or a direction is missing.
pub fn trace_mismatches(
    index: &Index,
    kernel: &Kernel,
    probes: &[Probe],
    expect: &dyn Fn(&Probe) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for p in probes {
        let query = Query {
            src: p.src.ip(p.family),
            dst: p.dst.ip(p.family),
            protocol: p.protocol,
            port: p.port,
        };
        let t = match trace::trace(index, kernel, &[], &query) {
            Ok(t) => t,
            Err(e) => {
                out.push(format!("{}: trace failed: {e}", p.describe()));
                continue;
            }
        };
        let want = expect(p);
        // Both pods are local: egress, then ingress, are decided here.
        let model = t.directions.iter().all(|d| d.model.allowed);
        let fine = t.directions.len() == 2
            && model == want
            && t.allowed == want
            && t.agree
            && t.directions.iter().all(|d| !d.model.reason.is_empty());
        if !fine {
            out.push(format!("{}: expected {want}, traced {t:?}", p.describe()));
        }
    }
    out
}
