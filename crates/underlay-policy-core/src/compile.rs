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
//!   any tier selects the pod in that direction (open); otherwise the
//!   tiers in order: the Admin tier's cluster policy chains, then, when a
//!   NetworkPolicy selects the pod, a jump to the one chain that may allow
//!   (the peers chain, or a policy's), or to a `UDL-G-` chain asking them
//!   in turn, allowed if it returns with the accept verdict, then drop;
//!   else the Baseline tier's chains. A drop alone while the endpoint's Pod object
//!   is unknown. None in a family the endpoint has addresses but none of
//!   (nor a dispatch entry: the dispatch drops its packets there). Native
//!   rules only (see [`native`]): the verdict is cleared by a jump to
//!   `UDL-CLEAR`, so a pod that comes or goes writes no xtables extension.
//! - `UDL-M-<h>`: set matches, each going to a verdict chain on the first
//!   match, named after its rules and shared by everything with the same
//!   matches: the peers some endpoints' policies allow on every port
//!   (their `ipBlock`s without exceptions in one `udl<family>-b-<h>`
//!   `hash:net` set, every other peer set in one rule), and the peers (and
//!   named ports) of one policy or cluster policy rule.
//! - `UDL-G-<h>`: the chains an endpoint's NetworkPolicies allow through
//!   (the peers chain of the peers they allow on every port, then each
//!   policy's chain), each asked while none allowed; named after its rules
//!   and shared by every endpoint the same policies select, so a pod that
//!   comes or goes writes a few rules however many policies select it.
//! - `UDL-PI-<h>` / `UDL-PE-<h>`: per NetworkPolicy with rules that have
//!   ports or no peers, shared by every endpoint it selects. Native rules
//!   only: per port the protocol and port, then a jump to the rule's
//!   `UDL-M-` chain (or to `UDL-ACCEPTED` for any peer), so a port change
//!   writes no extension. Allowed packets get the accept verdict; the
//!   endpoint chain tests it.
//! - `UDL-CI-<h>` / `UDL-CE-<h>`: per ClusterNetworkPolicy, shared the
//!   same way and native the same way. Each rule goes to its action's
//!   verdict chain (`UDL-ACCEPTED`, `UDL-DENIED`, `UDL-PASSED`) only while
//!   no verdict is set, so the first matching rule decides.
//!
//! The verdict lives in two bits of the packet mark (the configured bit
//! and the one above: accept, deny, pass); `UDL-ALLOW` and every other way
//! out of an endpoint chain but a drop clear them, so other components
//! never see them.
//!
//! Peers are ipsets; named ports are `hash:ip,port` sets of (pod IP,
//! protocol, port) so one shared rule resolves the name per pod.

use crate::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Tier};
use crate::index::{Index, Member, Members, Selection, SetKey, SetKind, net_entries};
use crate::model::{Direction, Endpoint, Family, Mode, Peer, Policy, PortMatch, PortRef, Rule};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

pub const CHAIN_PREFIX: &str = "UDL-";
/// The prefix of the `UDL-M-` chains of set matches.
pub const PEERS_PREFIX: &str = "UDL-M-";
pub const SET_PREFIX: &str = "udl";
pub const FORWARD: &str = "UDL-FORWARD";
pub const INPUT: &str = "UDL-INPUT";
pub const OUTPUT: &str = "UDL-OUTPUT";
pub const FROM_POD: &str = "UDL-FROM-POD";
pub const TO_POD: &str = "UDL-TO-POD";
pub const ALLOW: &str = "UDL-ALLOW";
/// Set a verdict and return: where the rules of policy chains and the
/// `UDL-M-` chains go once they match.
pub const ACCEPTED: &str = "UDL-ACCEPTED";
pub const DENIED: &str = "UDL-DENIED";
pub const PASSED: &str = "UDL-PASSED";
/// Clears the verdict and returns: endpoint chains jump here rather than
/// set the mark themselves (see [`native`]).
pub const CLEAR: &str = "UDL-CLEAR";

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

impl Config {
    /// The two mark bits policy evaluation owns: `mark` and the bit above.
    pub fn verdict_mask(&self) -> u32 {
        self.mark | (self.mark << 1)
    }

    /// The mark of a packet some rule allowed (a NetworkPolicy's allow, a
    /// cluster policy's Accept).
    fn accepted(&self) -> String {
        format!("0x{:x}/0x{:x}", self.mark, self.verdict_mask())
    }

    /// The mark of a packet a cluster policy's Deny matched.
    fn denied(&self) -> String {
        format!("0x{:x}/0x{:x}", self.mark << 1, self.verdict_mask())
    }

    /// The mark of a packet a cluster policy's Pass matched.
    fn passed(&self) -> String {
        format!("0x{:x}/0x{:x}", self.verdict_mask(), self.verdict_mask())
    }

    /// No verdict yet.
    fn undecided(&self) -> String {
        format!("0x0/0x{:x}", self.verdict_mask())
    }
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

/// A chain's rules, each the text after `-A <chain> `. Shared: a chain
/// the compiler keeps from one compile to the next is the same allocation
/// in both, so whoever holds the last one tells it unchanged by pointer.
pub type Rules = Arc<[String]>;

/// The desired state of the dataplane.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Chain name to rules, per family.
    pub chains: [BTreeMap<String, Rules>; 2],
    pub sets: BTreeMap<String, DesiredSet>,
    pub policies: usize,
    pub cluster_policies: usize,
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
    let mut h = Fnv::default();
    std::hash::Hasher::write(&mut h, data);
    h.0
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
///
/// One `Names` serves one compile. Within it, the names of a policy's
/// chains and of the sets of its peers are also kept by the object's
/// address: the index holds every policy, and so its peers, for the whole
/// compile, so an address stands for one object throughout, and asking
/// again (once per endpoint a policy selects) costs a lookup instead of
/// writing out and hashing the identity.
#[derive(Debug, Default)]
pub struct Names {
    /// Every claim by its identity: whoever asks for an identity again
    /// gets the same claim.
    by_identity: HashMap<Identity, Claim, BuildHasherDefault<Fnv>>,
    /// Every name handed out.
    owned: HashSet<String, BuildHasherDefault<Fnv>>,
    by_address: HashMap<(usize, u8), Claim, BuildHasherDefault<Fnv>>,
    /// The key and family of every set named, by name, and what it
    /// stands for.
    sets: HashMap<String, (SetKey, Family, String), BuildHasherDefault<Fnv>>,
    /// While one endpoint's chains are compiled: every name they use, in
    /// the order asked (see [`Compiler`]).
    trace: Option<Vec<Claim>>,
}

/// One name handed out: the identity asked for and the name it got.
/// Shared: the compiler keeps every claim an endpoint's chains made.
type Claim = Arc<Claimed>;

#[derive(Debug)]
struct Claimed {
    /// The name's prefix followed by the object's identity.
    identity: Identity,
    prefix_len: usize,
    name: String,
    /// How many hashed names were taken before this one.
    attempt: u32,
    /// For a peer set: its key and family, so the set is compiled.
    set: Option<(SetKey, Family)>,
}

impl Claimed {
    fn id(&self) -> &str {
        &self.identity.text[self.prefix_len..]
    }
}

/// A name's prefix and an object's identity, hashed once: a replayed claim
/// (see [`Compiler`]) is looked up without reading its text again, and
/// the text (a peers chain's is its rules) is compared only when the
/// hashes agree and the two are not one allocation.
#[derive(Debug, Clone, Eq)]
struct Identity {
    hash: u64,
    text: Arc<str>,
}

impl Identity {
    fn new(text: String) -> Identity {
        Identity {
            hash: fnv64(text.as_bytes()),
            text: text.into(),
        }
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl std::hash::Hash for Identity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// FNV-1a ([`fnv64`]) as a `Hasher`: the keys of [`Names`] are short
/// names, addresses and [`Identity`]'s finished hash, for which SipHash's
/// setup costs more than the hashing.
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Mixed in whole: a finished hash, an address or a length.
        self.0 = (self.0 ^ n).wrapping_mul(0x0000_0100_0000_01b3);
        self.0 ^= self.0 >> 29;
    }
}

/// What `Names::by_address` stores under an object's address.
#[derive(Clone, Copy)]
enum Named {
    Chain(Direction),
    Set(Family),
}

impl Named {
    fn tag(self) -> u8 {
        match self {
            Named::Chain(d) => d.index() as u8,
            Named::Set(f) => 2 + f.index() as u8,
        }
    }
}

impl Names {
    /// The ipset name of a set key in one family (at most 31 characters).
    pub fn set(&mut self, key: &SetKey, family: Family) -> String {
        self.set_claim(key, family).name.clone()
    }

    fn set_claim(&mut self, key: &SetKey, family: Family) -> Claim {
        let kind = match key.kind() {
            SetKind::HashIp => 'p',
            SetKind::HashNet => 'n',
            SetKind::HashIpPort => 'o',
        };
        let fam = match family {
            Family::V4 => '4',
            Family::V6 => '6',
        };
        self.claim(
            &format!("{SET_PREFIX}{fam}-{kind}-"),
            &key.canonical(),
            Some((key.clone(), family)),
        )
    }

    /// Names an identity and records the claim.
    fn claim(&mut self, prefix: &str, id: &str, set: Option<(SetKey, Family)>) -> Claim {
        let identity = Identity::new(format!("{prefix}{id}"));
        let claim = match self.by_identity.get(&identity) {
            Some(claim) => claim.clone(),
            None => {
                let (name, attempt) = self.free_name(&identity, prefix.len());
                let claim = Arc::new(Claimed {
                    identity,
                    prefix_len: prefix.len(),
                    name,
                    attempt,
                    set,
                });
                self.hand_out(&claim);
                claim
            }
        };
        record(&mut self.sets, &mut self.trace, &claim);
        claim
    }

    /// Asks again for a name an earlier compile handed out; false if this
    /// compile gives the identity another one (a collision came or went).
    fn replay(&mut self, claim: &Claim) -> bool {
        let (same, held) = match self.by_identity.get(&claim.identity) {
            Some(held) => (Arc::ptr_eq(held, claim) || held.name == claim.name, true),
            // Its first hashed name: still its own if nobody took it.
            None if claim.attempt == 0 => (!self.owned.contains(&claim.name), false),
            None => {
                let name = self.free_name(&claim.identity, claim.prefix_len).0;
                (name == claim.name, false)
            }
        };
        if same {
            if !held {
                self.hand_out(claim);
            }
            record(&mut self.sets, &mut self.trace, claim);
        }
        same
    }

    fn hand_out(&mut self, claim: &Claim) {
        self.owned.insert(claim.name.clone());
        (self.by_identity).insert(claim.identity.clone(), claim.clone());
    }

    /// The name kept under an object's address (recorded again), or the
    /// one `claim` hands out, then kept there.
    fn by_address(&mut self, at: (usize, u8), claim: impl FnOnce(&mut Names) -> Claim) -> String {
        if let Some(kept) = self.by_address.get(&at) {
            record(&mut self.sets, &mut self.trace, kept);
            return kept.name.clone();
        }
        let claimed = claim(self);
        let name = claimed.name.clone();
        self.by_address.insert(at, claimed);
        name
    }

    /// The set of a NetworkPolicy peer (of `namespace`'s policy) in one
    /// family.
    fn peer_set(&mut self, namespace: &str, peer: &Peer, family: Family) -> String {
        let at = (std::ptr::from_ref(peer) as usize, Named::Set(family).tag());
        self.by_address(at, |names| {
            names.set_claim(&SetKey::for_peer(namespace, peer), family)
        })
    }

    /// The set of a cluster policy peer in one family; none for a peer
    /// that matches everything.
    fn cluster_peer_set(&mut self, peer: &ClusterPeer, family: Family) -> Option<String> {
        let key = SetKey::for_cluster_peer(peer)?;
        let at = (std::ptr::from_ref(peer) as usize, Named::Set(family).tag());
        Some(self.by_address(at, |names| names.set_claim(&key, family)))
    }

    /// The `hash:net` set of `ipBlock`s an endpoint chain matches at once
    /// (`cidrs` their rendering, in order), in one family.
    pub fn blocks(&mut self, cidrs: &str, family: Family) -> String {
        let fam = match family {
            Family::V4 => '4',
            Family::V6 => '6',
        };
        self.claim(&format!("{SET_PREFIX}{fam}-b-"), cidrs, None)
            .name
            .clone()
    }

    /// The chain matching the peers some endpoints' NetworkPolicies allow
    /// on every port, named after its rules (`rules` their text).
    pub fn peers_chain(&mut self, rules: &str) -> String {
        self.claim(PEERS_PREFIX, rules, None).name.clone()
    }

    /// The chain that asks an endpoint's NetworkPolicies in turn, named
    /// after its rules (`rules` their text).
    pub fn group_chain(&mut self, rules: &str) -> String {
        self.claim(&format!("{CHAIN_PREFIX}G-"), rules, None)
            .name
            .clone()
    }

    /// The chain of a cluster policy in one direction.
    pub fn cluster_chain(&mut self, policy: &ClusterPolicy, dir: Direction) -> String {
        let at = Names::chain_address(policy, dir);
        self.by_address(at, |names| {
            let d = match dir {
                Direction::Ingress => "CI",
                Direction::Egress => "CE",
            };
            names.claim(&format!("{CHAIN_PREFIX}{d}-"), &policy.name, None)
        })
    }

    /// The chain of a policy in one direction (at most 28 characters).
    pub fn policy_chain(&mut self, policy: &Policy, dir: Direction) -> String {
        let at = Names::chain_address(policy, dir);
        self.by_address(at, |names| {
            let d = match dir {
                Direction::Ingress => "PI",
                Direction::Egress => "PE",
            };
            let id = format!("{}/{}", policy.namespace, policy.name);
            names.claim(&format!("{CHAIN_PREFIX}{d}-"), &id, None)
        })
    }

    /// Where the name of a policy's or cluster policy's chain is kept.
    fn chain_address<T>(policy: &T, dir: Direction) -> (usize, u8) {
        (std::ptr::from_ref(policy) as usize, Named::Chain(dir).tag())
    }

    /// Hands out again the name an earlier compile kept at `at`, if it is
    /// still the object's; false otherwise.
    fn replay_at(&mut self, at: (usize, u8), claim: &Claim) -> bool {
        if !self.replay(claim) {
            return false;
        }
        self.by_address.insert(at, claim.clone());
        true
    }

    /// The name `identity` gets (its first `prefix_len` bytes the name's
    /// prefix): the first of its hashed names nobody holds, and how many
    /// were held.
    fn free_name(&self, identity: &Identity, prefix_len: usize) -> (String, u32) {
        let (prefix, id) = identity.text.split_at(prefix_len);
        let mut text = id.to_string();
        let mut attempt = 0u32;
        loop {
            let name = format!("{prefix}{:012x}", fnv64(text.as_bytes()) & 0xffff_ffff_ffff);
            if !self.owned.contains(&name) {
                return (name, attempt);
            }
            attempt += 1;
            // NUL never occurs in an identity, so the retry text is no
            // other object's first choice.
            text = format!("{id}\0{attempt}");
        }
    }
}

/// Notes a claim this compile made: the set it names, and the claim in the
/// trace of the endpoint being compiled.
fn record(
    sets: &mut HashMap<String, (SetKey, Family, String), BuildHasherDefault<Fnv>>,
    trace: &mut Option<Vec<Claim>>,
    claim: &Claim,
) {
    if let Some((key, family)) = &claim.set
        && !sets.contains_key(&claim.name)
    {
        let entry = (key.clone(), *family, claim.id().to_string());
        sets.insert(claim.name.clone(), entry);
    }
    if let Some(trace) = trace {
        trace.push(claim.clone());
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

/// The interface of an endpoint chain ([`endpoint_chain`]) or audit chain
/// ([`audit_chain`]); `None` for any other chain.
pub fn chain_interface(chain: &str) -> Option<&str> {
    let rest = chain.strip_prefix(CHAIN_PREFIX)?;
    ["I-", "E-", "AI-", "AE-"]
        .iter()
        .find_map(|d| rest.strip_prefix(d))
}

/// Compiles the index (after [`Index::refresh_sets`]) into the desired state.
pub fn compile(index: &Index, config: &Config) -> Desired {
    compile_with(index, config, None)
}

/// Compiles one index again and again, as its changes come: an endpoint's
/// chains are compiled again only when something they are made of changed
/// (the endpoint, its pod's being known, the policies selecting it, the
/// default mode, whether its namespace logs denials), and are otherwise
/// the ones the last compile made. The names they use are asked for again
/// in the same order, so every name is the one a fresh compile hands out;
/// should one differ (a colliding identity came or went), the endpoint is
/// compiled again. The result is always what [`compile`] gives.
#[derive(Debug, Default)]
pub struct Compiler {
    config: Option<Config>,
    /// Per family, by interface.
    endpoints: [HashMap<String, Compiled>; 2],
    policies: HashMap<PolicyKey, CompiledPolicy>,
    /// The names of the policy and cluster policy chains, by address.
    names: HashMap<(usize, u8), (Compiling, Claim)>,
}

/// A policy's chain in one family: the policy object's address (the entry
/// holds the object, so no other takes that address meanwhile), the
/// direction and the family.
type PolicyKey = (usize, Direction, Family);

/// The chain of one policy or cluster policy in one direction and family,
/// the names it used, and the object it was compiled from.
#[derive(Debug)]
struct CompiledPolicy {
    _compiled_from: Compiling,
    rules: Rules,
    matches: Vec<(String, Rules)>,
    claims: Vec<Claim>,
}

/// The object a policy chain is compiled from.
#[derive(Debug)]
enum Compiling {
    Policy(Arc<Policy>),
    Cluster(Arc<ClusterPolicy>),
}

impl Compiling {
    fn key(&self, dir: Direction, family: Family) -> PolicyKey {
        let at = match self {
            Compiling::Policy(p) => Arc::as_ptr(p) as usize,
            Compiling::Cluster(p) => Arc::as_ptr(p) as usize,
        };
        (at, dir, family)
    }
}

impl Compiler {
    pub fn compile(&mut self, index: &Index, config: &Config) -> Desired {
        if self.config.as_ref() != Some(config) {
            // Every kept chain was compiled for the last configuration.
            *self = Compiler {
                config: Some(config.clone()),
                ..Compiler::default()
            };
        }
        let (mut kept, mut kept_policies) = (Default::default(), HashMap::new());
        let mut kept_names = HashMap::new();
        let desired = compile_with(
            index,
            config,
            Some(Cache {
                last: &mut self.endpoints,
                next: &mut kept,
                last_policies: &mut self.policies,
                next_policies: &mut kept_policies,
                last_names: &mut self.names,
                next_names: &mut kept_names,
            }),
        );
        self.endpoints = kept;
        self.policies = kept_policies;
        self.names = kept_names;
        desired
    }
}

/// One endpoint's chains in one family, and what they were made of.
#[derive(Debug)]
struct Compiled {
    inputs: Inputs,
    chains: Vec<(String, Rules)>,
    claims: Vec<Claim>,
    jumps: Vec<String>,
    blocks: Vec<(String, DesiredSet)>,
    peers: Vec<(String, Rules)>,
}

/// What an endpoint's chains are made of, besides the names.
#[derive(Debug)]
struct Inputs {
    ep: Endpoint,
    known: bool,
    selection: Selection,
    mode: Mode,
    log: bool,
}

impl Inputs {
    fn of(index: &Index, config: &Config, ep: &Endpoint) -> Inputs {
        Inputs {
            ep: ep.clone(),
            known: index.pod(&ep.pod).is_some(),
            selection: index.selection(ep).into_owned(),
            mode: index.default_mode(),
            log: logs_denials(index, config, ep),
        }
    }

    /// Whether `ep` is still made of these: the same endpoint, and the
    /// very same policy objects selecting it (nothing copied to tell).
    fn hold_for(&self, index: &Index, config: &Config, ep: &Endpoint) -> bool {
        fn same_list<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        }
        if self.ep != *ep
            || self.known != index.pod(&ep.pod).is_some()
            || self.mode != index.default_mode()
            || self.log != logs_denials(index, config, ep)
        {
            return false;
        }
        let selection = index.selection(ep);
        let (a, b) = (&self.selection, &*selection);
        same_list(&a.ingress, &b.ingress)
            && same_list(&a.egress, &b.egress)
            && (0..2).all(|i| same_list(&a.admin[i], &b.admin[i]))
            && (0..2).all(|i| same_list(&a.baseline[i], &b.baseline[i]))
    }
}

/// The endpoint and policy chains of the last compile, and those of this
/// one.
struct Cache<'a> {
    last: &'a mut [HashMap<String, Compiled>; 2],
    next: &'a mut [HashMap<String, Compiled>; 2],
    last_policies: &'a mut HashMap<PolicyKey, CompiledPolicy>,
    next_policies: &'a mut HashMap<PolicyKey, CompiledPolicy>,
    last_names: &'a mut HashMap<(usize, u8), (Compiling, Claim)>,
    next_names: &'a mut HashMap<(usize, u8), (Compiling, Claim)>,
}

/// Names a policy's or cluster policy's chain in the first pass: the name
/// the last compile gave this very object (the cache holds the object, so
/// no other took its address meanwhile), if it is still its, otherwise a
/// new claim.
fn name_chain(
    names: &mut Names,
    cache: &mut Option<Cache<'_>>,
    at: (usize, u8),
    from: impl FnOnce() -> Compiling,
    claim: impl FnOnce(&mut Names) -> String,
) {
    let Some(cache) = cache else {
        claim(names);
        return;
    };
    let kept = match cache.last_names.remove(&at) {
        Some((from, kept)) if names.replay_at(at, &kept) => (from, kept),
        _ => {
            claim(names);
            let Some(kept) = names.by_address.get(&at) else {
                return;
            };
            (from(), kept.clone())
        }
    };
    cache.next_names.insert(at, kept);
}

/// Adds a policy's chain `name` in one family, and its `UDL-M-` chains,
/// to `chains`: the last compile's when it was compiled from this very
/// object and its names are still its own, otherwise compiled (and kept
/// for the next compile).
#[allow(clippy::too_many_arguments)]
fn add_policy_chain(
    chains: &mut BTreeMap<String, Rules>,
    name: String,
    cache: &mut Option<Cache<'_>>,
    names: &mut Names,
    from: Compiling,
    dir: Direction,
    family: Family,
    compile: impl FnOnce(&mut Names) -> Ruled,
) {
    let Some(cache) = cache else {
        let ruled = compile(names);
        chains.insert(name, ruled.rules.into());
        chains.extend(ruled.matches.into_iter().map(|(n, r)| (n, r.into())));
        return;
    };
    let key = from.key(dir, family);
    let compiled = match cache.last_policies.remove(&key) {
        Some(last) if last.claims.iter().all(|c| names.replay(c)) => last,
        _ => {
            names.trace = Some(Vec::new());
            let ruled = compile(names);
            let claims = names.trace.take().unwrap_or_default();
            CompiledPolicy {
                _compiled_from: from,
                rules: ruled.rules.into(),
                matches: (ruled.matches.into_iter())
                    .map(|(n, r)| (n, r.into()))
                    .collect(),
                claims,
            }
        }
    };
    chains.insert(name, compiled.rules.clone());
    chains.extend(compiled.matches.iter().cloned());
    cache.next_policies.insert(key, compiled);
}

/// Whether denied packets of `ep` are logged.
fn logs_denials(index: &Index, config: &Config, ep: &Endpoint) -> bool {
    config.log_all
        || index
            .namespace(&ep.pod.namespace)
            .is_some_and(|n| n.log_denied)
}

/// One endpoint's chains in one family: the last compile's when nothing
/// they are made of changed and their names are still theirs, otherwise
/// compiled (and kept for the next compile).
fn cached_endpoint_chains(
    index: &Index,
    config: &Config,
    names: &mut Names,
    ep: &Endpoint,
    merged: &mut Merged<'_>,
    cache: &mut Cache<'_>,
) -> Vec<(String, Rules)> {
    let f = merged.family.index();
    let last = cache.last[f].remove_entry(&ep.interface);
    let key = match last {
        Some((key, last))
            if last.inputs.hold_for(index, config, ep)
                && last.claims.iter().all(|c| names.replay(c)) =>
        {
            for jump in &last.jumps {
                if !merged.jumps.contains(jump) {
                    merged.jumps.insert(jump.clone());
                }
            }
            for (name, set) in &last.blocks {
                if !merged.sets.contains_key(name) {
                    merged.sets.insert(name.clone(), set.clone());
                }
            }
            for (name, rules) in &last.peers {
                if !merged.peers.contains_key(name) {
                    merged.peers.insert(name.clone(), rules.clone());
                }
            }
            let chains = last.chains.clone();
            cache.next[f].insert(key, last);
            return chains;
        }
        Some((key, _)) => key,
        None => ep.interface.clone(),
    };
    let inputs = Inputs::of(index, config, ep);
    names.trace = Some(Vec::new());
    merged.record = Some(Recorded::default());
    let chains = endpoint_chains(index, config, names, ep, merged);
    let claims = names.trace.take().unwrap_or_default();
    let recorded = merged.record.take().unwrap_or_default();
    cache.next[f].insert(
        key,
        Compiled {
            inputs,
            chains: chains.clone(),
            claims,
            jumps: recorded.jumps,
            blocks: recorded.blocks,
            peers: recorded.peers,
        },
    );
    chains
}

fn compile_with(index: &Index, config: &Config, mut cache: Option<Cache<'_>>) -> Desired {
    let mut out = Desired::default();
    let mut names = Names::default();

    let endpoints: Vec<&Endpoint> = index.endpoints().collect();
    out.endpoints = endpoints.len();
    let active = index.active_policies();
    out.policies = active.len();
    // Policies claim their names in key order, not in the order endpoints
    // happen to reference them.
    for policy in active.values() {
        for dir in Direction::BOTH {
            let at = Names::chain_address(&**policy, dir);
            let from = || Compiling::Policy(policy.clone());
            name_chain(&mut names, &mut cache, at, from, |n| {
                n.policy_chain(policy, dir)
            });
        }
    }

    let cluster = index.active_cluster_policies();
    out.cluster_policies = cluster.len();
    for policy in cluster.values() {
        for dir in Direction::BOTH {
            let at = Names::chain_address(&**policy, dir);
            let from = || Compiling::Cluster(policy.clone());
            name_chain(&mut names, &mut cache, at, from, |n| {
                n.cluster_chain(policy, dir)
            });
        }
    }

    for family in Family::ALL {
        let chains = &mut out.chains[family.index()];
        // An endpoint with addresses, none of them in this family, has no
        // chain and no dispatch entry here: its packets of this family are
        // dropped by the dispatch, whatever policy says.
        let addressed: Vec<&Endpoint> = (endpoints.iter().copied())
            .filter(|ep| ep.ips.is_empty() || ep.ips.iter().any(|ip| Family::of(*ip) == family))
            .collect();
        let fixed = hook_chains(family, config).into_iter();
        let fixed = fixed.chain(dispatch_chains(&addressed));
        chains.extend(fixed.map(|(name, rules)| (name, rules.into())));
        let mut merged = Merged {
            family,
            sets: &mut out.sets,
            jumps: HashSet::default(),
            peers: BTreeMap::new(),
            record: None,
        };
        for ep in &addressed {
            let compiled = match &mut cache {
                Some(cache) => {
                    cached_endpoint_chains(index, config, &mut names, ep, &mut merged, cache)
                }
                None => endpoint_chains(index, config, &mut names, ep, &mut merged),
            };
            chains.extend(compiled);
        }
        chains.extend(merged.peers);
        // A policy's chain exists in a family only while an endpoint chain
        // of that family jumps to it.
        let used = merged.jumps;
        for policy in cluster.values() {
            for dir in Direction::BOTH {
                if policy.rules(dir).is_empty() {
                    continue;
                }
                let name = names.cluster_chain(policy, dir);
                if used.contains(&name) {
                    let from = Compiling::Cluster(policy.clone());
                    add_policy_chain(
                        chains,
                        name,
                        &mut cache,
                        &mut names,
                        from,
                        dir,
                        family,
                        |n| cluster_rules(policy, dir, family, config, n),
                    );
                }
            }
        }
        for policy in active.values() {
            for dir in Direction::BOTH {
                if !unmerged(policy, dir) {
                    continue;
                }
                let name = names.policy_chain(policy, dir);
                if used.contains(&name) {
                    let from = Compiling::Policy(policy.clone());
                    add_policy_chain(
                        chains,
                        name,
                        &mut cache,
                        &mut names,
                        from,
                        dir,
                        family,
                        |n| policy_rules(policy, dir, family, n),
                    );
                }
            }
        }
    }
    // And a set only while a rule of its family matches against it: a set
    // is named only for a rule that matches against it.
    add_sets(index, names, &mut out);
    out
}

/// The peer sets the rules match against, with the members the index
/// holds for them.
fn add_sets(index: &Index, names: Names, out: &mut Desired) {
    for (name, (key, family, describes)) in names.sets {
        let Some(data) = index.sets().get(&key) else {
            continue;
        };
        out.sets.insert(
            name,
            DesiredSet {
                family,
                kind: key.kind(),
                members: data.members[family.index()].clone(),
                describes,
            },
        );
    }
}

/// The chains the built-in chains jump to, and `UDL-ALLOW`: the same for
/// every cluster, but for IPv6's neighbour discovery.
fn hook_chains(family: Family, config: &Config) -> [(String, Vec<String>); 8] {
    let any_pod = format!("{}+", config.interface_prefix);
    let forward = vec![
        format!("-i {any_pod} -m conntrack --ctstate INVALID -j DROP"),
        format!("-o {any_pod} -m conntrack --ctstate INVALID -j DROP"),
        format!("-i {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-o {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-i {any_pod} -j {FROM_POD}"),
        format!("-o {any_pod} -j {TO_POD}"),
        format!("-i {any_pod} -j ACCEPT"),
        format!("-o {any_pod} -j ACCEPT"),
    ];

    // Pod to node: egress policy applies, but the host's own INPUT rules
    // still decide afterwards (RETURN, not ACCEPT).
    let mut input = vec![
        format!("-i {any_pod} -m conntrack --ctstate INVALID -j DROP"),
        format!("-i {any_pod} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
    ];
    if family == Family::V6 {
        // Neighbour discovery with the gateway must work whatever the
        // pod's egress policy says, or the pod loses its IPv6 link: router
        // solicitation, neighbour solicitation and advertisement, by number
        // as `ip6tables-save` prints them.
        for t in [133, 135, 136] {
            input.push(format!(
                "-i {any_pod} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
            ));
        }
    }
    input.push(format!("-i {any_pod} -j {FROM_POD}"));

    // Node to its local pods (kubelet probes) is always allowed: ingress
    // policy is enforced in FORWARD only.
    let output = vec![format!(
        "-o {any_pod} -m conntrack --ctstate INVALID -j DROP"
    )];
    let allow = vec![format!("-j MARK --set-xmark {}", config.undecided())];
    let verdict = |v: String| vec![format!("-j MARK --set-xmark {v}")];
    [
        (FORWARD.into(), forward),
        (INPUT.into(), input),
        (OUTPUT.into(), output),
        (ALLOW.into(), allow),
        (ACCEPTED.into(), verdict(config.accepted())),
        (DENIED.into(), verdict(config.denied())),
        (PASSED.into(), verdict(config.passed())),
        (
            CLEAR.into(),
            vec![format!("-j MARK --set-xmark {}", config.undecided())],
        ),
    ]
}

/// `UDL-FROM-POD` and `UDL-TO-POD`: each endpoint's interface to its
/// chain, and any other pod interface dropped (fail closed: a pod
/// interface we hold no endpoint for).
fn dispatch_chains(endpoints: &[&Endpoint]) -> [(String, Vec<String>); 2] {
    let mut from_pod = Vec::new();
    let mut to_pod = Vec::new();
    for ep in endpoints {
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
    from_pod.push("-j DROP".into());
    to_pod.push("-j DROP".into());
    [(FROM_POD.into(), from_pod), (TO_POD.into(), to_pod)]
}

/// One endpoint's chains in one family, one per direction: empty (open)
/// when no policy of any tier selects it in that direction; else the tiers
/// in order (see [`endpoint_rules`]); only a drop while the pod is unknown.
/// When an audited policy selects it in a direction, that direction also
/// gets an audit chain (see [`audit_chain`]).
fn endpoint_chains(
    index: &Index,
    config: &Config,
    names: &mut Names,
    ep: &Endpoint,
    merged: &mut Merged<'_>,
) -> Vec<(String, Rules)> {
    let chain = |dir| endpoint_chain(&ep.interface, dir);
    if index.pod(&ep.pod).is_none() {
        // Unknown means denied: without its Pod object nothing says which
        // policies select it (e.g. deleted while we were down).
        return Direction::BOTH
            .map(|dir| (chain(dir), Rules::from(["-j DROP".to_string()])))
            .to_vec();
    }
    let all = index.selection(ep);
    let mode = index.default_mode();
    let enforced = all.enforced(mode);
    let log = logs_denials(index, config, ep);
    let mut out = Vec::new();
    for dir in Direction::BOTH {
        let deny_log = log.then(|| log_rule(config, ep, dir, "deny"));
        if !all.audits(dir, mode) {
            let rules = if enforced.open(dir) {
                Vec::new()
            } else {
                let exits = Exits::enforcing(ALLOW.into(), deny_log);
                endpoint_rules(&enforced, dir, config, names, &exits, merged)
            };
            out.push((chain(dir), rules.into()));
            continue;
        }
        let audit = audit_chain(&ep.interface, dir);
        let mut rules = if enforced.open(dir) {
            Vec::new()
        } else {
            let exits = Exits::enforcing(audit.clone(), deny_log);
            endpoint_rules(&enforced, dir, config, names, &exits, merged)
        };
        if enforced.get(dir).is_empty() {
            // What the enforced tiers leave undecided is allowed: audit it.
            rules.push(format!("-g {audit}"));
        }
        out.push((chain(dir), rules.into()));
        let exits = Exits {
            allow: ALLOW.into(),
            deny: format!("-g {ALLOW}"),
            log: Some(log_rule(config, ep, dir, "audit")),
        };
        let rules = endpoint_rules(&all, dir, config, names, &exits, merged);
        out.push((audit, rules.into()));
    }
    out
}

/// The audit chain of an endpoint in one direction: the same tiers with
/// every policy, audited ones included, reached only by packets the
/// enforced policies allow. What it would deny is logged as an audit
/// denial and accepted all the same (its deny exit is `UDL-ALLOW`).
pub fn audit_chain(interface: &str, dir: Direction) -> String {
    let d = match dir {
        Direction::Ingress => "AI",
        Direction::Egress => "AE",
    };
    format!("{CHAIN_PREFIX}{d}-{interface}")
}

/// Where an endpoint chain's verdicts lead.
struct Exits {
    /// The chain an allowed packet goes to.
    allow: String,
    /// The target of a denied packet (`-j DROP`, or on for audit).
    deny: String,
    /// The NFLOG rule for a denied packet, when it is logged.
    log: Option<String>,
}

impl Exits {
    fn enforcing(allow: String, log: Option<String>) -> Exits {
        Exits {
            allow,
            deny: "-j DROP".into(),
            log,
        }
    }
}

/// The rules of a selected endpoint's chain in one direction. The verdict
/// field of the mark starts clear; then
/// - the Admin tier: each policy's chain while no verdict is set; Accept
///   goes to the allow exit, Deny to the deny exit, Pass (or no match)
///   clears the field and goes on;
/// - NetworkPolicy when one selects the endpoint: each policy's chain,
///   the allow exit as soon as one allowed, otherwise the deny exit;
/// - otherwise the Baseline tier like the Admin tier, and what it leaves
///   undecided returns (allowed by default) with the field clear.
fn endpoint_rules(
    selection: &Selection,
    dir: Direction,
    config: &Config,
    names: &mut Names,
    exits: &Exits,
    merged: &mut Merged<'_>,
) -> Vec<String> {
    let accepted = config.accepted();
    let (allow, deny) = (&exits.allow, &exits.deny);
    let mut rules = vec![format!("-j {CLEAR}")];
    let mut tier = |rules: &mut Vec<String>, policies: &[Arc<ClusterPolicy>]| {
        for (i, p) in policies.iter().enumerate() {
            let guard = if i == 0 {
                String::new()
            } else {
                format!("-m mark --mark {} ", config.undecided())
            };
            let chain = names.cluster_chain(p, dir);
            rules.push(format!("{guard}-j {chain}"));
            merged.jump(chain);
        }
        rules.push(format!("-m mark --mark {accepted} -g {allow}"));
        if let Some(log) = &exits.log {
            rules.push(format!("-m mark --mark {} {log}", config.denied()));
        }
        rules.push(format!("-m mark --mark {} {deny}", config.denied()));
    };
    let admin = selection.tier(Tier::Admin, dir);
    let policies = selection.get(dir);
    let baseline = selection.tier(Tier::Baseline, dir);
    // Clears a Pass, so no verdict bit leaves the chain or reaches the
    // next tier.
    let clear = format!("-j {CLEAR}");
    if !admin.is_empty() {
        tier(&mut rules, admin);
        rules.push(clear.clone());
    }
    if policies.is_empty() {
        if !baseline.is_empty() {
            tier(&mut rules, baseline);
            rules.push(clear);
        }
        return rules;
    }
    // The chains that may allow: the peers allowed on every port, then
    // each policy's own. More than one are asked in turn by a group chain
    // shared by every endpoint they select alike, so a new pod's chain is
    // a few rules however many policies select it.
    let mut asked: Vec<String> = merged
        .peer_rules(policies, dir, names)
        .into_iter()
        .collect();
    for p in policies.iter().filter(|p| unmerged(p, dir)) {
        let chain = names.policy_chain(p, dir);
        merged.jump(chain.clone());
        asked.push(chain);
    }
    let target = match asked.len() {
        0 => None,
        1 => asked.pop(),
        _ => {
            let mut group = Vec::new();
            for (i, chain) in asked.iter().enumerate() {
                if i > 0 {
                    group.push(format!("-m mark --mark {accepted} -j RETURN"));
                }
                group.push(format!("-j {chain}"));
            }
            let name = names.group_chain(&group.join("\n"));
            merged.shared(&name, group);
            Some(name)
        }
    };
    if let Some(target) = target {
        rules.push(format!("-j {target}"));
        rules.push(format!("-m mark --mark {accepted} -g {allow}"));
    }
    rules.extend(exits.log.clone());
    rules.push(deny.clone());
    rules
}

/// A rule that allows its peers on every port: the endpoint chain matches
/// its peers itself (see [`Merged`]) instead of jumping to the policy's
/// chain.
fn is_merged(rule: &Rule) -> bool {
    rule.ports.is_empty() && !rule.peers.is_empty()
}

/// Whether a policy keeps a chain in `dir`: it applies there and has a
/// rule the endpoint chains do not match themselves.
fn unmerged(policy: &Policy, dir: Direction) -> bool {
    policy.applies(dir) && policy.rules(dir).iter().any(|r| !is_merged(r))
}

/// The peers an endpoint's NetworkPolicies allow on every port, matched
/// in the endpoint chain. A new connection to a pod that many policies
/// select would otherwise walk every policy's chain (a jump, its rules and
/// a mark check each): with 1,000 policies that is most of the cost of a
/// connection. Here the `ipBlock`s without exceptions of all of them are
/// one `hash:net` set, one lookup; every other peer set is one rule, once
/// however many policies name it. Allowing is a union, so the order of
/// these rules and the policies' chains does not matter.
struct Merged<'a> {
    family: Family,
    /// The desired sets, which the `ipBlock` sets join.
    sets: &'a mut BTreeMap<String, DesiredSet>,
    /// The policy chains the endpoint chains of this family jump to.
    jumps: HashSet<String, BuildHasherDefault<Fnv>>,
    /// The chains named after their rules they jump to (peers and group
    /// chains), with their rules.
    peers: BTreeMap<String, Rules>,
    /// While one endpoint's chains are compiled: its jumps, sets and
    /// peers chains.
    record: Option<Recorded>,
}

/// What one endpoint's chains add besides themselves.
#[derive(Debug, Default)]
struct Recorded {
    jumps: Vec<String>,
    blocks: Vec<(String, DesiredSet)>,
    peers: Vec<(String, Rules)>,
}

impl Merged<'_> {
    fn jump(&mut self, chain: String) {
        if let Some(r) = &mut self.record {
            r.jumps.push(chain.clone());
        }
        self.jumps.insert(chain);
    }
}

impl Merged<'_> {
    /// Adds a chain named after its rules, shared by every endpoint chain
    /// that uses it.
    fn shared(&mut self, name: &str, rules: Vec<String>) {
        if !self.peers.contains_key(name) {
            self.peers.insert(name.to_string(), rules.into());
        }
        if let Some(r) = &mut self.record {
            r.peers.push((name.to_string(), self.peers[name].clone()));
        }
    }

    /// The chain matching the peers `policies` allow on every port in
    /// `dir`, if any.
    fn peer_rules(
        &mut self,
        policies: &[Arc<Policy>],
        dir: Direction,
        names: &mut Names,
    ) -> Option<String> {
        let peer_dir = match dir {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        };
        let mut blocks = Members::new();
        let mut sets: Vec<String> = Vec::new();
        for policy in policies {
            for rule in policy.rules(dir).iter().filter(|r| is_merged(r)) {
                for peer in &rule.peers {
                    match peer {
                        // Matches nothing in this family.
                        Peer::IpBlock { cidr, .. } if cidr.family() != self.family => {}
                        Peer::IpBlock { cidr, except } if except.is_empty() => {
                            for cidr in net_entries(cidr) {
                                let entry = Member::Net {
                                    cidr,
                                    nomatch: false,
                                };
                                blocks.insert(entry, 1);
                            }
                        }
                        _ => {
                            let set = names.peer_set(&policy.namespace, peer, self.family);
                            if !sets.contains(&set) {
                                sets.push(set);
                            }
                        }
                    }
                }
            }
        }
        let mut rules = Vec::new();
        if !blocks.is_empty() {
            let id: Vec<String> = blocks.keys().map(|m| m.render()).collect();
            let name = names.blocks(&id.join(","), self.family);
            rules.push(format!(
                "-m set --match-set {name} {peer_dir} -g {ACCEPTED}"
            ));
            let set = self.sets.entry(name.clone()).or_insert_with(|| DesiredSet {
                family: self.family,
                kind: SetKind::HashNet,
                members: Arc::new(blocks),
                describes: format!("{} ipBlocks allowed on every port", id.len()),
            });
            if let Some(r) = &mut self.record {
                r.blocks.push((name, set.clone()));
            }
        }
        for set in sets {
            rules.push(format!("-m set --match-set {set} {peer_dir} -g {ACCEPTED}"));
        }
        if rules.is_empty() {
            return None;
        }
        let chain = names.peers_chain(&rules.join("\n"));
        self.shared(&chain, rules);
        Some(chain)
    }
}

/// The NFLOG rule logging a denied (`kind` "deny") or audit-denied
/// ("audit") packet of `ep` (prefix at most 63 bytes, no characters that
/// would break the rule's quoting).
fn log_rule(config: &Config, ep: &Endpoint, dir: Direction, kind: &str) -> String {
    let d = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    let mut prefix = format!("udl {kind} {d} {}", ep.pod);
    let mut end = prefix.len().min(63);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix.truncate(end);
    let prefix: String = prefix
        .chars()
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect();
    format!(
        "-m limit --limit {} -j NFLOG --nflog-prefix \"{prefix}\" --nflog-group {}",
        saved_rate(&config.log_rate),
        config.nflog_group
    )
}

/// A `limit` rate as `iptables-save` prints it (`10/second` is saved as
/// `10/sec`), so a chain of native rules reads back as it was written.
fn saved_rate(rate: &str) -> String {
    let Some((n, unit)) = rate.split_once('/') else {
        return rate.to_string();
    };
    let unit = match unit {
        "s" | "sec" | "second" => "sec",
        "m" | "min" | "minute" => "min",
        "h" | "hour" => "hour",
        "d" | "day" => "day",
        other => other,
    };
    format!("{n}/{unit}")
}

/// Whether every rule is a native nf_tables expression for iptables-nft
/// (no `set` match, `MARK` target or `comment` match, which it runs as
/// xtables extensions) and reads back from `iptables-save` as written.
/// Writing an extension makes the kernel first wait for the release of the
/// previous transaction's rules, milliseconds after a change that deleted
/// any; endpoint chains are written with native rules only, so a pod that
/// comes or goes right after another does not wait.
pub fn native(rules: &[String]) -> bool {
    rules
        .iter()
        .all(|r| !r.contains("-m set ") && !r.contains("-j MARK ") && !r.contains("-m comment "))
}

/// The rules of one policy chain, and the `UDL-M-` chains they jump to.
fn policy_rules(policy: &Policy, dir: Direction, family: Family, names: &mut Names) -> Ruled {
    let peer_dir = match dir {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    };
    let mut out = Ruled::default();
    for rule in policy.rules(dir).iter().filter(|r| !is_merged(r)) {
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
                    let set = names.peer_set(&policy.namespace, p, family);
                    format!("-m set --match-set {set} {peer_dir}")
                })
                .collect()
        };
        if peers.is_empty() {
            // Every peer is an ipBlock of the other family: the rule
            // matches nothing here (it must not turn into "any peer").
            continue;
        }
        let ports: Vec<PortSpec> = rule
            .ports
            .iter()
            .map(|p| port_spec(p, family, names))
            .collect();
        out.rule_lines(&peers, &ports, "", ACCEPTED, names);
    }
    out
}

/// A policy or cluster policy chain's rules, and the `UDL-M-` chains of
/// set matches they jump to.
#[derive(Debug, Default, Clone)]
struct Ruled {
    rules: Vec<String>,
    matches: Vec<(String, Vec<String>)>,
}

/// One port of a rule.
enum PortSpec {
    /// A protocol, with a port or range (`-m <proto> --dport N[:M]`).
    Native {
        proto: &'static str,
        dport: Option<String>,
    },
    /// A named port: the protocol and a set match
    /// (`-p tcp -m set --match-set S dst,dst`).
    Set(String),
}

impl Ruled {
    /// The lines of one rule, going to the `verdict` chain (which sets the
    /// verdict and returns), each behind `guard` (matches, or nothing).
    ///
    /// The chain itself gets native rules only: per numeric port the
    /// protocol and port, then a jump. Every set match (each peer, a named
    /// port) lives in a `UDL-M-<h>` chain named after its rules, which goes
    /// to the verdict on the first match and is shared by every rule with
    /// the same matches. A rule whose ports change is then rewritten with
    /// native rules alone, and its transaction writes no xtables extension
    /// (see [`native`]). A rule without peer sets goes to the verdict
    /// directly. Within one rule every line has the same verdict, so their
    /// order does not matter.
    fn rule_lines(
        &mut self,
        peers: &[String],
        ports: &[PortSpec],
        guard: &str,
        verdict: &str,
        names: &mut Names,
    ) {
        let line = |parts: &[&str]| {
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let go = format!("-g {verdict}");
        // Where a rule goes once a numeric port (or no port) matched; a rule
        // of named ports alone has no such line, and no peers chain.
        let numeric =
            ports.is_empty() || ports.iter().any(|p| matches!(p, PortSpec::Native { .. }));
        let target = if !numeric {
            String::new()
        } else if peers.iter().all(String::is_empty) {
            go.clone()
        } else {
            let rules: Vec<String> = peers.iter().map(|p| line(&[p, &go])).collect();
            format!("-j {}", self.matches_chain(rules, names))
        };
        if ports.is_empty() {
            self.rules.push(line(&[guard, &target]));
            return;
        }
        let mut named = Vec::new();
        for port in ports {
            match port {
                // `iptables-save` prints the protocol before every match.
                PortSpec::Native { proto, dport } => {
                    let proto_part = format!("-p {proto}");
                    let dport_part = match dport {
                        Some(d) => format!("-m {proto} --dport {d}"),
                        None => String::new(),
                    };
                    self.rules
                        .push(line(&[&proto_part, guard, &dport_part, &target]));
                }
                PortSpec::Set(m) => {
                    for peer in peers {
                        named.push(line(&[m, peer, &go]));
                    }
                }
            }
        }
        if !named.is_empty() {
            let chain = self.matches_chain(named, names);
            self.rules.push(line(&[guard, &format!("-j {chain}")]));
        }
    }

    fn matches_chain(&mut self, rules: Vec<String>, names: &mut Names) -> String {
        let chain = names.peers_chain(&rules.join("\n"));
        if !self.matches.iter().any(|(n, _)| *n == chain) {
            self.matches.push((chain.clone(), rules));
        }
        chain
    }
}

fn port_spec(p: &PortMatch, family: Family, names: &mut Names) -> PortSpec {
    let proto = p.protocol.name();
    match (&p.port, p.end_port) {
        (None, _) => PortSpec::Native { proto, dport: None },
        (Some(PortRef::Number(n)), None) => PortSpec::Native {
            proto,
            dport: Some(n.to_string()),
        },
        (Some(PortRef::Number(n)), Some(end)) => PortSpec::Native {
            proto,
            dport: Some(format!("{n}:{end}")),
        },
        (Some(PortRef::Name(name)), _) => {
            let set = names.set(&SetKey::NamedPort { name: name.clone() }, family);
            // The destination is the endpoint for ingress and the peer for
            // egress: either way the name resolves against the pod the
            // packet is addressed to.
            PortSpec::Set(format!("-p {proto} -m set --match-set {set} dst,dst"))
        }
    }
}

/// The rules of a cluster policy's chain: each rule's (peer, port) pairs
/// in order, each going to the rule's verdict while none is set, so the
/// first rule that matches decides.
fn cluster_rules(
    policy: &ClusterPolicy,
    dir: Direction,
    family: Family,
    config: &Config,
    names: &mut Names,
) -> Ruled {
    let peer_dir = match dir {
        Direction::Ingress => "src",
        Direction::Egress => "dst",
    };
    let guard = format!("-m mark --mark {}", config.undecided());
    let mut out = Ruled::default();
    for rule in policy.rules(dir) {
        let peers = cluster_peers(rule, family, peer_dir, names);
        if peers.is_empty() {
            continue;
        }
        let ports: Vec<PortSpec> = rule
            .ports
            .iter()
            .map(|p| match p {
                ClusterPort::Port(p) => port_spec(p, family, names),
                ClusterPort::Named(name) => {
                    // Named ports of cluster policies name no protocol.
                    let set = names.set(&SetKey::NamedPort { name: name.clone() }, family);
                    PortSpec::Set(format!("-m set --match-set {set} dst,dst"))
                }
            })
            .collect();
        let verdict = match rule.action {
            Action::Accept => ACCEPTED,
            Action::Deny => DENIED,
            Action::Pass => PASSED,
        };
        out.rule_lines(&peers, &ports, &guard, verdict, names);
    }
    out
}

/// The peer matches of one cluster policy rule in one family (a network
/// of the other family matches nothing here; `Anything` matches all).
fn cluster_peers(
    rule: &ClusterRule,
    family: Family,
    peer_dir: &str,
    names: &mut Names,
) -> Vec<String> {
    rule.peers
        .iter()
        .filter(|p| !matches!(p, ClusterPeer::Network(c) if c.family() != family))
        .map(|p| match names.cluster_peer_set(p, family) {
            Some(set) => format!("-m set --match-set {set} {peer_dir}"),
            None => String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attachment, PodKey};

    fn endpoint(namespace: &str, name: &str) -> Endpoint {
        Endpoint {
            pod: PodKey::new(namespace, name),
            interface: "udl0123456789a".into(),
            ips: Vec::new(),
            owner: Attachment::default(),
        }
    }

    #[test]
    fn a_deny_log_prefix_is_cut_to_63_bytes_on_a_character_boundary() {
        let config = Config::default();
        // 'é' is two bytes: byte 63 falls inside one of them.
        let long = endpoint("x", &"é".repeat(40));
        let rule = log_rule(&config, &long, Direction::Ingress, "deny");
        let prefix = rule.split('"').nth(1).unwrap();
        assert!(prefix.len() <= 63, "{prefix}");
        assert!(prefix.starts_with("udl deny in x/éé"), "{prefix}");
        let quoted = endpoint("x", "a\"b\\c");
        let rule = log_rule(&config, &quoted, Direction::Egress, "deny");
        assert!(
            rule.contains("--nflog-prefix \"udl deny out x/a_b_c\" --nflog-group"),
            "{rule}"
        );
    }
}
