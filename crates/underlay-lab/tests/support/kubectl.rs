//! Running `kubectl` against an embedded API server: the subprocess with the
//! server's kubeconfig, and what a test does when kubectl is missing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use underlay_lab::apiserver::{ApiServer, Config, Handle};

/// Whether `program` runs (`program version --client` succeeds).
fn runs(program: &str) -> bool {
    // starts: kubectl (or the missing name a test passes to see the skip)
    Command::new(program)
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether kubectl is present; when it is not, the test `test` fails if
/// kubectl is required (`UNDERLAY_REQUIRE_KUBECTL` or `CI` set) and otherwise
/// says plainly that it is skipped.
fn kubectl_present(test: &str) -> bool {
    let required = ["UNDERLAY_REQUIRE_KUBECTL", "CI"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    present_or_skip("kubectl", test, required)
}

/// Whether `program` runs; when it does not, fails if it is `required` and
/// otherwise says plainly that `test` is skipped.
pub fn present_or_skip(program: &str, test: &str, required: bool) -> bool {
    if runs(program) {
        return true;
    }
    assert!(
        !required,
        "{test}: {program} is not installed or does not run, and UNDERLAY_REQUIRE_KUBECTL or CI is set; install {program} v1.32 or later"
    );
    // Straight to stderr: the test harness hides what `eprintln!` prints
    // in a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {program} is not installed; install it to run this test (set UNDERLAY_REQUIRE_KUBECTL=1 to make its absence a failure)"
    );
    false
}

/// Run kubectl with `args` (and optional stdin); return (exit code, stdout, stderr).
pub async fn kubectl_code(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut s = child.stdin.take().unwrap();
        s.write_all(input.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finishes")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run kubectl with `args` (and optional stdin); return (success, stdout, stderr).
pub async fn kubectl(
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let (code, out, err) = kubectl_code(kubeconfig, args, stdin).await;
    (code == Some(0), out, err)
}

/// Run kubectl and insist it succeeds; its stdout.
pub async fn ok(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (success, out, err) = kubectl(kc, args, stdin).await;
    assert!(success, "kubectl {args:?} failed: {err}");
    out
}

/// `kubectl apply -f -` of `manifest`, insisting it succeeds; its stdout.
pub async fn apply(kc: &Path, manifest: &str) -> String {
    ok(kc, &["apply", "-f", "-"], Some(manifest)).await
}

/// A server for one test, its kubeconfig in a directory of the test's own.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub server: Handle,
    pub kc: PathBuf,
}

impl Lab {
    /// The lab for `test`, or None when kubectl is absent and not required
    /// (the test is then skipped, and says so).
    pub async fn start(test: &str) -> Option<Lab> {
        if !kubectl_present(test) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        let server = ApiServer::start(Config {
            kubeconfig_out: Some(kc.clone()),
            ..Config::default()
        })
        .await
        .unwrap();
        Some(Lab { dir, server, kc })
    }
}
