//! The HS256 read token volume servers expect when `jwt.signing.read.key` is set.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Signs per-file-id read tokens (`{"fid": ..., "exp": ...}`).
#[derive(Clone)]
pub struct ReadSigner {
    key: Vec<u8>,
    expires_after_seconds: u64,
}

impl std::fmt::Debug for ReadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSigner")
            .field("expires_after_seconds", &self.expires_after_seconds)
            .finish()
    }
}

impl ReadSigner {
    /// `expires_after_seconds` of 0 means 60, as upstream.
    pub(crate) fn new(key: &str, expires_after_seconds: u64) -> Self {
        let expires_after_seconds = if expires_after_seconds == 0 {
            60
        } else {
            expires_after_seconds
        };
        ReadSigner {
            key: key.as_bytes().to_vec(),
            expires_after_seconds,
        }
    }

    pub(crate) fn sign(&self, file_id: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.sign_at(file_id, now)
    }

    fn sign_at(&self, file_id: &str, now: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({"fid": file_id, "exp": now + self.expires_after_seconds});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_has_claims_and_verifiable_signature() {
        let s = ReadSigner::new("secret", 0);
        let tok = s.sign_at("3,046dbbed8d", 1000);
        let parts: Vec<&str> = tok.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["fid"], "3,046dbbed8d");
        assert_eq!(claims["exp"], 1060);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"secret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        let mut wrong = <Hmac<Sha256> as KeyInit>::new_from_slice(b"other").unwrap();
        wrong.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert!(
            wrong
                .verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
                .is_err()
        );
    }
}
