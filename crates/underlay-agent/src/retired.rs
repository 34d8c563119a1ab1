//! Deleting the host interfaces the plugin retired.
//!
//! A DEL takes the pod's host interface down and puts it in
//! [`underlay_proto::RETIRED_LINK_GROUP`] instead of deleting it: deleting a
//! link blocks the caller for an RCU grace period, most of a DEL's time.
//! This task deletes the whole group with one request (the kernel
//! unregisters them all in one grace period), once at start-up for what an
//! earlier run left, and after detaches once the node is quiet: the
//! deletion holds the kernel's routing lock for its grace period, and a
//! pod being wired meanwhile (its veth created, addressed, routed) waits
//! for it, so it is done when no Attach or Detach has started for
//! [`QUIET`]. A node that is never quiet that long still has its retired
//! interfaces deleted every [`MAX_RETIRED`] detaches or after [`MAX_WAIT`].
//! The runtime's removal of a sandbox's namespace usually takes the pair
//! first; then there is nothing left to delete.

use netlink_packet_route::link::LinkAttribute;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How long no Attach or Detach may start before the group is deleted.
pub const QUIET: Duration = Duration::from_millis(100);
/// Detaches after which the group is deleted even on a busy node. Small:
/// the kernel takes each link apart under the routing lock, so a pod
/// being wired meanwhile waits for the whole group (128 links held an ADD
/// up for 25–30 ms), while the wait for the grace period, paid once per
/// deletion, is spent outside the lock.
pub const MAX_RETIRED: usize = 16;
/// How long after a detach the group is deleted even on a busy node.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Wakes the task that deletes retired host interfaces, and hears of the
/// operations it keeps out of the way of.
#[derive(Clone, Default)]
pub struct Retired {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    wake: Notify,
    /// Attaches and detaches started so far.
    started: AtomicU64,
    /// Detaches since the group was last deleted.
    pending: AtomicUsize,
}

impl Retired {
    /// Starts the task in the current network namespace (the node's).
    pub fn start() -> Retired {
        let retired = Retired::default();
        let inner = retired.inner.clone();
        tokio::spawn(async move {
            loop {
                inner.pending.store(0, Ordering::Relaxed);
                match delete_retired_aside().await {
                    Ok(false) => {}
                    Ok(true) => tracing::debug!("retired host interfaces deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting retired host interfaces failed; the next detach tries again");
                    }
                }
                inner.wake.notified().await;
                inner.wait_for_quiet().await;
            }
        });
        retired
    }

    /// An Attach or a Detach starts: the deletion waits for quiet.
    pub fn operation(&self) {
        self.inner.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A DEL retired a host interface.
    pub fn wake(&self) {
        self.inner.pending.fetch_add(1, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }
}

impl Inner {
    /// Returns once no operation started for [`QUIET`], or [`MAX_RETIRED`]
    /// detaches are pending, or [`MAX_WAIT`] passed.
    async fn wait_for_quiet(&self) {
        let since = tokio::time::Instant::now();
        loop {
            let seen = self.started.load(Ordering::Relaxed);
            tokio::time::sleep(QUIET).await;
            if self.started.load(Ordering::Relaxed) == seen
                || self.pending.load(Ordering::Relaxed) >= MAX_RETIRED
                || since.elapsed() >= MAX_WAIT
            {
                return;
            }
        }
    }
}

/// [`delete_retired`] on a thread of its own. The kernel answers a link
/// deletion only once the links are gone, 15–30 ms later (RCU grace
/// periods, though it holds the routing lock only briefly): on a runtime
/// worker that wait would hold up the Attach and Detach calls queued
/// behind it.
async fn delete_retired_aside() -> Result<bool, std::io::Error> {
    tokio::task::spawn_blocking(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?
            .block_on(delete_retired())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Deletes every link of the retired group; false when it had none.
pub async fn delete_retired() -> Result<bool, std::io::Error> {
    const ENODEV: i32 = 19;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(conn);
    // Index 0 with a group: the kernel deletes the group's links in one
    // batch, or answers ENODEV when there are none.
    let mut del = handle.link().del(0);
    del.message_mut()
        .attributes
        .push(LinkAttribute::Group(underlay_proto::RETIRED_LINK_GROUP));
    let result = match del.execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENODEV => Ok(false),
        Err(e) => Err(std::io::Error::other(e)),
    };
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deletion_waits_for_a_quiet_node_or_its_limits() {
        // Quiet at once: one window.
        let inner = Inner::default();
        let t = tokio::time::Instant::now();
        inner.wait_for_quiet().await;
        assert_eq!(t.elapsed(), QUIET);

        // An operation starts in every window: it waits until MAX_WAIT.
        let inner = Arc::new(Inner::default());
        let busy = inner.clone();
        let churn = tokio::spawn(async move {
            loop {
                busy.started.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(QUIET / 4).await;
            }
        });
        let t = tokio::time::Instant::now();
        inner.wait_for_quiet().await;
        assert!(t.elapsed() >= MAX_WAIT, "{:?}", t.elapsed());
        assert!(t.elapsed() < MAX_WAIT + 2 * QUIET, "{:?}", t.elapsed());

        // Busy, but MAX_RETIRED detaches pending: the next window ends it.
        inner.pending.store(MAX_RETIRED, Ordering::Relaxed);
        let t = tokio::time::Instant::now();
        inner.wait_for_quiet().await;
        assert_eq!(t.elapsed(), QUIET);
        churn.abort();
    }
}
