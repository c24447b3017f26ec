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

use super::{Failure, ObjectStore, Part, StoreError, Stored, Upload};
use crate::gcp::{CredentialsError, GoogleAuth};
use crate::pb::Entry;
use crate::sink::percent_encode;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// Resumable upload chunks: a multiple of 256 KiB, as the API requires.
const CHUNK: u64 = 8 * 1024 * 1024;
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// `[sink.google_cloud_storage]` settings.
#[derive(Clone, Default)]
pub(crate) struct GcsSinkOptions {
    /// A path to a credentials JSON file, the JSON itself, or empty for ADC.
    pub credentials: String,
    pub bucket: String,
    /// Normalised absolute directory.
    pub directory: String,
    pub incremental: bool,
    /// API endpoint; empty means Google's (or the emulator's).
    pub endpoint: String,
    /// `STORAGE_EMULATOR_HOST`, as Google's clients read it.
    pub emulator_host: Option<String>,
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

pub(crate) struct GcsStore {
    http: reqwest::Client,
    endpoint: String,
    opts: GcsSinkOptions,
    auth: GoogleAuth,
}

/// Bucket and object names travel percent-encoded, `/` included.
fn encoded(s: &str) -> String {
    percent_encode(s, false)
}

impl GcsStore {
    pub(crate) fn new(
        opts: GcsSinkOptions,
        http: reqwest::Client,
    ) -> Result<Self, CredentialsError> {
        let emulator = opts.emulator_host.clone();
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
        let auth = GoogleAuth::new(&opts.credentials, endpoint != DEFAULT_ENDPOINT, SCOPE)?;
        Ok(GcsStore {
            http,
            endpoint,
            opts,
            auth,
        })
    }

    /// Authorize and send a request.
    async fn send(
        &self,
        op: &'static str,
        name: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        let token = self
            .auth
            .token()
            .await
            .map_err(|e| StoreError::new("authenticate", name, Failure::Other, e))?;
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        req.send().await.map_err(|e| StoreError::http(op, name, e))
    }

    fn bucket_url(&self) -> String {
        format!(
            "{}/storage/v1/b/{}",
            self.endpoint,
            encoded(&self.opts.bucket)
        )
    }

    fn object_url(&self, name: &str) -> String {
        format!("{}/o/{}", self.bucket_url(), encoded(name))
    }

    fn upload_url(&self, kind: &str) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={kind}",
            self.endpoint,
            encoded(&self.opts.bucket)
        )
    }

    /// The object resource: name, source mtime and content type.
    fn resource(entry: &Entry, name: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": name,
            "metadata": {"mtime": super::mtime(entry).to_string()},
        });
        if let Some(mime) = super::mime(entry) {
            v["contentType"] = serde_json::Value::String(mime);
        }
        v
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    fn name(&self) -> &'static str {
        "google_cloud_storage"
    }

    fn describe(&self) -> String {
        format!("GCS bucket {} at {}", self.opts.bucket, self.endpoint)
    }

    /// The sink key whole, leading `/` included, as upstream's GCS sink names objects
    /// (see `GcsSinkOptions::slashless`).
    fn object_name(&self, full: &str) -> String {
        match full.strip_prefix('/') {
            Some(rest) if self.opts.slashless => rest.to_string(),
            _ => full.to_string(),
        }
    }

    fn whole_limit(&self, _entry: &Entry, _size: u64) -> u64 {
        CHUNK
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let bucket = &self.opts.bucket;
        let resp = self
            .send("get bucket", bucket, self.http.get(self.bucket_url()))
            .await?;
        super::ok("get bucket", bucket, resp)
            .await
            .map_err(|mut e| {
                e.detail.push_str(" (missing bucket or wrong credentials?)");
                e
            })?;
        Ok(())
    }

    async fn head(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let resp = self
            .send("get object", name, self.http.get(self.object_url(name)))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v: serde_json::Value = super::ok("get object", name, resp)
            .await?
            .json()
            .await
            .map_err(|e| StoreError::http("get object", name, e))?;
        Ok(Some(Stored {
            size: v["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
            mtime: v["metadata"]["mtime"].as_str().and_then(|m| m.parse().ok()),
        }))
    }

    /// One request carrying metadata and content (`uploadType=multipart`).
    async fn put(&self, name: &str, entry: &Entry, data: Bytes) -> Result<(), StoreError> {
        let boundary = "replicate-boundary-7f3a9c";
        let mut body = Vec::with_capacity(data.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(Self::resource(entry, name).to_string().as_bytes());
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: {}\r\n\r\n",
                super::mime(entry)
                    .as_deref()
                    .unwrap_or("application/octet-stream")
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let req = self
            .http
            .post(self.upload_url("multipart"))
            .header(
                "Content-Type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body);
        let resp = self.send("upload", name, req).await?;
        super::ok("upload", name, resp).await?;
        Ok(())
    }

    /// A resumable upload session, fed in order one chunk at a time.
    async fn start_upload(
        &self,
        name: &str,
        entry: &Entry,
        _size: u64,
    ) -> Result<Upload, StoreError> {
        let req = self
            .http
            .post(self.upload_url("resumable"))
            .json(&Self::resource(entry, name));
        let resp = self.send("start upload", name, req).await?;
        let resp = super::ok("start upload", name, resp).await?;
        let Some(session) = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(String::from)
        else {
            return Err(StoreError::new(
                "start upload",
                name,
                Failure::Other,
                format!("HTTP {}: no session", resp.status()),
            ));
        };
        Ok(Upload {
            id: session,
            part: CHUNK,
            in_flight: 1,
        })
    }

    async fn put_part(
        &self,
        name: &str,
        upload: &Upload,
        part: Part,
    ) -> Result<String, StoreError> {
        let (start, len) = (part.offset, part.body.len() as u64);
        let end = start + len.max(1) - 1;
        let range = match (len, part.last) {
            (0, _) => format!("bytes */{start}"),
            (_, true) => format!("bytes {start}-{end}/{}", start + len),
            (_, false) => format!("bytes {start}-{end}/*"),
        };
        let req = self
            .http
            .put(&upload.id)
            .header("Content-Range", range)
            .body(part.body);
        let resp = self.send("upload", name, req).await?;
        match (resp.status().as_u16(), part.last) {
            (200 | 201, true) | (308, false) => Ok(String::new()),
            _ => Err(StoreError::answer("upload", name, resp).await),
        }
    }

    /// The last chunk made the object.
    async fn complete_upload(
        &self,
        _name: &str,
        _entry: &Entry,
        _upload: &Upload,
        _tags: Vec<String>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Cancel the session, so the existing object is not replaced.
    async fn abort_upload(&self, name: &str, upload: &Upload) -> Result<(), StoreError> {
        self.send("cancel upload", name, self.http.delete(&upload.id))
            .await
            .map(|_| ())
    }

    /// `objects.rewrite`, repeated with its token until done (large objects take
    /// several calls); metadata goes along.
    async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/rewriteTo/b/{}/o/{}",
                self.object_url(from),
                encoded(&self.opts.bucket),
                encoded(to)
            );
            if let Some(t) = &token {
                url.push_str(&format!("?rewriteToken={}", encoded(t)));
            }
            let req = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body("{}");
            let resp = self.send("copy", from, req).await?;
            let v: serde_json::Value = super::ok("copy", from, resp)
                .await?
                .json()
                .await
                .map_err(|e| StoreError::http("copy", from, e))?;
            if v["done"].as_bool().unwrap_or(true) {
                return Ok(());
            }
            token = v["rewriteToken"].as_str().map(String::from);
            if token.is_none() {
                return Err(StoreError::new(
                    "copy",
                    from,
                    Failure::Other,
                    "rewrite not done and no rewriteToken to go on with",
                ));
            }
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let resp = self
            .send("delete", name, self.http.delete(self.object_url(name)))
            .await?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(StoreError::answer("delete", name, resp).await),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut names = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = format!("{}/o?prefix={}", self.bucket_url(), encoded(prefix));
            if let Some(p) = &page {
                url.push_str(&format!("&pageToken={}", encoded(p)));
            }
            let resp = self.send("list", prefix, self.http.get(url)).await?;
            let v: serde_json::Value = super::ok("list", prefix, resp)
                .await?
                .json()
                .await
                .map_err(|e| StoreError::http("list", prefix, e))?;
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

    async fn get(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let url = format!("{}?alt=media", self.object_url(name));
        let resp = self.send("download", name, self.http.get(url)).await?;
        super::download("download", name, resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(
            encoded("/backup/a b/ü.txt"),
            "%2Fbackup%2Fa%20b%2F%C3%BC.txt"
        );
    }
}
