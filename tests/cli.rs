//! The command line as an operator meets it: configuration errors, scaffold, version.

mod common;

use common::replicate_in as replicate;
use std::path::Path;
use std::process::{Command, Output};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn no_config_files_exit_2_with_the_scaffold_hint() {
    let d = tempfile::tempdir().unwrap();
    let o = replicate(d.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("replication.toml: not found"), "{e}");
    assert!(
        e.contains("replicate scaffold -config=replication -output=."),
        "{e}"
    );

    // With a replication.toml but no input anywhere, the error names both ways to get one.
    std::fs::write(
        d.path().join("replication.toml"),
        "[source.filer]\ngrpcAddress = \"localhost:18888\"\ndirectory = \"/data\"\n\
         [sink.local]\nenabled = true\ndirectory = \"/tmp/x\"\n",
    )
    .unwrap();
    let o = replicate(d.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("set subscribe = true in [source.filer]"), "{e}");
    assert!(e.contains("[notification.kafka]"), "{e}");
}

#[test]
fn every_config_problem_is_listed_with_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("replication.toml"),
        "[source.filer]\ngrpcAddress = \"localhost\"\ndirectory = \"\"\n[sink.local]\nenabled = true\ndirectory = \"/x\"\n[sink.filer]\nenabled = true\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("notification.toml"),
        "[notification.kafka]\nenabled = true\nhosts = [\"h:9092\"]\ntopic = \"t\"\n[notification.google_pub_sub]\nenabled = true\n",
    )
    .unwrap();
    let o = replicate(d.path(), &["filer.replicate"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    let rep = d.path().join("replication.toml").display().to_string();
    let note = d.path().join("notification.toml").display().to_string();
    for want in [
        // Each problem names the file and the line the key is on.
        format!("{rep}:2: source.filer.grpcAddress: \"localhost\" is not host:port"),
        format!("{rep}:3: source.filer.directory: is empty"),
        format!(
            "{note}:2: notification.kafka.enabled: several inputs are enabled (notification.google_pub_sub, notification.kafka)"
        ),
        // Several unnamed sinks: the first in upstream's order (filer before local) is
        // the one fed, as upstream picks it, and its problems are the ones listed.
        format!("{rep}: sink.filer.grpcAddress: is empty"),
    ] {
        assert!(e.contains(&want), "missing {want:?} in:\n{e}");
    }
    assert!(e.contains("5 problems"), "{e}");
    assert!(!e.contains("sink.local"), "{e}");
}

#[test]
fn env_overrides_are_named_and_go_style_flags_work() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("replication.toml"),
        "[source.filer]\ngrpcAddress = \"h:18888\"\ndirectory = \"/data\"\n",
    )
    .unwrap();
    std::fs::write(cfg.join("notification.toml"), "").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .args(["-config_dir", cfg.to_str().unwrap(), "-v=1"])
        .current_dir(d.path())
        .env("HOME", d.path())
        .env("WEED_SOURCE_FILER_DIRECTORY", "relative")
        .env("WEED_SINK_LOCAL_ENABLED", "true")
        .env("WEED_SINK_LOCAL_DIRECTORY", "/tmp/x")
        .env("WEED_NOTIFICATION_KAFKA_ENABLED", "maybe")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("environment variable WEED_SOURCE_FILER_DIRECTORY: source.filer.directory: must be an absolute"), "{e}");
    assert!(e.contains("environment variable WEED_NOTIFICATION_KAFKA_ENABLED: notification.kafka.enabled: must be true or false"), "{e}");

    let o = replicate(d.path(), &["-config=/nonexistent/replication.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/replication.toml: no such file"),
        "{}",
        stderr(&o)
    );
}

/// Upstream (viper, `AllowEmptyEnv` off) treats an empty `WEED_*` variable as unset; so
/// does `replicate`: `WEED_SINK_LOCAL_ENABLED=` neither turns the sink off nor is an error.
#[test]
fn empty_env_variables_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("replication.toml"),
        "[source.filer]\ngrpcAddress = \"h:18888\"\ndirectory = \"/data\"\n\
         [sink.local]\nenabled = true\ndirectory = \"/tmp/x\"\n\
         [replicate]\nconcurrency = \"many\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("notification.toml"),
        "[notification.kafka]\nenabled = true\nhosts = [\"h:9092\"]\ntopic = \"t\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .current_dir(d.path())
        .env("HOME", d.path())
        .env_remove("RUST_LOG")
        .env("WEED_SINK_LOCAL_ENABLED", "")
        .env("WEED_SINK_LOCAL_DIRECTORY", "")
        .env("WEED_NOTIFICATION_KAFKA_TOPIC", "")
        .output()
        .unwrap();
    // The one real problem is reported, and nothing about the empty variables.
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("replicate.concurrency"), "{e}");
    assert!(e.contains("1 problem"), "{e}");
    assert!(!e.contains("WEED_"), "{e}");
}

#[test]
fn scaffold_matches_the_shipped_examples_and_parses() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["replication", "notification"] {
        let o = replicate(d.path(), &["scaffold", &format!("-config={name}")]);
        assert!(o.status.success());
        let example = std::fs::read(root.join(format!("{name}.toml.example"))).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&example),
            "{name}.toml.example is stale"
        );
    }
    let o = replicate(
        d.path(),
        &[
            "scaffold",
            "-config",
            "security",
            "-output",
            d.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let text = std::fs::read_to_string(d.path().join("security.toml")).unwrap();
    assert!(text.parse::<toml::Table>().is_ok());
    let o = replicate(d.path(), &["scaffold", "-config=nonsense"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn version_prints() {
    let d = tempfile::tempdir().unwrap();
    let o = replicate(d.path(), &["version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `-log-format=json` (Go-style, as every other flag) makes every log line one JSON
/// object with the level, the message and the fields, for log shippers.
#[test]
fn json_logs_are_one_object_per_line() {
    let d = tempfile::tempdir().unwrap();
    // A broker that is not there: start-up logs, then a warning with an error field.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.path().join("replication.toml"),
        format!(
            "[source.filer]\ngrpcAddress = \"127.0.0.1:{port}\"\ndirectory = \"/data\"\n\
             [sink.local]\nenabled = true\ndirectory = \"{}\"\n",
            d.path().join("out").display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("notification.toml"),
        "[notification.kafka]\nenabled = true\nhosts = [\"127.0.0.1:1\"]\ntopic = \"t\"\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .args(["-log-format=json", "-v=1"])
        .current_dir(d.path())
        .env("HOME", d.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("kafka metadata unavailable"))
            && l["fields"]["error"].is_string()),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["timestamp"].is_string()));
}

/// The packaged example configs are valid: `check` finds no configuration problem (exit
/// 1, not 2: the example hosts do not exist here).
#[test]
fn the_example_configs_pass_check_validation() {
    let d = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in ["replication.toml", "notification.toml"] {
        std::fs::copy(examples.join(name), d.path().join(name)).unwrap();
    }
    let replica = d.path().join("replica");
    // The example's CA file path must exist for the configuration to be valid.
    let ca = d.path().join("kafka-ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .arg("check")
        .current_dir(d.path())
        .env("HOME", d.path())
        .env("WEED_SINK_LOCAL_DIRECTORY", &replica)
        // Nothing listens on port 1: no DNS or network is needed to fail.
        .env("WEED_SOURCE_FILER_GRPCADDRESS", "127.0.0.1:1")
        .env("WEED_NOTIFICATION_KAFKA_HOSTS", "127.0.0.1:1")
        .env("WEED_NOTIFICATION_KAFKA_TLS_CA_CERT", &ca)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    for want in [
        "  ok    replicating /buckets (excluding /buckets/tmp, /buckets/.uploads) to the local sink at ",
        "  FAIL  source filer: 127.0.0.1:1",
        "  FAIL  input: ",
        "  ok    sink: local directory ",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!replica.exists(), "check creates nothing");
}

/// The environment may hold any bytes. A variable that is not UTF-8 and means nothing to
/// `replicate` is no concern; a `WEED_*` one is a configuration problem, named, exit 2.
/// Neither may panic (it did: exit 101 from the environment reader).
#[test]
fn non_utf8_environment_variables_never_panic() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let sink = d.path().join("sink");
    std::fs::write(
        d.path().join("replication.toml"),
        format!(
            "[source.filer]\ngrpcAddress = \"127.0.0.1:1\"\ndirectory = \"/data\"\nsubscribe = true\n\
             [sink.local]\nenabled = true\ndirectory = \"{}\"\n",
            sink.display()
        ),
    )
    .unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let run = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_replicate"))
            .arg("check")
            .current_dir(d.path())
            .env("HOME", d.path())
            .env(name, latin1)
            .output()
            .unwrap()
    };
    // Unrelated: the check runs and reports the unreachable filer (exit 1), not a panic.
    let o = run("SOME_VAR");
    assert_ne!(o.status.code(), Some(101), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("SOME_VAR"), "{}", stderr(&o));
    // A WEED_ override that cannot be read: exit 2, the variable named (in check's
    // report, on stdout).
    let o = run("WEED_SINK_LOCAL_DIRECTORY");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("environment variable WEED_SINK_LOCAL_DIRECTORY")
            && out.contains("not valid UTF-8"),
        "{out}"
    );
}

/// A configuration that starts and then waits for a broker that is not there (a warning
/// every few seconds): replication.toml and notification.toml in `dir`.
fn unreachable_config(dir: &Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("replication.toml"),
        format!(
            "[source.filer]\ngrpcAddress = \"127.0.0.1:{port}\"\ndirectory = \"/data\"\n\
             [sink.local]\nenabled = true\ndirectory = \"{}\"\n",
            dir.join("out").display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("notification.toml"),
        "[notification.kafka]\nenabled = true\nhosts = [\"127.0.0.1:1\"]\ntopic = \"t\"\n",
    )
    .unwrap();
}

/// A command line written for `weed filer.replicate` starts `replicate` unchanged: glog's
/// flags before the command, an `-options` file after it, `WEED_<FLAG>` variables. The
/// log directory gets glog-named files; standard error only what passes -stderrthreshold.
#[test]
fn a_weed_command_line_starts_unchanged_and_logs_into_logdir() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("cfg");
    unreachable_config(&cfg);
    let logs = d.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let opts = d.path().join("replicate.options");
    std::fs::write(
        &opts,
        "# written for weed\n-log_max_files=2\nlog_rotate_hours: 1\nno_such_flag 7\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .arg(format!("-logdir={}", logs.display()))
        .args([
            "-alsologtostderr=false",
            "-stderrthreshold=ERROR",
            "-vmodule=filer=2",
            "filer.replicate",
        ])
        .arg(format!("-options={}", opts.display()))
        .current_dir(d.path())
        .env("HOME", d.path())
        .env("WEED_CONFIG_DIR", &cfg)
        .env("WEED_V", "3")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let current = logs.join("replicate.INFO");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&current).is_ok_and(|t| t.contains("kafka metadata unavailable"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&current).unwrap_or_default();
    assert!(o.status.success(), "{}\n{text}", stderr(&o));
    assert!(text.contains("kafka metadata unavailable"), "{text}");
    // WEED_V=3: debug lines; the flag that does nothing here is said so.
    assert!(
        text.lines()
            .any(|l| l.contains(" DEBUG ") && l.contains("flags in effect") && l.contains("v=3")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("no effect here") && l.contains("-vmodule")),
        "{text}"
    );
    // Standard error: nothing below ERROR.
    assert!(!stderr(&o).contains("WARN"), "{}", stderr(&o));
    let target = std::fs::read_link(&current).unwrap();
    let name = target.to_str().unwrap();
    assert!(
        name.starts_with("replicate.")
            && name.contains(".log.INFO.")
            && name.ends_with(&format!(".{pid}")),
        "{name}"
    );
}

/// Flags after a subcommand work; bad flag values and a log directory that cannot be
/// written are usage errors (exit 2) that say which.
#[test]
fn flags_after_a_subcommand_and_bad_flag_values() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("replication.toml"),
        "[source.filer]\ngrpcAddress = \"nohost\"\ndirectory = \"/data\"\n",
    )
    .unwrap();
    let o = replicate(
        d.path(),
        &["check", &format!("-config_dir={}", cfg.display())],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "{}:2: source.filer.grpcAddress",
            cfg.join("replication.toml").display()
        )),
        "{}",
        stderr(&o)
    );
    for (args, env, want) in [
        (vec!["check"], ("WEED_V", ""), "WEED_V is empty"),
        (
            vec!["-logtostderr=maybe", "check"],
            ("X", ""),
            "-logtostderr=\"maybe\"",
        ),
        (
            vec!["-stderrthreshold=LOUD"],
            ("X", ""),
            "-stderrthreshold=\"LOUD\"",
        ),
        (
            vec!["-logdir=/nonexistent/dir"],
            ("X", ""),
            "-logdir=/nonexistent/dir",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
            .args(&args)
            .current_dir(d.path())
            .env("HOME", d.path())
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // An argument that is not UTF-8: a usage error, not a panic.
    use std::os::unix::ffi::OsStrExt;
    let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .arg(std::ffi::OsStr::from_bytes(b"-config_dir=caf\xe9"))
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("argument 1 (-config_dir=caf\u{fffd}) is not UTF-8"),
        "{}",
        stderr(&o)
    );
}

/// Keys that mean nothing are named with file, line and a suggestion: `check` fails on
/// them, the daemon warns and starts, `-strict` refuses to start. Values echoed in errors
/// are cut to a readable length.
#[test]
fn typos_are_caught_and_named() {
    let d = tempfile::tempdir().unwrap();
    unreachable_config(d.path());
    let rep = d.path().join("replication.toml");
    let mut text = std::fs::read_to_string(&rep).unwrap();
    text.push_str(
        "[sink.local.spare]\nenabled = false\ndirectry = \"/x\"\n\
         [replicate]\nconcurency = 4\n[sink.nosuch]\nenabled = true\n\
         [notification.kafka]\noffsetSaveIntervalSeconds = 10\n",
    );
    std::fs::write(&rep, &text).unwrap();
    let lines = text.lines().count();
    let wants = [
        // A named sink section has the keys of its kind.
        format!(
            "{}:{}: sink.local.spare.directry: unknown key (ignored); did you mean `directory`?",
            rep.display(),
            lines - 6
        ),
        format!(
            "{}:{}: replicate.concurency: unknown key (ignored); did you mean `concurrency`?",
            rep.display(),
            lines - 4
        ),
        format!(
            "{}:{}: sink.nosuch: unknown section [sink.nosuch] (ignored)",
            rep.display(),
            lines - 2
        ),
        format!(
            "{}:{}: notification.kafka.offsetSaveIntervalSeconds: belongs in notification.toml, not replication.toml",
            rep.display(),
            lines
        ),
    ];
    let o = replicate(d.path(), &["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}{}", stderr(&o));
    let all = format!("{out}{}", stderr(&o));
    for want in &wants {
        assert_eq!(all.matches(want.as_str()).count(), 1, "said once:\n{all}");
        assert!(
            out.contains(&format!("FAIL  {want}")),
            "missing {want:?} in:\n{out}"
        );
    }

    let o = replicate(d.path(), &["-strict"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for want in &wants {
        assert!(
            stderr(&o).contains(want.as_str()),
            "missing {want:?} in:\n{}",
            stderr(&o)
        );
    }

    // Without -strict the daemon warns and starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .current_dir(d.path())
        .env("HOME", d.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("Configure notification input") {
        line.clear();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::io::Read::read_to_string(&mut err, &mut seen).unwrap();
    assert!(child.wait().unwrap().success(), "{seen}");
    for want in &wants {
        assert!(
            seen.lines()
                .any(|l| l.contains(" WARN ") && l.contains(want.as_str())),
            "missing {want:?} in:\n{seen}"
        );
    }

    // A long value echoed in an error is cut.
    std::fs::write(
        &rep,
        text.replace(
            "concurency = 4",
            &format!("concurrency = \"{}\"", "x".repeat(5000)),
        ),
    )
    .unwrap();
    let o = replicate(d.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2));
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.contains("replicate.concurrency"))
        .map(String::from)
        .unwrap_or_default();
    assert!(
        line.contains("(5000 bytes in all)") && line.len() < 300,
        "{line}"
    );
}

/// `check` against brokers that are not there says each problem once, under the input's
/// result, instead of librdkafka's repeated log lines.
#[test]
fn check_says_each_broker_problem_once() {
    let d = tempfile::tempdir().unwrap();
    unreachable_config(d.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.path().join("notification.toml"),
        format!(
            "[notification.kafka]\nenabled = true\n\
             hosts = [\"nosuchhost.invalid:9092\", \"127.0.0.1:{port}\"]\ntopic = \"t\"\n"
        ),
    )
    .unwrap();
    let o = replicate(d.path(), &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!stderr(&o).contains("librdkafka"), "{all}");
    assert_eq!(
        all.matches("Failed to resolve 'nosuchhost.invalid:9092'")
            .count(),
        1,
        "{all}"
    );
    assert_eq!(
        all.matches(&format!("127.0.0.1:{port} failed: Connection refused"))
            .count(),
        1,
        "{all}"
    );
    assert!(all.lines().count() < 20, "{all}");
}

/// `replicate filer.backup` with weed's flags: bad values are listed together with the
/// flag that gave them (exit 2); flag values checked as configuration name the flag; a
/// notification.toml is not read (weed filer.backup reads none), and a replication.toml
/// without a sink is refused as weed refuses it.
#[test]
fn filer_backup_flags_are_checked_like_configuration() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("replication.toml"),
        "[sink.local]\nenabled = true\ndirectory = \"/tmp/nowhere-backup\"\n",
    )
    .unwrap();
    // An enabled queue that `filer.replicate` would use: filer.backup never looks.
    std::fs::write(
        d.path().join("notification.toml"),
        "[notification.kafka]\nenabled = true\nhosts = [\"\"]\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["filer.backup"];
        all.extend_from_slice(args);
        let o = replicate(d.path(), &all);
        (o.status.code(), stderr(&o))
    };
    let (code, e) = run(&[
        "-filer=nohost",
        "-doDeleteFiles=maybe",
        "-initialSnapshot=yes",
    ]);
    assert_eq!(code, Some(2), "{e}");
    for want in [
        "flag -filer: \"nohost\": no port",
        "flag -doDeleteFiles: -doDeleteFiles=\"maybe\": not a boolean",
        "flag -initialSnapshot: -initialSnapshot=\"yes\": not a boolean",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let (code, e) = run(&[
        "-filer=127.0.0.1:1",
        "-filerPath=relative",
        "-filerExcludeFileName=(",
        "-filerExcludeFileNames=a/b",
    ]);
    assert_eq!(code, Some(2), "{e}");
    for want in [
        "flag -filerPath: source.filer.directory: must be an absolute filer path",
        "flag -filerExcludeFileName: source.filer.excludeFileNameRegexp: \"(\" is not a regular expression",
        "flag -filerExcludeFileNames: source.filer.excludeFileNames",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    assert!(!e.contains("notification"), "{e}");
    let (code, e) = run(&["-timeAgo=soon"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("-timeAgo=\"soon\""), "{e}");
    let (code, e) = run(&["-retentionDays=many"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("--retentionDays"), "{e}");
    std::fs::write(d.path().join("replication.toml"), "[sink.local]\n").unwrap();
    let (code, e) = run(&["-filer=127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("no sink is enabled"), "{e}");
    // filer.backup feeds one sink, as weed's; a second named one is refused.
    std::fs::write(
        d.path().join("replication.toml"),
        "[sink.local]\nenabled = true\ndirectory = \"/tmp/nowhere-backup\"\n\
         [sink.local.second]\nenabled = true\ndirectory = \"/tmp/nowhere-backup-2\"\n",
    )
    .unwrap();
    let (code, e) = run(&["-filer=127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains("sink.local.second.enabled") && e.contains("filer.backup feeds one sink"),
        "{e}"
    );
}
