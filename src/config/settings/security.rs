//! `security.toml`: signed reads, https and gRPC TLS to the source cluster.

use super::*;

/// What `security.toml` says about talking to the source cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecuritySettings {
    pub read_jwt: Option<ReadJwt>,
    pub https_client: Option<HttpsClient>,
    /// gRPC mutual TLS to filers: `grpc.ca` plus a client certificate and key.
    pub grpc_tls: Option<GrpcTls>,
}

/// PEM files for gRPC mutual TLS.
#[derive(Debug, Clone)]
pub(crate) struct GrpcTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `jwt.signing.read`: the key that signs each read of a file id.
#[derive(Clone)]
pub(crate) struct ReadJwt {
    pub key: String,
    /// 0: upstream's default.
    pub expires_after_seconds: u64,
}

impl std::fmt::Debug for ReadJwt {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadJwt")
            .field("expires_after_seconds", &self.expires_after_seconds)
            .finish()
    }
}

/// `[https.client]`: PEM files for HTTPS to SeaweedFS's servers (made absolute).
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpsClient {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

pub(super) fn resolve_security(r: &mut Reader, cwd: &Path) -> SecuritySettings {
    let mut security = SecuritySettings::default();
    let read_key = r.string("jwt.signing.read.key", "");
    let expires = r.count("jwt.signing.read.expires_after_seconds", 0);
    if !read_key.is_empty() {
        security.read_jwt = Some(ReadJwt {
            key: read_key,
            expires_after_seconds: expires,
        });
    }
    if r.bool("https.client.enabled", false) {
        let mut file = |key: &str| {
            Some(r.string(key, ""))
                .filter(|p| !p.is_empty())
                .map(|p| cwd.join(p))
        };
        security.https_client = Some(HttpsClient {
            ca: file("https.client.ca"),
            cert: file("https.client.cert"),
            key: file("https.client.key"),
            insecure_skip_verify: r.bool("https.client.insecure_skip_verify", false),
        });
    }
    // As upstream: grpc.client.client_cert/client_key, else grpc.client.cert/key; TLS
    // only when the CA, a certificate and a key are all set.
    let ca = r.string("grpc.ca", "");
    let client_cert = r.string("grpc.client.client_cert", "");
    let client_key = r.string("grpc.client.client_key", "");
    if client_cert.is_empty() != client_key.is_empty() {
        r.problem(
            "grpc.client.client_cert",
            "grpc.client.client_cert and grpc.client.client_key must be set together",
        );
    }
    let (cert, key) = if !client_cert.is_empty() && !client_key.is_empty() {
        (client_cert, client_key)
    } else {
        (
            r.string("grpc.client.cert", ""),
            r.string("grpc.client.key", ""),
        )
    };
    if !ca.is_empty() && !cert.is_empty() && !key.is_empty() {
        security.grpc_tls = Some(GrpcTls {
            ca: cwd.join(ca),
            cert: cwd.join(cert),
            key: cwd.join(key),
        });
    }
    security
}
