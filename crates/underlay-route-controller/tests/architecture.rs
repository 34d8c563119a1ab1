//! Architecture invariant: the route controller's decisions are pure.
//!
//! `naming` (reversible route names), `plan` (the table diff, ownership and
//! the route limit) and `cidrs` (allocation bookkeeping over
//! `underlay-ipam`) decide; the reconciler, the Azure adapter and the
//! Kubernetes side act. These checks fail when one of the deciding modules
//! reaches for I/O, an async runtime, kube or Azure, or imports a module of
//! this crate that does.

use std::path::PathBuf;

/// The modules that decide.
const PURE: &[&str] = &["naming.rs", "plan.rs", "cidrs.rs"];

/// What a deciding module may import from this crate: the other deciding
/// modules and plain data types of the ports.
const ALLOWED_CRATE_IMPORTS: &[&str] = &[
    "crate::naming",
    "crate::plan",
    "crate::cidrs",
    // plain data: a route as the table holds it, and the next-hop type name
    "crate::azure::{TableRoute, VIRTUAL_APPLIANCE}",
    // plain data: what the node watcher reports
    "crate::nodes::NodeEvent",
];

#[path = "../../underlay-ipam/tests/support/purity.rs"]
mod purity;

/// What a deciding module must not reach for beyond plain I/O
/// ([`purity::IO`]), with why each is banned.
const ALSO_FORBIDDEN: &[(&str, &str)] = &[
    (".await", "async code"),
    ("kube", "the Kubernetes client"),
    ("k8s_openapi", "Kubernetes wire types"),
    ("azure_", "the Azure SDK"),
    ("reqwest", "HTTP"),
    ("hyper", "HTTP"),
    (
        "tracing::",
        "logging (the caller logs what a decision means)",
    ),
];

/// The non-test part of a source file (everything before `#[cfg(test)]`).
fn product_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// The violations in one deciding module's source.
fn violations(file: &str, text: &str) -> Vec<String> {
    let code = product_code(text);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or(line);
        for (needle, why) in purity::IO.iter().chain(ALSO_FORBIDDEN) {
            if line.contains(needle) {
                found.push(format!("{file}:{}: `{needle}` ({why})", n + 1));
            }
        }
        if let Some(import) = line.trim().strip_prefix("use crate::") {
            let import = format!("crate::{}", import.trim_end_matches(';'));
            if !ALLOWED_CRATE_IMPORTS
                .iter()
                .any(|allowed| import == *allowed || import.starts_with(&format!("{allowed}::")))
            {
                found.push(format!(
                    "{file}:{}: `use {import}` imports a module that is not one of the deciding ones",
                    n + 1
                ));
            }
        }
    }
    found
}

#[test]
fn the_deciding_modules_do_no_io() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in PURE {
        let text = std::fs::read_to_string(src.join(file))
            .unwrap_or_else(|e| panic!("read src/{file}: {e}"));
        found.extend(violations(file, &text));
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn planted_io_and_imports_are_caught() {
    let planted = "use crate::plan::Plan;\nuse crate::reconciler::Reconciler;\n\
                   fn f() { let _ = std::fs::read(\"x\"); }\nasync fn g() {}\n\
                   // tokio in a comment is fine\n#[cfg(test)]\nmod tests { use tokio; }\n";
    let found = violations("plan.rs", planted);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("crate::reconciler"), "{found:?}");
    assert!(found[1].contains("std::fs"), "{found:?}");
    assert!(found[2].contains("async fn"), "{found:?}");
}
