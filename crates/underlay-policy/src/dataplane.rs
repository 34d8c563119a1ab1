//! The narrow side-effect boundary of the engine: saving and restoring the
//! filter table and ipsets, and listing and deleting conntrack entries.
//! [`CommandDataplane`] runs the real tools (optionally inside a named
//! network namespace) and deletes conntrack entries over ctnetlink
//! ([`crate::ctnetlink`]) in the same namespace; [`fake`] holds the test
//! double, an in-memory model that checks what it is given as strictly as
//! the kernel would and records every call.

use crate::eval::Flow;
use crate::model::Family;
use crate::tool::ToolError;

pub mod fake;
pub mod flows;
pub mod restore;
pub use fake::{Call, FakeDataplane, FakeSet, FakeState};
use netlink_sys::Socket;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

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
    #[error("{0}")]
    Netns(#[from] underlay_netns::Error),
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The saved text of the node's filter tables and ipsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// `iptables-save -t filter` and `ip6tables-save -t filter`, indexed by
    /// [`Family::index`].
    pub filter: [String; 2],
    /// `ipset save`.
    pub sets: String,
}

/// What the engine needs from the node. Scripts are in the formats of
/// `iptables-restore` and `ipset restore`.
pub trait Dataplane: Send + 'static {
    /// `iptables-save -t filter` (or `ip6tables-save`).
    fn save_filter(&mut self, family: Family) -> Result<String>;
    /// `iptables-restore --noflush`: one atomic transaction.
    fn restore_filter(&mut self, family: Family, script: &str) -> Result<()>;
    /// One [`Dataplane::restore_filter`] per script, each family its own
    /// transaction; the results in the scripts' order. The real dataplane
    /// runs them at the same time.
    fn restore_filters(&mut self, scripts: &[(Family, String)]) -> Vec<Result<()>> {
        scripts
            .iter()
            .map(|(family, script)| self.restore_filter(*family, script))
            .collect()
    }
    /// `ipset save`.
    fn save_sets(&mut self) -> Result<String>;
    /// The filter table of both families and the ipsets as the tools print
    /// them, read one after the other (what `Trace` walks a packet through).
    fn save_state(&mut self) -> Result<Saved> {
        Ok(Saved {
            filter: [self.save_filter(Family::V4)?, self.save_filter(Family::V6)?],
            sets: self.save_sets()?,
        })
    }
    /// `ipset restore`.
    fn restore_sets(&mut self, script: &str) -> Result<()>;
    /// The conntrack table, both families in one listing. The real
    /// dataplane keeps it from the kernel's events ([`flows`]): a dump
    /// walks the kernel's whole conntrack hash, however few entries the
    /// namespace holds.
    fn list_flows(&mut self) -> Result<Vec<Flow>>;
    /// Starts following the conntrack table, so the first listing after a
    /// change need not dump it (none by default).
    fn watch_flows(&mut self) {}
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
    /// Keep one `iptables-restore` running per family and feed it every
    /// change (nf_tables back end only; see [`restore`]). Off: one process
    /// per change.
    pub persistent_restore: bool,
    pub(crate) restorers: Arc<[Mutex<Restorer>; 2]>,
    /// The `NETLINK_NETFILTER` socket of ipset and conntrack requests, kept
    /// open: nf_tables answers the closing of any such socket by waiting
    /// for the release of its last transaction (an RCU grace period, 8–30
    /// ms here), so a socket per change cost more than its requests.
    pub(crate) netfilter: Arc<Mutex<Option<Socket>>>,
    /// The receive buffer of the conntrack event socket ([`flows`]).
    pub conntrack_event_buffer: usize,
    pub(crate) flows: Arc<Mutex<Flows>>,
    /// Conntrack dumps so far.
    pub(crate) dumps: Arc<AtomicU64>,
}

/// Where the conntrack listing comes from.
#[derive(Default)]
pub(crate) enum Flows {
    /// Not tried yet (or opening failed: tried again at the next listing).
    #[default]
    Unopened,
    /// A table kept from events.
    Watching(flows::FlowWatch),
    /// The namespace sends no conntrack events: a dump each time.
    Dumping,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flows::Unopened => "Unopened",
            Flows::Watching(_) => "Watching",
            Flows::Dumping => "Dumping",
        })
    }
}

/// How a family's rule changes are written.
#[derive(Debug, Default)]
pub(crate) enum Restorer {
    /// Not yet known which back end the tool drives.
    #[default]
    Unprobed,
    /// The legacy back end: a process per change (it rewrites the whole
    /// table per `COMMIT` anyway).
    OneShot,
    /// The nf_tables back end: the running session, if one is.
    Persistent(Option<restore::Session>),
}

/// The line a tool's error says it failed at (`iptables-restore: line N
/// failed`, `ipset v7: Error in line N: …`): the number, and where its
/// digits are in `text`.
pub fn failed_line(text: &str) -> Option<(usize, std::ops::Range<usize>)> {
    const AT: &str = "line ";
    let start = text.find(AT)? + AT.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    let n = text[start..start + digits].parse().ok()?;
    Some((n, start..start + digits))
}

/// Rule changes longer than this go through a process of their own, not
/// the running session.
pub const SESSION_MAX_LINES: usize = 1000;

/// The default of [`CommandDataplane::timeout`].
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for CommandDataplane {
    fn default() -> Self {
        CommandDataplane {
            netns: None,
            iptables: ["iptables".into(), "ip6tables".into()],
            ipset: "ipset".into(),
            timeout: DEFAULT_TOOL_TIMEOUT,
            persistent_restore: true,
            restorers: Arc::default(),
            netfilter: Arc::default(),
            conntrack_event_buffer: flows::EVENT_BUFFER,
            flows: Arc::default(),
            dumps: Arc::default(),
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

    /// How many times the conntrack table was dumped: at the first listing
    /// and then only when events were lost or the table is refreshed
    /// ([`flows`]).
    pub fn conntrack_dumps(&self) -> u64 {
        self.dumps.load(Ordering::Relaxed)
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

    /// The family's way of writing rule changes, its back end probed the
    /// first time.
    fn restorer(&self, family: Family) -> Result<std::sync::MutexGuard<'_, Restorer>> {
        let mut restorer = self.restorers[family.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Restorer::Unprobed = *restorer {
            let prog = format!("{}-restore", self.iptables[family.index()]);
            let version = self.run_ok(&prog, &["--version"], None)?;
            *restorer = if version.contains("nf_tables") {
                Restorer::Persistent(None)
            } else {
                Restorer::OneShot
            };
        }
        Ok(restorer)
    }

    /// Whether `script` may go through a running session. While the
    /// session listens, the kernel writes a notification of every rule a
    /// transaction adds or deletes: a whole ruleset (a first programming, a
    /// repair) is cheaper through its own process.
    fn session_sized(&self, script: &str) -> bool {
        self.persistent_restore && script.lines().count() <= SESSION_MAX_LINES
    }

    fn restore_one_filter(&self, family: Family, script: &str) -> Result<()> {
        let prog = format!("{}-restore", self.iptables[family.index()]);
        if !self.session_sized(script) {
            self.restore_once(&prog, script)?;
            // A whole ruleset (a first programming): the changes after it
            // come through the session, so have it read the table and
            // warm up now rather than on the first change.
            if self.persistent_restore
                && let Err(e) = self.session(family, &prog)
            {
                debug!(error = %e, program = %prog, "starting the restore session failed; the next change starts it");
            }
            return Ok(());
        }
        let mut restorer = self.session(family, &prog)?;
        let Restorer::Persistent(Some(running)) = &mut *restorer else {
            drop(restorer);
            return self.restore_once(&prog, script);
        };
        let applied = running.apply(script, self.timeout);
        if applied.is_err() {
            // The tool exited or is stuck: the next change starts another.
            *restorer = Restorer::Persistent(None);
        }
        applied
    }

    /// The family's restorer, with its session running and warmed up when
    /// the back end keeps one.
    fn session(&self, family: Family, prog: &str) -> Result<std::sync::MutexGuard<'_, Restorer>> {
        let mut restorer = self.restorer(family)?;
        let Restorer::Persistent(session) = &mut *restorer else {
            return Ok(restorer);
        };
        if session.as_mut().is_some_and(|s| !s.is_running()) {
            // Ended between changes (killed, or the binary replaced): start
            // another rather than fail this change.
            *session = None;
        }
        if session.is_none() {
            let mut started = self.start_session(prog)?;
            if let Err(e) = started.warm_up(self.timeout) {
                // A kernel without one of the matches (no SCTP): the tool
                // stopped at that block; go on with one not warmed up.
                debug!(error = %e, program = %prog, "warming up the restore session failed");
                started = self.start_session(prog)?;
            }
            *session = Some(started);
        }
        Ok(restorer)
    }

    fn start_session(&self, prog: &str) -> Result<restore::Session> {
        let mut cmd = self.command(prog);
        cmd.arg("--noflush");
        restore::Session::start(prog, cmd, self.netns.as_deref())
    }

    /// Runs `work` on the kept netfilter socket of the dataplane's
    /// namespace, opening it the first time. A socket an exchange failed on
    /// may hold a stray answer: it is replaced. A request the kernel refused
    /// (an ipset command) was answered in full, and the socket is kept.
    fn with_netfilter<T>(&self, work: impl FnOnce(&Socket) -> Result<T>) -> Result<T> {
        let mut kept = self.netfilter.lock().unwrap_or_else(|p| p.into_inner());
        let socket = match &mut *kept {
            Some(socket) => socket,
            empty => empty.insert(crate::ctnetlink::in_netns(
                self.netns.as_deref(),
                crate::ctnetlink::netfilter_socket,
            )?),
        };
        let result = work(socket);
        if matches!(result, Err(ref e) if !matches!(e, DataplaneError::Failed { .. })) {
            *kept = None;
        }
        result
    }

    /// The process id of the family's running `iptables-restore`, if one
    /// is kept running.
    pub fn restore_session_pid(&self, family: Family) -> Option<u32> {
        match &*self.restorers[family.index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Restorer::Persistent(Some(session)) => Some(session.pid()),
            _ => None,
        }
    }

    fn restore_once(&self, prog: &str, script: &str) -> Result<()> {
        self.run_ok(prog, &["--noflush", "-w", "5"], Some(script))
            .map(drop)
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
        self.restore_one_filter(family, script)
    }

    fn restore_filters(&mut self, scripts: &[(Family, String)]) -> Vec<Result<()>> {
        // Running sessions commit one after the other: each commit costs
        // about a millisecond, but a transaction racing another's commit is
        // refused by the kernel and the tool then re-reads its whole table.
        if scripts.iter().all(|(family, script)| {
            self.session_sized(script)
                && matches!(
                    self.restorer(*family).as_deref(),
                    Ok(Restorer::Persistent(_))
                )
        }) {
            return scripts
                .iter()
                .map(|(family, script)| self.restore_one_filter(*family, script))
                .collect();
        }
        // Processes started per change each read their table anyway:
        // starting both families' together halves the wait.
        let this = &*self;
        std::thread::scope(|scope| {
            let running: Vec<_> = scripts
                .iter()
                .map(|(family, script)| {
                    scope.spawn(move || this.restore_one_filter(*family, script))
                })
                .collect();
            running
                .into_iter()
                .map(|r| {
                    r.join().unwrap_or_else(|_| {
                        Err(DataplaneError::Rejected(
                            "the thread running iptables-restore panicked".into(),
                        ))
                    })
                })
                .collect()
        })
    }

    fn save_sets(&mut self) -> Result<String> {
        let prog = self.ipset.clone();
        self.run_ok(&prog, &["save"], None)
    }

    fn restore_sets(&mut self, script: &str) -> Result<()> {
        self.with_netfilter(|socket| crate::ipsetnl::restore(socket, script))
    }

    fn list_flows(&mut self) -> Result<Vec<Flow>> {
        self.watch_flows();
        let source = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        match &*source {
            Flows::Watching(watch) => {
                let (flows, dumped) = watch.list(|| {
                    self.dumps.fetch_add(1, Ordering::Relaxed);
                    self.with_netfilter(|socket| {
                        crate::ctnetlink::list_tuples(socket, crate::nl::AF_UNSPEC)
                    })
                })?;
                if dumped {
                    debug!(flows = flows.len(), "conntrack table read whole");
                }
                Ok(flows)
            }
            Flows::Unopened | Flows::Dumping => {
                self.dumps.fetch_add(1, Ordering::Relaxed);
                self.with_netfilter(|socket| crate::ctnetlink::list(socket, crate::nl::AF_UNSPEC))
            }
        }
    }

    fn watch_flows(&mut self) {
        let mut source = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*source, Flows::Unopened) {
            return;
        }
        let buffer = self.conntrack_event_buffer;
        match crate::ctnetlink::in_netns(self.netns.as_deref(), || flows::FlowWatch::open(buffer)) {
            Ok(Some(watch)) => {
                *source = Flows::Watching(watch);
                drop(source);
                // The first fill, now rather than at the first change.
                if let Err(e) = self.list_flows() {
                    warn!(error = %e, "reading the conntrack table failed; the next listing tries again");
                }
            }
            Ok(None) => {
                info!(
                    "nf_conntrack_events is 0: the conntrack table is dumped on every change that could deny a connection"
                );
                *source = Flows::Dumping;
            }
            Err(e) => {
                warn!(error = %e, "following conntrack events failed; dumping the table instead");
            }
        }
    }

    fn delete_flows(&mut self, flows: &[Flow]) -> Result<usize> {
        if flows.is_empty() {
            return Ok(0);
        }
        self.with_netfilter(|socket| crate::ctnetlink::delete(socket, flows))
    }

    fn host_addresses(&mut self) -> Result<Vec<IpAddr>> {
        crate::ctnetlink::in_netns(self.netns.as_deref(), crate::rtnl::host_addresses)
    }
}

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

    /// A dataplane whose `iptables-restore` is `tool`, a process per change.
    fn one_shot(tool: &Script) -> CommandDataplane {
        let prefix = tool.path().trim_end_matches("-restore").to_owned();
        CommandDataplane {
            iptables: [prefix.clone(), prefix],
            persistent_restore: false,
            ..CommandDataplane::default()
        }
    }

    #[test]
    fn five_thousand_lines_echoed_while_the_input_is_read_do_not_deadlock() {
        // A tool that answers each line of its input while reading it: with
        // both pipes full, a runner that writes all input before reading
        // any output would wait forever.
        let tool = Script::new(
            "udl-echo-restore",
            "while read -r line; do echo \"$line written\"; done",
        );
        let mut dp = one_shot(&tool);
        let script: String = (0..5000u32)
            .map(|i| format!("-A UDL-X -s 10.1.{}.{} -j DROP\n", i / 250, i % 250 + 1))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(
                dp.restore_filter(Family::V4, &script)
                    .map_err(|e| e.to_string()),
            );
        });
        let restored = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the restore deadlocked: both pipes full");
        assert_eq!(restored, Ok(()));
        assert_eq!(children_named("udl-echo-restore"), Vec::<String>::new());
    }

    #[test]
    fn both_families_are_restored_at_the_same_time() {
        // Each family's tool marks that it started, then waits for the
        // other's mark: run one after the other, the first gives up.
        let marks = std::env::temp_dir().join(format!("udl-marks-{}", std::process::id()));
        std::fs::create_dir_all(&marks).unwrap();
        let tool = |me: &str, other: &str| {
            Script::new(
                &format!("udl-{me}-restore"),
                &format!(
                    "cat >/dev/null; touch {m}/{me}; i=0; while [ $i -lt 200 ]; do [ -e {m}/{other} ] && exit 0; sleep 0.05; i=$((i+1)); done; echo {me} ran alone >&2; exit 1",
                    m = marks.display()
                ),
            )
        };
        let (v4, v6) = (tool("v4", "v6"), tool("v6", "v4"));
        let prefix = |s: &Script| s.path().trim_end_matches("-restore").to_owned();
        // A process per change (a running session commits in turn).
        let mut dp = CommandDataplane {
            iptables: [prefix(&v4), prefix(&v6)],
            persistent_restore: false,
            ..CommandDataplane::default()
        };
        let results = dp.restore_filters(&[
            (Family::V4, "*filter\nCOMMIT\n".into()),
            (Family::V6, "*filter\nCOMMIT\n".into()),
        ]);
        let _ = std::fs::remove_dir_all(&marks);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }

    #[test]
    fn a_tool_that_exits_before_reading_its_input_is_reaped_and_reported() {
        let tool = Script::new("udl-early-restore", "exit 3");
        let mut dp = one_shot(&tool);
        // Far more than a pipe holds.
        let script = "-A UDL-X -s 10.0.0.1 -j DROP\n".repeat(20_000);
        let err = dp
            .restore_filter(Family::V4, &script)
            .unwrap_err()
            .to_string();
        assert!(err.contains("udl-early-restore"), "{err}");
        assert_eq!(children_named("udl-early-restore"), Vec::<String>::new());
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
}
