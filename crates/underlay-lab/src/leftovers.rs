//! What a lab may leave behind on the machine, looked for after it is
//! down: network namespaces with its prefix, underlay processes, and
//! underlay iptables chains, ipsets or host veths in the machine's own
//! network namespace (the lab never creates any there, so one found there
//! is a leak of a daemon that ran in the wrong namespace).
//!
//! Everything here only reads: `/var/run/netns`, `/proc`, `iptables-save`,
//! `ipset list -n` and `/sys/class/net`.

use std::path::Path;
use std::process::Command;

/// The underlay binaries and the lab's own.
const PROGRAMS: [&str; 4] = [
    "underlay-agent",
    "underlay-cni",
    "underlay-route-controller",
    "underlay-lab",
];

/// One thing left behind, said in words.
pub type Leftover = String;

/// Everything a lab with namespace prefix `prefix`, running the binaries in
/// `bin_dir`, left behind. `own` are process ids to disregard (the caller
/// and its ancestors).
pub fn find(prefix: &str, bin_dir: &Path, own: &[u32]) -> Vec<Leftover> {
    let mut found = Vec::new();
    for ns in crate::netns::list(&format!("{prefix}-")) {
        found.push(format!("network namespace {ns}"));
    }
    found.extend(processes(bin_dir, own));
    found.extend(host_chains());
    found.extend(host_sets());
    found.extend(host_links());
    found
}

/// The calling process and its ancestors (a demo runs as a child of
/// `cargo xtask`, itself a child of cargo).
pub fn own_lineage() -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    let mut pid = std::process::id();
    while let Some(parent) = parent_of(pid).filter(|p| *p > 1 && !pids.contains(p)) {
        pids.push(parent);
        pid = parent;
    }
    pids
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Underlay programs running from `bin_dir` (other labs on the machine run
/// theirs from elsewhere).
fn processes(bin_dir: &Path, own: &[u32]) -> Vec<Leftover> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if own.contains(&pid) {
            continue;
        }
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        // A binary replaced by a rebuild shows as "PATH (deleted)".
        let exe = exe.to_string_lossy();
        let exe = Path::new(exe.trim_end_matches(" (deleted)"));
        if is_underlay_program(exe) && exe.parent() == Some(bin_dir) {
            found.push(format!("process {pid} ({})", exe.display()));
        }
    }
    found
}

/// Underlay chains in the machine's own tables (both backends, both
/// families). A missing tool is no finding: then nothing can have written.
fn host_chains() -> Vec<Leftover> {
    let mut found = Vec::new();
    for tool in [
        "iptables-save",
        "ip6tables-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        // starts: iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save
        let Ok(out) = Command::new(tool).output() else {
            continue;
        };
        for chain in underlay_chains(&String::from_utf8_lossy(&out.stdout)) {
            found.push(format!("{tool}: chain {chain}"));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The chain declarations (`:NAME POLICY [p:b]`) of underlay's chains in an
/// `iptables-save` dump.
pub fn underlay_chains(dump: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("UDL-"))
        .map(str::to_string)
        .collect()
}

fn host_sets() -> Vec<Leftover> {
    let Ok(out) = Command::new("ipset").args(["list", "-n"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|s| s.starts_with("udl"))
        .map(|s| format!("ipset {s}"))
        .collect()
}

fn host_links() -> Vec<Leftover> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut found: Vec<Leftover> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("udl"))
        .map(|n| format!("link {n} in the machine's own namespace"))
        .collect();
    found.sort();
    found
}

/// Fails with the list when `prefix`'s lab left anything behind.
pub fn check(prefix: &str, bin_dir: &Path) -> anyhow::Result<()> {
    let found = find(prefix, bin_dir, &own_lineage());
    if found.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the lab left {} thing(s) behind: {}",
        found.len(),
        found.join("; ")
    )
}

/// Whether `path` names one of the underlay programs.
pub fn is_underlay_program(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| PROGRAMS.contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_underlay_chains_in_a_dump() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\n:UDL-FORWARD - [0:0]\n:KUBE-FORWARD - [0:0]\n\
                    :UDL-I-0123456789ab - [0:0]\n-A FORWARD -j UDL-FORWARD\nCOMMIT\n";
        assert_eq!(
            underlay_chains(dump),
            vec!["UDL-FORWARD".to_string(), "UDL-I-0123456789ab".to_string()]
        );
        assert!(underlay_chains("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
    }

    #[test]
    fn own_lineage_starts_with_this_process() {
        let own = own_lineage();
        assert_eq!(own[0], std::process::id());
        assert!(!own.contains(&1));
    }

    #[test]
    fn a_running_underlay_program_is_found_and_its_exclusion_respected() {
        // This test binary is not an underlay program: nothing of ours shows.
        assert!(!is_underlay_program(Path::new("/usr/bin/ip")));
        assert!(is_underlay_program(Path::new(
            "/x/target/debug/underlay-agent"
        )));
        // A process running an underlay program from the directory is found;
        // the same program elsewhere, or one of our own lineage, is not.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let program = dir.path().join("underlay-agent");
        std::fs::copy("/bin/sleep", &program).expect("copy sleep");
        // starts: sleep (a copy named underlay-agent)
        let mut child = Command::new(&program).arg("30").spawn().expect("start it");
        let found = processes(dir.path(), &own_lineage());
        let elsewhere = processes(Path::new("/nonexistent"), &own_lineage());
        let excluded = processes(dir.path(), &[child.id()]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(&format!("process {} ", child.id())));
        assert!(elsewhere.is_empty(), "{elsewhere:?}");
        assert!(excluded.is_empty(), "{excluded:?}");
    }
}
