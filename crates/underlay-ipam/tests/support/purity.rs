//! The checks behind the pure crates' `tests/architecture.rs`: which
//! dependencies a manifest gives its library, and which lines of a source
//! reach for something a pure crate must not use. Included by path from
//! every pure crate's architecture test, so there is one parser.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// Source text that means I/O, with why each is banned.
pub const IO: &[(&str, &str)] = &[
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

/// Dependency names in every dependency table of a manifest that the
/// library links: `[dependencies]`, `[build-dependencies]` and their
/// `[target.'…'.…]` forms, inline or as `[dependencies.NAME]` tables.
pub fn library_dependencies(manifest: &str) -> Vec<String> {
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

pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
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

/// Text of `forbidden` on non-comment lines of `source`, as `(line, what)`.
pub fn forbidden_uses(
    source: &str,
    forbidden: &[(&str, &'static str)],
) -> Vec<(usize, &'static str)> {
    let mut hits = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for &(needle, what) in forbidden {
            if code.contains(needle) {
                hits.push((number + 1, what));
            }
        }
    }
    hits
}

/// Every forbidden use in the `.rs` files under `src`, as `file:line: what`.
pub fn forbidden_in_tree(src: &Path, forbidden: &[(&str, &'static str)]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in rust_files(src) {
        let source = fs::read_to_string(&file).expect("read source");
        for (line, what) in forbidden_uses(&source, forbidden) {
            hits.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    hits
}

/// The dependencies of the library whose manifest is `crate_dir/Cargo.toml`
/// that are not in `allowed`.
pub fn dependencies_outside(crate_dir: &Path, allowed: &[&str]) -> (Vec<String>, Vec<String>) {
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).expect("read Cargo.toml");
    let deps = library_dependencies(&manifest);
    let extra = deps
        .iter()
        .filter(|d| !allowed.contains(&d.as_str()))
        .cloned()
        .collect();
    (deps, extra)
}

pub fn crate_src(manifest_dir: &str) -> PathBuf {
    PathBuf::from(manifest_dir).join("src")
}
