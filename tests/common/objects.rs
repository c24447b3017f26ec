//! One conformance suite for the object-store sinks (S3, GCS, ...): the same scenario end
//! to end (real filer -> broker -> replicate -> store), checked through each store's API.

use super::*;
use seaweed_replicate::pb;

/// What the suite needs to read back from a store.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Every object whose name starts with `prefix`, with its bytes.
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>>;
    /// Content type, the stored source mtime, and a marker that changes on every write.
    async fn info(&self, name: &str) -> Option<ObjectInfo>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub content_type: Option<String>,
    pub mtime: Option<String>,
    pub version: String,
}

/// Builds a `[sink.*]` section from a sink directory and the incremental flag.
pub type SectionFn = Box<dyn Fn(&str, bool) -> String + Send + Sync>;

/// One store under test.
pub struct StoreUnderTest {
    pub label: String,
    pub store: Box<dyn ObjectStore>,
    /// The `[sink.*]` section for a sink directory and incremental flag.
    pub section: SectionFn,
    /// The object-name prefix a sink directory maps to (`/backup` -> `backup/` for S3).
    pub prefix: fn(&str) -> String,
}

async fn expected(bed: &TestBed, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    expected_from(bed, "/data", prefix).await
}

/// The source files under `root`, named as a sink with object-name prefix `prefix`
/// names them.
async fn expected_from(bed: &TestBed, root: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    bed.tree(root, &[])
        .await
        .into_iter()
        .filter_map(|(k, v)| v.map(|b| (format!("{prefix}{k}"), b)))
        .collect()
}

async fn converge(bed: &TestBed, s: &StoreUnderTest, prefix: &str, log: &Path) {
    converge_from(bed, "/data", s, prefix, log).await
}

/// Wait until the store under `prefix` holds what the source holds under `root`.
async fn converge_from(bed: &TestBed, root: &str, s: &StoreUnderTest, prefix: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (want, got) = (
            expected_from(bed, root, prefix).await,
            s.store.objects(prefix).await,
        );
        if want == got {
            return;
        }
        let wrong: Vec<_> = want
            .keys()
            .filter(|k| got.get(*k) != want.get(*k))
            .collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            Instant::now() < deadline,
            "{} never matched the source: missing or different {wrong:?}, unexpected {extra:?}\n{}",
            s.label,
            tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The scenario: create (small, zero-byte, 65 MiB multi-chunk, inline content), then
/// overwrite, rename, delete a file, delete a directory; content type and stored mtime;
/// incremental layout and its retention; a full replay (offsets removed) that writes
/// nothing again.
pub async fn conformance(bed: &TestBed, stores: Vec<StoreUnderTest>) {
    bed.upload("/data/notes.txt", b"first version of the notes", "")
        .await;
    bed.upload("/data/empty.bin", b"", "").await;
    bed.upload(
        "/data/big/large.bin",
        &bytes(81, 65 * 1024 * 1024 + 123),
        "maxMB=4",
    )
    .await;
    bed.upload("/data/dir/one.txt", b"one", "").await;
    bed.upload("/data/dir/two.txt", b"two", "").await;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "inline.txt".into(),
            content: b"stored inline in the filer".to_vec(),
            attributes: Some(pb::FuseAttributes {
                file_size: 26,
                file_mode: 0o644,
                mtime: 1_700_000_000,
                mime: "text/plain".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let works: Vec<Workdir> = stores
        .iter()
        .map(|s| Workdir::with_sink(bed, "/data", &(s.section)("/backup", false), ""))
        .collect();
    let reps: Vec<Replicator> = works.iter().map(Replicator::start).collect();
    let incs: Vec<Workdir> = stores
        .iter()
        .map(|s| Workdir::with_sink(bed, "/data", &(s.section)("/inc", true), ""))
        .collect();
    let inc_reps: Vec<Replicator> = incs.iter().map(Replicator::start).collect();
    for (s, w) in stores.iter().zip(&works) {
        converge(bed, s, &(s.prefix)("/backup"), &w.log()).await;
    }

    bed.upload(
        "/data/notes.txt",
        b"second, longer version of the notes",
        "",
    )
    .await;
    bed.mv("/data/notes.txt", "/data/moved/notes.txt").await;
    bed.delete("/data/empty.bin", false).await;
    bed.delete("/data/dir", true).await;
    for (s, w) in stores.iter().zip(&works) {
        converge(bed, s, &(s.prefix)("/backup"), &w.log()).await;
    }

    let src = bed.entry("/data/big/large.bin").await;
    let src_mtime = chrono::DateTime::parse_from_rfc3339(src["Mtime"].as_str().unwrap())
        .unwrap()
        .timestamp()
        .to_string();
    let day = local_day(bed, "/data/big/large.bin").await;
    for (s, inc) in stores.iter().zip(&incs) {
        let p = (s.prefix)("/backup");
        let inline = s
            .store
            .info(&format!("{p}inline.txt"))
            .await
            .expect("inline.txt stored");
        assert_eq!(
            inline.content_type.as_deref(),
            Some("text/plain"),
            "{}",
            s.label
        );
        assert_eq!(inline.mtime.as_deref(), Some("1700000000"), "{}", s.label);
        let large = s
            .store
            .info(&format!("{p}big/large.bin"))
            .await
            .expect("large.bin stored");
        assert_eq!(
            large.mtime.as_deref(),
            Some(src_mtime.as_str()),
            "{}",
            s.label
        );
        let inc_name = format!("{}{day}/big/large.bin", (s.prefix)("/inc"));
        assert!(
            eventually(Duration::from_secs(60), || async {
                s.store.info(&inc_name).await.is_some()
            })
            .await,
            "{}: incremental layout lacks {inc_name}\n{}",
            s.label,
            tail(&inc.log(), 20)
        );
    }
    for r in inc_reps {
        r.stop();
    }
    // retention_days: inline.txt's dated copy (its mtime is in 2023) is older than 30 days
    // and goes, whole, at start; today's copies stay.
    let old_day = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d")
        .to_string();
    for (s, inc) in stores.iter().zip(&incs) {
        let p = (s.prefix)("/inc");
        let old = format!("{p}{old_day}/");
        assert!(
            !s.store.objects(&old).await.is_empty(),
            "{}: no dated copy under {old}",
            s.label
        );
        let config = inc.path().join("replication.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replacen("[source.filer]", "retention_days = 30\n\n[source.filer]", 1),
        )
        .unwrap();
        let r = Replicator::start(inc);
        assert!(
            eventually(Duration::from_secs(60), || async {
                s.store.objects(&old).await.is_empty()
            })
            .await,
            "{}: {old} outlived retention_days\n{}",
            s.label,
            tail(&inc.log(), 20)
        );
        let today = format!("{p}{day}/big/large.bin");
        assert!(
            s.store.info(&today).await.is_some(),
            "{}: {today} went too",
            s.label
        );
        assert!(r.stop().0.success(), "{}", tail(&inc.log(), 20));
    }

    // Replay everything: unchanged objects are not written again.
    let mut reps: Vec<Option<Replicator>> = reps.into_iter().map(Some).collect();
    for (i, s) in stores.iter().enumerate() {
        let p = (s.prefix)("/backup");
        let before = s.store.info(&format!("{p}big/large.bin")).await.unwrap();
        let (status, _) = reps[i].take().unwrap().stop();
        assert!(status.success());
        std::fs::remove_file(works[i].path().join("last.offset")).unwrap();
        std::fs::write(works[i].log(), "").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        reps[i] = Some(Replicator::start(&works[i]));
        bed.upload(
            &format!("/data/after-replay-{i}.txt"),
            b"marks the end of the replay",
            "",
        )
        .await;
        converge(bed, s, &p, &works[i].log()).await;
        let after = s.store.info(&format!("{p}big/large.bin")).await.unwrap();
        assert_eq!(
            before.version, after.version,
            "{}: a replayed version was written again",
            s.label
        );
        assert!(
            std::fs::read_to_string(works[i].log())
                .unwrap()
                .contains("already holds this version"),
            "{}",
            s.label
        );
    }
    for (w, r) in works.iter().zip(reps) {
        let (status, _) = r.unwrap().stop();
        assert!(status.success());
        assert!(
            !w.path().join("replicate.parked.jsonl").exists(),
            "{}",
            tail(&w.log(), 20)
        );
    }

    // Operations on the stopped replicas: backfill completes each (some uploads above
    // may not have reached every store before its replicator stopped), verify then
    // finds them equal by content; a file created and one deleted while nothing
    // replicates are found, and -repair puts them right.
    for (s, w) in stores.iter().zip(&works) {
        let o = replicate_in(w.path(), &["backfill"]);
        assert!(o.status.success(), "{}: backfill: {}", s.label, output(&o));
        let o = replicate_in(w.path(), &["verify"]);
        assert!(
            o.status.success() && output(&o).contains("the sink matches"),
            "{}: verify: {}",
            s.label,
            output(&o)
        );
    }
    bed.upload("/data/unreplicated.txt", b"created while nothing ran", "")
        .await;
    bed.delete("/data/inline.txt", false).await;
    for (s, w) in stores.iter().zip(&works) {
        let o = replicate_in(w.path(), &["verify", "-size-only"]);
        let out = output(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {out}", s.label);
        assert!(
            out.contains("  missing   (25 B)  unreplicated.txt")
                && out.contains("  extra     (26 B)  inline.txt")
                && out.contains("1 missing, 1 extra, 0 differing"),
            "{}: {out}",
            s.label
        );
        let o = replicate_in(w.path(), &["verify", "-repair", "-delete", "-size-only"]);
        assert!(
            o.status.success() && output(&o).contains("repaired 2 of 2 differences"),
            "{}: {}",
            s.label,
            output(&o)
        );
        let p = (s.prefix)("/backup");
        let objects = s.store.objects(&p).await;
        assert_eq!(
            objects
                .get(&format!("{p}unreplicated.txt"))
                .map(Vec::as_slice),
            Some(&b"created while nothing ran"[..]),
            "{}",
            s.label
        );
        assert!(
            !objects.contains_key(&format!("{p}inline.txt")),
            "{}",
            s.label
        );
    }

    trash(bed, &stores).await;
}

/// What a trash holds under `prefix` (the sink directory's object prefix), by the path
/// below the day of the delete (the day itself is left out: a run may cross midnight).
pub async fn trashed(s: &StoreUnderTest, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let trash = format!("{prefix}.replicate-trash/");
    s.store
        .objects(&trash)
        .await
        .into_iter()
        .filter_map(|(name, bytes)| {
            let (_day, rest) = name[trash.len()..].split_once('/')?;
            Some((rest.to_string(), bytes))
        })
        .collect()
}

/// `deletes = "trash"`: a deleted file and a deleted directory (with everything under
/// it) move under `.replicate-trash/<day>/`, copied inside the store, and are gone from
/// the mirror, which otherwise equals the source (a folder of its own, so that the
/// large files above are not copied to every store again).
async fn trash(bed: &TestBed, stores: &[StoreUnderTest]) {
    bed.upload("/bin/gone.txt", b"deleted file", "").await;
    bed.upload("/bin/gone/one.txt", b"one under a deleted directory", "")
        .await;
    bed.upload("/bin/gone/sub/two.txt", b"two, deeper", "")
        .await;
    let works: Vec<Workdir> = stores
        .iter()
        .map(|s| {
            let section = format!("{}\ndeletes = \"trash\"\n", (s.section)("/tr", false));
            Workdir::with_sink(bed, "/bin", &section, "")
        })
        .collect();
    let reps: Vec<Replicator> = works.iter().map(Replicator::start).collect();
    for (s, w) in stores.iter().zip(&works) {
        converge_from(bed, "/bin", s, &(s.prefix)("/tr"), &w.log()).await;
    }
    bed.delete("/bin/gone.txt", false).await;
    bed.delete("/bin/gone", true).await;
    bed.upload("/bin/stays.txt", b"stays", "").await;
    let want: BTreeMap<String, Vec<u8>> = [
        ("gone.txt", &b"deleted file"[..]),
        ("gone/one.txt", b"one under a deleted directory"),
        ("gone/sub/two.txt", b"two, deeper"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_vec()))
    .collect();
    for (s, w) in stores.iter().zip(&works) {
        let p = (s.prefix)("/tr");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mirror: BTreeMap<String, Vec<u8>> = s
                .store
                .objects(&p)
                .await
                .into_iter()
                .filter(|(k, _)| !k.starts_with(&format!("{p}.replicate-trash/")))
                .collect();
            let in_trash = trashed(s, &p).await;
            if in_trash == want && mirror == expected_from(bed, "/bin", &p).await {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the trash holds {:?}\n{}",
                s.label,
                in_trash.keys().collect::<Vec<_>>(),
                tail(&w.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for (w, r) in works.iter().zip(reps) {
        assert!(r.stop().0.success(), "{}", tail(&w.log(), 20));
        assert!(
            !w.path().join("replicate.parked.jsonl").exists(),
            "{}",
            tail(&w.log(), 20)
        );
        // The trash is not the mirror's business: verify finds them equal.
        let o = replicate_in(w.path(), &["verify", "-size-only"]);
        assert!(o.status.success(), "{}", output(&o));
    }
}
