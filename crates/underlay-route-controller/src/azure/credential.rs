//! Credentials for Azure Resource Manager: a bearer token read from a file
//! (`--arm-token-file`, how the lab and tests authenticate), and the choice
//! among the Azure AD identities `azure.json` can name (their flows are in
//! [`super::aad`]).

use super::aad::{AadCredential, AadEndpoints, AadError, ImdsRetry, UserAssigned};
use super::config::Identity;
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

/// The credential for `identity`, talking to the token endpoints in
/// `endpoints`.
pub fn credential_for(
    identity: &Identity,
    endpoints: &AadEndpoints,
) -> Result<Arc<dyn TokenCredential>, AadError> {
    let http = azure_core::new_http_client();
    Ok(match identity {
        Identity::TokenFile(path) => Arc::new(TokenFileCredential::new(path.clone())),
        Identity::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => Arc::new(AadCredential::client_secret(
            http,
            &endpoints.authority_host,
            tenant_id,
            client_id,
            Secret::new(secret.clone()),
        )?),
        Identity::ManagedIdentity {
            user_assigned_client_id,
        } => Arc::new(AadCredential::managed_identity(
            http,
            &endpoints.imds,
            user_assigned_client_id
                .as_deref()
                .map(UserAssigned::from_config),
            ImdsRetry::default(),
        )),
        Identity::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => Arc::new(AadCredential::workload_identity(
            http,
            &endpoints.authority_host,
            tenant_id,
            client_id,
            token_file.clone(),
        )?),
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
