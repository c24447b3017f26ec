//! `[sink.s3]` end to end (real filer -> broker -> replicate -> S3), against SeaweedFS's own
//! S3 gateway and moto, checked through the S3 API: bytes, content type, stored mtime,
//! idempotent replays, directory deletes, incremental layout.

mod common;

use aws_sdk_s3::Client;
use common::*;
use seaweed_replicate::pb;
use std::collections::BTreeMap;
use std::time::Duration;

async fn client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_sdk_s3::config::Region::new("us-east-2"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// Every object under `prefix` with its bytes.
async fn objects(c: &Client, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(list) = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
    else {
        return out;
    };
    for o in list.contents() {
        let key = o.key().unwrap().to_string();
        if let Ok(obj) = c.get_object().bucket(bucket).key(&key).send().await {
            out.insert(key, obj.body.collect().await.unwrap().into_bytes().to_vec());
        }
    }
    out
}

/// The source's files under /data as the objects expected under `prefix`.
async fn expected(bed: &TestBed, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    bed.tree("/data", &[])
        .await
        .into_iter()
        .filter_map(|(k, v)| v.map(|b| (format!("{prefix}{k}"), b)))
        .collect()
}

async fn converge(bed: &TestBed, c: &Client, bucket: &str, prefix: &str, log: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (want, got) = (
            expected(bed, prefix).await,
            objects(c, bucket, prefix).await,
        );
        if want == got {
            return;
        }
        let missing: Vec<_> = want
            .keys()
            .filter(|k| got.get(*k) != want.get(*k))
            .collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "bucket {bucket} never matched: missing/different {missing:?}, extra {extra:?}\n{}",
            tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn s3_section(endpoint: &str, bucket: &str, directory: &str, extra: &str) -> String {
    format!(
        "[sink.s3]\nenabled = true\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\nregion = \"us-east-2\"\n\
         bucket = \"{bucket}\"\ndirectory = \"{directory}\"\nendpoint = \"{endpoint}\"\nuploader_part_size_mb = 8\n{extra}\n"
    )
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
    let moto = Moto::start();
    let stores = [
        ("seaweedfs-s3", format!("http://127.0.0.1:{s3_port}")),
        ("moto", moto.endpoint.clone()),
    ];
    let mut clients = Vec::new();
    for (_, endpoint) in &stores {
        let c = client(endpoint).await;
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..60 {
            let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::UsEast2)
                .build();
            match c
                .create_bucket()
                .bucket("replica")
                .create_bucket_configuration(location)
                .send()
                .await
            {
                Ok(_) => ok = true,
                Err(e) => {
                    last = format!("{:?}", e);
                    ok = c.head_bucket().bucket("replica").send().await.is_ok();
                }
            }
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(ok, "cannot create a bucket at {endpoint}: {last}");
        clients.push(c);
    }

    // The source before replication starts.
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

    let mut works = Vec::new();
    let mut reps = Vec::new();
    for (_, endpoint) in &stores {
        let work = Workdir::with_sink(
            &bed,
            "/data",
            &s3_section(endpoint, "replica", "/backup", ""),
            "",
        );
        reps.push(Replicator::start(&work));
        works.push(work);
    }
    let inc = Workdir::with_sink(
        &bed,
        "/data",
        &s3_section(&moto.endpoint, "replica", "/inc", "is_incremental = true"),
        "",
    );
    let inc_rep = Replicator::start(&inc);
    for (c, work) in clients.iter().zip(&works) {
        converge(&bed, c, "replica", "backup/", &work.log()).await;
    }

    // Overwrite, rename, delete a file, delete a directory.
    bed.upload(
        "/data/notes.txt",
        b"second, longer version of the notes",
        "",
    )
    .await;
    bed.mv("/data/notes.txt", "/data/moved/notes.txt").await;
    bed.delete("/data/empty.bin", false).await;
    bed.delete("/data/dir", true).await;
    for (c, work) in clients.iter().zip(&works) {
        converge(&bed, c, "replica", "backup/", &work.log()).await;
    }

    for ((name, _), c) in stores.iter().zip(&clients) {
        let head = c
            .head_object()
            .bucket("replica")
            .key("backup/inline.txt")
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_type(), Some("text/plain"), "{name}");
        assert_eq!(
            head.metadata().unwrap().get("mtime").map(String::as_str),
            Some("1700000000"),
            "{name}"
        );
        let src = bed.entry("/data/big/large.bin").await;
        let src_mtime = chrono::DateTime::parse_from_rfc3339(src["Mtime"].as_str().unwrap())
            .unwrap()
            .timestamp();
        let head = c
            .head_object()
            .bucket("replica")
            .key("backup/big/large.bin")
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.metadata().unwrap().get("mtime"),
            Some(&src_mtime.to_string()),
            "{name}"
        );
    }
    let zero = objects(&clients[1], "replica", "inc/").await;
    let day = chrono::Local::now().format("%Y-%m-%d").to_string();
    assert!(
        zero.contains_key(&format!("inc/{day}/big/large.bin")),
        "incremental layout: {:?}",
        zero.keys()
    );
    inc_rep.stop();

    // Replaying everything (offsets removed) leaves every unchanged object untouched.
    let before = clients[1]
        .head_object()
        .bucket("replica")
        .key("backup/big/large.bin")
        .send()
        .await
        .unwrap();
    let rep = reps.pop().unwrap();
    rep.stop();
    std::fs::remove_file(works[1].path().join("last.offset")).unwrap();
    std::fs::write(works[1].log(), "").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rep = Replicator::start(&works[1]);
    bed.upload("/data/after-replay.txt", b"marks the end of the replay", "")
        .await;
    converge(&bed, &clients[1], "replica", "backup/", &works[1].log()).await;
    let after = clients[1]
        .head_object()
        .bucket("replica")
        .key("backup/big/large.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        before.last_modified(),
        after.last_modified(),
        "a replayed version was uploaded again"
    );
    assert!(
        std::fs::read_to_string(works[1].log())
            .unwrap()
            .contains("bucket already holds this version")
    );
    for (w, r) in works.iter().zip(reps.into_iter().chain([rep])) {
        let (status, _) = r.stop();
        assert!(status.success());
        assert!(
            !w.path().join("replicate.parked.jsonl").exists(),
            "{}",
            tail(&w.log(), 20)
        );
    }
}
