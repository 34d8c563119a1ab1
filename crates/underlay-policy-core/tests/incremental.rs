//! The index keeps peer sets and selections up to date one change at a
//! time, and the engine's [`Compiler`] compiles again only the endpoints a
//! change touched. Whatever the sequence of changes, that must give exactly
//! what compiling a fresh index holding the same objects from scratch
//! gives: the same chains, rule for rule, and the same set members.

use std::collections::BTreeMap;
use underlay_policy_core::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
use underlay_policy_core::compile::{Compiler, Config, Desired, Rules, compile};
use underlay_policy_core::index::Index;
use underlay_policy_core::model::{
    Attachment, Endpoint, Namespace, Peer, Pod, PodKey, Policy, PortMatch, Rule, Selector,
};

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const NAMESPACES: [&str; 4] = ["a", "b", "c", "d"];
const PODS: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];
const APPS: [&str; 3] = ["web", "db", "cache"];
const TEAMS: [&str; 3] = ["red", "blue", ""];

/// The objects the API holds (and the node's endpoints), to build a fresh
/// index from.
#[derive(Default)]
struct World {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<PodKey, Pod>,
    policies: BTreeMap<PodKey, Policy>,
    cluster: BTreeMap<String, ClusterPolicy>,
    endpoints: BTreeMap<PodKey, Endpoint>,
}

impl World {
    fn fresh(&self) -> Index {
        let mut idx = Index::new();
        for ns in self.namespaces.values() {
            idx.apply_namespace(ns.clone());
        }
        for pod in self.pods.values() {
            idx.apply_pod(pod.clone());
        }
        for p in self.policies.values() {
            idx.apply_policy(p.clone());
        }
        for p in self.cluster.values() {
            idx.apply_cluster_policy(p.clone());
        }
        for ep in self.endpoints.values() {
            idx.apply_endpoint(ep.clone());
        }
        idx
    }
}

fn policy(rng: &mut Rng, ns: &str, name: &str) -> Policy {
    let app = |rng: &mut Rng| Selector::labels([("app", rng.pick(&APPS))]);
    let team = |rng: &mut Rng| Selector::labels([("team", rng.pick(&TEAMS[..2]))]);
    let mut p = Policy::new(ns, name, app(rng));
    let peer = match rng.below(5) {
        0 => Peer::pods(app(rng)),
        1 => Peer::namespaces(team(rng)),
        2 => Peer::both(team(rng), app(rng)),
        3 => Peer::namespaces(Selector::everything()),
        _ => Peer::block("10.9.0.0/16", &["10.9.1.0/24"]),
    };
    let mut rule = Rule::from(vec![peer]);
    if rng.below(2) == 0 {
        rule.ports = vec![PortMatch::tcp(80 + rng.below(3) as u16)];
    }
    if rng.below(3) == 0 {
        p.types.egress = true;
        p.egress = vec![rule];
    } else {
        p.ingress = vec![rule];
    }
    p
}

/// A cluster policy whose subject is one team's namespaces (or every
/// namespace) and, sometimes, one app's pods.
fn cluster_policy(rng: &mut Rng, name: &str) -> ClusterPolicy {
    let namespaces = match rng.below(3) {
        0 => Selector::everything(),
        _ => Selector::labels([("team", rng.pick(&TEAMS[..2]))]),
    };
    let tier = if rng.below(2) == 0 {
        Tier::Admin
    } else {
        Tier::Baseline
    };
    let mut p = ClusterPolicy::new(name, tier, rng.below(3) as u16, namespaces);
    if rng.below(2) == 0 {
        p.subject_pods = Selector::labels([("app", rng.pick(&APPS))]);
    }
    let action = [Action::Accept, Action::Deny, Action::Pass][rng.below(3)];
    let peer = ClusterPeer::Pods {
        namespaces: Selector::everything(),
        pods: Selector::labels([("app", rng.pick(&APPS))]),
    };
    let rule = ClusterRule::new(action, vec![peer]);
    if rng.below(2) == 0 {
        p.ingress = vec![rule];
    } else {
        p.egress = vec![rule];
    }
    p
}

/// A compiled state as comparable text: each family's chains, and each
/// set's members.
type Snapshot = (Vec<BTreeMap<String, Rules>>, BTreeMap<String, Vec<String>>);

fn snapshot(d: &Desired) -> Snapshot {
    let sets = d
        .sets
        .iter()
        .map(|(name, s)| {
            let members = s.members.keys().map(|m| m.render()).collect();
            (name.clone(), members)
        })
        .collect();
    (d.chains.to_vec(), sets)
}

#[test]
fn any_sequence_of_changes_compiles_like_a_fresh_index() {
    let config = Config::default();
    for seed in 1..=8u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut world = World::default();
        let mut idx = Index::new();
        let mut compiler = Compiler::default();
        for step in 0..300 {
            let ns = rng.pick(&NAMESPACES);
            let name = rng.pick(&PODS);
            let key = PodKey::new(ns, name);
            match rng.below(10) {
                8 => {
                    let cname = format!("cnp{}", rng.below(3));
                    let p = cluster_policy(&mut rng, &cname);
                    world.cluster.insert(cname, p.clone());
                    idx.apply_cluster_policy(p);
                }
                9 => {
                    let cname = format!("cnp{}", rng.below(3));
                    world.cluster.remove(&cname);
                    idx.delete_cluster_policy(&cname);
                }
                0 => {
                    let team = rng.pick(&TEAMS);
                    let mut n = Namespace::new(ns);
                    if !team.is_empty() {
                        n = n.label("team", team);
                    }
                    // Whether it logs denials is part of its pods' chains.
                    n.log_denied = rng.below(2) == 0;
                    world.namespaces.insert(ns.into(), n.clone());
                    idx.apply_namespace(n);
                }
                1 | 2 => {
                    let ip = format!(
                        "10.{}.{}.{}",
                        NAMESPACES.iter().position(|n| *n == ns).unwrap_or(0),
                        PODS.iter().position(|p| *p == name).unwrap_or(0),
                        rng.below(3) + 1
                    );
                    let mut pod = Pod::new(ns, name).label("app", rng.pick(&APPS)).ip(&ip);
                    // A finished pod is no peer, and owns no address.
                    pod.terminated = rng.below(6) == 0;
                    world.pods.insert(key, pod.clone());
                    idx.apply_pod(pod);
                }
                // A pod with a local endpoint stays until it is detached
                // (the index keeps it): only others are deleted.
                3 if !world.endpoints.contains_key(&key) => {
                    world.pods.remove(&key);
                    idx.delete_pod(&key);
                }
                4 | 5 => {
                    let pname = format!("np{}", rng.below(3));
                    let p = policy(&mut rng, ns, &pname);
                    world.policies.insert(p.key(), p.clone());
                    idx.apply_policy(p);
                }
                6 => {
                    let pkey = PodKey::new(ns, format!("np{}", rng.below(3)));
                    world.policies.remove(&pkey);
                    idx.delete_policy(&pkey);
                }
                _ => match (world.endpoints.remove(&key), world.pods.get(&key)) {
                    (Some(ep), _) => idx.delete_endpoint(&ep.interface, &ep.owner),
                    (None, Some(pod)) => {
                        let ep = Endpoint {
                            pod: key.clone(),
                            interface: format!("udl{ns}{name}"),
                            ips: pod.ips.to_vec(),
                            owner: Attachment::new(format!("sandbox-{ns}-{name}-{step}"), "eth0"),
                        };
                        world.endpoints.insert(key, ep.clone());
                        idx.apply_endpoint(ep);
                    }
                    (None, None) => {}
                },
            }
            // Between compiles, every endpoint's selection is what a fresh
            // index works out, whatever the index kept from the last one.
            let fresh = world.fresh();
            // And every address's owner, which conntrack cleanup asks.
            assert_eq!(
                idx.ip_owners(),
                fresh.ip_owners(),
                "seed {seed}, step {step}"
            );
            for ep in world.endpoints.values() {
                assert_eq!(
                    idx.selection(ep),
                    fresh.selection(ep),
                    "seed {seed}, step {step}: {ep:?}"
                );
            }
            if step % 10 == 9 {
                idx.refresh_sets();
                let mut fresh = fresh;
                fresh.refresh_sets();
                // The index keeps the sets the active policies need, no more.
                assert!(
                    idx.sets().keys().eq(fresh.sets().keys()),
                    "seed {seed}, step {step}: sets {:?} instead of {:?}",
                    idx.sets().keys().collect::<Vec<_>>(),
                    fresh.sets().keys().collect::<Vec<_>>()
                );
                let (have, want) = (
                    snapshot(&compiler.compile(&idx, &config)),
                    snapshot(&compile(&fresh, &config)),
                );
                assert_eq!(have, want, "seed {seed}, step {step}");
            }
        }
    }
}

/// Pods `x/a` and `y/a` (`app=web`), each a local endpoint. First `y`'s
/// endpoint and its policy `policy("y", y)`, then `x`'s and
/// `policy("x", x)`: each compiled by one long-lived compiler, and each
/// checked to be what a fresh compile gives. Returns both compiles.
fn y_then_x(policy: impl Fn(&str, &str) -> Policy, y: &str, x: &str) -> (Desired, Desired) {
    let config = Config::default();
    let mut idx = Index::new();
    let mut compiler = Compiler::default();
    let endpoint = |ns: &str, ip: &str| Endpoint {
        pod: PodKey::new(ns, "a"),
        interface: format!("udl{ns}a"),
        ips: vec![ip.parse().unwrap()],
        owner: Attachment::new(format!("sandbox-{ns}"), "eth0"),
    };
    for (ns, ip) in [("x", "10.0.0.1"), ("y", "10.0.1.1")] {
        idx.apply_namespace(Namespace::new(ns));
        idx.apply_pod(Pod::new(ns, "a").label("app", "web").ip(ip));
    }
    let mut compiled = Vec::new();
    for (ns, ip, arg) in [("y", "10.0.1.1", y), ("x", "10.0.0.1", x)] {
        idx.apply_endpoint(endpoint(ns, ip));
        idx.apply_policy(policy(ns, arg));
        idx.refresh_sets();
        let have = compiler.compile(&idx, &config);
        assert_eq!(snapshot(&have), snapshot(&compile(&idx, &config)));
        compiled.push(have);
    }
    let second = compiled.pop().unwrap();
    (compiled.pop().unwrap(), second)
}

/// Ingress to `app=web` from `peer` pods on TCP port 80 (a policy chain).
fn web_on_80(ns: &str, name: &str, peer: Selector) -> Policy {
    let mut p = Policy::new(ns, name, Selector::labels([("app", "web")]));
    let mut rule = Rule::from(vec![Peer::pods(peer)]);
    rule.ports = vec![PortMatch::tcp(80)];
    p.ingress = vec![rule];
    p
}

/// `x/qut94zsly7zq` and `y/q9wr7e0srw14` hash alike, so whichever is named
/// first (in key order) holds the chain name both would take. An endpoint
/// chain the compiler keeps names `y`'s chain; once `x`'s policy becomes
/// active, `y`'s chain is renamed, and the kept chain must follow.
#[test]
fn a_kept_endpoint_chain_follows_a_rename_a_collision_forces() {
    let policy = |ns: &str, name: &str| web_on_80(ns, name, Selector::labels([("app", "db")]));
    let (first, second) = y_then_x(policy, "q9wr7e0srw14", "qut94zsly7zq");
    // The two policies' chains are two chains.
    let jumps = |d: &Desired, iface: &str| -> Vec<String> {
        d.chains[0][&format!("UDL-I-{iface}")]
            .iter()
            .filter(|r| r.starts_with("-j UDL-PI-"))
            .cloned()
            .collect()
    };
    assert_ne!(jumps(&second, "udlxa"), jumps(&second, "udlya"));
    assert_ne!(jumps(&first, "udlya"), jumps(&second, "udlya"));
}

/// The sets of `role=q9p8zoni7o20` pods in `x` and `role=qrtqa5y7y30c` pods
/// in `y` hash alike. A policy chain the compiler keeps matches against
/// `y`'s set; once `x`'s policy becomes active, its set is named first and
/// `y`'s is renamed, and the kept policy chain must follow.
#[test]
fn a_kept_policy_chain_follows_a_set_rename_a_collision_forces() {
    let policy =
        |ns: &str, role: &str| web_on_80(ns, "from-role", Selector::labels([("role", role)]));
    let (first, second) = y_then_x(policy, "qrtqa5y7y30c", "q9p8zoni7o20");
    // The name y's set had is x's now, and y's set has another.
    let (name, was) = first.sets.iter().next().unwrap();
    assert!(was.describes.contains("qrtqa5y7y30c"), "{}", was.describes);
    assert!(
        second.sets[name].describes.contains("q9p8zoni7o20"),
        "{}",
        second.sets[name].describes
    );
    assert_eq!(second.sets.len(), 2);
}

/// Policy chains carry the configured mark: a compiler given another
/// configuration keeps none of the chains it compiled for the last one.
#[test]
fn a_changed_configuration_compiles_everything_again() {
    let mut idx = Index::new();
    let mut compiler = Compiler::default();
    idx.apply_namespace(Namespace::new("x"));
    idx.apply_pod(Pod::new("x", "a").label("app", "web").ip("10.0.0.1"));
    idx.apply_endpoint(Endpoint {
        pod: PodKey::new("x", "a"),
        interface: "udlxa".into(),
        ips: vec!["10.0.0.1".parse().unwrap()],
        owner: Attachment::new("sandbox-x", "eth0"),
    });
    idx.apply_policy(web_on_80("x", "web", Selector::labels([("app", "db")])));
    idx.refresh_sets();
    let first = Config::default();
    compiler.compile(&idx, &first);
    let other = Config {
        mark: first.mark << 2,
        ..first
    };
    assert_eq!(
        snapshot(&compiler.compile(&idx, &other)),
        snapshot(&compile(&idx, &other))
    );
}
