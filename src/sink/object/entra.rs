//! Microsoft Entra ID (Azure AD) access tokens for Azure Storage, chosen as upstream's Azure
//! sink chooses them when `account_key` is empty:
//! - with `client_id`: workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set (AKS),
//!   else that user-assigned managed identity;
//! - without: the default chain, so a client secret from `AZURE_TENANT_ID`,
//!   `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`, then workload identity from the
//!   environment, then the system-assigned managed identity.
//!
//! Managed identity is asked through `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` where the
//! platform sets them (App Service, Container Apps, Arc), else the VM metadata service.
//! `AZURE_AUTHORITY_HOST` selects a sovereign cloud's login host.

use super::{Failure, StoreError};
use crate::sink::percent_encode;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
const IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// A token is renewed this long before it expires.
const EARLY: Duration = Duration::from_secs(300);

/// Where tokens come from.
#[derive(Clone, PartialEq)]
pub enum TokenSource {
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
    pub fn choose(client_id: &str, env: impl Fn(&str) -> Option<String>) -> TokenSource {
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
    pub fn problem(&self) -> Option<String> {
        match self {
            TokenSource::ClientSecret { tenant, .. } | TokenSource::Workload { tenant, .. }
                if tenant.is_empty() =>
            {
                Some(format!("{self:?} needs AZURE_TENANT_ID"))
            }
            _ => None,
        }
    }
}

/// Access tokens from one source, cached until shortly before they expire.
pub struct EntraCredential {
    source: TokenSource,
    http: reqwest::Client,
    cached: Mutex<Option<(String, Instant)>>,
}

impl EntraCredential {
    pub fn new(source: TokenSource, http: reqwest::Client) -> Self {
        EntraCredential {
            source,
            http,
            cached: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Drop the cached token (the service refused it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    pub async fn token(&self) -> Result<String, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let op = "get an Entra ID token";
        let token_url = |authority: &str, tenant: &str| {
            format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            )
        };
        let req = match &self.source {
            TokenSource::ClientSecret {
                authority,
                tenant,
                client_id,
                secret,
            } => self.http.post(token_url(authority, tenant)).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", STORAGE_SCOPE),
            ]),
            TokenSource::Workload {
                authority,
                tenant,
                client_id,
                token_file,
            } => {
                // Re-read every time: the platform rotates the file.
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    StoreError::new(op, "", Failure::Other, format!("reading {token_file}: {e}"))
                })?;
                self.http.post(token_url(authority, tenant)).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                    ("scope", STORAGE_SCOPE),
                ])
            }
            TokenSource::ManagedIdentity { client_id } => {
                let endpoint = std::env::var("IDENTITY_ENDPOINT")
                    .ok()
                    .filter(|v| !v.is_empty());
                let header = std::env::var("IDENTITY_HEADER")
                    .ok()
                    .filter(|v| !v.is_empty());
                let mut query: Vec<(&str, &str)> = vec![("resource", STORAGE_RESOURCE)];
                if !client_id.is_empty() {
                    query.push(("client_id", client_id));
                }
                let url = |base: &str, version: &'static str| {
                    let q: Vec<String> = query
                        .iter()
                        .chain([&("api-version", version)])
                        .map(|(k, v)| format!("{k}={}", percent_encode(v, false)))
                        .collect();
                    format!("{base}?{}", q.join("&"))
                };
                match (endpoint, header) {
                    (Some(endpoint), Some(header)) => self
                        .http
                        .get(url(&endpoint, "2019-08-01"))
                        .header("X-IDENTITY-HEADER", header),
                    _ => self
                        .http
                        .get(url(IMDS, "2018-02-01"))
                        .header("Metadata", "true"),
                }
            }
        };
        let resp = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| StoreError::http(op, "", e))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let Some(token) = body["access_token"].as_str() else {
            let why = body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .or(body["message"].as_str())
                .unwrap_or("no access_token in the answer");
            return Err(StoreError::new(
                op,
                "",
                // Refused credentials: every request needs them, so no event is to blame.
                Failure::PermissionDenied,
                format!("{:?}: HTTP {status}: {why}", self.source),
            ));
        };
        // expires_in is a number from Entra and a string from managed identity endpoints.
        let ttl = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3600);
        let ttl = Duration::from_secs(ttl).saturating_sub(EARLY);
        *cached = Some((token.to_string(), Instant::now() + ttl));
        Ok(token.to_string())
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
            .is_some_and(|p| p.contains("AZURE_TENANT_ID"))
        );
    }
}
