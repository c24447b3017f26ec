//! Google Cloud credentials, shared by the GCS sink and the Pub/Sub input, from Google's
//! official `google-cloud-auth` crate: the configured file or inline JSON (a service
//! account, an authorized user, workload identity federation's external account, an
//! impersonated service account), else application default credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, the metadata server), as upstream's
//! Go client finds them. An emulator needs none. Tokens are cached and refreshed before
//! they expire by the crate.

use google_cloud_auth::credentials::{
    AccessTokenCredentials, Builder, external_account, external_account_authorized_user,
    impersonated, service_account, user_account,
};

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CredentialsError(String);

/// Access tokens for one scope.
pub(crate) struct GoogleAuth {
    /// A path, inline JSON, or empty for application default credentials.
    source: String,
    scope: &'static str,
    /// An emulator and no credentials given: no token at all.
    anonymous: bool,
    /// Loaded at start and again after a failure.
    credentials: tokio::sync::Mutex<Option<AccessTokenCredentials>>,
}

/// Credentials from a key file's JSON, by its `type`.
fn from_json(raw: &str, scope: &'static str) -> Result<AccessTokenCredentials, CredentialsError> {
    let json: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| CredentialsError(format!("credentials are not JSON: {e}")))?;
    let kind = json["type"].as_str().unwrap_or_default().to_string();
    let built = match kind.as_str() {
        "service_account" => service_account::Builder::new(json)
            .with_access_specifier(service_account::AccessSpecifier::from_scopes([scope]))
            .build_access_token_credentials(),
        "authorized_user" => user_account::Builder::new(json)
            .with_scopes([scope])
            .build_access_token_credentials(),
        "external_account" => external_account::Builder::new(json)
            .with_scopes([scope])
            .build_access_token_credentials(),
        // Its scopes are the ones granted with the refresh token.
        "external_account_authorized_user" => {
            external_account_authorized_user::Builder::new(json).build_access_token_credentials()
        }
        "impersonated_service_account" => impersonated::Builder::new(json)
            .with_scopes([scope])
            .build_access_token_credentials(),
        other => {
            return Err(CredentialsError(format!(
                "unsupported credentials type {other:?}"
            )));
        }
    };
    built.map_err(|e| CredentialsError(format!("{kind} credentials: {e}")))
}

impl GoogleAuth {
    /// `credentials`: a file path, inline JSON, or empty for application default
    /// credentials; `emulator`: no credentials at all (unless given explicitly).
    /// Must be called within the runtime (the crate refreshes tokens in a task).
    pub(crate) fn new(
        credentials: &str,
        emulator: bool,
        scope: &'static str,
    ) -> Result<Self, CredentialsError> {
        let anonymous = credentials.is_empty() && emulator;
        let built = if anonymous {
            None
        } else {
            Some(Self::build(credentials, scope)?)
        };
        Ok(GoogleAuth {
            source: credentials.to_string(),
            scope,
            anonymous,
            credentials: tokio::sync::Mutex::new(built),
        })
    }

    fn build(
        source: &str,
        scope: &'static str,
    ) -> Result<AccessTokenCredentials, CredentialsError> {
        if source.is_empty() {
            return Builder::default()
                .with_scopes([scope])
                .build_access_token_credentials()
                .map_err(|e| CredentialsError(format!("application default credentials: {e}")));
        }
        let raw = if source.trim_start().starts_with('{') {
            source.to_string()
        } else {
            std::fs::read_to_string(source)
                .map_err(|e| CredentialsError(format!("reading {source}: {e}")))?
        };
        from_json(&raw, scope)
    }

    /// A current access token (`None` for an emulator). After a failure the credentials
    /// are loaded again for the next call (the crate keeps a failed refresh for good), so
    /// a key file fixed in place is picked up without a restart.
    pub(crate) async fn token(&self) -> Result<Option<String>, CredentialsError> {
        if self.anonymous {
            return Ok(None);
        }
        let credentials = {
            let mut slot = self.credentials.lock().await;
            if slot.is_none() {
                *slot = Some(Self::build(&self.source, self.scope)?);
            }
            slot.clone().expect("set above")
        };
        match credentials.access_token().await {
            Ok(t) => Ok(Some(t.token)),
            Err(e) => {
                *self.credentials.lock().await = None;
                Err(CredentialsError(format!(
                    "getting an access token: {}",
                    chain(&e)
                )))
            }
        }
    }
}

/// An error with every cause under it (the crate's own text hides the server's answer).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

    #[tokio::test]
    async fn unknown_or_broken_credentials_are_refused_at_start() {
        crate::http::install_tls_provider();
        let refused = |raw: &str| GoogleAuth::new(raw, false, SCOPE).err().map(|e| e.0);
        assert!(
            refused("not json").is_some_and(|e| e.contains("reading not json")),
            "anything but JSON is a path, which does not exist"
        );
        assert!(refused("{ broken").is_some_and(|e| e.contains("not JSON")));
        assert!(
            refused("{\"type\":\"something_else\"}")
                .is_some_and(|e| e.contains("unsupported credentials type"))
        );
        assert!(
            refused("{\"type\":\"service_account\"}").is_some(),
            "a service account without a key"
        );
    }

    /// A service account signs its own token (a JWT for the scope, RS256) with the key in
    /// the file: the token verifies with the key's public half and names the account.
    #[tokio::test]
    async fn service_account_tokens_are_signed_with_the_file_key() {
        crate::http::install_tls_provider();
        // A throwaway RSA key made for this run (ring cannot generate RSA keys), in the
        // PKCS#8 PEM form of a real service-account key file.
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("the openssl command (Debian package openssl)");
        assert!(out.status.success());
        let pem = String::from_utf8(out.stdout).unwrap();
        let file = serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "k1",
            "client_email": "svc@example.iam.gserviceaccount.com",
            "private_key": pem,
        });
        let auth = GoogleAuth::new(&file.to_string(), false, SCOPE).unwrap();
        let token = auth.token().await.unwrap().expect("a token");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "svc@example.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        // The public key, from the private one (openssl again), verifies the signature.
        let der = base64::engine::general_purpose::STANDARD
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            ring::signature::KeyPair::public_key(&key).as_ref().to_vec(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap(),
            )
            .expect("signed with the file's key");
    }
}
