//! Leader election on a `coordination.k8s.io/v1` Lease. kube-runtime 5 has no
//! lease helper, so this implements the protocol client-go's leaderelection
//! uses: the holder renews `renewTime`; a candidate takes the lease over once
//! it has seen the record unchanged for `leaseDurationSeconds` (measured on
//! its own monotonic clock, so clock skew between machines does not matter);
//! every write is a replace guarded by `resourceVersion`, so two candidates
//! can never both win. A holder that cannot renew within the renew deadline
//! stops acting before anyone else may take over: each renewal is abandoned
//! at that deadline, counted from when the last successful one was sent.
//! The elector is also the [`AllocationFence`](crate::k8s::AllocationFence)
//! of pod CIDR writes: a write goes out only while the lease still has the
//! resourceVersion this instance last wrote, so a holder that was paused or
//! cut off while another took over does not allocate from its stale cache.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// How the election runs.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A holder that has not renewed for this long stops acting; must be
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often to renew, and how often a candidate retries.
    pub retry_period: Duration,
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader lease {namespace}/{name}; exiting so a standby takes over")]
    Lost { namespace: String, name: String },
}

/// A Lease-based elector.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    /// The lease record as last seen and when it was first seen so.
    observed: Mutex<Option<(String, Instant)>>,
    /// The lease's resourceVersion as this instance last wrote it: while the
    /// lease still has it, nobody else has written it since.
    written: Mutex<Option<String>>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaderConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
            written: Mutex::new(None),
        }
    }

    fn set_written(&self, lease: Option<&Lease>) {
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) =
            lease.and_then(|l| l.metadata.resource_version.clone());
    }

    /// Whether the lease is still exactly as this instance last wrote it (a
    /// fresh read): held by it, and not written by anyone since.
    pub async fn still_holds(&self) -> Result<bool, kube::Error> {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(written) = written else {
            return Ok(false);
        };
        let lease = self.api.get_opt(&self.config.name).await?;
        Ok(lease.is_some_and(|l| {
            l.metadata.resource_version.as_deref() == Some(written.as_str())
                && l.spec.and_then(|s| s.holder_identity).as_deref()
                    == Some(self.config.identity.as_str())
        }))
    }

    fn lease_secs(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt to acquire or renew. `Ok(true)`: this instance holds the lease.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return self.create_lease(now).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = self.has_expired(&spec, &holder);
        let taking_over = holder != self.config.identity;
        if taking_over && !expired {
            return Ok(false);
        }
        let next = self.held_lease(lease.metadata, spec, now, taking_over);
        self.replace_lease(&next, taking_over, &holder).await
    }

    /// No lease yet: creates it held by this instance. A conflict means
    /// another candidate created it first.
    async fn create_lease(&self, now: MicroTime) -> Result<bool, kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.lease_secs()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.set_written(Some(&created));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the lease is free: nobody holds it, or its record (holder,
    /// renewTime, duration) has not changed for its duration as measured on
    /// this instance's monotonic clock from when it was first seen so.
    fn has_expired(&self, spec: &LeaseSpec, holder: &str) -> bool {
        let record = format!(
            "{holder}|{:?}|{:?}",
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_duration_seconds
        );
        let first_seen = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            match observed.as_ref() {
                Some((r, at)) if *r == record => *at,
                _ => {
                    let at = Instant::now();
                    *observed = Some((record, at));
                    at
                }
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        holder.is_empty() || first_seen.elapsed() >= duration
    }

    /// The lease as this instance writes it: held by it, renewed `now`, and
    /// acquired `now` with one more transition when `taking_over`.
    fn held_lease(
        &self,
        metadata: ObjectMeta,
        spec: LeaseSpec,
        now: MicroTime,
        taking_over: bool,
    ) -> Lease {
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.lease_secs()),
                acquire_time: if taking_over {
                    Some(now.clone())
                } else {
                    spec.acquire_time.clone()
                },
                renew_time: Some(now),
                lease_transitions: Some(
                    spec.lease_transitions.unwrap_or(0) + i32::from(taking_over),
                ),
                ..spec
            }),
        }
    }

    /// Writes `next` over the lease as read; a conflict means someone else
    /// wrote it since, and this attempt lost.
    async fn replace_lease(
        &self,
        next: &Lease,
        taking_over: bool,
        previous_holder: &str,
    ) -> Result<bool, kube::Error> {
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), next)
            .await
        {
            Ok(written) => {
                self.set_written(Some(&written));
                if taking_over {
                    info!(lease = %self.config.name, previous = %previous_holder, "acquired leader lease");
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so a standby need not wait for it to
    /// expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                ..spec
            }),
        };
        self.set_written(None);
        self.api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
            .map(|_| ())
    }

    /// Tries until this instance holds the lease; returns when the winning
    /// attempt was sent, which is when the lease it wrote starts to run.
    async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => return sent,
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// One renewal while leading. `Some(t)`: still leading, `t` being when
    /// the last successful renewal was sent (this one's, or `last_renew`
    /// after a failure within the deadline). `None`: leadership is over, because someone else holds
    /// the lease or no renewal has succeeded within the renew deadline of
    /// `last_renew`. A renew that does not answer is abandoned at that
    /// deadline: a holder waiting on it would act past it, when a standby
    /// may already be taking over.
    async fn renew(&self, last_renew: Instant) -> Option<Instant> {
        let deadline = last_renew + self.config.renew_deadline;
        // Stamped before the call: the lease written runs from when it was
        // sent, not from when the answer arrived.
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => Some(sent),
            Ok(Ok(false)) => None,
            Ok(Err(error)) => {
                warn!(%error, "cannot renew leader lease");
                (Instant::now() < deadline).then_some(last_renew)
            }
            Err(_) => {
                warn!(deadline = ?self.config.renew_deadline, "leader lease renewal did not answer within the renew deadline");
                None
            }
        }
    }

    /// Waits to become leader, then runs `work` while renewing. Returns
    /// `Ok` when `work` ends, `Err` as soon as leadership is lost (`work` is
    /// dropped first, so it stops acting).
    pub async fn run<F: Future<Output = ()>>(
        &self,
        work: F,
        on_leader: impl Fn(bool),
    ) -> Result<(), LeaderError> {
        let mut last_renew = self.acquire().await;
        info!(identity = %self.config.identity, "leading");
        on_leader(true);
        let work = std::pin::pin!(work);
        let mut work = work;
        let result = loop {
            tokio::select! {
                () = &mut work => break Ok(()),
                () = tokio::time::sleep(self.config.retry_period) => {
                    match self.renew(last_renew).await {
                        Some(sent) => last_renew = sent,
                        None => break Err(()),
                    }
                }
            }
        };
        on_leader(false);
        result.map_err(|()| LeaderError::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
        })
    }
}

#[async_trait::async_trait]
impl crate::k8s::AllocationFence for LeaderElector {
    async fn may_allocate(&self) -> bool {
        match self.still_holds().await {
            Ok(holds) => holds,
            Err(error) => {
                warn!(%error, "cannot read the leader lease");
                false
            }
        }
    }
}
