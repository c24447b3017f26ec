//! What gocloud.dev (the Go CDK `weed` publishes with) puts on the wire, produced by Go's
//! own standard library: `tests/fixtures/gowire/main.go`, built once per test process
//! with the machine's `go` (Debian's golang-go; `.ci/run` installs it).

use base64::Engine;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One message as gocloud would send it.
#[derive(Debug, serde::Deserialize)]
pub struct GoWire {
    /// NATS message data without `natsv2` (base64): a gob stream, or the bare body.
    nats_gob: String,
    /// NATS headers with `natsv2`, escaped.
    pub nats_v2: std::collections::BTreeMap<String, String>,
    /// SQS/SNS message attributes, escaped (and `base64encoded`).
    pub sqs_attrs: std::collections::BTreeMap<String, String>,
    /// SQS/SNS message body.
    pub sqs_body: String,
}

impl GoWire {
    pub fn nats_gob(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.nats_gob)
            .unwrap()
    }
}

fn binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gowire");
        std::fs::create_dir_all(&dir).unwrap();
        let partial = dir.join(format!("gowire.{}", std::process::id()));
        let out = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&partial)
            .arg(super::repo().join("tests/fixtures/gowire/main.go"))
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOFLAGS", "")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .output()
            .expect(
                "`go` is needed to produce gocloud's wire format (Debian: apt install golang-go)",
            );
        assert!(
            out.status.success(),
            "go build gowire: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join("gowire");
        std::fs::rename(&partial, &bin).unwrap();
        bin
    })
}

/// What gocloud sends for one message with metadata `key` (none: no metadata).
pub fn encode(key: Option<&str>, body: &[u8]) -> GoWire {
    use std::io::Write;
    let line = serde_json::json!({
        "key": key,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let mut child = std::process::Command::new(binary())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}
