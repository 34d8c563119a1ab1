//! A recording, scriptable [`RouteTable`] for tests: it keeps a table with an
//! ETag, enforces `If-Match`/`If-None-Match` like Azure, records every call,
//! and answers scripted failures first.

use super::{
    ArmError, OperationState, PendingWrite, Precondition, RouteTable, TableRoute, TableState,
    TableWrite,
};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Get,
    Put(TableWrite),
    Poll(String),
}

/// What the next matching call answers instead of its normal result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    Get(ArmError),
    Put(ArmError),
    Poll(ArmError),
    /// The next write's operation reports `InProgress` this many times first.
    OperationPolls(usize),
    /// The next write's operation ends in this state instead of succeeding.
    OperationEnds(OperationState),
    /// Before answering the next GET, someone else changes the table (the
    /// route is added and the ETag changes), as a concurrent writer would.
    ConcurrentWrite(TableRoute),
}

#[derive(Debug, Default)]
struct Inner {
    table: Option<TableState>,
    etag_seq: u64,
    calls: Vec<Call>,
    times: Vec<tokio::time::Instant>,
    script: VecDeque<Scripted>,
    /// Pending operations: id -> (polls left, final state, routes to apply).
    ops: Vec<(String, usize, OperationState, Option<TableState>)>,
    concurrent_after_get: Option<TableRoute>,
}

/// The fake. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FakeRouteTable {
    inner: Arc<Mutex<Inner>>,
}

impl FakeRouteTable {
    /// A fake whose table does not exist.
    pub fn missing() -> FakeRouteTable {
        FakeRouteTable::default()
    }

    /// A fake holding `routes`.
    pub fn with_routes(routes: Vec<TableRoute>) -> FakeRouteTable {
        let fake = FakeRouteTable::default();
        {
            let mut inner = fake.lock();
            inner.etag_seq = 1;
            inner.table = Some(TableState {
                etag: Some("W/\"1\"".to_string()),
                location: Some("westeurope".to_string()),
                provisioning_state: Some("Succeeded".to_string()),
                routes,
                resource: serde_json::json!({"tags": {"owner": "network-team"}}),
            });
        }
        fake
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn script(&self, s: Scripted) {
        self.lock().script.push_back(s);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// When each call of [`FakeRouteTable::calls`] was made.
    pub fn call_times(&self) -> Vec<tokio::time::Instant> {
        self.lock().times.clone()
    }

    /// Sets the table's provisioning state, e.g. `Updating` for a write in flight.
    pub fn set_provisioning_state(&self, state: &str) {
        if let Some(t) = self.lock().table.as_mut() {
            t.provisioning_state = Some(state.to_string());
        }
    }

    pub fn puts(&self) -> Vec<TableWrite> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Put(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    pub fn clear_calls(&self) {
        let mut inner = self.lock();
        inner.calls.clear();
        inner.times.clear();
    }

    /// The table's routes now, sorted by name.
    pub fn routes(&self) -> Vec<TableRoute> {
        let mut routes = self
            .lock()
            .table
            .as_ref()
            .map(|t| t.routes.clone())
            .unwrap_or_default();
        routes.sort();
        routes
    }

    pub fn exists(&self) -> bool {
        self.lock().table.is_some()
    }

    fn take<F: Fn(&Scripted) -> bool>(&self, inner: &mut Inner, f: F) -> Option<Scripted> {
        let idx = inner.script.iter().position(f)?;
        inner.script.remove(idx)
    }
}

fn bump(inner: &mut Inner) -> String {
    inner.etag_seq += 1;
    format!("W/\"{}\"", inner.etag_seq)
}

#[async_trait]
impl RouteTable for FakeRouteTable {
    async fn get(&self) -> Result<Option<TableState>, ArmError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Get);
        inner.times.push(tokio::time::Instant::now());
        if let Some(Scripted::Get(e)) = self.take(&mut inner, |s| matches!(s, Scripted::Get(_))) {
            return Err(e);
        }
        let answer = inner.table.clone();
        if let Some(Scripted::ConcurrentWrite(route)) =
            self.take(&mut inner, |s| matches!(s, Scripted::ConcurrentWrite(_)))
        {
            inner.concurrent_after_get = Some(route);
        }
        // The concurrent writer lands between this read and the caller's write.
        if let Some(route) = inner.concurrent_after_get.take() {
            let etag = bump(&mut inner);
            if let Some(t) = inner.table.as_mut() {
                t.routes.push(route);
                t.etag = Some(etag);
            }
        }
        Ok(answer)
    }

    async fn put(&self, write: &TableWrite) -> Result<PendingWrite, ArmError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Put(write.clone()));
        inner.times.push(tokio::time::Instant::now());
        if let Some(Scripted::Put(e)) = self.take(&mut inner, |s| matches!(s, Scripted::Put(_))) {
            return Err(e);
        }
        let current = inner.table.as_ref().and_then(|t| t.etag.clone());
        match (&write.precondition, &current) {
            (Precondition::IfMatch(want), Some(have)) if want == have => {}
            (Precondition::IfNoneMatch, None) => {}
            _ => return Err(ArmError::PreconditionFailed),
        }
        let polls = match self.take(&mut inner, |s| matches!(s, Scripted::OperationPolls(_))) {
            Some(Scripted::OperationPolls(n)) => n,
            _ => 0,
        };
        let end = match self.take(&mut inner, |s| matches!(s, Scripted::OperationEnds(_))) {
            Some(Scripted::OperationEnds(state)) => state,
            _ => OperationState::Succeeded,
        };
        let etag = bump(&mut inner);
        let next = TableState {
            etag: Some(etag),
            location: Some(write.location.clone()),
            provisioning_state: Some("Succeeded".to_string()),
            routes: write.routes.clone(),
            resource: write.base.clone(),
        };
        let id = format!("op-{}", inner.etag_seq);
        inner.ops.push((id.clone(), polls, end, Some(next)));
        Ok(PendingWrite {
            operation_url: Some(id),
            retry_after: None,
        })
    }

    async fn poll(&self, pending: &PendingWrite) -> Result<OperationState, ArmError> {
        let mut inner = self.lock();
        let id = pending.operation_url.clone().unwrap_or_default();
        inner.calls.push(Call::Poll(id.clone()));
        inner.times.push(tokio::time::Instant::now());
        if let Some(Scripted::Poll(e)) = self.take(&mut inner, |s| matches!(s, Scripted::Poll(_))) {
            return Err(e);
        }
        let Some(idx) = inner.ops.iter().position(|o| o.0 == id) else {
            return Err(ArmError::Rejected {
                status: 404,
                code: "NotFound".into(),
                message: format!("operation {id} not found"),
            });
        };
        if inner.ops[idx].1 > 0 {
            inner.ops[idx].1 -= 1;
            return Ok(OperationState::InProgress { retry_after: None });
        }
        let end = inner.ops[idx].2.clone();
        if let Some(next) = inner.ops[idx].3.take()
            && end == OperationState::Succeeded
        {
            inner.table = Some(next);
        }
        Ok(end)
    }
}
