//! Deleting the host interfaces the plugin retired.
//!
//! A DEL takes the pod's host interface down and puts it in
//! [`underlay_proto::RETIRED_LINK_GROUP`] instead of deleting it: deleting a
//! link blocks the caller for an RCU grace period, most of a DEL's time.
//! After each detach (and once at start-up, for what an earlier run left)
//! this task deletes the whole group with one request, after a short pause
//! that lets the DELs of a burst retire their links first: the kernel
//! unregisters them all in one grace period. The runtime's removal of a
//! sandbox's namespace usually takes the pair first; then there is nothing
//! left to delete.

use netlink_packet_route::link::LinkAttribute;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long the task waits after a detach before it deletes the group.
pub const BATCH: Duration = Duration::from_millis(100);

/// Wakes the task that deletes retired host interfaces.
#[derive(Clone, Default)]
pub struct Retired {
    wake: Arc<Notify>,
}

impl Retired {
    /// Starts the task in the current network namespace (the node's).
    pub fn start() -> Retired {
        let retired = Retired::default();
        let wake = retired.wake.clone();
        tokio::spawn(async move {
            loop {
                match delete_retired().await {
                    Ok(false) => {}
                    Ok(true) => tracing::debug!("retired host interfaces deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "deleting retired host interfaces failed; the next detach tries again");
                    }
                }
                wake.notified().await;
                tokio::time::sleep(BATCH).await;
            }
        });
        retired
    }

    /// A DEL retired a host interface.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
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
