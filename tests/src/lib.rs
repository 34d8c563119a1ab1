//! Shared setup of the end-to-end tests: build the binaries the lab runs,
//! start a lab in a temporary directory with namespaces unique to the test,
//! and tear it down afterwards (also when the test fails).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use underlay_lab::lab::{Lab, LabConfig};
use underlay_lab::netns;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

/// Builds every shipped binary and the lab's (`cargo xtask lab build`) once
/// per test run and returns the directory they are in.
///
/// nextest runs every test in its own process, so a per-process guard
/// would run cargo once per test, each time queueing behind any other
/// build on the target directory. Instead the first test of a run builds
/// under a file lock and leaves a stamp named after the run
/// (`NEXTEST_RUN_ID`); the others wait on the lock and find the stamp.
pub fn binaries() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Prebuilt binaries (e.g. from a release build) skip the build.
            if let Some(dir) = std::env::var_os("UNDERLAY_E2E_BIN_DIR") {
                return PathBuf::from(dir);
            }
            let target = target_dir();
            std::fs::create_dir_all(&target).expect("the target directory can be created");
            let lock = std::fs::File::create(target.join("underlay-e2e-build.lock"))
                .expect("the build lock file can be created");
            lock.lock().expect("the build lock can be taken");
            let stamp = std::env::var("NEXTEST_RUN_ID")
                .ok()
                .map(|id| target.join(format!("underlay-e2e-build-{id}.stamp")));
            if let Some(built) = stamp.as_ref().and_then(|s| std::fs::read_to_string(s).ok()) {
                return PathBuf::from(built);
            }
            let start = std::time::Instant::now();
            // `cargo xtask lab build` builds every binary the lab runs from
            // the one list in xtask and prints the directory they are in.
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            // starts: cargo
            let mut build = std::process::Command::new(cargo);
            // nextest sets the package variables of this test crate; a
            // nested cargo would hand them to build scripts that rerun when
            // they change (see xtask's `scrub_package_env`).
            for (key, _) in std::env::vars_os() {
                if let Some(key) = key.to_str()
                    && (key.starts_with("CARGO_PKG_")
                        || matches!(
                            key,
                            "CARGO_MANIFEST_DIR"
                                | "CARGO_MANIFEST_PATH"
                                | "CARGO_CRATE_NAME"
                                | "CARGO_PRIMARY_PACKAGE"
                                | "CARGO_TARGET_TMPDIR"
                        ))
                {
                    build.env_remove(key);
                }
            }
            let output = build
                .current_dir(root())
                .args(["run", "-q", "-p", "xtask", "--", "lab", "build"])
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("cargo runs");
            assert!(
                output.status.success(),
                "building the underlay binaries failed"
            );
            let out = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            eprintln!(
                "built the underlay binaries in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            if let Some(stamp) = stamp {
                // Stamps of earlier runs are of no use any more.
                if let Ok(dir) = std::fs::read_dir(&target) {
                    for e in dir.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with("underlay-e2e-build-") && name.ends_with(".stamp") {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
                let _ = std::fs::write(&stamp, out.as_os_str().as_encoded_bytes());
            }
            out
        })
        .clone()
}

/// A lab for one test; [`TestLab::down`] removes it, and dropping it
/// without `down` (a failed test) still removes its namespaces.
pub struct TestLab {
    pub lab: Option<Lab>,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("lab is up")
    }
}

impl TestLab {
    pub async fn down(mut self) {
        if let Some(lab) = self.lab.take() {
            lab.shutdown().await.expect("lab shuts down cleanly");
        }
        assert!(
            netns::list(&format!("{}-", self.prefix)).is_empty(),
            "the lab left namespaces behind"
        );
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // A panicking test never reached `down`: remove what we can without
        // an async runtime. Child processes die with their handles.
        drop(self.lab.take());
        for name in netns::list(&format!("{}-", self.prefix)) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}

/// Starts a lab for `test`, or returns `None` (after printing a skip line)
/// when not root and `UNDERLAY_REQUIRE_ROOT` is unset.
pub async fn lab(test: &str, configure: impl FnOnce(&mut LabConfig)) -> Option<TestLab> {
    if !netns::require_root(test) {
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let bin = tokio::task::spawn_blocking(binaries)
        .await
        .expect("build task");
    let dir = tempfile::tempdir().expect("temporary directory");
    let prefix = netns::unique_prefix();
    let mut config = LabConfig::new(&prefix, dir.path(), &bin);
    // Extra agent flags for every lab of the run (e.g. `--policy=false` to
    // run the routing tests against an agent built without policy).
    if let Ok(extra) = std::env::var("UNDERLAY_E2E_AGENT_ARGS") {
        config
            .agent_args
            .extend(extra.split_whitespace().map(str::to_owned));
    }
    configure(&mut config);
    let t0 = std::time::Instant::now();
    let progress = move |m: &str| eprintln!("[{test} {:6.1}s] {m}", t0.elapsed().as_secs_f64());
    let lab = match Lab::start(config, &progress).await {
        Ok(lab) => lab,
        Err(e) => {
            let logs = std::fs::read_dir(dir.path().join("logs"))
                .map(|d| {
                    d.flatten()
                        .map(|e| {
                            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(15).collect();
                            format!(
                                "--- {}\n{}",
                                e.path().display(),
                                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            for name in netns::list(&format!("{prefix}-")) {
                let _ = netns::delete(&name).await;
            }
            panic!("the lab did not start: {e}\n{logs}");
        }
    };
    Some(TestLab {
        lab: Some(lab),
        prefix,
        _dir: dir,
    })
}

/// How long convergence (routes, policy, conditions) may take in a test.
pub const CONVERGE: Duration = Duration::from_secs(30);
