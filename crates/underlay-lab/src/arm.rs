//! The Azure Resource Manager route-table service.
//!
//! A real HTTP server that speaks the `Microsoft.Network/routeTables` and
//! `routeTables/{name}/routes` REST API the way Azure documents it, so the
//! route controller's Azure client runs unchanged against it:
//!
//! - paths `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/routeTables/{name}`
//!   (and `/routes`, `/routes/{route}`), matched case-insensitively like ARM,
//!   each request requiring `api-version`;
//! - a fixed bearer token (`401 AuthenticationFailed` / `InvalidAuthenticationToken` otherwise);
//! - a table PUT replaces the resource with the body, as Azure does: tags,
//!   `disableBgpRoutePropagation` and properties the service does not model
//!   are kept as sent and lost when a body leaves them out;
//!   [`ArmHandle::seed_table_resource`] seeds a table from such a body;
//! - ETags on tables and routes, `If-Match` / `If-None-Match` (`412 PreconditionFailed`);
//! - writes answered `200`/`201` (`DELETE`: `202`/`204`) with `provisioningState: Updating`
//!   and an `Azure-AsyncOperation` header; the operation resource reports
//!   `InProgress` until the write completes, then `Succeeded` (or `Failed` /
//!   `Canceled` when injected), and the `Location`-style `operationResults`
//!   URL answers `202` until then;
//! - one write at a time per table, as Azure's network resource provider does:
//!   a write while another is in flight gets `429 RetryableError` with details
//!   code `RetryableErrorDueToAnotherOperation` and a `Retry-After`;
//! - the per-table route limit (`400 RouteTableRoutesLimitExceeded`; Azure's
//!   exact code for this case is not documented publicly, the controller never
//!   relies on it because it enforces the limit itself);
//! - fault injection ([`Faults`]): 412, 429 + `Retry-After`, 500, slow or
//!   failing async operations, added latency and dropped connections;
//! - a request log ([`ArmHandle::requests`]) so tests count reads and writes;
//! - [`ArmHandle::routes_watch`]: the routes each table has *applied*, updated
//!   when an operation succeeds (after an optional propagation delay) — what the
//!   lab's VNet router programs.
//!
//! Deliberate differences from Azure: a failed asynchronous operation rolls
//! the table back to its previous routes (Azure leaves the goal state with
//! `provisioningState: Failed`); resource groups need not exist; `Retry-After`
//! on operation status is only sent when configured, because the lab's
//! operations complete in milliseconds.

mod faults;
mod model;
mod rest;
mod server;
mod state;

pub use faults::{Fault, FaultTarget, Faults};
pub use model::{AppliedRoute, RequestKind, RequestRecord, TableId};
pub use server::{ArmConfig, ArmError, ArmHandle, ArmServer};
