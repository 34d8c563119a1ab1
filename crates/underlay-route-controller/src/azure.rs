//! Azure access: the narrow [`RouteTable`] port the reconciler uses, its
//! error model, and its adapters — [`arm::ArmRouteTable`] over Azure
//! Resource Manager and [`fake::FakeRouteTable`], a recording fake for tests.

pub mod aad;
pub mod arm;
pub mod config;
pub mod credential;
pub mod fake;

use async_trait::async_trait;
use std::time::Duration;

/// A route as stored in the table. Routes the controller does not own are
/// carried through a write unchanged, so every writable field is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRoute {
    pub name: String,
    pub address_prefix: String,
    pub next_hop_type: String,
    pub next_hop_ip: Option<String>,
}

/// The longest wait a `Retry-After` (ARM's or IMDS's) imposes; a longer one
/// is taken as this. The value comes from the network and an absurd one
/// (`u64::MAX` seconds, a date in the year 9999) would overflow the clock or
/// stall the controller for good; ARM's throttling windows are at most
/// minutes, so ten minutes honours every genuine request.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A `Retry-After` value, in seconds or as an HTTP date, capped at
/// [`MAX_RETRY_AFTER`]; a date in the past is no wait.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let when = azure_core::date::parse_rfc1123(v).ok()?;
            Duration::try_from(when - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The next hop type of every route the controller writes.
pub const VIRTUAL_APPLIANCE: &str = "VirtualAppliance";

/// A route table as read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableState {
    pub etag: Option<String>,
    pub location: Option<String>,
    /// `Succeeded`, `Updating`, `Failed`, ...
    pub provisioning_state: Option<String>,
    pub routes: Vec<TableRoute>,
    /// The whole resource as read (ARM's JSON): tags, settings such as
    /// `disableBgpRoutePropagation`, properties this client does not model.
    /// A write starts from it ([`TableWrite::base`]), because ARM replaces
    /// the resource with the PUT body and drops whatever the body leaves out.
    pub resource: serde_json::Value,
}

/// The precondition of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: <etag>`: the table must not have changed since it was read.
    IfMatch(String),
    /// `If-None-Match: *`: the table must not exist (creating it).
    IfNoneMatch,
}

/// A whole-table write: the resource as read with its routes replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWrite {
    /// The resource the write starts from, [`TableState::resource`]
    /// (`Null` when creating the table): everything in it but the routes and
    /// the location is written back unchanged.
    pub base: serde_json::Value,
    pub location: String,
    pub routes: Vec<TableRoute>,
    pub precondition: Precondition,
}

/// A write Azure accepted, to be polled to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// The `Azure-AsyncOperation` URL; `None` when the write completed
    /// synchronously.
    pub operation_url: Option<String>,
    /// `Retry-After` of the answer: when to poll first.
    pub retry_after: Option<Duration>,
}

/// The state of an asynchronous operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationState {
    InProgress { retry_after: Option<Duration> },
    Succeeded,
    Failed { code: String, message: String },
    Canceled,
}

/// Failures talking to Azure, classified by what the caller must do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    /// 412: the ETag changed; re-read, re-diff, retry.
    #[error("route table changed since it was read (412 PreconditionFailed); it will be re-read")]
    PreconditionFailed,
    /// 429 throttling: no request may be sent before `retry_after` elapses.
    #[error("azure throttled the request (429 {code}); retrying after {retry_after:?}")]
    Throttled { code: String, retry_after: Duration },
    /// `RetryableErrorDueToAnotherOperation`: another write on the table is in flight.
    #[error("another operation is updating the route table; retrying after {retry_after:?}")]
    AnotherOperation { retry_after: Duration },
    /// 5xx: transient server failure.
    #[error("azure returned {status} {code}; retrying with backoff")]
    Server { status: u16, code: String },
    /// No answer in time.
    #[error("azure did not answer within {0:?}; retrying with backoff")]
    Timeout(Duration),
    /// Connection failures.
    #[error("cannot reach azure resource manager: {0}; check --arm-endpoint and the network")]
    Transport(String),
    /// 401/403.
    #[error(
        "azure refused the credential ({status} {code}); check the cloud config's identity or --arm-token-file"
    )]
    Unauthorized { status: u16, code: String },
    /// Other 4xx: the request itself is wrong; retrying unchanged will not help.
    #[error("azure rejected the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that does not parse.
    #[error("cannot decode azure's answer: {0}")]
    Decode(String),
    /// A credential could not produce a token.
    #[error("cannot get an azure access token: {0}")]
    Credential(String),
}

impl ArmError {
    /// Status-code label for metrics.
    pub fn code_label(&self) -> String {
        match self {
            ArmError::PreconditionFailed => "412".into(),
            ArmError::Throttled { .. } | ArmError::AnotherOperation { .. } => "429".into(),
            ArmError::Server { status, .. }
            | ArmError::Unauthorized { status, .. }
            | ArmError::Rejected { status, .. } => status.to_string(),
            ArmError::Timeout(_) => "timeout".into(),
            ArmError::Transport(_) => "transport".into(),
            ArmError::Decode(_) => "decode".into(),
            ArmError::Credential(_) => "credential".into(),
        }
    }
}

/// The route table the controller owns routes in. Implementations make one
/// HTTP request per call and do not retry: retries, backoff and throttling
/// are the reconciler's, so they apply across calls.
#[async_trait]
pub trait RouteTable: Send + Sync {
    /// Reads the table; `Ok(None)` when it does not exist.
    async fn get(&self) -> Result<Option<TableState>, ArmError>;
    /// Writes the whole table.
    async fn put(&self, write: &TableWrite) -> Result<PendingWrite, ArmError>;
    /// Reads the state of an accepted write's asynchronous operation.
    async fn poll(&self, pending: &PendingWrite) -> Result<OperationState, ArmError>;
}

#[async_trait]
impl<T: RouteTable + ?Sized> RouteTable for std::sync::Arc<T> {
    async fn get(&self) -> Result<Option<TableState>, ArmError> {
        (**self).get().await
    }
    async fn put(&self, write: &TableWrite) -> Result<PendingWrite, ArmError> {
        (**self).put(write).await
    }
    async fn poll(&self, pending: &PendingWrite) -> Result<OperationState, ArmError> {
        (**self).poll(pending).await
    }
}
