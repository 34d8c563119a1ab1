//! Every external program the workspace starts comes from `cargo xtask
//! setup` (or from the base system every Debian machine has), so a fresh
//! machine that ran setup can run everything: the shipped crates, the lab,
//! xtask and the tests.
//!
//! Two nets catch a program:
//! - a string literal passed first to something that starts a process
//!   (`Command::new("x")`, the lab's `netns::run("x", ..)`, `.command("x")`,
//!   `command_in(path, "x")`, ...), whether or not it is installed here;
//! - a `Command::new(expr)` whose program is not a literal (a flag's value,
//!   a list of tools, a path) must carry a `// starts: a b c` comment on its
//!   line or the lines just above naming every program it may start
//!   (`caller` when the name is a caller's literal, caught by the first
//!   net; a remark may follow in parentheses); the names it lists are
//!   checked like the literals.
//!
//! Either way the program must be one `setup` provides (its `REQUIREMENTS`
//! table in `xtask/src/setup.rs`), come from an Essential or required
//! Debian package, be underlay's own, or be the Rust toolchain's.

mod common;
use common::root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Started, but provided by the Rust toolchain that builds the workspace.
const TOOLCHAIN: &[&str] = &["cargo", "rustc", "rustfmt"];

/// underlay's own binaries and the lab's, built by the workspace.
const OWN: &[&str] = &[
    "underlay-agent",
    "underlay-cni",
    "underlay-route-controller",
    "kubectl-underlay",
    "underlay-lab",
    "xtask",
];

/// The calls whose first string argument is a program name.
const STARTERS: &[&str] = &[
    "Command::new(",
    ".command(",
    "netns::run(",
    "netns::output(",
    " run(",
    "(run(",
    " output(",
    " sh(",
];

/// Every `.rs` file of the workspace outside `target/` and the generated
/// code, this test aside.
fn sources() -> Vec<(PathBuf, String)> {
    let dirs = [
        root().join("crates"),
        root().join("xtask"),
        root().join("tests"),
    ];
    common::rust_sources(&dirs)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("tests/programs.rs"))
        .collect()
}

/// The quoted literals of a source file, with the text just before each.
fn literals(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = j.min(bytes.len());
            if let (Some(lit), Some(before)) =
                (text.get(start..end), text.get(start.saturating_sub(40)..i))
            {
                out.push((lit.to_string(), before.to_string()));
            }
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

fn looks_like_a_program(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_lowercase()
}

/// Program names started through a starter call, with where they are.
fn started(sources: &[(PathBuf, String)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, text) in sources {
        for (lit, before) in literals(text) {
            let before = before.trim_end();
            let direct = STARTERS.iter().any(|s| before.ends_with(s.trim_end()));
            // `command_in(path, "x")` / `command_in(&p, "x")`
            let second = before
                .rfind("command_in(")
                .is_some_and(|at| before[at..].matches(',').count() == 1 && before.ends_with(','));
            if (direct || second) && looks_like_a_program(&lit) {
                out.entry(lit).or_insert_with(|| path.display().to_string());
            }
        }
    }
    out
}

/// Programs named by `// starts:` comments at `Command::new(expr)` calls
/// whose program is not a literal, and the calls that have none.
fn annotated(sources: &[(PathBuf, String)]) -> (BTreeMap<String, String>, Vec<String>) {
    let mut named = BTreeMap::new();
    let mut missing = Vec::new();
    for (path, text) in sources {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(at) = line.find("Command::new(") else {
                continue;
            };
            let arg = line[at + "Command::new(".len()..].trim_start();
            if arg.starts_with('"') || arg.starts_with("env!(\"CARGO_BIN_EXE_") {
                continue;
            }
            let comment = lines[i.saturating_sub(4)..=i]
                .iter()
                .rev()
                .find_map(|l| l.split_once("starts:").map(|(_, rest)| rest));
            match comment {
                Some(rest) => {
                    // Names, then an optional remark in parentheses.
                    let names = rest.split('(').next().unwrap_or_default();
                    for name in names.split_whitespace().filter(|n| *n != "caller") {
                        named
                            .entry(name.trim_end_matches(['.', ',']).to_string())
                            .or_insert_with(|| format!("{}:{}", path.display(), i + 1));
                    }
                }
                None => missing.push(format!(
                    "{}:{}: `{}` starts a program that is not a literal; name it in a \
                     `// starts: ...` comment",
                    path.display(),
                    i + 1,
                    line.trim()
                )),
            }
        }
    }
    (named, missing)
}

/// The commands `setup` checks: the first element of each pair in the
/// `REQUIREMENTS` table of `xtask/src/setup.rs`.
fn setup_commands(setup_rs: &str) -> BTreeSet<String> {
    let table = setup_rs
        .split_once("const REQUIREMENTS")
        .and_then(|(_, rest)| rest.split_once("];"))
        .map(|(t, _)| t)
        .expect("setup.rs has a REQUIREMENTS table");
    table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("(\""))
        .filter_map(|l| l.split('"').next())
        .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
        .collect()
}

/// The executable `name` on PATH, if installed.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether the file at `path` belongs to an Essential or required Debian
/// package (the base system every Debian machine has).
fn from_base_system(path: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or(path.to_owned());
    // With merged /usr, dpkg may know /bin/x as /usr/bin/x or the reverse.
    let name = path.file_name().unwrap_or_default();
    let mut candidates = vec![path.to_owned(), real];
    for dir in ["/bin", "/usr/bin", "/sbin", "/usr/sbin"] {
        candidates.push(Path::new(dir).join(name));
    }
    let mut package = None;
    for candidate in candidates {
        let out = Command::new("dpkg")
            .arg("-S")
            .arg(&candidate)
            .output()
            .expect("dpkg runs (this check needs a Debian system)");
        if out.status.success() {
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            package = line
                .split(':')
                .next()
                .map(|p| p.split(',').next().unwrap_or(p).trim().to_string());
            break;
        }
    }
    let Some(package) = package else {
        return false;
    };
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Essential} ${Priority}", &package])
        .output()
        .expect("dpkg-query runs");
    let fields = String::from_utf8_lossy(&out.stdout);
    fields.contains("yes") || fields.contains("required")
}

/// The problems: programs started that nothing provides.
fn unprovided(
    started: &BTreeMap<String, String>,
    annotated: &BTreeMap<String, String>,
    setup: &BTreeSet<String>,
    base: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let ok = |name: &str| {
        setup.contains(name) || TOOLCHAIN.contains(&name) || OWN.contains(&name) || base(name)
    };
    for (name, at) in started.iter().chain(annotated) {
        if !ok(name) {
            problems.push(format!(
                "{name} (in {at}) is started but `cargo xtask setup` neither provides nor checks it"
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn base_system(name: &str) -> bool {
    which(name).is_some_and(|p| from_base_system(&p))
}

#[test]
fn every_program_the_workspace_starts_comes_from_setup() {
    let sources = sources();
    let setup = setup_commands(
        &std::fs::read_to_string(root().join("xtask/src/setup.rs")).expect("read setup.rs"),
    );
    let started = started(&sources);
    for expected in ["ip", "ipset", "kubectl", "skopeo", "nsenter"] {
        assert!(
            started.contains_key(expected),
            "the scan no longer sees `{expected}` being started: {started:?}"
        );
    }
    let (named, unnamed) = annotated(&sources);
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
    let problems = unprovided(&started, &named, &setup, &base_system);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_planted_program_outside_setup_is_caught() {
    let planted = vec![(
        PathBuf::from("crates/x/src/lib.rs"),
        "fn f() { let _ = std::process::Command::new(\"frobnicate\").status(); \
         netns::run(\"iperf3\", &[]).await; let _ = command_in(&p, \"tc\"); }"
            .to_string(),
    )];
    let started = started(&planted);
    assert_eq!(
        started.keys().cloned().collect::<Vec<_>>(),
        ["frobnicate", "iperf3", "tc"]
    );
    let setup: BTreeSet<String> = ["iperf3".to_string()].into();
    let problems = unprovided(&started, &BTreeMap::new(), &setup, &|_| false);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("frobnicate "), "{problems:?}");
    assert!(problems[1].starts_with("tc "), "{problems:?}");
    // A program whose name is not a literal needs its comment, and the
    // programs the comment names are checked too.
    let dynamic = vec![(
        PathBuf::from("crates/x/src/lib.rs"),
        "fn f(p: &str) {\n    let _ = Command::new(p).status();\n}\n\
         fn g(t: &str) {\n    // starts: nft tc (a remark)\n    let _ = Command::new(t).status();\n}\n"
            .to_string(),
    )];
    let (named, unnamed) = annotated(&dynamic);
    assert_eq!(unnamed.len(), 1, "{unnamed:?}");
    assert!(unnamed[0].contains("lib.rs:2"), "{unnamed:?}");
    assert_eq!(named.keys().cloned().collect::<Vec<_>>(), ["nft", "tc"]);
    let problems = unprovided(&BTreeMap::new(), &named, &setup, &|_| false);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn setup_commands_are_read_from_the_requirements_table() {
    let text = "const X: &[(&str, &str)] = &[(\"no\", \"no\")];\n\
                const REQUIREMENTS: &[(&str, &str)] = &[\n    (\"ip\", \"iproute2\"),\n    \
                (\"/usr/lib/cni/ptp\", \"containernetworking-plugins\"),\n];\n";
    assert_eq!(
        setup_commands(text),
        ["ip".to_string(), "ptp".to_string()].into()
    );
}
