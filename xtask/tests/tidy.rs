//! Architecture invariants checked as ordinary tests (see ARCHITECTURE.md).

mod common;
use common::root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Normal (non-dev, non-build) dependency names of every crate under crates/.
fn crate_dependencies() -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("read crates/") {
        let dir = entry.expect("crates/ entry").path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, dependencies_of(&manifest));
    }
    out
}

/// The keys of the `[dependencies]` table (and of target-specific ones).
fn dependencies_of(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]"
                || (line.starts_with("[target.") && line.ends_with(".dependencies]"));
            continue;
        }
        if in_deps
            && !line.is_empty()
            && !line.starts_with('#')
            && let Some((key, _)) = line.split_once('=')
        {
            {
                // `name.workspace = true` and `name = { .. }` both name `name`.
                let key = key.trim().split('.').next().unwrap_or_default();
                deps.push(key.trim_matches('"').to_string());
            }
        }
    }
    deps
}

fn has_binary(dir: &Path) -> bool {
    dir.join("src/main.rs").exists() || dir.join("src/bin").exists()
}

#[test]
fn every_crate_folder_is_named_after_its_crate() {
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            manifest.contains(&format!("name = \"{folder}\"")),
            "crates/{folder}: the package name must equal the folder name"
        );
    }
}

#[test]
fn pure_crates_depend_on_no_other_workspace_crate() {
    // The policy core builds on the IPAM core's CIDR and family types.
    const PURE: [&str; 3] = ["underlay-ipam", "underlay-proto", "underlay-policy-core"];
    let deps = crate_dependencies();
    for pure in PURE {
        let list = deps
            .get(pure)
            .unwrap_or_else(|| panic!("{pure} is not in the workspace"));
        let impure: Vec<_> = list
            .iter()
            .filter(|d| d.starts_with("underlay-") && !PURE.contains(&d.as_str()))
            .collect();
        assert!(
            impure.is_empty(),
            "{pure} is pure and must not depend on {impure:?}"
        );
    }
}

#[test]
fn no_binary_crate_depends_on_another_binary_crate() {
    let deps = crate_dependencies();
    let binaries: Vec<String> = deps
        .keys()
        .filter(|name| {
            name.as_str() != "underlay-lab" && has_binary(&root().join("crates").join(name))
        })
        .cloned()
        .collect();
    for bin in &binaries {
        for dep in &deps[bin] {
            assert!(
                !binaries.contains(dep),
                "{bin} depends on the binary crate {dep}: move the shared code into a library crate"
            );
        }
    }
}

#[test]
fn nothing_shipped_depends_on_the_lab() {
    for (name, list) in crate_dependencies() {
        assert!(
            name == "underlay-lab" || !list.iter().any(|d| d == "underlay-lab"),
            "{name} depends on underlay-lab, which is never shipped (a dev-dependency is fine)"
        );
    }
}

#[test]
fn the_cni_plugin_never_depends_on_kube() {
    if let Some(list) = crate_dependencies().get("underlay-cni") {
        for banned in ["kube", "k8s-openapi", "redb"] {
            assert!(
                !list.iter().any(|d| d == banned),
                "underlay-cni must stay small and start fast: it must not depend on {banned}"
            );
        }
    }
}

#[test]
fn the_dependency_parser_reads_tables() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\na.workspace = true\nb = \"1\"\n\
                    [dev-dependencies]\nc = \"1\"\n[target.'cfg(unix)'.dependencies]\nd = \"1\"\n";
    assert_eq!(dependencies_of(manifest), ["a", "b", "d"]);
}

/// The test binaries (`package::name`) whose sources check for root.
fn root_test_binaries() -> Vec<String> {
    const CHECKS: [&str; 4] = [
        "require_root(",
        "skip_unless_root(",
        "root_or_skip(",
        "underlay_e2e::lab(",
    ];
    let mut out = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("crates"))
        .expect("read crates/")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("tests"),
            )
        })
        .collect();
    dirs.push(("xtask".into(), root().join("xtask/tests")));
    dirs.push(("underlay-e2e".into(), root().join("tests/tests")));
    for (package, dir) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "rs") || p.ends_with("tidy.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read a test");
            if CHECKS.iter().any(|c| text.contains(c)) {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                out.push(format!("{package}::{stem}"));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_root_test_binary_is_filtered_out_of_the_fast_profile() {
    let config = std::fs::read_to_string(root().join(".config/nextest.toml"))
        .expect("read .config/nextest.toml");
    let default_filter = config
        .split_once("[profile.default]")
        .and_then(|(_, rest)| rest.split_once("default-filter = \"\"\""))
        .and_then(|(_, rest)| rest.split_once("\"\"\""))
        .map(|(filter, _)| filter.to_string())
        .expect("the default profile has a default-filter");
    let binaries = root_test_binaries();
    assert!(
        binaries.iter().any(|b| b == "underlay-cni::storm"),
        "the scan no longer finds the root tests: {binaries:?}"
    );
    let missing: Vec<&String> = binaries
        .iter()
        .filter(|b| {
            let package = b.split("::").next().unwrap_or_default();
            !default_filter.contains(&format!("binary_id({b})"))
                && !default_filter.contains(&format!("package({package})"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these test binaries need root but the default nextest profile runs them \
         (add them to its default-filter in .config/nextest.toml): {missing:?}"
    );
}

#[test]
fn the_workspace_hack_holds_the_features_the_workspace_resolves() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["workspace-hack", "--check"])
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `struct` items named like test doubles (`Fake…`, `Recording…`) in
/// product source that live outside a `fake.rs` file, as `file: name`.
fn doubles_outside_fake_files(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        if path.ends_with("/fake.rs") {
            continue;
        }
        let product = text.split("#[cfg(test)]").next().unwrap_or(text);
        for line in product.lines() {
            let item = line.trim_start();
            let item = item.strip_prefix("pub ").unwrap_or(item);
            let Some(name) = item.strip_prefix("struct ") else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("Fake") || name.starts_with("Recording") {
                found.push(format!("{path}: {name}"));
            }
        }
    }
    found
}

/// The product sources: the `src` trees of the crates and of xtask.
fn product_sources() -> Vec<(String, String)> {
    let root = root();
    common::rust_sources(&[root.join("crates"), root.join("xtask/src")])
        .into_iter()
        .filter(|(p, _)| {
            // Judged below the workspace root, wherever the clone lives.
            p.strip_prefix(&root)
                .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == "src"))
        })
        .map(|(p, text)| (p.display().to_string(), text))
        .collect()
}

#[test]
fn recording_fakes_live_in_files_of_their_own() {
    let sources = product_sources();
    assert!(
        sources
            .iter()
            .any(|(p, _)| p.ends_with("dataplane/fake.rs")),
        "expected the fakes' files among {} sources",
        sources.len()
    );
    let found = doubles_outside_fake_files(&sources);
    assert!(
        found.is_empty(),
        "test doubles belong in a fake.rs beside the port they stand in for, not in product code:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_planted_fake_beside_product_code_is_caught() {
    let files = vec![
        (
            "crates/x/src/port.rs".to_owned(),
            "pub trait Port {}\npub struct FakePort;\nstruct RecordingSink {}\n#[cfg(test)]\nmod tests { struct FakeInTests; }\n".to_owned(),
        ),
        (
            "crates/x/src/port/fake.rs".to_owned(),
            "pub struct FakePort;\n".to_owned(),
        ),
    ];
    assert_eq!(
        doubles_outside_fake_files(&files),
        [
            "crates/x/src/port.rs: FakePort",
            "crates/x/src/port.rs: RecordingSink"
        ]
    );
}
