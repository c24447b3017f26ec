//! `[sink.google_cloud_storage]`: replicate into a Google Cloud Storage bucket through the
//! JSON API.
//!
//! Object names keep upstream's layout: the sink key as is, leading `/` included, so
//! existing backups stay valid. Differences from upstream on purpose: the content type and
//! the source mtime (`metadata.mtime`) are stored; a replay of a version the bucket already
//! holds is skipped; deletes are idempotent (upstream fails on a missing object, so every
//! directory delete failed) and a directory delete removes everything under it.
//!
//! Credentials: a service-account or authorized-user JSON file (or the JSON inline), else
//! application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, the
//! metadata server). `STORAGE_EMULATOR_HOST` or our `endpoint` key point it at an emulator,
//! which needs no credentials.

use super::{Sink, SinkError, fill, ok_status, percent_encode, read_start, wait_until_healthy};

fn percent_encode_all(s: &str) -> String {
    percent_encode(s, false)
}
use crate::filer::{FilerSource, ReadError};
use crate::pb::Entry;
use crate::replicate::SinkKey;
use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Resumable upload chunks: a multiple of 256 KiB, as the API requires.
const CHUNK: usize = 8 * 1024 * 1024;
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// `[sink.google_cloud_storage]` settings.
#[derive(Clone, Default)]
pub struct GcsSinkOptions {
    /// A path to a credentials JSON file, the JSON itself, or empty for ADC.
    pub credentials: String,
    pub bucket: String,
    /// Normalised absolute directory.
    pub directory: String,
    pub incremental: bool,
    /// API endpoint; empty means Google's (or `STORAGE_EMULATOR_HOST`).
    pub endpoint: String,
}

impl std::fmt::Debug for GcsSinkOptions {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSinkOptions")
            .field("bucket", &self.bucket)
            .field("directory", &self.directory)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

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

pub struct GcsSink {
    http: reqwest::Client,
    endpoint: String,
    opts: GcsSinkOptions,
    auth: Auth,
    token: Mutex<Option<(String, Instant)>>,
    source: Arc<FilerSource>,
}

/// Why the sink could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GcsSetupError(String);

fn parse_credentials(raw: &str) -> Result<Auth, GcsSetupError> {
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| GcsSetupError(format!("credentials are not JSON: {e}")))?;
    let field = |name: &str| {
        v[name]
            .as_str()
            .map(String::from)
            .ok_or_else(|| GcsSetupError(format!("credentials lack {name:?}")))
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
                .map_err(|e| GcsSetupError(format!("private_key is not PEM: {e}")))?;
            let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| GcsSetupError(format!("private_key is not an RSA PKCS#8 key: {e}")))?;
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
        other => Err(GcsSetupError(format!(
            "unsupported credentials type {other:?}"
        ))),
    }
}

/// A signed JWT asking for an access token (RFC 7523), RS256.
fn service_account_assertion(
    email: &str,
    key: &ring::signature::RsaKeyPair,
    token_uri: &str,
    now: u64,
) -> Result<String, GcsSetupError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"iss": email, "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600});
    let input = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| GcsSetupError("signing the token request failed".into()))?;
    Ok(format!("{input}.{}", b64.encode(sig)))
}

impl GcsSink {
    pub fn new(
        opts: GcsSinkOptions,
        http: reqwest::Client,
        source: Arc<FilerSource>,
    ) -> Result<Self, GcsSetupError> {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST")
            .ok()
            .filter(|h| !h.is_empty());
        let endpoint = if !opts.endpoint.is_empty() {
            opts.endpoint.trim_end_matches('/').to_string()
        } else if let Some(host) = &emulator {
            if host.starts_with("http") {
                host.trim_end_matches('/').to_string()
            } else {
                format!("http://{host}")
            }
        } else {
            DEFAULT_ENDPOINT.to_string()
        };
        let on_google = endpoint == DEFAULT_ENDPOINT;
        let auth = if !opts.credentials.is_empty() {
            let raw = if opts.credentials.trim_start().starts_with('{') {
                opts.credentials.clone()
            } else {
                std::fs::read_to_string(&opts.credentials)
                    .map_err(|e| GcsSetupError(format!("reading {}: {e}", opts.credentials)))?
            };
            parse_credentials(&raw)?
        } else if !on_google {
            Auth::None
        } else if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            let raw = std::fs::read_to_string(&path).map_err(|e| {
                GcsSetupError(format!(
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
        Ok(GcsSink {
            http,
            endpoint,
            opts,
            auth,
            token: Mutex::new(None),
            source,
        })
    }

    async fn token(&self) -> Result<Option<String>, SinkError> {
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
                let assertion = service_account_assertion(email, key, token_uri, now)
                    .map_err(|e| SinkError::remote("authenticate", "", e, false, false))?;
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
            .map_err(|e| SinkError::http("authenticate", "", e))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| SinkError::http("authenticate", "", e))?;
        let Some(token) = body["access_token"].as_str() else {
            return Err(SinkError::remote(
                "authenticate",
                "",
                format!("HTTP {status}: no access_token in the answer"),
                true,
                false,
            ));
        };
        let ttl = body["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60);
        *cached = Some((token.to_string(), Instant::now() + Duration::from_secs(ttl)));
        Ok(Some(token.to_string()))
    }

    async fn authed(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, SinkError> {
        Ok(match self.token().await? {
            Some(t) => req.bearer_auth(t),
            None => req,
        })
    }

    /// Authorize and send a request; a transport failure becomes a sink error.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SinkError> {
        self.authed(req)
            .await?
            .send()
            .await
            .map_err(|e| SinkError::http(op, key, e))
    }

    /// Check the bucket exists and the credentials work; retried with backoff until they
    /// do, reporting clearly why not. `false` if `stop` fires first.
    pub async fn health_check(&self, stop: &tokio_util::sync::CancellationToken) -> bool {
        let what = format!("GCS bucket {} at {}", self.opts.bucket, self.endpoint);
        wait_until_healthy(&what, stop, || async {
            let url = format!(
                "{}/storage/v1/b/{}",
                self.endpoint,
                percent_encode_all(&self.opts.bucket)
            );
            let req = self
                .authed(self.http.get(&url))
                .await
                .map_err(|e| e.to_string())?;
            match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!(
                    "HTTP {}: {} (missing bucket or wrong credentials?)",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            percent_encode_all(&self.opts.bucket),
            percent_encode_all(name)
        )
    }

    fn resource(entry: &Entry, name: &str) -> serde_json::Value {
        let attrs = entry.attributes.clone().unwrap_or_default();
        let mut v =
            serde_json::json!({"name": name, "metadata": {"mtime": attrs.mtime.to_string()}});
        if !attrs.mime.is_empty() {
            v["contentType"] = serde_json::Value::String(attrs.mime);
        }
        v
    }

    async fn already_current(&self, name: &str, entry: &Entry, size: u64) -> bool {
        let Ok(req) = self.authed(self.http.get(self.object_url(name))).await else {
            return false;
        };
        let Ok(resp) = req.send().await else {
            return false;
        };
        if !resp.status().is_success() {
            return false;
        }
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            return false;
        };
        let mtime = entry.attributes.as_ref().map_or(0, |a| a.mtime);
        mtime != 0
            && v["size"].as_str() == Some(size.to_string().as_str())
            && v["metadata"]["mtime"].as_str() == Some(mtime.to_string().as_str())
    }

    /// One request carrying metadata and content (`uploadType=multipart`).
    async fn upload_whole(&self, name: &str, entry: &Entry, data: Bytes) -> Result<(), SinkError> {
        let boundary = "replicate-boundary-7f3a9c";
        let mime = entry
            .attributes
            .as_ref()
            .map(|a| a.mime.clone())
            .filter(|m| !m.is_empty());
        let mut body = Vec::with_capacity(data.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(Self::resource(entry, name).to_string().as_bytes());
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: {}\r\n\r\n",
                mime.as_deref().unwrap_or("application/octet-stream")
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.endpoint,
            percent_encode_all(&self.opts.bucket)
        );
        let req = self
            .http
            .post(url)
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body);
        let resp = self.send("upload", name, req).await?;
        ok_status("upload", name, resp).await?;
        Ok(())
    }

    /// A resumable upload session, fed 8 MiB at a time; cancelled on failure so the
    /// existing object is not replaced.
    async fn upload_resumable(
        &self,
        name: &str,
        entry: &Entry,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        mut buf: BytesMut,
        size: u64,
    ) -> Result<(), SinkError> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable",
            self.endpoint,
            percent_encode_all(&self.opts.bucket)
        );
        let req = self.http.post(url).json(&Self::resource(entry, name));
        let resp = self.send("start upload", name, req).await?;
        let Some(session) = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(String::from)
        else {
            let status = resp.status();
            return Err(SinkError::remote(
                "start upload",
                name,
                format!("HTTP {status}: no session"),
                true,
                false,
            ));
        };
        let result = self.feed(name, &session, rx, &mut buf, size).await;
        if result.is_err()
            && let Ok(req) = self.authed(self.http.delete(&session)).await
        {
            let _ = req.send().await;
        }
        result
    }

    async fn feed(
        &self,
        name: &str,
        session: &str,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        buf: &mut BytesMut,
        size: u64,
    ) -> Result<(), SinkError> {
        let mut sent = 0u64;
        loop {
            let ended = fill(rx, buf, CHUNK, name).await?;
            let last = ended && buf.len() <= CHUNK;
            let take = buf.len().min(CHUNK);
            let body = buf.split_to(take).freeze();
            if last && sent + take as u64 != size {
                return Err(SinkError::Read {
                    key: name.to_string(),
                    source: ReadError::Aborted,
                });
            }
            let range = match (take, last) {
                (0, true) => format!("bytes */{size}"),
                (_, true) => format!("bytes {sent}-{}/{size}", sent + take as u64 - 1),
                (_, false) => format!("bytes {sent}-{}/*", sent + take as u64 - 1),
            };
            let req = self
                .http
                .put(session)
                .header("Content-Range", range)
                .body(body);
            let resp = self.send("upload", name, req).await?;
            let status = resp.status().as_u16();
            sent += take as u64;
            match (status, last) {
                (200 | 201, true) => return Ok(()),
                (308, false) => {}
                _ => {
                    let text = resp.text().await.unwrap_or_default();
                    return Err(SinkError::remote(
                        "upload",
                        name,
                        format!("HTTP {status}: {text}"),
                        true,
                        false,
                    ));
                }
            }
        }
    }

    async fn delete_object(&self, name: &str) -> Result<(), SinkError> {
        let resp = self
            .send("delete", name, self.http.delete(self.object_url(name)))
            .await?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            s => Err(SinkError::remote(
                "delete",
                name,
                format!("HTTP {s}: {}", resp.text().await.unwrap_or_default()),
                true,
                false,
            )),
        }
    }

    /// Names of every object under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut names = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}",
                self.endpoint,
                percent_encode_all(&self.opts.bucket),
                percent_encode_all(prefix)
            );
            if let Some(p) = &page {
                url.push_str(&format!("&pageToken={}", percent_encode_all(p)));
            }
            let resp = self.send("list", prefix, self.http.get(url)).await?;
            let resp = ok_status("list", prefix, resp).await?;
            let v: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| SinkError::http("list", prefix, e))?;
            names.extend(
                v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["name"].as_str().map(String::from)),
            );
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => page = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }
}

#[async_trait]
impl Sink for GcsSink {
    fn name(&self) -> &str {
        "google_cloud_storage"
    }

    async fn create_entry(
        &self,
        key: &SinkKey,
        entry: &Entry,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        if entry.is_directory || key.is_root() {
            return Ok(());
        }
        let name = key.full.clone();
        let size = crate::filer::content_size(entry);
        if self.already_current(&name, entry, size).await {
            tracing::debug!(object = %name, "bucket already holds this version, skipping");
            return Ok(());
        }
        let mut rx = self.source.open(entry);
        let (buf, whole) = read_start(&mut rx, CHUNK as u64, size, key).await?;
        if whole {
            return self.upload_whole(&name, entry, buf.freeze()).await;
        }
        self.upload_resumable(&name, entry, &mut rx, buf, size)
            .await
    }

    async fn delete_entry(
        &self,
        key: &SinkKey,
        is_directory: bool,
        _delete_chunks: bool,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        super::refuse_root(key, "delete")?;
        if is_directory {
            for name in self.list(&format!("{}/", key.full)).await? {
                self.delete_object(&name).await?;
            }
            return Ok(());
        }
        self.delete_object(&key.full).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_and_credentials_parsed() {
        assert_eq!(
            percent_encode_all("/backup/a b/ü.txt"),
            "%2Fbackup%2Fa%20b%2F%C3%BC.txt"
        );
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
