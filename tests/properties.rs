//! Properties over what a hostile or broken message controls: event decoding, the
//! mapping of filer paths to sink paths, and chunk manifest resolution. None may panic;
//! no planned sink path may leave the sink root; resolution always ends.
//!
//! `PROPTEST_CASES` sets the cases per property (CI runs the default below). The corpus
//! in `tests/fixtures/corpus/` (raw messages: protobuf and garbage) runs every time, and
//! proptest keeps any failure it finds in `tests/proptest-regressions/`.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use prost::Message;
use seaweed_replicate::event::{self, RawEvent};
use seaweed_replicate::filer::{MAX_MANIFEST_DEPTH, ReadError, resolve_manifests_with};
use seaweed_replicate::path::check_name;
use seaweed_replicate::pb;
use seaweed_replicate::replicate::{Plan, Rules, SinkKey};
use seaweed_replicate::sink::local::local_name;
use std::collections::HashMap;

fn rules(incremental: bool) -> Rules {
    Rules {
        source_dir: vec!["data".into()],
        excludes: vec![vec!["data".into(), "skip".into()]],
        filter: Default::default(),
        sink_dir: "/backup".into(),
        incremental,
        keep_deletes: false,
        trash_dir: None,
        skip_other_cluster: false,
        skip_signatures: vec![],
    }
}

/// Every key a plan would touch stays under the sink root: each component is a plain
/// name, and the local sink's file name for it is one path component of at most 255 bytes.
fn assert_safe(key: &SinkKey) {
    for c in &key.rel {
        assert!(check_name(c).is_ok(), "unsafe component {c:?} in {key:?}");
        let local = local_name(c);
        assert!(
            !local.contains('/') && local != ".." && local != "." && local.len() <= 255,
            "local name {local:?} for {c:?}"
        );
    }
}

fn check_message(key: &str, payload: &[u8]) {
    let raw = RawEvent::new(key, Bytes::copy_from_slice(payload));
    let _ = seaweed_replicate::lane::paths_of(&raw);
    let Ok(ev) = event::decode(payload) else {
        return;
    };
    for incremental in [false, true] {
        match rules(incremental).plan(key, &ev) {
            Ok(Plan::Skip(_)) | Err(_) => {}
            Ok(Plan::Create { key, .. }) => assert_safe(&key),
            Ok(Plan::Delete { key, .. }) => assert_safe(&key),
            Ok(Plan::Move { old, new, .. }) => {
                assert_safe(&old);
                assert_safe(&new);
            }
            Ok(Plan::Update {
                key, new_parent, ..
            }) => {
                assert_safe(&key);
                assert_safe(&new_parent);
            }
        }
    }
}

/// Names as an attacker would pick them.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("/".to_string()),
        Just("a/../../b".to_string()),
        Just("/etc/passwd".to_string()),
        Just("nul\0byte".to_string()),
        Just("x".repeat(4096)),
        Just("é".repeat(200)),
        "[a-z./\\\\\0]{1,12}",
        "[a-z]{1,8}",
    ]
}

fn dir() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/data".to_string()),
        Just("/data/sub".to_string()),
        Just("/data/../etc".to_string()),
        Just("/".to_string()),
        Just(String::new()),
        Just("/elsewhere".to_string()),
        Just("/data/skip".to_string()),
        Just("data/relative".to_string()),
        "(/[a-z.]{1,4}){0,4}",
    ]
}

fn entry() -> impl Strategy<Value = Option<pb::Entry>> {
    proptest::option::of(
        (name(), any::<bool>(), 0u64..10_000, any::<bool>()).prop_map(
            |(name, is_directory, size, with_content)| pb::Entry {
                name,
                is_directory,
                content: if with_content { vec![1; 10] } else { vec![] },
                attributes: Some(pb::FuseAttributes {
                    file_size: size,
                    file_mode: 0o644,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    })]

    /// Any bytes at all: decoding and planning never panic.
    #[test]
    fn arbitrary_bytes_never_panic(key in "\\PC{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_message(&key, &payload);
    }

    /// Any bytes, headers and SQS bodies as the Go CDK's wire formats: unwrapping never
    /// panics, and a gob stream Go wrote with garbage appended or cut still decodes or is
    /// refused cleanly.
    #[test]
    fn arbitrary_gocdk_messages_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..256),
        header in "\\PC{0,20}",
        body in "\\PC{0,60}",
        cut in 0usize..40,
    ) {
        use seaweed_replicate::source::gocdk::{nats_event, sqs_event};
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("key", header.as_str());
        for natsv2 in [false, true] {
            let _ = nats_event(Some(&headers), &data.clone().into(), natsv2);
        }
        // Go's bytes for {"key": "/a/b"} and "hi", cut and followed by the random data.
        let gob = b"\x0e\xff\x81\x04\x01\x02\xff\x82\x00\x01\x0c\x01\x0c\x00\x00\
            \x0d\xff\x82\x00\x01\x03key\x04/a/b\x05\x0a\x00\x02hi";
        let mut mangled = gob[..cut.min(gob.len())].to_vec();
        mangled.extend_from_slice(&data);
        let _ = nats_event(None, &mangled.into(), false);
        let envelope = format!(r#"{{"TopicArn":"t","Message":{body:?},"MessageAttributes":{{"key":{{"Value":{header:?}}}}}}}"#);
        for raw in [false, true] {
            let _ = sqs_event(&envelope, vec![], raw);
            let _ = sqs_event(&body, vec![(header.clone(), body.clone())], raw);
        }
    }

    /// Well-formed events with hostile names, parents and keys: the plan never leaves
    /// the sink root.
    #[test]
    fn hostile_events_stay_under_the_sink_root(
        key_dir in dir(),
        key_name in name(),
        old in entry(),
        new in entry(),
        new_parent in dir(),
        delete_chunks in any::<bool>(),
        truncate in proptest::option::of(0usize..200),
    ) {
        let ev = pb::EventNotification {
            old_entry: old,
            new_entry: new,
            delete_chunks,
            new_parent_path: new_parent,
            ..Default::default()
        };
        let mut payload = ev.encode_to_vec();
        if let Some(n) = truncate {
            payload.truncate(n);
        }
        check_message(&format!("{key_dir}/{key_name}"), &payload);
    }

    /// Manifests form any graph at all (cycles, self-references, garbage blobs):
    /// resolution ends, in order, with data chunks only, or fails cleanly.
    #[test]
    fn manifest_resolution_always_ends(
        graph in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(0usize..12, 0..3)), 1..12),
        roots in proptest::collection::vec(0usize..12, 1..4),
    ) {
        let n = graph.len();
        // Ids past the end wrap around, so any index names a node.
        let chunk = |i: usize| pb::FileChunk {
            file_id: format!("1,{:x}00000000", i % n),
            is_chunk_manifest: graph[i % n].is_some(),
            size: 1,
            ..Default::default()
        };
        let blobs: HashMap<String, Bytes> = (0..n)
            .filter_map(|i| graph[i].as_ref().map(|kids| (i, kids)))
            .map(|(i, kids)| {
                let m = pb::FileChunkManifest { chunks: kids.iter().map(|&k| chunk(k)).collect() };
                (chunk(i).file_id, Bytes::from(m.encode_to_vec()))
            })
            .collect();
        let root_chunks: Vec<pb::FileChunk> = roots.iter().map(|&r| chunk(r)).collect();
        let got = futures::executor::block_on(resolve_manifests_with(&root_chunks, |c| {
            let blob = blobs.get(&c.file_id).cloned();
            async move { blob.ok_or(ReadError::Aborted) }
        }));
        // The same resolution done recursively, with the same depth limit.
        fn expand(i: usize, depth: usize, graph: &[Option<Vec<usize>>], out: &mut Vec<usize>) -> bool {
            let n = graph.len();
            match &graph[i % n] {
                None => { out.push(i % n); true }
                Some(kids) => depth < MAX_MANIFEST_DEPTH
                    && kids.iter().all(|&k| expand(k, depth + 1, graph, out)),
            }
        }
        let mut want = Vec::new();
        let ok = roots.iter().all(|&r| expand(r, 0, &graph, &mut want));
        match got {
            Ok(chunks) => {
                prop_assert!(ok, "resolved what nests too deep");
                prop_assert!(chunks.iter().all(|c| !c.is_chunk_manifest));
                let got: Vec<String> = chunks.iter().map(|c| c.file_id.clone()).collect();
                let want: Vec<String> = want.iter().map(|&i| chunk(i).file_id).collect();
                prop_assert_eq!(got, want);
            }
            Err(ReadError::ManifestTooDeep { .. }) => prop_assert!(!ok),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// The kept corpus: real events (from `events.jsonl`), truncated ones, garbage. Each file
/// is one message, named `<label>_<key with _ for />.bin`.
#[test]
fn the_corpus_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let key = format!("/{}", stem.split_once('_').unwrap().1.replace('_', "/"));
        check_message(&key, &std::fs::read(&p).unwrap());
        seen += 1;
    }
    assert!(seen >= 5, "corpus missing in {}", dir.display());
}
