//! The index: a plain synchronous state machine fed with namespaces, pods,
//! NetworkPolicies and this node's endpoints. It keeps the membership of
//! every peer set that an active policy needs up to date incrementally, so a
//! single change costs time proportional to the sets it touches, not to the
//! size of the cluster.

use crate::cluster::{ClusterPeer, ClusterPolicy, Node, Tier};
use crate::model::{
    Attachment, Cidr, Direction, Endpoint, Family, Mode, Namespace, Peer, Pod, PodKey, Policy,
    PortRef, Protocol, Selector, parse_cidr,
};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

mod cluster;

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsScope {
    /// The policy's own namespace (no `namespaceSelector`).
    Own(String),
    Matching(Selector),
}

/// What a set holds; one set of each family is programmed per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKey {
    /// IPs of the pods a peer selects (`hash:ip`).
    Pods { scope: NsScope, pods: Selector },
    /// An `ipBlock` (`hash:net`, `except` entries as `nomatch`).
    Block { cidr: Cidr, except: Vec<Cidr> },
    /// (pod IP, protocol, port) of every pod with a container port of this
    /// name (`hash:ip,port`), which resolves named ports per pod.
    NamedPort { name: String },
    /// The addresses of the Nodes a cluster policy's `nodes` peer selects
    /// (`hash:ip`).
    Nodes { nodes: Selector },
}

impl SetKey {
    pub fn for_peer(policy_ns: &str, peer: &Peer) -> SetKey {
        match peer {
            Peer::Pods { namespaces, pods } => SetKey::Pods {
                scope: match namespaces {
                    None => NsScope::Own(policy_ns.to_string()),
                    Some(sel) => NsScope::Matching(sel.clone()),
                },
                pods: pods.clone().unwrap_or_default(),
            },
            Peer::IpBlock { cidr, except } => SetKey::Block {
                cidr: *cidr,
                except: except.clone(),
            },
        }
    }

    /// The set of a cluster policy peer; `None` for [`ClusterPeer::Anything`],
    /// which needs no set.
    pub fn for_cluster_peer(peer: &ClusterPeer) -> Option<SetKey> {
        match peer {
            ClusterPeer::Pods { namespaces, pods } => Some(SetKey::Pods {
                scope: NsScope::Matching(namespaces.clone()),
                pods: pods.clone(),
            }),
            ClusterPeer::Nodes(nodes) => Some(SetKey::Nodes {
                nodes: nodes.clone(),
            }),
            ClusterPeer::Network(cidr) => Some(SetKey::Block {
                cidr: *cidr,
                except: Vec::new(),
            }),
            ClusterPeer::Anything => None,
        }
    }

    /// The ipset type.
    pub fn kind(&self) -> SetKind {
        match self {
            SetKey::Pods { .. } | SetKey::Nodes { .. } => SetKind::HashIp,
            SetKey::Block { .. } => SetKind::HashNet,
            SetKey::NamedPort { .. } => SetKind::HashIpPort,
        }
    }

    /// A canonical text form: stable across runs, so set names derived
    /// from it survive restarts.
    pub fn canonical(&self) -> String {
        fn sel(s: &Selector) -> String {
            let mut out = String::new();
            for (k, v) in &s.match_labels {
                out.push_str(&format!("{k}={v},"));
            }
            for e in &s.match_expressions {
                use crate::model::Expression::*;
                match e {
                    In(k, vs) => out.push_str(&format!("{k} in ({}),", vs.join("|"))),
                    NotIn(k, vs) => out.push_str(&format!("{k} notin ({}),", vs.join("|"))),
                    Exists(k) => out.push_str(&format!("{k} exists,")),
                    DoesNotExist(k) => out.push_str(&format!("{k} !exists,")),
                }
            }
            out
        }
        match self {
            SetKey::Pods { scope, pods } => match scope {
                NsScope::Own(ns) => format!("pods ns={ns} sel={}", sel(pods)),
                NsScope::Matching(n) => format!("pods nssel={} sel={}", sel(n), sel(pods)),
            },
            SetKey::Block { cidr, except } => {
                let ex: Vec<String> = except.iter().map(|c| c.to_string()).collect();
                format!("block {cidr} except {}", ex.join(","))
            }
            SetKey::NamedPort { name } => format!("port {name}"),
            SetKey::Nodes { nodes } => format!("nodes sel={}", sel(nodes)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    HashIp,
    HashNet,
    HashIpPort,
}

impl SetKind {
    pub fn ipset_type(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashNet => "hash:net",
            SetKind::HashIpPort => "hash:ip,port",
        }
    }

    pub fn from_ipset_type(s: &str) -> Option<SetKind> {
        [SetKind::HashIp, SetKind::HashNet, SetKind::HashIpPort]
            .into_iter()
            .find(|k| k.ipset_type() == s)
    }
}

/// One member of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    Ip(IpAddr),
    Net { cidr: Cidr, nomatch: bool },
    IpPort(IpAddr, Protocol, u16),
}

impl Member {
    pub fn family(&self) -> Family {
        match self {
            Member::Ip(ip) | Member::IpPort(ip, ..) => Family::of(*ip),
            Member::Net { cidr, .. } => cidr.family(),
        }
    }

    /// The member as `ipset add` takes it.
    pub fn render(&self) -> String {
        match self {
            Member::Ip(ip) => ip.to_string(),
            Member::Net { cidr, nomatch } => {
                if *nomatch {
                    format!("{cidr} nomatch")
                } else {
                    cidr.to_string()
                }
            }
            Member::IpPort(ip, proto, port) => format!("{ip},{proto}:{port}"),
        }
    }

    /// Parses what `ipset save` prints for a member of a set of `kind`.
    pub fn parse(kind: SetKind, text: &str) -> Option<Member> {
        let mut words = text.split_whitespace();
        let value = words.next()?;
        let nomatch = words.any(|w| w == "nomatch");
        match kind {
            SetKind::HashIp => value.parse().ok().map(Member::Ip),
            SetKind::HashNet => parse_cidr(value)
                .ok()
                .map(|cidr| Member::Net { cidr, nomatch }),
            SetKind::HashIpPort => {
                let (ip, rest) = value.rsplit_once(',')?;
                let (proto, port) = rest.split_once(':')?;
                Some(Member::IpPort(
                    ip.parse().ok()?,
                    proto.parse().ok()?,
                    port.parse().ok()?,
                ))
            }
        }
    }
}

/// The `hash:net` entries of a network: itself, or the two halves of a
/// /0, which the set type cannot hold.
pub(crate) fn net_entries(cidr: &Cidr) -> Vec<Cidr> {
    match cidr.halves() {
        Some(h) if cidr.prefix_len() == 0 => h.to_vec(),
        _ => vec![*cidr],
    }
}

/// Members with the number of pods that contribute each (two pods may
/// briefly share an address).
pub type Members = BTreeMap<Member, u32>;

/// An active set: its members per family.
#[derive(Debug, Clone, Default)]
pub struct SetData {
    pub members: [Arc<Members>; 2],
}

impl SetData {
    fn add(&mut self, m: Member) {
        *Arc::make_mut(&mut self.members[m.family().index()])
            .entry(m)
            .or_insert(0) += 1;
    }

    fn remove(&mut self, m: Member) {
        let map = Arc::make_mut(&mut self.members[m.family().index()]);
        if let Some(n) = map.get_mut(&m) {
            *n -= 1;
            if *n == 0 {
                map.remove(&m);
            }
        }
    }
}

/// The index of everything policy depends on.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: HashMap<String, Namespace>,
    pods: HashMap<PodKey, Pod>,
    /// Pods the API deleted that a local endpoint still refers to: kept so
    /// the endpoint keeps its last known policy until it is detached.
    gone: BTreeSet<PodKey>,
    pods_by_ns: HashMap<String, BTreeSet<String>>,
    policies: BTreeMap<PodKey, Arc<Policy>>,
    policies_by_ns: HashMap<String, BTreeSet<String>>,
    /// ClusterNetworkPolicies by name.
    cluster: BTreeMap<String, Arc<ClusterPolicy>>,
    nodes: BTreeMap<String, Node>,
    /// The endpoint in force per host interface: the newest attachment.
    endpoints: BTreeMap<String, Endpoint>,
    /// Older attachments of an interface a newer sandbox of the same pod
    /// took over, oldest first. Detaching one changes nothing in force;
    /// detaching the newest (a failed ADD's rollback) puts the previous
    /// one back in force.
    standby: BTreeMap<String, Vec<Endpoint>>,
    endpoints_by_pod: HashMap<PodKey, BTreeSet<String>>,
    /// The selectable pods holding each address (see [`Index::owner_of`]).
    owners: HashMap<IpAddr, Owners>,
    sets: BTreeMap<SetKey, SetData>,
    /// Bumped by every change; the engine syncs when it moves.
    generation: u64,
    /// Set when policies or endpoints changed, so the active sets must be
    /// recomputed before compiling.
    sets_stale: bool,
    /// The mode of policies that do not name one.
    default_mode: Mode,
    /// Each endpoint's selection as [`Index::refresh_sets`] last worked it
    /// out, and what changed since (see [`Selections`]).
    selections: Selections,
    /// The policies and cluster policies active at the last
    /// [`Index::refresh_sets`] (by key; the very objects), and how many of
    /// them need each set: a refresh looks only at the policies that came,
    /// went or changed since.
    active: BTreeMap<ActiveKey, Active>,
    wanted: HashMap<SetKey, u32>,
}

/// The pods holding one address: almost always one (a map entry costs
/// no set), several only while an address is reused.
#[derive(Debug)]
enum Owners {
    One(PodKey),
    Many(BTreeSet<PodKey>),
}

impl Owners {
    fn add(&mut self, pk: &PodKey) {
        match self {
            Owners::One(k) if k == pk => {}
            Owners::One(k) => {
                *self = Owners::Many(BTreeSet::from([k.clone(), pk.clone()]));
            }
            Owners::Many(keys) => {
                keys.insert(pk.clone());
            }
        }
    }

    /// Removes `pk`; true when no owner is left.
    fn remove(&mut self, pk: &PodKey) -> bool {
        match self {
            Owners::One(k) => k == pk,
            Owners::Many(keys) => {
                keys.remove(pk);
                if keys.len() <= 1 {
                    match keys.pop_first() {
                        Some(last) => *self = Owners::One(last),
                        None => return true,
                    }
                }
                false
            }
        }
    }
}

/// An active policy or cluster policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ActiveKey {
    Policy(PodKey),
    Cluster(String),
}

#[derive(Debug, Clone)]
enum Active {
    Policy(Arc<Policy>),
    Cluster(Arc<ClusterPolicy>),
}

impl Active {
    fn same(&self, other: &Active) -> bool {
        match (self, other) {
            (Active::Policy(a), Active::Policy(b)) => Arc::ptr_eq(a, b),
            (Active::Cluster(a), Active::Cluster(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn sets(&self) -> BTreeSet<SetKey> {
        match self {
            Active::Policy(p) => Index::sets_of(p),
            Active::Cluster(p) => Index::sets_of_cluster(p),
        }
    }
}

/// The policies selecting each endpoint, kept between compiles: working
/// them out means matching every cluster policy's selectors and the pod's
/// namespace's policies against the pod, for every endpoint, several times
/// per compile. A change marks what it can alter, and only that is worked
/// out again: a pod's change its own endpoints, a NetworkPolicy's or a
/// namespace's the endpoints in that namespace, a cluster policy's all.
#[derive(Debug, Default)]
struct Selections {
    /// By interface: the pod it was worked out for, and the selection.
    cached: BTreeMap<String, (PodKey, Selection)>,
    all_stale: bool,
    stale_namespaces: BTreeSet<String>,
    stale_pods: BTreeSet<PodKey>,
}

impl Selections {
    fn get(&self, ep: &Endpoint) -> Option<&Selection> {
        let (pod, selection) = self.cached.get(&ep.interface)?;
        let fresh = *pod == ep.pod
            && !self.all_stale
            && !self.stale_namespaces.contains(&ep.pod.namespace)
            && !self.stale_pods.contains(&ep.pod);
        fresh.then_some(selection)
    }

    fn pod_changed(&mut self, key: &PodKey) {
        if !self.all_stale {
            self.stale_pods.insert(key.clone());
        }
    }

    fn namespace_changed(&mut self, namespace: &str) {
        if !self.all_stale {
            self.stale_namespaces.insert(namespace.to_string());
        }
    }

    fn all_changed(&mut self) {
        self.all_stale = true;
        self.stale_namespaces.clear();
        self.stale_pods.clear();
    }
}

/// Policies that select one endpoint, per direction, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub ingress: Vec<Arc<Policy>>,
    pub egress: Vec<Arc<Policy>>,
    /// Cluster policies of the Admin tier with rules in each direction
    /// (indexed by [`Direction::index`]), in evaluation order.
    pub admin: [Vec<Arc<ClusterPolicy>>; 2],
    /// The same for the Baseline tier.
    pub baseline: [Vec<Arc<ClusterPolicy>>; 2],
}

impl Selection {
    /// The policies that are enforced (audited ones left out), with the
    /// mode of policies naming none being `default`.
    pub fn enforced(&self, default: Mode) -> Selection {
        let np = |l: &[Arc<Policy>]| -> Vec<Arc<Policy>> {
            l.iter()
                .filter(|p| !p.mode.audited(default))
                .cloned()
                .collect()
        };
        let cnp = |l: &[Vec<Arc<ClusterPolicy>>; 2]| -> [Vec<Arc<ClusterPolicy>>; 2] {
            [0, 1].map(|i| {
                l[i].iter()
                    .filter(|p| !p.mode.audited(default))
                    .cloned()
                    .collect()
            })
        };
        Selection {
            ingress: np(&self.ingress),
            egress: np(&self.egress),
            admin: cnp(&self.admin),
            baseline: cnp(&self.baseline),
        }
    }

    /// Whether an audited policy selects the endpoint in `dir`.
    pub fn audits(&self, dir: Direction, default: Mode) -> bool {
        self.get(dir).iter().any(|p| p.mode.audited(default))
            || Tier::BOTH
                .iter()
                .any(|t| self.tier(*t, dir).iter().any(|p| p.mode.audited(default)))
    }

    pub fn get(&self, dir: Direction) -> &[Arc<Policy>] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn tier(&self, tier: Tier, dir: Direction) -> &[Arc<ClusterPolicy>] {
        match tier {
            Tier::Admin => &self.admin[dir.index()],
            Tier::Baseline => &self.baseline[dir.index()],
        }
    }

    /// True when no policy of any tier selects the endpoint in `dir`.
    pub fn open(&self, dir: Direction) -> bool {
        self.get(dir).is_empty() && Tier::BOTH.iter().all(|t| self.tier(*t, dir).is_empty())
    }
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The mode of policies that name none (the agent's flag).
    pub fn set_default_mode(&mut self, mode: Mode) {
        let mode = if mode == Mode::Inherit {
            Mode::Enforce
        } else {
            mode
        };
        if self.default_mode != mode {
            self.default_mode = mode;
            self.touch();
        }
    }

    pub fn default_mode(&self) -> Mode {
        match self.default_mode {
            Mode::Inherit => Mode::Enforce,
            m => m,
        }
    }

    fn touch(&mut self) {
        self.generation += 1;
    }

    // ---- namespaces ----

    pub fn apply_namespace(&mut self, ns: Namespace) {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        let name = ns.name.clone();
        let labels_changed = self.namespaces.get(&name).map(|o| &o.labels) != Some(&ns.labels);
        let members = self.pods_in(&name);
        if labels_changed {
            for p in &members {
                self.retract(p);
            }
        }
        self.selections.namespace_changed(&name);
        self.namespaces.insert(name, ns);
        if labels_changed {
            for p in &members {
                self.assert(p);
            }
            // Cluster policies select their subjects by namespace labels.
            self.sets_stale |= !self.cluster.is_empty();
        }
        self.touch();
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if !self.namespaces.contains_key(name) {
            return;
        }
        let members = self.pods_in(name);
        for p in &members {
            self.retract(p);
        }
        self.namespaces.remove(name);
        self.selections.namespace_changed(name);
        for p in &members {
            self.assert(p);
        }
        self.sets_stale |= !self.cluster.is_empty();
        self.touch();
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    fn pods_in(&self, ns: &str) -> Vec<PodKey> {
        self.pods_by_ns
            .get(ns)
            .map(|names| names.iter().map(|n| PodKey::new(ns, n)).collect())
            .unwrap_or_default()
    }

    // ---- pods ----

    pub fn apply_pod(&mut self, pod: Pod) {
        let key = pod.key.clone();
        if self.pods.get(&key) == Some(&pod) && !self.gone.contains(&key) {
            return;
        }
        self.retract(&key);
        self.gone.remove(&key);
        self.pods_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone());
        self.pods.insert(key.clone(), pod);
        self.assert(&key);
        if self.endpoints_by_pod.contains_key(&key) {
            self.sets_stale = true;
            self.selections.pod_changed(&key);
        }
        self.touch();
    }

    pub fn delete_pod(&mut self, key: &PodKey) {
        if !self.pods.contains_key(key) {
            return;
        }
        if self.endpoints_by_pod.contains_key(key) {
            // The endpoint is still attached: keep enforcing its last
            // known policy until the CNI detaches it.
            self.gone.insert(key.clone());
            return;
        }
        self.retract(key);
        self.remove_pod_record(key);
        self.touch();
    }

    fn remove_pod_record(&mut self, key: &PodKey) {
        if self.endpoints_by_pod.contains_key(key) {
            self.selections.pod_changed(key);
        }
        self.pods.remove(key);
        self.gone.remove(key);
        if let Some(names) = self.pods_by_ns.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.pods_by_ns.remove(&key.namespace);
            }
        }
    }

    pub fn pod(&self, key: &PodKey) -> Option<&Pod> {
        self.pods.get(key)
    }

    pub fn pod_keys(&self) -> Vec<PodKey> {
        self.pods.keys().cloned().collect()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    // ---- policies ----

    pub fn apply_policy(&mut self, policy: Policy) {
        let key = policy.key();
        if self.policies.get(&key).map(|p| p.as_ref()) == Some(&policy) {
            return;
        }
        self.policies_by_ns
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone());
        self.selections.namespace_changed(&key.namespace);
        self.policies.insert(key, Arc::new(policy));
        self.sets_stale = true;
        self.touch();
    }

    pub fn delete_policy(&mut self, key: &PodKey) {
        if self.policies.remove(key).is_none() {
            return;
        }
        self.selections.namespace_changed(&key.namespace);
        if let Some(names) = self.policies_by_ns.get_mut(&key.namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.policies_by_ns.remove(&key.namespace);
            }
        }
        self.sets_stale = true;
        self.touch();
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    pub fn policy_keys(&self) -> Vec<PodKey> {
        self.policies.keys().cloned().collect()
    }

    pub fn policy(&self, key: &PodKey) -> Option<&Arc<Policy>> {
        self.policies.get(key)
    }

    // ---- endpoints ----

    /// Adds or updates a local endpoint. The pod should be known (applied)
    /// first; until it is, the endpoint is enforced with no labels. The
    /// newest attachment of an interface is the one in force; one it
    /// replaces waits on standby until its owner detaches it.
    pub fn apply_endpoint(&mut self, ep: Endpoint) {
        if self.endpoints.get(&ep.interface) == Some(&ep) {
            return;
        }
        let replaced = self.endpoints.get(&ep.interface).cloned();
        if let Some(old) = &replaced {
            self.remove_endpoint_inner(old);
        }
        let standby = self.standby.entry(ep.interface.clone()).or_default();
        standby.retain(|s| s.owner != ep.owner);
        if let Some(old) = replaced
            && old.owner != ep.owner
        {
            standby.push(old);
        }
        if standby.is_empty() {
            self.standby.remove(&ep.interface);
        }
        self.insert_endpoint(ep);
    }

    fn insert_endpoint(&mut self, ep: Endpoint) {
        let pod = ep.pod.clone();
        self.selections.pod_changed(&pod);
        self.retract(&pod);
        self.endpoints_by_pod
            .entry(pod.clone())
            .or_default()
            .insert(ep.interface.clone());
        self.endpoints.insert(ep.interface.clone(), ep);
        self.assert(&pod);
        self.sets_stale = true;
        self.touch();
    }

    /// Removes `owner`'s endpoint on `interface`. Another attachment's
    /// endpoint on the same interface (a newer sandbox of the pod) stays in
    /// force; if `owner`'s was in force, the previous attachment comes back.
    pub fn delete_endpoint(&mut self, interface: &str, owner: &Attachment) {
        let Some(ep) = self
            .endpoints
            .get(interface)
            .filter(|ep| ep.owner == *owner)
            .cloned()
        else {
            self.drop_standby(interface, owner);
            return;
        };
        match self.pop_standby(interface) {
            Some(previous) if previous.pod == ep.pod => {
                // Same pod: swap in place, so a pod the API already
                // deleted keeps its record (and its labels) meanwhile.
                self.retract(&ep.pod);
                self.selections.pod_changed(&ep.pod);
                self.endpoints.insert(interface.to_string(), previous);
                self.assert(&ep.pod);
            }
            previous => {
                self.remove_endpoint_inner(&ep);
                if let Some(previous) = previous {
                    self.insert_endpoint(previous);
                }
            }
        }
        self.sets_stale = true;
        self.touch();
    }

    fn pop_standby(&mut self, interface: &str) -> Option<Endpoint> {
        let list = self.standby.get_mut(interface)?;
        let previous = list.pop();
        if list.is_empty() {
            self.standby.remove(interface);
        }
        previous
    }

    fn drop_standby(&mut self, interface: &str, owner: &Attachment) {
        if let Some(list) = self.standby.get_mut(interface) {
            list.retain(|s| s.owner != *owner);
            if list.is_empty() {
                self.standby.remove(interface);
            }
        }
    }

    fn remove_endpoint_inner(&mut self, ep: &Endpoint) {
        self.retract(&ep.pod);
        self.selections.pod_changed(&ep.pod);
        self.endpoints.remove(&ep.interface);
        let mut last = false;
        if let Some(ifs) = self.endpoints_by_pod.get_mut(&ep.pod) {
            ifs.remove(&ep.interface);
            last = ifs.is_empty();
        }
        if last {
            self.endpoints_by_pod.remove(&ep.pod);
            if self.gone.contains(&ep.pod) {
                self.remove_pod_record(&ep.pod);
                return;
            }
        }
        self.assert(&ep.pod);
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    pub fn endpoint(&self, interface: &str) -> Option<&Endpoint> {
        self.endpoints.get(interface)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The labels policy sees for an endpoint (its pod's, or none when the
    /// pod is unknown).
    pub fn endpoint_pod(&self, ep: &Endpoint) -> Option<&Pod> {
        self.pods.get(&ep.pod)
    }

    /// Addresses of a pod as peers see them: its status IPs and the IPs of
    /// its local endpoints (known before the kubelet reports them).
    pub fn pod_ips(&self, key: &PodKey) -> BTreeSet<IpAddr> {
        let mut ips: BTreeSet<IpAddr> = self
            .pods
            .get(key)
            .map(|p| p.ips.iter().copied().collect())
            .unwrap_or_default();
        if let Some(ifs) = self.endpoints_by_pod.get(key) {
            for i in ifs {
                if let Some(ep) = self.endpoints.get(i) {
                    ips.extend(ep.ips.iter().copied());
                }
            }
        }
        ips
    }

    // ---- selection ----

    /// The policies that select `ep`, per direction, ordered by name: as
    /// [`Index::refresh_sets`] last worked it out, unless a change since
    /// may have altered it.
    pub fn selection(&self, ep: &Endpoint) -> Cow<'_, Selection> {
        match self.selections.get(ep) {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.select(ep)),
        }
    }

    /// Works out which policies select `ep`.
    fn select(&self, ep: &Endpoint) -> Selection {
        let mut out = Selection::default();
        let Some(pod) = self.pods.get(&ep.pod) else {
            return out;
        };
        if !pod.selectable() {
            return out;
        }
        self.select_cluster(pod, &mut out);
        let Some(names) = self.policies_by_ns.get(&ep.pod.namespace) else {
            return out;
        };
        for name in names {
            let Some(policy) = self.policies.get(&PodKey::new(&ep.pod.namespace, name)) else {
                continue;
            };
            if !policy.pod_selector.matches(&pod.labels) {
                continue;
            }
            if policy.types.ingress {
                out.ingress.push(policy.clone());
            }
            if policy.types.egress {
                out.egress.push(policy.clone());
            }
        }
        out
    }

    /// Policies that select at least one local endpoint.
    pub fn active_policies(&self) -> BTreeMap<PodKey, Arc<Policy>> {
        let mut out = BTreeMap::new();
        // Most endpoints share their policies: each object's key once.
        let mut seen = std::collections::HashSet::new();
        for ep in self.endpoints.values() {
            let sel = self.selection(ep);
            for p in sel.ingress.iter().chain(sel.egress.iter()) {
                if seen.insert(Arc::as_ptr(p)) {
                    out.insert(p.key(), p.clone());
                }
            }
        }
        out
    }

    /// The sets `policy` needs.
    pub fn sets_of(policy: &Policy) -> BTreeSet<SetKey> {
        let mut keys = BTreeSet::new();
        for dir in Direction::BOTH {
            if !policy.applies(dir) {
                continue;
            }
            for rule in policy.rules(dir) {
                for peer in &rule.peers {
                    keys.insert(SetKey::for_peer(&policy.namespace, peer));
                }
                for port in &rule.ports {
                    if let Some(PortRef::Name(name)) = &port.port {
                        keys.insert(SetKey::NamedPort { name: name.clone() });
                    }
                }
            }
        }
        keys
    }

    /// Brings the active sets in line with the active policies: new sets
    /// are filled from the whole index, unused ones dropped. Cheap when
    /// nothing that decides activity changed.
    pub fn refresh_sets(&mut self) {
        self.refresh_selections();
        if !self.sets_stale {
            return;
        }
        self.sets_stale = false;
        let mut active: BTreeMap<ActiveKey, Active> = self
            .active_policies()
            .into_iter()
            .map(|(k, p)| (ActiveKey::Policy(k), Active::Policy(p)))
            .collect();
        active.extend(
            self.active_cluster_policies()
                .into_iter()
                .map(|(k, p)| (ActiveKey::Cluster(k), Active::Cluster(p))),
        );
        // Count the sets of the policies that went or changed out, and of
        // those that came or changed in.
        let last = std::mem::take(&mut self.active);
        let mut gone: BTreeSet<SetKey> = BTreeSet::new();
        for (key, was) in &last {
            if active.get(key).is_some_and(|now| now.same(was)) {
                continue;
            }
            for set in was.sets() {
                if let Some(n) = self.wanted.get_mut(&set) {
                    *n -= 1;
                    if *n == 0 {
                        self.wanted.remove(&set);
                        gone.insert(set);
                    }
                }
            }
        }
        let mut came: Vec<SetKey> = Vec::new();
        for (key, now) in &active {
            if last.get(key).is_some_and(|was| was.same(now)) {
                continue;
            }
            for set in now.sets() {
                let n = self.wanted.entry(set.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    came.push(set);
                }
            }
        }
        self.active = active;
        for key in gone {
            if !self.wanted.contains_key(&key) {
                self.sets.remove(&key);
            }
        }
        for key in came {
            if !self.sets.contains_key(&key) {
                let data = self.fill(&key);
                self.sets.insert(key, data);
            }
        }
    }

    /// Works out again the selections a change may have altered, and
    /// forgets those of endpoints that are gone.
    fn refresh_selections(&mut self) {
        let worked: Vec<(String, PodKey, Selection)> = self
            .endpoints
            .values()
            .filter(|ep| self.selections.get(ep).is_none())
            .map(|ep| (ep.interface.clone(), ep.pod.clone(), self.select(ep)))
            .collect();
        let endpoints = &self.endpoints;
        let s = &mut self.selections;
        s.cached
            .retain(|interface, _| endpoints.contains_key(interface));
        for (interface, pod, selection) in worked {
            s.cached.insert(interface, (pod, selection));
        }
        s.all_stale = false;
        s.stale_namespaces.clear();
        s.stale_pods.clear();
    }

    /// The active sets; call [`Index::refresh_sets`] first.
    pub fn sets(&self) -> &BTreeMap<SetKey, SetData> {
        &self.sets
    }

    fn fill(&self, key: &SetKey) -> SetData {
        let mut data = SetData::default();
        match key {
            SetKey::Block { cidr, except } => {
                for c in net_entries(cidr) {
                    data.add(Member::Net {
                        cidr: c,
                        nomatch: false,
                    });
                }
                for c in except {
                    if c.prefix_len() == 0 {
                        // Excepting everything: remove the positive entries.
                        data = SetData::default();
                        break;
                    }
                    data.add(Member::Net {
                        cidr: *c,
                        nomatch: true,
                    });
                }
            }
            SetKey::Pods { scope, pods } => {
                // What `contribution` decides per pod, with the namespace
                // selector evaluated once per namespace, not once per pod.
                let namespaces: Vec<&String> = match scope {
                    NsScope::Own(ns) => vec![ns],
                    NsScope::Matching(sel) => self
                        .namespaces
                        .iter()
                        .filter(|(_, n)| sel.matches(&n.labels))
                        .map(|(name, _)| name)
                        .collect(),
                };
                for ns in namespaces {
                    for name in self.pods_by_ns.get(ns).into_iter().flatten() {
                        let pk = PodKey::new(ns, name);
                        let Some(pod) = self.pods.get(&pk) else {
                            continue;
                        };
                        if pod.selectable() && pods.matches(&pod.labels) {
                            for ip in self.pod_ips(&pk) {
                                data.add(Member::Ip(ip));
                            }
                        }
                    }
                }
            }
            SetKey::Nodes { nodes } => data = self.fill_nodes(nodes),
            SetKey::NamedPort { .. } => {
                for pk in self.pods.keys() {
                    for m in self.contribution(key, pk) {
                        data.add(m);
                    }
                }
            }
        }
        data
    }

    /// What one pod puts into one set, from the current state.
    fn contribution(&self, key: &SetKey, pk: &PodKey) -> Vec<Member> {
        let Some(pod) = self.pods.get(pk) else {
            return Vec::new();
        };
        if !pod.selectable() {
            return Vec::new();
        }
        match key {
            SetKey::Block { .. } | SetKey::Nodes { .. } => Vec::new(),
            SetKey::Pods { scope, pods } => {
                let ns_ok = match scope {
                    NsScope::Own(ns) => *ns == pk.namespace,
                    NsScope::Matching(sel) => self
                        .namespaces
                        .get(&pk.namespace)
                        .is_some_and(|n| sel.matches(&n.labels)),
                };
                if ns_ok && pods.matches(&pod.labels) {
                    self.pod_ips(pk).into_iter().map(Member::Ip).collect()
                } else {
                    Vec::new()
                }
            }
            SetKey::NamedPort { name } => {
                let ips = self.pod_ips(pk);
                pod.named_ports
                    .iter()
                    .filter(|p| &p.name == name)
                    .flat_map(|p| ips.iter().map(|ip| Member::IpPort(*ip, p.protocol, p.port)))
                    .collect()
            }
        }
    }

    fn retract(&mut self, pk: &PodKey) {
        self.disown(pk);
        let keys: Vec<SetKey> = self.sets.keys().cloned().collect();
        for k in keys {
            for m in self.contribution(&k, pk) {
                if let Some(d) = self.sets.get_mut(&k) {
                    d.remove(m);
                }
            }
        }
    }

    fn assert(&mut self, pk: &PodKey) {
        if self.pods.get(pk).is_some_and(Pod::selectable) {
            for ip in self.pod_ips(pk) {
                match self.owners.entry(ip) {
                    Entry::Vacant(v) => {
                        v.insert(Owners::One(pk.clone()));
                    }
                    Entry::Occupied(mut o) => o.get_mut().add(pk),
                }
            }
        }
        let keys: Vec<SetKey> = self.sets.keys().cloned().collect();
        for k in keys {
            for m in self.contribution(&k, pk) {
                if let Some(d) = self.sets.get_mut(&k) {
                    d.add(m);
                }
            }
        }
    }

    /// Takes `pk` out of the owners of the addresses it holds (before a
    /// change, as [`Index::retract`] runs: every change of a pod or an
    /// endpoint retracts, changes, then asserts).
    fn disown(&mut self, pk: &PodKey) {
        if !self.pods.get(pk).is_some_and(Pod::selectable) {
            return;
        }
        for ip in self.pod_ips(pk) {
            if let Entry::Occupied(mut o) = self.owners.entry(ip)
                && o.get_mut().remove(pk)
            {
                o.remove();
            }
        }
    }

    /// Whether a selectable pod holds `ip`.
    pub fn owns_address(&self, ip: &IpAddr) -> bool {
        self.owners.contains_key(ip)
    }

    /// The selectable pod holding `ip` (its status IPs or a local
    /// endpoint's), for flow evaluation; of several (an address reused
    /// before the old pod's deletion was seen), the first by key. Kept as
    /// pods and endpoints change, so a lookup costs no walk of the pods.
    pub fn owner_of(&self, ip: &IpAddr) -> Option<&PodKey> {
        match self.owners.get(ip)? {
            Owners::One(k) => Some(k),
            Owners::Many(keys) => keys.first(),
        }
    }

    /// Every address's owner, as [`Index::owner_of`] answers (for tests).
    pub fn ip_owners(&self) -> BTreeMap<IpAddr, PodKey> {
        self.owners
            .keys()
            .filter_map(|ip| Some((*ip, self.owner_of(ip)?.clone())))
            .collect()
    }

    /// Replaces every namespace with `all` (after a relist), applying only
    /// the differences.
    pub fn replace_namespaces(&mut self, all: Vec<Namespace>) {
        let keep: BTreeSet<String> = all.iter().map(|n| n.name.clone()).collect();
        for name in self.namespace_names() {
            if !keep.contains(&name) {
                self.delete_namespace(&name);
            }
        }
        for n in all {
            self.apply_namespace(n);
        }
    }

    pub fn replace_pods(&mut self, all: Vec<Pod>) {
        let keep: BTreeSet<PodKey> = all.iter().map(|p| p.key.clone()).collect();
        for key in self.pod_keys() {
            if !keep.contains(&key) {
                self.delete_pod(&key);
            }
        }
        for p in all {
            self.apply_pod(p);
        }
    }

    pub fn replace_policies(&mut self, all: Vec<Policy>) {
        let keep: BTreeSet<PodKey> = all.iter().map(|p| p.key()).collect();
        for key in self.policy_keys() {
            if !keep.contains(&key) {
                self.delete_policy(&key);
            }
        }
        for p in all {
            self.apply_policy(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortMatch, Rule};

    fn ep(ns: &str, pod: &str, iface: &str, ip: &str) -> Endpoint {
        Endpoint {
            pod: PodKey::new(ns, pod),
            interface: iface.into(),
            ips: vec![ip.parse().unwrap()],
            owner: Attachment::new(format!("sandbox-of-{pod}"), "eth0"),
        }
    }

    fn owned(ep: Endpoint, container: &str) -> Endpoint {
        Endpoint {
            owner: Attachment::new(container, "eth0"),
            ..ep
        }
    }

    /// Who is in force on `interface`: (owner's container, first address).
    fn in_force(idx: &Index, interface: &str) -> Option<(String, String)> {
        idx.endpoint(interface)
            .map(|e| (e.owner.container_id.clone(), e.ips[0].to_string()))
    }

    fn members(idx: &Index, key: &SetKey, fam: Family) -> Vec<String> {
        idx.sets()
            .get(key)
            .map(|d| d.members[fam.index()].keys().map(|m| m.render()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn owns_address_answers_as_the_owner_map_does() {
        let mut idx = Index::new();
        idx.apply_pod(Pod::new("x", "a").ip("10.0.0.1"));
        let mut gone = Pod::new("x", "t").ip("10.0.0.2");
        gone.terminated = true;
        idx.apply_pod(gone);
        // an endpoint's address counts before the kubelet reports it
        idx.apply_pod(Pod::new("x", "c"));
        idx.apply_endpoint(ep("x", "c", "udl1", "10.0.0.3"));
        // an endpoint whose pod is unknown owns nothing
        idx.apply_endpoint(ep("x", "u", "udl2", "10.0.0.4"));
        let owners = idx.ip_owners();
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(idx.owns_address(&ip), owners.contains_key(&ip), "{ip}");
        }
        assert!(idx.owns_address(&"10.0.0.3".parse().unwrap()));
        assert!(!idx.owns_address(&"10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn a_reused_address_keeps_an_owner_until_its_last_pod_lets_go() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let mut idx = Index::new();
        idx.apply_pod(Pod::new("x", "old").ip("10.0.0.9"));
        idx.apply_pod(Pod::new("y", "new").ip("10.0.0.9"));
        assert_eq!(idx.owner_of(&ip), Some(&PodKey::new("x", "old")));
        idx.delete_pod(&PodKey::new("x", "old"));
        assert_eq!(idx.owner_of(&ip), Some(&PodKey::new("y", "new")));
        // It moves to another address, then finishes: nobody owns either.
        idx.apply_pod(Pod::new("y", "new").ip("10.0.0.8"));
        assert_eq!(idx.owner_of(&ip), None);
        let mut done = Pod::new("y", "new").ip("10.0.0.8");
        done.terminated = true;
        idx.apply_pod(done);
        assert!(idx.ip_owners().is_empty());
    }

    #[test]
    fn sets_follow_pods_namespaces_and_endpoints_incrementally() {
        let mut idx = Index::new();
        idx.apply_namespace(Namespace::new("x").label("team", "a"));
        idx.apply_namespace(Namespace::new("y"));
        idx.apply_pod(Pod::new("x", "a").label("app", "a").ip("10.0.0.1"));
        idx.apply_pod(Pod::new("y", "b").label("app", "b").ip("10.0.0.2"));
        idx.apply_pod(Pod::new("x", "c").label("app", "c"));
        let mut pol = Policy::new("x", "p", Selector::everything());
        pol.ingress = vec![Rule::from(vec![Peer::namespaces(Selector::labels([(
            "team", "a",
        )]))])];
        idx.apply_policy(pol);
        idx.apply_endpoint(ep("x", "c", "udl1", "10.0.0.3"));
        idx.refresh_sets();
        let key = SetKey::Pods {
            scope: NsScope::Matching(Selector::labels([("team", "a")])),
            pods: Selector::everything(),
        };
        assert_eq!(members(&idx, &key, Family::V4), ["10.0.0.1", "10.0.0.3"]);
        // namespace y joins the selector
        idx.apply_namespace(Namespace::new("y").label("team", "a"));
        assert_eq!(
            members(&idx, &key, Family::V4),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        // pod a moves to a new address, then terminates
        let mut a = Pod::new("x", "a").label("app", "a").ip("10.0.0.9");
        idx.apply_pod(a.clone());
        assert_eq!(
            members(&idx, &key, Family::V4),
            ["10.0.0.2", "10.0.0.3", "10.0.0.9"]
        );
        a.terminated = true;
        idx.apply_pod(a);
        assert_eq!(members(&idx, &key, Family::V4), ["10.0.0.2", "10.0.0.3"]);
        // the endpoint's pod is deleted in the API while attached: kept
        idx.delete_pod(&PodKey::new("x", "c"));
        assert_eq!(members(&idx, &key, Family::V4), ["10.0.0.2", "10.0.0.3"]);
        idx.delete_endpoint("udl1", &Attachment::new("sandbox-of-c", "eth0"));
        assert!(idx.pod(&PodKey::new("x", "c")).is_none());
        // no endpoint left: the policy is inactive and its set goes
        idx.refresh_sets();
        assert!(idx.sets().is_empty());
    }

    #[test]
    fn a_late_detach_of_a_replaced_sandbox_leaves_the_new_one_in_force() {
        let mut idx = Index::new();
        idx.apply_pod(Pod::new("x", "web").ip("10.0.0.2"));
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.1"), "c1"));
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.2"), "c2"));
        let want = Some(("c2".to_string(), "10.0.0.2".to_string()));
        assert_eq!(in_force(&idx, "udl1"), want);
        let generation = idx.generation();
        idx.delete_endpoint("udl1", &Attachment::new("c1", "eth0"));
        assert_eq!(in_force(&idx, "udl1"), want);
        assert_eq!(idx.generation(), generation, "nothing in force changed");
        assert_eq!(idx.endpoint_count(), 1);
        // Its own detach removes it, and nothing is left to come back.
        idx.delete_endpoint("udl1", &Attachment::new("c2", "eth0"));
        assert_eq!(in_force(&idx, "udl1"), None);
    }

    #[test]
    fn a_rolled_back_attach_puts_the_previous_sandbox_back_in_force() {
        let mut idx = Index::new();
        idx.apply_pod(Pod::new("x", "web"));
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.1"), "c1"));
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.2"), "c2"));
        idx.delete_endpoint("udl1", &Attachment::new("c2", "eth0"));
        assert_eq!(
            in_force(&idx, "udl1"),
            Some(("c1".to_string(), "10.0.0.1".to_string()))
        );
        assert_eq!(
            idx.pod_ips(&PodKey::new("x", "web")),
            ["10.0.0.1".parse().unwrap()].into()
        );
        // A repeated attach of the standby owner brings it to the front.
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.2"), "c2"));
        idx.apply_endpoint(owned(ep("x", "web", "udl1", "10.0.0.1"), "c1"));
        idx.delete_endpoint("udl1", &Attachment::new("c1", "eth0"));
        assert_eq!(
            in_force(&idx, "udl1"),
            Some(("c2".to_string(), "10.0.0.2".to_string()))
        );
    }

    #[test]
    fn named_port_sets_hold_each_pods_own_number() {
        let mut idx = Index::new();
        idx.apply_namespace(Namespace::new("x"));
        idx.apply_pod(
            Pod::new("x", "a")
                .ip("10.0.0.1")
                .port("web", Protocol::Tcp, 80),
        );
        idx.apply_pod(
            Pod::new("x", "b")
                .ip("fd00::2")
                .port("web", Protocol::Tcp, 8080),
        );
        idx.apply_pod(
            Pod::new("x", "c")
                .ip("10.0.0.3")
                .port("dns", Protocol::Udp, 53),
        );
        let mut pol = Policy::new("x", "p", Selector::everything());
        pol.ingress = vec![Rule::allow_all().ports(vec![PortMatch::named(Protocol::Tcp, "web")])];
        idx.apply_policy(pol);
        idx.apply_endpoint(ep("x", "a", "udl1", "10.0.0.1"));
        idx.refresh_sets();
        let key = SetKey::NamedPort { name: "web".into() };
        assert_eq!(members(&idx, &key, Family::V4), ["10.0.0.1,tcp:80"]);
        assert_eq!(members(&idx, &key, Family::V6), ["fd00::2,tcp:8080"]);
    }

    #[test]
    fn block_sets_use_nomatch_for_except_and_split_the_default_route() {
        let mut idx = Index::new();
        idx.apply_pod(Pod::new("x", "a"));
        let mut pol = Policy::new("x", "p", Selector::everything());
        pol.ingress = vec![Rule::from(vec![Peer::block("0.0.0.0/0", &["10.0.0.0/8"])])];
        idx.apply_policy(pol);
        idx.apply_endpoint(ep("x", "a", "udl1", "10.0.0.1"));
        idx.refresh_sets();
        let key = SetKey::Block {
            cidr: "0.0.0.0/0".parse().unwrap(),
            except: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(
            members(&idx, &key, Family::V4),
            ["0.0.0.0/1", "10.0.0.0/8 nomatch", "128.0.0.0/1"]
        );
    }

    #[test]
    fn members_parse_back_from_ipset_save() {
        for (kind, text, want) in [
            (SetKind::HashIp, "10.0.0.1", "10.0.0.1"),
            (SetKind::HashNet, "10.0.0.1", "10.0.0.1/32"),
            (
                SetKind::HashNet,
                "10.1.0.0/16 nomatch",
                "10.1.0.0/16 nomatch",
            ),
            (SetKind::HashIpPort, "fd00::1,sctp:81", "fd00::1,sctp:81"),
        ] {
            assert_eq!(Member::parse(kind, text).unwrap().render(), want);
        }
        assert!(Member::parse(SetKind::HashIp, "garbage").is_none());
        assert!(Member::parse(SetKind::HashIpPort, "10.0.0.1,icmp:0").is_none());
    }
}
