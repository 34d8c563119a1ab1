//! Architecture invariant: underlay-ipam does no I/O.
//!
//! The crate decides, the binaries act. These checks fail the build of the
//! test suite when the crate gains a dependency outside the allow-list or
//! when its sources reach for files, sockets, processes or an async runtime.

use std::fs;
use std::path::{Path, PathBuf};

/// Dependencies the library itself may use. Dev-dependencies (test and
/// benchmark tools) are not part of the library and are not checked.
const ALLOWED_DEPENDENCIES: &[&str] = &["thiserror"];

/// Source text that means I/O, with why each is banned.
const FORBIDDEN_IN_SRC: &[(&str, &str)] = &[
    ("std::fs", "file system access"),
    ("std::net::Tcp", "TCP sockets"),
    ("std::net::Udp", "UDP sockets"),
    ("std::os::unix::net", "unix sockets"),
    ("std::process", "processes"),
    ("std::env", "environment access"),
    ("std::time::SystemTime", "the clock"),
    ("std::time::Instant", "the clock"),
    ("std::thread", "threads"),
    ("tokio", "an async runtime"),
    ("async fn", "async code"),
    ("std::io::", "I/O (std::fmt is the way to format)"),
    ("println!", "printing"),
    ("eprintln!", "printing"),
];

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Dependency names in every dependency table of a manifest that the
/// library links: `[dependencies]`, `[build-dependencies]` and their
/// `[target.'…'.…]` forms, inline or as `[dependencies.NAME]` tables.
fn library_dependencies(manifest: &str) -> Vec<String> {
    let is_library_table = |table: &str| {
        let last = table.rsplit('.').next().unwrap_or(table);
        matches!(last, "dependencies" | "build-dependencies") && !table.contains("dev-dependencies")
    };
    let mut deps = Vec::new();
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[').trim_end_matches(']').trim();
            in_table = is_library_table(header);
            // `[dependencies.serde]` names the dependency in the header.
            for prefix in ["dependencies.", "build-dependencies."] {
                if let Some(name) = header.split_once(prefix).map(|(_, name)| name) {
                    if !header.contains("dev-dependencies") {
                        deps.push(name.trim_matches('"').to_owned());
                    }
                    break;
                }
            }
            continue;
        }
        if in_table && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_matches('"');
            // `foo.workspace = true` declares foo.
            deps.push(name.split('.').next().unwrap_or(name).to_owned());
        }
    }
    deps
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("read src entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Forbidden text on non-comment lines of `source`, as `(line, what)`.
fn forbidden_uses(source: &str) -> Vec<(usize, &'static str)> {
    let mut hits = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for &(needle, what) in FORBIDDEN_IN_SRC {
            if code.contains(needle) {
                hits.push((number + 1, what));
            }
        }
    }
    hits
}

#[test]
fn ipam_depends_on_nothing_but_the_allow_list() {
    let manifest = fs::read_to_string(crate_dir().join("Cargo.toml")).expect("read Cargo.toml");
    let deps = library_dependencies(&manifest);
    assert!(
        deps.contains(&"thiserror".to_owned()),
        "parser found no dependencies in {manifest}"
    );
    let extra: Vec<&String> = deps
        .iter()
        .filter(|d| !ALLOWED_DEPENDENCIES.contains(&d.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "underlay-ipam does no I/O and stays dependency-light: remove {extra:?} from its \
         [dependencies] (allowed: {ALLOWED_DEPENDENCIES:?}); I/O belongs in the binaries"
    );
}

#[test]
fn ipam_sources_do_no_io() {
    let files = rust_files(&crate_dir().join("src"));
    assert!(
        files.len() >= 3,
        "expected the crate's sources, found {files:?}"
    );
    let mut hits = Vec::new();
    for file in files {
        let source = fs::read_to_string(&file).expect("read source");
        for (line, what) in forbidden_uses(&source) {
            hits.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    assert!(
        hits.is_empty(),
        "underlay-ipam does no I/O; move these to a binary crate:\n{}",
        hits.join("\n")
    );
}

/// The checks above are only as good as their parsers: show they catch
/// what they are meant to catch.
#[test]
fn the_checks_catch_violations() {
    let manifest = r#"
[package]
name = "x"

[dependencies]
thiserror.workspace = true
tokio = { version = "1" }

[dependencies.serde]
version = "1"

[target.'cfg(unix)'.dependencies]
nix = "0.31"

[build-dependencies]
cc = "1"

[dev-dependencies]
proptest = "1"
"#;
    assert_eq!(
        library_dependencies(manifest),
        ["thiserror", "tokio", "serde", "nix", "cc"]
    );

    let source = "use std::fs::read;\n// std::process in a comment is fine\nlet s = std::net::TcpStream::connect(a);\nuse std::io::Write;\nuse std::fmt::Write;\n";
    let hits: Vec<usize> = forbidden_uses(source)
        .into_iter()
        .map(|(line, _)| line)
        .collect();
    assert_eq!(hits, [1, 3, 4]);
}
