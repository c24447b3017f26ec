//! The source cluster: filer gRPC (volume lookups) and chunk reads from volume servers.
//!
//! Reads are strict: every chunk must arrive whole and at its recorded size, holes
//! are zero-filled, manifests are resolved recursively, and any failure fails the
//! read. A sink never receives a truncated or shifted file.

mod codec;
mod content;
mod error;
pub(crate) mod fileid;
mod grpc;
pub(crate) mod jwt;
mod manifest;
pub(crate) mod tls;
pub(crate) mod tree;
pub(crate) mod views;

use codec::{decode_chunk, send_zeros};
pub(crate) use content::{ContentHash, content_size};
pub use error::ReadError;
use error::chunk_err;
pub(crate) use grpc::{connect_lazy, is_not_found, is_not_found_text, signature, status_is_outage};
pub use manifest::{MAX_MANIFEST_DEPTH, MAX_MANIFESTS, resolve_manifests_with};

use crate::pb::seaweed_filer_client::SeaweedFilerClient;
use crate::pb::{Entry, FileChunk, FileChunkManifest, Location, LookupVolumeRequest};
use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit};
use bytes::Bytes;
use fileid::chunk_file_id;
use futures::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// How long a volume's locations are trusted before they are looked up again.
const LOCATION_TTL: Duration = Duration::from_secs(600);
/// Largest piece of zeros sent for a hole.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// What a source read needs to know.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// `host:port` of the filer's gRPC endpoint.
    pub grpc_address: String,
    /// Volume servers in this data center are tried first.
    pub data_center: String,
    /// Read JWT signer from `jwt.signing.read.key`.
    pub read_jwt: Option<jwt::ReadSigner>,
    /// `https.client.enabled`: talk https to volume servers.
    pub https: bool,
    /// Chunks fetched ahead of the one being written, per file.
    pub prefetch: usize,
    /// gRPC mutual TLS (from security.toml), if configured.
    pub grpc_tls: Option<Arc<rustls::ClientConfig>>,
    /// `filerProxy`: the filer's HTTP `host:port`, through which chunks are read
    /// (`/?proxyChunkId=<fid>`) instead of from the volume servers.
    pub proxy: Option<String>,
    /// Chunks read are kept for other readers (the other sinks), up to this many bytes
    /// in all; 0 keeps none.
    pub shared_read_bytes: u64,
    /// Chunk data fetched and not yet dropped by its reader, in bytes, across every
    /// reader of this source; 0 sets no limit. See [`FilerSource::reserve`].
    pub memory_budget_bytes: u64,
}

impl SourceOptions {
    /// Plain gRPC to `grpc_address`: no TLS, no read JWT, http to volume servers, one
    /// chunk ahead, any data center.
    pub fn plain(grpc_address: &str) -> Self {
        SourceOptions {
            grpc_address: grpc_address.to_string(),
            data_center: String::new(),
            read_jwt: None,
            https: false,
            prefetch: 1,
            grpc_tls: None,
            proxy: None,
            shared_read_bytes: 0,
            memory_budget_bytes: 0,
        }
    }
}

/// A chunk's bytes as stored: `gzipped` when they are a gzip stream of the clear data.
#[derive(Debug, Clone)]
pub(crate) struct Verbatim {
    pub body: Bytes,
    pub gzipped: bool,
}

/// Connects to the source filer and reads file content from its volume servers.
pub struct FilerSource {
    grpc: SeaweedFilerClient<Channel>,
    http: reqwest::Client,
    opts: SourceOptions,
    locations: Mutex<HashMap<String, (Instant, Vec<Location>)>>,
    /// Chunks fetched ahead across all files being read at once.
    read_ahead: Arc<tokio::sync::Semaphore>,
    /// Chunks as the volume servers sent them, by file id, for the other sinks (see
    /// [`SourceOptions::shared_read_bytes`]). A read of a chunk that another is reading
    /// waits for that one instead of asking again.
    shared: Option<moka::future::Cache<String, (Bytes, bool)>>,
    /// [`SourceOptions::memory_budget_bytes`] in KiB permits, with the total.
    budget: Option<(Arc<tokio::sync::Semaphore>, u32)>,
}

/// Chunk bytes that hold their share of the memory budget until the last slice drops.
struct Budgeted {
    bytes: Bytes,
    _share: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bodies up to this size are copied out of the connection's read buffer.
const SMALL_BODY: usize = 512 * 1024;

/// Permits of the memory budget are KiB.
const BUDGET_UNIT: u64 = 1024;

/// `mtime` and `mtime_ns` of an entry as nanoseconds.
pub(crate) fn mtime_ns(e: &Entry) -> i64 {
    e.attributes.as_ref().map_or(0, |a| {
        a.mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(a.mtime_ns))
    })
}

impl FilerSource {
    pub fn new(
        opts: SourceOptions,
        http: reqwest::Client,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(FilerSource {
            grpc: connect_lazy(&opts.grpc_address, opts.grpc_tls.as_ref())?,
            http,
            read_ahead: Arc::new(tokio::sync::Semaphore::new(
                (opts.prefetch * READ_AHEAD_FILES).max(1),
            )),
            shared: (opts.shared_read_bytes > 0).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(opts.shared_read_bytes)
                    .weigher(|fid: &String, (body, _): &(Bytes, bool)| {
                        u32::try_from(fid.len() + body.len()).unwrap_or(u32::MAX)
                    })
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .build()
            }),
            budget: (opts.memory_budget_bytes > 0).then(|| {
                let units = u32::try_from((opts.memory_budget_bytes / BUDGET_UNIT).max(1))
                    .unwrap_or(u32::MAX >> 4);
                (Arc::new(tokio::sync::Semaphore::new(units as usize)), units)
            }),
            opts,
            locations: Mutex::new(HashMap::new()),
        })
    }

    /// Wait for room in the memory budget for a chunk of `size` bytes (a chunk larger
    /// than the whole budget takes all of it). Manifests are not counted: they are small,
    /// and dropped once read, before the chunks they list are fetched.
    async fn reserve(&self, size: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let (budget, total) = self.budget.as_ref()?;
        let units = u32::try_from(size.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, *total);
        budget.clone().acquire_many_owned(units).await.ok()
    }

    /// `bytes`, holding `share` of the budget for as long as any slice of them lives.
    fn hold(bytes: Bytes, share: Option<tokio::sync::OwnedSemaphorePermit>) -> Bytes {
        match share {
            Some(share) => Bytes::from_owner(Budgeted {
                bytes,
                _share: share,
            }),
            None => bytes,
        }
    }

    /// A reader for another filer (the target of a filer sink, for `replicate verify`)
    /// with the same security settings.
    pub(crate) fn at(&self, grpc_address: &str) -> Result<FilerSource, tonic::transport::Error> {
        FilerSource::new(
            SourceOptions {
                grpc_address: grpc_address.to_string(),
                // The proxy is the source filer's; another filer's chunks are read directly.
                proxy: None,
                shared_read_bytes: 0,
                memory_budget_bytes: 0,
                ..self.opts.clone()
            },
            self.http.clone(),
        )
    }

    /// Up to [`LIST_PAGE`] entries of directory `dir`, in name order, after `start`.
    pub(crate) async fn list_page(
        &self,
        dir: &str,
        start: &str,
    ) -> Result<Vec<Entry>, tonic::Status> {
        let request = crate::pb::ListEntriesRequest {
            directory: dir.to_string(),
            start_from_file_name: start.to_string(),
            limit: LIST_PAGE as u32,
            ..Default::default()
        };
        let mut stream = self.client().list_entries(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.message().await? {
            out.extend(r.entry);
        }
        Ok(out)
    }

    /// The SHA-256 of a file's content, and its length, read as a sink would read it.
    pub(crate) async fn digest(
        self: &Arc<Self>,
        entry: &Entry,
    ) -> Result<(u64, [u8; 32]), ReadError> {
        let mut hash = ContentHash::default();
        let mut rx = self.open(entry);
        while let Some(piece) = rx.recv().await {
            hash.update(&piece?);
        }
        Ok(hash.finish())
    }

    /// The entry at `path` on the source, `None` if it does not exist.
    pub(crate) async fn lookup_entry(&self, path: &str) -> Result<Option<Entry>, tonic::Status> {
        let (directory, name) = match path.rsplit_once('/') {
            Some(("", name)) => ("/".to_string(), name.to_string()),
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => ("/".to_string(), path.to_string()),
        };
        match self
            .grpc
            .clone()
            .lookup_directory_entry(crate::pb::LookupDirectoryEntryRequest { directory, name })
            .await
        {
            Ok(r) => Ok(r.into_inner().entry),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// The gRPC client of the source filer.
    pub(crate) fn client(&self) -> SeaweedFilerClient<Channel> {
        self.grpc.clone()
    }

    /// Volume server addresses for a volume, preferred data center first. Cached.
    async fn lookup(&self, vid: &str, refresh: bool) -> Result<Vec<Location>, ReadError> {
        if !refresh {
            let cache = self.locations.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, locs)) = cache.get(vid)
                && at.elapsed() < LOCATION_TTL
            {
                return Ok(locs.clone());
            }
        }
        let resp = self
            .grpc
            .clone()
            .lookup_volume(LookupVolumeRequest {
                volume_ids: vec![vid.to_string()],
            })
            .await
            .map_err(|status| ReadError::Lookup {
                vid: vid.into(),
                status: Box::new(status),
            })?
            .into_inner();
        let mut locs = resp
            .locations_map
            .get(vid)
            .map(|l| l.locations.clone())
            .unwrap_or_default();
        if locs.is_empty() {
            return Err(ReadError::NoLocations { vid: vid.into() });
        }
        if !self.opts.data_center.is_empty() {
            locs.sort_by_key(|l| l.data_center != self.opts.data_center);
        }
        self.locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vid.to_string(), (Instant::now(), locs.clone()));
        Ok(locs)
    }

    fn forget(&self, vid: &str) {
        self.locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vid);
    }

    /// Fetch one chunk's clear bytes: tries every replica, re-looks the volume up
    /// once after all replicas failed, decrypts and gunzips, and checks the size.
    pub(crate) async fn fetch_chunk(
        &self,
        chunk: &FileChunk,
        check_size: bool,
    ) -> Result<Bytes, ReadError> {
        let share = if chunk.is_chunk_manifest {
            None
        } else {
            self.reserve(chunk.size).await
        };
        let clear = self
            .with_replicas(chunk, |fid, body, gzipped| {
                decode_chunk(fid, body, gzipped, chunk, check_size)
            })
            .await?;
        Ok(Self::hold(clear, share))
    }

    /// Fetch one chunk as the volume server stores it (ciphertext stays encrypted, a
    /// gzip needle stays gzip), after checking that it decodes to the recorded size.
    pub(crate) async fn fetch_verbatim(&self, chunk: &FileChunk) -> Result<Verbatim, ReadError> {
        let share = self.reserve(chunk.size).await;
        let got = self
            .with_replicas(chunk, |fid, body, gzipped| {
                let clear = decode_chunk(fid, body.clone(), gzipped, chunk, true)?;
                // A gzip needle served without Content-Encoding decodes to a different length.
                let gzipped = gzipped || (chunk.cipher_key.is_empty() && clear.len() != body.len());
                Ok(Verbatim { body, gzipped })
            })
            .await?;
        Ok(Verbatim {
            body: Self::hold(got.body, share),
            gzipped: got.gzipped,
        })
    }

    async fn with_replicas<T>(
        &self,
        chunk: &FileChunk,
        decode: impl Fn(&str, Bytes, bool) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        let fid = chunk_file_id(chunk)
            .ok_or_else(|| chunk_err("?", "chunk has neither file_id nor fid", false))?;
        let vid =
            fileid::volume_id(&fid).ok_or_else(|| chunk_err(&fid, "malformed file id", false))?;
        let Some(shared) = &self.shared else {
            return self.fetch_from_replicas(&fid, vid, decode).await;
        };
        // A body is shared only once it decodes (a damaged replica's is not), and each
        // reader decodes it as it needs it.
        let (body, gzipped) = shared
            .try_get_with(
                fid.clone(),
                self.fetch_from_replicas(&fid, vid, |fid, body, gzipped| {
                    decode_chunk(fid, body.clone(), gzipped, chunk, false)?;
                    Ok((body, gzipped))
                }),
            )
            .await
            .map_err(|e| (*e).clone())?;
        let decoded = decode(&fid, body, gzipped);
        if decoded.is_err() {
            shared.invalidate(&fid).await;
        }
        decoded
    }

    /// Fetch chunk `fid` of volume `vid` from the first replica whose answer decodes
    /// (or through the filer's proxy).
    async fn fetch_from_replicas<T>(
        &self,
        fid: &str,
        vid: &str,
        decode: impl Fn(&str, Bytes, bool) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        if let Some(filer) = &self.opts.proxy {
            // The filer finds a replica and relays the answer; it retries nothing, the
            // pipeline does. Newer filers sign the read themselves (with the volume
            // servers' read key), older ones pass the caller's token on: ours is sent.
            // `volume_id` checked it: digits, a comma and hex, nothing to escape.
            let url = format!(
                "{}://{filer}/?proxyChunkId={fid}&readDeleted=true",
                self.scheme()
            );
            let (body, gzipped) = self.get(&url, fid).await?;
            crate::metrics::get().copied(body.len() as u64);
            return decode(fid, body, gzipped);
        }
        let mut last = None;
        for refresh in [false, true] {
            let locs = self.lookup(vid, refresh).await?;
            for loc in &locs {
                let url = format!("{}://{}/{fid}?readDeleted=true", self.scheme(), loc.url);
                let result = match self.get(&url, fid).await {
                    Ok((body, gzipped)) => {
                        crate::metrics::get().copied(body.len() as u64);
                        decode(fid, body, gzipped)
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(data) => return Ok(data),
                    Err(e) => {
                        tracing::debug!(fid = %fid, replica = %loc.url, error = %e, "replica failed; trying the next");
                        last = Some(e);
                    }
                }
            }
            self.forget(vid);
        }
        Err(last.unwrap_or_else(|| chunk_err(fid, "no replica answered", true)))
    }

    fn scheme(&self) -> &'static str {
        if self.opts.https { "https" } else { "http" }
    }

    /// GET one chunk from `url`, with a read JWT for `fid` if one is set up.
    async fn get(&self, url: &str, fid: &str) -> Result<(Bytes, bool), ReadError> {
        let mut req = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT_ENCODING, "gzip");
        if let Some(signer) = &self.opts.read_jwt {
            req = req.bearer_auth(signer.sign(fid));
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                ReadError::Unreachable {
                    fid: fid.to_string(),
                    detail: format!("GET {url}: {e}"),
                }
            } else {
                chunk_err(fid, format!("GET {url}: {e}"), true)
            }
        })?;
        let status = resp.status();
        if self.opts.proxy.is_some()
            && let Some(e) = proxy_unlocated(status.as_u16(), fid)
        {
            return Err(e);
        }
        if !status.is_success() {
            // 404 may mean this replica lost it; 401/403 is a key mismatch an operator must fix.
            let retryable =
                status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429);
            return Err(chunk_err(
                fid,
                format!("GET {url}: HTTP {status}"),
                retryable,
            ));
        }
        let gzipped = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let body = resp
            .bytes()
            .await
            .map_err(|e| chunk_err(fid, format!("GET {url}: body: {e}"), true))?;
        // A body that arrived in one read is a slice of the connection's read buffer,
        // which grows to 400 KiB: a 30 KiB chunk kept the whole buffer alive until it was
        // written (about 200 KiB per event in flight, measured). Larger bodies are
        // assembled into a buffer of their own.
        let body = if body.len() <= SMALL_BODY {
            Bytes::copy_from_slice(&body)
        } else {
            body
        };
        Ok((body, gzipped))
    }

    /// Replace manifest chunks by the data chunks they list, recursively.
    pub(crate) async fn resolve_manifests(
        &self,
        chunks: &[FileChunk],
    ) -> Result<Vec<FileChunk>, ReadError> {
        resolve_manifests_with(chunks, |c| async move { self.fetch_chunk(&c, false).await }).await
    }

    /// Stream a file's content in order. The total length equals [`content_size`].
    /// At most `prefetch` chunks are held in memory at once.
    pub(crate) fn open(
        self: &Arc<Self>,
        entry: &Entry,
    ) -> mpsc::Receiver<Result<Bytes, ReadError>> {
        let (tx, rx) = mpsc::channel(2);
        let this = Arc::clone(self);
        let entry = entry.clone();
        tokio::spawn(async move {
            if let Err(e) = this.produce(&entry, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn produce(
        &self,
        entry: &Entry,
        tx: &mpsc::Sender<Result<Bytes, ReadError>>,
    ) -> Result<(), ReadError> {
        let recorded = entry.attributes.as_ref().map(|a| a.file_size).unwrap_or(0);
        if entry.chunks.is_empty() {
            if entry.content.is_empty() && recorded > 0 && entry.remote_entry.is_some() {
                // Content that lives only in a remote store: zeros here would corrupt the copy.
                return Err(ReadError::RemoteOnly { size: recorded });
            }
            let content = Bytes::from(entry.content.clone());
            let size = recorded.max(content.len() as u64);
            if !content.is_empty() && tx.send(Ok(content.clone())).await.is_err() {
                return Ok(());
            }
            crate::metrics::get().copied(content.len() as u64);
            return send_zeros(tx, size - content.len() as u64).await;
        }
        let chunks = self.resolve_manifests(&entry.chunks).await?;
        let size = views::file_size(recorded, &chunks);
        let plan = views::visible(&chunks, size);
        let mut pos = 0u64;
        // Each file fetches up to `prefetch` chunks ahead, and all files together up to
        // `prefetch * READ_AHEAD_FILES`, so many large files read at once stay within one
        // budget. Permits are taken in chunk order, so the earliest chunk of a file that
        // holds any is always fetched first: a file never waits on its own later chunks.
        let prefetch = self.opts.prefetch.max(1);
        let mut pending = plan.iter().cloned().peekable();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        loop {
            while in_flight.len() < prefetch && pending.peek().is_some() {
                let permit = if in_flight.is_empty() {
                    // The next chunk to write never waits for the budget.
                    None
                } else {
                    match self.read_ahead.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => break,
                    }
                };
                let v = pending.next().expect("peeked");
                let chunk = &chunks[v.chunk];
                in_flight.push_back(async move {
                    self.fetch_chunk(chunk, true)
                        .await
                        .map(|data| (v, data, permit))
                });
            }
            let Some(item) = in_flight.next().await else {
                break;
            };
            let (v, data, _permit) = item?;
            send_zeros(tx, v.file_offset - pos).await?;
            let start = v.chunk_offset as usize;
            let piece = data.slice(start..start + v.len as usize);
            tx.send(Ok(piece)).await.map_err(|_| ReadError::Aborted)?;
            pos = v.file_offset + v.len;
        }
        send_zeros(tx, size - pos).await
    }
}

/// Entries asked for per directory listing call.
pub(crate) const LIST_PAGE: usize = 1024;

/// How many files' worth of read-ahead all reads share.
const READ_AHEAD_FILES: usize = 2;

/// What a filer's `/?proxyChunkId=` answer means: it answers 500 when it cannot look the
/// chunk's volume up (or reach the server it found) and 404 when no server holds the
/// volume. Both are what a direct read learns as "no locations": waited for as an outage
/// while a restarted cluster settles, and then retried until the event's deadline.
fn proxy_unlocated(status: u16, fid: &str) -> Option<ReadError> {
    matches!(status, 404 | 500).then(|| ReadError::NoLocations {
        vid: fid.split(',').next().unwrap_or(fid).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn budgeted(mb: u64) -> FilerSource {
        FilerSource::new(
            SourceOptions {
                memory_budget_bytes: mb * 1024 * 1024,
                ..SourceOptions::plain("127.0.0.1:9")
            },
            crate::http::plain(),
        )
        .unwrap()
    }

    fn room(source: &FilerSource) -> usize {
        source.budget.as_ref().unwrap().0.available_permits()
    }

    #[tokio::test]
    async fn chunk_data_holds_its_share_of_the_budget_until_its_last_slice_drops() {
        let source = budgeted(1);
        assert_eq!(room(&source), 1024);
        let share = source.reserve(300 * 1024).await;
        let data = FilerSource::hold(Bytes::from(vec![7u8; 300 * 1024]), share);
        assert_eq!(room(&source), 1024 - 300);
        let piece = data.slice(10..20);
        drop(data);
        assert_eq!(room(&source), 1024 - 300, "a slice still holds it");
        assert_eq!(&piece[..], &[7u8; 10]);
        drop(piece);
        assert_eq!(room(&source), 1024);
        // A chunk larger than the budget takes all of it, and waits for all of it.
        let all = source.reserve(5 * 1024 * 1024).await;
        assert_eq!(room(&source), 0);
        let waiting = source.reserve(1);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "a read waits while the budget is taken"
        );
        drop(all);
        assert!(waiting.await.is_some());
        // No budget: nothing to wait for, nothing held.
        let unlimited =
            FilerSource::new(SourceOptions::plain("127.0.0.1:9"), crate::http::plain()).unwrap();
        assert!(unlimited.reserve(u64::MAX).await.is_none());
    }

    #[test]
    fn a_proxy_that_cannot_place_a_volume_is_unlocated() {
        for status in [404, 500] {
            let e = proxy_unlocated(status, "7,01637037d6").unwrap();
            assert!(
                e.is_unlocated() && e.is_retryable() && !e.is_outage(),
                "{status}"
            );
            assert!(e.to_string().contains("volume 7 "), "{e}");
        }
        for status in [200, 206, 401, 403, 502, 503] {
            assert!(proxy_unlocated(status, "7,01").is_none(), "{status}");
        }
    }

    #[test]
    fn a_volume_the_master_cannot_place_is_unlocated_not_unreachable() {
        let lookup = |status| ReadError::Lookup {
            vid: "7".into(),
            status: Box::new(status),
        };
        let unknown = lookup(tonic::Status::unknown("volume id 7 not found"));
        assert!(unknown.is_unlocated() && !unknown.is_outage() && unknown.is_retryable());
        assert!(ReadError::NoLocations { vid: "7".into() }.is_unlocated());
        let down = lookup(tonic::Status::unavailable("connection refused"));
        assert!(!down.is_unlocated() && down.is_outage());
        assert!(!lookup(tonic::Status::unknown("permission denied")).is_unlocated());
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn seal(key: &[u8; 32], clear: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(key).unwrap();
        let nonce = [7u8; 12];
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt(&aes_gcm::Nonce::try_from(&nonce[..]).unwrap(), clear)
                .unwrap(),
        );
        out
    }

    #[test]
    fn decodes_plain_gzip_and_encrypted_chunks() {
        let clear = b"hello world, hello world, hello world".to_vec();
        let plain = FileChunk {
            size: clear.len() as u64,
            ..Default::default()
        };
        assert_eq!(
            decode_chunk("1,01", Bytes::from(clear.clone()), false, &plain, true).unwrap(),
            clear
        );
        assert_eq!(
            decode_chunk("1,01", Bytes::from(gz(&clear)), true, &plain, true).unwrap(),
            clear
        );
        assert_eq!(
            decode_chunk("1,01", Bytes::from(gz(&clear)), false, &plain, true).unwrap(),
            clear,
            "gzip without Content-Encoding is detected by size"
        );

        let key = [9u8; 32];
        let enc = FileChunk {
            cipher_key: key.to_vec(),
            is_compressed: true,
            ..plain.clone()
        };
        assert_eq!(
            decode_chunk(
                "1,01",
                Bytes::from(seal(&key, &gz(&clear))),
                false,
                &enc,
                true
            )
            .unwrap(),
            clear
        );
        let enc_plain = FileChunk {
            cipher_key: key.to_vec(),
            ..plain.clone()
        };
        assert_eq!(
            decode_chunk(
                "1,01",
                Bytes::from(seal(&key, &clear)),
                false,
                &enc_plain,
                true
            )
            .unwrap(),
            clear
        );
        let mut tampered = seal(&key, &clear);
        *tampered.last_mut().unwrap() ^= 1;
        assert!(decode_chunk("1,01", Bytes::from(tampered), false, &enc_plain, true).is_err());
    }

    #[test]
    fn short_chunk_is_an_error() {
        let c = FileChunk {
            size: 10,
            ..Default::default()
        };
        let err = decode_chunk("1,01", Bytes::from_static(b"short"), false, &c, true).unwrap_err();
        assert!(
            err.to_string().contains("got 5 bytes, the entry says 10"),
            "{err}"
        );
    }
}
