//! Architecture invariant: underlay-ipam does no I/O.
//!
//! The crate decides, the binaries act. These checks fail the build of the
//! test suite when the crate gains a dependency outside the allow-list or
//! when its sources reach for files, sockets, processes or an async runtime.

#[path = "support/purity.rs"]
mod purity;

use purity::{
    IO, crate_src, dependencies_outside, forbidden_in_tree, forbidden_uses, library_dependencies,
};
use std::path::Path;

/// Dependencies the library itself may use. Dev-dependencies (test and
/// benchmark tools) are not part of the library and are not checked.
const ALLOWED_DEPENDENCIES: &[&str] = &["thiserror"];

#[test]
fn ipam_depends_on_nothing_but_the_allow_list() {
    let (deps, extra) =
        dependencies_outside(Path::new(env!("CARGO_MANIFEST_DIR")), ALLOWED_DEPENDENCIES);
    assert!(
        deps.contains(&"thiserror".to_owned()),
        "parser found no dependencies in Cargo.toml"
    );
    assert!(
        extra.is_empty(),
        "underlay-ipam does no I/O and stays dependency-light: remove {extra:?} from its \
         [dependencies] (allowed: {ALLOWED_DEPENDENCIES:?}); I/O belongs in the binaries"
    );
}

#[test]
fn ipam_sources_do_no_io() {
    let src = crate_src(env!("CARGO_MANIFEST_DIR"));
    assert!(
        purity::rust_files(&src).len() >= 3,
        "expected the crate's sources under {}",
        src.display()
    );
    let hits = forbidden_in_tree(&src, IO);
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
    let hits: Vec<usize> = forbidden_uses(source, IO)
        .into_iter()
        .map(|(line, _)| line)
        .collect();
    assert_eq!(hits, [1, 3, 4]);
}
