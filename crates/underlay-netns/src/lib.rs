//! Running work inside a Linux network namespace, the one place underlay
//! calls `setns`: the CNI plugin wiring a pod, the policy engine's netlink
//! sockets in a node namespace, and the lab and the tests.
//!
//! A network namespace belongs to a thread, and a socket to the namespace
//! of the thread that opened it. So the work runs on a fresh thread that
//! enters the namespace and ends with the work: no other work ever runs in
//! the wrong namespace, and a namespace that cannot be entered is an error,
//! never a fall-back to the current one.

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open network namespace {path}: {source}; does it exist?")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "failed to enter network namespace {path}: {source}; is it a network namespace, and are we root?"
    )]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start a thread for network namespace {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread working inside network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// The path of a namespace given as `ip netns exec` takes it: a name under
/// [`NETNS_DIR`], or a path (anything with a `/`).
pub fn path_of(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_DIR).join(name_or_path)
    }
}

/// Runs `work` on a fresh thread that entered the network namespace at
/// `path`; sockets it opens stay in that namespace after it returns.
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })?;
    run_in_file(&file, path, work)
}

/// [`run_in`] for a namespace already open as `ns` (`path` names it in
/// errors).
pub fn run_in_file<T: Send>(
    ns: &File,
    path: &Path,
    work: impl FnOnce() -> T + Send,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |errno| Error::Enter {
                        path: path.to_owned(),
                        source: errno.into(),
                    },
                )?;
                Ok(work())
            })
            .map_err(|source| Error::Spawn {
                path: path.to_owned(),
                source,
            })?;
        thread
            .join()
            .unwrap_or_else(|_| Err(Error::Panicked(path.to_owned())))
    })
}

/// True when this process may create and enter network namespaces.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For tests and benchmarks that need root: `true` means go on; `false`
/// means the caller should return (a skip line was printed). Panics —
/// failing the test — when not root and `UNDERLAY_REQUIRE_ROOT` is set.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("UNDERLAY_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root and UNDERLAY_REQUIRE_ROOT is set; run the tests as root");
    }
    eprintln!(
        "skipped {test}: needs root (network namespaces); set UNDERLAY_REQUIRE_ROOT=1 to fail instead"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(
            path_of("ul1x0-node"),
            PathBuf::from("/run/netns/ul1x0-node")
        );
        assert_eq!(path_of("/proc/1/ns/net"), PathBuf::from("/proc/1/ns/net"));
    }

    #[test]
    fn a_missing_namespace_is_an_error_and_the_work_never_runs() {
        let mut ran = false;
        let path = path_of(&format!("underlay-no-such-ns-{}", std::process::id()));
        let r = run_in(&path, || ran = true);
        assert!(matches!(r, Err(Error::Open { .. })), "{r:?}");
        assert!(!ran);
    }

    #[test]
    fn a_file_that_is_not_a_namespace_cannot_be_entered() {
        if !is_root() {
            return;
        }
        let file = File::open("/proc/self/status").unwrap();
        let r = run_in_file(&file, Path::new("/proc/self/status"), || ());
        assert!(matches!(r, Err(Error::Enter { .. })), "{r:?}");
    }

    #[test]
    fn the_work_runs_in_the_namespace_and_its_result_comes_back() {
        if !is_root() {
            return;
        }
        // Our own namespace, entered through its /proc link: the work sees
        // the same namespace inode as this thread.
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let seen = run_in(Path::new("/proc/self/ns/net"), || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_eq!(seen, own);
        let panicked = run_in(Path::new("/proc/self/ns/net"), || panic!("boom"));
        assert!(matches!(panicked, Err(Error::Panicked(_))));
    }
}
