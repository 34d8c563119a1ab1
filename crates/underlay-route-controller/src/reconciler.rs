//! The route reconciler: batches node changes and keeps the route table in
//! step with them through the [`RouteTable`] port, handling every failure the
//! way Azure documents it, and reports each node's state through
//! [`NodeSink`]. It needs no Kubernetes API: feed it with [`RouteInput`].
//!
//! One pass ("sync"): GET the table, plan, PUT the whole table with
//! `If-Match` on the ETag read (or `If-None-Match: *` when creating it), then
//! poll the `Azure-AsyncOperation` until it ends.
//!
//! - 412: re-read and re-plan at once (a few times, then back off).
//! - 429 (throttling or `RetryableErrorDueToAnotherOperation`): no call at all
//!   until `Retry-After` has elapsed — the [`Throttle`] gate is shared by
//!   every call, so it holds back later calls too — then the same call again.
//! - 5xx, timeouts, connection failures, an operation ending `Failed` or
//!   `Canceled`, any other rejection: the pass fails; the next one starts
//!   after exponential backoff with jitter, from a fresh GET.
//! - A table `Updating` (a write in flight, e.g. from before a restart) is
//!   waited for, re-read every poll interval, for at most the operation
//!   timeout; then the pass fails and the next one starts from a fresh
//!   snapshot of the nodes. A table `Failed` is rewritten even when its
//!   routes look right.
//! - `NetworkUnavailable=False` is set only once a GET shows the node's routes
//!   with the table `Succeeded`, or a write containing them has succeeded.
//! - A failed pass sets `NetworkUnavailable=True` only on nodes whose routes
//!   the table, as last read or written, lacks or has wrong: after a restart,
//!   before the first read, it touches no node (their routes, written by the
//!   previous run, keep working).

use crate::azure::{
    ArmError, MAX_RETRY_AFTER, OperationState, Precondition, RouteTable, TableRoute, TableState,
    TableWrite,
};
use crate::metrics::Metrics;
use crate::nodes::{NodeEvent, NodeSink, RouteCondition};
use crate::plan::{LeftOut, NodeRoutes, Ownership, Plan, desired_routes, plan};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, instrument, warn};

/// How the reconciler behaves.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Changes seen within this long after the first go out in one write.
    pub batch_interval: Duration,
    /// Routes the table may hold (foreign ones included).
    pub route_limit: usize,
    /// Create the table when it does not exist (else report and wait).
    pub create_missing_table: bool,
    /// Region for a table the controller creates.
    pub location: Option<String>,
    /// Poll interval for operations that send no `Retry-After`.
    pub poll_interval: Duration,
    /// Longest wait between polls even when Azure asks for more.
    pub max_poll_interval: Duration,
    /// First backoff after a failed pass.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Immediate re-reads after 412 before backing off.
    pub precondition_retries: usize,
    /// How long to wait for an operation before giving up on the pass.
    pub operation_timeout: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> ReconcilerConfig {
        ReconcilerConfig {
            batch_interval: Duration::from_secs(2),
            route_limit: 400,
            create_missing_table: false,
            location: None,
            poll_interval: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            precondition_retries: 3,
            operation_timeout: Duration::from_secs(600),
        }
    }
}

/// Why a pass failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Arm(#[from] ArmError),
    #[error("route table does not exist; create it, or run with --create-route-table")]
    TableMissing,
    #[error(
        "route table does not exist and no location is configured to create it; set `location` in the cloud config"
    )]
    NoLocation,
    #[error("route table write failed ({code}): {message}")]
    OperationFailed { code: String, message: String },
    #[error("route table write was canceled")]
    OperationCanceled,
    #[error("route table write did not complete within {0:?}")]
    OperationTimeout(Duration),
    #[error(
        "route table stayed Updating for {0:?} (another writer's operation); it will be read again"
    )]
    TableUpdating(Duration),
    #[error("route table kept changing under every write (412 PreconditionFailed {0} times)")]
    Contended(usize),
}

/// The "do not call before" gate of 429 `Retry-After`.
#[derive(Debug, Default)]
pub struct Throttle {
    until: Mutex<Option<Instant>>,
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No call before `now + wait`; a wait is never longer than
    /// [`MAX_RETRY_AFTER`], whoever asks for it.
    pub fn hold(&self, wait: Duration) {
        let t = Instant::now() + wait.min(MAX_RETRY_AFTER);
        let mut until = self.lock();
        if until.is_none_or(|u| u < t) {
            *until = Some(t);
        }
    }

    /// Waits until calls are allowed.
    pub async fn wait(&self) {
        loop {
            let until = *self.lock();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

/// Exponential backoff with jitter: the n-th wait is drawn from
/// `[d/2, d]`, `d = min(max, base * 2^n)`, so many controllers failing
/// together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(30)));
        let d = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Debug, Clone)]
struct NodeEntry {
    routes: NodeRoutes,
    changed_at: Instant,
}

#[derive(Debug, Default)]
struct Desired {
    nodes: BTreeMap<String, NodeEntry>,
    generation: u64,
    /// No pass may run yet: the first complete list of nodes has not
    /// arrived, and a pass on a partial node set would delete the routes of
    /// the nodes not seen yet.
    awaiting_list: bool,
}

/// The reconciler's input: the nodes as last seen. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct RouteInput {
    inner: Arc<Mutex<Desired>>,
    notify: Arc<Notify>,
}

impl RouteInput {
    /// An input the reconciler acts on only after [`RouteInput::replace_all`]
    /// has delivered a complete node set (what the node controller does after
    /// each list). [`RouteInput::default`] is usable at once.
    pub fn until_listed() -> RouteInput {
        let input = RouteInput::default();
        input.lock().awaiting_list = true;
        input
    }

    fn lock(&self) -> MutexGuard<'_, Desired> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or updates a node; unchanged nodes cause no work.
    pub fn upsert(&self, routes: NodeRoutes) {
        let mut d = self.lock();
        if d.nodes
            .get(&routes.name)
            .is_some_and(|e| e.routes == routes)
        {
            return;
        }
        d.generation += 1;
        d.nodes.insert(
            routes.name.clone(),
            NodeEntry {
                routes,
                changed_at: Instant::now(),
            },
        );
        drop(d);
        self.notify.notify_one();
    }

    pub fn remove(&self, name: &str) {
        let mut d = self.lock();
        if d.nodes.remove(name).is_some() {
            d.generation += 1;
            drop(d);
            self.notify.notify_one();
        }
    }

    /// Replaces the whole node set (after a relist).
    pub fn replace_all(&self, nodes: Vec<NodeRoutes>) {
        let names: Vec<String> = self.lock().nodes.keys().cloned().collect();
        let keep: std::collections::HashSet<String> =
            nodes.iter().map(|n| n.name.clone()).collect();
        for n in names.iter().filter(|n| !keep.contains(*n)) {
            self.remove(n);
        }
        for n in nodes {
            self.upsert(n);
        }
        // A relist also re-checks the table even when nothing changed here.
        {
            let mut d = self.lock();
            d.generation += 1;
            d.awaiting_list = false;
        }
        self.notify.notify_one();
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Whether the reconciler may act: see [`RouteInput::until_listed`].
    pub fn listed(&self) -> bool {
        !self.lock().awaiting_list
    }

    fn snapshot(&self) -> (u64, Vec<NodeEntry>) {
        let d = self.lock();
        (d.generation, d.nodes.values().cloned().collect())
    }
}

/// The table as one GET found it, and what a write over it starts from.
struct TableRead {
    routes: Vec<TableRoute>,
    precondition: Precondition,
    location: Option<String>,
    /// `Succeeded`, `Updating`, `Failed`, ...
    provisioning: Option<String>,
    /// The whole resource as read ([`TableWrite::base`]).
    base: serde_json::Value,
}

/// What a successful pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub plan: Plan,
    /// Whether the pass wrote the table.
    pub wrote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reported {
    condition: RouteCondition,
    routes: NodeRoutes,
}

/// Progress of the reconciler, for readiness and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Completed successful passes.
    pub synced: u64,
    /// Input generation the last successful pass covered.
    pub generation: u64,
    /// Failed passes since the last success.
    pub failures: u64,
    /// Table writes that succeeded.
    pub writes: u64,
}

/// The reconciler.
pub struct Reconciler<T, S> {
    table: T,
    sink: S,
    config: ReconcilerConfig,
    ownership: Ownership,
    throttle: Arc<Throttle>,
    metrics: Option<Arc<Metrics>>,
    status: watch::Sender<Status>,
}

impl<T: RouteTable, S: NodeSink> Reconciler<T, S> {
    pub fn new(
        table: T,
        sink: S,
        config: ReconcilerConfig,
        ownership: Ownership,
        metrics: Option<Arc<Metrics>>,
    ) -> Reconciler<T, S> {
        Reconciler {
            table,
            sink,
            config,
            ownership,
            throttle: Arc::new(Throttle::default()),
            metrics,
            status: watch::channel(Status::default()).0,
        }
    }

    /// Shares a throttle gate with other users of the same subscription.
    pub fn with_throttle(mut self, throttle: Arc<Throttle>) -> Self {
        self.throttle = throttle;
        self
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Runs until the future is dropped.
    pub async fn run(self, input: RouteInput) {
        let mut reported: HashMap<String, Reported> = HashMap::new();
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let mut covered: Option<u64> = None;
        // The table's routes as last read or written by this process; `None`
        // until the first read, e.g. right after a restart.
        let mut known: Option<Vec<TableRoute>> = None;
        loop {
            // Wait for work: a change since the last successful pass, once
            // the node set is complete.
            while covered == Some(input.generation()) || !input.listed() {
                input.notify.notified().await;
            }
            // The batch window: whatever else changes meanwhile rides along.
            tokio::time::sleep(self.config.batch_interval).await;
            let (generation, nodes) = input.snapshot();
            match self.sync(&nodes, &mut known).await {
                Ok(report) => {
                    let all_written = self.report_success(&nodes, &report, &mut reported).await;
                    self.status.send_modify(|s| {
                        s.synced += 1;
                        s.generation = generation;
                        s.failures = 0;
                        s.writes += u64::from(report.wrote);
                    });
                    if all_written {
                        backoff.reset();
                        covered = Some(generation);
                    } else {
                        // A node condition could not be written (409, 5xx):
                        // without another pass nothing would retry it, since
                        // the input has not changed. The pass re-reads the
                        // table, finds nothing to write, and writes only the
                        // conditions still missing.
                        let delay = backoff.next_delay();
                        warn!(retry_in = ?delay, "node conditions not all written; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in = ?delay, "route table sync failed");
                    if let Some(m) = &self.metrics {
                        m.write("failed");
                    }
                    self.report_failure(&nodes, &error, known.as_deref(), &mut reported)
                        .await;
                    self.status.send_modify(|s| s.failures += 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One call, behind the throttle gate; 429s are waited out and retried.
    async fn call<'a, R>(
        &'a self,
        f: impl Fn() -> BoxFuture<'a, Result<R, ArmError>>,
    ) -> Result<R, ArmError> {
        loop {
            self.throttle.wait().await;
            match f().await {
                Err(ArmError::Throttled { retry_after, .. })
                | Err(ArmError::AnotherOperation { retry_after }) => {
                    info!(wait = ?retry_after, "azure asked to retry later");
                    if let Some(m) = &self.metrics {
                        m.throttled(retry_after);
                    }
                    self.throttle.hold(retry_after);
                }
                other => return other,
            }
        }
    }

    /// One pass: read, plan, write if needed, wait for the write.
    #[instrument(skip_all, fields(nodes = nodes.len()))]
    async fn sync(
        &self,
        nodes: &[NodeEntry],
        known: &mut Option<Vec<TableRoute>>,
    ) -> Result<SyncReport, SyncError> {
        let node_routes: Vec<&NodeRoutes> = nodes.iter().map(|n| &n.routes).collect();
        let (desired, left_out) = desired_routes(node_routes.iter().copied(), &self.ownership);
        let mut contention = 0;
        let mut updating_since: Option<Instant> = None;
        loop {
            let read = self.read_table(known).await?;
            if read.provisioning.as_deref() == Some("Updating") {
                self.wait_out_update(&mut updating_since).await?;
                continue;
            }
            let plan = plan(
                &read.routes,
                &desired,
                left_out.clone(),
                &self.ownership,
                self.config.route_limit,
            );
            if let Some(m) = &self.metrics {
                m.routes_owned(plan.owned_count());
            }
            let failed_state = read.provisioning.as_deref() == Some("Failed");
            if !plan.changes() && !failed_state {
                return Ok(SyncReport { plan, wrote: false });
            }
            let pending = match self.write_table(read, &plan).await {
                Err(SyncError::Arm(ArmError::PreconditionFailed)) => {
                    contention += 1;
                    self.precondition_failed(contention)?;
                    continue;
                }
                other => other?,
            };
            if let Some(m) = &self.metrics {
                m.batch(plan.change_count());
            }
            self.wait_for(&pending).await?;
            *known = Some(plan.routes.clone());
            if let Some(m) = &self.metrics {
                m.write("succeeded");
            }
            return Ok(SyncReport { plan, wrote: true });
        }
    }

    /// GETs the table and records its routes in `known`. A missing table is
    /// one to create (with `--create-route-table`) or an error.
    async fn read_table(
        &self,
        known: &mut Option<Vec<TableRoute>>,
    ) -> Result<TableRead, SyncError> {
        let state: Option<TableState> = self.call(|| self.table.get()).await?;
        let read = match state {
            Some(t) => TableRead {
                routes: t.routes,
                precondition: match t.etag {
                    Some(etag) => Precondition::IfMatch(etag),
                    // Without an ETag there is nothing to guard the
                    // write with; any version will do.
                    None => Precondition::IfMatch("*".to_string()),
                },
                location: t.location,
                provisioning: t.provisioning_state,
                base: t.resource,
            },
            None if self.config.create_missing_table => TableRead {
                routes: Vec::new(),
                precondition: Precondition::IfNoneMatch,
                location: None,
                provisioning: None,
                base: serde_json::Value::Null,
            },
            None => {
                // A table that does not exist holds no routes.
                *known = Some(Vec::new());
                return Err(SyncError::TableMissing);
            }
        };
        *known = Some(read.routes.clone());
        Ok(read)
    }

    /// Someone's write is in flight; its outcome decides what we see. Waits
    /// one poll interval before the next read, and fails the pass once the
    /// table has been `Updating` for as long as an operation of our own may
    /// take: the nodes this pass plans for are a snapshot, and the next pass
    /// takes a fresh one along with a fresh read.
    async fn wait_out_update(&self, updating_since: &mut Option<Instant>) -> Result<(), SyncError> {
        let since = *updating_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.config.operation_timeout {
            return Err(SyncError::TableUpdating(self.config.operation_timeout));
        }
        debug!("route table is updating; waiting");
        tokio::time::sleep(self.config.poll_interval).await;
        Ok(())
    }

    /// PUTs the planned table over the one read, guarded by its ETag.
    async fn write_table(
        &self,
        read: TableRead,
        plan: &Plan,
    ) -> Result<crate::azure::PendingWrite, SyncError> {
        let location = read
            .location
            .or_else(|| self.config.location.clone())
            .ok_or(SyncError::NoLocation)?;
        let write = TableWrite {
            base: read.base,
            location,
            routes: plan.routes.clone(),
            precondition: read.precondition,
        };
        info!(
            added = plan.added.len(),
            removed = plan.removed.len(),
            updated = plan.updated.len(),
            left_out = plan.left_out.len(),
            "writing route table"
        );
        Ok(self.call(|| self.table.put(&write)).await?)
    }

    /// The table changed since it was read (412, the `contention`-th time
    /// this pass): re-read at once, or give up after the configured retries.
    fn precondition_failed(&self, contention: usize) -> Result<(), SyncError> {
        if let Some(m) = &self.metrics {
            m.write("precondition_failed");
        }
        if contention > self.config.precondition_retries {
            return Err(SyncError::Contended(contention));
        }
        debug!(
            attempt = contention,
            "route table changed since read; re-reading"
        );
        Ok(())
    }

    async fn wait_for(&self, pending: &crate::azure::PendingWrite) -> Result<(), SyncError> {
        if pending.operation_url.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.operation_timeout;
        let mut wait = pending.retry_after.unwrap_or(self.config.poll_interval);
        loop {
            tokio::time::sleep(wait.min(self.config.max_poll_interval)).await;
            match self.call(|| self.table.poll(pending)).await? {
                OperationState::Succeeded => return Ok(()),
                OperationState::Failed { code, message } => {
                    return Err(SyncError::OperationFailed { code, message });
                }
                OperationState::Canceled => return Err(SyncError::OperationCanceled),
                OperationState::InProgress { retry_after } => {
                    if Instant::now() > deadline {
                        return Err(SyncError::OperationTimeout(self.config.operation_timeout));
                    }
                    wait = retry_after.unwrap_or(self.config.poll_interval);
                }
            }
        }
    }

    /// Sets the conditions the pass decided; `false` when some write failed.
    async fn report_success(
        &self,
        nodes: &[NodeEntry],
        report: &SyncReport,
        reported: &mut HashMap<String, Reported>,
    ) -> bool {
        let routed = report.plan.routed_nodes();
        let mut left: BTreeMap<&str, Vec<&LeftOut>> = BTreeMap::new();
        for (node, why) in &report.plan.left_out {
            left.entry(node.as_str()).or_default().push(why);
        }
        let now = Instant::now();
        let mut updates = Vec::new();
        for entry in nodes {
            let name = entry.routes.name.as_str();
            let condition = if let Some(whys) = left.get(name) {
                RouteCondition::NotCreated {
                    message: whys
                        .iter()
                        .map(|w| w.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                }
            } else if routed.contains(name) {
                RouteCondition::Created
            } else {
                // No pod CIDR yet: nothing to say.
                continue;
            };
            let next = Reported {
                condition: condition.clone(),
                routes: entry.routes.clone(),
            };
            if reported.get(name) == Some(&next) {
                continue;
            }
            if condition == RouteCondition::Created
                && report.wrote
                && let Some(m) = &self.metrics
            {
                m.route_effective(now.saturating_duration_since(entry.changed_at));
            }
            let event =
                match (&condition, left.get(name)) {
                    (RouteCondition::NotCreated { message }, Some(whys)) => Some(
                        NodeEvent::warning(name, left_out_reason(whys[0]), message.clone()),
                    ),
                    _ => None,
                };
            updates.push((name.to_string(), next, event));
        }
        let all_written = self.apply_updates(updates, reported).await;
        let present: std::collections::HashSet<&str> =
            nodes.iter().map(|n| n.routes.name.as_str()).collect();
        reported.retain(|n, _| present.contains(n.as_str()));
        all_written
    }

    /// Marks the nodes a failed pass leaves without their routes: only those
    /// whose routes the table, as last read or written, lacks or has wrong.
    /// Nothing is known of the table before its first read (right after a
    /// restart), and routes a previous run wrote keep working, so then no
    /// node is touched.
    async fn report_failure(
        &self,
        nodes: &[NodeEntry],
        error: &SyncError,
        known: Option<&[TableRoute]>,
        reported: &mut HashMap<String, Reported>,
    ) {
        let Some(table) = known else {
            return;
        };
        let (desired, _) = desired_routes(nodes.iter().map(|n| &n.routes), &self.ownership);
        // Per node, how many of its routes the table holds as wanted.
        let mut routed: HashMap<&str, usize> = HashMap::new();
        for d in &desired {
            if table.contains(&d.to_table_route()) {
                *routed.entry(d.node.as_str()).or_default() += 1;
            }
        }
        let message = format!("route table not updated: {error}");
        let mut updates = Vec::new();
        for entry in nodes {
            let name = entry.routes.name.as_str();
            let cidrs = entry.routes.pod_cidrs.len();
            if cidrs == 0 || routed.get(name) == Some(&cidrs) {
                continue;
            }
            let next = Reported {
                condition: RouteCondition::NotCreated {
                    message: message.clone(),
                },
                routes: entry.routes.clone(),
            };
            if reported.get(name) == Some(&next) {
                continue;
            }
            let event = NodeEvent::warning(name, "FailedToCreateRoute", message.clone());
            updates.push((name.to_string(), next, Some(event)));
        }
        // A failed pass is retried anyway; the conditions go with it.
        let _ = self.apply_updates(updates, reported).await;
    }

    /// Writes the conditions; `false` when some write failed.
    async fn apply_updates(
        &self,
        updates: Vec<(String, Reported, Option<NodeEvent>)>,
        reported: &mut HashMap<String, Reported>,
    ) -> bool {
        // Node writes are independent; a few at a time keeps a 400-node
        // batch from taking 400 round trips.
        let results: Vec<(String, Reported, bool)> = futures::stream::iter(updates)
            .map(|(name, next, event)| async move {
                if let Some(event) = &event {
                    self.sink.event(event).await;
                }
                let ok = match self.sink.set_route_condition(&name, &next.condition).await {
                    Ok(()) => true,
                    Err(error) => {
                        warn!(node = %name, %error, "cannot set NetworkUnavailable condition");
                        false
                    }
                };
                (name, next, ok)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let all_written = results.iter().all(|(_, _, ok)| *ok);
        for (name, next, ok) in results {
            if ok {
                if next.condition == RouteCondition::Created {
                    info!(node = %name, "node routes created");
                }
                reported.insert(name, next);
            } else {
                // Unknown state: the next pass writes it again.
                reported.remove(&name);
            }
        }
        all_written
    }
}

fn left_out_reason(why: &LeftOut) -> &'static str {
    match why {
        LeftOut::NoInternalIp { .. } => "NoInternalIP",
        LeftOut::OutsideClusterCidr { .. } => "PodCIDROutsideClusterCIDR",
        LeftOut::RouteLimit { .. } => "RouteTableFull",
        LeftOut::ForeignRoute { .. } => "RouteConflict",
        LeftOut::DuplicateCidr { .. } => "DuplicatePodCIDR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        for (n, full) in [1u64, 2, 4, 8, 10, 10].into_iter().enumerate() {
            let d = b.next_delay();
            let full = Duration::from_secs(full);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {n}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_too_long_for_the_clock_is_capped() {
        let t = Throttle::default();
        let start = Instant::now();
        t.hold(Duration::MAX);
        t.wait().await;
        assert_eq!(start.elapsed(), MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_gate_holds_every_caller_until_retry_after() {
        let t = Throttle::default();
        let start = Instant::now();
        t.hold(Duration::from_secs(7));
        t.hold(Duration::from_secs(3)); // a shorter hold never shortens the gate
        t.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        let again = Instant::now();
        t.wait().await;
        assert_eq!(again.elapsed(), Duration::ZERO);
    }
}
