//! `[sink.s3]`: replicate into an S3 bucket (AWS, MinIO, SeaweedFS's own gateway...).
//!
//! Object keys keep upstream's layout: the sink key with one leading `/` removed.
//! Differences from upstream on purpose:
//! - streaming multipart upload with at most `uploader_concurrency` parts in flight, the
//!   part size chosen from the known file size (no 1000 x 5 MiB cap), aborted on failure;
//! - `uploader_part_size_mb` is honoured (upstream reads only the misspelt
//!   `uploader_part_size`, also accepted here) and `acl` is applied;
//! - the source mtime is stored (`x-amz-meta-mtime`), and a replay of a version the bucket
//!   already holds (same mtime and size) is skipped;
//! - user metadata (`X-Amz-Meta-*`) and tags (`X-Amz-Tagging-*`) from extended attributes;
//!   no `Content-MD5` from possibly stale attributes (upstream issue 5572);
//! - deleting a directory deletes every object under it (upstream: nothing).

use super::{Failure, ObjectStore, Part, StoreError, Stored, Upload};
use crate::pb::Entry;
use crate::sink::percent_encode;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl, ObjectIdentifier,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashMap;

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (but the last).
const MIN_PART: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART: u64 = 5 * 1024 * MIB;
/// User metadata key holding the source mtime (seconds).
const MTIME_META: &str = "mtime";

/// `[sink.s3]` settings.
#[derive(Clone, Default)]
pub(crate) struct S3SinkOptions {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub bucket: String,
    /// Normalised absolute directory (`/` by default).
    pub directory: String,
    pub endpoint: String,
    /// A canned ACL set on every object written (checked when the settings are read).
    pub acl: Option<ObjectCannedAcl>,
    pub incremental: bool,
    pub keep_part_size: bool,
    pub max_upload_parts: u64,
    /// Part size in bytes.
    pub part_size: u64,
    pub concurrency: usize,
    pub force_path_style: bool,
}

impl std::fmt::Debug for S3SinkOptions {
    /// Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3SinkOptions")
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("directory", &self.directory)
            .field("endpoint", &self.endpoint)
            .field("static_credentials", &!self.access_key_id.is_empty())
            .finish_non_exhaustive()
    }
}

pub(crate) struct S3Store {
    client: Client,
    opts: S3SinkOptions,
}

/// Error text of an SDK error including the service's code and message.
fn sdk_text<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What an SDK error means: nothing answering is an outage, else the service's code or
/// the HTTP status tells.
fn sdk_failure<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Failure {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Failure::Unavailable,
        SdkError::ServiceError(s) => match e.code() {
            Some("NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload") => Failure::NotFound,
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                Failure::PermissionDenied
            }
            Some("SlowDown" | "Throttling" | "ThrottlingException") => Failure::Throttled,
            // S3 answers 400 when a request body was too slow: worth another try.
            Some("RequestTimeout" | "ExpiredToken") => Failure::Other,
            _ => Failure::of_status(s.raw().status().as_u16()),
        },
        _ => Failure::Other,
    }
}

fn sdk_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &'static str,
    key: &str,
    e: SdkError<E>,
) -> StoreError {
    StoreError::new(op, key, sdk_failure(&e), sdk_text(&e))
}

/// The part size for an object of `size` bytes: the configured size (or the source's chunk
/// size with `keep_part_size`), raised so that the object fits in `max_parts` parts.
pub(crate) fn part_size(opts: &S3SinkOptions, size: u64, first_chunk: Option<u64>) -> u64 {
    let mut part = opts.part_size.max(MIN_PART);
    if opts.keep_part_size
        && let Some(first) = first_chunk
        && first > MIN_PART
    {
        part = first;
    }
    let max_parts = opts.max_upload_parts.clamp(1, 10_000);
    let needed = size.div_ceil(max_parts);
    if needed > part {
        part = needed.div_ceil(MIB) * MIB;
    }
    part.min(MAX_PART)
}

impl S3Store {
    /// `stall`: how long the endpoint may stay silent during a request before the
    /// attempt fails as an outage.
    pub(crate) async fn new(opts: S3SinkOptions, stall: std::time::Duration) -> Self {
        let shared = crate::aws::sdk_config(
            &opts.region,
            &opts.access_key_id,
            &opts.secret_access_key,
            &opts.endpoint,
            "replication.toml",
            stall,
        )
        .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(opts.force_path_style)
            .build();
        S3Store {
            client: Client::from_conf(config),
            opts,
        }
    }

    /// Metadata, content type and tags for an entry.
    fn headers(entry: &Entry) -> (HashMap<String, String>, Option<String>, Option<String>) {
        let mut meta = HashMap::new();
        meta.insert(MTIME_META.to_string(), super::mtime(entry).to_string());
        let mut tags = Vec::new();
        for (k, v) in &entry.extended {
            let lower = k.to_ascii_lowercase();
            let Ok(value) = std::str::from_utf8(v) else {
                continue;
            };
            if let Some(name) = lower.strip_prefix("x-amz-meta-") {
                if name != MTIME_META {
                    meta.insert(name.to_string(), value.to_string());
                }
            } else if lower.starts_with("x-amz-tagging-") {
                let name = &k["x-amz-tagging-".len()..];
                tags.push(format!(
                    "{}={}",
                    percent_encode(name, false),
                    percent_encode(value, false)
                ));
            }
        }
        tags.sort();
        let tagging = (!tags.is_empty()).then(|| tags.join("&"));
        (meta, super::mime(entry), tagging)
    }

    fn acl(&self) -> Option<ObjectCannedAcl> {
        self.opts.acl.clone()
    }
}

impl S3Store {
    /// Every object under `prefix` with its size, handed to `each` a page at a time, so
    /// that a walk over millions of objects holds one page.
    async fn each_page<F, Fut>(&self, prefix: &str, mut each: F) -> Result<(), StoreError>
    where
        F: FnMut(Vec<(String, u64)>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.opts.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("list objects", prefix, e))?;
            let objects = page
                .contents()
                .iter()
                .filter_map(|o| Some((o.key()?.to_string(), o.size().unwrap_or(0).max(0) as u64)))
                .collect();
            each(objects).await?;
        }
        Ok(())
    }

    /// Delete up to a thousand objects in one request.
    async fn delete_batch(
        &self,
        prefix: &str,
        batch: Vec<(String, u64)>,
    ) -> Result<(), StoreError> {
        let ids: Vec<ObjectIdentifier> = batch
            .iter()
            .filter_map(|(k, _)| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| StoreError::new("delete objects", prefix, Failure::Invalid, e))?;
        let r = self
            .client
            .delete_objects()
            .bucket(&self.opts.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk_err("delete objects", prefix, e))?;
        match r.errors().first() {
            Some(failed) => Err(StoreError::new(
                "delete objects",
                prefix,
                Failure::Other,
                format!("{failed:?}"),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn describe(&self) -> String {
        format!(
            "S3 bucket {} (endpoint {:?})",
            self.opts.bucket, self.opts.endpoint
        )
    }

    /// The sink key with one leading `/` removed, as upstream.
    fn object_name(&self, full: &str) -> String {
        super::without_one_slash(full)
    }

    fn whole_limit(&self, entry: &Entry, size: u64) -> u64 {
        let first_chunk = (entry.chunks.len() > 1).then(|| entry.chunks[0].size);
        part_size(&self.opts, size, first_chunk)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let bucket = &self.opts.bucket;
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let mut e = sdk_err("head bucket", bucket, e);
                e.detail
                    .push_str(" (missing bucket, wrong credentials or endpoint?)");
                e
            })
    }

    async fn head(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(name)
            .send()
            .await
        {
            Ok(head) => head,
            Err(SdkError::ServiceError(s)) if s.err().is_not_found() => return Ok(None),
            Err(e) => return Err(sdk_err("head object", name, e)),
        };
        Ok(Some(Stored {
            size: head.content_length().unwrap_or(-1).max(0) as u64,
            mtime: head
                .metadata()
                .and_then(|m| m.get(MTIME_META))
                .and_then(|m| m.parse().ok()),
        }))
    }

    async fn put(&self, name: &str, entry: &Entry, body: Bytes) -> Result<(), StoreError> {
        let (meta, mime, tagging) = Self::headers(entry);
        self.client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(name)
            .body(ByteStream::from(body))
            .set_metadata(Some(meta))
            .set_content_type(mime)
            .set_tagging(tagging)
            .set_acl(self.acl())
            .send()
            .await
            .map_err(|e| sdk_err("put object", name, e))?;
        Ok(())
    }

    async fn start_upload(
        &self,
        name: &str,
        entry: &Entry,
        size: u64,
    ) -> Result<Upload, StoreError> {
        let (meta, mime, tagging) = Self::headers(entry);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(name)
            .set_metadata(Some(meta))
            .set_content_type(mime)
            .set_tagging(tagging)
            .set_acl(self.acl())
            .send()
            .await
            .map_err(|e| sdk_err("create multipart upload", name, e))?;
        Ok(Upload {
            id: created.upload_id().unwrap_or_default().to_string(),
            part: self.whole_limit(entry, size),
            in_flight: self.opts.concurrency.max(1),
        })
    }

    async fn put_part(
        &self,
        name: &str,
        upload: &Upload,
        part: Part,
    ) -> Result<String, StoreError> {
        let r = self
            .client
            .upload_part()
            .bucket(&self.opts.bucket)
            .key(name)
            .upload_id(&upload.id)
            .part_number(part.number as i32)
            .body(ByteStream::from(part.body))
            .send()
            .await
            .map_err(|e| sdk_err("upload part", name, e))?;
        Ok(r.e_tag().unwrap_or_default().to_string())
    }

    async fn complete_upload(
        &self,
        name: &str,
        _entry: &Entry,
        upload: &Upload,
        tags: Vec<String>,
    ) -> Result<(), StoreError> {
        let parts = tags
            .into_iter()
            .enumerate()
            .map(|(i, tag)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .e_tag(tag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(name)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_err("complete multipart upload", name, e))?;
        Ok(())
    }

    async fn abort_upload(&self, name: &str, upload: &Upload) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(name)
            .upload_id(&upload.id)
            .send()
            .await
            .map_err(|e| sdk_err("abort multipart upload", name, e))?;
        Ok(())
    }

    /// One CopyObject: the metadata goes along (`COPY` is the default directive). S3
    /// copies up to 5 GiB in one request; a larger object fails here, and the event with
    /// it (nothing is deleted).
    async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let source = format!(
            "{}/{}",
            self.opts.bucket,
            crate::sink::percent_encode(from, true)
        );
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.opts.bucket)
            .key(to)
            .copy_source(source);
        if let Some(acl) = &self.opts.acl {
            req = req.acl(acl.clone());
        }
        req.send()
            .await
            .map_err(|e| sdk_err("copy object", from, e))?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(name)
            .send()
            .await
            .map_err(|e| sdk_err("delete object", name, e))?;
        Ok(())
    }

    /// A page (up to a thousand objects) per request, as it is listed.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.each_page(prefix, |page| self.delete_batch(prefix, page))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut objects = Vec::new();
        self.each_page(prefix, |page| {
            objects.extend(page);
            async { Ok(()) }
        })
        .await?;
        Ok(objects)
    }

    async fn get(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(name)
            .send()
            .await
            .map_err(|e| sdk_err("get object", name, e))?;
        let name = name.to_string();
        Ok(futures::stream::try_unfold(object.body, move |mut body| {
            let name = name.clone();
            async move {
                match body.try_next().await {
                    Ok(Some(piece)) => Ok(Some((piece, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(StoreError::new("get object", &name, Failure::Other, e)),
                }
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> S3SinkOptions {
        S3SinkOptions {
            part_size: 8 * MIB,
            max_upload_parts: 1000,
            keep_part_size: true,
            ..Default::default()
        }
    }

    #[test]
    fn part_size_follows_config_chunks_and_object_size() {
        assert_eq!(part_size(&opts(), 100 * MIB, None), 8 * MIB);
        assert_eq!(
            part_size(&opts(), 100 * MIB, Some(16 * MIB)),
            16 * MIB,
            "keep_part_size"
        );
        assert_eq!(
            part_size(&opts(), 100 * MIB, Some(MIB)),
            8 * MIB,
            "small chunks are not kept"
        );
        // 20 GiB in at most 1000 parts needs 21 MiB parts (rounded up to whole MiB).
        assert_eq!(part_size(&opts(), 20 * 1024 * MIB, None), 21 * MIB);
        let tiny = S3SinkOptions {
            part_size: MIB,
            ..opts()
        };
        assert_eq!(
            part_size(&tiny, 10 * MIB, None),
            5 * MIB,
            "never below S3's minimum"
        );
    }

    #[test]
    fn metadata_tags_and_type_come_from_the_entry() {
        let mut entry = Entry {
            attributes: Some(crate::pb::FuseAttributes {
                mtime: 1234,
                mime: "text/plain".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        entry
            .extended
            .insert("X-Amz-Meta-Owner".into(), b"alice".to_vec());
        entry
            .extended
            .insert("X-Amz-Tagging-Project".into(), b"a b".to_vec());
        entry
            .extended
            .insert("user.other".into(), b"ignored".to_vec());
        let (meta, mime, tags) = S3Store::headers(&entry);
        assert_eq!(meta.get("mtime").map(String::as_str), Some("1234"));
        assert_eq!(meta.get("owner").map(String::as_str), Some("alice"));
        assert_eq!(meta.len(), 2);
        assert_eq!(mime.as_deref(), Some("text/plain"));
        assert_eq!(tags.as_deref(), Some("Project=a%20b"));
    }
}
