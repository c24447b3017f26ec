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

use super::{Sink, SinkError, fill, ok_status, percent_encode, read_start};

fn percent_encode_all(s: &str) -> String {
    percent_encode(s, false)
}
use super::SinkKey;
use crate::filer::{FilerSource, ReadError};
use crate::gcp::{CredentialsError, GoogleAuth};
use crate::pb::Entry;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

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
    /// Object names without the leading `/`: upstream names objects
    /// `util.Join(directory, date, key under the source directory)`, which starts with `/`
    /// only when the directory is absolute, or empty with the key's rest starting with `/`.
    pub slashless: bool,
}

impl std::fmt::Debug for GcsSinkOptions {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSinkOptions")
            .field("bucket", &self.bucket)
            .field("directory", &self.directory)
            .field("endpoint", &self.endpoint)
            .field("slashless", &self.slashless)
            .finish_non_exhaustive()
    }
}

pub struct GcsSink {
    http: reqwest::Client,
    endpoint: String,
    opts: GcsSinkOptions,
    auth: GoogleAuth,
    source: Arc<FilerSource>,
}

impl GcsSink {
    pub fn new(
        opts: GcsSinkOptions,
        http: reqwest::Client,
        source: Arc<FilerSource>,
    ) -> Result<Self, CredentialsError> {
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
        let auth = GoogleAuth::new(
            &opts.credentials,
            endpoint != DEFAULT_ENDPOINT,
            SCOPE,
            http.clone(),
        )?;
        Ok(GcsSink {
            http,
            endpoint,
            opts,
            auth,
            source,
        })
    }

    async fn token(&self) -> Result<Option<String>, SinkError> {
        self.auth
            .token()
            .await
            .map_err(|e| SinkError::remote("authenticate", "", e, true, false))
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

    /// The name prefix of everything under the sink directory. Object names are the sink
    /// keys whole, leading `/` included, as upstream's GCS sink names them.
    fn prefix(&self) -> String {
        self.object_name(&format!("{}/", self.opts.directory.trim_end_matches('/')))
    }

    /// The object name for a sink path (see `GcsSinkOptions::slashless`).
    fn object_name(&self, full: &str) -> String {
        match full.strip_prefix('/') {
            Some(rest) if self.opts.slashless => rest.to_string(),
            _ => full.to_string(),
        }
    }

    /// Names of every object under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        Ok(self
            .list_sized(prefix)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Every object under `prefix`, with its size.
    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, SinkError> {
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
            names.extend(v["items"].as_array().into_iter().flatten().filter_map(|i| {
                let size = i["size"].as_str().and_then(|s| s.parse().ok());
                Some((i["name"].as_str()?.to_string(), size.unwrap_or(0)))
            }));
            match v["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => page = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }
}

#[async_trait]
impl Sink for GcsSink {
    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        let prefix = self.prefix();
        let objects = self.list_sized(&prefix).await?;
        Ok(Some(super::relative_files(&prefix, objects)))
    }

    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        let name = format!("{}{rel}", self.prefix());
        let url = format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            self.endpoint,
            percent_encode_all(&self.opts.bucket),
            percent_encode_all(&name)
        );
        let resp = self.send("download", &name, self.http.get(url)).await?;
        super::digest_download("download", &name, resp).await
    }

    fn describe(&self) -> String {
        format!("GCS bucket {} at {}", self.opts.bucket, self.endpoint)
    }

    async fn probe(&self) -> Result<(), String> {
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
    }

    fn name(&self) -> &str {
        "google_cloud_storage"
    }

    async fn create_entry(
        &self,
        key: &SinkKey,
        entry: &Entry,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        crate::fence::check(&key.full)?;
        if entry.is_directory || key.is_root() {
            return Ok(());
        }
        let name = self.object_name(&key.full);
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
        crate::fence::check(&key.full)?;
        super::refuse_root(key, "delete")?;
        if is_directory {
            let prefix = self.object_name(&format!("{}/", key.full));
            for name in self.list(&prefix).await? {
                self.delete_object(&name).await?;
            }
            return Ok(());
        }
        self.delete_object(&self.object_name(&key.full)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(
            percent_encode_all("/backup/a b/ü.txt"),
            "%2Fbackup%2Fa%20b%2F%C3%BC.txt"
        );
    }
}
