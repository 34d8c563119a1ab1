//! Azure AD credentials over real HTTP against a local server that answers
//! as the documented endpoints do: the v2.0 token endpoint (client secret,
//! federated token as client assertion) and the instance metadata service.
//! The ARM adapter then authenticates to the lab's ARM service with the token.

mod support;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use azure_core::auth::{Secret, TokenCredential};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::arm::{ArmFixture, RESOURCE_GROUP, SUBSCRIPTION, TABLE};
use underlay_lab::arm::ArmConfig;
use underlay_route_controller::azure::aad::{AadCredential, ImdsRetry, UserAssigned};
use underlay_route_controller::azure::arm::{ArmRouteTable, ArmTableConfig};
use underlay_route_controller::azure::{ArmError, RouteTable};

/// One request the token server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    params: BTreeMap<String, String>,
    metadata_header: Option<String>,
}

/// A scripted answer: status, body, extra headers.
type Answer = (u16, Value, Vec<(&'static str, String)>);

#[derive(Default)]
struct TokenState {
    seen: Vec<Seen>,
    script: VecDeque<Answer>,
    /// What to answer when the script is empty.
    default: Option<Answer>,
}

#[derive(Clone, Default)]
struct TokenServer {
    state: Arc<Mutex<TokenState>>,
}

impl TokenServer {
    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
    fn then(&self, status: u16, body: Value) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((status, body, vec![]));
    }
    fn then_with(&self, status: u16, body: Value, headers: Vec<(&'static str, String)>) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((status, body, headers));
    }
    fn always(&self, status: u16, body: Value) {
        self.state.lock().unwrap().default = Some((status, body, vec![]));
    }
    fn answer(&self, seen: Seen) -> (StatusCode, HeaderMap, String) {
        let mut st = self.state.lock().unwrap();
        st.seen.push(seen);
        let (status, body, headers) = st
            .script
            .pop_front()
            .or_else(|| st.default.clone())
            .unwrap_or((500, json!({"error": "unscripted"}), vec![]));
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        for (k, v) in headers {
            h.insert(k, v.parse().unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h, body.to_string())
    }
}

fn parse_form(body: &str) -> BTreeMap<String, String> {
    let url: azure_core::Url = format!("http://form.invalid/?{body}").parse().unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Serves `POST /{tenant}/oauth2/v2.0/token` and
/// `GET /metadata/identity/oauth2/token` on 127.0.0.1.
async fn token_server() -> (TokenServer, azure_core::Url) {
    let server = TokenServer::default();
    let app = Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(
                |State(s): State<TokenServer>,
                 axum::extract::Path(tenant): axum::extract::Path<String>,
                 headers: HeaderMap,
                 body: String| async move {
                    let mut params = parse_form(&body);
                    params.insert(
                        "content-type".into(),
                        headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .into(),
                    );
                    s.answer(Seen {
                        path: format!("/{tenant}/oauth2/v2.0/token"),
                        params,
                        metadata_header: None,
                    })
                },
            ),
        )
        .route(
            "/metadata/identity/oauth2/token",
            get(
                |State(s): State<TokenServer>,
                 Query(q): Query<BTreeMap<String, String>>,
                 headers: HeaderMap| async move {
                    let metadata = headers
                        .get("metadata")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    // IMDS refuses requests without the header, as documented.
                    if metadata.as_deref() != Some("true") {
                        let mut h = HeaderMap::new();
                        h.insert("content-type", "application/json".parse().unwrap());
                        return (
                            StatusCode::BAD_REQUEST,
                            h,
                            json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}).to_string(),
                        );
                    }
                    s.answer(Seen {
                        path: "/metadata/identity/oauth2/token".into(),
                        params: q,
                        metadata_header: metadata,
                    })
                },
            ),
        )
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (server, url)
}

fn token(access: &str, expires_in: u64) -> Value {
    json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access})
}

fn imds_token(access: &str, expires_in: i64) -> Value {
    let on = time::OffsetDateTime::now_utc().unix_timestamp() + expires_in;
    // IMDS sends every number as a string.
    json!({"access_token": access, "client_id": "c", "expires_in": expires_in.to_string(),
           "expires_on": on.to_string(), "ext_expires_in": expires_in.to_string(),
           "not_before": "0", "resource": "https://management.azure.com/", "token_type": "Bearer"})
}

fn aadsts(error: &str, code: i64, text: &str) -> Value {
    json!({"error": error,
           "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: 2026-01-01 00:00:00Z"),
           "error_codes": [code], "timestamp": "2026-01-01 00:00:00Z",
           "trace_id": "0000", "correlation_id": "1111"})
}

fn arm_with(arm: &ArmFixture, credential: Arc<dyn TokenCredential>) -> ArmRouteTable {
    ArmRouteTable::new(
        ArmTableConfig {
            endpoint: arm.arm.endpoint().to_string(),
            subscription_id: SUBSCRIPTION.into(),
            resource_group: RESOURCE_GROUP.into(),
            table_name: TABLE.into(),
            request_timeout: Duration::from_secs(5),
        },
        credential,
        None,
    )
    .unwrap()
}

const SECRET: &str = "s3cr3t-never-shown";

fn secret_credential(authority: &azure_core::Url) -> AadCredential {
    AadCredential::client_secret(
        azure_core::new_http_client(),
        authority,
        "tenant-1",
        "client-1",
        Secret::new(SECRET),
    )
    .unwrap()
}

/// Collects this thread's logs for the life of the guard.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct W(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let w = W(buf.clone());
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || w.clone())
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}

#[tokio::test]
async fn a_client_secret_token_is_cached_and_sent_to_arm_as_a_bearer_token() {
    let arm = ArmFixture::start(ArmConfig::default(), Some(&[]), Duration::from_secs(5)).await;
    let (aad, authority) = token_server().await;
    aad.always(200, token(arm.arm.token(), 3599));
    let table = arm_with(&arm, Arc::new(secret_credential(&authority)));
    for _ in 0..3 {
        assert!(table.get().await.unwrap().is_some());
    }
    let seen = aad.seen();
    assert_eq!(seen.len(), 1, "one token serves every call: {seen:?}");
    let s = &seen[0];
    assert_eq!(s.path, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(s.params["grant_type"], "client_credentials");
    assert_eq!(s.params["client_id"], "client-1");
    assert_eq!(s.params["client_secret"], SECRET);
    assert_eq!(
        s.params["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        s.params["scope"],
        format!("{}/.default", arm.arm.endpoint().trim_end_matches('/'))
    );

    // ARM accepts only its own token: a credential that gets another one is
    // refused, which shows the token is what authenticates the calls.
    let (other, authority) = token_server().await;
    other.always(200, token("some-other-token", 3599));
    let table = arm_with(&arm, Arc::new(secret_credential(&authority)));
    assert!(matches!(
        table.get().await.unwrap_err(),
        ArmError::Unauthorized { status: 401, .. }
    ));
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let (aad, authority) = token_server().await;
    let cred = secret_credential(&authority);
    // Two minutes left is inside the five-minute refresh margin.
    aad.then(200, token("short-1", 120));
    aad.then(200, token("short-2", 120));
    aad.then(200, token("long", 3600));
    let scope = ["https://management.azure.com/.default"];
    let t1 = cred.get_token(&scope).await.unwrap();
    let t2 = cred.get_token(&scope).await.unwrap();
    let t3 = cred.get_token(&scope).await.unwrap();
    let t4 = cred.get_token(&scope).await.unwrap();
    let got: Vec<&str> = [&t1, &t2, &t3, &t4]
        .iter()
        .map(|t| t.token.secret())
        .collect();
    assert_eq!(got, ["short-1", "short-2", "long", "long"]);
    assert_eq!(aad.seen().len(), 3);
    let left = t3.expires_on - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::seconds(3500) && left <= time::Duration::seconds(3600));
}

#[tokio::test]
async fn azure_ad_errors_are_clear_not_retried_and_never_show_the_secret() {
    let (logs, _guard) = capture_logs();
    let (aad, authority) = token_server().await;
    let cred = secret_credential(&authority);
    let scope = ["https://management.azure.com/.default"];
    for (status, body, expect) in [
        (
            401,
            aadsts(
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            ),
            "AADSTS7000215",
        ),
        (
            400,
            aadsts("invalid_request", 90002, "Tenant 'tenant-1' not found."),
            "AADSTS90002",
        ),
        (
            400,
            aadsts(
                "unauthorized_client",
                700016,
                "Application with identifier 'client-1' was not found in the directory.",
            ),
            "unauthorized_client",
        ),
    ] {
        let before = aad.seen().len();
        aad.then(status, body);
        let err = cred.get_token(&scope).await.unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
        assert!(err.contains(&status.to_string()), "{err}");
        assert!(err.contains("check tenantId"), "{err}");
        assert!(!err.contains("Trace ID"), "only the first line: {err}");
        assert!(!err.contains(SECRET), "{err}");
        assert_eq!(aad.seen().len(), before + 1, "4xx is not retried");
    }
    // A garbled answer and an unreachable authority are errors too.
    aad.then(200, json!({"token_type": "Bearer"}));
    let err = cred.get_token(&scope).await.unwrap_err().to_string();
    assert!(err.contains("not valid"), "{err}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cred = secret_credential(&closed.parse().unwrap());
    let err = cred.get_token(&scope).await.unwrap_err().to_string();
    assert!(err.contains("cannot reach"), "{err}");
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("cannot get azure ad token"), "{logs}");
    assert!(!logs.contains(SECRET), "secret in logs: {logs}");
}

#[tokio::test]
async fn workload_identity_sends_the_federated_token_and_rereads_it_when_rotated() {
    let (aad, authority) = token_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "jwt-one\n").unwrap();
    let cred = AadCredential::workload_identity(
        azure_core::new_http_client(),
        &authority,
        "tenant-1",
        "client-1",
        file.clone(),
    )
    .unwrap();
    aad.then(200, token("t1", 60));
    aad.then(200, token("t2", 3600));
    let scope = ["https://management.azure.com/.default"];
    assert_eq!(cred.get_token(&scope).await.unwrap().token.secret(), "t1");
    std::fs::write(&file, "jwt-two").unwrap();
    assert_eq!(cred.get_token(&scope).await.unwrap().token.secret(), "t2");
    let seen = aad.seen();
    let assertions: Vec<&str> = seen
        .iter()
        .map(|s| s.params["client_assertion"].as_str())
        .collect();
    assert_eq!(assertions, ["jwt-one", "jwt-two"]);
    for s in &seen {
        assert_eq!(
            s.params["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(s.params["grant_type"], "client_credentials");
        assert!(!s.params.contains_key("client_secret"));
    }
    // A missing token file is named in the error.
    std::fs::remove_file(&file).unwrap();
    cred.clear_cache().await.unwrap();
    let err = cred.get_token(&scope).await.unwrap_err().to_string();
    assert!(err.contains("federated token file"), "{err}");
}

fn imds(url: &azure_core::Url, id: Option<UserAssigned>) -> AadCredential {
    AadCredential::managed_identity(
        azure_core::new_http_client(),
        url,
        id,
        ImdsRetry {
            attempts: 4,
            base: Duration::from_millis(10),
        },
    )
}

#[tokio::test]
async fn managed_identity_asks_imds_as_documented_and_retries_its_transient_failures() {
    let (server, url) = token_server().await;
    let scope = ["https://management.azure.com/.default"];
    // 404 (identity not ready), 429 with Retry-After, 500: all retried.
    server.then(
        404,
        json!({"error": "not_found", "error_description": "Identity not found"}),
    );
    server.then_with(
        429,
        json!({"error": "too_many_requests"}),
        vec![("retry-after", "0".into())],
    );
    server.then(
        500,
        json!({"error": "unknown", "error_description": "Failed to get token"}),
    );
    server.then(200, imds_token("mi-token", 3600));
    let cred = imds(&url, Some(UserAssigned::ClientId("client-9".into())));
    assert_eq!(
        cred.get_token(&scope).await.unwrap().token.secret(),
        "mi-token"
    );
    assert_eq!(
        cred.get_token(&scope).await.unwrap().token.secret(),
        "mi-token"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "three retries, then cached");
    for s in &seen {
        assert_eq!(s.metadata_header.as_deref(), Some("true"));
        assert_eq!(s.params["api-version"], "2018-02-01");
        assert_eq!(s.params["resource"], "https://management.azure.com");
        assert_eq!(s.params["client_id"], "client-9");
    }

    // A resource ID goes as msi_res_id; 400 (no such identity) is final.
    let (server, url) = token_server().await;
    server.then(
        400,
        json!({"error": "invalid_request", "error_description": "Identity not found"}),
    );
    let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi";
    let cred = imds(&url, Some(UserAssigned::ResourceId(id.into())));
    let err = cred.get_token(&scope).await.unwrap_err().to_string();
    assert!(
        err.contains("400") && err.contains("Identity not found"),
        "{err}"
    );
    assert!(err.contains("userAssignedIdentityID"), "{err}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "400 is not retried");
    assert_eq!(seen[0].params["msi_res_id"], id);
    assert!(!seen[0].params.contains_key("client_id"));

    // IMDS failing every time gives up after the configured attempts.
    let (server, url) = token_server().await;
    server.always(
        500,
        json!({"error": "unknown", "error_description": "Failed to get token"}),
    );
    let cred = imds(&url, None);
    let err = cred.get_token(&scope).await.unwrap_err().to_string();
    assert!(err.contains("4 attempts") && err.contains("500"), "{err}");
    assert_eq!(server.seen().len(), 4);
    assert!(
        !server.seen()[0].params.contains_key("client_id"),
        "system-assigned"
    );
}

#[tokio::test]
async fn the_arm_adapter_authenticates_with_a_managed_identity_token() {
    let arm = ArmFixture::start(ArmConfig::default(), Some(&[]), Duration::from_secs(5)).await;
    let (server, url) = token_server().await;
    server.always(200, imds_token(arm.arm.token(), 3600));
    let table = arm_with(&arm, Arc::new(imds(&url, None)));
    assert!(table.get().await.unwrap().is_some());
    assert_eq!(
        server.seen()[0].params["resource"],
        arm.arm.endpoint().trim_end_matches('/')
    );
    // A credential that cannot get a token fails the call as a credential
    // error, before anything is sent to ARM.
    let (server, url) = token_server().await;
    server.always(
        400,
        json!({"error": "invalid_request", "error_description": "Identity not found"}),
    );
    let requests = arm.arm.requests().len();
    let table = arm_with(&arm, Arc::new(imds(&url, None)));
    assert!(matches!(
        table.get().await.unwrap_err(),
        ArmError::Credential(m) if m.contains("Identity not found")
    ));
    assert_eq!(arm.arm.requests().len(), requests);
}
