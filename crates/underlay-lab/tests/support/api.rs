//! The embedded API server through kube-rs: a server for one test, and the
//! Status a refused request carries.

use kube::Client;
use kube::core::Status;
use underlay_lab::apiserver::{ApiServer, Config, Handle};

/// A server with the default configuration, and a client of it.
pub async fn start() -> (Handle, Client) {
    let handle = ApiServer::start(Config::default())
        .await
        .expect("server starts");
    let client = handle.client().expect("client");
    (handle, client)
}

/// The Status a request was refused with; any other failure fails the test.
pub fn refusal(err: kube::Error) -> Status {
    match err {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The HTTP code a request was refused with.
pub fn code(err: kube::Error) -> u16 {
    refusal(err).code
}

/// `(code, reason)` of the Status a request was refused with.
pub fn api_status(err: kube::Error) -> (u16, String) {
    let s = refusal(err);
    (s.code, s.reason)
}

/// Asserts that a request was refused with `code` and `reason`, in a message
/// that names `part` (a field, a rule).
pub fn assert_refused(err: kube::Error, code: u16, reason: &str, part: &str) {
    let s = refusal(err);
    assert_eq!((s.code, s.reason.as_str()), (code, reason), "{}", s.message);
    assert!(s.message.contains(part), "{part:?} not in {:?}", s.message);
}
