//! The endpoint service: pod address allocation and endpoint records,
//! independent of gRPC.
//!
//! Invariants:
//! - An address is answered to the plugin only after its record is
//!   committed to the store, so after a crash every address a pod may be
//!   using is restored from the store and never handed out again.
//! - The in-memory allocator and record map change together with the store,
//!   under one lock; a failed commit leaves memory as it was.
//! - Attach, Detach and GC of one attachment never interleave
//!   ([`crate::ops`]); an Attach abandoned by its plugin (timeout) ends
//!   with its future, so it never holds its attachment forever.
//! - GC never releases an attachment whose Attach is still running, nor
//!   one whose plugin is still wiring it (its connection's
//!   [`Lease`] is alive).

use crate::conn::Lease;
use crate::hook::{EndpointHook, EndpointInfo, HookError};
use crate::metrics::Metrics;
use crate::ops::KeyLocks;
use crate::store::{Record, Store, StoreError, now_ms};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use underlay_ipam::{AttachmentKey, Cidr, Family, PodAllocator};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    NotReady(String),
    #[error("invalid attachment: {0}")]
    InvalidKey(String),
    #[error("{0}")]
    Exhausted(String),
    /// The host interface name is held by another pod's endpoint.
    #[error("{0}")]
    NameTaken(String),
    #[error("no attachment {0}")]
    NotFound(AttachmentKey),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = EndpointError> = std::result::Result<T, E>;

/// What Attach needs beyond the key.
#[derive(Debug, Clone)]
pub struct AttachInput {
    pub key: AttachmentKey,
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub infra_container_id: String,
    pub host_interface: String,
    pub netns: String,
    pub network_name: String,
    pub mtu: Option<u32>,
    /// The plugin's connection: GC leaves the attachment alone while it
    /// is open (the plugin is wiring the pod).
    pub lease: Lease,
}

/// One pool's numbers for Status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub cidr: Cidr,
    pub capacity: u128,
    pub allocated: u128,
}

struct State {
    pools: Option<PodAllocator>,
    /// Why Attach cannot be served yet, when it cannot.
    waiting: String,
    records: BTreeMap<AttachmentKey, Record>,
    /// The connection of each attachment's last answered Attach.
    leases: HashMap<AttachmentKey, Lease>,
}

impl State {
    /// Whether GC called on `caller`'s connection may release `key`: not
    /// while another plugin that was answered for it is still running.
    fn collectable(&self, key: &AttachmentKey, caller: &Lease) -> bool {
        self.leases
            .get(key)
            .is_none_or(|l| !l.alive() || l.same(caller))
    }
}

struct Inner {
    store: Store,
    state: Mutex<State>,
    ops: KeyLocks,
    hook: Arc<dyn EndpointHook>,
    metrics: Arc<Metrics>,
    default_mtu: u32,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave memory and store out of
        // step (the store is written before memory), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The endpoint service. Cheap to clone.
#[derive(Clone)]
pub struct Endpoints {
    inner: Arc<Inner>,
}

pub fn info(r: &Record) -> EndpointInfo {
    EndpointInfo {
        key: r.key(),
        namespace: r.namespace.clone(),
        pod_name: r.pod_name.clone(),
        pod_uid: r.pod_uid.clone(),
        host_interface: r.host_interface.clone(),
        ips: r.ips.clone(),
    }
}

fn validate(key: &AttachmentKey) -> Result<()> {
    if key.container_id.is_empty() || key.ifname.is_empty() {
        return Err(EndpointError::InvalidKey(
            "container id and interface name must both be set".into(),
        ));
    }
    if key.container_id.contains('/') || key.ifname.contains('/') {
        return Err(EndpointError::InvalidKey(
            "container id and interface name must not contain '/'".into(),
        ));
    }
    Ok(())
}

/// Who holds `input`'s host interface name, when it is another pod (an
/// older sandbox of the same pod may hold it: its link is being replaced).
fn name_holder(records: &BTreeMap<AttachmentKey, Record>, input: &AttachInput) -> Option<String> {
    if input.host_interface.is_empty() {
        return None;
    }
    let same_pod = |r: &Record| {
        !r.namespace.is_empty()
            && !r.pod_name.is_empty()
            && r.namespace == input.namespace
            && r.pod_name == input.pod_name
            && r.ifname == input.key.ifname
    };
    records
        .values()
        .find(|r| r.host_interface == input.host_interface && !same_pod(r))
        .map(|r| {
            if r.pod_name.is_empty() {
                format!("attachment {}", r.key())
            } else {
                format!("pod {}/{}", r.namespace, r.pod_name)
            }
        })
}

/// A host interface name must be a Linux interface name (it ends up in
/// iptables-restore scripts and netlink requests): 1-15 bytes, not `.` or
/// `..`, no `/`, `:`, whitespace or control characters.
fn validate_host_interface(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(EndpointError::InvalidKey(format!(
            "host interface {name:?} {why}; the plugin names it udl + 11 hex digits"
        )))
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("is not an interface name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("may not contain '/', ':', whitespace or control characters");
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EndpointError::Internal(format!("store task failed: {e}")))?
}

impl Endpoints {
    /// Opens the service over `store`, with the records it holds. Attach is
    /// refused until [`Endpoints::set_pools`] and [`Endpoints::mark_ready`].
    pub fn open(
        store: Store,
        hook: Arc<dyn EndpointHook>,
        metrics: Arc<Metrics>,
        default_mtu: u32,
    ) -> Result<Self> {
        let records = store
            .load()?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect::<BTreeMap<_, _>>();
        metrics.endpoints.set(records.len() as i64);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(State {
                    pools: None,
                    waiting: "the node's pod cidrs are not known yet".into(),
                    records,
                    leases: HashMap::new(),
                }),
                ops: KeyLocks::default(),
                hook,
                metrics,
                default_mtu,
            }),
        })
    }

    /// Records why Attach cannot be served yet (for Status).
    pub fn set_waiting(&self, reason: impl Into<String>) {
        self.inner.lock().waiting = reason.into();
        self.inner.metrics.ready.set(0);
    }

    /// Installs the node's pod CIDRs (again, when they changed) and restores
    /// every recorded attachment into the allocator. Records that cannot be
    /// restored (outside the CIDRs, or clashing) are kept so DEL and GC
    /// still find them, and their addresses are never handed out: new
    /// addresses come from the new CIDRs only. They are returned for
    /// logging.
    pub fn set_pools(&self, cidrs: &[Cidr]) -> Result<Vec<(AttachmentKey, String)>> {
        let mut alloc = PodAllocator::new(cidrs).map_err(|e| {
            EndpointError::NotReady(format!("the node's pod cidrs are unusable: {e}"))
        })?;
        let mut st = self.inner.lock();
        let mut rejected = Vec::new();
        for (key, rec) in &st.records {
            if let Err(e) = alloc.restore(key.clone(), rec.ips.clone()) {
                rejected.push((key.clone(), e.to_string()));
            }
        }
        st.pools = Some(alloc);
        self.update_pool_metrics(&st);
        Ok(rejected)
    }

    /// Opens Attach for business (after the hook restored every endpoint).
    pub fn mark_ready(&self) {
        self.inner.lock().waiting.clear();
        self.inner.metrics.ready.set(1);
    }

    /// Whether pod CIDRs are installed.
    pub fn has_pools(&self) -> bool {
        self.inner.lock().pools.is_some()
    }

    fn update_pool_metrics(&self, st: &State) {
        let m = &self.inner.metrics;
        m.endpoints.set(st.records.len() as i64);
        if let Some(p) = &st.pools {
            let cidrs = p.node_cidrs();
            let outside = st
                .records
                .values()
                .filter(|r| !r.ips.iter().any(|ip| cidrs.iter().any(|c| c.contains(*ip))))
                .count();
            m.outside.set(outside as i64);
            for fam in [Family::V4, Family::V6] {
                let label = crate::metrics::FamilyLabel::of(fam);
                if p.capacity(fam) > 0 {
                    m.pool_capacity
                        .get_or_create(&label)
                        .set(p.capacity(fam) as f64);
                    m.pool_allocated
                        .get_or_create(&label)
                        .set(p.used(fam) as f64);
                }
            }
        }
    }

    /// Every endpoint on record, oldest attachment first: restored in this
    /// order, the newest sandbox of a pod is the one in force on its host
    /// interface.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        let st = self.inner.lock();
        let mut records: Vec<&Record> = st.records.values().collect();
        records.sort_by_key(|r| r.created_unix_ms);
        records.into_iter().map(info).collect()
    }

    /// Allocates (or returns) the attachment's addresses, records it
    /// durably, then waits for the hook to put its policy in place.
    pub async fn attach(&self, input: AttachInput) -> Result<Record> {
        validate(&input.key)?;
        validate_host_interface(&input.host_interface)?;
        // Held until answered, or dropped with this future when the plugin
        // gave up: a Detach or GC of the key waits or skips meanwhile.
        let _op = self.inner.ops.lock(&input.key).await;
        let lease = input.lease.clone();
        let inner = self.inner.clone();
        let this = self.clone();
        let (rec, fresh) = blocking(move || {
            let mut st = inner.lock();
            if st.pools.is_none() || !st.waiting.is_empty() {
                return Err(EndpointError::NotReady(format!(
                    "the agent is not ready: {}",
                    st.waiting
                )));
            }
            if let Some(rec) = st.records.get(&input.key) {
                return Ok((rec.clone(), false));
            }
            if let Some(holder) = name_holder(&st.records, &input) {
                return Err(EndpointError::NameTaken(format!(
                    "host interface {} belongs to {holder}; ask again with another name",
                    input.host_interface
                )));
            }
            let alloc = st.pools.as_mut().expect("checked above");
            let ips = alloc.allocate(&input.key).map_err(|e| match e {
                underlay_ipam::Error::Exhausted { .. } => EndpointError::Exhausted(e.to_string()),
                other => EndpointError::InvalidKey(other.to_string()),
            })?;
            let rec = Record {
                container_id: input.key.container_id.clone(),
                ifname: input.key.ifname.clone(),
                ips,
                namespace: input.namespace,
                pod_name: input.pod_name,
                pod_uid: input.pod_uid,
                infra_container_id: input.infra_container_id,
                host_interface: input.host_interface,
                netns: input.netns,
                network_name: input.network_name,
                mtu: input.mtu.unwrap_or(inner.default_mtu),
                created_unix_ms: now_ms(),
            };
            if let Err(e) = inner.store.apply(&[&rec], &[]) {
                if let Some(a) = st.pools.as_mut() {
                    a.release(&input.key);
                }
                return Err(e.into());
            }
            st.records.insert(input.key.clone(), rec.clone());
            inner.metrics.allocations.inc();
            this.update_pool_metrics(&st);
            Ok((rec, true))
        })
        .await?;

        let hooked = self.inner.hook.attached(&info(&rec)).await;
        match hooked {
            Ok(()) => {
                self.inner.lock().leases.insert(rec.key(), lease);
                Ok(rec)
            }
            Err(e) => {
                if fresh {
                    // Leave nothing behind: the plugin reports the failure and
                    // the runtime retries from scratch.
                    if let Err(re) = self.remove(vec![rec.key()], None).await {
                        tracing::error!(key = %rec.key(), error = %re, "cannot roll back an attachment after a policy failure");
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Releases `keys` durably and tells the hook; returns what was held.
    /// With `gc_caller`, only keys GC on that connection may collect. The
    /// caller holds each key's operation lock.
    async fn remove(
        &self,
        keys: Vec<AttachmentKey>,
        gc_caller: Option<Lease>,
    ) -> Result<Vec<Record>> {
        let inner = self.inner.clone();
        let this = self.clone();
        let removed = blocking(move || {
            let mut st = inner.lock();
            let present: Vec<AttachmentKey> = keys
                .into_iter()
                .filter(|k| st.records.contains_key(k))
                .filter(|k| gc_caller.as_ref().is_none_or(|c| st.collectable(k, c)))
                .collect();
            if present.is_empty() {
                return Ok(Vec::new());
            }
            inner.store.apply(&[], &present)?;
            let mut out = Vec::with_capacity(present.len());
            for k in &present {
                if let Some(rec) = st.records.remove(k) {
                    out.push(rec);
                }
                st.leases.remove(k);
                if let Some(a) = st.pools.as_mut() {
                    a.release(k);
                }
                inner.metrics.releases.inc();
            }
            this.update_pool_metrics(&st);
            Ok(out)
        })
        .await?;
        for rec in &removed {
            self.inner.hook.detached(&info(rec)).await;
        }
        Ok(removed)
    }

    /// Releases one attachment; `None` when it was not held.
    /// An Attach of the same key still running finishes first.
    pub async fn detach(&self, key: AttachmentKey) -> Result<Option<Record>> {
        validate(&key)?;
        let _op = self.inner.ops.lock(&key).await;
        Ok(self.remove(vec![key], None).await?.into_iter().next())
    }

    /// The record of one attachment.
    pub fn check(&self, key: &AttachmentKey) -> Result<Record> {
        validate(key)?;
        self.inner
            .lock()
            .records
            .get(key)
            .cloned()
            .ok_or_else(|| EndpointError::NotFound(key.clone()))
    }

    /// Releases every attachment not in `valid`, except those being
    /// attached or detached right now, and those whose plugin (other than
    /// `caller`) is still wiring them: the runtime may not list them yet.
    pub async fn gc(&self, valid: &[AttachmentKey], caller: &Lease) -> Result<Vec<Record>> {
        let valid: HashSet<&AttachmentKey> = valid.iter().collect();
        let candidates: Vec<AttachmentKey> = {
            let mut st = self.inner.lock();
            st.leases.retain(|_, l| l.alive());
            st.records
                .keys()
                .filter(|k| !valid.contains(k))
                .cloned()
                .collect()
        };
        // Held until the hook has been told, so an Attach of the same key
        // right after starts from a clean slate.
        let held: Vec<_> = candidates
            .iter()
            .filter_map(|k| self.inner.ops.try_lock(k))
            .collect();
        let keys = held.iter().map(|g| g.key().clone()).collect();
        let released = self.remove(keys, Some(caller.clone())).await;
        drop(held);
        released
    }

    /// Pool usage, in configured order; empty before pod CIDRs are known.
    pub fn pools(&self) -> Vec<PoolUsage> {
        let st = self.inner.lock();
        st.pools
            .as_ref()
            .map(|p| {
                p.node_cidrs()
                    .into_iter()
                    .map(|cidr| PoolUsage {
                        cidr,
                        capacity: p.capacity(cidr.family()),
                        allocated: p.used(cidr.family()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// (ready, reason, endpoint count)
    pub fn readiness(&self) -> (bool, String, usize) {
        let st = self.inner.lock();
        (
            st.pools.is_some() && st.waiting.is_empty(),
            st.waiting.clone(),
            st.records.len(),
        )
    }

    pub fn hook(&self) -> &Arc<dyn EndpointHook> {
        &self.inner.hook
    }

    /// The addresses held by `key`, for tests and diagnostics.
    pub fn addresses(&self, key: &AttachmentKey) -> Option<Vec<IpAddr>> {
        self.inner.lock().records.get(key).map(|r| r.ips.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::fake::{Call, RecordingHook};

    fn service(dir: &std::path::Path, hook: Arc<dyn EndpointHook>) -> Endpoints {
        let store = Store::open(dir).unwrap();
        Endpoints::open(store, hook, Arc::new(Metrics::new()), 1500).unwrap()
    }

    fn input(id: &str) -> AttachInput {
        AttachInput {
            key: AttachmentKey::new(id, "eth0"),
            namespace: "ns".into(),
            pod_name: format!("pod-{id}"),
            host_interface: format!("udl{id}"),
            pod_uid: String::new(),
            infra_container_id: String::new(),
            netns: String::new(),
            network_name: "underlay".into(),
            mtu: None,
            lease: Lease::none(),
        }
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    trait Ready {
        fn set_pools_ready(&self, c: &[Cidr]) -> Vec<(AttachmentKey, String)>;
    }
    impl Ready for Endpoints {
        fn set_pools_ready(&self, c: &[Cidr]) -> Vec<(AttachmentKey, String)> {
            let r = self.set_pools(c).unwrap();
            self.mark_ready();
            r
        }
    }

    #[tokio::test]
    async fn a_host_interface_that_is_no_linux_interface_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        svc.set_pools_ready(&cidrs(&["10.244.1.0/24"]));
        let long = "udl0123456789abc".to_string();
        for bad in [
            "",
            ".",
            "..",
            "udl a",
            "udla\n-A FORWARD -j ACCEPT",
            "udl/a",
            "udl:a",
            "udl\u{0}",
            long.as_str(),
        ] {
            let mut i = input("c1");
            i.host_interface = bad.into();
            let got = svc.attach(i).await;
            assert!(
                matches!(got, Err(EndpointError::InvalidKey(ref m)) if m.contains("host interface")),
                "{bad:?}: {got:?}"
            );
        }
        assert!(svc.endpoints().is_empty());
        let mut ok = input("c1");
        ok.host_interface = "udl0123456789a".into();
        svc.attach(ok).await.unwrap();
    }

    #[tokio::test]
    async fn attach_before_pod_cidrs_are_known_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        assert!(matches!(
            svc.attach(input("a")).await,
            Err(EndpointError::NotReady(_))
        ));
        assert!(!svc.readiness().0);
    }

    #[tokio::test]
    async fn attach_is_idempotent_dual_stack_and_calls_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(RecordingHook::default());
        let svc = service(dir.path(), hook.clone());
        svc.set_pools_ready(&cidrs(&["10.244.1.0/24", "fd00:1::/64"]));
        let a = svc.attach(input("a")).await.unwrap();
        assert_eq!(a.ips.len(), 2);
        assert!(a.ips[0].is_ipv4() && a.ips[1].is_ipv6());
        let again = svc.attach(input("a")).await.unwrap();
        assert_eq!(a.ips, again.ips);
        let b = svc.attach(input("b")).await.unwrap();
        assert_ne!(a.ips, b.ips);
        assert_eq!(
            hook.calls()
                .iter()
                .filter(|c| matches!(c, Call::Attached(_)))
                .count(),
            3
        );
        assert_eq!(svc.pools()[0].allocated, 2);
    }

    #[tokio::test]
    async fn records_survive_a_restart_and_are_never_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
            svc.set_pools_ready(&cidrs(&["10.244.1.0/29"]));
            let mut ips = Vec::new();
            for id in ["a", "b", "c"] {
                ips.push(svc.attach(input(id)).await.unwrap().ips[0]);
            }
            svc.detach(AttachmentKey::new("b", "eth0")).await.unwrap();
            ips
        };
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        svc.set_pools_ready(&cidrs(&["10.244.1.0/29"]));
        assert_eq!(
            svc.addresses(&AttachmentKey::new("a", "eth0")).unwrap()[0],
            first[0]
        );
        assert_eq!(
            svc.addresses(&AttachmentKey::new("c", "eth0")).unwrap()[0],
            first[2]
        );
        assert!(svc.addresses(&AttachmentKey::new("b", "eth0")).is_none());
        // A /29 has 5 usable addresses (.1-.6 minus... network and last).
        let mut seen: HashSet<IpAddr> = [first[0], first[2]].into();
        for id in ["d", "e", "f", "g"] {
            match svc.attach(input(id)).await {
                Ok(r) => assert!(seen.insert(r.ips[0]), "{} handed out twice", r.ips[0]),
                Err(EndpointError::Exhausted(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_hook_failure_rolls_the_attachment_back() {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(RecordingHook::default());
        *hook.fail_attach.lock().unwrap() = Some(HookError::Unavailable("syncing".into()));
        let svc = service(dir.path(), hook.clone());
        svc.set_pools_ready(&cidrs(&["10.244.1.0/24"]));
        let err = svc.attach(input("a")).await.unwrap_err();
        assert!(matches!(
            err,
            EndpointError::Hook(HookError::Unavailable(_))
        ));
        assert!(svc.endpoints().is_empty());
        assert_eq!(svc.pools()[0].allocated, 0);
        assert!(matches!(hook.calls().last(), Some(Call::Detached(_))));
        drop(svc);
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        assert!(svc.endpoints().is_empty(), "the rollback is durable");
    }

    #[tokio::test]
    async fn gc_releases_everything_not_valid() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        svc.set_pools_ready(&cidrs(&["10.244.1.0/24"]));
        for id in ["a", "b", "c"] {
            svc.attach(input(id)).await.unwrap();
        }
        let released = svc
            .gc(&[AttachmentKey::new("b", "eth0")], &Lease::none())
            .await
            .unwrap();
        let ids: Vec<_> = released.iter().map(|r| r.container_id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(svc.endpoints().len(), 1);
        assert!(matches!(
            svc.check(&AttachmentKey::new("a", "eth0")),
            Err(EndpointError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn records_outside_new_pod_cidrs_are_kept_for_del() {
        let dir = tempfile::tempdir().unwrap();
        {
            let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
            svc.set_pools_ready(&cidrs(&["10.244.1.0/24"]));
            svc.attach(input("a")).await.unwrap();
        }
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        let rejected = svc.set_pools_ready(&cidrs(&["10.244.2.0/24"]));
        assert_eq!(rejected.len(), 1);
        assert!(
            svc.detach(AttachmentKey::new("a", "eth0"))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn bad_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), Arc::new(crate::hook::NoPolicy));
        svc.set_pools_ready(&cidrs(&["10.244.1.0/24"]));
        let mut i = input("a");
        i.key.ifname.clear();
        assert!(matches!(
            svc.attach(i).await,
            Err(EndpointError::InvalidKey(_))
        ));
        assert!(matches!(
            svc.detach(AttachmentKey::new("a/b", "eth0")).await,
            Err(EndpointError::InvalidKey(_))
        ));
    }
}
