//! `[sink.backblaze]`: replicate into a Backblaze B2 bucket over the B2 native API (v3).
//!
//! File names keep upstream's layout: the sink key with one leading `/` removed.
//! Differences from upstream on purpose: a failed upload or large-file commit fails the
//! event (upstream ignores `Close()` errors and reports lost uploads as done); files above
//! one part are uploaded as large files with bounded parts in flight; the content type and
//! the source mtime (B2's `src_last_modified_millis`) are stored, and a replay of a version
//! the bucket already holds is skipped; a delete removes every version of the file (upstream
//! removes only the newest, which brings the previous version back), and a directory delete
//! removes everything under the directory.
//!
//! Credentials: `b2_account_id` is the application key id (the account id of a master key
//! works too); empty fields fall back to `B2_APPLICATION_KEY_ID` / `B2_APPLICATION_KEY`.
//! `b2_region` is not needed: authorization returns the account's API URL.

use super::{Failure, ObjectStore, Part, StoreError, Stored, Upload};
use crate::pb::Entry;
use crate::sink::percent_encode;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{Mutex, RwLock};

const DEFAULT_ENDPOINT: &str = "https://api.backblazeb2.com";
const MIB: u64 = 1024 * 1024;
/// Files up to this size are one upload; larger ones are large files of parts at least this.
const PART: u64 = 8 * MIB;
const MAX_PARTS: u64 = 10_000;
const PARTS_IN_FLIGHT: usize = 4;
/// Attempts per upload (each with a fresh upload URL, as B2 asks after a failure).
const UPLOAD_ATTEMPTS: usize = 3;

/// `[sink.backblaze]` settings.
#[derive(Clone, Default)]
pub(crate) struct B2SinkOptions {
    /// Application key id (or the account id for the master key).
    pub key_id: String,
    pub key: String,
    pub bucket: String,
    /// Normalised absolute directory.
    pub directory: String,
    pub incremental: bool,
    /// Where to authorize; empty means Backblaze's.
    pub endpoint: String,
}

impl std::fmt::Debug for B2SinkOptions {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2SinkOptions")
            .field("key_id", &self.key_id)
            .field("bucket", &self.bucket)
            .field("directory", &self.directory)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What authorization gives: a token good for 24 hours and the account's URLs.
struct Session {
    token: String,
    api_url: String,
    download_url: String,
    bucket_id: String,
    min_part: u64,
}

/// An upload URL and its token; each serves one upload at a time.
struct UploadUrl {
    url: String,
    token: String,
}

impl UploadUrl {
    /// From a `b2_get_upload_url` or `b2_get_upload_part_url` answer.
    fn from_answer(v: &Value) -> Self {
        UploadUrl {
            url: v["uploadUrl"].as_str().unwrap_or("").to_string(),
            token: v["authorizationToken"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// An error answer from B2: `{"status": 400, "code": "bad_request", "message": "..."}`.
#[derive(Debug)]
struct B2Error {
    status: u16,
    code: String,
    message: String,
}

impl B2Error {
    async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        B2Error {
            status,
            code: body["code"].as_str().unwrap_or("").to_string(),
            message: body["message"].as_str().unwrap_or("").to_string(),
        }
    }

    /// The token has expired or is unknown: authorize again.
    fn needs_authorization(&self) -> bool {
        self.status == 401 && matches!(self.code.as_str(), "expired_auth_token" | "bad_auth_token")
    }

    /// What the answer means. B2's guidance: 408, 429 and 5xx are retried (uploads with a
    /// new URL); 403 is a cap on the account (storage or transactions), an outage until
    /// someone raises it; `file_not_present` is a file already gone.
    fn into_store(self, op: &'static str, name: &str) -> StoreError {
        let failure = match (self.status, self.code.as_str()) {
            (_, "file_not_present" | "not_found") | (404, _) => Failure::NotFound,
            (403, _) => Failure::Unavailable,
            (401, _) => Failure::PermissionDenied,
            (429, _) => Failure::Throttled,
            (408, _) => Failure::Other,
            (s, _) if s >= 500 => Failure::Other,
            _ => Failure::Invalid,
        };
        let detail = format!("HTTP {} {}: {}", self.status, self.code, self.message);
        StoreError::new(op, name, failure, detail)
    }
}

pub(crate) struct B2Store {
    http: reqwest::Client,
    endpoint: String,
    opts: B2SinkOptions,
    session: RwLock<Option<Arc<Session>>>,
    upload_urls: Mutex<Vec<UploadUrl>>,
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        data,
    ))
}

/// B2 file names and info values travel percent-encoded, with `/` kept.
fn encode_name(name: &str) -> String {
    percent_encode(name, true)
}

impl B2Store {
    pub(crate) fn new(opts: B2SinkOptions, http: reqwest::Client) -> Self {
        let endpoint = if opts.endpoint.is_empty() {
            DEFAULT_ENDPOINT.to_string()
        } else {
            opts.endpoint.trim_end_matches('/').to_string()
        };
        B2Store {
            http,
            endpoint,
            opts,
            session: RwLock::new(None),
            upload_urls: Mutex::new(Vec::new()),
        }
    }

    /// `b2_authorize_account`, then the bucket's id (from the key's restriction or
    /// `b2_list_buckets`).
    async fn authorize(&self) -> Result<Session, StoreError> {
        let op = "authorize";
        let bucket = self.opts.bucket.as_str();
        let r = self
            .http
            .get(format!("{}/b2api/v3/b2_authorize_account", self.endpoint))
            .basic_auth(&self.opts.key_id, Some(&self.opts.key))
            .send()
            .await
            .map_err(|e| StoreError::http(op, bucket, e))?;
        if !r.status().is_success() {
            let e = B2Error::read(r).await;
            let hint = if e.status == 401 {
                " (wrong b2_account_id or b2_master_application_key?)"
            } else {
                ""
            };
            let mut e = e.into_store(op, bucket);
            e.detail.push_str(hint);
            return Err(e);
        }
        let v: Value = r
            .json()
            .await
            .map_err(|e| StoreError::http(op, bucket, e))?;
        let storage = &v["apiInfo"]["storageApi"];
        let mut session = Session {
            token: v["authorizationToken"].as_str().unwrap_or("").to_string(),
            api_url: storage["apiUrl"].as_str().unwrap_or("").to_string(),
            download_url: storage["downloadUrl"].as_str().unwrap_or("").to_string(),
            bucket_id: String::new(),
            min_part: storage["absoluteMinimumPartSize"]
                .as_u64()
                .unwrap_or(5_000_000),
        };
        let allowed = storage["allowed"]["buckets"].as_array();
        if let Some(b) = allowed
            .into_iter()
            .flatten()
            .find(|b| b["name"].as_str() == Some(bucket))
        {
            session.bucket_id = b["id"].as_str().unwrap_or("").to_string();
            return Ok(session);
        }
        let body = json!({"accountId": v["accountId"], "bucketName": bucket});
        let r = self
            .http
            .post(format!("{}/b2api/v3/b2_list_buckets", session.api_url))
            .header("authorization", &session.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| StoreError::http("list buckets", bucket, e))?;
        if !r.status().is_success() {
            return Err(B2Error::read(r).await.into_store("list buckets", bucket));
        }
        let v: Value = r
            .json()
            .await
            .map_err(|e| StoreError::http("list buckets", bucket, e))?;
        session.bucket_id = v["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["bucketName"].as_str() == Some(bucket))
            .and_then(|b| b["bucketId"].as_str())
            .unwrap_or("")
            .to_string();
        if session.bucket_id.is_empty() {
            return Err(StoreError::new(
                "find bucket",
                bucket,
                Failure::NotFound,
                "no such bucket, or the key may not use it",
            ));
        }
        Ok(session)
    }

    async fn session(&self) -> Result<Arc<Session>, StoreError> {
        if let Some(s) = self.session.read().await.as_ref() {
            return Ok(s.clone());
        }
        let mut slot = self.session.write().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(self.authorize().await?);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Forget `stale` (and the upload URLs it handed out) so the next call authorizes.
    async fn expire(&self, stale: &Arc<Session>) {
        let mut slot = self.session.write().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *slot = None;
            self.upload_urls.lock().await.clear();
        }
    }

    /// One API call; an expired token is renewed and the call made once more. A `bucketId`
    /// field in `body` gets the session's bucket id.
    async fn call(
        &self,
        op: &'static str,
        key: &str,
        mut body: Value,
    ) -> Result<Value, StoreError> {
        for attempt in 0..2 {
            let s = self.session().await?;
            if let Some(obj) = body.as_object_mut()
                && obj.contains_key("bucketId")
            {
                obj.insert("bucketId".into(), s.bucket_id.clone().into());
            }
            let r = self
                .http
                .post(format!("{}/b2api/v3/{op}", s.api_url))
                .header("authorization", &s.token)
                .json(&body)
                .send()
                .await
                .map_err(|e| StoreError::http(op, key, e))?;
            if r.status().is_success() {
                return r.json().await.map_err(|e| StoreError::http(op, key, e));
            }
            let e = B2Error::read(r).await;
            if e.needs_authorization() && attempt == 0 {
                self.expire(&s).await;
                continue;
            }
            return Err(e.into_store(op, key));
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn content_type(entry: &Entry) -> String {
        super::mime(entry).unwrap_or_else(|| "b2/x-auto".to_string())
    }

    fn mtime_millis(entry: &Entry) -> String {
        (super::mtime(entry) * 1000).to_string()
    }

    async fn upload_url(&self) -> Result<UploadUrl, StoreError> {
        if let Some(u) = self.upload_urls.lock().await.pop() {
            return Ok(u);
        }
        let v = self
            .call(
                "b2_get_upload_url",
                &self.opts.bucket,
                json!({"bucketId": ""}),
            )
            .await?;
        Ok(UploadUrl::from_answer(&v))
    }

    /// POST `body` to an upload URL, retrying with a fresh URL after a retryable failure.
    /// `target` gets the URL and returns the request's own headers. A URL that worked goes
    /// back to the pool when `pool` is true (part URLs belong to one large file).
    async fn post_upload<F, Fut>(
        &self,
        op: &'static str,
        name: &str,
        body: Bytes,
        mut target: F,
    ) -> Result<Value, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
                Output = Result<(UploadUrl, reqwest::header::HeaderMap, bool), StoreError>,
            >,
    {
        let sha1 = sha1_hex(&body);
        let mut last = None;
        for _ in 0..UPLOAD_ATTEMPTS {
            let (url, headers, pool) = target().await?;
            let sent = self
                .http
                .post(&url.url)
                .header("authorization", &url.token)
                .header("content-length", body.len())
                .header("x-bz-content-sha1", &sha1)
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            let err = match sent {
                Ok(r) if r.status().is_success() => {
                    let v = r.json().await.map_err(|e| StoreError::http(op, name, e))?;
                    if pool {
                        self.upload_urls.lock().await.push(url);
                    }
                    return Ok(v);
                }
                Ok(r) => {
                    let e = B2Error::read(r).await;
                    if e.needs_authorization()
                        && let Some(s) = self.session.read().await.clone()
                    {
                        self.expire(&s).await;
                    }
                    e.into_store(op, name)
                }
                Err(e) => StoreError::http(op, name, e),
            };
            if matches!(err.failure, Failure::Invalid | Failure::NotFound) {
                return Err(err);
            }
            tracing::debug!(file = %name, error = %err, "upload failed, retrying with a new upload URL");
            last = Some(err);
        }
        Err(last.expect("at least one attempt"))
    }

    /// Every version of every file whose name is `name` (`exact`) or starts with it.
    async fn versions(&self, name: &str, exact: bool) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let (mut start_name, mut start_id) = (Value::from(name), Value::Null);
        loop {
            let body = json!({
                "bucketId": "", "prefix": name, "maxFileCount": 1000,
                "startFileName": start_name, "startFileId": start_id,
            });
            let v = self.call("b2_list_file_versions", name, body).await?;
            for f in v["files"].as_array().into_iter().flatten() {
                let file_name = f["fileName"].as_str().unwrap_or("");
                if !exact || file_name == name {
                    let id = f["fileId"].as_str().unwrap_or("").to_string();
                    out.push((file_name.to_string(), id));
                }
            }
            start_name = v["nextFileName"].clone();
            start_id = v["nextFileId"].clone();
            if start_name.is_null() || (exact && start_name.as_str() != Some(name)) {
                return Ok(out);
            }
        }
    }

    async fn delete_versions(&self, versions: Vec<(String, String)>) -> Result<(), StoreError> {
        for (file_name, id) in versions {
            let body = json!({"fileName": file_name, "fileId": id});
            match self.call("b2_delete_file_version", &file_name, body).await {
                Ok(_) => {}
                // Already gone: a replayed delete.
                Err(e) if e.failure == Failure::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for B2Store {
    fn name(&self) -> &'static str {
        "backblaze"
    }

    fn describe(&self) -> String {
        format!("B2 bucket {} at {}", self.opts.bucket, self.endpoint)
    }

    /// The sink key with one leading `/` removed, as upstream.
    fn object_name(&self, full: &str) -> String {
        super::without_one_slash(full)
    }

    fn whole_limit(&self, _entry: &Entry, _size: u64) -> u64 {
        PART
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let s = self.authorize().await?;
        *self.session.write().await = Some(Arc::new(s));
        Ok(())
    }

    /// The newest version of `name`, if it is an upload.
    async fn head(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let body =
            json!({"bucketId": "", "startFileName": name, "prefix": name, "maxFileCount": 1});
        let v = self.call("b2_list_file_names", name, body).await?;
        let f = &v["files"][0];
        if f["fileName"].as_str() != Some(name) || f["action"].as_str() != Some("upload") {
            return Ok(None);
        }
        let millis = f["fileInfo"]["src_last_modified_millis"]
            .as_str()
            .and_then(|m| m.parse::<i64>().ok());
        Ok(Some(Stored {
            size: f["contentLength"].as_u64().unwrap_or(0),
            mtime: millis.filter(|m| m % 1000 == 0).map(|m| m / 1000),
        }))
    }

    async fn put(&self, name: &str, entry: &Entry, body: Bytes) -> Result<(), StoreError> {
        let mut headers = reqwest::header::HeaderMap::new();
        let h = |v: String| v.parse().expect("percent-encoded or ASCII");
        headers.insert("x-bz-file-name", h(encode_name(name)));
        headers.insert("content-type", h(Self::content_type(entry)));
        headers.insert(
            "x-bz-info-src_last_modified_millis",
            h(Self::mtime_millis(entry)),
        );
        self.post_upload("upload file", name, body, || async {
            Ok((self.upload_url().await?, headers.clone(), true))
        })
        .await?;
        Ok(())
    }

    /// A large file; cancelled again when anything fails, so no unfinished file is left
    /// to bill.
    async fn start_upload(
        &self,
        name: &str,
        entry: &Entry,
        size: u64,
    ) -> Result<Upload, StoreError> {
        let min_part = self.session().await?.min_part;
        let body = json!({
            "bucketId": "",
            "fileName": name,
            "contentType": Self::content_type(entry),
            "fileInfo": {"src_last_modified_millis": Self::mtime_millis(entry)},
        });
        let started = self.call("b2_start_large_file", name, body).await?;
        Ok(Upload {
            id: started["fileId"].as_str().unwrap_or("").to_string(),
            part: PART
                .max(min_part)
                .max(size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB),
            in_flight: PARTS_IN_FLIGHT,
        })
    }

    /// The part's SHA-1 is its tag.
    async fn put_part(
        &self,
        name: &str,
        upload: &Upload,
        part: Part,
    ) -> Result<String, StoreError> {
        let sha1 = sha1_hex(&part.body);
        let (file_id, number) = (upload.id.as_str(), part.number);
        self.post_upload("upload part", name, part.body, || async move {
            let v = self
                .call("b2_get_upload_part_url", name, json!({"fileId": file_id}))
                .await?;
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("x-bz-part-number", number.into());
            Ok((UploadUrl::from_answer(&v), headers, false))
        })
        .await?;
        Ok(sha1)
    }

    async fn complete_upload(
        &self,
        name: &str,
        _entry: &Entry,
        upload: &Upload,
        tags: Vec<String>,
    ) -> Result<(), StoreError> {
        let body = json!({"fileId": upload.id, "partSha1Array": tags});
        self.call("b2_finish_large_file", name, body).await?;
        Ok(())
    }

    async fn abort_upload(&self, name: &str, upload: &Upload) -> Result<(), StoreError> {
        self.call("b2_cancel_large_file", name, json!({"fileId": upload.id}))
            .await?;
        Ok(())
    }

    /// Every version, so no older one comes back.
    /// `b2_copy_file` of the newest version, its file info along (B2 copies up to 5 GB
    /// in one call; a larger file fails here, and the event with it).
    async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let body = json!({
            "bucketId": "", "prefix": from, "maxFileCount": 1, "startFileName": from,
        });
        let v = self.call("b2_list_file_names", from, body).await?;
        let id = v["files"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["fileName"].as_str() == Some(from) && f["action"] == "upload")
            .and_then(|f| f["fileId"].as_str())
            .ok_or_else(|| StoreError::new("copy", from, Failure::NotFound, "no such file"))?
            .to_string();
        let body = json!({
            "sourceFileId": id, "fileName": to, "metadataDirective": "COPY",
        });
        self.call("b2_copy_file", from, body).await?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let versions = self.versions(name, true).await?;
        self.delete_versions(versions).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let versions = self.versions(prefix, false).await?;
        self.delete_versions(versions).await
    }

    /// The newest version of each file, if it is an upload (not a hide marker).
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut files = Vec::new();
        let mut start = Value::Null;
        loop {
            let body = json!({
                "bucketId": "", "prefix": prefix, "maxFileCount": 1000, "startFileName": start,
            });
            let v = self.call("b2_list_file_names", prefix, body).await?;
            for f in v["files"].as_array().into_iter().flatten() {
                if f["action"].as_str() == Some("upload")
                    && let Some(name) = f["fileName"].as_str()
                {
                    files.push((name.to_string(), f["contentLength"].as_u64().unwrap_or(0)));
                }
            }
            start = v["nextFileName"].clone();
            if start.is_null() {
                return Ok(files);
            }
        }
    }

    async fn get(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let s = self.session().await?;
        let url = format!(
            "{}/file/{}/{}",
            s.download_url,
            encode_name(&self.opts.bucket),
            encode_name(name)
        );
        let resp = self
            .http
            .get(url)
            .header("authorization", &s.token)
            .send()
            .await
            .map_err(|e| StoreError::http("download", name, e))?;
        super::download("download", name, resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_upstream_layout_and_travel_encoded() {
        let store = B2Store::new(B2SinkOptions::default(), crate::http::plain());
        assert_eq!(
            store.object_name("//backup/a b.txt"),
            "/backup/a b.txt",
            "one leading slash trimmed"
        );
        assert_eq!(encode_name("dir/a b+ü.txt"), "dir/a%20b%2B%C3%BC.txt");
    }

    #[test]
    fn sha1_is_hex_of_the_body() {
        assert_eq!(
            sha1_hex(b"hello"),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
    }

    #[test]
    fn error_classes() {
        let e = |status, code: &str| B2Error {
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(e(401, "expired_auth_token").needs_authorization());
        assert!(!e(401, "unauthorized").needs_authorization());
        let sink =
            |status, code| crate::sink::SinkError::from(e(status, code).into_store("x", "k"));
        assert!(!sink(400, "bad_request").is_retryable());
        assert!(sink(503, "service_unavailable").is_retryable());
        assert!(sink(429, "too_many_requests").is_retryable());
        let cap = crate::sink::SinkError::from(e(403, "cap_exceeded").into_store("x", "k"));
        assert!(cap.is_outage() && cap.is_retryable());
        assert_eq!(
            e(400, "file_not_present").into_store("x", "k").failure,
            Failure::NotFound,
            "a file already gone is told by its code, not its text"
        );
    }
}
