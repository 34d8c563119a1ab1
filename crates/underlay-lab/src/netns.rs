//! Network namespaces the lab creates: naming, creation and removal, running
//! commands inside them and opening sockets inside them.
//!
//! Namespaces are named (`ip netns add`, a bind mount under `/run/netns`) so
//! that every tool — `ip -n`, `nsenter`, the CNI plugin's `CNI_NETNS` — can
//! reach them by path, and so that `lab down` can find them after a crash.
//! Nothing here ever touches the machine's own network namespace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

pub use underlay_netns::NETNS_DIR;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to start `{cmd}`: {source}; is iproute2 installed and are we root?")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("failed to enter network namespace {path}: {source}; does it exist?")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread working inside network namespace {0} panicked")]
    Thread(PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A unique prefix for the namespaces of one test or one lab: `ul<pid>x<n>`.
/// Short, because interface names derived from it must fit in 15 bytes.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "ul{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace. Dropping it deletes the namespace (best effort)
/// unless [`Netns::leak`] was called; [`Netns::delete`] reports errors.
#[derive(Debug)]
pub struct Netns {
    name: String,
    delete_on_drop: bool,
}

impl Netns {
    /// Creates the namespace and brings its loopback up. An existing
    /// namespace of the same name (left over by a crash) is replaced.
    pub async fn create(name: &str) -> Result<Self> {
        if Path::new(NETNS_DIR).join(name).exists() {
            run("ip", &["netns", "del", name]).await?;
        }
        run("ip", &["netns", "add", name]).await?;
        let ns = Self {
            name: name.to_owned(),
            delete_on_drop: true,
        };
        run("ip", &["-n", name, "link", "set", "lo", "up"]).await?;
        Ok(ns)
    }

    /// Creates a namespace of its own for one test or benchmark: the
    /// process's [`unique_prefix`] followed by `tag`.
    pub async fn create_unique(tag: &str) -> Result<Self> {
        Self::create(&format!("{}{tag}", unique_prefix())).await
    }

    /// Refers to an existing namespace without owning it.
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            delete_on_drop: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path, as `CNI_NETNS` and `nsenter --net=` take it.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Keeps the namespace after this handle is dropped.
    pub fn leak(mut self) -> String {
        self.delete_on_drop = false;
        std::mem::take(&mut self.name)
    }

    /// A command that runs `program` inside the namespace (through
    /// `nsenter`, which changes only the network namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        command_in(&self.path(), program)
    }

    /// Runs `ip -batch` inside the namespace.
    pub async fn ip_batch(&self, lines: &[String]) -> Result<()> {
        ip_batch(Some(&self.name), lines).await
    }

    /// Sets sysctls (`key=value`) inside the namespace.
    pub async fn sysctl(&self, settings: &[&str]) -> Result<()> {
        let mut args = vec!["sysctl", "-q", "-w"];
        args.extend_from_slice(settings);
        let path = self.path();
        let out = command_in(&path, "sysctl")
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                cmd: args.join(" "),
                source,
            })?;
        check(&args.join(" "), &out)
    }

    /// Deletes the namespace now.
    pub async fn delete(mut self) -> Result<()> {
        self.delete_on_drop = false;
        delete(&self.name).await
    }

    /// Runs `f` on a fresh thread that has entered this namespace: sockets it
    /// creates stay in the namespace after the thread ends.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        in_netns(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.delete_on_drop && !self.name.is_empty() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes a named namespace; a namespace that is already gone is fine.
pub async fn delete(name: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    run("ip", &["netns", "del", name]).await
}

/// The named namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A command that runs `program` inside the namespace at `path`.
pub fn command_in(path: &Path, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("nsenter");
    let mut net = std::ffi::OsString::from("--net=");
    net.push(path);
    cmd.arg(net).arg("--").arg(program);
    cmd
}

/// Runs `f` on a fresh thread that entered the namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    underlay_netns::run_in(path, f).map_err(|e| match e {
        underlay_netns::Error::Open { path, source }
        | underlay_netns::Error::Enter { path, source } => Error::Enter { path, source },
        underlay_netns::Error::Spawn { path, .. } | underlay_netns::Error::Panicked(path) => {
            Error::Thread(path)
        }
    })
}

/// Runs `ip [-n netns] -batch -` with the given lines; stops at the first
/// failing line and reports it.
pub async fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    use tokio::io::AsyncWriteExt;
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let display = format!("ip {} <<< {:?}", args.join(" "), lines.join("; "));
    let mut child = tokio::process::Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            cmd: display.clone(),
            source,
        })?;
    let mut input = lines.join("\n");
    input.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|source| Error::Spawn {
                cmd: display.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn {
            cmd: display.clone(),
            source,
        })?;
    check(&display, &out)
}

/// Runs a program to completion and fails with its stderr on a non-zero exit.
pub async fn run(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).await.map(drop)
}

/// Runs a program to completion and returns its stdout.
pub async fn output(program: &str, args: &[&str]) -> Result<String> {
    let cmd = format!("{program} {}", args.join(" "));
    // starts: caller
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    check(&cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(cmd: &str, out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: cmd.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

pub use underlay_netns::{is_root, require_root};
