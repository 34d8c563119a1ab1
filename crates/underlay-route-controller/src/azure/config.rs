//! The Azure cloud provider's `azure.json` (`--cloud-config`): which route
//! table to manage and which identity to use. Unknown fields are ignored (the
//! file is shared with other components); a missing required field is a
//! start-up error; the client secret never appears in `Debug` output or logs.

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Errors reading the cloud config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cloud config {path}: {source}; check --cloud-config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cloud config {path} is not valid JSON: {source}; fix the file")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cloud config is missing required field `{0}`; add it to the file")]
    Missing(&'static str),
    #[error(
        "cloud config names unknown cloud `{0}`; use AzurePublicCloud, AzureChinaCloud or AzureUSGovernmentCloud, or give --arm-endpoint"
    )]
    UnknownCloud(String),
    #[error(
        "cloud config sets no identity; set aadClientId and aadClientSecret, useManagedIdentityExtension, useFederatedWorkloadIdentityExtension, or pass --arm-token-file"
    )]
    NoIdentity,
}

/// The fields of `azure.json` the controller reads.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudConfig {
    pub cloud: Option<String>,
    pub tenant_id: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    pub route_table_name: Option<String>,
    pub route_table_resource_group: Option<String>,
    pub aad_client_id: Option<String>,
    pub aad_client_secret: Option<String>,
    pub use_managed_identity_extension: bool,
    #[serde(rename = "userAssignedIdentityID")]
    pub user_assigned_identity_id: Option<String>,
    pub aad_federated_token_file: Option<String>,
    pub use_federated_workload_identity_extension: bool,
    /// Azure AD authority host of a custom cloud (as in the Azure
    /// environment file's `activeDirectoryEndpoint`).
    pub active_directory_endpoint: Option<String>,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("cloud", &self.cloud)
            .field("tenant_id", &self.tenant_id)
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("location", &self.location)
            .field("route_table_name", &self.route_table_name)
            .field(
                "route_table_resource_group",
                &self.route_table_resource_group,
            )
            .field("aad_client_id", &self.aad_client_id)
            .field(
                "aad_client_secret",
                &self.aad_client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "use_managed_identity_extension",
                &self.use_managed_identity_extension,
            )
            .field("user_assigned_identity_id", &self.user_assigned_identity_id)
            .field("aad_federated_token_file", &self.aad_federated_token_file)
            .field(
                "use_federated_workload_identity_extension",
                &self.use_federated_workload_identity_extension,
            )
            .field("active_directory_endpoint", &self.active_directory_endpoint)
            .finish()
    }
}

/// Where the route table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLocation {
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
    /// Azure region, needed only to create a missing table.
    pub location: Option<String>,
}

/// How to authenticate to Azure Resource Manager.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// A bearer token read from a file, re-read when it changes.
    TokenFile(PathBuf),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
    ManagedIdentity {
        user_assigned_client_id: Option<String>,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
            Identity::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", &"<redacted>")
                .finish(),
            Identity::ManagedIdentity {
                user_assigned_client_id,
            } => f
                .debug_struct("ManagedIdentity")
                .field("user_assigned_client_id", user_assigned_client_id)
                .finish(),
            Identity::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// A cloud's Resource Manager endpoint and Azure AD authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEndpoints {
    pub resource_manager: String,
    pub authority: String,
}

fn required(v: &Option<String>, name: &'static str) -> Result<String, ConfigError> {
    v.clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

impl CloudConfig {
    pub fn load(path: &Path) -> Result<CloudConfig, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The route table: `routeTableResourceGroup` if set, else `resourceGroup`.
    pub fn table(&self) -> Result<TableLocation, ConfigError> {
        let subscription_id = required(&self.subscription_id, "subscriptionId")?;
        let name = required(&self.route_table_name, "routeTableName")?;
        let resource_group =
            match required(&self.route_table_resource_group, "routeTableResourceGroup") {
                Ok(rg) => rg,
                Err(_) => required(&self.resource_group, "resourceGroup")?,
            };
        Ok(TableLocation {
            subscription_id,
            resource_group,
            name,
            location: self.location.clone().filter(|l| !l.is_empty()),
        })
    }

    /// The endpoints of `cloud` (default the public cloud).
    pub fn endpoints(&self) -> Result<CloudEndpoints, ConfigError> {
        let cloud = self.cloud.as_deref().unwrap_or("AzurePublicCloud");
        let (rm, authority) = match cloud.to_ascii_lowercase().as_str() {
            "" | "azurepubliccloud" | "azurecloud" => (
                "https://management.azure.com",
                "https://login.microsoftonline.com",
            ),
            "azurechinacloud" => (
                "https://management.chinacloudapi.cn",
                "https://login.chinacloudapi.cn",
            ),
            "azureusgovernmentcloud" | "azureusgovernment" => (
                "https://management.usgovcloudapi.net",
                "https://login.microsoftonline.us",
            ),
            _ => return Err(ConfigError::UnknownCloud(cloud.to_string())),
        };
        Ok(CloudEndpoints {
            resource_manager: rm.to_string(),
            authority: authority.to_string(),
        })
    }

    /// The identity to use; `token_file` (from `--arm-token-file`) wins.
    pub fn identity(&self, token_file: Option<&Path>) -> Result<Identity, ConfigError> {
        if let Some(path) = token_file {
            return Ok(Identity::TokenFile(path.to_path_buf()));
        }
        if self.use_federated_workload_identity_extension || self.aad_federated_token_file.is_some()
        {
            let token_file = self
                .aad_federated_token_file
                .clone()
                .or_else(|| std::env::var("AZURE_FEDERATED_TOKEN_FILE").ok())
                .ok_or(ConfigError::Missing("aadFederatedTokenFile"))?;
            return Ok(Identity::WorkloadIdentity {
                tenant_id: required(&self.tenant_id, "tenantId")?,
                client_id: required(&self.aad_client_id, "aadClientId")?,
                token_file: token_file.into(),
            });
        }
        if self.use_managed_identity_extension {
            return Ok(Identity::ManagedIdentity {
                user_assigned_client_id: self
                    .user_assigned_identity_id
                    .clone()
                    .filter(|s| !s.is_empty()),
            });
        }
        if self.aad_client_id.is_some() || self.aad_client_secret.is_some() {
            return Ok(Identity::ClientSecret {
                tenant_id: required(&self.tenant_id, "tenantId")?,
                client_id: required(&self.aad_client_id, "aadClientId")?,
                secret: required(&self.aad_client_secret, "aadClientSecret")?,
            });
        }
        Err(ConfigError::NoIdentity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> CloudConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_the_fields_and_ignores_unknown_ones() {
        let c = parse(
            r#"{"cloud":"AzurePublicCloud","tenantId":"t","subscriptionId":"s",
                "resourceGroup":"rg","location":"westeurope","routeTableName":"rt",
                "aadClientId":"id","aadClientSecret":"hunter2","vnetName":"v",
                "loadBalancerSku":"standard"}"#,
        );
        assert_eq!(
            c.table().unwrap(),
            TableLocation {
                subscription_id: "s".into(),
                resource_group: "rg".into(),
                name: "rt".into(),
                location: Some("westeurope".into()),
            }
        );
        assert!(matches!(
            c.identity(None).unwrap(),
            Identity::ClientSecret { .. }
        ));
        assert_eq!(
            c.endpoints().unwrap().resource_manager,
            "https://management.azure.com"
        );
    }

    #[test]
    fn route_table_resource_group_wins() {
        let c = parse(
            r#"{"subscriptionId":"s","resourceGroup":"rg","routeTableResourceGroup":"net","routeTableName":"rt"}"#,
        );
        assert_eq!(c.table().unwrap().resource_group, "net");
    }

    #[test]
    fn missing_required_fields_are_named() {
        for (json, field) in [
            (
                r#"{"resourceGroup":"rg","routeTableName":"rt"}"#,
                "subscriptionId",
            ),
            (
                r#"{"subscriptionId":"s","resourceGroup":"rg"}"#,
                "routeTableName",
            ),
            (
                r#"{"subscriptionId":"s","routeTableName":"rt"}"#,
                "resourceGroup",
            ),
        ] {
            let err = parse(json).table().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = parse(r#"{"aadClientId":"id","aadClientSecret":"x"}"#)
            .identity(None)
            .unwrap_err();
        assert!(err.to_string().contains("tenantId"), "{err}");
        assert!(matches!(
            parse("{}").identity(None).unwrap_err(),
            ConfigError::NoIdentity
        ));
    }

    #[test]
    fn identities_are_chosen_in_order() {
        let c = parse(
            r#"{"tenantId":"t","aadClientId":"id","useFederatedWorkloadIdentityExtension":true,
                "aadFederatedTokenFile":"/var/run/token","useManagedIdentityExtension":true}"#,
        );
        assert!(matches!(
            c.identity(None).unwrap(),
            Identity::WorkloadIdentity { .. }
        ));
        assert_eq!(
            c.identity(Some(Path::new("/tok"))).unwrap(),
            Identity::TokenFile("/tok".into())
        );
        let c = parse(r#"{"useManagedIdentityExtension":true,"userAssignedIdentityID":"u"}"#);
        assert_eq!(
            c.identity(None).unwrap(),
            Identity::ManagedIdentity {
                user_assigned_client_id: Some("u".into())
            }
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = parse(
            r#"{"tenantId":"t","aadClientId":"id","aadClientSecret":"hunter2","subscriptionId":"s"}"#,
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.identity(None).unwrap()).contains("hunter2"));
    }

    #[test]
    fn unknown_clouds_are_an_error() {
        let err = parse(r#"{"cloud":"AzureStackCloud"}"#)
            .endpoints()
            .unwrap_err();
        assert!(err.to_string().contains("--arm-endpoint"), "{err}");
    }
}
