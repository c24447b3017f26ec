//! A seeded model test of convergence: a model of the source filer makes random changes
//! and publishes the events the real filer publishes for them (a directory rename is a
//! rename event for the directory and then one for every entry under it; a recursive
//! delete is a delete event for every entry, children first, all published before the
//! filer removes any of them; parents made on the way are create events). The events are keyed by path onto several partitions, and are
//! applied to the real local sink, through the planner and the convergence rules, in a
//! random interleaving of the partitions, while the source keeps changing, with crashes
//! that replay each partition from a random earlier position. At the end the sink must
//! hold exactly what the source holds: the same files with the same bytes, the same
//! directories, nothing else.
//!
//! The operation mix leans on the nasty cases: renaming a directory and re-creating its
//! old name, deleting after re-creating, renaming back and forth, renaming over an
//! existing file, moving out of scope and back in.
//!
//! `CONVERGE_SEEDS=N` runs N seeds (CI runs the default below) and `CONVERGE_SEED=S` one
//! seed; a failure prints its seed. Seeds that once failed are kept in `REGRESSIONS`.

use seaweed_replicate::event::mode;
use seaweed_replicate::filer::{FilerSource, ReadError, SourceOptions};
use seaweed_replicate::pb::{Entry, EventNotification, FuseAttributes};
use seaweed_replicate::replicate::Rules;
use seaweed_replicate::replicate::converge::{self, Applied, Paths, Truth};
use seaweed_replicate::sink::local::LocalSink;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Seeds that failed during development, run every time.
const REGRESSIONS: &[u64] = &[];
const DEFAULT_SEEDS: u64 = 200;
const PARTITIONS: usize = 3;

/// The source filer's namespace: full path -> entry (names are kept in the entries).
#[derive(Default, Clone)]
struct Namespace(BTreeMap<String, Entry>);

impl Namespace {
    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.0
            .keys()
            .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .cloned()
            .collect()
    }
}

struct SharedTruth(Arc<Mutex<Namespace>>);

#[async_trait::async_trait]
impl Truth for SharedTruth {
    async fn entry(&self, path: &str) -> Result<Option<Entry>, ReadError> {
        Ok(self.0.lock().unwrap().0.get(path).cloned())
    }
}

fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((d, _)) => d,
        None => "/",
    }
}

fn name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// The model filer: changes its namespace and records the events it publishes.
struct Filer {
    ns: Arc<Mutex<Namespace>>,
    events: Vec<(String, EventNotification)>,
    clock: i64,
    /// Entries a recursive delete has published as deleted but not yet removed.
    unfinished: Vec<String>,
}

impl Filer {
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        1_700_000_000 + self.clock
    }

    fn dir_entry(&mut self, path: &str) -> Entry {
        Entry {
            name: name(path).into(),
            is_directory: true,
            attributes: Some(FuseAttributes {
                mtime: self.tick(),
                file_mode: mode::DIR | 0o755,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn publish(&mut self, key: &str, old: Option<Entry>, new: Option<Entry>, new_parent: &str) {
        self.events.push((
            key.to_string(),
            EventNotification {
                old_entry: old,
                new_entry: new,
                new_parent_path: new_parent.to_string(),
                delete_chunks: true,
                ..Default::default()
            },
        ));
    }

    fn get(&self, path: &str) -> Option<Entry> {
        self.ns.lock().unwrap().0.get(path).cloned()
    }

    fn set(&self, path: &str, e: Option<Entry>) {
        let mut ns = self.ns.lock().unwrap();
        match e {
            Some(e) => ns.0.insert(path.to_string(), e),
            None => ns.0.remove(path),
        };
    }

    /// Make the parents of `path` that are missing, as the filer does (one create event
    /// each); false if a parent is a file.
    fn mkdirs(&mut self, path: &str) -> bool {
        let p = parent(path);
        if p == "/" {
            return true;
        }
        match self.get(p) {
            Some(e) => e.is_directory,
            None => {
                if !self.mkdirs(p) {
                    return false;
                }
                let e = self.dir_entry(p);
                self.set(p, Some(e.clone()));
                self.publish(p, None, Some(e), parent(p));
                true
            }
        }
    }

    fn write(&mut self, path: &str, content: Vec<u8>) {
        self.finish();
        if matches!(self.get(path), Some(e) if e.is_directory) || !self.mkdirs(path) {
            return;
        }
        let mtime = self.tick();
        let e = Entry {
            name: name(path).into(),
            attributes: Some(FuseAttributes {
                mtime,
                file_size: content.len() as u64,
                file_mode: 0o644,
                ..Default::default()
            }),
            content,
            ..Default::default()
        };
        let old = self.get(path);
        self.set(path, Some(e.clone()));
        self.publish(path, old, Some(e), parent(path));
    }

    fn mkdir(&mut self, path: &str) {
        self.finish();
        if self.get(path).is_some() || !self.mkdirs(path) {
            return;
        }
        let e = self.dir_entry(path);
        self.set(path, Some(e.clone()));
        self.publish(path, None, Some(e), parent(path));
    }

    /// Finish what the last change left unfinished: the client's next change comes only
    /// after the filer answered the last one.
    fn finish(&mut self) {
        for p in std::mem::take(&mut self.unfinished) {
            self.set(&p, None);
        }
    }

    /// Delete: a file is removed, then its event published. A directory's delete is
    /// recursive, and as `doBatchDeleteFolderMetaAndData` does it: every file's event,
    /// each subdirectory's after its children, the directory's own last, all published
    /// while the entries are still there; they go when the delete finishes (see
    /// [`Filer::finish`]), so an event may be applied while the source still holds
    /// the very entry it says was deleted.
    fn delete(&mut self, path: &str) {
        self.finish();
        let Some(e) = self.get(path) else { return };
        if e.is_directory {
            self.publish_tree_deleted(path, e);
        } else {
            self.set(path, None);
            self.publish(path, Some(e), None, "");
        }
    }

    fn publish_tree_deleted(&mut self, path: &str, e: Entry) {
        if e.is_directory {
            let children = self.ns.lock().unwrap().children(path);
            for c in children {
                let child = self.get(&c).expect("listed");
                self.publish_tree_deleted(&c, child);
            }
        }
        self.unfinished.push(path.to_string());
        self.publish(path, Some(e), None, "");
    }

    /// A rename as `AtomicRenameEntry` does it: an existing file at the target is
    /// deleted (its own event), then the entry's rename event, then its children's.
    fn rename(&mut self, from: &str, to: &str) {
        self.finish();
        let Some(e) = self.get(from) else { return };
        if to == from || to.starts_with(&format!("{from}/")) || !self.mkdirs(to) {
            return;
        }
        if let Some(existing) = self.get(to) {
            if existing.is_directory || e.is_directory {
                return;
            }
            self.set(to, None);
            self.publish(to, Some(existing), None, "");
        }
        self.move_entry(from, to);
    }

    fn move_entry(&mut self, from: &str, to: &str) {
        let e = self.get(from).expect("moved entry exists");
        let mut moved = e.clone();
        moved.name = name(to).into();
        self.set(to, Some(moved.clone()));
        self.publish(from, Some(e.clone()), Some(moved), parent(to));
        if e.is_directory {
            let children = self.ns.lock().unwrap().children(from);
            for c in children {
                self.move_entry(&c, &format!("{to}/{}", name(&c)));
            }
        }
        self.set(from, None);
    }
}

/// The names the operations pick from: few, so that they collide often.
const DIRS: &[&str] = &[
    "/data/A",
    "/data/B",
    "/data/A/s",
    "/data/C",
    "/data/skip",
    "/out",
];
const FILES: &[&str] = &["x", "y", "z"];

fn random_dir(rng: &mut fastrand::Rng) -> String {
    DIRS[rng.usize(..DIRS.len())].to_string()
}

fn random_file(rng: &mut fastrand::Rng) -> String {
    format!("{}/{}", random_dir(rng), FILES[rng.usize(..FILES.len())])
}

/// One random change on the source, nasty ones often.
fn random_change(filer: &mut Filer, rng: &mut fastrand::Rng) {
    let content = |rng: &mut fastrand::Rng| {
        let n = rng.usize(0..40);
        (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>()
    };
    match rng.u32(0..100) {
        0..=29 => {
            let f = random_file(rng);
            let c = content(rng);
            filer.write(&f, c);
        }
        30..=37 => filer.mkdir(&random_dir(rng)),
        38..=49 => filer.delete(&random_file(rng)),
        50..=57 => filer.delete(&random_dir(rng)),
        58..=67 => {
            let (a, b) = (random_file(rng), random_file(rng));
            filer.rename(&a, &b);
        }
        68..=79 => {
            // A directory renamed, and its old name re-created right after.
            let (a, b) = (random_dir(rng), random_dir(rng));
            filer.rename(&a, &b);
            if rng.bool() {
                let f = format!("{a}/{}", FILES[rng.usize(..FILES.len())]);
                let c = content(rng);
                filer.write(&f, c);
            }
        }
        80..=89 => {
            // Back and forth.
            let (a, b) = (random_dir(rng), random_dir(rng));
            filer.rename(&a, &b);
            filer.rename(&b, &a);
        }
        _ => {
            // Re-create, then delete.
            let f = random_file(rng);
            let c = content(rng);
            filer.write(&f, c);
            filer.delete(&f);
        }
    }
}

fn partition_of(key: &str) -> usize {
    // Any stable hash will do: the point is that related keys land apart.
    key.bytes()
        .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % PARTITIONS
}

/// What the sink should hold: every entry under /data except /data/skip, by path
/// relative to /data, with the bytes of files.
fn expected(ns: &Namespace) -> BTreeMap<String, Option<Vec<u8>>> {
    ns.0.iter()
        .filter_map(|(p, e)| {
            let rel = p.strip_prefix("/data/")?;
            if rel == "skip" || rel.starts_with("skip/") {
                return None;
            }
            Some((
                rel.to_string(),
                (!e.is_directory).then(|| e.content.clone()),
            ))
        })
        .collect()
}

fn on_disk(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &e.path(), out);
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn rules() -> Rules {
    Rules {
        source_dir: vec!["data".into()],
        excludes: vec![vec!["data".into(), "skip".into()]],
        filter: Default::default(),
        sink_dir: "/".into(),
        incremental: false,
        keep_deletes: false,
        trash_dir: None,
        skip_other_cluster: false,
        skip_signatures: vec![],
    }
}

/// A partition as a consumer sees it: the next event to apply and the committed offset.
#[derive(Default, Clone, Copy)]
struct Cursor {
    next: usize,
    committed: usize,
}

/// The model filer, the real local sink in a temporary folder, and the partitions
/// between them.
struct Bed {
    ns: Arc<Mutex<Namespace>>,
    filer: Filer,
    dir: tempfile::TempDir,
    sink: LocalSink,
    rules: Rules,
    queues: Vec<Vec<(String, EventNotification)>>,
    cursors: Vec<Cursor>,
    /// One partition: the metadata log, applied with `in_order` (no lookups before
    /// creates and updates).
    ordered: bool,
    published: usize,
    trace: Vec<String>,
}

impl Bed {
    fn new() -> Bed {
        Bed::with(false)
    }

    /// `ordered`: one stream, as the metadata log, instead of [`PARTITIONS`] partitions.
    fn with(ordered: bool) -> Bed {
        let partitions = if ordered { 1 } else { PARTITIONS };
        let ns = Arc::new(Mutex::new(Namespace::default()));
        let mut filer = Filer {
            ns: ns.clone(),
            events: Vec::new(),
            clock: 0,
            unfinished: Vec::new(),
        };
        filer.mkdir("/data");
        filer.mkdir("/out");
        let dir = tempfile::tempdir().unwrap();
        // Entries carry their bytes inline, so the sink never reads a volume server; the
        // source it is given is never called.
        let source = FilerSource::new(
            SourceOptions::plain("127.0.0.1:9"),
            seaweed_replicate::http::plain(),
        )
        .unwrap();
        let sink = LocalSink::new("local", dir.path().to_path_buf(), Arc::new(source));
        Bed {
            ns,
            filer,
            dir,
            sink,
            rules: rules(),
            queues: vec![Vec::new(); partitions],
            cursors: vec![Cursor::default(); partitions],
            ordered,
            published: 0,
            trace: Vec::new(),
        }
    }

    /// Hand what the filer published since the last call to the partitions.
    fn publish(&mut self) {
        for (key, ev) in self.filer.events[self.published..].iter().cloned() {
            let p = if self.ordered { 0 } else { partition_of(&key) };
            self.queues[p].push((key, ev));
        }
        self.published = self.filer.events.len();
    }

    fn pending(&self) -> Vec<usize> {
        (0..self.queues.len())
            .filter(|p| self.cursors[*p].next < self.queues[*p].len())
            .collect()
    }

    /// Apply the next event of partition `p`.
    async fn step(&mut self, p: usize) -> Result<(), String> {
        let (key, ev) = self.queues[p][self.cursors[p].next].clone();
        self.cursors[p].next += 1;
        self.trace.push(format!("p{p} {key} {}", describe(&ev)));
        let plan = self
            .rules
            .plan(&key, &ev)
            .map_err(|e| format!("plan {key}: {e}"))?;
        let truth = SharedTruth(self.ns.clone());
        let applied = converge::apply(
            &plan,
            &Paths::of(&key, &ev),
            &self.rules,
            &truth,
            &self.sink,
            &[],
            self.ordered,
        )
        .await
        .map_err(|e| format!("apply {key}: {e}"))?;
        if applied == Applied::NotYet {
            // The pipeline applies it again shortly; here, at a later step.
            self.cursors[p].next -= 1;
            self.trace.push(format!("p{p} {key}: not yet"));
        }
        Ok(())
    }

    /// Apply everything published, partition by partition.
    async fn drain(&mut self) -> Result<(), String> {
        self.filer.finish();
        self.publish();
        while let Some(&p) = self.pending().first() {
            self.step(p).await?;
        }
        Ok(())
    }

    /// Every partition starts again from `to(committed)`.
    fn crash(&mut self, mut to: impl FnMut(usize) -> usize) {
        for c in self.cursors.iter_mut() {
            c.next = to(c.committed);
            c.committed = c.next;
        }
        self.trace.push("crash".to_string());
    }

    /// The sink against the source: `Err` lists every difference. With a trash, the
    /// mirror beside it (what the trash holds is not the source's).
    fn check(&self) -> Result<(), String> {
        let want = expected(&self.ns.lock().unwrap());
        let mut got = on_disk(self.dir.path());
        if let Some(trash) = &self.rules.trash_dir {
            got.retain(|k, _| k != trash && !k.starts_with(&format!("{trash}/")));
        }
        if want == got {
            return Ok(());
        }
        let mut diff = String::new();
        for (k, v) in &want {
            match got.get(k) {
                None => diff += &format!("  missing {k}\n"),
                Some(g) if g != v => diff += &format!("  differs {k}\n"),
                _ => {}
            }
        }
        for k in got.keys().filter(|k| !want.contains_key(*k)) {
            diff += &format!("  extra   {k}\n");
        }
        let tail: Vec<&str> = self
            .trace
            .iter()
            .rev()
            .take(60)
            .map(|s| s.as_str())
            .collect();
        Err(format!(
            "the sink differs from the source:\n{diff}last steps (newest first):\n  {}",
            tail.join("\n  ")
        ))
    }
}

async fn run_seed(seed: u64) -> Result<(), String> {
    run_seed_with(seed, None, false).await
}

/// One seed, with `deletes = "trash"` into `trash` if given, on one ordered stream if
/// `ordered`.
async fn run_seed_with(seed: u64, trash: Option<&str>, ordered: bool) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bed = Bed::with(ordered);
    bed.rules.trash_dir = trash.map(String::from);
    let changes = 40 + rng.usize(0..40);
    let mut made = 0;
    let fail = |e: String| format!("seed {seed}: {e}");
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > 100_000 {
            return Err(fail(format!(
                "no end after {rounds} rounds; last steps (newest first):\n  {}",
                bed.trace
                    .iter()
                    .rev()
                    .take(40)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )));
        }
        if made == changes {
            // The last change's answer came back: whatever it left unfinished is done.
            bed.filer.finish();
        }
        bed.publish();
        let pending = bed.pending();
        if made == changes && pending.is_empty() {
            break;
        }
        match rng.u32(0..100) {
            0..=29 if made < changes => {
                random_change(&mut bed.filer, &mut rng);
                made += 1;
            }
            30..=33 => {
                // A crash: every partition replays from its committed offset, or from
                // anywhere earlier (an old offset file, a rewound group).
                let mut r = rng.fork();
                bed.crash(|committed| {
                    if r.u32(0..3) == 0 {
                        r.usize(0..=committed)
                    } else {
                        committed
                    }
                });
            }
            34..=45 => {
                let p = rng.usize(0..bed.queues.len());
                bed.cursors[p].committed = bed.cursors[p].next;
            }
            _ if !pending.is_empty() => {
                let p = pending[rng.usize(0..pending.len())];
                bed.step(p).await.map_err(fail)?;
            }
            _ if made < changes => {
                random_change(&mut bed.filer, &mut rng);
                made += 1;
            }
            _ => {}
        }
    }
    bed.check().map_err(fail)
}

fn describe(ev: &EventNotification) -> String {
    match (&ev.old_entry, &ev.new_entry) {
        (None, Some(_)) => "create".into(),
        (Some(_), None) => "delete".into(),
        (Some(_), Some(n)) => format!("rename/update -> {}/{}", ev.new_parent_path, n.name),
        _ => "empty".into(),
    }
}

/// `CONVERGE_SEED`, or the regressions and seeds 1..=`CONVERGE_SEEDS` (default
/// [`DEFAULT_SEEDS`]).
fn seeds() -> Vec<u64> {
    match std::env::var("CONVERGE_SEED") {
        Ok(s) => vec![s.parse().expect("CONVERGE_SEED is a number")],
        Err(_) => {
            let n = std::env::var("CONVERGE_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            REGRESSIONS.iter().copied().chain(1..=n).collect()
        }
    }
}

#[tokio::test]
async fn replays_in_any_interleaving_converge_to_the_source() {
    let mut failures = Vec::new();
    for seed in seeds() {
        if let Err(e) = run_seed(seed).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed (rerun one with CONVERGE_SEED=S):\n{}",
        failures.len(),
        failures.first().unwrap()
    );
}

/// One ordered stream, as the metadata log: creates and updates are written as the event
/// carries them, without asking the source (`in_order`), and crashes replay the stream
/// from any earlier position. The sink must still end equal to the source, with and
/// without a trash.
#[tokio::test]
async fn one_ordered_stream_applied_without_lookups_converges() {
    let mut failures = Vec::new();
    for seed in seeds() {
        for trash in [None, Some(".trash")] {
            if let Err(e) = run_seed_with(seed, trash, true).await {
                failures.push(format!("trash {trash:?}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed on one ordered stream (rerun one with CONVERGE_SEED=S):\n{}",
        failures.len(),
        failures.first().unwrap()
    );
}

/// The same under `deletes = "trash"`: deletes move into the trash instead, and the
/// mirror beside it still converges (a replayed delete finds nothing to move; a path
/// deleted again moves again).
#[tokio::test]
async fn with_a_trash_replays_in_any_interleaving_converge_to_the_source() {
    let n = std::env::var("CONVERGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS / 2);
    let mut failures = Vec::new();
    for seed in REGRESSIONS.iter().copied().chain(1..=n) {
        if let Err(e) = run_seed_with(seed, Some(".trash"), false).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed with a trash:\n{}",
        failures.len(),
        failures.first().unwrap()
    );
}

/// Under a trash, a file renamed and then deleted before either event is applied still
/// reaches the trash: the sink's copy under the old name is all it has of it. (Applied
/// in order: the rename finds its new name gone, so nothing is written there, and the
/// old name's copy is removed as a delete is, into the trash.)
#[tokio::test]
async fn with_a_trash_a_file_renamed_then_deleted_is_kept_in_the_trash() {
    for delete_first in [false, true] {
        let mut bed = Bed::new();
        bed.rules.trash_dir = Some(".trash".into());
        bed.filer.write("/data/o", b"only copy".to_vec());
        bed.drain().await.unwrap();
        bed.filer.rename("/data/o", "/data/n");
        bed.filer.delete("/data/n");
        bed.publish();
        let (po, pn) = (partition_of("/data/o"), partition_of("/data/n"));
        if delete_first {
            bed.step(pn).await.unwrap();
            bed.step(po).await.unwrap();
        } else {
            bed.step(po).await.unwrap();
            bed.step(pn).await.unwrap();
        }
        bed.check().unwrap();
        let kept: Vec<Vec<u8>> = on_disk(&bed.dir.path().join(".trash"))
            .into_values()
            .flatten()
            .collect();
        assert_eq!(
            kept,
            vec![b"only copy".to_vec()],
            "delete first: {delete_first}"
        );
    }
}

/// A directory rename replayed after files were created under the old name: create
/// A/x, rename A to B, create A/y, all applied; a crash before any commit; A/y deleted
/// on the source; everything replayed. Moving the sink's A as a whole would carry y
/// into B, a file the source never had there.
#[tokio::test]
async fn a_replayed_directory_rename_carries_nothing_created_later() {
    let mut bed = Bed::new();
    bed.filer.write("/data/A/x", b"x".to_vec());
    bed.filer.rename("/data/A", "/data/B");
    bed.filer.write("/data/A/y", b"y".to_vec());
    bed.drain().await.unwrap();
    bed.check().unwrap();
    bed.crash(|_| 0);
    bed.filer.delete("/data/A/y");
    bed.drain().await.unwrap();
    bed.check().unwrap();
    assert!(!bed.dir.path().join("B/y").exists());
}

/// A rename and a later delete of its new name, on two partitions, the delete applied
/// first: the rename must not bring the deleted file back.
#[tokio::test]
async fn a_rename_after_the_delete_of_its_new_name_resurrects_nothing() {
    let mut bed = Bed::new();
    bed.filer.write("/data/o", b"o".to_vec());
    bed.drain().await.unwrap();
    bed.filer.rename("/data/o", "/data/n");
    bed.filer.delete("/data/n");
    bed.publish();
    let (po, pn) = (partition_of("/data/o"), partition_of("/data/n"));
    assert_ne!(po, pn, "the two keys must sit on different partitions");
    bed.step(pn).await.unwrap();
    bed.step(po).await.unwrap();
    bed.check().unwrap();
    assert!(!bed.dir.path().join("n").exists() && !bed.dir.path().join("o").exists());
}

/// Renamed back and forth on two partitions, the second rename applied first: the file
/// ends under its first name with its bytes.
#[tokio::test]
async fn back_and_forth_renames_applied_in_reverse_converge() {
    let mut bed = Bed::new();
    bed.filer.write("/data/o", b"o".to_vec());
    bed.drain().await.unwrap();
    bed.filer.rename("/data/o", "/data/n");
    bed.filer.rename("/data/n", "/data/o");
    bed.publish();
    bed.step(partition_of("/data/n")).await.unwrap();
    bed.step(partition_of("/data/o")).await.unwrap();
    bed.check().unwrap();
    assert_eq!(std::fs::read(bed.dir.path().join("o")).unwrap(), b"o");
}

/// A directory deleted and made again at once, its delete events applied while the
/// filer still holds the entries (it publishes them all before it removes any): the
/// files must not stay on the sink. Taken for entries the source holds again, they
/// stayed for good, and the directory's own delete, overtaken by the new directory,
/// left them there (found by `reliability::survives_repeated_kill_9_while_draining`).
#[tokio::test]
async fn a_delete_applied_before_the_filer_finished_it_leaves_nothing_behind() {
    let mut bed = Bed::new();
    bed.filer.write("/data/A/x", b"x".to_vec());
    bed.filer.write("/data/A/s/y", b"y".to_vec());
    bed.drain().await.unwrap();
    bed.filer.delete("/data/A");
    bed.publish();
    // The first events of each partition, applied while the source still holds them.
    for _ in 0..3 {
        for p in bed.pending() {
            bed.step(p).await.unwrap();
        }
    }
    assert!(
        bed.trace.iter().filter(|t| t.ends_with("not yet")).count() >= 1,
        "{:?}",
        bed.trace
    );
    bed.filer.write("/data/A/z", b"z".to_vec());
    bed.drain().await.unwrap();
    bed.check().unwrap();
    assert!(!bed.dir.path().join("A/x").exists() && !bed.dir.path().join("A/s").exists());
}
