//! Architecture invariant: underlay-policy-core does no I/O.
//!
//! The core decides what the kernel should hold and what a flow's verdict
//! is; `underlay-policy` talks to the Kubernetes API, runs iptables and
//! ipset and speaks netlink. These checks fail when the core gains a
//! dependency outside the allow-list or when its sources reach for files,
//! sockets, processes, netlink, an async runtime, the clock, Kubernetes
//! types or logging.

#[path = "../../underlay-ipam/tests/support/purity.rs"]
mod purity;

use purity::{IO, crate_src, dependencies_outside, forbidden_in_tree, forbidden_uses};
use std::path::Path;

/// Dependencies the library itself may use: the IPAM core's CIDR and
/// family types, which are pure too.
const ALLOWED_DEPENDENCIES: &[&str] = &["underlay-ipam"];

/// What the policy core must not reach for beyond plain I/O.
const ALSO_FORBIDDEN: &[(&str, &str)] = &[
    ("kube::", "the Kubernetes client"),
    (
        "k8s_openapi",
        "Kubernetes wire types (convert them in underlay-policy)",
    ),
    ("netlink", "netlink"),
    ("nix::", "system calls"),
    ("libc::", "system calls"),
    ("futures", "async code"),
    (".await", "async code"),
    (
        "prometheus",
        "metrics (the engine counts what a decision costs)",
    ),
    ("tracing", "logging (the caller logs what a decision means)"),
    ("Command::new", "processes"),
];

fn forbidden() -> Vec<(&'static str, &'static str)> {
    IO.iter().chain(ALSO_FORBIDDEN).copied().collect()
}

#[test]
fn policy_core_depends_on_nothing_but_the_allow_list() {
    let (deps, extra) =
        dependencies_outside(Path::new(env!("CARGO_MANIFEST_DIR")), ALLOWED_DEPENDENCIES);
    assert!(
        deps.contains(&"underlay-ipam".to_owned()),
        "parser found no dependencies in Cargo.toml"
    );
    assert!(
        extra.is_empty(),
        "underlay-policy-core does no I/O: remove {extra:?} from its [dependencies] \
         (allowed: {ALLOWED_DEPENDENCIES:?}); watchers, tools and netlink belong in underlay-policy"
    );
}

#[test]
fn policy_core_sources_do_no_io() {
    let src = crate_src(env!("CARGO_MANIFEST_DIR"));
    let files = purity::rust_files(&src);
    for module in ["model.rs", "index.rs", "compile.rs", "eval.rs"] {
        assert!(
            files.iter().any(|f| f.ends_with(module)),
            "expected {module} under {}, found {files:?}",
            src.display()
        );
    }
    let hits = forbidden_in_tree(&src, &forbidden());
    assert!(
        hits.is_empty(),
        "underlay-policy-core does no I/O; move these to underlay-policy:\n{}",
        hits.join("\n")
    );
}

/// A core that reached for the runtime, the API types or a tool would be
/// caught: plant one of each.
#[test]
fn planted_io_in_the_core_is_caught() {
    let planted = "use k8s_openapi::api::core::v1::Pod;\n\
                   // tokio in a comment is fine\n\
                   fn f() { std::process::exit(1); }\n\
                   fn g() { tracing::info!(\"compiled\"); }\n\
                   async fn h() { x.await }\n";
    let hits: Vec<usize> = forbidden_uses(planted, &forbidden())
        .into_iter()
        .map(|(line, _)| line)
        .collect();
    assert_eq!(hits, [1, 3, 4, 5, 5]);
}
