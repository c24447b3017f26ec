//! Object stores (S3, Google Cloud Storage, Azure Blob, Backblaze B2) behind one small
//! trait, and the one sink that replicates into any of them.
//!
//! [`ObjectSink`] owns everything that is the same for every store: which events write
//! (directories are implied by names), the replay skip (a store that already holds this
//! size and source mtime is left alone), whole or multipart upload with bounded parts in
//! flight and an abort on any failure, the fence check before a write is committed,
//! prefix deletes, and `verify`'s inventory and digest. A store owns only its names
//! (upstream's layouts differ per store) and what its API needs (S3's ACL and tags, B2's
//! SHA-1s and versions, GCS's resumable sessions, Azure's blocks).

pub mod azure;
pub(crate) mod b2;
pub(crate) mod entra;
pub(crate) mod gcs;
pub(crate) mod s3;

use super::{Sink, SinkError, SinkKey};
use crate::filer::{FilerSource, ReadError};
use crate::pb::Entry;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;

/// What a failed store call means, which decides whether and how it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The object, bucket or container is not there.
    NotFound,
    /// The credentials may not do this.
    PermissionDenied,
    /// Nothing answered, or the store cannot serve this account until someone acts (B2's
    /// caps): an outage, retried for as long as it lasts.
    Unavailable,
    /// The store asks to slow down.
    Throttled,
    /// The store refuses the request as it is; sending it again will not help.
    Invalid,
    /// Anything else; worth another try.
    Other,
}

impl Failure {
    /// The meaning of an HTTP status from a store.
    pub(crate) fn of_status(status: u16) -> Failure {
        match status {
            404 => Failure::NotFound,
            401 | 403 => Failure::PermissionDenied,
            429 | 503 => Failure::Throttled,
            400 | 411 | 413 | 414 => Failure::Invalid,
            _ => Failure::Other,
        }
    }
}

/// A failed call to an object store.
#[derive(Debug, thiserror::Error)]
#[error("{op} {name}: {detail}")]
pub(crate) struct StoreError {
    pub op: &'static str,
    /// The object (or prefix, bucket) the call was about.
    pub name: String,
    pub failure: Failure,
    pub detail: String,
}

impl StoreError {
    pub(crate) fn new(
        op: &'static str,
        name: &str,
        failure: Failure,
        detail: impl std::fmt::Display,
    ) -> Self {
        StoreError {
            op,
            name: name.to_string(),
            failure,
            detail: detail.to_string(),
        }
    }

    /// A request that got no answer: nothing answering (connect, timeout) is an outage.
    pub(crate) fn http(op: &'static str, name: &str, e: reqwest::Error) -> Self {
        let failure = if e.is_connect() || e.is_timeout() {
            Failure::Unavailable
        } else {
            e.status()
                .map_or(Failure::Other, |s| Failure::of_status(s.as_u16()))
        };
        Self::new(op, name, failure, e)
    }

    /// An answer that is not a success, with the status and the body the store sent.
    pub(crate) async fn answer(op: &'static str, name: &str, resp: reqwest::Response) -> Self {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Self::new(
            op,
            name,
            Failure::of_status(status.as_u16()),
            format!("HTTP {status}: {body}"),
        )
    }
}

impl From<StoreError> for SinkError {
    fn from(e: StoreError) -> Self {
        SinkError::Remote {
            op: e.op,
            key: e.name,
            retryable: e.failure != Failure::Invalid,
            outage: e.failure == Failure::Unavailable,
            detail: e.detail,
        }
    }
}

/// `resp` if its status is a success, else the store's error.
pub(crate) async fn ok(
    op: &'static str,
    name: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, StoreError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(StoreError::answer(op, name, resp).await)
    }
}

/// A download's content as a stream (a successful status is checked).
pub(crate) async fn download(
    op: &'static str,
    name: &str,
    resp: reqwest::Response,
) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
    let resp = ok(op, name, resp).await?;
    let name = name.to_string();
    Ok(resp
        .bytes_stream()
        .map(move |piece| piece.map_err(|e| StoreError::http(op, &name, e)))
        .boxed())
}

/// What a store holds under a name, as far as the replay skip needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub size: u64,
    /// The source mtime (seconds) stored with the object, if any.
    pub mtime: Option<i64>,
}

/// A multipart upload a store started.
#[derive(Debug)]
pub(crate) struct Upload {
    /// The store's handle: an upload id, a session URL, a large file's id.
    pub id: String,
    /// Every part is exactly this long but the last.
    pub part: u64,
    /// At most this many parts are sent at once (1: in order, one after the other).
    pub in_flight: usize,
}

/// One part of a multipart upload.
pub(crate) struct Part {
    /// From 1.
    pub number: u32,
    /// Where the part starts in the object.
    pub offset: u64,
    pub body: Bytes,
    /// The part that ends the object (`offset + body.len()` is its size).
    pub last: bool,
}

/// An object store, as [`ObjectSink`] uses it.
///
/// Contract:
/// - names are the store's own (see [`ObjectStore::object_name`]); a store never
///   writes outside the bucket or container it was given;
/// - `put` and `complete_upload` replace the object at once: a reader sees the old
///   object or the new one, never a part;
/// - `put_part` may be called for several parts at once (up to [`Upload::in_flight`]);
///   parts arrive in order when `in_flight` is 1;
/// - after `abort_upload` nothing of the upload stays billed or visible;
/// - `delete` and `delete_prefix` succeed when nothing is there;
/// - every call has a bounded time (the HTTP client's timeouts).
#[async_trait]
pub(crate) trait ObjectStore: Send + Sync + 'static {
    /// The config section name (`s3`, `google_cloud_storage`, ...).
    fn name(&self) -> &'static str;
    /// For logs and `replicate check` (`S3 bucket b (endpoint …)`).
    fn describe(&self) -> String;
    /// The object name for a sink path (`/backup/a.txt`) in upstream's layout.
    fn object_name(&self, full: &str) -> String;
    /// Files of `size` bytes up to this many bytes are one put; larger ones multipart.
    fn whole_limit(&self, entry: &Entry, size: u64) -> u64;
    /// One call that tells whether the bucket or container can be reached.
    async fn probe(&self) -> Result<(), StoreError>;
    /// The current object at `name`, `None` when there is none.
    async fn head(&self, name: &str) -> Result<Option<Stored>, StoreError>;
    /// Store `body` under `name` with the entry's metadata in one request.
    async fn put(&self, name: &str, entry: &Entry, body: Bytes) -> Result<(), StoreError>;
    async fn start_upload(
        &self,
        name: &str,
        entry: &Entry,
        size: u64,
    ) -> Result<Upload, StoreError>;
    /// Send one part; what `complete_upload` needs to name it (an ETag, a block id).
    async fn put_part(&self, name: &str, upload: &Upload, part: Part)
    -> Result<String, StoreError>;
    /// Make the object from the parts (their tags in part order).
    async fn complete_upload(
        &self,
        name: &str,
        entry: &Entry,
        upload: &Upload,
        tags: Vec<String>,
    ) -> Result<(), StoreError>;
    async fn abort_upload(&self, name: &str, upload: &Upload) -> Result<(), StoreError>;
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Copy the object at `from` to `to` inside the store (no bytes through here), with
    /// its metadata, replacing whatever is at `to`. `NotFound` when `from` is not there.
    async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError>;
    /// Delete every object whose name starts with `prefix`.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        for (name, _) in self.list(prefix).await? {
            self.delete(&name).await?;
        }
        Ok(())
    }
    /// Every object whose name starts with `prefix`, with its size.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError>;
    /// The content of the object at `name`.
    async fn get(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError>;
}

/// The sink over any object store.
pub(crate) struct ObjectSink<S> {
    store: S,
    /// Normalised absolute sink directory.
    directory: String,
    source: Arc<FilerSource>,
}

impl<S: ObjectStore> ObjectSink<S> {
    pub(crate) fn new(store: S, directory: &str, source: Arc<FilerSource>) -> Self {
        ObjectSink {
            store,
            directory: directory.to_string(),
            source,
        }
    }

    /// Copy `from` to `to` inside the store, then delete `from`; nothing at `from` (a
    /// replayed delete) is done.
    async fn move_object(&self, from: &str, to: &str) -> Result<(), StoreError> {
        match self.store.copy(from, to).await {
            Ok(()) => self.store.delete(from).await,
            Err(e) if e.failure == Failure::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The name prefix of everything under the sink directory.
    fn prefix(&self) -> String {
        self.store
            .object_name(&format!("{}/", self.directory.trim_end_matches('/')))
    }

    /// The store already holds this version (same size and source mtime): a replay.
    async fn already_current(&self, name: &str, entry: &Entry, size: u64) -> bool {
        let mtime = mtime(entry);
        if mtime == 0 {
            return false;
        }
        match self.store.head(name).await {
            Ok(Some(stored)) => stored.size == size && stored.mtime == Some(mtime),
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(object = %name, error = %e, "cannot tell what the store holds; writing");
                false
            }
        }
    }

    /// A multipart upload of the rest of `rx` after `buf`; aborted when anything fails.
    async fn upload(
        &self,
        name: &str,
        entry: &Entry,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        buf: BytesMut,
        size: u64,
    ) -> Result<(), SinkError> {
        let upload = self.store.start_upload(name, entry, size).await?;
        let result = match self.send_parts(name, &upload, rx, buf, size).await {
            Ok(tags) => match crate::fence::check(name) {
                Ok(()) => self
                    .store
                    .complete_upload(name, entry, &upload, tags)
                    .await
                    .map_err(SinkError::from),
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e),
        };
        if result.is_err()
            && let Err(e) = self.store.abort_upload(name, &upload).await
        {
            tracing::warn!(object = %name, error = %e, "could not abort an unfinished upload");
        }
        result
    }

    /// Cut the content into parts and send them, at most `upload.in_flight` at once; the
    /// parts' tags in order.
    async fn send_parts(
        &self,
        name: &str,
        upload: &Upload,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
        mut buf: BytesMut,
        size: u64,
    ) -> Result<Vec<String>, SinkError> {
        let part = upload.part.max(1) as usize;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut tags = Vec::new();
        let (mut number, mut offset) = (0u32, 0u64);
        loop {
            // One byte more than a part tells whether this part is the last. Parts in
            // flight go on while the next one is read (`fill` may be cancelled: what it
            // read is in `buf`).
            let ended = loop {
                tokio::select! {
                    Some(r) = in_flight.next(), if !in_flight.is_empty() => tags.push(r?),
                    ended = fill(rx, &mut buf, part + 1, name) => break ended?,
                }
            };
            if buf.is_empty() {
                break;
            }
            let body = buf.split_to(buf.len().min(part)).freeze();
            let last = ended && buf.is_empty();
            number += 1;
            let this = Part {
                number,
                offset,
                last,
                body,
            };
            offset += this.body.len() as u64;
            if last && offset < size {
                // The content ended early: never commit a short object.
                return Err(SinkError::Read {
                    key: name.to_string(),
                    source: ReadError::Aborted,
                });
            }
            in_flight.push(async move {
                let tag = self.store.put_part(name, upload, this).await?;
                Ok::<_, SinkError>((number, tag))
            });
            if in_flight.len() >= upload.in_flight.max(1)
                && let Some(r) = in_flight.next().await
            {
                tags.push(r?);
            }
            if last {
                break;
            }
        }
        while let Some(r) = in_flight.next().await {
            tags.push(r?);
        }
        tags.sort_by_key(|(n, _)| *n);
        Ok(tags.into_iter().map(|(_, tag)| tag).collect())
    }
}

#[async_trait]
impl<S: ObjectStore> Sink for ObjectSink<S> {
    fn name(&self) -> &str {
        self.store.name()
    }

    fn describe(&self) -> String {
        self.store.describe()
    }

    async fn probe(&self) -> Result<(), SinkError> {
        Ok(self.store.probe().await?)
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
        let name = self.store.object_name(&key.full);
        let size = crate::filer::content_size(entry);
        if self.already_current(&name, entry, size).await {
            tracing::debug!(object = %name, "the store already holds this version, skipping");
            return Ok(());
        }
        let mut rx = self.source.open(entry);
        let limit = self.store.whole_limit(entry, size);
        let (buf, whole) = read_start(&mut rx, limit, size, key).await?;
        if whole {
            crate::fence::check(&name)?;
            return Ok(self.store.put(&name, entry, buf.freeze()).await?);
        }
        self.upload(&name, entry, &mut rx, buf, size).await
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
            let prefix = self.store.object_name(&format!("{}/", key.full));
            return Ok(self.store.delete_prefix(&prefix).await?);
        }
        Ok(self
            .store
            .delete(&self.store.object_name(&key.full))
            .await?)
    }

    /// Copied inside the store, then deleted: no byte passes through here. A crash in
    /// between leaves both copies, and the replayed delete copies again.
    async fn trash(
        &self,
        key: &SinkKey,
        to: &SinkKey,
        is_directory: bool,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        crate::fence::check(&key.full)?;
        super::refuse_root(key, "trash")?;
        if !is_directory {
            let from = self.store.object_name(&key.full);
            return Ok(self
                .move_object(&from, &self.store.object_name(&to.full))
                .await?);
        }
        // Each object is deleted only once its copy is in the trash; one written under
        // the prefix meanwhile stays (its own event decides about it).
        let prefix = self.store.object_name(&format!("{}/", key.full));
        let into = self.store.object_name(&format!("{}/", to.full));
        for (name, _) in self.store.list(&prefix).await? {
            if let Some(rest) = name.strip_prefix(prefix.as_str()) {
                self.move_object(&name, &format!("{into}{rest}")).await?;
            }
        }
        Ok(())
    }

    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        let prefix = self.prefix();
        let objects = self.store.list(&prefix).await?;
        Ok(Some(relative_files(&prefix, objects)))
    }

    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        let name = format!("{}{rel}", self.prefix());
        let mut body = self.store.get(&name).await?;
        let mut hash = crate::filer::ContentHash::default();
        while let Some(piece) = body.next().await {
            hash.update(&piece?);
        }
        Ok(hash.finish())
    }
}

/// Objects listed under `prefix`, as paths relative to it with their sizes; directory
/// markers (names ending in `/`) are left out.
fn relative_files(
    prefix: &str,
    objects: impl IntoIterator<Item = (String, u64)>,
) -> Vec<(String, u64)> {
    objects
        .into_iter()
        .filter_map(|(name, size)| {
            let rel = name.strip_prefix(prefix)?;
            (!rel.is_empty() && !rel.ends_with('/')).then(|| (rel.to_string(), size))
        })
        .collect()
}

/// Read from `rx` into `buf` until it holds at least `want` bytes or the content has
/// ended; `Ok(true)` once it has ended (and on every call after).
async fn fill(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
    buf: &mut BytesMut,
    want: usize,
    key: &str,
) -> Result<bool, SinkError> {
    while buf.len() < want {
        match rx.recv().await {
            Some(Ok(piece)) => buf.extend_from_slice(&piece),
            Some(Err(source)) => {
                return Err(SinkError::Read {
                    key: key.to_string(),
                    source,
                });
            }
            None => return Ok(true),
        }
    }
    Ok(false)
}

/// The start of a file's content: reads until more than `limit` bytes arrived or the
/// content ended. `Ok((all, true))` when the whole file fit (and it was complete),
/// `Ok((first, false))` when the rest must be streamed from `rx`.
async fn read_start(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Bytes, ReadError>>,
    limit: u64,
    expected: u64,
    key: &SinkKey,
) -> Result<(BytesMut, bool), SinkError> {
    let mut buf = BytesMut::new();
    let ended = fill(rx, &mut buf, limit as usize + 1, &key.full).await?;
    if ended && (buf.len() as u64) < expected {
        return Err(SinkError::Read {
            key: key.full.clone(),
            source: ReadError::Aborted,
        });
    }
    Ok((buf, ended))
}

/// The entry's source mtime (seconds), 0 when it has none.
fn mtime(entry: &Entry) -> i64 {
    entry.attributes.as_ref().map_or(0, |a| a.mtime)
}

/// The entry's content type, if the source recorded one.
fn mime(entry: &Entry) -> Option<String> {
    entry
        .attributes
        .as_ref()
        .map(|a| a.mime.clone())
        .filter(|m| !m.is_empty())
}

/// The name minus one leading `/` (S3's and B2's layout).
fn without_one_slash(full: &str) -> String {
    full.strip_prefix('/').unwrap_or(full).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_files_drop_markers_and_other_prefixes() {
        let objects = vec![
            ("backup/a.txt".to_string(), 3),
            ("backup/d/".to_string(), 0),
            ("backup/d/b".to_string(), 5),
            ("backupx/c".to_string(), 1),
            ("backup/".to_string(), 0),
        ];
        assert_eq!(
            relative_files("backup/", objects),
            vec![("a.txt".to_string(), 3), ("d/b".to_string(), 5)]
        );
    }

    #[test]
    fn s3_and_b2_names_trim_one_slash() {
        assert_eq!(without_one_slash("/a/b.txt"), "a/b.txt");
        assert_eq!(without_one_slash("//backup/a"), "/backup/a");
        assert_eq!(without_one_slash("x"), "x");
    }

    #[test]
    fn failures_decide_retry_and_outage() {
        let sink = |f| SinkError::from(StoreError::new("put", "k", f, "x"));
        assert!(!sink(Failure::Invalid).is_retryable());
        assert!(sink(Failure::Throttled).is_retryable());
        assert!(sink(Failure::Unavailable).is_outage());
        assert!(!sink(Failure::PermissionDenied).is_outage());
        assert_eq!(Failure::of_status(404), Failure::NotFound);
        assert_eq!(Failure::of_status(503), Failure::Throttled);
        assert_eq!(Failure::of_status(500), Failure::Other);
    }
}
