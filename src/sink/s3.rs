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

use super::{Sink, SinkError, fill, percent_encode, read_start};

fn percent_encode_all(s: &str) -> String {
    percent_encode(s, false)
}
use super::SinkKey;
use crate::filer::{FilerSource, ReadError};
use crate::pb::Entry;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl, ObjectIdentifier,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (but the last).
const MIN_PART: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART: u64 = 5 * 1024 * MIB;
/// User metadata key holding the source mtime (seconds).
const MTIME_META: &str = "mtime";

/// `[sink.s3]` settings.
#[derive(Clone, Default)]
pub struct S3SinkOptions {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub bucket: String,
    /// Normalised absolute directory (`/` by default).
    pub directory: String,
    pub endpoint: String,
    pub acl: String,
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

pub struct S3Sink {
    client: Client,
    opts: S3SinkOptions,
    source: Arc<FilerSource>,
}

/// Error text of an SDK error including the service's code and message.
fn sdk_text<E: std::error::Error + 'static>(e: &aws_sdk_s3::error::SdkError<E>) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A connection-level failure (nothing answered): an outage, not a bad event.
fn sdk_outage<E>(e: &aws_sdk_s3::error::SdkError<E>) -> bool {
    matches!(
        e,
        aws_sdk_s3::error::SdkError::DispatchFailure(_)
            | aws_sdk_s3::error::SdkError::TimeoutError(_)
    )
}

fn sdk_err<E: std::error::Error + 'static>(
    op: &'static str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> SinkError {
    SinkError::Remote {
        op,
        key: key.to_string(),
        retryable: true,
        outage: sdk_outage(&e),
        detail: sdk_text(&e),
    }
}

/// The part size for an object of `size` bytes: the configured size (or the source's chunk
/// size with `keep_part_size`), raised so that the object fits in `max_parts` parts.
pub fn part_size(opts: &S3SinkOptions, size: u64, first_chunk: Option<u64>) -> u64 {
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

impl S3Sink {
    /// `stall`: how long the endpoint may stay silent during a request before the
    /// attempt fails as an outage.
    pub async fn new(
        opts: S3SinkOptions,
        source: Arc<FilerSource>,
        stall: std::time::Duration,
    ) -> Self {
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
        S3Sink {
            client: Client::from_conf(config),
            opts,
            source,
        }
    }

    /// The object key: the sink key with one leading `/` removed, as upstream.
    fn object_key(key: &SinkKey) -> String {
        key.full.strip_prefix('/').unwrap_or(&key.full).to_string()
    }

    /// Metadata, content type and tags for an entry.
    fn headers(entry: &Entry) -> (HashMap<String, String>, Option<String>, Option<String>) {
        let attrs = entry.attributes.clone().unwrap_or_default();
        let mut meta = HashMap::new();
        meta.insert(MTIME_META.to_string(), attrs.mtime.to_string());
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
                    percent_encode_all(name),
                    percent_encode_all(value)
                ));
            }
        }
        tags.sort();
        let mime = (!attrs.mime.is_empty()).then_some(attrs.mime);
        let tagging = (!tags.is_empty()).then(|| tags.join("&"));
        (meta, mime, tagging)
    }

    async fn already_current(&self, object: &str, entry: &Entry, size: u64) -> bool {
        let Ok(head) = self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(object)
            .send()
            .await
        else {
            return false;
        };
        let mtime = entry.attributes.as_ref().map_or(0, |a| a.mtime).to_string();
        mtime != "0"
            && head.content_length().unwrap_or(-1) == size as i64
            && head.metadata().and_then(|m| m.get(MTIME_META)) == Some(&mtime)
    }

    fn acl(&self) -> Option<ObjectCannedAcl> {
        (!self.opts.acl.is_empty()).then(|| ObjectCannedAcl::from(self.opts.acl.as_str()))
    }

    async fn put_whole(&self, object: &str, entry: &Entry, body: Bytes) -> Result<(), SinkError> {
        crate::fence::check(object)?;
        let (meta, mime, tagging) = Self::headers(entry);
        self.client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(object)
            .body(ByteStream::from(body))
            .set_metadata(Some(meta))
            .set_content_type(mime)
            .set_tagging(tagging)
            .set_acl(self.acl())
            .send()
            .await
            .map_err(|e| sdk_err("put object", object, e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        object: &str,
        entry: &Entry,
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        part: u64,
        first: BytesMut,
    ) -> Result<(), SinkError> {
        let (meta, mime, tagging) = Self::headers(entry);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(object)
            .set_metadata(Some(meta))
            .set_content_type(mime)
            .set_tagging(tagging)
            .set_acl(self.acl())
            .send()
            .await
            .map_err(|e| sdk_err("create multipart upload", object, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(object, &upload_id, &mut rx, part, first)
            .await;
        match result {
            Ok(parts) => {
                crate::fence::check(object)?;
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.opts.bucket)
                    .key(object)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| sdk_err("complete multipart upload", object, e))?;
                Ok(())
            }
            Err(e) => {
                let abort = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.opts.bucket)
                    .key(object)
                    .upload_id(&upload_id);
                if let Err(abort_err) = abort.send().await {
                    tracing::warn!(object, error = %sdk_text(&abort_err), "aborting the multipart upload failed");
                }
                Err(e)
            }
        }
    }

    /// Read the stream into parts of `part` bytes and upload them, at most
    /// `concurrency` at a time.
    async fn upload_parts(
        &self,
        object: &str,
        upload_id: &str,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        part: u64,
        mut buf: BytesMut,
    ) -> Result<Vec<CompletedPart>, SinkError> {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut done = Vec::new();
        let mut number = 0i32;
        loop {
            fill(rx, &mut buf, part as usize, object).await?;
            if buf.is_empty() {
                break;
            }
            // Every part is exactly `part` bytes except the last.
            let take = (buf.len() as u64).min(part) as usize;
            let body = buf.split_to(take).freeze();
            number += 1;
            let n = number;
            let client = self.client.clone();
            let (bucket, key, id) = (
                self.opts.bucket.clone(),
                object.to_string(),
                upload_id.to_string(),
            );
            in_flight.push(async move {
                let r = client
                    .upload_part()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| sdk_err("upload part", &key, e))?;
                Ok::<_, SinkError>(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(String::from))
                        .build(),
                )
            });
            if in_flight.len() >= self.opts.concurrency.max(1)
                && let Some(r) = in_flight.next().await
            {
                done.push(r?);
            }
        }
        while let Some(r) = in_flight.next().await {
            done.push(r?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// Delete every object under `prefix/`.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), SinkError> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.opts.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("list objects", &prefix, e))?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| SinkError::remote("delete objects", &prefix, e, false, false))?;
            let r = self
                .client
                .delete_objects()
                .bucket(&self.opts.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_err("delete objects", &prefix, e))?;
            if let Some(failed) = r.errors().first() {
                return Err(SinkError::remote(
                    "delete objects",
                    &prefix,
                    format!("{failed:?}"),
                    true,
                    false,
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for S3Sink {
    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        let prefix = super::object_prefix(&self.opts.directory);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.opts.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("list objects", &prefix, e))?;
            objects.extend(
                page.contents().iter().filter_map(|o| {
                    Some((o.key()?.to_string(), o.size().unwrap_or(0).max(0) as u64))
                }),
            );
        }
        Ok(Some(super::relative_files(&prefix, objects)))
    }

    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        let key = format!("{}{rel}", super::object_prefix(&self.opts.directory));
        let object = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_err("get object", &key, e))?;
        let mut body = object.body;
        let mut hash = crate::filer::ContentHash::default();
        while let Some(piece) = body
            .try_next()
            .await
            .map_err(|e| SinkError::remote("get object", &key, e, true, false))?
        {
            hash.update(&piece);
        }
        Ok(hash.finish())
    }

    fn describe(&self) -> String {
        format!(
            "S3 bucket {} (endpoint {:?})",
            self.opts.bucket, self.opts.endpoint
        )
    }

    async fn probe(&self) -> Result<(), String> {
        self.client
            .head_bucket()
            .bucket(&self.opts.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{} (missing bucket, wrong credentials or endpoint?)",
                    sdk_text(&e)
                )
            })
    }

    fn name(&self) -> &str {
        "s3"
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
        let object = Self::object_key(key);
        let size = crate::filer::content_size(entry);
        if self.already_current(&object, entry, size).await {
            tracing::debug!(object, "bucket already holds this version, skipping");
            return Ok(());
        }
        let first_chunk = (entry.chunks.len() > 1).then(|| entry.chunks[0].size);
        let part = part_size(&self.opts, size, first_chunk);
        let mut rx = self.source.open(entry);
        // Up to one part is a single PUT.
        let (buf, whole) = read_start(&mut rx, part, size, key).await?;
        if whole {
            return self.put_whole(&object, entry, buf.freeze()).await;
        }
        self.put_multipart(&object, entry, rx, part, buf).await
    }

    async fn delete_entry(
        &self,
        key: &SinkKey,
        is_directory: bool,
        _delete_chunks: bool,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        super::refuse_root(key, "delete")?;
        let object = Self::object_key(key);
        crate::fence::check(&object)?;
        if is_directory {
            return self.delete_prefix(&object).await;
        }
        self.client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| sdk_err("delete object", &object, e))?;
        Ok(())
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
        let (meta, mime, tags) = S3Sink::headers(&entry);
        assert_eq!(meta.get("mtime").map(String::as_str), Some("1234"));
        assert_eq!(meta.get("owner").map(String::as_str), Some("alice"));
        assert_eq!(meta.len(), 2);
        assert_eq!(mime.as_deref(), Some("text/plain"));
        assert_eq!(tags.as_deref(), Some("Project=a%20b"));
    }

    #[test]
    fn object_keys_trim_one_slash() {
        let key = |full: &str| SinkKey {
            rel: vec!["x".into()],
            full: full.into(),
        };
        assert_eq!(S3Sink::object_key(&key("/a/b.txt")), "a/b.txt");
        assert_eq!(S3Sink::object_key(&key("/backup/a")), "backup/a");
    }
}
