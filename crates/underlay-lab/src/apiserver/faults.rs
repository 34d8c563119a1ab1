//! Fault injection for reliability tests: close every open watch now, fail the
//! next N matching requests with 429 (with `Retry-After`) or 500, and delay
//! responses. Faults apply to authenticated API requests only, after
//! authentication, exactly where a real overloaded or failing server would
//! answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::sync::watch;

use super::error::ApiError;

/// The failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `429 TooManyRequests` with `Retry-After: seconds`.
    TooManyRequests { retry_after_seconds: u64 },
    /// `500 InternalError`.
    Internal,
    /// `409 Conflict` ("the object has been modified"), what a write racing
    /// another writer gets.
    Conflict,
}

/// Which requests a failure applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only this method (any when None).
    pub method: Option<Method>,
    /// Only paths containing this text (any when None), e.g. `/nodes/`.
    pub path_contains: Option<String>,
}

impl Match {
    pub fn any() -> Self {
        Match::default()
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_ref()
                .is_none_or(|p| path.contains(p.as_str()))
    }
}

#[derive(Debug, Default)]
struct Rules {
    failures: Vec<(Match, Failure, u32)>,
    delay: Option<Duration>,
    failed: u64,
}

/// A handle to the server's faults; cheap to clone.
#[derive(Debug, Clone)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
    closer: Arc<watch::Sender<u64>>,
}

impl Default for Faults {
    fn default() -> Self {
        let (closer, _) = watch::channel(0);
        Faults {
            rules: Arc::default(),
            closer: Arc::new(closer),
        }
    }
}

impl Faults {
    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// End every open watch stream now (clients see the connection's
    /// response end, as when an API server restarts or a proxy times out).
    pub fn close_watches(&self) {
        self.closer.send_modify(|g| *g += 1);
    }

    /// Fail the next `count` requests that match `which` with `failure`.
    pub fn fail_next(&self, count: u32, failure: Failure, which: Match) {
        if count > 0 {
            self.rules().failures.push((which, failure, count));
        }
    }

    /// Delay every response by `delay` (None to stop).
    pub fn delay(&self, delay: Option<Duration>) {
        self.rules().delay = delay;
    }

    /// Forget pending failures and delays.
    pub fn clear(&self) {
        let mut rules = self.rules();
        rules.failures.clear();
        rules.delay = None;
    }

    /// How many requests have been failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.rules().failed
    }

    pub(crate) fn close_signal(&self) -> watch::Receiver<u64> {
        self.closer.subscribe()
    }

    /// Run before each request: wait out any delay, then maybe fail it.
    pub(crate) async fn before(&self, method: &Method, path: &str) -> Result<(), ApiError> {
        let (delay, failure) = {
            let mut rules = self.rules();
            let mut failure = None;
            if let Some(rule) = rules
                .failures
                .iter_mut()
                .find(|(m, _, n)| *n > 0 && m.matches(method, path))
            {
                rule.2 -= 1;
                failure = Some(rule.1);
            }
            rules.failures.retain(|(_, _, n)| *n > 0);
            if failure.is_some() {
                rules.failed += 1;
            }
            (rules.delay, failure)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match failure {
            None => Ok(()),
            Some(Failure::TooManyRequests {
                retry_after_seconds,
            }) => Err(ApiError::too_many_requests(retry_after_seconds)),
            Some(Failure::Internal) => Err(ApiError::internal("injected failure")),
            Some(Failure::Conflict) => Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {path}: the object has been modified; \
                     please apply your changes to the latest version and try again"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_count_down_and_match_paths() {
        let faults = Faults::default();
        faults.fail_next(
            2,
            Failure::Internal,
            Match {
                method: Some(Method::PATCH),
                path_contains: Some("/nodes/".into()),
            },
        );
        assert!(faults.before(&Method::GET, "/api/v1/nodes/a").await.is_ok());
        assert!(
            faults
                .before(&Method::PATCH, "/api/v1/pods/a")
                .await
                .is_ok()
        );
        assert_eq!(
            faults
                .before(&Method::PATCH, "/api/v1/nodes/a")
                .await
                .unwrap_err()
                .code,
            500
        );
        assert_eq!(
            faults
                .before(&Method::PATCH, "/api/v1/nodes/b")
                .await
                .unwrap_err()
                .code,
            500
        );
        assert!(
            faults
                .before(&Method::PATCH, "/api/v1/nodes/c")
                .await
                .is_ok()
        );
        assert_eq!(faults.injected(), 2);
        faults.fail_next(
            1,
            Failure::TooManyRequests {
                retry_after_seconds: 3,
            },
            Match::any(),
        );
        let err = faults.before(&Method::GET, "/api").await.unwrap_err();
        assert_eq!((err.code, err.retry_after), (429, Some(3)));
    }
}
