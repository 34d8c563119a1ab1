//! The recording fake of [`Dataplane`]: an interpreter of the
//! `iptables-restore` and `ipset restore` scripts the engine writes,
//! strict where the kernel is strict (unknown chains, targets and sets,
//! duplicate creation), so the compiler's and the engine's tests run
//! without root. Passed in explicitly, like every fake.

use super::{Dataplane, DataplaneError, Result, Saved, split_words};
use crate::eval::Flow;
use crate::model::Family;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SaveFilter(Family),
    RestoreFilter(Family, String),
    SaveSets,
    RestoreSets(String),
    ListFlows,
    /// One batch deletion.
    DeleteFlows(Vec<Flow>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSet {
    pub kind: String,
    pub family: String,
    pub members: BTreeSet<String>,
}

/// The state behind a [`FakeDataplane`], shared with the test that made it.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Chains of the filter table per family, built-ins included.
    pub tables: [BTreeMap<String, Vec<String>>; 2],
    pub sets: BTreeMap<String, FakeSet>,
    pub calls: Vec<Call>,
    pub flows: Vec<Flow>,
    pub host: Vec<IpAddr>,
    /// Makes the next restore of either kind fail with this message.
    pub fail_next_restore: Option<String>,
    /// Makes the next conntrack listing fail.
    pub fail_next_listing: bool,
    /// Sets whose last matching rule a rule transaction removed. The
    /// kernel drops a rule's hold on its sets after the transaction, once
    /// readers are done with it: a `destroy` right away is refused as in
    /// use. Here the first such destroy is refused, and by then every set
    /// of those transactions is free.
    pub releasing: BTreeSet<String>,
}

impl FakeState {
    /// What `save_state` returns, without recording a call.
    pub fn saved(&self) -> Saved {
        Saved {
            filter: [0, 1].map(|i| FakeDataplane::render_table(&self.tables[i])),
            sets: self.render_sets(),
        }
    }

    /// The sets as `ipset save` prints them.
    fn render_sets(&self) -> String {
        let mut out = String::new();
        for (name, set) in &self.sets {
            out.push_str(&format!(
                "create {name} {} family {} hashsize 1024 maxelem 65536\n",
                set.kind, set.family
            ));
            for m in &set.members {
                out.push_str(&format!("add {name} {m}\n"));
            }
        }
        out
    }

    pub fn restores(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c, Call::RestoreFilter(..) | Call::RestoreSets(_)))
            .count()
    }
}

/// A recording in-memory dataplane. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeDataplane {
    state: Arc<Mutex<FakeState>>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        let mut state = FakeState::default();
        for t in &mut state.tables {
            for b in ["INPUT", "FORWARD", "OUTPUT"] {
                t.insert(b.into(), Vec::new());
            }
        }
        FakeDataplane {
            state: Arc::new(Mutex::new(state)),
        }
    }
}

const TARGETS: [&str; 6] = ["ACCEPT", "DROP", "RETURN", "MARK", "NFLOG", "REJECT"];
const BUILTINS: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];

/// Joins words back into a rule, quoting those with spaces.
fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.contains(' ') {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl FakeDataplane {
    pub fn new() -> FakeDataplane {
        FakeDataplane::default()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply_filter(
        table: &mut BTreeMap<String, Vec<String>>,
        sets: &BTreeMap<String, FakeSet>,
        script: &str,
    ) -> Result<(), String> {
        let mut in_table = false;
        for (n, line) in script.lines().enumerate() {
            let line = line.trim();
            let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "*filter" {
                in_table = true;
                continue;
            }
            if !in_table {
                return Err(err("rule outside a table"));
            }
            if line == "COMMIT" {
                in_table = false;
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if BUILTINS.contains(&name) {
                    return Err(err("declaring a built-in chain flushes it"));
                }
                table.insert(name.to_string(), Vec::new());
                continue;
            }
            let words = split_words(line);
            let (op, chain) = match (words.first(), words.get(1)) {
                (Some(op), Some(chain)) => (op.as_str(), chain.clone()),
                _ => return Err(err("bad line")),
            };
            if !table.contains_key(&chain) {
                return Err(err("no such chain"));
            }
            filter_command(table, sets, op, &chain, &words[2..]).map_err(err)?;
        }
        if in_table {
            return Err("missing COMMIT".into());
        }
        Ok(())
    }

    fn apply_sets(
        sets: &mut BTreeMap<String, FakeSet>,
        tables: &[BTreeMap<String, Vec<String>>; 2],
        releasing: &mut BTreeSet<String>,
        script: &str,
    ) -> Result<(), String> {
        for (n, line) in script.lines().enumerate() {
            let err = |m: &str| format!("Error in line {}: {m}: {line}", n + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let exist = words.contains(&"-exist");
            let words: Vec<&str> = words.into_iter().filter(|w| *w != "-exist").collect();
            if let ["destroy", name] = words[..]
                && releasing.contains(name)
            {
                releasing.clear();
                return Err(err(SET_IN_USE));
            }
            set_command(sets, tables, &words, exist).map_err(err)?;
        }
        Ok(())
    }

    /// Renders a table as `iptables-save` would.
    pub fn render_table(table: &BTreeMap<String, Vec<String>>) -> String {
        let mut out = String::from("# Generated by fake\n*filter\n");
        for b in BUILTINS {
            out.push_str(&format!(":{b} ACCEPT [0:0]\n"));
        }
        for name in table.keys().filter(|n| !BUILTINS.contains(&n.as_str())) {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for (name, rules) in table {
            for r in rules {
                out.push_str(&format!("-A {name} {r}\n"));
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

impl Dataplane for FakeDataplane {
    fn save_filter(&mut self, family: Family) -> Result<String> {
        let mut s = self.state();
        s.calls.push(Call::SaveFilter(family));
        Ok(FakeDataplane::render_table(&s.tables[family.index()]))
    }

    fn restore_filter(&mut self, family: Family, script: &str) -> Result<()> {
        let mut s = self.state();
        s.calls
            .push(Call::RestoreFilter(family, script.to_string()));
        if let Some(m) = s.fail_next_restore.take() {
            return Err(DataplaneError::Rejected(m));
        }
        let mut table = s.tables[family.index()].clone();
        FakeDataplane::apply_filter(&mut table, &s.sets, script)
            .map_err(DataplaneError::Rejected)?;
        let before = sets_matched(&s.tables);
        s.tables[family.index()] = table;
        let after = sets_matched(&s.tables);
        s.releasing.extend(before.difference(&after).cloned());
        Ok(())
    }

    fn save_sets(&mut self) -> Result<String> {
        let mut s = self.state();
        s.calls.push(Call::SaveSets);
        Ok(s.render_sets())
    }

    fn restore_sets(&mut self, script: &str) -> Result<()> {
        let mut s = self.state();
        s.calls.push(Call::RestoreSets(script.to_string()));
        if let Some(m) = s.fail_next_restore.take() {
            return Err(DataplaneError::Rejected(m));
        }
        // Like `ipset restore`, the lines before a refused one stay done.
        let FakeState {
            sets,
            tables,
            releasing,
            ..
        } = &mut *s;
        FakeDataplane::apply_sets(sets, tables, releasing, script).map_err(DataplaneError::Rejected)
    }

    fn list_flows(&mut self) -> Result<Vec<Flow>> {
        let mut s = self.state();
        s.calls.push(Call::ListFlows);
        if std::mem::take(&mut s.fail_next_listing) {
            return Err(DataplaneError::Rejected("conntrack listing refused".into()));
        }
        Ok(s.flows.clone())
    }

    fn delete_flows(&mut self, flows: &[Flow]) -> Result<usize> {
        let mut s = self.state();
        s.calls.push(Call::DeleteFlows(flows.to_vec()));
        let before = s.flows.len();
        s.flows.retain(|f| !flows.contains(f));
        Ok(before - s.flows.len())
    }

    fn host_addresses(&mut self) -> Result<Vec<IpAddr>> {
        Ok(self.state().host.clone())
    }
}

/// One `-A`/`-I`/`-D`/`-F`/`-X` line of an `iptables-restore` script on
/// `chain`, with the words after the chain name; the error says what the
/// kernel would refuse.
fn filter_command(
    table: &mut BTreeMap<String, Vec<String>>,
    sets: &BTreeMap<String, FakeSet>,
    op: &str,
    chain: &str,
    rest: &[String],
) -> Result<(), &'static str> {
    match op {
        "-A" => add_rule(table, sets, chain, None, rest),
        "-I" => match rest.first().and_then(|w| w.parse::<usize>().ok()) {
            Some(p) => add_rule(table, sets, chain, Some(p), &rest[1..]),
            None => add_rule(table, sets, chain, Some(1), rest),
        },
        "-D" => {
            let text = join_words(rest);
            let rules = table.get_mut(chain).ok_or("no such chain")?;
            let at = rules
                .iter()
                .position(|r| *r == text)
                .ok_or("bad rule (does a matching rule exist in that chain?)")?;
            rules.remove(at);
            Ok(())
        }
        "-F" => {
            if let Some(r) = table.get_mut(chain) {
                r.clear();
            }
            Ok(())
        }
        "-X" => delete_chain(table, chain),
        _ => Err("unknown command"),
    }
}

/// Appends (`position` `None`) or inserts a rule after checking that its
/// jumps and sets exist.
fn add_rule(
    table: &mut BTreeMap<String, Vec<String>>,
    sets: &BTreeMap<String, FakeSet>,
    chain: &str,
    position: Option<usize>,
    rule: &[String],
) -> Result<(), &'static str> {
    for pair in rule.windows(2) {
        if (pair[0] == "-j" || pair[0] == "-g")
            && !TARGETS.contains(&pair[1].as_str())
            && !table.contains_key(&pair[1])
        {
            return Err("jump to a missing chain");
        }
        if pair[0] == "--match-set" && !sets.contains_key(&pair[1]) {
            return Err("set does not exist");
        }
    }
    let text = join_words(rule);
    let rules = table.get_mut(chain).ok_or("no such chain")?;
    match position {
        Some(p) if p >= 1 && p <= rules.len() + 1 => rules.insert(p - 1, text),
        Some(_) => return Err("index of insertion too big"),
        None => rules.push(text),
    }
    Ok(())
}

/// `-X`: only an empty user chain that no rule jumps to.
fn delete_chain(
    table: &mut BTreeMap<String, Vec<String>>,
    chain: &str,
) -> Result<(), &'static str> {
    if BUILTINS.contains(&chain) {
        return Err("cannot delete a built-in chain");
    }
    if table.get(chain).is_some_and(|r| !r.is_empty()) {
        return Err("directory not empty");
    }
    let referenced = table.values().flatten().any(|r| {
        let w = split_words(r);
        w.windows(2)
            .any(|p| (p[0] == "-j" || p[0] == "-g") && p[1] == chain)
    });
    if referenced {
        return Err("too many links");
    }
    table.remove(chain);
    Ok(())
}

/// One line of an `ipset restore` script, split into words (`-exist`
/// taken out and given as `exist`); the error says what ipset would
/// refuse.
fn set_command(
    sets: &mut BTreeMap<String, FakeSet>,
    tables: &[BTreeMap<String, Vec<String>>; 2],
    words: &[&str],
    exist: bool,
) -> Result<(), &'static str> {
    match words {
        [] => Ok(()),
        ["create", name, kind, "family", fam, ..] => create_set(sets, name, kind, fam, exist),
        ["add", name, member @ ..] => {
            let s = sets.get_mut(*name).ok_or("set does not exist")?;
            if !s.members.insert(member.join(" ")) && !exist {
                return Err("element is already added");
            }
            Ok(())
        }
        ["del", name, member @ ..] => {
            let s = sets.get_mut(*name).ok_or("set does not exist")?;
            let plain = member.first().map(|m| m.to_string()).unwrap_or_default();
            let removed = s.members.remove(&member.join(" "))
                || s.members.remove(&format!("{plain} nomatch"))
                || s.members.remove(&plain);
            if !removed && !exist {
                return Err("element is missing");
            }
            Ok(())
        }
        ["swap", a, b] => {
            let sa = sets.get(*a).cloned().ok_or("set does not exist")?;
            let sb = sets.get(*b).cloned().ok_or("set does not exist")?;
            if sa.kind != sb.kind || sa.family != sb.family {
                return Err("sets of different types cannot be swapped");
            }
            sets.insert(a.to_string(), sb);
            sets.insert(b.to_string(), sa);
            Ok(())
        }
        ["flush", name] => {
            sets.get_mut(*name)
                .ok_or("set does not exist")?
                .members
                .clear();
            Ok(())
        }
        ["destroy", name] => destroy_set(sets, tables, name, exist),
        _ => Err("unknown command"),
    }
}

fn create_set(
    sets: &mut BTreeMap<String, FakeSet>,
    name: &str,
    kind: &str,
    family: &str,
    exist: bool,
) -> Result<(), &'static str> {
    if name.len() > 31 {
        return Err("set name too long");
    }
    match sets.get(name) {
        Some(s) if s.kind == kind && s.family == family && exist => Ok(()),
        Some(_) => Err("set with the same name already exists"),
        None => {
            let set = FakeSet {
                kind: kind.to_string(),
                family: family.to_string(),
                members: BTreeSet::new(),
            };
            sets.insert(name.to_string(), set);
            Ok(())
        }
    }
}

/// ipset's refusal to destroy a set a rule (or the kernel) still holds.
const SET_IN_USE: &str = "Set cannot be destroyed: it is in use by a kernel component";

/// The sets some rule of either table matches on.
fn sets_matched(tables: &[BTreeMap<String, Vec<String>>; 2]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in tables.iter().flat_map(|t| t.values()).flatten() {
        let w = split_words(r);
        for p in w.windows(2).filter(|p| p[0] == "--match-set") {
            out.insert(p[1].to_string());
        }
    }
    out
}

/// `destroy`: only a set no rule matches on.
fn destroy_set(
    sets: &mut BTreeMap<String, FakeSet>,
    tables: &[BTreeMap<String, Vec<String>>; 2],
    name: &str,
    exist: bool,
) -> Result<(), &'static str> {
    if sets_matched(tables).contains(name) {
        return Err(SET_IN_USE);
    }
    if sets.remove(name).is_none() && !exist {
        return Err("set does not exist");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_rejects_what_the_kernel_rejects() {
        let mut fake = FakeDataplane::new();
        let bad = [
            "*filter\n-A UDL-X -j DROP\nCOMMIT\n",
            "*filter\n:UDL-X - [0:0]\n-A UDL-X -j UDL-Y\nCOMMIT\n",
            "*filter\n:UDL-X - [0:0]\n-A UDL-X -m set --match-set nope src -j DROP\nCOMMIT\n",
            "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
            "*filter\n:UDL-X - [0:0]\n",
        ];
        for script in bad {
            assert!(fake.restore_filter(Family::V4, script).is_err(), "{script}");
        }
        // a failed transaction changes nothing
        assert_eq!(fake.state().tables[0].len(), 3);
        fake.restore_filter(
            Family::V4,
            "*filter\n:UDL-X - [0:0]\n-A UDL-X -m comment --comment \"a b\" -j DROP\n-I FORWARD 1 -j UDL-X\nCOMMIT\n",
        )
        .unwrap();
        assert!(
            fake.restore_filter(Family::V4, "*filter\n-X UDL-X\nCOMMIT\n")
                .is_err()
        );
        let saved = fake.save_filter(Family::V4).unwrap();
        assert!(
            saved.contains("-A UDL-X -m comment --comment \"a b\" -j DROP"),
            "{saved}"
        );
        fake.restore_sets("create s hash:ip family inet\nadd s 10.0.0.1\n")
            .unwrap();
        assert!(fake.restore_sets("add s 10.0.0.1\n").is_err());
        fake.restore_sets("add s 10.0.0.1 -exist\n").unwrap();
        fake.restore_filter(
            Family::V4,
            "*filter\n-A UDL-X -m set --match-set s src -j DROP\nCOMMIT\n",
        )
        .unwrap();
        assert!(fake.restore_sets("destroy s\n").is_err());
    }
}
