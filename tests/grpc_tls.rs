//! gRPC mutual TLS to filers from security.toml (`grpc.ca`, `grpc.client.*`), against a
//! real SeaweedFS whose every component requires it. The certificate names a component,
//! not the host we dial: like upstream, the chain is verified, not the host name.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn write_certs(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "replicate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["seaweedfs.internal".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "seaweedfs.internal");
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), leaf_key.serialize_pem()).unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem").display().to_string(),
        dir.join("node.pem").display().to_string(),
        dir.join("node.key").display().to_string(),
    );
    let mut toml = format!("[grpc]\nca = \"{ca}\"\n");
    for component in ["master", "volume", "filer", "client"] {
        toml += &format!("[grpc.{component}]\ncert = \"{cert}\"\nkey = \"{key}\"\n");
    }
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_and_filer_sink_over_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let security = write_certs(certs.path());
    let bed = TestBed::start(BedOptions {
        security_toml: Some(security.clone()),
        ..Default::default()
    });

    // Plaintext gRPC is refused by this filer.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://{}", bed.var("FILER_GRPC")))
            .unwrap()
            .connect()
            .await;
    if let Ok(channel) = plain {
        let r = seaweed_replicate::pb::seaweed_filer_client::SeaweedFilerClient::new(channel)
            .get_filer_configuration(seaweed_replicate::pb::GetFilerConfigurationRequest {})
            .await;
        assert!(r.is_err(), "the filer answered plaintext gRPC");
    }

    bed.upload("/data/a/one.txt", b"over mutual TLS", "").await;
    bed.upload("/data/a/two.bin", &bytes(61, 1024 * 1024 + 17), "maxMB=1")
        .await;

    // Source reads (LookupVolume) over TLS into a local directory.
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let local = Workdir::new(&bed, "/data", &root, "");
    std::fs::write(local.path().join("security.toml"), &security).unwrap();
    let rep = Replicator::start(&local);
    assert_converges(&bed, "/data", &[], &root, &local.log()).await;
    assert!(
        std::fs::read_to_string(local.log())
            .unwrap()
            .contains("mutual TLS")
    );
    rep.stop();

    // A filer sink over TLS too (folder to folder on the same filer).
    let filer = Workdir::filer(&bed, "/data", &bed, "/backup", "");
    std::fs::write(filer.path().join("security.toml"), &security).unwrap();
    let rep = Replicator::start(&filer);
    bed.assert_same_tree("/data", &bed, "/backup", &[], &filer.log())
        .await;
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// A CA and one certificate for 127.0.0.1 that serves and authenticates clients.
fn write_https_certs(dir: &Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "replicate https test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(path("https-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("https.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(path("https.key"), leaf_key.serialize_pem()).unwrap();
    (path("https-ca.pem"), path("https.pem"), path("https.key"))
}

/// `[https.client]`: chunks are read from volume servers that serve HTTPS only and demand
/// a client certificate, trusting `ca` beside the system's roots and presenting `cert`.
/// Without the client certificate the volume server refuses and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_over_https_with_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_https_certs(certs.path());
    let client = format!(
        "[https.client]\nenabled = true\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
    );
    let volume = format!("[https.volume]\ncert = \"{cert}\"\nkey = \"{key}\"\nca = \"{ca}\"\n");
    let bed = TestBed::start(BedOptions {
        security_toml: Some(format!("{client}\n{volume}")),
        ..Default::default()
    });
    bed.upload("/data/a/one.txt", b"read over https", "").await;
    bed.upload("/data/a/two.bin", &bytes(62, 1024 * 1024 + 5), "maxMB=1")
        .await;

    // The volume server really speaks TLS only: a plain HTTP request gets no HTTP answer.
    let volume_url = format!("http://{}/status", bed.var("VOLUME"));
    let plain = seaweed_replicate::http::plain()
        .get(&volume_url)
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "the volume server answered plain HTTP: {plain:?}"
    );

    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");
    std::fs::write(work.path().join("security.toml"), &client).unwrap();
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success());

    // The CA but no client certificate: the volume server refuses the handshake, the
    // files are not written, and replication keeps running and says why.
    let refused_root = area.path().join("refused");
    let refused = Workdir::new(&bed, "/data", &refused_root, "");
    std::fs::write(
        refused.path().join("security.toml"),
        format!("[https.client]\nenabled = true\nca = \"{ca}\"\n"),
    )
    .unwrap();
    let mut rep = Replicator::start(&refused);
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(refused.log())
                .is_ok_and(|t| t.contains("two.bin") && t.contains("retry"))
        })
        .await,
        "{}",
        tail(&refused.log(), 30)
    );
    assert!(rep.is_running());
    assert!(!refused_root.join("a/two.bin").exists());
    rep.stop();
}
