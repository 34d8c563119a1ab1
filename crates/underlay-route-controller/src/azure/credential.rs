//! Credentials for Azure Resource Manager: a bearer token read from a file
//! (`--arm-token-file`, how the lab and tests authenticate) and the Azure AD
//! identities `azure.json` can name.

use super::config::{CloudEndpoints, Identity};
use azure_core::auth::{AccessToken, Secret, TokenCredential};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use time::OffsetDateTime;

/// A bearer token kept in a file and re-read whenever the file's modification
/// time or size changes, so a rotated token is picked up without a restart.
#[derive(Debug)]
pub struct TokenFileCredential {
    path: PathBuf,
    cache: Mutex<Option<Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    stamp: (Option<SystemTime>, u64),
    token: Secret,
}

impl TokenFileCredential {
    pub fn new(path: impl Into<PathBuf>) -> TokenFileCredential {
        TokenFileCredential {
            path: path.into(),
            cache: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> azure_core::Result<Secret> {
        let io_err = |e: std::io::Error| {
            azure_core::Error::full(
                azure_core::error::ErrorKind::Credential,
                e,
                format!(
                    "cannot read arm token file {}; check --arm-token-file",
                    self.path.display()
                ),
            )
        };
        let meta = std::fs::metadata(&self.path).map_err(io_err)?;
        let stamp = (meta.modified().ok(), meta.len());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && c.stamp == stamp
        {
            return Ok(c.token.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io_err)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(azure_core::Error::message(
                azure_core::error::ErrorKind::Credential,
                format!(
                    "arm token file {} is empty; write the bearer token into it",
                    self.path.display()
                ),
            ));
        }
        let token = Secret::new(token.to_string());
        *cache = Some(Cached {
            stamp,
            token: token.clone(),
        });
        Ok(token)
    }
}

#[async_trait::async_trait]
impl TokenCredential for TokenFileCredential {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let token = self.read()?;
        // The file is the source of truth; a short expiry keeps callers from
        // caching the token past a rotation.
        Ok(AccessToken::new(
            token,
            OffsetDateTime::now_utc() + time::Duration::minutes(1),
        ))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// Managed identity through the instance metadata service, system- or
/// user-assigned. azure_identity 0.21 cannot select a user-assigned identity,
/// so this small credential does the one documented GET itself.
#[derive(Debug)]
pub struct ImdsCredential {
    client_id: Option<String>,
    http: Arc<dyn azure_core::HttpClient>,
    cache: Mutex<Option<AccessToken>>,
}

const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

#[derive(serde::Deserialize)]
struct ImdsToken {
    access_token: String,
    expires_on: String,
}

impl ImdsCredential {
    pub fn new(client_id: Option<String>) -> ImdsCredential {
        ImdsCredential {
            client_id,
            http: azure_core::new_http_client(),
            cache: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for ImdsCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        use azure_core::error::ErrorKind;
        if let Some(t) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && t.expires_on > OffsetDateTime::now_utc() + time::Duration::minutes(5)
        {
            return Ok(t);
        }
        let resource = scopes
            .first()
            .map(|s| s.trim_end_matches("/.default"))
            .unwrap_or("https://management.azure.com");
        let mut url: azure_core::Url = IMDS_TOKEN_URL
            .parse()
            .map_err(|e| azure_core::Error::full(ErrorKind::DataConversion, e, "imds url"))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01")
            .append_pair("resource", resource);
        if let Some(id) = &self.client_id {
            url.query_pairs_mut().append_pair("client_id", id);
        }
        let mut req = azure_core::Request::new(url, azure_core::Method::Get);
        req.insert_header("metadata", "true");
        let rsp = self.http.execute_request(&req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?;
        if !status.is_success() {
            return Err(azure_core::Error::message(
                ErrorKind::Credential,
                format!(
                    "instance metadata service refused a managed identity token ({status}); check the VM's identity and userAssignedIdentityID"
                ),
            ));
        }
        let token: ImdsToken = serde_json::from_slice(&body)
            .map_err(|e| azure_core::Error::full(ErrorKind::DataConversion, e, "imds token"))?;
        let expires = token
            .expires_on
            .parse::<i64>()
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or_else(|| OffsetDateTime::now_utc() + time::Duration::minutes(10));
        let token = AccessToken::new(Secret::new(token.access_token), expires);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// Workload identity: the projected service-account token is rotated by the
/// kubelet, so the federated credential is rebuilt whenever the file changes.
#[derive(Debug)]
pub struct FederatedCredential {
    tenant_id: String,
    client_id: String,
    authority: azure_core::Url,
    file: TokenFileCredential,
    inner: Mutex<Option<(String, Arc<azure_identity::WorkloadIdentityCredential>)>>,
}

impl FederatedCredential {
    pub fn new(
        tenant_id: String,
        client_id: String,
        authority: azure_core::Url,
        token_file: PathBuf,
    ) -> FederatedCredential {
        FederatedCredential {
            tenant_id,
            client_id,
            authority,
            file: TokenFileCredential::new(token_file),
            inner: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for FederatedCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let assertion = self.file.read()?.secret().to_string();
        let cred = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match inner.as_ref() {
                Some((a, c)) if *a == assertion => c.clone(),
                _ => {
                    let c = Arc::new(azure_identity::WorkloadIdentityCredential::new(
                        azure_core::new_http_client(),
                        self.authority.clone(),
                        self.tenant_id.clone(),
                        self.client_id.clone(),
                        assertion.clone(),
                    ));
                    *inner = Some((assertion, c.clone()));
                    c
                }
            }
        };
        cred.get_token(scopes).await
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// The credential for `identity`.
pub fn credential_for(
    identity: &Identity,
    endpoints: &CloudEndpoints,
) -> Result<Arc<dyn TokenCredential>, String> {
    let authority: azure_core::Url = endpoints
        .authority
        .parse()
        .map_err(|e| format!("invalid authority url {}: {e}", endpoints.authority))?;
    Ok(match identity {
        Identity::TokenFile(path) => Arc::new(TokenFileCredential::new(path.clone())),
        Identity::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => Arc::new(azure_identity::ClientSecretCredential::new(
            azure_core::new_http_client(),
            authority,
            tenant_id.clone(),
            client_id.clone(),
            secret.clone(),
        )),
        Identity::ManagedIdentity {
            user_assigned_client_id,
        } => Arc::new(ImdsCredential::new(user_assigned_client_id.clone())),
        Identity::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => Arc::new(FederatedCredential::new(
            tenant_id.clone(),
            client_id.clone(),
            authority,
            token_file.clone(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let cred = TokenFileCredential::new(&path);
        assert_eq!(cred.get_token(&[]).await.unwrap().token.secret(), "first");
        // A different length changes the stamp even within the mtime granularity.
        std::fs::write(&path, "second-token").unwrap();
        assert_eq!(
            cred.get_token(&[]).await.unwrap().token.secret(),
            "second-token"
        );
    }

    #[tokio::test]
    async fn missing_or_empty_token_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let cred = TokenFileCredential::new(&path);
        let err = cred.get_token(&[]).await.unwrap_err();
        assert!(err.to_string().contains("--arm-token-file"), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        let err = cred.get_token(&[]).await.unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
