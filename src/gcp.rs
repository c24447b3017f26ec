//! Google Cloud credentials, shared by the GCS sink and the Pub/Sub input: a
//! service-account key (signed locally, RS256) or an authorized-user refresh token, from
//! the configured file or inline JSON, else application default credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, the metadata server). An emulator
//! needs none.

use base64::Engine;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Where access tokens come from.
enum Auth {
    /// An emulator: no token.
    None,
    ServiceAccount {
        email: String,
        key: ring::signature::RsaKeyPair,
        token_uri: String,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    MetadataServer,
}

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(String);

fn parse_credentials(raw: &str) -> Result<Auth, CredentialsError> {
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| CredentialsError(format!("credentials are not JSON: {e}")))?;
    let field = |name: &str| {
        v[name]
            .as_str()
            .map(String::from)
            .ok_or_else(|| CredentialsError(format!("credentials lack {name:?}")))
    };
    let token_uri = v["token_uri"]
        .as_str()
        .unwrap_or("https://oauth2.googleapis.com/token")
        .to_string();
    match v["type"].as_str() {
        Some("service_account") => {
            let pem = field("private_key")?;
            let der = pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>();
            let der = base64::engine::general_purpose::STANDARD
                .decode(der.trim())
                .map_err(|e| CredentialsError(format!("private_key is not PEM: {e}")))?;
            let key = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                CredentialsError(format!("private_key is not an RSA PKCS#8 key: {e}"))
            })?;
            Ok(Auth::ServiceAccount {
                email: field("client_email")?,
                key,
                token_uri,
            })
        }
        Some("authorized_user") => Ok(Auth::AuthorizedUser {
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            refresh_token: field("refresh_token")?,
            token_uri,
        }),
        other => Err(CredentialsError(format!(
            "unsupported credentials type {other:?}"
        ))),
    }
}

/// A signed JWT asking for an access token (RFC 7523), RS256.
fn service_account_assertion(
    scope: &str,
    email: &str,
    key: &ring::signature::RsaKeyPair,
    token_uri: &str,
    now: u64,
) -> Result<String, CredentialsError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"iss": email, "scope": scope, "aud": token_uri, "iat": now, "exp": now + 3600});
    let input = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| CredentialsError("signing the token request failed".into()))?;
    Ok(format!("{input}.{}", b64.encode(sig)))
}

/// Access tokens for one scope.
pub struct GoogleAuth {
    http: reqwest::Client,
    auth: Auth,
    scope: &'static str,
    token: Mutex<Option<(String, Instant)>>,
}

impl GoogleAuth {
    /// `credentials`: a file path, inline JSON, or empty for application default
    /// credentials; `emulator`: no credentials at all (unless given explicitly).
    pub fn new(
        credentials: &str,
        emulator: bool,
        scope: &'static str,
        http: reqwest::Client,
    ) -> Result<Self, CredentialsError> {
        let auth = if !credentials.is_empty() {
            let raw = if credentials.trim_start().starts_with('{') {
                credentials.to_string()
            } else {
                std::fs::read_to_string(credentials)
                    .map_err(|e| CredentialsError(format!("reading {}: {e}", credentials)))?
            };
            parse_credentials(&raw)?
        } else if emulator {
            Auth::None
        } else if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            let raw = std::fs::read_to_string(&path).map_err(|e| {
                CredentialsError(format!(
                    "reading GOOGLE_APPLICATION_CREDENTIALS {}: {e}",
                    path.to_string_lossy()
                ))
            })?;
            parse_credentials(&raw)?
        } else if let Some(raw) = std::env::var_os("HOME")
            .map(|h| {
                std::path::PathBuf::from(h)
                    .join(".config/gcloud/application_default_credentials.json")
            })
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            parse_credentials(&raw)?
        } else {
            Auth::MetadataServer
        };
        Ok(GoogleAuth {
            http,
            auth,
            scope,
            token: Mutex::new(None),
        })
    }

    /// A current access token (`None` for an emulator), cached until a minute before it
    /// expires.
    pub async fn token(&self) -> Result<Option<String>, String> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(Some(t.clone()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let req = match &self.auth {
            Auth::None => return Ok(None),
            Auth::ServiceAccount { email, key, token_uri } => {
                let assertion = service_account_assertion(self.scope, email, key, token_uri, now)
                    .map_err(|e| e.to_string())?;
                self.http.post(token_uri).form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
            }
            Auth::AuthorizedUser { client_id, client_secret, refresh_token, token_uri } => {
                self.http.post(token_uri).form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                    ("refresh_token", refresh_token.as_str()),
                ])
            }
            Auth::MetadataServer => self
                .http
                .get("http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token")
                .header("Metadata-Flavor", "Google"),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| format!("getting an access token: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("getting an access token: {e}"))?;
        let Some(token) = body["access_token"].as_str() else {
            return Err(format!("HTTP {status}: no access_token in the answer"));
        };
        let ttl = body["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60);
        *cached = Some((token.to_string(), Instant::now() + Duration::from_secs(ttl)));
        Ok(Some(token.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parsed() {
        let user = r#"{"type":"authorized_user","client_id":"id","client_secret":"s","refresh_token":"r"}"#;
        assert!(matches!(
            parse_credentials(user).unwrap(),
            Auth::AuthorizedUser { .. }
        ));
        assert!(parse_credentials(r#"{"type":"external_account"}"#).is_err());
        assert!(parse_credentials("not json").is_err());
    }

    #[test]
    fn service_account_assertion_verifies_with_the_public_key() {
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
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let file = serde_json::json!({
            "type": "service_account",
            "client_email": "svc@example.iam.gserviceaccount.com",
            "private_key": pem,
        });
        let Auth::ServiceAccount {
            key,
            email,
            token_uri,
        } = parse_credentials(&file.to_string()).unwrap()
        else {
            panic!("not parsed as a service account");
        };
        assert_eq!(email, "svc@example.iam.gserviceaccount.com");
        assert_eq!(token_uri, "https://oauth2.googleapis.com/token");
        let jwt = service_account_assertion(
            "https://www.googleapis.com/auth/devstorage.read_write",
            "svc@example.iam.gserviceaccount.com",
            &key,
            "https://oauth2.googleapis.com/token",
            100,
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "svc@example.iam.gserviceaccount.com");
        assert_eq!(claims["exp"], 3700);
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            ring::signature::KeyPair::public_key(&key).as_ref().to_vec(),
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }
}
