//! Azure AD access tokens for Resource Manager: the client-secret and
//! workload-identity (federated token as client assertion) flows against the
//! Microsoft identity platform's v2.0 token endpoint, and managed identity
//! through the instance metadata service (IMDS). Each flow is one documented
//! HTTP exchange; [`AadCredential`] puts one cache in front of them that hands
//! out a token until five minutes before it expires, then fetches a new one.
//!
//! These are written here rather than taken from azure_identity 0.21 because
//! that release cannot select a user-assigned identity, does not retry IMDS
//! as Azure documents (404, 410, 429, 5xx), and keeps AAD's error codes out of
//! its errors. Endpoints are overridable the way the Azure SDKs do it: the
//! authority host (`AZURE_AUTHORITY_HOST`) and the IMDS host
//! (`AZURE_POD_IDENTITY_AUTHORITY_HOST`); see [`AadEndpoints::resolve`].

use async_trait::async_trait;
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::{HttpClient, Method, Request, Url};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

/// The IMDS host on every Azure VM.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// A cached token is replaced this long before it expires, as the Azure SDKs do.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The longest a token is trusted, whatever its answer says: `expires_in` /
/// `expires_on` come from the network, and an absurd one would overflow the
/// date arithmetic or keep a token long after it is revoked. Azure AD tokens
/// live at most a day (managed identities' about 24 hours, others 60–90
/// minutes), so a day cuts no genuine token short.
pub const MAX_TOKEN_LIFETIME: time::Duration = time::Duration::days(1);
const IMDS_API_VERSION: &str = "2018-02-01";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why no token could be had. Messages never contain secrets: AAD's error
/// descriptions do not echo them, and the request is never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AadError {
    #[error(
        "azure ad refused the token request ({status} {error}, codes {codes:?}): {description}; check tenantId, aadClientId and the client secret or federated token"
    )]
    Refused {
        status: u16,
        error: String,
        codes: Vec<i64>,
        description: String,
    },
    #[error(
        "the instance metadata service refused a managed identity token ({status}): {message}; check the VM has the identity and userAssignedIdentityID names it"
    )]
    ImdsRefused { status: u16, message: String },
    #[error(
        "the instance metadata service did not give a token after {attempts} attempts (last: {last}); check the VM's identity, or set --imds-endpoint"
    )]
    ImdsUnavailable { attempts: u32, last: String },
    #[error("cannot reach {url}: {reason}; check the network and the endpoint override")]
    Transport { url: String, reason: String },
    #[error("token response from {url} is not valid: {reason}")]
    Decode { url: String, reason: String },
    #[error(
        "cannot read the federated token file {path}: {reason}; check aadFederatedTokenFile or AZURE_FEDERATED_TOKEN_FILE"
    )]
    TokenFile { path: String, reason: String },
    #[error("invalid azure ad setting: {0}")]
    Config(String),
}

impl From<AadError> for azure_core::Error {
    fn from(e: AadError) -> azure_core::Error {
        azure_core::Error::message(azure_core::error::ErrorKind::Credential, e.to_string())
    }
}

/// Where the token endpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AadEndpoints {
    /// e.g. `https://login.microsoftonline.com`
    pub authority_host: Url,
    /// e.g. `http://169.254.169.254`
    pub imds: Url,
}

fn parse_url(what: &str, s: &str) -> Result<Url, AadError> {
    let url: Url = s
        .trim()
        .parse()
        .map_err(|e| AadError::Config(format!("{what} {s:?} is not a url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AadError::Config(format!(
            "{what} {s:?} must be an http or https url"
        )));
    }
    Ok(url)
}

impl AadEndpoints {
    /// Picks each endpoint from the first that is set: the flag, the Azure
    /// SDK environment variable, the cloud config, the cloud's default.
    pub fn resolve(
        authority_flag: Option<&str>,
        authority_env: Option<&str>,
        authority_config: Option<&str>,
        cloud_authority: &str,
        imds_flag: Option<&str>,
        imds_env: Option<&str>,
    ) -> Result<AadEndpoints, AadError> {
        fn first(v: [Option<&str>; 3]) -> Option<&str> {
            v.into_iter().flatten().find(|s| !s.trim().is_empty())
        }
        let authority =
            first([authority_flag, authority_env, authority_config]).unwrap_or(cloud_authority);
        let imds = first([imds_flag, imds_env, None]).unwrap_or(DEFAULT_IMDS_ENDPOINT);
        Ok(AadEndpoints {
            authority_host: parse_url("authority host", authority)?,
            imds: parse_url("imds endpoint", imds)?,
        })
    }
}

/// A user-assigned managed identity, named as IMDS accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssigned {
    /// `client_id=` (a GUID, what `userAssignedIdentityID` usually holds).
    ClientId(String),
    /// `msi_res_id=` (an ARM resource ID, `/subscriptions/...`).
    ResourceId(String),
}

impl UserAssigned {
    /// Resource IDs start with `/`; anything else is a client ID.
    pub fn from_config(id: &str) -> UserAssigned {
        if id.starts_with('/') {
            UserAssigned::ResourceId(id.to_string())
        } else {
            UserAssigned::ClientId(id.to_string())
        }
    }
}

/// How IMDS failures that Azure documents as transient are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImdsRetry {
    pub attempts: u32,
    /// First wait; doubled after each failure (`Retry-After` wins on 429).
    pub base: Duration,
}

impl Default for ImdsRetry {
    fn default() -> ImdsRetry {
        ImdsRetry {
            attempts: 5,
            base: Duration::from_secs(1),
        }
    }
}

/// The token a flow got: the secret and when it expires.
struct Fetched {
    token: Secret,
    expires_on: OffsetDateTime,
}

#[async_trait]
trait Flow: Send + Sync {
    fn name(&self) -> &'static str;
    async fn fetch(&self, http: &dyn HttpClient, scope: &str) -> Result<Fetched, AadError>;
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(i64),
    Str(String),
}

impl NumOrString {
    fn seconds(&self) -> Option<i64> {
        match self {
            NumOrString::Num(n) => Some(*n),
            NumOrString::Str(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(serde::Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<NumOrString>,
    #[serde(default)]
    expires_on: Option<NumOrString>,
}

#[derive(serde::Deserialize, Default)]
struct AadErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<i64>,
}

/// Parses a token answer: `expires_on` (Unix seconds, number or string, as
/// IMDS and the v1 endpoint send it) or else `expires_in` (seconds from now,
/// as the v2.0 endpoint sends it).
fn parse_token(url: &str, body: &[u8], now: OffsetDateTime) -> Result<Fetched, AadError> {
    let decode = |reason: String| AadError::Decode {
        url: url.to_string(),
        reason,
    };
    let t: TokenBody = serde_json::from_slice(body).map_err(|e| decode(e.to_string()))?;
    if t.access_token.is_empty() {
        return Err(decode("empty access_token".into()));
    }
    let expires_on = match (
        t.expires_on.as_ref().and_then(NumOrString::seconds),
        t.expires_in.as_ref().and_then(NumOrString::seconds),
    ) {
        (Some(on), _) => OffsetDateTime::from_unix_timestamp(on)
            .map_err(|e| decode(format!("expires_on: {e}")))?,
        (None, Some(secs)) => {
            now + time::Duration::seconds(secs.clamp(0, MAX_TOKEN_LIFETIME.whole_seconds()))
        }
        (None, None) => return Err(decode("neither expires_on nor expires_in".into())),
    };
    let expires_on = expires_on.min(now + MAX_TOKEN_LIFETIME);
    Ok(Fetched {
        token: Secret::new(t.access_token),
        expires_on,
    })
}

/// First line of an AAD description (later lines hold trace and
/// correlation IDs and a timestamp).
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

fn header(rsp: &azure_core::Response, name: &str) -> Option<String> {
    rsp.headers()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str().to_string())
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut u = Url::parse("http://form.invalid/").expect("a constant url parses");
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    u.query().unwrap_or_default().to_string()
}

/// Where the client credential comes from.
enum ClientCredential {
    Secret(Secret),
    /// A federated token (JWT) kept in a file that the kubelet rotates; read
    /// on every fetch.
    AssertionFile(PathBuf),
}

/// The v2.0 token endpoint with the client-credentials grant.
struct ClientFlow {
    token_url: Url,
    client_id: String,
    credential: ClientCredential,
}

#[async_trait]
impl Flow for ClientFlow {
    fn name(&self) -> &'static str {
        match self.credential {
            ClientCredential::Secret(_) => "client_secret",
            ClientCredential::AssertionFile(_) => "workload_identity",
        }
    }

    async fn fetch(&self, http: &dyn HttpClient, scope: &str) -> Result<Fetched, AadError> {
        let url = self.token_url.to_string();
        let assertion;
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", scope),
        ];
        match &self.credential {
            ClientCredential::Secret(s) => pairs.push(("client_secret", s.secret())),
            ClientCredential::AssertionFile(path) => {
                assertion = std::fs::read_to_string(path).map_err(|e| AadError::TokenFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let assertion = assertion.trim();
                if assertion.is_empty() {
                    return Err(AadError::TokenFile {
                        path: path.display().to_string(),
                        reason: "the file is empty".into(),
                    });
                }
                pairs.push(("client_assertion_type", JWT_BEARER));
                pairs.push(("client_assertion", assertion));
            }
        }
        let mut req = Request::new(self.token_url.clone(), Method::Post);
        req.insert_header("content-type", "application/x-www-form-urlencoded");
        req.insert_header("accept", "application/json");
        req.set_body(form(&pairs));
        let now = OffsetDateTime::now_utc();
        let rsp = http
            .execute_request(&req)
            .await
            .map_err(|e| AadError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = u16::from(rsp.status());
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| AadError::Transport {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            let e: AadErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            return Err(AadError::Refused {
                status,
                error: if e.error.is_empty() {
                    "unknown_error".into()
                } else {
                    e.error
                },
                codes: e.error_codes,
                description: first_line(&e.error_description),
            });
        }
        parse_token(&url, &body, now)
    }
}

/// IMDS: `GET /metadata/identity/oauth2/token` with `Metadata: true`.
struct ImdsFlow {
    base: Url,
    identity: Option<UserAssigned>,
    retry: ImdsRetry,
}

#[async_trait]
impl Flow for ImdsFlow {
    fn name(&self) -> &'static str {
        "managed_identity"
    }

    async fn fetch(&self, http: &dyn HttpClient, scope: &str) -> Result<Fetched, AadError> {
        let resource = scope.trim_end_matches("/.default");
        let mut url = self
            .base
            .join("/metadata/identity/oauth2/token")
            .map_err(|e| AadError::Config(format!("imds endpoint {}: {e}", self.base)))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", IMDS_API_VERSION);
            q.append_pair("resource", resource);
            match &self.identity {
                Some(UserAssigned::ClientId(id)) => {
                    q.append_pair("client_id", id);
                }
                Some(UserAssigned::ResourceId(id)) => {
                    q.append_pair("msi_res_id", id);
                }
                None => {}
            }
        }
        let shown = url.to_string();
        let mut wait = self.retry.base;
        let attempts = self.retry.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let mut req = Request::new(url.clone(), Method::Get);
            req.insert_header("metadata", "true");
            let now = OffsetDateTime::now_utc();
            let mut retry_after = None;
            match http.execute_request(&req).await {
                Err(e) => last = format!("cannot connect: {e}"),
                Ok(rsp) => {
                    let status = u16::from(rsp.status());
                    retry_after =
                        header(&rsp, "retry-after").and_then(|v| super::parse_retry_after(&v));
                    let body = rsp.into_body().collect().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return parse_token(&shown, &body, now);
                    }
                    let e: AadErrorBody = serde_json::from_slice(&body).unwrap_or_default();
                    let message = match (e.error.is_empty(), e.error_description.is_empty()) {
                        (false, false) => {
                            format!("{}: {}", e.error, first_line(&e.error_description))
                        }
                        (false, true) => e.error,
                        _ => String::from_utf8_lossy(&body).chars().take(200).collect(),
                    };
                    // Azure documents 404 (identity not yet available), 410
                    // (IMDS updating), 429 and 5xx as transient.
                    if !matches!(status, 404 | 410 | 429 | 500..=599) {
                        return Err(AadError::ImdsRefused { status, message });
                    }
                    last = format!("{status} {message}");
                }
            }
            if attempt < attempts {
                let delay = retry_after.unwrap_or(wait);
                warn!(attempt, retry_in = ?delay, last = %last, "managed identity token not available; retrying");
                tokio::time::sleep(delay).await;
                wait = wait.saturating_mul(2);
            }
        }
        Err(AadError::ImdsUnavailable { attempts, last })
    }
}

/// An Azure AD credential with its token cache.
pub struct AadCredential {
    flow: Box<dyn Flow>,
    http: Arc<dyn HttpClient>,
    /// Held across a fetch so concurrent callers wait for one request.
    cache: tokio::sync::Mutex<Option<(String, AccessToken)>>,
    margin: Duration,
}

impl fmt::Debug for AadCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AadCredential")
            .field("flow", &self.flow.name())
            .finish_non_exhaustive()
    }
}

fn token_url(authority_host: &Url, tenant_id: &str) -> Result<Url, AadError> {
    let ok = !tenant_id.is_empty()
        && !tenant_id.starts_with('.')
        && tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok {
        return Err(AadError::Config(format!(
            "tenantId {tenant_id:?} is not a tenant id or domain; fix the cloud config"
        )));
    }
    let base = authority_host.as_str().trim_end_matches('/');
    parse_url(
        "token endpoint",
        &format!("{base}/{tenant_id}/oauth2/v2.0/token"),
    )
}

impl AadCredential {
    fn new(flow: Box<dyn Flow>, http: Arc<dyn HttpClient>) -> AadCredential {
        AadCredential {
            flow,
            http,
            cache: tokio::sync::Mutex::new(None),
            margin: REFRESH_MARGIN,
        }
    }

    /// A service principal with a client secret.
    pub fn client_secret(
        http: Arc<dyn HttpClient>,
        authority_host: &Url,
        tenant_id: &str,
        client_id: &str,
        secret: Secret,
    ) -> Result<AadCredential, AadError> {
        let flow = ClientFlow {
            token_url: token_url(authority_host, tenant_id)?,
            client_id: client_id.to_string(),
            credential: ClientCredential::Secret(secret),
        };
        Ok(AadCredential::new(Box::new(flow), http))
    }

    /// Workload identity: the federated token in `token_file` is the client
    /// assertion.
    pub fn workload_identity(
        http: Arc<dyn HttpClient>,
        authority_host: &Url,
        tenant_id: &str,
        client_id: &str,
        token_file: PathBuf,
    ) -> Result<AadCredential, AadError> {
        let flow = ClientFlow {
            token_url: token_url(authority_host, tenant_id)?,
            client_id: client_id.to_string(),
            credential: ClientCredential::AssertionFile(token_file),
        };
        Ok(AadCredential::new(Box::new(flow), http))
    }

    /// A managed identity through IMDS, system-assigned when `identity` is
    /// `None`.
    pub fn managed_identity(
        http: Arc<dyn HttpClient>,
        imds: &Url,
        identity: Option<UserAssigned>,
        retry: ImdsRetry,
    ) -> AadCredential {
        let flow = ImdsFlow {
            base: imds.clone(),
            identity,
            retry,
        };
        AadCredential::new(Box::new(flow), http)
    }
}

/// Whether a cached token is still good at `now`.
pub fn fresh(expires_on: OffsetDateTime, now: OffsetDateTime, margin: Duration) -> bool {
    expires_on - now > time::Duration::try_from(margin).unwrap_or(time::Duration::MAX)
}

#[async_trait]
impl TokenCredential for AadCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        let mut cache = self.cache.lock().await;
        if let Some((k, t)) = cache.as_ref()
            && *k == key
            && fresh(t.expires_on, OffsetDateTime::now_utc(), self.margin)
        {
            return Ok(t.clone());
        }
        let scope = scopes.first().copied().unwrap_or_default();
        debug!(flow = self.flow.name(), scope, "requesting azure ad token");
        let fetched = match self.flow.fetch(self.http.as_ref(), scope).await {
            Ok(f) => f,
            Err(error) => {
                warn!(flow = self.flow.name(), %error, "cannot get azure ad token");
                return Err(error.into());
            }
        };
        info!(flow = self.flow.name(), expires_on = %fetched.expires_on, "azure ad token acquired");
        let token = AccessToken::new(fetched.token, fetched.expires_on);
        *cache = Some((key, token.clone()));
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn token_answers_parse_in_every_documented_shape() {
        let now = at(1_000);
        for (body, expires) in [
            (
                r#"{"access_token":"t","expires_in":3599,"token_type":"Bearer"}"#,
                4_599,
            ),
            (r#"{"access_token":"t","expires_in":"3599"}"#, 4_599),
            (
                r#"{"access_token":"t","expires_on":"5000","expires_in":"3599"}"#,
                5_000,
            ),
            (r#"{"access_token":"t","expires_on":6000}"#, 6_000),
        ] {
            let f = parse_token("u", body.as_bytes(), now).unwrap();
            assert_eq!(f.expires_on, at(expires), "{body}");
            assert_eq!(f.token.secret(), "t");
        }
        for bad in [
            r#"{"access_token":"t"}"#,
            r#"{"access_token":"","expires_in":1}"#,
            r#"{"expires_in":1}"#,
            "not json",
        ] {
            assert!(
                matches!(
                    parse_token("u", bad.as_bytes(), now),
                    Err(AadError::Decode { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_lifetimes_beyond_a_day_are_capped() {
        let now = at(1_000);
        let day = 24 * 3600;
        for (body, expires) in [
            (
                r#"{"access_token":"t","expires_in":9223372036854775807}"#,
                1_000 + day,
            ),
            (r#"{"access_token":"t","expires_in":"-5"}"#, 1_000),
            (
                r#"{"access_token":"t","expires_on":253402300799}"#,
                1_000 + day,
            ),
        ] {
            let f = parse_token("u", body.as_bytes(), now).unwrap();
            assert_eq!(f.expires_on, at(expires), "{body}");
        }
    }

    #[test]
    fn tokens_are_refreshed_five_minutes_before_expiry() {
        let now = at(10_000);
        assert!(fresh(at(10_000 + 301), now, REFRESH_MARGIN));
        assert!(!fresh(at(10_000 + 300), now, REFRESH_MARGIN));
        assert!(!fresh(at(9_000), now, REFRESH_MARGIN));
    }

    #[test]
    fn endpoints_resolve_flag_then_sdk_variable_then_config_then_cloud() {
        let cloud = "https://login.microsoftonline.com";
        let r = |f, e, c, i, ie| AadEndpoints::resolve(f, e, c, cloud, i, ie).unwrap();
        let e = r(None, None, None, None, None);
        assert_eq!(
            e.authority_host.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(e.imds.as_str(), "http://169.254.169.254/");
        let e = r(
            Some("http://127.0.0.1:1"),
            Some("http://127.0.0.1:2"),
            Some("http://127.0.0.1:3"),
            Some("http://127.0.0.1:4"),
            Some("http://127.0.0.1:5"),
        );
        assert_eq!(e.authority_host.port(), Some(1));
        assert_eq!(e.imds.port(), Some(4));
        let e = r(
            None,
            Some("http://127.0.0.1:2"),
            Some("x"),
            None,
            Some("http://127.0.0.1:5"),
        );
        assert_eq!((e.authority_host.port(), e.imds.port()), (Some(2), Some(5)));
        let e = r(None, Some(" "), Some("https://login.example/"), None, None);
        assert_eq!(e.authority_host.host_str(), Some("login.example"));
        assert!(AadEndpoints::resolve(Some("ftp://x"), None, None, cloud, None, None).is_err());
        assert!(AadEndpoints::resolve(None, None, None, cloud, Some("not a url"), None).is_err());
    }

    #[test]
    fn token_urls_need_a_plain_tenant() {
        let host: Url = "https://login.microsoftonline.com/".parse().unwrap();
        assert_eq!(
            token_url(&host, "contoso.onmicrosoft.com")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        for bad in ["", "a/b", "../x", "..", "t?x=1"] {
            assert!(token_url(&host, bad).is_err(), "{bad}");
        }
        assert_eq!(
            UserAssigned::from_config("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"),
            UserAssigned::ResourceId("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id".into())
        );
        assert_eq!(
            UserAssigned::from_config("0000-11"),
            UserAssigned::ClientId("0000-11".into())
        );
    }

    #[test]
    fn forms_are_url_encoded() {
        assert_eq!(
            form(&[("scope", "https://x/.default"), ("a", "b c&d")]),
            "scope=https%3A%2F%2Fx%2F.default&a=b+c%26d"
        );
    }
}
