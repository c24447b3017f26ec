//! `[sink.azure]` through the object-store conformance suite, against Azurite, checked
//! through the Blob REST API.

mod common;

use common::objects::{ObjectInfo, ObjectStore, StoreUnderTest, conformance};
use common::*;
use seaweed_replicate::sink::object::azure::SharedKey;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Azurite's published development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn start_azurite() -> Service {
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("azurite-blob"));
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]);
    Service::spawn("azurite", cmd, port)
}

struct AzureStore {
    http: reqwest::Client,
    key: SharedKey,
    endpoint: String,
}

impl AzureStore {
    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        self.http
            .execute(self.key.sign(req.build().unwrap()))
            .await
            .unwrap()
    }
    fn blob_url(&self, name: &str) -> String {
        format!(
            "{}/replica/{}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(name, true)
        )
    }
}

#[async_trait::async_trait]
impl ObjectStore for AzureStore {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let url = format!(
            "{}/replica?restype=container&comp=list&prefix={}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(prefix, false)
        );
        let xml = self
            .send(self.http.get(url))
            .await
            .text()
            .await
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut rest = xml.as_str();
        while let Some(i) = rest.find("<Name>") {
            rest = &rest[i + 6..];
            let j = rest.find("</Name>").unwrap();
            let name = rest[..j].replace("&amp;", "&");
            rest = &rest[j..];
            let r = self.send(self.http.get(self.blob_url(&name))).await;
            if r.status().is_success() {
                out.insert(name, r.bytes().await.unwrap().to_vec());
            }
        }
        out
    }

    async fn info(&self, name: &str) -> Option<ObjectInfo> {
        let r = self.send(self.http.head(self.blob_url(name))).await;
        if !r.status().is_success() {
            return None;
        }
        let h = |k: &str| {
            r.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Some(ObjectInfo {
            content_type: h("content-type"),
            mtime: h("x-ms-meta-mtime"),
            version: format!("{:?} {:?}", h("etag"), h("last-modified")),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_conformance_on_azurite() {
    let bed = TestBed::start(BedOptions::default());
    let azurite = start_azurite();
    let azurite_endpoint = format!("{}/{ACCOUNT}", azurite.endpoint());
    let store = AzureStore {
        http: seaweed_replicate::http::plain(),
        key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        endpoint: azurite_endpoint.clone(),
    };
    let created = store
        .send(
            store
                .http
                .put(format!("{}/replica?restype=container", azurite_endpoint)),
        )
        .await;
    assert!(
        created.status().is_success(),
        "create container: {} {}",
        created.status(),
        created.text().await.unwrap_or_default()
    );
    let endpoint = azurite_endpoint.clone();
    let under_test = StoreUnderTest {
        label: "azurite".into(),
        store: Box::new(store),
        section: Box::new(move |directory, incremental| {
            format!(
                "[sink.azure]\nenabled = true\naccount_name = \"{ACCOUNT}\"\naccount_key = \"{KEY}\"\nendpoint = \"{endpoint}\"\n\
                 container = \"replica\"\ndirectory = \"{directory}\"\nis_incremental = {incremental}\n"
            )
        }),
        // Every leading "/" trimmed, as upstream.
        prefix: |dir| format!("{}/", dir.trim_start_matches('/')),
    };
    conformance(&bed, vec![under_test]).await;
}

/// What the stand-in for Entra ID's token endpoints saw: one line per request
/// (`POST /tenant/oauth2/v2.0/token grant_type=...` or `GET /msi?...`).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Environment variables for one `replicate` run.
type Env = Vec<(&'static str, String)>;

/// A token that Azurite's `--oauth basic` accepts: a JWT from an Entra issuer for the
/// storage audience, current (Azurite checks these claims, not the signature).
fn storage_jwt() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "aud": "https://storage.azure.com", "iss": "https://sts.windows.net/test-tenant/",
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "replicate-test",
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// Entra ID's token endpoint (client secret and workload identity flows) and a managed
/// identity endpoint, as far as a client sees them. No Entra ID runs offline; what this
/// test proves is that the tokens `replicate` asks for are sent the way Azure Storage
/// (Azurite with `--oauth basic`) accepts them, and that each flow asks correctly.
/// It serves HTTPS with `cert` (the SDK accepts no other authority).
async fn start_token_endpoint(assertion: String, cert: &Path, key: &Path) -> (u16, Seen) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Default::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (log, assertion, acceptor) = (log.clone(), assertion.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some((head, body)) = read_http_request(&mut conn).await else {
                    return;
                };
                let request_line = head.lines().next().unwrap_or("").to_string();
                let identity_header = head
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("x-identity-header: platform-secret"));
                log.lock().unwrap().push(format!("{request_line} {body}"));
                let form: BTreeMap<String, String> = body
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| {
                        let v = v.replace('+', " ");
                        let mut out = Vec::new();
                        let b = v.as_bytes();
                        let mut i = 0;
                        while i < b.len() {
                            if b[i] == b'%' && i + 2 < b.len() {
                                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                                i += 3;
                            } else {
                                out.push(b[i]);
                                i += 1;
                            }
                        }
                        (k.to_string(), String::from_utf8(out).unwrap())
                    })
                    .collect();
                let scope_ok = form.get("scope").map(String::as_str)
                    == Some("https://storage.azure.com/.default");
                let ok = if request_line.starts_with("POST /test-tenant/oauth2/v2.0/token ") {
                    scope_ok
                        && form.get("grant_type").map(String::as_str) == Some("client_credentials")
                        && (form.get("client_secret").map(String::as_str) == Some("right-secret")
                            || form.get("client_assertion") == Some(&assertion))
                } else {
                    request_line.starts_with("GET /msi?")
                        && request_line.contains("resource=https%3A%2F%2Fstorage.azure.com")
                        && identity_header
                };
                let (status, json) = if ok {
                    let token = storage_jwt();
                    (
                        "200 OK",
                        // Entra ID answers `expires_in`; managed identity endpoints
                        // `expires_on` (a string) and `resource`.
                        serde_json::json!({
                            "access_token": token, "expires_in": 3599, "token_type": "Bearer",
                            "expires_on": (chrono::Utc::now().timestamp() + 3599).to_string(),
                            "resource": "https://storage.azure.com",
                        }),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
                    )
                };
                let json = json.to_string();
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_entra_id_on_azurite_with_oauth() {
    let bed = TestBed::start(BedOptions::default());
    // Azurite accepts bearer tokens only over https.
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("azurite-blob"));
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ])
        .args(["--oauth", "basic", "--cert"])
        .arg(&cert_pem)
        .arg("--key")
        .arg(&key_pem);
    let _azurite = Service::spawn("azurite (https, oauth)", cmd, port);
    let endpoint = format!("https://127.0.0.1:{port}/{ACCOUNT}");
    let store = AzureStore {
        http: {
            seaweed_replicate::http::install_tls_provider();
            reqwest::Client::builder()
        }
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap(),
        key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        endpoint: endpoint.clone(),
    };
    let created = store
        .send(
            store
                .http
                .put(format!("{endpoint}/replica?restype=container")),
        )
        .await;
    assert!(created.status().is_success(), "{}", created.status());

    let federated = certs.path().join("federated-token");
    // Projected tokens end without a newline; the file is sent as it is, as Go's azidentity does.
    std::fs::write(&federated, "projected-service-account-token").unwrap();
    let (token_port, seen) = start_token_endpoint(
        "projected-service-account-token".into(),
        &cert_pem,
        &key_pem,
    )
    .await;
    let authority = format!("https://127.0.0.1:{token_port}/");
    let identity_endpoint = format!("https://127.0.0.1:{token_port}/msi");
    let cert_file = cert_pem.display().to_string();
    let federated = federated.display().to_string();
    let secret_env = |secret: &'static str| {
        vec![
            ("AZURE_CLIENT_ID", "app-id".to_string()),
            ("AZURE_CLIENT_SECRET", secret.to_string()),
            ("AZURE_TENANT_ID", "test-tenant".to_string()),
        ]
    };
    // (name, client_id in the config, environment, what the token request must carry)
    let flows: Vec<(&str, &str, Env, &str)> = vec![
        (
            "workload",
            "workload-app",
            vec![
                ("AZURE_FEDERATED_TOKEN_FILE", federated.clone()),
                ("AZURE_TENANT_ID", "test-tenant".into()),
            ],
            "client_assertion=projected-service-account-token",
        ),
        (
            "managed",
            "user-assigned-id",
            vec![
                ("IDENTITY_ENDPOINT", identity_endpoint.clone()),
                ("IDENTITY_HEADER", "platform-secret".into()),
            ],
            "client_id=user-assigned-id",
        ),
        (
            "secret",
            "",
            secret_env("right-secret"),
            "client_secret=right-secret",
        ),
    ];
    for (i, (flow, client_id, env, carried)) in flows.into_iter().enumerate() {
        let section = format!(
            "[sink.azure]\nenabled = true\naccount_name = \"{ACCOUNT}\"\naccount_key = \"\"\nclient_id = \"{client_id}\"\n\
             endpoint = \"{endpoint}\"\ncontainer = \"replica\"\ndirectory = \"/{flow}\"\n"
        );
        let source = format!("/entra{i}");
        let work = Workdir::with_sink(&bed, &source, &section, "");
        let mut env: Vec<(&str, String)> = env;
        env.push(("AZURE_AUTHORITY_HOST", authority.clone()));
        env.push(("SSL_CERT_FILE", cert_file.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let rep = Replicator::start_with_env(&work, &env);
        let data = bytes(i as u64, 300_000);
        bed.upload(&format!("{source}/sub/file.bin"), &data, "")
            .await;
        let name = format!("{flow}/sub/file.bin");
        assert!(
            eventually(Duration::from_secs(60), || async {
                store.objects(&name).await.get(&name) == Some(&data)
            })
            .await,
            "{flow}: {name} never arrived\n{}",
            tail(&work.log(), 20)
        );
        let log = std::fs::read_to_string(work.log()).unwrap();
        assert!(log.contains("Entra ID"), "{log}");
        let requests = seen.lock().unwrap().clone();
        assert!(
            requests.iter().any(|r| r.contains(carried)),
            "{flow}: no token request carried {carried}: {requests:?}"
        );
        let (status, _) = rep.stop();
        assert!(status.success());
    }

    // A refused secret is reported with Entra's own words and retried, not fatal.
    let section = format!(
        "[sink.azure]\nenabled = true\naccount_name = \"{ACCOUNT}\"\naccount_key = \"\"\n\
         endpoint = \"{endpoint}\"\ncontainer = \"replica\"\ndirectory = \"/refused\"\n"
    );
    let work = Workdir::with_sink(&bed, "/entra-refused", &section, "");
    let mut env = secret_env("wrong-secret");
    env.push(("AZURE_AUTHORITY_HOST", authority.clone()));
    env.push(("SSL_CERT_FILE", cert_file.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut rep = Replicator::start_with_env(&work, &env);
    assert!(
        eventually(Duration::from_secs(20), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|t| t.contains("AADSTS7000215"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.is_running());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(!log.contains("wrong-secret"), "the secret was logged");
    rep.stop();
}
