//! `[sink.filer]`: replicate into another SeaweedFS filer (or another folder of the same one).
//!
//! Chunks are copied needle by needle: read from the source's volume servers, written to
//! volumes the target assigns (`AssignVolume` with `path` = the target key, so the target's
//! path rules apply), and the entry is created with `is_from_other_cluster` and the event's
//! signatures so the target does not send it back. Differences from upstream on purpose:
//! - encrypted chunks are copied as ciphertext with their key, after checking that they
//!   decrypt to the recorded size (upstream compares ciphertext length and fails forever);
//! - gzip needles stay gzip;
//! - an update reuses target chunks whose `source_file_id` matches and copies the rest, so
//!   it never needs the old entry's manifests (upstream issue 9330) and repairs a target
//!   that does not match the old entry;
//! - deletes always delete the data this sink wrote (upstream leaks it on some paths);
//! - chunk reads carry the read JWT.

use super::SinkKey;
use super::assign::{AssignError, Assigner, Placement};
use super::journal::{self, Journal, Note};
use super::{Sink, SinkError};
use crate::filer::fileid::chunk_file_id;
use crate::filer::{FilerSource, ReadError, fileid, is_not_found, is_not_found_text, mtime_ns};
use crate::pb::seaweed_filer_client::SeaweedFilerClient;
use crate::pb::{self, Entry, FileChunk, FileChunkManifest};
use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// `[sink.filer]` settings.
#[derive(Debug, Clone)]
pub struct FilerSinkOptions {
    pub grpc_address: String,
    /// Normalised absolute target directory.
    pub directory: String,
    pub replication: String,
    pub collection: String,
    pub ttl_sec: i32,
    pub disk: String,
    pub data_center: String,
    pub incremental: bool,
    /// Chunk copies in flight across all files.
    pub chunk_concurrency: usize,
    /// `https.client.enabled`: upload to volume servers over https.
    pub https: bool,
    /// gRPC mutual TLS (from security.toml), if configured.
    pub grpc_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where each write attempt notes the chunks it uploads until the entry that
    /// references them is written (see [`Attempt`]); `None` keeps no notes.
    pub journal_dir: Option<std::path::PathBuf>,
}

/// After this many creates in a row found no entry on the target (new files, as when
/// following the source), creates stop looking first: they are sent with `o_excl`, and
/// the first that finds an entry there (a replay) turns looking on again. One round trip
/// less per file while following; a replayed create then costs one wasted copy.
const LOOK_AFTER_ABSENT: u32 = 16;
/// What an exclusive create answers when the target has the entry already.
const EXISTS: &str = "\0entry already exists";

/// Where the chunks of failed attempts are adopted, to be deleted by the filer.
const ORPHANS: &str = "/.seaweed-replicate/orphans";

/// One attempt to write an entry: the chunks it uploaded, noted (before each upload) in
/// the [`Journal`] until the entry referencing them is written. How an attempt ends
/// decides what becomes of its chunks (see [`Attempt::settle`]). An attempt dropped before
/// its write was sent (its event abandoned because its partition moved or the shutdown
/// grace ran out) deletes its chunks in the background; the write itself, once sent,
/// always runs to its answer ([`commit`]). A process killed mid-attempt leaves the file
/// for the next start ([`FilerSink::recover_uploads`]). Without this, every interrupted
/// or failed copy left its chunks on the target for good.
struct Attempt {
    fids: std::sync::Mutex<Vec<String>>,
    notes: Option<(Arc<Journal>, std::sync::Mutex<Note>)>,
    /// The write that references the chunks was sent: until it is settled, an entry may
    /// reference them.
    sent: bool,
    /// The target key the chunks are for.
    full: String,
    target: SeaweedFilerClient<Channel>,
    reader: Arc<FilerSource>,
}

impl Attempt {
    fn start(sink: &FilerSink, key: &SinkKey) -> Attempt {
        let notes = sink.journal.as_ref().map(|j| {
            let note = j.begin(&key.full);
            (j.clone(), std::sync::Mutex::new(note))
        });
        Attempt {
            fids: Default::default(),
            notes,
            sent: false,
            full: key.full.clone(),
            target: sink.target.clone(),
            reader: sink.reader.clone(),
        }
    }

    /// Note a file id about to be uploaded.
    fn note(&self, fid: &str) {
        self.fids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fid.to_string());
        if let Some((journal, note)) = &self.notes {
            journal.chunk(&mut note.lock().unwrap_or_else(|p| p.into_inner()), fid);
        }
    }

    /// The notes are done with: the chunks are referenced or deleted.
    fn end_notes(&mut self) {
        if let Some((journal, note)) = self.notes.take() {
            journal.end(note.into_inner().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// End the attempt by what became of its write:
    /// - written: the entry references the chunks, so only the notes go;
    /// - not written (never sent, or refused): nothing references the chunks, so all are
    ///   deleted (if the target does not answer now, in the background: see `Drop`);
    /// - unknown (sent, no answer): the chunks the entry on the target does not reference
    ///   are deleted now, before the event is retried, so that no later event of the same
    ///   path (a rename) can run in between; if the target does not answer, the notes stay
    ///   for the next start, which decides by the same look-up before any event runs.
    async fn settle(mut self, outcome: Outcome) {
        let fids = std::mem::take(self.fids.get_mut().unwrap_or_else(|p| p.into_inner()));
        let done = match outcome {
            Outcome::Written => Ok(()),
            Outcome::NotWritten => discard(&self.target, &fids)
                .await
                .map_err(|s| s.message().to_string()),
            Outcome::Unknown => reclaim(&self.target, &self.reader, &self.full, &fids)
                .await
                .map(|_| ()),
        };
        if let Err(e) = done {
            if outcome == Outcome::NotWritten {
                tracing::warn!(error = %e, chunks = fids.len(), "cannot delete the chunks of a failed copy now; retrying in the background");
                self.sent = false;
            } else {
                tracing::warn!(error = %e, chunks = fids.len(), key = %self.full, "cannot tell now which chunks of a write without an answer are unused; the next start deletes them");
            }
            *self.fids.get_mut().unwrap_or_else(|p| p.into_inner()) = fids;
            return;
        }
        self.end_notes();
    }
}

/// What became of the write that references an attempt's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// Never sent, or refused by the filer: nothing references the chunks.
    NotWritten,
    /// Sent without an answer: it may have landed.
    Unknown,
}

/// How many times a dropped attempt's chunks are tried to be deleted in the background
/// (about ten minutes with the backoff) before the notes are left for the next start.
const BACKGROUND_TRIES: u32 = 24;

impl Drop for Attempt {
    /// An attempt that did not settle. If its write was never sent, nothing references
    /// its chunks: they are deleted in the background, with backoff, then the notes go
    /// (after [`BACKGROUND_TRIES`] failures, or outside a runtime, the notes stay for the
    /// next start). If the write was sent, only a look-up can tell, and a later event may
    /// already have moved the entry: the notes stay for the next start, which looks
    /// before any event runs.
    fn drop(&mut self) {
        let fids = std::mem::take(self.fids.get_mut().unwrap_or_else(|p| p.into_inner()));
        if fids.is_empty() {
            self.end_notes();
            return;
        }
        // Notes dropped without being ended stay for the next start.
        if self.sent {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let notes = self.notes.take();
        let target = self.target.clone();
        let full = self.full.clone();
        runtime.spawn(async move {
            let mut retry = crate::retry::Retry::default();
            let never = tokio_util::sync::CancellationToken::new();
            for _ in 0..BACKGROUND_TRIES {
                match discard(&target, &fids).await {
                    Ok(()) => {
                        retry.succeeded();
                        tracing::debug!(key = %full, chunks = fids.len(), "deleted the chunks of an interrupted copy");
                        if let Some((journal, note)) = notes {
                            journal.end(note.into_inner().unwrap_or_else(|p| p.into_inner()));
                        }
                        return;
                    }
                    Err(e) => {
                        retry
                            .wait("deleting the chunks of an interrupted copy", &e.message(), &never)
                            .await;
                    }
                }
            }
            tracing::warn!(key = %full, chunks = fids.len(), "gave up deleting the chunks of an interrupted copy; the next start deletes them");
        });
    }
}

pub struct FilerSink {
    target: SeaweedFilerClient<Channel>,
    /// Reads the target's files back (`replicate verify`).
    reader: Arc<FilerSource>,
    source: Arc<FilerSource>,
    http: reqwest::Client,
    opts: FilerSinkOptions,
    permits: Arc<Semaphore>,
    /// Where attempts note their uploads (`opts.journal_dir`).
    journal: Option<Arc<Journal>>,
    /// Creates in a row that found nothing on the target (see [`LOOK_AFTER_ABSENT`]).
    absent_streak: AtomicU32,
    assigner: Assigner,
}

fn retryable_status(status: &tonic::Status) -> bool {
    !matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    )
}

/// A sink error from a gRPC call on the target.
fn rpc_err(op: &'static str, key: &SinkKey, status: tonic::Status) -> SinkError {
    SinkError::Remote {
        op,
        key: key.full.clone(),
        retryable: retryable_status(&status),
        outage: crate::filer::status_is_outage(&status),
        detail: status.to_string(),
    }
}

fn remote_err(
    op: &'static str,
    key: &SinkKey,
    detail: impl Into<String>,
    retryable: bool,
) -> SinkError {
    SinkError::Remote {
        op,
        key: key.full.clone(),
        retryable,
        outage: false,
        detail: detail.into(),
    }
}

/// `(directory, name)` of a target key.
fn split(full: &str) -> (String, String) {
    match full.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => ("/".into(), full.into()),
    }
}

/// Send `write`, the request that makes an entry reference `attempt`'s chunks (its
/// answer: the error text the filer returned, empty for none), unless the fence is
/// closed, and settle the attempt by the outcome. The write runs to its end in a task
/// of its own, so that an event abandoned meanwhile cannot drop it halfway and leave
/// nobody knowing whether the chunks are referenced.
async fn commit<W>(
    attempt: Attempt,
    key: &SinkKey,
    op: &'static str,
    write: W,
) -> Result<(), SinkError>
where
    W: std::future::Future<Output = Result<String, tonic::Status>> + Send + 'static,
{
    if let Err(fenced) = crate::fence::check(&key.full) {
        attempt.settle(Outcome::NotWritten).await;
        return Err(fenced.into());
    }
    let mut attempt = attempt;
    attempt.sent = true;
    let for_task = key.clone();
    let task = tokio::spawn(async move {
        let (outcome, result) = match write.await {
            Ok(error) if error.is_empty() => (Outcome::Written, Ok(())),
            Ok(error) => (
                Outcome::NotWritten,
                Err(remote_err(op, &for_task, error, false)),
            ),
            Err(status) => {
                // A status not worth retrying is the filer refusing the request.
                let outcome = if retryable_status(&status) {
                    Outcome::Unknown
                } else {
                    Outcome::NotWritten
                };
                (outcome, Err(rpc_err(op, &for_task, status)))
            }
        };
        attempt.settle(outcome).await;
        result
    });
    task.await.unwrap_or_else(|e| {
        Err(remote_err(
            op,
            key,
            format!("the write did not finish: {e}"),
            true,
        ))
    })
}

/// Delete those of `noted` (chunks uploaded for entry `full`) that the entry on the
/// target, or a manifest of it, does not reference; how many that was.
async fn reclaim(
    target: &SeaweedFilerClient<Channel>,
    reader: &FilerSource,
    full: &str,
    noted: &[String],
) -> Result<usize, String> {
    if noted.is_empty() {
        return Ok(0);
    }
    let (directory, name) = split(full);
    let entry = reader
        .lookup_entry(&format!("{}/{name}", directory.trim_end_matches('/')))
        .await
        .map_err(|s| format!("looking up {full} on the target: {}", s.message()))?;
    let mut referenced: std::collections::HashSet<String> = Default::default();
    if let Some(e) = entry {
        referenced.extend(e.chunks.iter().filter_map(chunk_file_id));
        if e.chunks.iter().any(|c| c.is_chunk_manifest) {
            let data = reader
                .resolve_manifests(&e.chunks)
                .await
                .map_err(|err| format!("reading the manifests of {full} on the target: {err}"))?;
            referenced.extend(data.iter().filter_map(chunk_file_id));
        }
    }
    let orphans: Vec<String> = noted
        .iter()
        .filter(|f| !referenced.contains(*f))
        .cloned()
        .collect();
    discard(target, &orphans).await.map_err(|s| {
        format!(
            "deleting chunks of an interrupted copy of {full}: {}",
            s.message()
        )
    })?;
    Ok(orphans.len())
}

/// Delete chunks no entry references: the filer adopts them in an entry of its own
/// (under [`ORPHANS`]) and deletes it with its data, so the filer's own credentials
/// and deletion queue do the work whatever the volume servers' security.
async fn discard(
    target: &SeaweedFilerClient<Channel>,
    fids: &[String],
) -> Result<(), tonic::Status> {
    if fids.is_empty() {
        return Ok(());
    }
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "{}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let chunks = fids
        .iter()
        .enumerate()
        .map(|(i, fid)| FileChunk {
            file_id: fid.clone(),
            offset: i as i64,
            size: 1,
            ..Default::default()
        })
        .collect();
    let created = target
        .clone()
        .create_entry(pb::CreateEntryRequest {
            directory: ORPHANS.into(),
            entry: Some(Entry {
                name: name.clone(),
                chunks,
                attributes: Some(crate::pb::FuseAttributes {
                    file_mode: 0o600,
                    mtime: chrono::Utc::now().timestamp(),
                    file_size: fids.len() as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            is_from_other_cluster: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    if !created.error.is_empty() {
        return Err(tonic::Status::internal(created.error));
    }
    remove(target, ORPHANS, &name, &[]).await?;
    tracing::debug!(chunks = fids.len(), "deleted the chunks of a failed copy");
    Ok(())
}

/// Delete `directory/name` and everything under it on the target, with its data (the
/// data of a replicated entry belongs to this sink); gone already is done. An error the
/// filer reports in its answer comes back as an `Internal` status.
async fn remove(
    target: &SeaweedFilerClient<Channel>,
    directory: &str,
    name: &str,
    signatures: &[i32],
) -> Result<(), tonic::Status> {
    remove_entries(target, directory, name, true, signatures).await
}

/// [`remove`], keeping the chunks when `with_data` is false (other entries use them).
async fn remove_entries(
    target: &SeaweedFilerClient<Channel>,
    directory: &str,
    name: &str,
    with_data: bool,
    signatures: &[i32],
) -> Result<(), tonic::Status> {
    let request = pb::DeleteEntryRequest {
        directory: directory.to_string(),
        name: name.to_string(),
        is_delete_data: with_data,
        is_recursive: true,
        ignore_recursive_error: true,
        is_from_other_cluster: true,
        signatures: signatures.to_vec(),
        ..Default::default()
    };
    let error = target
        .clone()
        .delete_entry(request)
        .await?
        .into_inner()
        .error;
    if error.is_empty() || is_not_found_text(&error) {
        Ok(())
    } else {
        Err(tonic::Status::internal(error))
    }
}

/// The target already holds this version of the source entry: the same mode and time,
/// and every source chunk mapped 1:1 (by `source_file_id`, offset and size). A newer
/// target is not kept for being newer: the pipeline writes only what the source holds
/// now, and `mv` of an older file over a newer one must replace it on the target too.
fn satisfies(existing: &Entry, src: &Entry) -> bool {
    if existing.is_directory != src.is_directory || src.is_directory {
        return false;
    }
    let mode = |e: &Entry| e.attributes.as_ref().map_or(0, |a| a.file_mode);
    let same_content = if src.chunks.is_empty() {
        existing.chunks.is_empty() && existing.content == src.content
    } else {
        existing.chunks.len() == src.chunks.len()
            && existing.chunks.iter().zip(&src.chunks).all(|(e, s)| {
                chunk_file_id(s).is_some_and(|id| e.source_file_id == id)
                    && e.offset == s.offset
                    && e.size == s.size
            })
    };
    same_content && mode(existing) == mode(src) && mtime_ns(existing) == mtime_ns(src)
}

/// Chunks ids as manifests store them: structured `fid`/`source_fid`, strings cleared.
fn to_manifest_form(mut c: FileChunk) -> FileChunk {
    if let Some(fid) = fileid::parse(&c.file_id) {
        c.fid = Some(fid);
        c.file_id.clear();
    }
    if let Some(fid) = fileid::parse(&c.source_file_id) {
        c.source_fid = Some(fid);
        c.source_file_id.clear();
    }
    c
}

impl FilerSink {
    pub fn new(
        opts: FilerSinkOptions,
        source: Arc<FilerSource>,
        http: reqwest::Client,
    ) -> Result<Self, tonic::transport::Error> {
        let target = crate::filer::connect_lazy(&opts.grpc_address, opts.grpc_tls.as_ref())?;
        let permits = Arc::new(Semaphore::new(opts.chunk_concurrency.max(1)));
        let reader = Arc::new(source.at(&opts.grpc_address)?);
        let journal = opts
            .journal_dir
            .clone()
            .map(|dir| Arc::new(Journal::new(dir)));
        let assigner = Assigner::new(
            target.clone(),
            reader.clone(),
            Placement {
                collection: opts.collection.clone(),
                replication: opts.replication.clone(),
                ttl_sec: opts.ttl_sec,
                data_center: opts.data_center.clone(),
                disk: opts.disk.clone(),
            },
        );
        Ok(FilerSink {
            absent_streak: AtomicU32::new(0),
            assigner,
            target,
            reader,
            source,
            http,
            opts,
            permits,
            journal,
        })
    }

    /// The target filer's gRPC client.
    pub(crate) fn client(&self) -> SeaweedFilerClient<Channel> {
        self.target.clone()
    }

    async fn lookup(&self, key: &SinkKey) -> Result<Option<Entry>, SinkError> {
        let (directory, name) = split(&key.full);
        match self
            .target
            .clone()
            .lookup_directory_entry(pb::LookupDirectoryEntryRequest { directory, name })
            .await
        {
            Ok(r) => Ok(r.into_inner().entry),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(rpc_err("lookup", key, s)),
        }
    }

    /// Copy `chunks` to the target, in order. Chunks the target already holds (in
    /// `reuse`, by source id, offset and size) are kept instead of copied.
    async fn replicate_chunks(
        &self,
        key: &SinkKey,
        chunks: &[FileChunk],
        reuse: &HashMap<String, FileChunk>,
        attempt: &Attempt,
    ) -> Result<Vec<FileChunk>, SinkError> {
        let jobs = chunks
            .iter()
            .map(|c| self.replicate_chunk(key, c, reuse, attempt));
        futures::future::try_join_all(jobs).await
    }

    async fn replicate_chunk(
        &self,
        key: &SinkKey,
        chunk: &FileChunk,
        reuse: &HashMap<String, FileChunk>,
        attempt: &Attempt,
    ) -> Result<FileChunk, SinkError> {
        let src_id = chunk_file_id(chunk).ok_or_else(|| SinkError::Refused {
            key: key.full.clone(),
            why: "a chunk has neither file_id nor fid".into(),
        })?;
        if let Some(kept) = reuse.get(&src_id)
            && kept.offset == chunk.offset
            && kept.size == chunk.size
            && kept.is_chunk_manifest == chunk.is_chunk_manifest
        {
            return Ok(kept.clone());
        }
        let read_err = |source: ReadError| SinkError::Read {
            key: key.full.clone(),
            source,
        };
        let new_id = if chunk.is_chunk_manifest {
            let blob = self
                .source
                .fetch_chunk(chunk, false)
                .await
                .map_err(read_err)?;
            let manifest = FileChunkManifest::decode(blob).map_err(|source| {
                read_err(ReadError::Manifest {
                    fid: src_id.clone(),
                    source,
                })
            })?;
            let inner =
                Box::pin(self.replicate_chunks(key, &manifest.chunks, &HashMap::new(), attempt))
                    .await?;
            let blob = FileChunkManifest {
                chunks: inner.into_iter().map(to_manifest_form).collect(),
            }
            .encode_to_vec();
            self.upload(key, Bytes::from(blob), false, attempt).await?
        } else {
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("semaphore is never closed");
            let data = self.source.fetch_verbatim(chunk).await.map_err(read_err)?;
            self.upload(key, data.body, data.gzipped, attempt).await?
        };
        Ok(FileChunk {
            file_id: new_id,
            offset: chunk.offset,
            size: chunk.size,
            modified_ts_ns: chunk.modified_ts_ns,
            e_tag: chunk.e_tag.clone(),
            source_file_id: src_id,
            cipher_key: chunk.cipher_key.clone(),
            is_compressed: chunk.is_compressed,
            is_chunk_manifest: chunk.is_chunk_manifest,
            sse_type: chunk.sse_type,
            sse_metadata: chunk.sse_metadata.clone(),
            ..Default::default()
        })
    }

    /// Assign a file id on the target and upload one needle; a few attempts, each with a
    /// fresh assignment (the volume may have gone read-only or away).
    async fn upload(
        &self,
        key: &SinkKey,
        data: Bytes,
        gzipped: bool,
        attempt: &Attempt,
    ) -> Result<String, SinkError> {
        let mut last = None;
        for round in 0..3u32 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(round))).await;
            }
            let assigned = match self.assigner.next(&key.full, data.len() as u64).await {
                Ok(a) => a,
                Err(AssignError::Rpc(s)) => {
                    last = Some(rpc_err("assign volume", key, s));
                    continue;
                }
                Err(AssignError::Refused(why)) => {
                    last = Some(remote_err("assign volume", key, why, true));
                    continue;
                }
            };
            attempt.note(&assigned.fid);
            let scheme = if self.opts.https { "https" } else { "http" };
            let url = format!("{scheme}://{}/{}", assigned.url, assigned.upload_id);
            // The bytes as the body, not a multipart form: less to build here and to
            // parse there. No type and no name, as upstream sends none: the volume server
            // sniffs the content to decide whether to compress it (never ciphertext, which
            // looks random).
            let mut req = self.http.put(&url).body(data.clone());
            if gzipped {
                req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            }
            if !assigned.auth.is_empty() {
                req = req.bearer_auth(&assigned.auth);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp.bytes().await.unwrap_or_default();
                    let error = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                        .unwrap_or_default();
                    if error.is_empty() {
                        return Ok(assigned.fid);
                    }
                    last = Some(remote_err("upload", key, format!("{url}: {error}"), true));
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    last = Some(remote_err(
                        "upload",
                        key,
                        format!("{url}: HTTP {status}: {text}"),
                        true,
                    ));
                }
                Err(e) => last = Some(remote_err("upload", key, format!("{url}: {e}"), true)),
            }
            self.assigner.forget(&key.full).await;
        }
        Err(last.expect("at least one attempt"))
    }

    /// Target chunks by the source id they were copied from.
    fn reusable(existing: Option<&Entry>) -> HashMap<String, FileChunk> {
        existing
            .map(|e| {
                e.chunks
                    .iter()
                    .filter(|c| !c.source_file_id.is_empty())
                    .map(|c| (c.source_file_id.clone(), c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl FilerSink {
    /// Copy the chunks and create the entry (one attempt of [`Sink::create_entry`]).
    #[allow(clippy::too_many_arguments)]
    async fn write_entry(
        &self,
        key: &SinkKey,
        directory: &str,
        name: &str,
        entry: &Entry,
        reuse: &HashMap<String, FileChunk>,
        signatures: &[i32],
        attempt: Attempt,
        exclusive: bool,
    ) -> Result<(), SinkError> {
        let chunks = match self
            .replicate_chunks(key, &entry.chunks, reuse, &attempt)
            .await
        {
            Ok(chunks) => chunks,
            Err(e) => {
                attempt.settle(Outcome::NotWritten).await;
                return Err(e);
            }
        };
        let request = pb::CreateEntryRequest {
            directory: directory.to_string(),
            entry: Some(Entry {
                name: name.to_string(),
                is_directory: entry.is_directory,
                chunks,
                attributes: entry.attributes.clone(),
                extended: entry.extended.clone(),
                content: entry.content.clone(),
                remote_entry: entry.remote_entry.clone(),
                ..Default::default()
            }),
            is_from_other_cluster: true,
            signatures: signatures.to_vec(),
            o_excl: exclusive,
            ..Default::default()
        };
        let mut target = self.target.clone();
        commit(attempt, key, "create entry", async move {
            let answer = target.create_entry(request).await?.into_inner();
            if exclusive
                && (answer.error_code == pb::FilerError::EntryAlreadyExists as i32
                    || answer.error.contains("already exists"))
            {
                return Ok(EXISTS.to_string());
            }
            Ok(answer.error)
        })
        .await
    }

    /// Copy the chunks and update the entry in place (one attempt of
    /// [`Sink::update_entry`]).
    #[allow(clippy::too_many_arguments)]
    async fn rewrite_entry(
        &self,
        key: &SinkKey,
        existing: &Entry,
        new: &Entry,
        delete_chunks: bool,
        reuse: &HashMap<String, FileChunk>,
        signatures: &[i32],
        attempt: Attempt,
    ) -> Result<(), SinkError> {
        let mut chunks = match self
            .replicate_chunks(key, &new.chunks, reuse, &attempt)
            .await
        {
            Ok(chunks) => chunks,
            Err(e) => {
                attempt.settle(Outcome::NotWritten).await;
                return Err(e);
            }
        };
        if !delete_chunks {
            // As upstream: without delete_chunks the old data stays referenced.
            let kept: std::collections::HashSet<&str> =
                chunks.iter().map(|c| c.file_id.as_str()).collect();
            let stale: Vec<FileChunk> = existing
                .chunks
                .iter()
                .filter(|c| !kept.contains(c.file_id.as_str()))
                .cloned()
                .collect();
            chunks.extend(stale);
        }
        let (directory, _) = split(&key.full);
        let request = pb::UpdateEntryRequest {
            directory,
            entry: Some(Entry {
                name: existing.name.clone(),
                is_directory: new.is_directory,
                chunks,
                attributes: new.attributes.clone(),
                extended: new.extended.clone(),
                hard_link_id: new.hard_link_id.clone(),
                hard_link_counter: new.hard_link_counter,
                content: new.content.clone(),
                remote_entry: new.remote_entry.clone(),
                ..Default::default()
            }),
            is_from_other_cluster: true,
            signatures: signatures.to_vec(),
        };
        let mut target = self.target.clone();
        commit(attempt, key, "update entry", async move {
            target.update_entry(request).await?;
            Ok(String::new())
        })
        .await
    }

    /// Delete what interrupted attempts of an earlier run uploaded and no entry
    /// references: the notes name each attempt's entry and chunks; those the entry (or a
    /// manifest of it) does not reference are deleted.
    async fn recover_uploads(&self) -> Result<usize, String> {
        let Some(dir) = &self.opts.journal_dir else {
            return Ok(0);
        };
        let own = self.journal.as_ref().map(|j| j.prefix().to_string());
        let groups = journal::unsettled(dir, own.as_deref())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut deleted = 0;
        for (files, found) in groups {
            if found.unreadable > 0 {
                tracing::warn!(dir = %dir.display(), lines = found.unreadable, "some notes of uploads could not be read (cut by a kill, or damaged); their chunks, if any, may stay on the target");
            }
            for (full, noted) in &found.attempts {
                deleted += reclaim(&self.target, &self.reader, full, noted).await?;
            }
            for file in files {
                let _ = std::fs::remove_file(file);
            }
        }
        Ok(deleted)
    }

    /// Make entry `old` (and everything under it) again at `new`, pointing at the same
    /// chunks; `old` stays. A file at `new` is replaced; directories merge.
    fn relink<'a>(
        &'a self,
        old: String,
        new: String,
        signatures: &'a [i32],
    ) -> futures::future::BoxFuture<'a, Result<(), tonic::Status>> {
        Box::pin(async move {
            let Some(mut entry) = self.reader.lookup_entry(&old).await? else {
                return Ok(());
            };
            let (directory, name) = split(&new);
            let there = self.reader.lookup_entry(&new).await?;
            let merge = entry.is_directory && there.as_ref().is_some_and(|e| e.is_directory);
            if there.is_some() && !merge {
                remove(&self.target, &directory, &name, signatures).await?;
            }
            if !merge {
                entry.name = name;
                let request = pb::CreateEntryRequest {
                    directory,
                    entry: Some(entry.clone()),
                    is_from_other_cluster: true,
                    signatures: signatures.to_vec(),
                    ..Default::default()
                };
                let error = self
                    .target
                    .clone()
                    .create_entry(request)
                    .await?
                    .into_inner()
                    .error;
                if !error.is_empty() {
                    return Err(tonic::Status::internal(error));
                }
            }
            if !entry.is_directory {
                return Ok(());
            }
            let mut start = String::new();
            loop {
                let page = self.reader.list_page(&old, &start).await?;
                let full = page.len() >= crate::filer::LIST_PAGE;
                for child in page {
                    start = child.name.clone();
                    self.relink(
                        format!("{old}/{}", child.name),
                        format!("{new}/{}", child.name),
                        signatures,
                    )
                    .await?;
                }
                if !full {
                    return Ok(());
                }
            }
        })
    }

    /// Move what directory `old` holds into directory `new` on the target, then delete
    /// `old`. Where both hold a name, directories merge the same way and otherwise the
    /// entry with the newer mtime stays (the target's on a tie: it was written by an event
    /// at least as recent).
    fn merge_into<'a>(
        &'a self,
        old: String,
        new: String,
        signatures: &'a [i32],
    ) -> futures::future::BoxFuture<'a, Result<(), tonic::Status>> {
        Box::pin(async move {
            let mut start = String::new();
            loop {
                let page = self.reader.list_page(&old, &start).await?;
                let full = page.len() >= crate::filer::LIST_PAGE;
                for child in page {
                    start = child.name.clone();
                    let target = format!("{new}/{}", child.name);
                    let existing = self.reader.lookup_entry(&target).await?;
                    let replace = match &existing {
                        None => true,
                        Some(e) if e.is_directory && child.is_directory => {
                            self.merge_into(format!("{old}/{}", child.name), target, signatures)
                                .await?;
                            continue;
                        }
                        Some(e) => mtime_ns(&child) > mtime_ns(e),
                    };
                    if !replace {
                        continue;
                    }
                    if existing.is_some() {
                        remove(&self.target, &new, &child.name, signatures).await?;
                    }
                    let request = pb::AtomicRenameEntryRequest {
                        old_directory: old.clone(),
                        old_name: child.name.clone(),
                        new_directory: new.clone(),
                        new_name: child.name.clone(),
                        signatures: signatures.to_vec(),
                    };
                    self.target.clone().atomic_rename_entry(request).await?;
                }
                if !full {
                    break;
                }
            }
            let (directory, name) = split(&old);
            remove(&self.target, &directory, &name, signatures).await
        })
    }
}

#[async_trait]
impl Sink for FilerSink {
    fn describe(&self) -> String {
        format!(
            "filer {} directory {}",
            self.opts.grpc_address, self.opts.directory
        )
    }

    async fn probe(&self) -> Result<(), SinkError> {
        self.client()
            .get_filer_configuration(pb::GetFilerConfigurationRequest {})
            .await
            .map(drop)
            .map_err(|s| {
                let outage = crate::filer::status_is_outage(&s);
                SinkError::remote("probe", &self.opts.grpc_address, s, true, outage)
            })
    }

    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        let root = self.opts.directory.trim_end_matches('/');
        // A page at a time: only names and sizes are kept, not whole entries. What is not
        // there (yet), or is removed while the walk runs, is empty.
        let mut tree = crate::filer::tree::SourceTree::new(
            &self.reader,
            &self.opts.directory,
            &|_| false,
            false,
        );
        let never = tokio_util::sync::CancellationToken::new();
        let mut out = Vec::new();
        while let Some(page) = tree.next(&never).await.map_err(|s| {
            SinkError::remote(
                "list",
                &self.opts.directory,
                &s,
                retryable_status(&s),
                crate::filer::status_is_outage(&s),
            )
        })? {
            let rel_dir = page.dir.trim_end_matches('/');
            let rel_dir = rel_dir.strip_prefix(root).unwrap_or(rel_dir);
            let rel_dir = rel_dir.trim_start_matches('/');
            for e in page.entries {
                let symlink = e
                    .attributes
                    .as_ref()
                    .is_some_and(|a| !a.symlink_target.is_empty());
                if e.is_directory || symlink {
                    continue;
                }
                let size = crate::filer::content_size(&e);
                let path = if rel_dir.is_empty() {
                    e.name
                } else {
                    format!("{rel_dir}/{}", e.name)
                };
                out.push((path, size));
            }
        }
        Ok(Some(out))
    }

    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        let path = format!("{}/{rel}", self.opts.directory.trim_end_matches('/'));
        let entry = match self.reader.lookup_entry(&path).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(SinkError::Refused {
                    key: path,
                    why: "gone from the target".into(),
                });
            }
            Err(s) => {
                return Err(SinkError::remote(
                    "lookup",
                    &path,
                    &s,
                    retryable_status(&s),
                    crate::filer::status_is_outage(&s),
                ));
            }
        };
        self.reader
            .digest(&entry)
            .await
            .map_err(|source| SinkError::Read { key: path, source })
    }

    fn name(&self) -> &str {
        "filer"
    }

    async fn create_entry(
        &self,
        key: &SinkKey,
        entry: &Entry,
        signatures: &[i32],
    ) -> Result<(), SinkError> {
        let (directory, name) = split(&key.full);
        if self.absent_streak.load(Ordering::Relaxed) >= LOOK_AFTER_ABSENT {
            // New entries, one after the other: create without looking first, unless the
            // target has one (then look, and take what it has into account).
            let attempt = Attempt::start(self, key);
            let none = HashMap::new();
            match self
                .write_entry(
                    key, &directory, &name, entry, &none, signatures, attempt, true,
                )
                .await
            {
                Err(SinkError::Remote { detail, .. }) if detail == EXISTS => {
                    self.absent_streak.store(0, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let existing = self.lookup(key).await?;
        if existing.is_some() {
            self.absent_streak.store(0, Ordering::Relaxed);
        } else {
            self.absent_streak.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = &existing
            && satisfies(e, entry)
        {
            tracing::debug!(key = %key.full, "target already current, skipping");
            return Ok(());
        }
        let reuse = Self::reusable(
            existing
                .as_ref()
                .filter(|e| e.is_directory == entry.is_directory),
        );
        let attempt = Attempt::start(self, key);
        self.write_entry(
            key, &directory, &name, entry, &reuse, signatures, attempt, false,
        )
        .await
    }

    async fn update_entry(
        &self,
        key: &SinkKey,
        _old: &Entry,
        _new_parent: &SinkKey,
        new: &Entry,
        delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<bool, SinkError> {
        let Some(existing) = self.lookup(key).await? else {
            return Ok(false);
        };
        if existing.is_directory != new.is_directory {
            return Ok(false);
        }
        let reuse = Self::reusable(Some(&existing));
        let attempt = Attempt::start(self, key);
        self.rewrite_entry(
            key,
            &existing,
            new,
            delete_chunks,
            &reuse,
            signatures,
            attempt,
        )
        .await
        .map(|()| true)
    }

    async fn delete_entry(
        &self,
        key: &SinkKey,
        _is_directory: bool,
        _delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<(), SinkError> {
        super::refuse_root(key, "delete")?;
        crate::fence::check(&key.full)?;
        let (directory, name) = split(&key.full);
        match remove(&self.target, &directory, &name, signatures).await {
            Ok(()) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(rpc_err("delete entry", key, s)),
        }
    }

    async fn recover(&self) -> Result<(), SinkError> {
        let deleted = self
            .recover_uploads()
            .await
            .map_err(|why| SinkError::Refused {
                key: self.opts.directory.clone(),
                why: format!("cleaning up interrupted copies: {why}"),
            })?;
        if deleted > 0 {
            tracing::info!(
                chunks = deleted,
                "deleted chunks that interrupted copies of an earlier run left on the target"
            );
        }
        Ok(())
    }

    async fn remove_empty_dir(&self, key: &SinkKey) -> Result<bool, SinkError> {
        if key.is_root() {
            return Ok(false);
        }
        match self.lookup(key).await? {
            None => return Ok(true),
            Some(e) if !e.is_directory => return Ok(false),
            Some(_) => {}
        }
        crate::fence::check(&key.full)?;
        let (directory, name) = split(&key.full);
        // Not recursive: the filer refuses to delete a directory that holds anything,
        // so a child that arrives between a look and the delete is never lost.
        let request = pb::DeleteEntryRequest {
            directory,
            name,
            is_delete_data: true,
            is_recursive: false,
            ignore_recursive_error: false,
            is_from_other_cluster: true,
            ..Default::default()
        };
        match self.target.clone().delete_entry(request).await {
            Ok(r) => {
                let error = r.into_inner().error;
                Ok(error.is_empty() || is_not_found_text(&error))
            }
            Err(s) if is_not_found(&s) => Ok(true),
            Err(s) if s.message().contains("non-empty") => Ok(false),
            Err(s) => Err(rpc_err("remove empty directory", key, s)),
        }
    }

    /// An atomic rename on the target filer, its chunks kept under the trash name. The
    /// filer refuses a rename between two of `/buckets`' buckets (or collections), and
    /// into a directory it must merge with: then the same entries are made under the
    /// trash, pointing at the same chunks, and the old ones removed without their data.
    /// What the trash holds at `to` is replaced, unless both are directories.
    async fn trash(
        &self,
        key: &SinkKey,
        to: &SinkKey,
        _is_directory: bool,
        signatures: &[i32],
    ) -> Result<(), SinkError> {
        super::refuse_root(key, "trash")?;
        crate::fence::check(&to.full)?;
        let Some(from) = self.lookup(key).await? else {
            return Ok(());
        };
        if let Some(there) = self.lookup(to).await?
            && !(there.is_directory && from.is_directory)
        {
            let (directory, name) = split(&to.full);
            remove(&self.target, &directory, &name, signatures)
                .await
                .map_err(|s| rpc_err("replace in the trash", to, s))?;
        }
        let (old_directory, old_name) = split(&key.full);
        let (new_directory, new_name) = split(&to.full);
        let request = pb::AtomicRenameEntryRequest {
            old_directory: old_directory.clone(),
            old_name: old_name.clone(),
            new_directory,
            new_name,
            signatures: signatures.to_vec(),
        };
        let refused = match self.target.clone().atomic_rename_entry(request).await {
            Ok(_) => return Ok(()),
            Err(s) => s,
        };
        tracing::debug!(key = %key.full, error = %refused, "the target filer refuses to rename into the trash; linking the chunks there instead");
        self.relink(key.full.clone(), to.full.clone(), signatures)
            .await
            .map_err(|s| rpc_err("move to the trash", to, s))?;
        remove_entries(&self.target, &old_directory, &old_name, false, signatures)
            .await
            .map_err(|s| rpc_err("move to the trash", key, s))
    }

    async fn move_entry(
        &self,
        old: &SinkKey,
        new: &SinkKey,
        _entry: &Entry,
        signatures: &[i32],
    ) -> Result<bool, SinkError> {
        super::refuse_root(old, "move")?;
        super::refuse_root(new, "move")?;
        let (old_directory, old_name) = split(&old.full);
        let (new_directory, new_name) = split(&new.full);
        let request = pb::AtomicRenameEntryRequest {
            old_directory,
            old_name,
            new_directory,
            new_name,
            signatures: signatures.to_vec(),
        };
        crate::fence::check(&new.full)?;
        // The create that follows a move finds the entry moved there.
        self.absent_streak.store(0, Ordering::Relaxed);
        let refused = match self.target.clone().atomic_rename_entry(request).await {
            Ok(_) => return Ok(true),
            Err(s) => s,
        };
        let Some(from) = self.lookup(old).await? else {
            // Already moved (a directory rename moved this child), or never replicated:
            // the caller creates the new path, which is skipped if it is already current.
            tracing::debug!(key = %old.full, error = %refused, "rename source gone on the target; creating instead");
            return Ok(false);
        };
        // A directory renamed onto one the target already has (the filer refuses: "fail to
        // delete non-empty folder"): on a topic with several partitions the children's own
        // renames, keyed by their paths, may have been applied first. Merge the two.
        match self.lookup(new).await? {
            Some(to) if to.is_directory && from.is_directory => {
                self.merge_into(old.full.clone(), new.full.clone(), signatures)
                    .await
                    .map_err(|s| rpc_err("merge directory", new, s))?;
                Ok(true)
            }
            _ => Err(rpc_err("rename", old, refused)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::FuseAttributes;

    fn entry(mtime: i64, chunks: Vec<FileChunk>) -> Entry {
        Entry {
            name: "f".into(),
            chunks,
            attributes: Some(FuseAttributes {
                mtime,
                file_mode: 0o644,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn chunk(id: &str, source: &str, offset: i64, size: u64) -> FileChunk {
        FileChunk {
            file_id: id.into(),
            source_file_id: source.into(),
            offset,
            size,
            ..Default::default()
        }
    }

    #[test]
    fn satisfied_only_by_the_same_mapped_chunks_and_time() {
        let src = entry(
            100,
            vec![
                chunk("1,0101010101", "", 0, 10),
                chunk("1,0202020202", "", 10, 5),
            ],
        );
        let same = entry(
            100,
            vec![
                chunk("9,0a0a0a0a0a", "1,0101010101", 0, 10),
                chunk("9,0b0b0b0b0b", "1,0202020202", 10, 5),
            ],
        );
        assert!(satisfies(&same, &src));
        let partial = entry(100, vec![chunk("9,0a0a0a0a0a", "1,0101010101", 0, 10)]);
        assert!(!satisfies(&partial, &src));
        assert!(
            !satisfies(&entry(200, same.chunks.clone()), &src),
            "a newer target is replaced: the source holds this version now (mv over a newer file)"
        );
        let older_same = entry(50, same.chunks.clone());
        assert!(!satisfies(&older_same, &src));
        let mut chmod = same.clone();
        chmod.attributes.as_mut().unwrap().file_mode = 0o600;
        assert!(!satisfies(&chmod, &src), "a mode change is not satisfied");
    }

    #[test]
    fn splits_keys_and_converts_ids_for_manifests() {
        assert_eq!(
            split("/backup/a/b"),
            ("/backup/a".to_string(), "b".to_string())
        );
        assert_eq!(split("/backup"), ("/".to_string(), "backup".to_string()));
        let c = to_manifest_form(chunk("3,046dbbed8d", "5,01abcdef12", 0, 1));
        assert!(c.file_id.is_empty() && c.source_file_id.is_empty());
        assert_eq!(c.fid.unwrap().volume_id, 3);
        assert_eq!(c.source_fid.unwrap().file_key, 1);
    }
}
