//! The engine: owns the index and the dataplane, and makes the node match
//! the compiled policy. It remembers what it programmed (one digest per
//! chain, the members of each set), writes only the difference — one
//! `iptables-restore --noflush` transaction per family and at most two
//! `ipset restore` batches — and at start-up adopts whatever a previous run
//! left, so enforcement never has an open or closed window.

use crate::compile::{
    self, CHAIN_PREFIX, Compiler, Config, Desired, DesiredSet, FROM_POD, HOOKS, Rules, SET_PREFIX,
    TO_POD, fnv64,
};
use crate::dataplane::{Dataplane, DataplaneError, split_words};
use crate::eval::{Evaluator, Flow};
use crate::index::{Index, Member, Members, SetKind};
use crate::metrics::{Metrics, ToolLabel};
use crate::model::Family;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the node's {what} failed: {source}")]
    Read {
        what: &'static str,
        source: DataplaneError,
    },
    #[error("writing {what} failed: {source}; the next sync re-reads the node and retries")]
    Write {
        what: &'static str,
        source: DataplaneError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `family` word `ipset` uses.
fn ipset_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

/// Sets with more changes than this (and more than half their size) are
/// rebuilt aside and swapped in, instead of edited member by member.
pub const SWAP_THRESHOLD: usize = 1000;

const MAXELEM: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainState {
    digest: Option<u64>,
    len: usize,
    /// A dispatch chain's entries (every rule but its final drop, in any
    /// order), when it ends with the drop and holds no entry twice; such a
    /// chain is edited in place instead of rewritten.
    entries: Option<BTreeSet<String>>,
    /// The rules of a chain without a digest, as saved (for a plain chain,
    /// see [`is_plain`]).
    verbatim: Option<Vec<String>>,
}

/// Chains that carry their rules instead of a digest: those of native
/// rules only ([`compile::native`]; every endpoint chain), which
/// `iptables-save` prints as written. Without the digest's comment match a
/// transaction that writes only such chains and dispatch entries uses
/// native expressions alone. With iptables-nft, a transaction holding a
/// match or target extension first waits for the kernel to release the
/// previous one's rules, which takes milliseconds after a deletion.
fn is_plain(rules: &[String]) -> bool {
    compile::native(rules)
}

/// The chains that dispatch by interface, one entry per endpoint and a
/// final drop. They carry no digest: entries are inserted and deleted in
/// place, which `iptables-restore` does without reading the whole table
/// (a flushed chain makes it read every rule first).
fn is_dispatch(name: &str) -> bool {
    name == FROM_POD || name == TO_POD
}

const DISPATCH_END: &str = "-j DROP";

/// Each family's chains by name, with their rules.
type Chains = [BTreeMap<String, Rules>; 2];

/// Whether the last sync wrote (or left) a chain with these very rules: a
/// chain the compiler kept is the very allocation written last time.
fn same_rules(last: Option<&Rules>, rules: &Rules) -> bool {
    last.is_some_and(|r| Arc::ptr_eq(r, rules) || r == rules)
}

/// Walks a map in name order beside another walk in name order: the entry
/// named `name`, if any, and the names passed over on the way (those the
/// other walk does not have).
struct Beside<'a, V> {
    iter: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, V>>,
}

impl<'a, V> Beside<'a, V> {
    fn new(map: &'a BTreeMap<String, V>) -> Self {
        Beside {
            iter: map.iter().peekable(),
        }
    }

    fn find(&mut self, name: &str, mut passed: impl FnMut(&'a String)) -> Option<&'a V> {
        while let Some((n, v)) = self.iter.peek() {
            match n.as_str().cmp(name) {
                std::cmp::Ordering::Less => passed(n),
                std::cmp::Ordering::Equal => {
                    let v = *v;
                    self.iter.next();
                    return Some(v);
                }
                std::cmp::Ordering::Greater => return None,
            }
            self.iter.next();
        }
        None
    }

    /// The names after the last one found.
    fn rest(self) -> impl Iterator<Item = &'a String> {
        self.iter.map(|(n, _)| n)
    }
}

/// What one family's chains become once its script is written.
#[derive(Default)]
struct ChainPlan {
    /// Chains (re)written, with the state they then have.
    written: Vec<(String, ChainState)>,
    /// Chains deleted.
    deleted: Vec<String>,
    /// Unused peers chains left on the node, with their rules.
    unused: BTreeMap<String, Rules>,
}

/// How many unused `UDL-M-` chains a family keeps before they are all
/// deleted in one change.
///
/// A peers chain holds `set` matches, xtables extensions for iptables-nft;
/// a transaction that writes one waits for the kernel to release the
/// extension rules the previous transaction deleted, milliseconds (20 ms
/// for a new pod on a small node, whose peers are often a combination no
/// other pod has). So a peers chain no rule jumps to any more stays, unused
/// (a packet never reaches it), and a pod with the same peers takes it up
/// again without writing it; they are deleted together once there are more
/// than this many, and at every repair.
pub const MAX_UNUSED_PEERS_CHAINS: usize = 64;

fn is_peers_chain(name: &str) -> bool {
    name.starts_with(compile::PEERS_PREFIX)
}

/// The words of `rule` that follow one of `options` (the targets of
/// `-j`/`-g`, the sets of `--match-set`).
fn named_by<'a>(rule: &'a str, options: &'a [&str]) -> impl Iterator<Item = &'a str> {
    let mut words = rule.split_ascii_whitespace();
    std::iter::from_fn(move || {
        loop {
            let w = words.next()?;
            if options.contains(&w)
                && let Some(named) = words.next()
            {
                return Some(named);
            }
        }
    })
}

/// The sets the rules match against.
fn sets_matched<'a>(rules: impl Iterator<Item = &'a String>) -> BTreeSet<&'a str> {
    rules.flat_map(|r| named_by(r, &["--match-set"])).collect()
}

/// What a chain's state should be once `rules` are programmed.
fn expected_state(name: &str, rules: &[String]) -> ChainState {
    if is_dispatch(name) {
        let entries = dispatch_entries(rules);
        return ChainState {
            digest: None,
            len: rules.len(),
            entries,
            verbatim: None,
        };
    }
    if is_plain(rules) {
        return ChainState {
            digest: None,
            len: rules.len(),
            entries: None,
            verbatim: Some(rules.to_vec()),
        };
    }
    ChainState {
        digest: Some(digest(rules)),
        len: rules.len() + 1,
        entries: None,
        verbatim: None,
    }
}

/// A dispatch chain's entries, if it is well formed (ends with the drop,
/// no entry twice, no other drop).
fn dispatch_entries(rules: &[String]) -> Option<BTreeSet<String>> {
    let (last, entries) = rules.split_last()?;
    if last != DISPATCH_END {
        return None;
    }
    let set: BTreeSet<String> = entries.iter().cloned().collect();
    (set.len() == entries.len() && !set.contains(DISPATCH_END)).then_some(set)
}

#[derive(Debug, Clone)]
struct SetState {
    kind: SetKind,
    family: Family,
    members: Arc<Members>,
}

/// Our jump in one built-in chain: how many copies, and whether one is the
/// chain's first rule. Anything before it (kube-proxy's `KUBE-FORWARD`
/// accepts marked and established packets) would decide first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hook {
    jumps: usize,
    first: bool,
}

impl Hook {
    const IN_PLACE: Hook = Hook {
        jumps: 1,
        first: true,
    };
}

/// What is on the node, as far as we know.
#[derive(Debug, Clone, Default)]
struct Programmed {
    chains: [BTreeMap<String, ChainState>; 2],
    hooks: [[Hook; 3]; 2],
    sets: BTreeMap<String, SetState>,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub chains_written: usize,
    pub chains_deleted: usize,
    /// Chains that existed with other rules (dispatch chains aside): a
    /// change that may deny what was allowed.
    pub rules_replaced: usize,
    pub sets_created: usize,
    pub sets_swapped: usize,
    pub sets_destroyed: usize,
    /// Sets no rule references any more that the kernel still held (it
    /// lets go of a deleted rule's sets shortly after the transaction);
    /// a later sync destroys them.
    pub sets_deferred: usize,
    pub members_added: usize,
    pub members_deleted: usize,
    /// Deleted members whose address still belongs to a pod (or a CIDR):
    /// a change that may deny what was allowed. Members that left with
    /// their deleted pod are not counted.
    pub members_narrowed: usize,
    /// The chains replaced and the sets narrowed: what could deny a
    /// connection that was allowed. Conntrack cleanup evaluates the
    /// connections of the endpoints whose chains lead to one of them.
    pub narrowing: Vec<String>,
    pub restore_calls: usize,
    pub conntrack_removed: usize,
    /// The node differed from what this engine last programmed.
    pub repaired: bool,
    /// Where the sync's time went, in microseconds per phase.
    pub phases: Phases,
}

/// The time of each phase of one sync, in microseconds (a phase that did
/// not run is 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Reading the node's rules and sets (after a start or a failure).
    pub read: u64,
    /// Refreshing the index's peer sets and compiling the desired state.
    pub compile: u64,
    /// Diffing and writing ipsets (`ipset restore`), destroys included.
    pub ipsets: u64,
    /// Diffing and writing chains (`iptables-restore`, both families).
    pub iptables: u64,
    /// Listing and deleting conntrack entries.
    pub conntrack: u64,
}

/// The line of an `ipset restore` script that `destroy` refused because
/// the set is still in use (by a rule the kernel has not yet released):
/// `Error in line N: Set cannot be destroyed: it is in use by a kernel
/// component`.
fn still_held(e: &DataplaneError) -> Option<usize> {
    let text = match e {
        DataplaneError::Failed { stderr, .. } => stderr,
        DataplaneError::Rejected(message) => message,
        _ => return None,
    };
    if !text.contains("in use by a kernel component") {
        return None;
    }
    crate::dataplane::failed_line(text)
        .map(|(n, _)| n)
        .filter(|n| *n >= 1)
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl SyncReport {
    pub fn wrote_nothing(&self) -> bool {
        self.restore_calls == 0
    }
}

/// Counters for operators (the gRPC `PolicyStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub policies: u64,
    pub cluster_policies: u64,
    pub endpoints: u64,
    pub rules: u64,
    pub ipset_members: u64,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    /// True once a sync has succeeded since the index was first filled.
    pub synced: bool,
}

pub struct Engine<D: Dataplane> {
    index: Index,
    config: Config,
    dataplane: D,
    programmed: Option<Programmed>,
    /// The chains the last sync made `programmed` hold, rule for rule: a
    /// chain compiled to the same rules again is left alone without
    /// digesting it. Only while `programmed` is what our writes made it.
    written: Option<Chains>,
    /// Compiles only the endpoints a change touched.
    compiler: Compiler,
    /// Per family, the peers chains on the node that no rule uses any more
    /// (see [`MAX_UNUSED_PEERS_CHAINS`]), with their rules.
    unused: [BTreeMap<String, Rules>; 2],
    metrics: Metrics,
    synced_generation: Option<u64>,
    dirty_since: Option<Instant>,
    sets_awaiting_destroy: usize,
    status: Status,
    conntrack_cleanup: bool,
    /// A conntrack cleanup failed: the next looks at every connection.
    cleanup_owed: bool,
}

impl<D: Dataplane> Engine<D> {
    pub fn new(dataplane: D, config: Config, metrics: Metrics) -> Engine<D> {
        Engine {
            index: Index::new(),
            config,
            dataplane,
            programmed: None,
            written: None,
            compiler: Compiler::default(),
            unused: Default::default(),
            metrics,
            synced_generation: None,
            dirty_since: None,
            sets_awaiting_destroy: 0,
            status: Status::default(),
            conntrack_cleanup: true,
            cleanup_owed: false,
        }
    }

    /// Turns the deletion of newly denied conntrack entries on or off.
    pub fn set_conntrack_cleanup(&mut self, on: bool) {
        self.conntrack_cleanup = on;
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Changes the index; the next [`Engine::sync`] programs the result.
    pub fn change<R>(&mut self, f: impl FnOnce(&mut Index) -> R) -> R {
        let before = self.index.generation();
        let r = f(&mut self.index);
        if self.index.generation() != before && self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        r
    }

    /// True when the index changed since the last successful sync.
    pub fn dirty(&self) -> bool {
        self.synced_generation != Some(self.index.generation())
    }

    /// Sets a sync left for a later one to destroy (the kernel still held
    /// them); any sync, even with no change, destroys them.
    pub fn sets_awaiting_destroy(&self) -> usize {
        self.sets_awaiting_destroy
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }

    pub fn dataplane(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Forgets what was programmed: the next sync reads the node first and
    /// rewrites whatever differs (periodic repair).
    pub fn invalidate(&mut self) {
        self.programmed = None;
    }

    /// Re-reads the node and fixes whatever differs from the policy.
    pub fn repair(&mut self) -> Result<SyncReport> {
        self.invalidate();
        self.sync()
    }

    /// Makes the node match the index.
    pub fn sync(&mut self) -> Result<SyncReport> {
        let started = Instant::now();
        let result = self.sync_inner();
        match &result {
            Ok(report) => {
                self.synced_generation = Some(self.index.generation());
                if let Some(t) = self.dirty_since.take() {
                    self.metrics
                        .change_to_dataplane_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                self.metrics
                    .apply_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.status.last_sync = Some(SystemTime::now());
                self.status.last_error = None;
                self.status.synced = true;
                if report.repaired {
                    self.metrics.repairs.inc();
                }
                debug!(
                    chains_written = report.chains_written,
                    chains_deleted = report.chains_deleted,
                    members_added = report.members_added,
                    members_deleted = report.members_deleted,
                    restores = report.restore_calls,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    read_us = report.phases.read,
                    compile_us = report.phases.compile,
                    ipsets_us = report.phases.ipsets,
                    iptables_us = report.phases.iptables,
                    conntrack_us = report.phases.conntrack,
                    "policy synced"
                );
            }
            Err(e) => {
                // What is on the node is now unknown: read it next time.
                self.programmed = None;
                self.status.last_error = Some(e.to_string());
                warn!(error = %e, "policy sync failed");
            }
        }
        result
    }

    fn count_restore(&self, tool: &str, ok: bool) {
        let label = ToolLabel { tool: tool.into() };
        self.metrics.restore_calls.get_or_create(&label).inc();
        if !ok {
            self.metrics.restore_failures.get_or_create(&label).inc();
        }
    }

    fn sync_inner(&mut self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let previous = self.programmed.take();
        let reread = previous.is_none();
        let written = self.written.take().filter(|_| !reread);
        let t = Instant::now();
        let mut programmed = match previous {
            Some(p) => p,
            None => self.read_node()?,
        };
        report.phases.read = micros_since(t);
        let t = Instant::now();
        self.index.refresh_sets();
        let desired = self.compiler.compile(&self.index, &self.config);
        report.phases.compile = micros_since(t);
        if reread && self.synced_generation.is_some() {
            // A re-read after we had programmed once: any difference is
            // someone else's doing (or a failed write) and is repaired.
            report.repaired = !self.matches(&programmed, &desired);
            if report.repaired {
                info!("policy dataplane differs from what was programmed; repairing");
            }
        }

        // Sets first, so rules can reference them; then the chains; then
        // the sets no rule references any more. A failed write leaves
        // `programmed` unset: the next sync reads the node again.
        let t = Instant::now();
        let obsolete_sets = self.write_sets(&mut programmed, &desired, &mut report)?;
        report.phases.ipsets = micros_since(t);
        let t = Instant::now();
        self.write_chains(&mut programmed, &desired, written.as_ref(), &mut report)?;
        report.phases.iptables = micros_since(t);
        let t = Instant::now();
        let still_matched = self.unused_sets();
        let obsolete_sets: Vec<String> = (obsolete_sets.into_iter())
            .filter(|s| !still_matched.contains(s.as_str()))
            .collect();
        self.destroy_sets(&mut programmed, &obsolete_sets, &mut report)?;
        report.phases.ipsets += micros_since(t);
        self.sets_awaiting_destroy = report.sets_deferred;

        self.programmed = Some(programmed);
        self.update_gauges(&desired);
        let Desired { chains, .. } = desired;
        self.written = Some(chains);

        if self.conntrack_cleanup {
            // Once: from now on the table is kept from events.
            self.dataplane.watch_flows();
        }

        // 4. Connections the change denies stop too.
        // Deleted chains alone deny nothing: an endpoint's go with its pod,
        // a policy's once no endpoint jumps to it (those endpoints' chains
        // are rewritten, which counts). Members that left a set with their
        // pod took only that pod's connections.
        if self.conntrack_cleanup && !report.narrowing.is_empty() {
            let t = Instant::now();
            let reached = match (&self.written, self.cleanup_owed) {
                (Some(chains), false) => reached_endpoints(chains, &report.narrowing),
                _ => None,
            };
            report.conntrack_removed = self.clean_conntrack(reached.as_ref());
            report.phases.conntrack = micros_since(t);
        }
        Ok(report)
    }

    /// Creates and fills the desired sets (one `ipset restore`); returns
    /// the sets to destroy once no rule references them.
    fn write_sets(
        &mut self,
        programmed: &mut Programmed,
        desired: &Desired,
        report: &mut SyncReport,
    ) -> Result<Vec<String>> {
        let (set_script, updated, obsolete_sets) = self.set_changes(programmed, desired, report);
        if !set_script.is_empty() {
            report.restore_calls += 1;
            let r = self.dataplane.restore_sets(&set_script);
            self.count_restore("ipset", r.is_ok());
            r.map_err(|source| Error::Write {
                what: "ipsets",
                source,
            })?;
        }
        for name in updated {
            let set = &desired.sets[&name];
            let state = SetState {
                kind: set.kind,
                family: set.family,
                members: set.members.clone(),
            };
            programmed.sets.insert(name, state);
        }
        Ok(obsolete_sets)
    }

    /// Brings the chains and hooks of each family to the desired ones, one
    /// `iptables-restore` transaction per family.
    fn write_chains(
        &mut self,
        programmed: &mut Programmed,
        desired: &Desired,
        written: Option<&Chains>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let mut plans: [ChainPlan; 2] = Default::default();
        let scripts: Vec<(Family, String)> = Family::ALL
            .into_iter()
            .filter_map(|family| {
                let written = written.map(|w| &w[family.index()]);
                let plan = &mut plans[family.index()];
                let script =
                    self.chain_changes(programmed, desired, family, written, plan, report)?;
                Some((family, script))
            })
            .collect();
        report.restore_calls += scripts.len();
        let results = self.dataplane.restore_filters(&scripts);
        let mut first_error = None;
        for ((family, _), r) in scripts.iter().zip(results) {
            let tool = match family {
                Family::V4 => "iptables-restore",
                Family::V6 => "ip6tables-restore",
            };
            self.count_restore(tool, r.is_ok());
            if let Err(source) = r {
                first_error.get_or_insert(Error::Write {
                    what: "iptables rules",
                    source,
                });
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for (family, plan) in Family::ALL.into_iter().zip(plans) {
            let chains = &mut programmed.chains[family.index()];
            for name in &plan.deleted {
                chains.remove(name);
            }
            chains.extend(plan.written);
            programmed.hooks[family.index()] = [Hook::IN_PLACE; 3];
            self.unused[family.index()] = plan.unused;
        }
        Ok(())
    }

    /// The sets the unused peers chains match against: kept while they are.
    fn unused_sets(&self) -> BTreeSet<&str> {
        sets_matched(
            self.unused
                .iter()
                .flat_map(|u| u.values())
                .flat_map(|r| r.iter()),
        )
    }

    /// Destroys the sets no rule references any more.
    fn destroy_sets(
        &mut self,
        programmed: &mut Programmed,
        obsolete: &[String],
        report: &mut SyncReport,
    ) -> Result<()> {
        if obsolete.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for name in obsolete {
            let _ = writeln!(script, "destroy {name}");
        }
        report.restore_calls += 1;
        let r = self.dataplane.restore_sets(&script);
        // `ipset restore` stops at the first refused line; those before it
        // are done. A set the kernel still holds waits for a later sync
        // (until then it stays in `programmed`, which is true).
        let held_at = r.as_ref().err().and_then(still_held);
        let destroyed = match (&r, held_at) {
            (Ok(()), _) => obsolete.len(),
            (Err(_), Some(line)) => line - 1,
            (Err(_), None) => 0,
        };
        let destroyed = destroyed.min(obsolete.len());
        for name in &obsolete[..destroyed] {
            programmed.sets.remove(name);
        }
        report.sets_destroyed = destroyed;
        report.sets_deferred = obsolete.len() - destroyed;
        let held = held_at.is_some();
        self.count_restore("ipset", r.is_ok() || held);
        if held {
            debug!(
                destroyed,
                deferred = report.sets_deferred,
                "the kernel still holds sets no rule references; a later sync destroys them"
            );
            return Ok(());
        }
        r.map_err(|source| Error::Write {
            what: "ipsets",
            source,
        })
    }

    fn update_gauges(&mut self, desired: &Desired) {
        let rules = desired.rule_count() as u64;
        let members = desired.member_count() as u64;
        self.metrics.policies.set(desired.policies as i64);
        self.metrics
            .cluster_policies
            .set(desired.cluster_policies as i64);
        self.metrics.endpoints.set(desired.endpoints as i64);
        self.metrics.rules.set(rules as i64);
        self.metrics.ipset_members.set(members as i64);
        self.status.policies = desired.policies as u64;
        self.status.cluster_policies = desired.cluster_policies as u64;
        self.status.endpoints = desired.endpoints as u64;
        self.status.rules = rules;
        self.status.ipset_members = members;
    }

    fn matches(&self, programmed: &Programmed, desired: &Desired) -> bool {
        for family in Family::ALL {
            let have = &programmed.chains[family.index()];
            let want = &desired.chains[family.index()];
            let unused = &self.unused[family.index()];
            let have_used = have.keys().filter(|n| !unused.contains_key(*n)).count();
            if have_used != want.len() || programmed.hooks[family.index()] != [Hook::IN_PLACE; 3] {
                return false;
            }
            for (name, rules) in want {
                if have.get(name) != Some(&expected_state(name, rules)) {
                    return false;
                }
            }
        }
        let unused_sets = self.unused_sets();
        let sets_used = (programmed.sets.keys())
            .filter(|n| desired.sets.contains_key(*n) || !unused_sets.contains(n.as_str()))
            .count();
        desired.sets.len() == sets_used
            && desired.sets.iter().all(|(name, d)| {
                programmed.sets.get(name).is_some_and(|p| {
                    p.kind == d.kind && p.family == d.family && keys_equal(&p.members, &d.members)
                })
            })
    }

    /// Reads our chains and sets from the node.
    fn read_node(&mut self) -> Result<Programmed> {
        let mut p = Programmed::default();
        for family in Family::ALL {
            let text = self
                .dataplane
                .save_filter(family)
                .map_err(|source| Error::Read {
                    what: "iptables rules",
                    source,
                })?;
            let (chains, hooks) = parse_save(&text);
            p.chains[family.index()] = chains;
            p.hooks[family.index()] = hooks;
        }
        let text = self.dataplane.save_sets().map_err(|source| Error::Read {
            what: "ipsets",
            source,
        })?;
        p.sets = parse_ipset_save(&text);
        Ok(p)
    }

    fn set_changes(
        &self,
        programmed: &Programmed,
        desired: &Desired,
        report: &mut SyncReport,
    ) -> (String, Vec<String>, Vec<String>) {
        let mut script = String::new();
        // The sets whose state changes (or whose members are another copy
        // of the same), and those no rule uses any more.
        let (mut updated, mut obsolete) = (Vec::new(), Vec::new());
        let mut have_sets = Beside::new(&programmed.sets);
        // Only conntrack cleanup asks whether a change narrowed a set.
        let cleanup = self.conntrack_cleanup;
        let mut still_owned = |m: &Member| match m {
            _ if !cleanup => true,
            Member::Net { .. } => true,
            Member::Ip(ip) | Member::IpPort(ip, ..) => {
                self.index.nodes().any(|n| n.ips.contains(ip)) || self.index.owns_address(ip)
            }
        };
        for (name, want) in &desired.sets {
            let have = have_sets.find(name, |gone| obsolete.push(gone.clone()));
            if have.is_none_or(|h| !Arc::ptr_eq(&h.members, &want.members)) {
                updated.push(name.clone());
            }
            match have {
                Some(have) if have.kind == want.kind && have.family == want.family => {
                    update_set(&mut script, name, have, want, report, &mut still_owned);
                }
                Some(_) => {
                    // Same name, other type: only after a format change.
                    // Destroying it would fail while referenced, so the
                    // members are replaced through a swap-compatible set.
                    warn!(set = %name, "ipset has an unexpected type; recreating it");
                    let _ = writeln!(script, "flush {name}");
                    let _ = writeln!(script, "destroy {name}");
                    create_set(&mut script, name, want);
                    add_members(&mut script, name, want);
                    report.sets_created += 1;
                    report.members_added += want.members.len();
                }
                None => {
                    create_set(&mut script, name, want);
                    // `-exist` create keeps stale members of a set left by
                    // a run we did not see: flush it.
                    let _ = writeln!(script, "flush {name}");
                    add_members(&mut script, name, want);
                    report.sets_created += 1;
                    report.members_added += want.members.len();
                }
            }
        }
        obsolete.extend(have_sets.rest().cloned());
        (script, updated, obsolete)
    }

    fn chain_changes(
        &self,
        programmed: &Programmed,
        desired: &Desired,
        family: Family,
        written: Option<&BTreeMap<String, Rules>>,
        plan: &mut ChainPlan,
        report: &mut SyncReport,
    ) -> Option<String> {
        let have = &programmed.chains[family.index()];
        let want = &desired.chains[family.index()];
        let mut decl = String::new();
        let mut body = String::new();
        // Every map is in name order: one walk of each.
        let mut have_chains = Beside::new(have);
        let mut last_chains = written.map(Beside::new);
        let mut obsolete: Vec<&String> = Vec::new();
        for (name, rules) in want {
            let had = have_chains.find(name, |gone| obsolete.push(gone));
            let last = last_chains.as_mut().and_then(|w| w.find(name, |_| ()));
            if had.is_some() && same_rules(last, rules) {
                continue;
            }
            let expect = expected_state(name, rules);
            if had == Some(&expect) {
                continue;
            }
            report.chains_written += 1;
            if is_dispatch(name) {
                edit_dispatch(&mut decl, &mut body, name, had, &expect, rules);
                plan.written.push((name.clone(), expect));
                continue;
            }
            if had.is_some() {
                report.rules_replaced += 1;
                report.narrowing.push(name.clone());
            }
            let _ = writeln!(decl, ":{name} - [0:0]");
            if let Some(d) = expect.digest {
                let _ = writeln!(body, "-A {name} -m comment --comment \"udl:{d:016x}\"");
            }
            for r in rules.iter() {
                let _ = writeln!(body, "-A {name} {r}");
            }
            plan.written.push((name.clone(), expect));
        }
        obsolete.extend(have_chains.rest());
        // Unused peers chains whose rules are known stay, up to the limit;
        // a sync that reads the node (a repair) knows no written rules and
        // takes them all away.
        let unused = &self.unused[family.index()];
        let kept: BTreeMap<String, Rules> = (obsolete.iter())
            .filter(|n| written.is_some() && is_peers_chain(n))
            .filter_map(|n| {
                let rules = unused.get(*n).or_else(|| written.and_then(|w| w.get(*n)))?;
                Some((n.to_string(), rules.clone()))
            })
            .collect();
        if kept.len() <= MAX_UNUSED_PEERS_CHAINS {
            obsolete.retain(|n| !kept.contains_key(*n));
            plan.unused = kept;
        }
        plan.deleted = obsolete.iter().map(|n| n.to_string()).collect();
        for name in &obsolete {
            // Declaring flushes the chain, dropping its references first.
            let _ = writeln!(decl, ":{name} - [0:0]");
        }
        let mut tail = String::new();
        for (i, (builtin, target)) in HOOKS.iter().enumerate() {
            let hook = programmed.hooks[family.index()][i];
            if hook == Hook::IN_PLACE {
                continue;
            }
            // Missing, below someone else's rule, or copied (a second
            // agent, a manual edit): remove every copy and put one on top,
            // in the same transaction, so no packet passes unhooked.
            for _ in 0..hook.jumps {
                let _ = writeln!(
                    tail,
                    "-D {builtin} -m comment --comment \"underlay policy\" -j {target}"
                );
            }
            let _ = writeln!(
                tail,
                "-I {builtin} 1 -m comment --comment \"underlay policy\" -j {target}"
            );
        }
        for name in &obsolete {
            let _ = writeln!(tail, "-X {name}");
        }
        report.chains_deleted += obsolete.len();
        if decl.is_empty() && body.is_empty() && tail.is_empty() {
            return None;
        }
        Some(format!("*filter\n{decl}{body}{tail}COMMIT\n"))
    }

    /// Deletes the conntrack entries of connections policy now denies,
    /// among those of the endpoints `reached` names (by interface; `None`:
    /// every endpoint); returns how many. A cleanup that failed is owed:
    /// the next one looks at every endpoint's connections.
    fn clean_conntrack(&mut self, reached: Option<&BTreeSet<String>>) -> usize {
        let removed = self.try_clean_conntrack(reached);
        self.cleanup_owed = removed.is_none();
        removed.unwrap_or(0)
    }

    /// [`Engine::clean_conntrack`]'s work; `None` when a step failed.
    fn try_clean_conntrack(&mut self, reached: Option<&BTreeSet<String>>) -> Option<usize> {
        let addresses: Option<HashSet<IpAddr>> = reached.map(|interfaces| {
            self.index
                .endpoints()
                .filter(|ep| interfaces.contains(&ep.interface))
                .flat_map(|ep| ep.ips.iter().copied())
                .collect()
        });
        if addresses.as_ref().is_some_and(HashSet::is_empty) {
            return Some(0);
        }
        let flows = match self.dataplane.list_flows() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "listing conntrack entries failed; existing connections keep flowing until the next cleanup");
                return None;
            }
        };
        let flows: Vec<Flow> = match &addresses {
            Some(a) => flows
                .into_iter()
                .filter(|f| a.contains(&f.src) || a.contains(&f.dst))
                .collect(),
            None => flows,
        };
        if flows.is_empty() {
            return Some(0);
        }
        let host: BTreeSet<_> = match self.dataplane.host_addresses() {
            Ok(h) => h.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "listing node addresses failed; skipping conntrack cleanup until the next change");
                return None;
            }
        };
        let denied: Vec<_> = {
            let eval = Evaluator::new(&self.index);
            flows
                .into_iter()
                .filter(|f| !host.contains(&f.src) && eval.involves_local(f) && !eval.allowed(f))
                .collect()
        };
        if denied.is_empty() {
            return Some(0);
        }
        let removed = match self.dataplane.delete_flows(&denied) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, flows = denied.len(), "deleting conntrack entries failed; those connections keep flowing until the next cleanup");
                return None;
            }
        };
        if removed > 0 {
            info!(
                removed,
                "conntrack entries of newly denied connections deleted"
            );
            self.metrics.conntrack_removed.inc_by(removed as u64);
        }
        Some(removed)
    }
}

/// The interfaces of the endpoints whose chains lead, by jumps and set
/// matches, to a chain or set of `narrowing` (in either family): only
/// their connections can have lost what allowed them. `None` when one is
/// reached from elsewhere (a hook, the dispatch or a verdict chain): then
/// every endpoint's can.
fn reached_endpoints(chains: &Chains, narrowing: &[String]) -> Option<BTreeSet<String>> {
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for family in chains {
        for (chain, rules) in family {
            for rule in rules.iter() {
                for target in named_by(rule, &["-j", "-g", "--match-set"]) {
                    users.entry(target).or_default().push(chain);
                }
            }
        }
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = narrowing.iter().map(String::as_str).collect();
    let mut reached = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(interface) = compile::chain_interface(name) {
            reached.insert(interface.to_string());
            continue;
        }
        if !name.starts_with(compile::CHAIN_PREFIX) && !name.starts_with(compile::SET_PREFIX) {
            return None;
        }
        let is_shared = [
            compile::FORWARD,
            compile::INPUT,
            compile::OUTPUT,
            FROM_POD,
            TO_POD,
            compile::ALLOW,
            compile::ACCEPTED,
            compile::DENIED,
            compile::PASSED,
            compile::CLEAR,
        ]
        .contains(&name);
        if is_shared {
            return None;
        }
        todo.extend(users.get(name).into_iter().flatten());
    }
    Some(reached)
}

/// Brings a dispatch chain to `rules`: in place when both its programmed
/// and its desired state are well formed (entries inserted at the top,
/// above the final drop; entries gone deleted by their spec), otherwise
/// rewritten whole.
fn edit_dispatch(
    decl: &mut String,
    body: &mut String,
    name: &str,
    have: Option<&ChainState>,
    want: &ChainState,
    rules: &[String],
) {
    if let (Some(have), Some(want)) = (have.and_then(|h| h.entries.as_ref()), &want.entries) {
        for gone in have.difference(want) {
            let _ = writeln!(body, "-D {name} {gone}");
        }
        for new in want.difference(have) {
            let _ = writeln!(body, "-I {name} 1 {new}");
        }
        return;
    }
    let _ = writeln!(decl, ":{name} - [0:0]");
    for r in rules {
        let _ = writeln!(body, "-A {name} {r}");
    }
}

/// The `ipset restore` line creating `name` as `want` says.
fn create_set(script: &mut String, name: &str, want: &DesiredSet) {
    let _ = writeln!(
        script,
        "create {name} {} family {} maxelem {MAXELEM} -exist",
        want.kind.ipset_type(),
        ipset_family(want.family)
    );
}

fn add_members(script: &mut String, name: &str, want: &DesiredSet) {
    for m in want.members.keys() {
        let _ = writeln!(script, "add {name} {} -exist", m.render());
    }
}

/// Brings an existing set of the right type to the desired members: the
/// members that changed one by one, or, when most of them change, a new
/// set built aside and swapped in (one atomic switch instead of many small
/// edits the kernel would apply one by one).
fn update_set(
    script: &mut String,
    name: &str,
    have: &SetState,
    want: &DesiredSet,
    report: &mut SyncReport,
    still_owned: &mut impl FnMut(&Member) -> bool,
) {
    if Arc::ptr_eq(&have.members, &want.members) {
        return;
    }
    let (adds, dels) = member_diff(&have.members, &want.members);
    let changes = adds.len() + dels.len();
    if changes == 0 {
        return;
    }
    report.members_added += adds.len();
    report.members_deleted += dels.len();
    let narrowed = dels.iter().filter(|m| still_owned(m)).count();
    report.members_narrowed += narrowed;
    if narrowed > 0 {
        report.narrowing.push(name.to_string());
    }
    if changes > SWAP_THRESHOLD && changes > want.members.len() / 2 {
        let tmp = format!("{name}-t");
        create_set(script, &tmp, want);
        let _ = writeln!(script, "flush {tmp}");
        add_members(script, &tmp, want);
        let _ = writeln!(script, "swap {tmp} {name}");
        let _ = writeln!(script, "destroy {tmp}");
        report.sets_swapped += 1;
    } else {
        for m in dels {
            let _ = writeln!(script, "del {name} {} -exist", plain(m));
        }
        for m in adds {
            let _ = writeln!(script, "add {name} {} -exist", m.render());
        }
    }
}

/// The members `want` has and `have` lacks, and those `have` has and
/// `want` lacks: one walk of both in order, not a lookup per member (a set
/// of every pod holds the whole cluster).
fn member_diff<'a>(have: &'a Members, want: &'a Members) -> (Vec<&'a Member>, Vec<&'a Member>) {
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    let mut have = have.keys().peekable();
    let mut want = want.keys().peekable();
    loop {
        let order = match (have.peek(), want.peek()) {
            (Some(h), Some(w)) => h.cmp(w),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Less => dels.extend(have.next()),
            std::cmp::Ordering::Greater => adds.extend(want.next()),
            std::cmp::Ordering::Equal => {
                have.next();
                want.next();
            }
        }
    }
    (adds, dels)
}

fn keys_equal(a: &Members, b: &Members) -> bool {
    a.len() == b.len() && a.keys().zip(b.keys()).all(|(x, y)| x == y)
}

/// A member as `ipset del` takes it (no `nomatch` flag).
fn plain(m: &Member) -> String {
    match m {
        Member::Net { cidr, .. } => cidr.to_string(),
        other => other.render(),
    }
}

/// The digest carried in a chain's first rule.
pub fn digest(rules: &[String]) -> u64 {
    fnv64(rules.join("\n").as_bytes())
}

/// Our chains (digest from the leading comment, rule count) and the state
/// of each built-in chain's jump to its hook chain, from `iptables-save`.
fn parse_save(text: &str) -> (BTreeMap<String, ChainState>, [Hook; 3]) {
    let mut chains: BTreeMap<String, ChainState> = BTreeMap::new();
    // The dispatch chains' rules as saved, for their entries.
    let mut dispatch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut hooks = [Hook::default(); 3];
    let mut rules_seen = [0usize; 3];
    let mut in_filter = false;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_filter = t.trim() == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                chains.insert(
                    name.to_string(),
                    ChainState {
                        digest: None,
                        len: 0,
                        entries: None,
                        verbatim: (!is_dispatch(name)).then(Vec::new),
                    },
                );
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let words = split_words(rest);
        let Some(chain) = words.first() else {
            continue;
        };
        if let Some(i) = HOOKS.iter().position(|(b, _)| b == chain) {
            let target = HOOKS[i].1;
            if words.windows(2).any(|w| w[0] == "-j" && w[1] == target) {
                hooks[i].jumps += 1;
                hooks[i].first |= rules_seen[i] == 0;
            }
            rules_seen[i] += 1;
            continue;
        }
        if is_dispatch(chain) && chains.contains_key(chain) {
            let rule = rest[chain.len()..].trim_start();
            dispatch
                .entry(chain.clone())
                .or_default()
                .push(rule.to_string());
            continue;
        }
        if let Some(state) = chains.get_mut(chain) {
            if state.len == 0 {
                state.digest = words
                    .windows(2)
                    .find(|w| w[0] == "--comment")
                    .and_then(|w| w[1].strip_prefix("udl:"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                if state.digest.is_some() {
                    state.verbatim = None;
                }
            }
            if let Some(rules) = &mut state.verbatim {
                rules.push(rest[chain.len()..].trim_start().to_string());
            }
            state.len += 1;
        }
    }
    for (name, state) in chains.iter_mut().filter(|(n, _)| is_dispatch(n)) {
        let rules = dispatch.remove(name).unwrap_or_default();
        state.len = rules.len();
        state.entries = dispatch_entries(&rules);
    }
    (chains, hooks)
}

/// Our sets and their members, from `ipset save`.
fn parse_ipset_save(text: &str) -> BTreeMap<String, SetState> {
    let mut sets: BTreeMap<String, SetState> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, kind, "family", fam, ..] if name.starts_with(SET_PREFIX) => {
                let Some(kind) = SetKind::from_ipset_type(kind) else {
                    continue;
                };
                let family = if *fam == "inet6" {
                    Family::V6
                } else {
                    Family::V4
                };
                sets.insert(
                    name.to_string(),
                    SetState {
                        kind,
                        family,
                        members: Arc::new(Members::new()),
                    },
                );
            }
            ["add", name, rest @ ..] => {
                if let Some(s) = sets.get_mut(*name)
                    && let Some(m) = Member::parse(s.kind, &rest.join(" "))
                {
                    Arc::make_mut(&mut s.members).insert(m, 1);
                }
            }
            _ => {}
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_diff_walk_finds_what_lookups_find() {
        let ip = |i: u32| Member::Ip(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        let set = |f: &dyn Fn(u32) -> bool| -> Members {
            (0..400).filter(|i| f(*i)).map(|i| (ip(i), 1)).collect()
        };
        type Pick = &'static dyn Fn(u32) -> bool;
        let cases: [(Pick, Pick); 5] = [
            (&|i| i % 2 == 0, &|i| i % 3 == 0),
            (&|_| false, &|i| i < 10),
            (&|i| i < 10, &|_| false),
            (&|i| i > 100, &|i| i > 100),
            (&|i| i % 7 != 0, &|i| i % 5 != 0 && i < 390),
        ];
        for (h, w) in cases {
            let (have, want) = (set(h), set(w));
            let (adds, dels) = member_diff(&have, &want);
            let by_lookup = |a: &Members, b: &Members| -> Vec<Member> {
                a.keys().filter(|m| !b.contains_key(m)).cloned().collect()
            };
            assert_eq!(
                adds.into_iter().cloned().collect::<Vec<_>>(),
                by_lookup(&want, &have)
            );
            assert_eq!(
                dels.into_iter().cloned().collect::<Vec<_>>(),
                by_lookup(&have, &want)
            );
        }
    }
}
