//! `[sink.local]` and `[sink.local_incremental]`: replicate into a local directory.
//!
//! Better than upstream on purpose: files are written to a temp file, synced (many files
//! with one flush) and renamed into place with mode and mtime set; symlinks stay symlinks; directories
//! are created with their mode and deleted recursively; a replayed create of a file
//! that already matches (size, mtime, mode) is skipped; renames are native, so a
//! directory rename moves data instead of copying it; names over 255 bytes map the
//! same way on write and delete. Every path is resolved component by component
//! under the root without following symlinks, so no event can reach outside it.

use super::SinkKey;
use super::{Sink, SinkError};
use crate::event::mode;
use crate::filer::FilerSource;
use crate::pb::Entry;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest file name most Linux file systems accept, in bytes.
const NAME_MAX: usize = 255;
const TEMP_PREFIX: &str = ".seaweedfs-tmp-";

pub struct LocalSink {
    name: String,
    root: PathBuf,
    source: Arc<FilerSource>,
    durable: super::groupsync::GroupSync,
}

/// Map a name longer than 255 bytes to `<truncated base><last 8 hex of sha256(name)><ext>`,
/// as upstream's `ToShortFileName` does, so that a replica written by `weed
/// filer.replicate` keeps its names: the extension is everything from the last `.`,
/// whatever its length, and the base is cut to what is left (never inside a character).
/// Where upstream panics (an extension over 247 bytes, so nothing of the base would fit)
/// the name is shortened as if it had no extension. Upstream shortens only file names (a
/// longer directory name fails there); here directory names map the same way.
pub fn local_name(name: &str) -> String {
    if name.len() <= NAME_MAX {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let hash = &digest[digest.len() - 8..];
    let ext = match name.rfind('.') {
        Some(i) if name.len() - i <= NAME_MAX - hash.len() => &name[i..],
        _ => "",
    };
    let base = &name[..name.len() - ext.len()];
    let mut keep = NAME_MAX - hash.len() - ext.len();
    while !base.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{hash}{ext}", &base[..keep])
}

fn io_err<'a>(op: &'static str, key: &'a SinkKey) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        key: key.full.clone(),
        source,
    }
}

impl LocalSink {
    pub fn new(name: &str, root: PathBuf, source: Arc<FilerSource>) -> Self {
        LocalSink {
            name: name.to_string(),
            root,
            source,
            durable: Default::default(),
        }
    }

    /// Walk to the parent directory of `key` under the root, creating missing
    /// directories (mode 0755) and refusing to pass through a symlink or a file.
    fn parent_dir(&self, key: &SinkKey, create: bool) -> Result<Option<PathBuf>, SinkError> {
        let mut dir = self.root.clone();
        if create {
            std::fs::create_dir_all(&dir).map_err(io_err("create sink root", key))?;
        }
        let parents = &key.rel[..key.rel.len().saturating_sub(1)];
        for part in parents {
            dir.push(local_name(part));
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SinkError::Refused {
                        key: key.full.clone(),
                        why: format!("{} is a symlink; refusing to follow it", dir.display()),
                    });
                }
                Ok(_) if create => {
                    // A file where a directory belongs: the source has a directory here now.
                    std::fs::remove_file(&dir).map_err(io_err("replace file by directory", key))?;
                    mkdir(&dir, 0o755).map_err(io_err("create directory", key))?;
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    mkdir(&dir, 0o755).map_err(io_err("create directory", key))?;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("stat", key)(e)),
            }
        }
        Ok(Some(dir))
    }

    fn target(&self, key: &SinkKey, create: bool) -> Result<Option<PathBuf>, SinkError> {
        if key.is_root() {
            return Ok(Some(self.root.clone()));
        }
        let Some(dir) = self.parent_dir(key, create)? else {
            return Ok(None);
        };
        Ok(Some(
            dir.join(local_name(key.rel.last().expect("non-root key"))),
        ))
    }

    /// For a move from `old` to `new`: the path at `old` with its metadata, and the path
    /// for `new` (its parents made, and fenced); `None` when nothing is at `old`.
    fn move_paths(
        &self,
        old: &SinkKey,
        new: &SinkKey,
    ) -> Result<Option<(PathBuf, std::fs::Metadata, PathBuf)>, SinkError> {
        let Some(from) = self.target(old, false)? else {
            return Ok(None);
        };
        let Ok(from_meta) = std::fs::symlink_metadata(&from) else {
            return Ok(None);
        };
        let to = self.target(new, true)?.expect("created parents");
        crate::fence::check(&new.full)?;
        Ok(Some((from, from_meta, to)))
    }

    async fn write_file(&self, key: &SinkKey, path: &Path, entry: &Entry) -> Result<(), SinkError> {
        let attrs = entry.attributes.clone().unwrap_or_default();
        let dir = path.parent().expect("target has a parent");
        let tmp = Staged::new(dir).map_err(io_err("create temp file", key))?;
        let mut rx = self.source.open(entry);
        let mut written = 0u64;
        while let Some(piece) = rx.recv().await {
            let piece = piece.map_err(|source| SinkError::Read {
                key: key.full.clone(),
                source,
            })?;
            tmp.file().write_all(&piece).map_err(io_err("write", key))?;
            written += piece.len() as u64;
        }
        let expected = crate::filer::content_size(entry);
        if written < expected {
            return Err(SinkError::Read {
                key: key.full.clone(),
                source: crate::filer::ReadError::Aborted,
            });
        }
        let (mode, (atime, mtime)) = (mode::to_unix(attrs.file_mode), times(entry));
        let file = tmp.file();
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", key))?;
        filetime::set_file_handle_times(file, Some(atime), Some(mtime))
            .map_err(io_err("set times", key))?;
        // On disk before it has a name: one flush for every file in flight (see
        // `GroupSync`).
        self.durable
            .sync(file, dir)
            .await
            .map_err(io_err("sync", key))?;
        // The commit point: checked last, just before the file appears.
        crate::fence::check(&key.full)?;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            let doomed = path.to_path_buf();
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(doomed))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(io_err("replace directory by file", key))?;
        }
        tmp.persist(dir, path)
            .map_err(io_err("rename into place", key))
    }

    fn write_symlink(&self, key: &SinkKey, path: &Path, target: &str) -> Result<(), SinkError> {
        if std::fs::read_link(path).is_ok_and(|t| t.as_os_str() == target) {
            return Ok(());
        }
        crate::fence::check(&key.full)?;
        let dir = path.parent().expect("target has a parent");
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .make_in(dir, |p| std::os::unix::fs::symlink(target, p))
            .map_err(io_err("create symlink", key))?;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(path).map_err(io_err("replace directory by symlink", key))?;
        }
        tmp.persist(path)
            .map_err(|e| io_err("rename symlink into place", key)(e.error))?;
        Ok(())
    }
}

/// A file being written before it is renamed into place. Where the filesystem allows,
/// it has no name until its content is complete and synced (`O_TMPFILE`), so a crash
/// (even `kill -9`) while writing leaves nothing behind in the sink.
enum Staged {
    Anonymous(std::fs::File),
    Named(tempfile::NamedTempFile),
}

impl Staged {
    fn new(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(f) => Ok(Staged::Anonymous(f)),
            // Filesystems without O_TMPFILE: a hidden temp name.
            Err(_) => Ok(Staged::Named(
                tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .tempfile_in(dir)?,
            )),
        }
    }

    fn file(&self) -> &std::fs::File {
        match self {
            Staged::Anonymous(f) => f,
            Staged::Named(t) => t.as_file(),
        }
    }

    /// Put the complete file at `path`. A new file is linked there directly (atomic, and
    /// no other name ever exists); a replacement is linked to a temp name derived from the
    /// target's, then renamed over it, so a crash between the two leaves a name that the
    /// next write of the same file clears.
    fn persist(self, dir: &Path, path: &Path) -> std::io::Result<()> {
        let f = match self {
            Staged::Named(t) => return t.persist(path).map(|_| ()).map_err(|e| e.error),
            Staged::Anonymous(f) => f,
        };
        use std::os::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
        match link(&proc_path, path) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            other => return other,
        }
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, name);
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}",
            hex::encode(&digest.as_ref()[..8])
        ));
        match link(&proc_path, &tmp) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Left by a crash: clear it.
                std::fs::remove_file(&tmp)?;
                link(&proc_path, &tmp)?;
            }
            other => other?,
        }
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// `linkat` with `AT_SYMLINK_FOLLOW`: give the file behind `/proc/self/fd/N` a name.
fn link(from: &str, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from).map_err(|_| ErrorKind::InvalidInput)?;
    let to =
        std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(|_| ErrorKind::InvalidInput)?;
    // SAFETY: both are valid NUL-terminated strings.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn mkdir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn times(entry: &Entry) -> (filetime::FileTime, filetime::FileTime) {
    let a = entry.attributes.clone().unwrap_or_default();
    let mtime = filetime::FileTime::from_unix_time(a.mtime, a.mtime_ns.max(0) as u32);
    let atime = if a.atime != 0 {
        filetime::FileTime::from_unix_time(a.atime, a.atime_ns.max(0) as u32)
    } else {
        mtime
    };
    (atime, mtime)
}

/// A regular file that already has this entry's size, mtime and mode.
fn satisfies(path: &Path, entry: &Entry) -> bool {
    let Some(a) = entry.attributes.as_ref() else {
        return false;
    };
    if a.mtime == 0 {
        return false;
    }
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    m.is_file()
        && m.len() == crate::filer::content_size(entry)
        && m.mtime() == a.mtime
        && m.mtime_nsec() == i64::from(a.mtime_ns.max(0))
        && m.mode() & 0o7777 == mode::to_unix(a.file_mode)
}

/// S3 multipart parts in flight: upstream never replicates them.
fn is_upload_part(key: &SinkKey) -> bool {
    key.full.ends_with(".part") && key.full.contains("/.uploads/")
}

/// Who stays where a merge finds a name on both sides (and they are not both
/// directories, which merge in turn).
#[derive(Debug, Clone, Copy)]
enum OnClash {
    /// The newer entry (by mtime), the target on a tie: what is already at the target
    /// was written by an event at least as recent.
    Newer,
    /// The entry moved in (the trash keeps the later delete).
    Incoming,
}

/// Move everything in directory `from` into directory `to`, then remove `from`. Where
/// both hold a name, directories are merged the same way and otherwise `clash` decides.
/// Symlinks are moved or replaced, never followed.
fn merge_into(from: &Path, to: &Path, clash: OnClash) -> std::io::Result<()> {
    for child in std::fs::read_dir(from)? {
        let child = child?;
        let src = child.path();
        let dst = to.join(child.file_name());
        let src_meta = std::fs::symlink_metadata(&src)?;
        match std::fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == ErrorKind::NotFound => std::fs::rename(&src, &dst)?,
            Err(e) => return Err(e),
            Ok(dst_meta) if dst_meta.is_dir() && src_meta.is_dir() => {
                merge_into(&src, &dst, clash)?
            }
            Ok(dst_meta) => {
                let replace = match clash {
                    OnClash::Newer => src_meta.modified()? > dst_meta.modified()?,
                    OnClash::Incoming => true,
                };
                if replace {
                    if dst_meta.is_dir() {
                        std::fs::remove_dir_all(&dst)?;
                    } else {
                        std::fs::remove_file(&dst)?;
                    }
                    std::fs::rename(&src, &dst)?;
                }
            }
        }
    }
    std::fs::remove_dir_all(from)
}

/// Move `from` (whose metadata is `from_meta`) to `to`. rename(2) replaces a file by a
/// file atomically, but cannot replace a non-empty directory, nor a file by a
/// directory: what is at `to` is removed first, except that a directory onto a
/// directory merges (see [`merge_into`]).
fn move_over(
    from: &Path,
    from_meta: &std::fs::Metadata,
    to: &Path,
    clash: OnClash,
) -> std::io::Result<()> {
    match std::fs::symlink_metadata(to) {
        Ok(m) if m.is_dir() && from_meta.is_dir() => return merge_into(from, to, clash),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(to)?,
        Ok(_) if from_meta.is_dir() => std::fs::remove_file(to)?,
        _ => {}
    }
    std::fs::rename(from, to)
}

/// Every regular file under `root` (symlinks are listed neither as files nor followed),
/// skipping our own leftover temp files.
fn walk_files(root: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = dirs.pop() {
        // Something removed while the walk runs (the daemon deleting it) is not there.
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                dirs.push((entry.path(), path));
            } else if meta.is_file() {
                out.push((path, meta.len()));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Sink for LocalSink {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    /// Creates nothing (a `check` against an unmounted mount point must not create the
    /// directory on the root filesystem): the root, or the nearest directory above it
    /// where it will be created, must be a writable directory.
    async fn probe(&self) -> Result<(), SinkError> {
        let root = self.root.clone();
        let refused = |dir: &Path, why: String| SinkError::Refused {
            key: dir.display().to_string(),
            why,
        };
        tokio::task::spawn_blocking(move || {
            let mut dir = root.as_path();
            loop {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => break,
                    Ok(_) => return Err(refused(dir, "is not a directory".into())),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        dir = dir
                            .parent()
                            .ok_or_else(|| refused(&root, "has no directory above it".into()))?;
                    }
                    Err(e) => return Err(refused(dir, e.to_string())),
                }
            }
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| refused(dir, "contains NUL".into()))?;
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(refused(dir, format!("is not writable: {e}")));
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::Refused {
            key: self.root.display().to_string(),
            why: e.to_string(),
        })?
    }

    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || walk_files(&root))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|source| SinkError::Io {
                op: "list",
                key: self.root.display().to_string(),
                source,
            })?;
        Ok(Some(files))
    }

    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        let parts: Vec<&str> = rel.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(SinkError::Refused {
                key: rel.to_string(),
                why: "not a plain relative path".into(),
            });
        }
        let path = parts.iter().fold(self.root.clone(), |p, c| p.join(c));
        let rel = rel.to_string();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let mut hash = crate::filer::ContentHash::default();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = std::io::Read::read(&mut f, &mut buf)?;
                if k == 0 {
                    break;
                }
                hash.update(&buf[..k]);
            }
            Ok::<_, std::io::Error>(hash.finish())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| SinkError::Io {
            op: "read",
            key: rel,
            source,
        })
    }

    fn stored_name(&self, name: &str) -> String {
        local_name(name)
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn create_entry(
        &self,
        key: &SinkKey,
        entry: &Entry,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        if is_upload_part(key) {
            return Ok(());
        }
        let path = self.target(key, true)?.expect("created parents");
        let attrs = entry.attributes.clone().unwrap_or_default();
        if entry.is_directory {
            if key.is_root() {
                // The source directory itself: the sink root exists; its own mode is the operator's.
                return Ok(());
            }
            crate::fence::check(&key.full)?;
            if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&path).map_err(io_err("replace file by directory", key))?;
            }
            let perm = if attrs.file_mode == 0 {
                0o755
            } else {
                mode::to_unix(attrs.file_mode)
            };
            mkdir(&path, perm).map_err(io_err("create directory", key))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
                .map_err(io_err("chmod directory", key))?;
            let (atime, mtime) = times(entry);
            filetime::set_file_times(&path, atime, mtime)
                .map_err(io_err("set directory times", key))?;
            return Ok(());
        }
        if !attrs.symlink_target.is_empty() || attrs.file_mode & mode::SYMLINK != 0 {
            self.write_symlink(key, &path, &attrs.symlink_target)?;
            let (atime, mtime) = times(entry);
            let _ = filetime::set_symlink_file_times(&path, atime, mtime);
            return Ok(());
        }
        if satisfies(&path, entry) {
            tracing::debug!(key = %key.full, "already current, skipping write");
            return Ok(());
        }
        self.write_file(key, &path, entry).await
    }

    async fn delete_entry(
        &self,
        key: &SinkKey,
        _is_directory: bool,
        _delete_chunks: bool,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        if is_upload_part(key) {
            return Ok(());
        }
        super::refuse_root(key, "delete")?;
        let Some(path) = self.target(key, false)? else {
            return Ok(());
        };
        crate::fence::check(&key.full)?;
        let result = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
        };
        match result {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("delete", key)(e)),
            _ => Ok(()),
        }
    }

    async fn remove_empty_dir(&self, key: &SinkKey) -> Result<bool, SinkError> {
        if key.is_root() {
            return Ok(false);
        }
        let Some(path) = self.target(key, false)? else {
            return Ok(true);
        };
        crate::fence::check(&key.full)?;
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_err("inspect directory", key)(e)),
            Ok(m) if !m.is_dir() => return Ok(false),
            Ok(_) => {}
        }
        match std::fs::remove_dir(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(io_err("remove empty directory", key)(e)),
        }
    }

    async fn trash(
        &self,
        key: &SinkKey,
        to: &SinkKey,
        _is_directory: bool,
        _signatures: &[i32],
    ) -> Result<(), SinkError> {
        super::refuse_root(key, "trash")?;
        let Some((from, from_meta, target)) = self.move_paths(key, to)? else {
            return Ok(());
        };
        move_over(&from, &from_meta, &target, OnClash::Incoming)
            .map_err(io_err("move to the trash", to))
    }

    async fn move_entry(
        &self,
        old: &SinkKey,
        new: &SinkKey,
        entry: &Entry,
        _signatures: &[i32],
    ) -> Result<bool, SinkError> {
        super::refuse_root(old, "move")?;
        super::refuse_root(new, "move")?;
        let Some((from, from_meta, to)) = self.move_paths(old, new)? else {
            return Ok(false);
        };
        // The source has replaced whatever was at `new`. A directory renamed onto one the
        // sink already has: on a topic with several partitions its children's own rename
        // events (keyed by their paths, so on other partitions) may have been applied
        // first and built the target. Replacing it would lose them; the two are merged.
        move_over(&from, &from_meta, &to, OnClash::Newer).map_err(io_err("rename", new))?;
        // Bring attributes (and content, if the moved copy is stale) up to date.
        self.create_entry(new, entry, &[]).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(root: &Path) -> LocalSink {
        // Entries with inline content only: the source is never called.
        let source = FilerSource::new(
            crate::filer::SourceOptions::plain("127.0.0.1:9"),
            crate::http::plain(),
        )
        .unwrap();
        LocalSink::new("local", root.to_path_buf(), Arc::new(source))
    }

    /// A symlink in the sink (planted, or left by the source) is never followed: a
    /// write under it is refused and nothing lands where it points.
    #[tokio::test]
    async fn a_write_under_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("sink"), d.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let key = super::SinkKey {
            rel: vec!["link".into(), "through.txt".into()],
            full: "/link/through.txt".into(),
        };
        let entry = Entry {
            name: "through.txt".into(),
            content: b"pwned".to_vec(),
            attributes: Some(crate::pb::FuseAttributes {
                file_size: 5,
                file_mode: 0o644,
                mtime: 1_700_000_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = sink(&root)
            .create_entry(&key, &entry, &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_moved_onto_one_merges_keeping_the_newer_entries() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("from"), d.path().join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir_all(to.join("sub")).unwrap();
        std::fs::write(from.join("only-old"), "a").unwrap();
        std::fs::write(from.join("sub/deep"), "b").unwrap();
        std::fs::write(from.join("both"), "stale").unwrap();
        std::fs::write(to.join("both"), "current").unwrap();
        std::fs::write(to.join("only-new"), "c").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        std::fs::File::options()
            .write(true)
            .open(from.join("both"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        merge_into(&from, &to, OnClash::Newer).unwrap();
        assert!(!from.exists());
        let read = |p: &str| std::fs::read_to_string(to.join(p)).unwrap();
        assert_eq!(read("only-old"), "a");
        assert_eq!(read("sub/deep"), "b");
        assert_eq!(read("both"), "current");
        assert_eq!(read("only-new"), "c");
    }

    /// Expected names as upstream's `ToShortFileName` gives them: its own test vectors
    /// (`weed/util/file_util_test.go`), and three produced by running its function (at
    /// SeaweedFS `cc8364a03`) under Debian's Go 1.19: a 41-byte extension (the old rule here
    /// kept none past 32 bytes), a 247-byte one (nothing of the base fits) and a last dot
    /// inside `.tar.gz...`.
    #[test]
    fn long_names_are_shortened_as_upstream_does() {
        let ru = "очень_длинное_имя_файла_c_подробным_указанием_наименования_и_содержания_стандартизованных_форм_за_анварь_-_июнь_2023_года";
        let cases = [
            (
                format!("{ru}(РОГА_И_КОПЫТА_ООО).txt"),
                format!("{ru}(РОГА_И_КОПЫТ354fcaf4.txt"),
            ),
            (
                format!("{ru}(РОГА_И_КОПЫТА_ООО)_without_extension"),
                format!("{ru}(РОГА_И_КОПЫТА_О21a6e47a"),
            ),
            (
                format!(
                    "report-{}.a-forty-byte-extension-for-the-test-0123",
                    "x".repeat(230)
                ),
                format!(
                    "report-{}34e5a725.a-forty-byte-extension-for-the-test-0123",
                    "x".repeat(199)
                ),
            ),
            (
                format!("{}.{}", "é".repeat(100), "e".repeat(246)),
                format!("fc671c82.{}", "e".repeat(246)),
            ),
            (
                format!("{}.tar.gz{}", "b".repeat(20), "z".repeat(240)),
                format!("bbbb5951ee14.gz{}", "z".repeat(240)),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(local_name(&name), want, "{name}");
        }
        // Upstream panics here (an extension of 248 bytes); this maps it without one.
        let name = format!("{}.{}", "é".repeat(100), "e".repeat(247));
        let mapped = local_name(&name);
        assert!(mapped.len() <= NAME_MAX, "{mapped}");
        assert_eq!(mapped, local_name(&name));
        assert!(!mapped.ends_with(&"e".repeat(247)), "{mapped}");
    }

    #[test]
    fn long_names_map_deterministically_within_limit() {
        let long = format!("{}.txt", "é".repeat(200));
        let mapped = local_name(&long);
        assert!(mapped.len() <= NAME_MAX, "{}", mapped.len());
        assert!(mapped.ends_with(".txt"));
        assert_eq!(mapped, local_name(&long));
        assert_ne!(mapped, local_name(&format!("{}x.txt", "é".repeat(200))));
        assert_eq!(local_name("short.txt"), "short.txt");
        let no_ext = "a".repeat(300);
        assert_eq!(local_name(&no_ext).len(), NAME_MAX);
    }
}
