//! gRPC mutual TLS to filers from security.toml (`grpc.ca`, `grpc.client.*`), against a
//! real SeaweedFS whose every component requires it. The certificate names a component,
//! not the host we dial: like upstream, the chain is verified, not the host name.

mod common;

use common::*;
use std::path::Path;

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
