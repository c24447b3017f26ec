//! The HTTP clients. Every client speaks TLS through rustls with ring, as the gRPC and
//! AWS clients do, so certificates are trusted, and their failures read, the same way
//! whichever server they are about. Trust roots are the system's (with `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` honoured, as OpenSSL does).
//!
//! - [`seaweed`] talks to SeaweedFS's own servers (volume servers, filers) and applies
//!   `security.toml`'s `[https.client]`: its CA beside the system's roots, its client
//!   certificate, its `insecure_skip_verify`.
//! - [`cloud`] talks to everything else (GCS, Azure, B2, Pub/Sub and their token
//!   endpoints) with the system's roots only: a client certificate or a disabled check
//!   meant for the cluster never reaches a cloud.

use crate::config::settings::HttpsClient;
use std::time::Duration;

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// A file `security.toml` names (`key`) could not be read or used.
    #[error("{path}: {detail}")]
    File {
        key: &'static str,
        path: String,
        detail: String,
    },
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Make ring the process's rustls provider (once; later calls do nothing). Every TLS
/// client here, and any a library builds on its own, then uses the same one.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with the timeouts every remote call needs: a server that stops answering
/// fails the attempt after `read_timeout`, any attempt after
/// [`crate::retry::attempt_limit`].
fn builder(read_timeout: Duration) -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(read_timeout)
        .timeout(crate::retry::attempt_limit(read_timeout))
        .pool_max_idle_per_host(64)
}

/// The client for SeaweedFS's servers.
pub(crate) fn seaweed(
    read_timeout: Duration,
    https: Option<&HttpsClient>,
) -> Result<reqwest::Client, HttpError> {
    let mut http = builder(read_timeout);
    if let Some(https) = https {
        let problem = |key: &'static str, path: &std::path::Path, detail: String| HttpError::File {
            key,
            path: path.display().to_string(),
            detail,
        };
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| problem(key, path, e.to_string()))
        };
        http = http.danger_accept_invalid_certs(https.insecure_skip_verify);
        if let Some(ca) = &https.ca {
            let key = "https.client.ca";
            let certs = reqwest::Certificate::from_pem_bundle(&read(key, ca)?)
                .map_err(|e| problem(key, ca, e.to_string()))?;
            if certs.is_empty() {
                return Err(problem(key, ca, "no certificate in the file".into()));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some(cert) = &https.cert {
            let mut pem = read("https.client.cert", cert)?;
            pem.push(b'\n');
            match &https.key {
                Some(key) => pem.extend(read("https.client.key", key)?),
                None => {
                    let detail = "https.client.key is not set".to_string();
                    return Err(problem("https.client.key", cert, detail));
                }
            }
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| problem("https.client.cert", cert, e.to_string()))?;
            http = http.identity(id);
        }
    }
    Ok(http.build()?)
}

/// The client for clouds and their token endpoints.
pub(crate) fn cloud(read_timeout: Duration) -> Result<reqwest::Client, HttpError> {
    Ok(builder(read_timeout).build()?)
}

/// A client with no timeouts, on the same TLS stack, for tests and tools that talk to
/// servers they started themselves.
pub fn plain() -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::new()
}
