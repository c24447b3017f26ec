//! Microsoft Entra ID (Azure AD) access tokens for Azure Storage, chosen as upstream's Azure
//! sink chooses them when `account_key` is empty:
//! - with `client_id`: workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set (AKS),
//!   else that user-assigned managed identity;
//! - without: the default chain, so a client secret from `AZURE_TENANT_ID`,
//!   `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, then workload identity from the
//!   environment, then the system-assigned managed identity.
//!
//! Managed identity is asked through `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` where the
//! platform sets them (App Service, Container Apps), else the VM metadata service.
//! `AZURE_AUTHORITY_HOST` selects a sovereign cloud's login host (https only).
//!
//! The choice is ours (it is upstream's configuration); the token flows are the official
//! Azure SDK's (`azure_identity`), over our HTTP client and its TLS.

use super::{Failure, StoreError};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::sync::Arc;
use tokio::sync::Mutex;

const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// Where tokens come from.
#[derive(Clone, PartialEq)]
pub(crate) enum TokenSource {
    ClientSecret {
        authority: String,
        tenant: String,
        client_id: String,
        secret: String,
    },
    Workload {
        authority: String,
        tenant: String,
        client_id: String,
        token_file: String,
    },
    /// `client_id` empty: the system-assigned identity.
    ManagedIdentity { client_id: String },
}

impl std::fmt::Debug for TokenSource {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::ClientSecret {
                tenant, client_id, ..
            } => {
                write!(f, "client secret (tenant {tenant}, client {client_id})")
            }
            TokenSource::Workload {
                tenant,
                client_id,
                token_file,
                ..
            } => write!(
                f,
                "workload identity (tenant {tenant}, client {client_id}, token file {token_file})"
            ),
            TokenSource::ManagedIdentity { client_id } if client_id.is_empty() => {
                write!(f, "system-assigned managed identity")
            }
            TokenSource::ManagedIdentity { client_id } => {
                write!(f, "managed identity (client {client_id})")
            }
        }
    }
}

impl TokenSource {
    /// Upstream's choice, from the config's `client_id` and `env` (a variable lookup).
    pub(crate) fn choose(client_id: &str, env: impl Fn(&str) -> Option<String>) -> TokenSource {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let authority = var("AZURE_AUTHORITY_HOST").unwrap_or_else(|| DEFAULT_AUTHORITY.into());
        let tenant = var("AZURE_TENANT_ID").unwrap_or_default();
        let token_file = var("AZURE_FEDERATED_TOKEN_FILE");
        if !client_id.is_empty() {
            return match token_file {
                Some(token_file) => TokenSource::Workload {
                    authority,
                    tenant,
                    client_id: client_id.into(),
                    token_file,
                },
                None => TokenSource::ManagedIdentity {
                    client_id: client_id.into(),
                },
            };
        }
        let env_client = var("AZURE_CLIENT_ID");
        if let (Some(client_id), Some(secret)) = (&env_client, var("AZURE_CLIENT_SECRET")) {
            return TokenSource::ClientSecret {
                authority,
                tenant,
                client_id: client_id.clone(),
                secret,
            };
        }
        if let (Some(client_id), Some(token_file)) = (env_client, token_file) {
            return TokenSource::Workload {
                authority,
                tenant,
                client_id,
                token_file,
            };
        }
        TokenSource::ManagedIdentity {
            client_id: String::new(),
        }
    }

    /// What is missing for this source to work, if anything.
    pub(crate) fn problem(&self) -> Option<CredentialProblem> {
        match self {
            TokenSource::ClientSecret { tenant, .. } | TokenSource::Workload { tenant, .. }
                if tenant.is_empty() =>
            {
                Some(CredentialProblem::NoTenant(format!("{self:?}")))
            }
            TokenSource::ClientSecret { authority, .. }
            | TokenSource::Workload { authority, .. }
                if !authority.to_ascii_lowercase().starts_with("https://") =>
            {
                Some(CredentialProblem::PlainAuthority(authority.clone()))
            }
            _ => None,
        }
    }
}

/// What keeps a token source from working (found before anything is asked of Entra ID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CredentialProblem {
    /// A flow that needs a tenant, without one (the source, as its `Debug` prints it).
    #[error("{0} needs AZURE_TENANT_ID")]
    NoTenant(String),
    /// The SDK refuses a plain-http authority.
    #[error("AZURE_AUTHORITY_HOST must be an https:// URL, not {0:?}")]
    PlainAuthority(String),
}

/// Access tokens from one source, through the Azure SDK's own credentials (which cache
/// each token until shortly before it expires). The credential is made at the first
/// request and again after a failure, so a token file that appears later, or a refused
/// token, is read afresh.
pub(crate) struct EntraCredential {
    source: TokenSource,
    http: reqwest::Client,
    credential: Mutex<Option<Arc<dyn TokenCredential>>>,
}

impl EntraCredential {
    pub(crate) fn new(source: TokenSource, http: reqwest::Client) -> Self {
        EntraCredential {
            source,
            http,
            credential: Mutex::new(None),
        }
    }

    pub(crate) fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Drop the credential and its cached token (the service refused it).
    pub(crate) async fn forget(&self) {
        *self.credential.lock().await = None;
    }

    /// The SDK's credential for this source, talking through our HTTP client to the
    /// authority the source names.
    fn make(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        // Our HTTP client, and the authority when the flow has one.
        let options = |authority: Option<&str>| {
            let cloud = authority.map(|authority| {
                let mut cloud = CustomConfiguration::default();
                cloud.authority_host = authority.to_string();
                Arc::new(CloudConfiguration::Custom(cloud))
            });
            ClientOptions {
                transport: Some(Transport::new(Arc::new(self.http.clone()))),
                cloud,
                ..Default::default()
            }
        };
        Ok(match &self.source {
            TokenSource::ClientSecret {
                authority,
                tenant,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant,
                client_id.clone(),
                Secret::new(secret.clone()),
                Some(ClientSecretCredentialOptions {
                    client_options: options(Some(authority)),
                }),
            )?,
            TokenSource::Workload {
                authority,
                tenant,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: options(Some(authority)),
                },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant.clone()),
                token_file_path: Some(token_file.into()),
            }))?,
            TokenSource::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: (!client_id.is_empty())
                        .then(|| UserAssignedId::ClientId(client_id.clone())),
                    client_options: options(None),
                }))?
            }
        })
    }

    pub(crate) async fn token(&self) -> Result<String, StoreError> {
        let op = "get an Entra ID token";
        let failed = |e: azure_core::Error| {
            let failure = match e.kind() {
                ErrorKind::Io => Failure::Unavailable,
                // Refused credentials: every request needs them, so no event is to blame.
                _ => Failure::PermissionDenied,
            };
            StoreError::new(op, "", failure, format!("{:?}: {e}", self.source))
        };
        let credential = {
            let mut slot = self.credential.lock().await;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.make().map_err(failed)?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        match credential.get_token(&[STORAGE_SCOPE], None).await {
            Ok(token) => Ok(token.token.secret().to_string()),
            Err(e) => {
                self.forget().await;
                Err(failed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn choose(client_id: &str, vars: &[(&str, &str)]) -> TokenSource {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TokenSource::choose(client_id, |k| vars.get(k).cloned())
    }

    #[test]
    fn chooses_as_upstream_does() {
        assert_eq!(
            choose(
                "cid",
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_TENANT_ID", "ten")
                ]
            ),
            TokenSource::Workload {
                authority: DEFAULT_AUTHORITY.into(),
                tenant: "ten".into(),
                client_id: "cid".into(),
                token_file: "/t".into(),
            }
        );
        assert_eq!(
            choose(
                "cid",
                &[("AZURE_CLIENT_SECRET", "s"), ("AZURE_CLIENT_ID", "other")]
            ),
            TokenSource::ManagedIdentity {
                client_id: "cid".into()
            },
            "a configured client_id without a token file is a user-assigned identity"
        );
        let secret = choose(
            "",
            &[
                ("AZURE_CLIENT_ID", "c"),
                ("AZURE_CLIENT_SECRET", "s3cret"),
                ("AZURE_TENANT_ID", "t"),
                ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
            ],
        );
        assert!(
            matches!(&secret, TokenSource::ClientSecret { authority, .. } if authority.ends_with(".us/"))
        );
        assert!(
            !format!("{secret:?}").contains("s3cret"),
            "the secret is never printed"
        );
        assert!(matches!(
            choose(
                "",
                &[
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t")
                ]
            ),
            TokenSource::Workload { .. }
        ));
        assert_eq!(
            choose("", &[]),
            TokenSource::ManagedIdentity {
                client_id: String::new()
            }
        );
        assert!(
            choose(
                "",
                &[("AZURE_CLIENT_ID", "c"), ("AZURE_CLIENT_SECRET", "s")]
            )
            .problem()
            .is_some_and(|p| matches!(p, CredentialProblem::NoTenant(_)))
        );
        assert!(
            choose(
                "",
                &[
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_CLIENT_SECRET", "s"),
                    ("AZURE_TENANT_ID", "t"),
                    ("AZURE_AUTHORITY_HOST", "http://login.example/"),
                ]
            )
            .problem()
                == Some(CredentialProblem::PlainAuthority(
                    "http://login.example/".into()
                )),
            "the SDK refuses a plain-http authority; say so at start-up"
        );
    }
}
