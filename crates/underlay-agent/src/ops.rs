//! One operation at a time per attachment: Attach, Detach and GC of the
//! same (container ID, ifname) never interleave. An Attach holds its key
//! from before it allocates until it has answered or was abandoned (its
//! future dropped when the plugin timed out), so a Detach that arrives
//! meanwhile runs after it, and GC skips the key instead of releasing an
//! address about to be answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use underlay_ipam::AttachmentKey;

#[derive(Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<AttachmentKey, Arc<AsyncMutex<()>>>>,
}

/// Holds one key; dropping it lets the next operation on the key run.
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: AttachmentKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn entry(&self, key: &AttachmentKey) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.clone()).or_default().clone()
    }

    /// Waits until no other operation holds `key`.
    pub async fn lock(&self, key: &AttachmentKey) -> KeyGuard<'_> {
        let guard = self.entry(key).lock_owned().await;
        KeyGuard {
            owner: self,
            key: key.clone(),
            guard: Some(guard),
        }
    }

    /// `key`, unless an operation holds it or waits for it.
    pub fn try_lock(&self, key: &AttachmentKey) -> Option<KeyGuard<'_>> {
        let entry = self.entry(key);
        // The map and this call hold the entry; anyone else is an
        // operation holding or awaiting it.
        let guard = if Arc::strong_count(&entry) > 2 {
            None
        } else {
            entry.try_lock_owned().ok()
        };
        match guard {
            Some(guard) => Some(KeyGuard {
                owner: self,
                key: key.clone(),
                guard: Some(guard),
            }),
            None => {
                self.forget_if_unused(key);
                None
            }
        }
    }

    fn forget_if_unused(&self, key: &AttachmentKey) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(key);
        }
    }

    /// Keys held or awaited right now (for tests and diagnostics).
    pub fn busy(&self) -> usize {
        self.locks.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl KeyGuard<'_> {
    pub fn key(&self) -> &AttachmentKey {
        &self.key
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.owner.forget_if_unused(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_or_awaited_key_cannot_be_taken_and_is_forgotten_when_free() {
        let locks = Arc::new(KeyLocks::default());
        let k = AttachmentKey::new("c", "eth0");
        let held = locks.lock(&k).await;
        assert!(locks.try_lock(&k).is_none());
        let waiter = {
            let locks = locks.clone();
            let k = k.clone();
            tokio::spawn(async move {
                let _g = locks.lock(&k).await;
            })
        };
        drop(held);
        waiter.await.unwrap();
        let again = locks.try_lock(&k).expect("free again");
        drop(again);
        assert_eq!(locks.busy(), 0, "no entry is left behind");
    }
}
