//! `[sink.s3]` through the object-store conformance suite, against SeaweedFS's own S3
//! gateway and moto, checked through the S3 API.

mod common;

use common::objects::{ObjectStore, StoreUnderTest, conformance};
use common::s3::{S3Store, s3_section, s3_store};
use common::*;
use seaweed_replicate::pb;
use std::time::Duration;

fn s3_under_test(label: &str, endpoint: String, store: S3Store) -> StoreUnderTest {
    StoreUnderTest {
        label: label.into(),
        store: Box::new(store),
        section: Box::new(move |directory, incremental| {
            s3_section(&endpoint, directory, incremental)
        }),
        // One leading "/" trimmed, as upstream.
        prefix: |dir| format!("{}/", dir.trim_start_matches('/')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conformance_on_seaweedfs_gateway_and_moto() {
    let s3_port = free_port_pair();
    let bed = TestBed::start(BedOptions {
        weed_args: format!(
            "-s3 -s3.port={s3_port} -s3.port.grpc={} -s3.port.iceberg=0 -s3.port.lance=0",
            s3_port + 10000
        ),
        ..Default::default()
    });
    let moto = start_moto();
    let gateway = format!("http://127.0.0.1:{s3_port}");
    let stores = vec![
        s3_under_test("seaweedfs-s3", gateway.clone(), s3_store(&gateway).await),
        s3_under_test("moto", moto.endpoint(), s3_store(&moto.endpoint()).await),
    ];
    conformance(&bed, stores).await;

    // Extended attributes become user metadata and tags; `acl` is applied (upstream reads
    // it and never applies it). Checked on both servers, the ACL on moto, which keeps it.
    let mut extended = std::collections::HashMap::new();
    extended.insert("X-Amz-Meta-Owner".to_string(), b"alice".to_vec());
    extended.insert("X-Amz-Tagging-Project".to_string(), b"a b".to_vec());
    bed.create_entry(
        "/tagged",
        pb::Entry {
            name: "doc.txt".into(),
            content: b"tagged content".to_vec(),
            extended,
            attributes: Some(pb::FuseAttributes {
                file_size: 14,
                file_mode: 0o644,
                mtime: 1_700_000_000,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    for (label, endpoint) in [("seaweedfs-s3", gateway.clone()), ("moto", moto.endpoint())] {
        let store = s3_store(&endpoint).await;
        let section = s3_section(&endpoint, "/tagged", false) + "acl = \"public-read\"\n";
        let work = Workdir::with_sink(&bed, "/tagged", &section, "");
        let rep = Replicator::start(&work);
        let arrived = eventually(Duration::from_secs(60), || async {
            store.info("tagged/doc.txt").await.is_some()
        })
        .await;
        assert!(
            arrived,
            "{label}: doc.txt never arrived\n{}",
            tail(&work.log(), 20)
        );
        let head = store
            .client
            .head_object()
            .bucket("replica")
            .key("tagged/doc.txt")
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.metadata()
                .and_then(|m| m.get("owner"))
                .map(String::as_str),
            Some("alice"),
            "{label}: {:?}",
            head.metadata()
        );
        let tags = store
            .client
            .get_object_tagging()
            .bucket("replica")
            .key("tagged/doc.txt")
            .send()
            .await
            .unwrap();
        let tags: Vec<(&str, &str)> = tags
            .tag_set()
            .iter()
            .map(|t| (t.key(), t.value()))
            .collect();
        assert_eq!(tags, vec![("Project", "a b")], "{label}");
        if label == "moto" {
            let acl = store
                .client
                .get_object_acl()
                .bucket("replica")
                .key("tagged/doc.txt")
                .send()
                .await
                .unwrap();
            assert!(
                acl.grants().iter().any(|g| {
                    g.grantee()
                        .and_then(|e| e.uri())
                        .is_some_and(|u| u.ends_with("/AllUsers"))
                        && g.permission().map(|p| p.as_str()) == Some("READ")
                }),
                "public-read not applied: {:?}",
                acl.grants()
            );
        }
        let (status, _) = rep.stop();
        assert!(status.success());
    }
}

/// A sink that accepts connections but never answers (moto frozen with SIGSTOP) is an
/// outage, and shows as one: requests time out, `replicate_up{component="sink"}` drops to
/// 0, `/readyz` fails naming the sink and the waiting event, and nothing is parked. When
/// it wakes, everything arrives. (Before, requests had no timeout: 64 events hung in
/// flight for as long as it lasted, and the sink looked healthy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sink_is_an_outage_and_is_waited_out() {
    let bed = TestBed::start(BedOptions::default());
    let moto = start_moto();
    let store = s3_store(&moto.endpoint()).await;
    let port = free_port_pair();
    let work = Workdir::with_sink(
        &bed,
        "/data",
        &s3_section(&moto.endpoint(), "/frozen", false),
        &format!(
            "\n[replicate]\nread_timeout_seconds = 2\nevent_deadline_seconds = 5\n\n\
             [metrics]\naddress = \"127.0.0.1:{port}\"\nready_max_event_age_seconds = 5\n"
        ),
    );
    bed.upload("/data/before.txt", b"before the freeze", "")
        .await;
    let rep = Replicator::start(&work);
    let objects = |n: usize| {
        let store = &store;
        async move { store.objects("frozen/").await.len() == n }
    };
    assert!(
        eventually(Duration::from_secs(60), || objects(1)).await,
        "{}",
        tail(&work.log(), 20)
    );
    let base = format!("http://127.0.0.1:{port}");
    readyz_becomes(&base, 200, "sink: up", Duration::from_secs(60), &work.log()).await;

    moto.signal(libc::SIGSTOP);
    for i in 0..5u64 {
        bed.upload(&format!("/data/during-{i}.bin"), &bytes(i, 3000), "")
            .await;
    }
    readyz_becomes(
        &base,
        503,
        "sink: down",
        Duration::from_secs(60),
        &work.log(),
    )
    .await;
    readyz_becomes(
        &base,
        503,
        "oldest event: waiting",
        Duration::from_secs(60),
        &work.log(),
    )
    .await;
    let http = seaweed_replicate::http::plain();
    let (_, metrics) = get(&http, &format!("{base}/metrics")).await.unwrap();
    assert_eq!(
        sample(&metrics, "replicate_up{component=\"sink\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "replicate_retries_total").is_some_and(|r| r > 0.0),
        "{metrics}"
    );
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("sink unavailable"),
        "{}",
        tail(&work.log(), 20)
    );

    moto.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(120), || objects(6)).await,
        "{}",
        tail(&work.log(), 30)
    );
    readyz_becomes(&base, 200, "sink: up", Duration::from_secs(60), &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "an outage parked events"
    );
}
