//! The narrow side-effect boundary of the engine: saving and restoring the
//! filter table and ipsets, and listing and deleting conntrack entries.
//! [`CommandDataplane`] runs the real tools (optionally inside a named
//! network namespace) and deletes conntrack entries over ctnetlink
//! ([`crate::ctnetlink`]) in the same namespace; [`FakeDataplane`] keeps an in-memory model that
//! checks what it is given as strictly as the kernel would and records
//! every call.

use crate::eval::Flow;
use crate::model::Family;
use crate::tool::ToolError;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("could not run {program}: {source}; check that it is installed and on PATH")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{program} {reason}; the policy sync retries (check what holds the xtables lock, or raise --policy-tool-timeout)"
    )]
    Hung { program: String, reason: String },
    #[error("{0}")]
    Rejected(String),
    #[error(
        "could not {op}: {source}; the agent needs CAP_NET_ADMIN (and CAP_SYS_ADMIN to enter a namespace)"
    )]
    Netlink {
        op: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// What the engine needs from the node. Scripts are in the formats of
/// `iptables-restore` and `ipset restore`.
pub trait Dataplane: Send + 'static {
    /// `iptables-save -t filter` (or `ip6tables-save`).
    fn save_filter(&mut self, family: Family) -> Result<String>;
    /// `iptables-restore --noflush`: one atomic transaction.
    fn restore_filter(&mut self, family: Family, script: &str) -> Result<()>;
    /// `ipset save`.
    fn save_sets(&mut self) -> Result<String>;
    /// `ipset restore`.
    fn restore_sets(&mut self, script: &str) -> Result<()>;
    /// The conntrack table of one family.
    fn list_flows(&mut self, family: Family) -> Result<Vec<Flow>>;
    /// Deletes these connections in one batch; returns how many entries
    /// were deleted (flows that ended meanwhile are not counted).
    fn delete_flows(&mut self, flows: &[Flow]) -> Result<usize>;
    /// The node's own addresses (their flows to pods are always allowed).
    fn host_addresses(&mut self) -> Result<Vec<IpAddr>>;
}

/// The real tools, run as child processes.
#[derive(Debug, Clone)]
pub struct CommandDataplane {
    /// Run every tool inside this named network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Command prefixes for IPv4 and IPv6 (`iptables`, `ip6tables`; or the
    /// `-legacy` / `-nft` variants): `-save` and `-restore` are appended.
    pub iptables: [String; 2],
    pub ipset: String,
    /// How long one tool call may run before it is killed.
    pub timeout: Duration,
}

/// The default of [`CommandDataplane::timeout`].
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for CommandDataplane {
    fn default() -> Self {
        CommandDataplane {
            netns: None,
            iptables: ["iptables".into(), "ip6tables".into()],
            ipset: "ipset".into(),
            timeout: DEFAULT_TOOL_TIMEOUT,
        }
    }
}

impl CommandDataplane {
    pub fn in_netns(name: impl Into<String>) -> CommandDataplane {
        CommandDataplane {
            netns: Some(name.into()),
            ..CommandDataplane::default()
        }
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            // starts: iptables-save iptables-restore ip6tables-save ip6tables-restore
            // starts: iptables-legacy-save iptables-legacy-restore ipset caller
            None => Command::new(program),
        }
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(bool, String, String)> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let out = crate::tool::run(cmd, stdin, self.timeout).map_err(|e| match e {
            ToolError::Spawn(source) => DataplaneError::Spawn {
                program: program.to_string(),
                source,
            },
            other => DataplaneError::Hung {
                program: program.to_string(),
                reason: other.to_string(),
            },
        })?;
        let mut stderr = out.stderr.trim().to_string();
        let ok = out.status.success() && out.input_error.is_none();
        if let Some(e) = out.input_error {
            stderr = format!(
                "{stderr} (it stopped reading its input: {e}; {})",
                out.status
            )
            .trim()
            .to_string();
        } else if !out.status.success() && stderr.is_empty() {
            stderr = out.status.to_string();
        }
        Ok((ok, out.stdout, stderr))
    }

    fn run_ok(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let (ok, out, err) = self.run(program, args, stdin)?;
        if ok {
            Ok(out)
        } else {
            Err(DataplaneError::Failed {
                program: program.to_string(),
                status: "non-zero exit".into(),
                stderr: err,
            })
        }
    }
}

impl Dataplane for CommandDataplane {
    fn save_filter(&mut self, family: Family) -> Result<String> {
        let prog = format!("{}-save", self.iptables[family.index()]);
        self.run_ok(&prog, &["-t", "filter"], None)
    }

    fn restore_filter(&mut self, family: Family, script: &str) -> Result<()> {
        let prog = format!("{}-restore", self.iptables[family.index()]);
        self.run_ok(&prog, &["--noflush", "-w", "5"], Some(script))
            .map(drop)
    }

    fn save_sets(&mut self) -> Result<String> {
        let prog = self.ipset.clone();
        self.run_ok(&prog, &["save"], None)
    }

    fn restore_sets(&mut self, script: &str) -> Result<()> {
        let prog = self.ipset.clone();
        self.run_ok(&prog, &["restore"], Some(script)).map(drop)
    }

    fn list_flows(&mut self, family: Family) -> Result<Vec<Flow>> {
        let af = match family {
            Family::V4 => crate::nl::AF_INET,
            Family::V6 => crate::nl::AF_INET6,
        };
        crate::ctnetlink::in_netns(self.netns.as_deref(), || crate::ctnetlink::list(af))
    }

    fn delete_flows(&mut self, flows: &[Flow]) -> Result<usize> {
        if flows.is_empty() {
            return Ok(0);
        }
        crate::ctnetlink::in_netns(self.netns.as_deref(), || crate::ctnetlink::delete(flows))
    }

    fn host_addresses(&mut self) -> Result<Vec<IpAddr>> {
        crate::ctnetlink::in_netns(self.netns.as_deref(), crate::rtnl::host_addresses)
    }
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SaveFilter(Family),
    RestoreFilter(Family, String),
    SaveSets,
    RestoreSets(String),
    ListFlows(Family),
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
}

impl FakeState {
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

/// Splits a rule into words, keeping double-quoted strings whole.
pub fn split_words(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in rule.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

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
            match op {
                "-A" | "-I" => {
                    let (pos, rest) = if op == "-I" {
                        match words.get(2).and_then(|w| w.parse::<usize>().ok()) {
                            Some(p) => (Some(p), &words[3..]),
                            None => (Some(1), &words[2..]),
                        }
                    } else {
                        (None, &words[2..])
                    };
                    for pair in rest.windows(2) {
                        if (pair[0] == "-j" || pair[0] == "-g")
                            && !TARGETS.contains(&pair[1].as_str())
                            && !table.contains_key(&pair[1])
                        {
                            return Err(err("jump to a missing chain"));
                        }
                        if pair[0] == "--match-set" && !sets.contains_key(&pair[1]) {
                            return Err(err("set does not exist"));
                        }
                    }
                    let text = join_words(rest);
                    let rules = table.get_mut(&chain).ok_or_else(|| err("no such chain"))?;
                    match pos {
                        Some(p) if p >= 1 && p <= rules.len() + 1 => rules.insert(p - 1, text),
                        Some(_) => return Err(err("index of insertion too big")),
                        None => rules.push(text),
                    }
                }
                "-D" => {
                    let text = join_words(&words[2..]);
                    let rules = table.get_mut(&chain).ok_or_else(|| err("no such chain"))?;
                    let at = rules.iter().position(|r| *r == text).ok_or_else(|| {
                        err("bad rule (does a matching rule exist in that chain?)")
                    })?;
                    rules.remove(at);
                }
                "-F" => {
                    if let Some(r) = table.get_mut(&chain) {
                        r.clear();
                    }
                }
                "-X" => {
                    if BUILTINS.contains(&chain.as_str()) {
                        return Err(err("cannot delete a built-in chain"));
                    }
                    if table.get(&chain).is_some_and(|r| !r.is_empty()) {
                        return Err(err("directory not empty"));
                    }
                    let referenced = table.values().flatten().any(|r| {
                        let w = split_words(r);
                        w.windows(2)
                            .any(|p| (p[0] == "-j" || p[0] == "-g") && p[1] == chain)
                    });
                    if referenced {
                        return Err(err("too many links"));
                    }
                    table.remove(&chain);
                }
                _ => return Err(err("unknown command")),
            }
        }
        if in_table {
            return Err("missing COMMIT".into());
        }
        Ok(())
    }

    fn apply_sets(
        sets: &mut BTreeMap<String, FakeSet>,
        tables: &[BTreeMap<String, Vec<String>>; 2],
        script: &str,
    ) -> Result<(), String> {
        for (n, line) in script.lines().enumerate() {
            let err = |m: &str| format!("line {}: {m}: {line}", n + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let exist = words.contains(&"-exist");
            let words: Vec<&str> = words.into_iter().filter(|w| *w != "-exist").collect();
            match words.as_slice() {
                [] => {}
                ["create", name, kind, "family", fam, ..] => {
                    if name.len() > 31 {
                        return Err(err("set name too long"));
                    }
                    match sets.get(*name) {
                        Some(s) if s.kind == *kind && s.family == *fam && exist => {}
                        Some(_) => return Err(err("set with the same name already exists")),
                        None => {
                            sets.insert(
                                name.to_string(),
                                FakeSet {
                                    kind: kind.to_string(),
                                    family: fam.to_string(),
                                    members: BTreeSet::new(),
                                },
                            );
                        }
                    }
                }
                ["add", name, member @ ..] => {
                    let s = sets
                        .get_mut(*name)
                        .ok_or_else(|| err("set does not exist"))?;
                    let m = member.join(" ");
                    if !s.members.insert(m) && !exist {
                        return Err(err("element is already added"));
                    }
                }
                ["del", name, member @ ..] => {
                    let s = sets
                        .get_mut(*name)
                        .ok_or_else(|| err("set does not exist"))?;
                    let m = member.join(" ");
                    let plain = member.first().map(|m| m.to_string()).unwrap_or_default();
                    let removed = s.members.remove(&m)
                        || s.members.remove(&format!("{plain} nomatch"))
                        || s.members.remove(&plain);
                    if !removed && !exist {
                        return Err(err("element is missing"));
                    }
                }
                ["swap", a, b] => {
                    let sa = sets
                        .get(*a)
                        .cloned()
                        .ok_or_else(|| err("set does not exist"))?;
                    let sb = sets
                        .get(*b)
                        .cloned()
                        .ok_or_else(|| err("set does not exist"))?;
                    if sa.kind != sb.kind || sa.family != sb.family {
                        return Err(err("sets of different types cannot be swapped"));
                    }
                    sets.insert(a.to_string(), sb);
                    sets.insert(b.to_string(), sa);
                }
                ["flush", name] => {
                    sets.get_mut(*name)
                        .ok_or_else(|| err("set does not exist"))?
                        .members
                        .clear();
                }
                ["destroy", name] => {
                    let used = tables.iter().flat_map(|t| t.values()).flatten().any(|r| {
                        split_words(r)
                            .windows(2)
                            .any(|p| p[0] == "--match-set" && p[1] == *name)
                    });
                    if used {
                        return Err(err("set is in use by a kernel component"));
                    }
                    if sets.remove(*name).is_none() && !exist {
                        return Err(err("set does not exist"));
                    }
                }
                _ => return Err(err("unknown command")),
            }
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
        s.tables[family.index()] = table;
        Ok(())
    }

    fn save_sets(&mut self) -> Result<String> {
        let mut s = self.state();
        s.calls.push(Call::SaveSets);
        let mut out = String::new();
        for (name, set) in &s.sets {
            out.push_str(&format!(
                "create {name} {} family {} hashsize 1024 maxelem 65536\n",
                set.kind, set.family
            ));
            for m in &set.members {
                out.push_str(&format!("add {name} {m}\n"));
            }
        }
        Ok(out)
    }

    fn restore_sets(&mut self, script: &str) -> Result<()> {
        let mut s = self.state();
        s.calls.push(Call::RestoreSets(script.to_string()));
        if let Some(m) = s.fail_next_restore.take() {
            return Err(DataplaneError::Rejected(m));
        }
        let mut sets = s.sets.clone();
        FakeDataplane::apply_sets(&mut sets, &s.tables, script)
            .map_err(DataplaneError::Rejected)?;
        s.sets = sets;
        Ok(())
    }

    fn list_flows(&mut self, family: Family) -> Result<Vec<Flow>> {
        let mut s = self.state();
        s.calls.push(Call::ListFlows(family));
        Ok(s.flows
            .iter()
            .filter(|f| Family::of(f.src) == family)
            .copied()
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An executable script in a fresh directory (removed on drop).
    struct Script(std::path::PathBuf);

    impl Script {
        fn new(name: &str, body: &str) -> Script {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(format!("udl-tool-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            Script(path)
        }
        fn path(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// This process's children still in the process table (running or
    /// zombies) whose command name starts with `name`.
    fn children_named(name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in list.split_whitespace() {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.contains(&format!("({name}")) {
                    out.push(stat);
                }
            }
        }
        out
    }

    #[test]
    fn five_thousand_lines_echoed_while_the_input_is_read_do_not_deadlock() {
        // A tool that answers each line of its input while reading it: with
        // both pipes full, a runner that writes all input before reading
        // any output would wait forever.
        let tool = Script::new(
            "udl-echo",
            "while read -r line; do echo \"$line added to the set\"; done",
        );
        let mut dp = CommandDataplane {
            ipset: tool.path(),
            ..CommandDataplane::default()
        };
        let script: String = (0..5000u32)
            .map(|i| format!("add udl-x 10.1.{}.{}\n", i / 250, i % 250 + 1))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(dp.restore_sets(&script).map_err(|e| e.to_string()));
        });
        let restored = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the restore deadlocked: both pipes full");
        assert_eq!(restored, Ok(()));
        assert_eq!(children_named("udl-echo"), Vec::<String>::new());
    }

    #[test]
    fn a_tool_that_exits_before_reading_its_input_is_reaped_and_reported() {
        let tool = Script::new("udl-early", "exit 3");
        let mut dp = CommandDataplane {
            ipset: tool.path(),
            ..CommandDataplane::default()
        };
        // Far more than a pipe holds.
        let script = "add udl-x 10.0.0.1\n".repeat(20_000);
        let err = dp.restore_sets(&script).unwrap_err().to_string();
        assert!(err.contains("udl-early"), "{err}");
        assert_eq!(children_named("udl-early"), Vec::<String>::new());
    }

    #[test]
    fn a_tool_that_hangs_is_killed_with_its_children_and_reaped_after_the_timeout() {
        let tool = Script::new("udl-hang", "sleep 600");
        let mut dp = CommandDataplane {
            ipset: tool.path(),
            timeout: std::time::Duration::from_millis(300),
            ..CommandDataplane::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(dp.save_sets().map_err(|e| e.to_string()));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the call never returned")
            .unwrap_err();
        assert!(
            err.contains("udl-hang") && err.contains("did not finish"),
            "{err}"
        );
        assert_eq!(children_named("udl-hang"), Vec::<String>::new());
    }

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
