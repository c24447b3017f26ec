//! Notes of the chunks a filer sink uploads before the entry that references them is
//! written, so that a process killed mid-copy leaves nothing on the target that no entry
//! references: the next start reads the notes and deletes what is not referenced.
//!
//! The notes of one process are appended to segment files `<pid>-<start>-<n>.log`, one
//! line each: `b <serial> <key as JSON>` when an attempt uploads its first chunk, `f
//! <serial> <fid as JSON>` before each upload, `e <serial>` when the attempt has settled.
//! When a segment is full, the next one starts with the notes of every attempt still open
//! (or kept for the next start), and the full one goes. (One file per
//! attempt, as before, cost a create and an unlink per replicated file, and on ext4 each
//! unlinked inode makes the next allocations scan past it: 18% of the process's CPU on
//! 20,000 small files, growing with the backlog.) Notes are not synced: they are for a
//! killed process, whose writes the kernel keeps; a power loss can leave unreferenced
//! chunks behind, never a wrong replica.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Files of the per-attempt format of earlier versions, still read at start.
const LEGACY_EXTENSION: &str = "fids";
const EXTENSION: &str = "log";

pub(crate) struct Journal {
    dir: PathBuf,
    /// `<pid>-<start ns>`: the name prefix of this process's segments.
    prefix: String,
    serial: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The segment being written: its number, file and size.
    current: Option<(u64, std::fs::File, u64)>,
    next_segment: u64,
    /// Attempts begun and not ended (or kept for the next start), by serial: their key
    /// and chunks, written again at the head of each new segment so that the old ones
    /// can go whole.
    open: HashMap<u64, (String, Vec<String>)>,
    /// Whether writes fail (logged once until one succeeds again).
    health: crate::retry::Health,
}

/// One attempt's notes: nothing is written until its first chunk. A note dropped without
/// [`Journal::end`] (an attempt that could not settle) stays for the next start, carried
/// into every new segment until then.
pub(crate) struct Note {
    serial: u64,
    key: String,
    /// Its `b` line is written.
    begun: bool,
}

/// What a segment (or legacy file) says of the attempts that had not ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Unsettled {
    /// (target key, file ids uploaded for it), in the order begun.
    pub attempts: Vec<(String, Vec<String>)>,
    /// Lines that could not be read (a line cut by a kill, or damage).
    pub unreadable: usize,
}

fn begin_line(serial: u64, key: &str) -> String {
    let key = serde_json::to_string(key).expect("a string serializes");
    format!("b {serial} {key}\n")
}

fn chunk_line(serial: u64, fid: &str) -> String {
    let fid = serde_json::to_string(fid).expect("a string serializes");
    format!("f {serial} {fid}\n")
}

impl Journal {
    pub(crate) fn new(dir: PathBuf) -> Journal {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Journal {
            dir,
            prefix: format!("{}-{start}", std::process::id()),
            serial: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn begin(&self, key: &str) -> Note {
        Note {
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
            key: key.to_string(),
            begun: false,
        }
    }

    /// Note `fid` before it is uploaded. False when it could not be written (the chunk
    /// may then stay on the target if the process is killed before the attempt settles).
    pub(crate) fn chunk(&self, note: &mut Note, fid: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut text = String::new();
        if !note.begun {
            text.push_str(&begin_line(note.serial, &note.key));
        }
        text.push_str(&chunk_line(note.serial, fid));
        if !self.append(&mut inner, &text) {
            return false;
        }
        note.begun = true;
        inner
            .open
            .entry(note.serial)
            .or_insert_with(|| (note.key.clone(), vec![]))
            .1
            .push(fid.to_string());
        true
    }

    /// The attempt settled: its chunks are referenced or deleted, so its notes go.
    pub(crate) fn end(&self, note: Note) {
        if !note.begun {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.remove(&note.serial);
        let _ = self.append(&mut inner, &format!("e {}\n", note.serial));
    }

    /// The name prefix of this process's segments.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{}-{n}.{EXTENSION}", self.prefix))
    }

    /// Append `text` to the current segment, starting a new one first if it is full: the
    /// new one opens with the notes of every open attempt, then the full one goes.
    fn append(&self, inner: &mut Inner, text: &str) -> bool {
        let full = inner
            .current
            .as_ref()
            .is_some_and(|(_, _, size)| *size >= SEGMENT_BYTES);
        if inner.current.is_none() || full {
            let n = inner.next_segment;
            inner.next_segment += 1;
            let path = self.segment_path(n);
            let mut head = String::new();
            for (serial, (key, fids)) in &inner.open {
                head.push_str(&begin_line(*serial, key));
                for fid in fids {
                    head.push_str(&chunk_line(*serial, fid));
                }
            }
            let opened = std::fs::create_dir_all(&self.dir).and_then(|()| {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                f.write_all(head.as_bytes())?;
                Ok(f)
            });
            match opened {
                Ok(f) => {
                    if let Some((old, _, _)) = inner.current.take() {
                        let _ = std::fs::remove_file(self.segment_path(old));
                    }
                    inner.current = Some((n, f, head.len() as u64));
                }
                Err(e) => {
                    // The full segment stays in use: it holds every open note.
                    self.failed(inner, &path, &e);
                    let _ = std::fs::remove_file(&path);
                    if inner.current.is_none() {
                        return false;
                    }
                }
            }
        }
        let (n, file, size) = inner.current.as_mut().expect("opened above");
        let n = *n;
        match file.write_all(text.as_bytes()) {
            Ok(()) => {
                *size += text.len() as u64;
                if inner.health.worked().is_some() {
                    tracing::info!(dir = %self.dir.display(), "noting uploads works again");
                }
                true
            }
            Err(e) => {
                let path = self.segment_path(n);
                self.failed(inner, &path, &e);
                false
            }
        }
    }

    fn failed(&self, inner: &mut Inner, path: &Path, e: &std::io::Error) {
        if inner.health.failed() {
            tracing::warn!(file = %path.display(), error = %e, "cannot note uploads; chunks of a copy interrupted now may stay on the target");
        }
    }
}

/// The notes in `dir` that no running process owns, grouped by the process that wrote
/// them: (files, what they leave unsettled). This process's own are never included.
pub(crate) fn unsettled(
    dir: &Path,
    own_prefix: Option<&str>,
) -> std::io::Result<Vec<(Vec<PathBuf>, Unsettled)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut groups: std::collections::BTreeMap<String, Vec<(u64, PathBuf)>> = Default::default();
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if e == EXTENSION || e == LEGACY_EXTENSION => (s.to_string(), e),
            _ => continue,
        };
        // This process's own notes, and those of another process in this directory (a
        // `backfill`, `verify -repair`) that may be writing right now, are theirs. An
        // earlier run with this process's pid (pid 1 in a container) is not this one.
        let pid = stem.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let own = own_prefix.is_some_and(|p| stem.starts_with(&format!("{p}-")));
        if own
            || pid.is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            })
        {
            tracing::debug!(file = %path.display(), "notes of a running process; left alone");
            continue;
        }
        if ext == LEGACY_EXTENSION {
            // One file per attempt: a group of its own.
            groups.entry(name.to_string()).or_default().push((0, path));
        } else {
            let (owner, n) = match stem.rsplit_once('-') {
                Some((owner, n)) => (owner.to_string(), n.parse::<u64>().unwrap_or(u64::MAX)),
                None => (stem.clone(), 0),
            };
            groups.entry(owner).or_default().push((n, path));
        }
    }
    let mut out = vec![];
    for (_, mut files) in groups {
        files.sort();
        let mut texts = vec![];
        for (_, path) in &files {
            let bytes = std::fs::read(path)?;
            texts.push((path.clone(), String::from_utf8_lossy(&bytes).into_owned()));
        }
        let legacy = files.len() == 1
            && files[0]
                .1
                .extension()
                .is_some_and(|e| e == LEGACY_EXTENSION);
        let found = if legacy {
            parse_legacy(&texts[0].1)
        } else {
            parse(texts.iter().map(|(_, t)| t.as_str()))
        };
        out.push((files.into_iter().map(|(_, p)| p).collect(), found));
    }
    Ok(out)
}

/// Read the segments of one process, in order.
fn parse<'a>(texts: impl Iterator<Item = &'a str>) -> Unsettled {
    let mut open: Vec<(u64, String, Vec<String>)> = vec![];
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut ended: std::collections::HashSet<u64> = Default::default();
    let mut unreadable = 0;
    for line in texts.flat_map(str::lines) {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (kind, serial, rest) = (parts.next(), parts.next(), parts.next());
        let Some(serial) = serial.and_then(|s| s.parse::<u64>().ok()) else {
            unreadable += 1;
            continue;
        };
        let text = || rest.and_then(|r| serde_json::from_str::<String>(r).ok());
        match (kind, text()) {
            (Some("b"), Some(key)) if !index.contains_key(&serial) => {
                index.insert(serial, open.len());
                open.push((serial, key, vec![]));
            }
            // A new segment repeats the notes of open attempts (a kill between it and
            // the removal of the full one leaves both).
            (Some("b"), Some(_)) => {}
            (Some("f"), Some(fid)) => match index.get(&serial) {
                Some(&i) if !open[i].2.contains(&fid) => open[i].2.push(fid),
                Some(_) => {}
                None => unreadable += 1,
            },
            (Some("e"), None) if rest.is_none() => {
                ended.insert(serial);
            }
            _ => unreadable += 1,
        }
    }
    Unsettled {
        attempts: open
            .into_iter()
            .filter(|(serial, _, fids)| !ended.contains(serial) && !fids.is_empty())
            .map(|(_, key, fids)| (key, fids))
            .collect(),
        unreadable,
    }
}

/// The per-attempt file of earlier versions: the key, then one file id a line.
fn parse_legacy(text: &str) -> Unsettled {
    let mut lines = text.lines();
    let Some(key) = lines.next().filter(|k| !k.is_empty()) else {
        return Unsettled::default();
    };
    let fids: Vec<String> = lines.filter(|l| !l.is_empty()).map(String::from).collect();
    Unsettled {
        attempts: if fids.is_empty() {
            vec![]
        } else {
            vec![(key.to_string(), fids)]
        },
        unreadable: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Parse this process's own notes as the next start would.
    fn read_own(dir: &Path) -> Unsettled {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit_once('-'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
        });
        let texts: Vec<String> = files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        parse(texts.iter().map(String::as_str))
    }

    #[test]
    fn an_attempt_without_chunks_writes_nothing_and_an_ended_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("uploads"));
        let quiet = j.begin("/t/a");
        j.end(quiet);
        assert!(segments(&dir.path().join("uploads")).is_empty());
        let mut n = j.begin("/t/b");
        assert!(j.chunk(&mut n, "3,01637037d6"));
        assert!(j.chunk(&mut n, "3,01637037d7"));
        let open = read_own(&dir.path().join("uploads"));
        assert_eq!(
            open.attempts,
            vec![(
                "/t/b".to_string(),
                vec!["3,01637037d6".to_string(), "3,01637037d7".to_string()]
            )]
        );
        j.end(n);
        assert!(read_own(&dir.path().join("uploads")).attempts.is_empty());
    }

    #[test]
    fn kept_notes_survive_rotation_and_full_ended_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let j = Journal::new(path.clone());
        let mut kept = j.begin("/t/kept\nwith a newline");
        assert!(j.chunk(&mut kept, "1,0a"));
        drop(kept);
        // Enough attempts to fill several segments, each ended.
        let long = "x".repeat(4000);
        for i in 0..3000 {
            let mut n = j.begin(&format!("/t/{long}/{i}"));
            assert!(j.chunk(&mut n, &format!("2,{i:x}")));
            j.end(n);
        }
        let names = segments(&path);
        // Only the current segment stays: it opened with the kept attempt's notes.
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(!names[0].ends_with("-0.log"), "{names:?}");
        let open = read_own(&path);
        assert_eq!(
            open.attempts,
            vec![(
                "/t/kept\nwith a newline".to_string(),
                vec!["1,0a".to_string()]
            )]
        );
        assert_eq!(open.unreadable, 0);
    }

    #[test]
    fn an_open_attempt_keeps_every_chunk_it_noted_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let j = Journal::new(path.clone());
        // Begun in segment 0, still open while others fill segments 1 and 2, noting a
        // chunk in each.
        let mut long_lived = j.begin("/t/big");
        assert!(j.chunk(&mut long_lived, "1,01"));
        let filler = "x".repeat(4000);
        for i in 0..2200 {
            let mut n = j.begin(&format!("/t/{filler}/{i}"));
            assert!(j.chunk(&mut n, &format!("2,{i:x}")));
            j.end(n);
            if i % 700 == 0 {
                assert!(j.chunk(&mut long_lived, &format!("1,{:x}", 0x100 + i)));
            }
        }
        let open = read_own(&path);
        assert_eq!(open.attempts.len(), 1, "{:?}", segments(&path));
        assert_eq!(
            open.attempts[0].1,
            vec!["1,01", "1,100", "1,3bc", "1,678", "1,934"],
            "a chunk noted in a later segment went with it: {:?}",
            segments(&path)
        );
        j.end(long_lived);
        assert!(read_own(&path).attempts.is_empty());
        assert_eq!(segments(&path).len(), 1, "only the current segment stays");
    }

    #[test]
    fn damaged_notes_are_counted_not_trusted() {
        let text = "b 1 \"/t/a\"\nf 1 \"3,01\"\nf 9 \"4,02\"\nb x \"/t/b\"\nzzz\nb 2 not-json\n\
                    f 1 \"3,02\"\ne 3 extra\nb 4 \"/t/c\"\nf 4 \"5,0";
        let found = parse(std::iter::once(text));
        assert_eq!(
            found.attempts,
            vec![(
                "/t/a".to_string(),
                vec!["3,01".to_string(), "3,02".to_string()]
            )]
        );
        // f 9 (no begin), b x, zzz, b 2 not-json, e 3 extra, the cut last line.
        assert_eq!(found.unreadable, 6);
        assert_eq!(parse(std::iter::once("\u{0}\u{1}garbage")).unreadable, 1);
    }

    #[test]
    fn the_per_attempt_files_of_earlier_versions_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0 is never a running process's.
        std::fs::write(dir.path().join("0-7.fids"), "/t/old\n3,01\n3,02\n").unwrap();
        std::fs::write(dir.path().join("0-8.fids"), "/t/none\n").unwrap();
        std::fs::write(
            dir.path().join("0-1-0.log"),
            "b 0 \"/t/new\"\nf 0 \"4,01\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("0-1-1.log"),
            "b 1 \"/t/done\"\nf 1 \"4,02\"\ne 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("unrelated.txt"),
            "b 0 \"/t/x\"\nf 0 \"1,1\"\n",
        )
        .unwrap();
        // This process's own (its prefix, as if it were "0-9") are not read.
        std::fs::write(
            dir.path().join("0-9-0.log"),
            "b 0 \"/t/mine\"\nf 0 \"6,01\"\n",
        )
        .unwrap();
        let groups = unsettled(dir.path(), Some("0-9")).unwrap();
        let mut all: Vec<(String, Vec<String>)> = groups
            .iter()
            .flat_map(|(_, u)| u.attempts.clone())
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("/t/new".to_string(), vec!["4,01".to_string()]),
                (
                    "/t/old".to_string(),
                    vec!["3,01".to_string(), "3,02".to_string()]
                ),
            ]
        );
        let files: usize = groups.iter().map(|(f, _)| f.len()).sum();
        assert_eq!(files, 4, "the unrelated file is not ours");
    }
}
