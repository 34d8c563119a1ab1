//! Fault injection for the ARM service: a queue of rules, each consumed by the
//! next matching request(s).

use super::model::RequestKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A failure the service produces instead of (or in addition to) its normal
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `412 PreconditionFailed`, as if the ETag had changed underneath.
    PreconditionFailed,
    /// `429 TooManyRequests` with `Retry-After: {retry_after_secs}` (subscription throttling).
    Throttle { retry_after_secs: u64 },
    /// `429 RetryableError` / `RetryableErrorDueToAnotherOperation`.
    AnotherOperation { retry_after_secs: u64 },
    /// `500 InternalServerError`.
    InternalError,
    /// The connection is closed without a response.
    DropConnection,
    /// The request is answered normally after this extra delay (a client
    /// timeout shorter than this sees a timeout).
    Delay(Duration),
    /// The write is accepted but its asynchronous operation takes this long.
    SlowOperation(Duration),
    /// The write is accepted but its asynchronous operation ends `Failed`.
    OperationFailed,
    /// The write is accepted but its asynchronous operation ends `Canceled`.
    OperationCanceled,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    Any,
    /// `GET` of a route table.
    TableGet,
    /// `PUT` or `DELETE` of a route table or a route.
    Write,
    /// `GET` of an asynchronous operation's status.
    Poll,
}

impl FaultTarget {
    fn matches(self, kind: RequestKind) -> bool {
        match self {
            FaultTarget::Any => true,
            FaultTarget::TableGet => kind == RequestKind::GetTable,
            FaultTarget::Write => kind.is_write(),
            FaultTarget::Poll => {
                matches!(kind, RequestKind::PollOperation | RequestKind::PollResult)
            }
        }
    }
}

#[derive(Debug)]
struct Rule {
    target: FaultTarget,
    fault: Fault,
    remaining: usize,
}

/// The fault queue. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl Faults {
    /// The next `times` requests matching `target` get `fault`. Rules are
    /// consulted in the order they were injected.
    pub fn inject(&self, target: FaultTarget, fault: Fault, times: usize) {
        if times == 0 {
            return;
        }
        self.lock().push(Rule {
            target,
            fault,
            remaining: times,
        });
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Faults not yet consumed.
    pub fn pending(&self) -> usize {
        self.lock().iter().map(|r| r.remaining).sum()
    }

    pub(crate) fn take(&self, kind: RequestKind) -> Option<Fault> {
        let mut rules = self.lock();
        let idx = rules.iter().position(|r| r.target.matches(kind))?;
        let fault = rules[idx].fault.clone();
        rules[idx].remaining -= 1;
        if rules[idx].remaining == 0 {
            rules.remove(idx);
        }
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single push/remove), so poisoning is ignored.
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }
}
