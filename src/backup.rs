//! `replicate filer.backup`: `weed filer.backup`'s command line, turned into the same
//! settings `[source.filer] subscribe = true` gives, plus what makes the two tools
//! interchangeable on one source: upstream's checkpoint key in the source filer's KV
//! store, and upstream's default of keeping on the sink what the source deletes.
//!
//! As upstream, the source comes from the flags alone (replication.toml's
//! `[source.filer]` keys of upstream's are not used, and notification.toml is not read);
//! the sink, security.toml and our own keys (`[replicate]`, `[metrics]`,
//! `checkpoint_interval_seconds`, ...) come from the files.

use crate::cli::{BackupFlags, FlagError, flag_bool};
use crate::config::settings::{DeletePolicy, FailurePolicy, InputSettings, Settings, SinkSettings};
use crate::config::{Origin, Problem, RawConfig};

/// The `[source.filer]` keys `filer.backup`'s flags stand for (set whether the flag is
/// given or not: weed filer.backup takes its source from its flags alone).
const FROM_FLAGS: [&str; 10] = [
    "grpcAddress",
    "directory",
    "excludeDirectories",
    "excludeFileNames",
    "excludePathPatterns",
    "excludeFileNameRegexp",
    "filerProxy",
    "httpAddress",
    "subscribe",
    "initial_snapshot",
];

/// upstream's `BackupKeyPrefix`.
const KEY_PREFIX: &[u8] = b"backup.";

/// `filer.backup`'s flags, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Backup {
    pub http_address: String,
    pub grpc_address: String,
    flags: BackupFlags,
    proxy: bool,
    /// `-doDeleteFiles` if given.
    delete_files: Option<bool>,
    disable_error_retry: bool,
    initial_snapshot: bool,
}

impl Backup {
    /// Parse the flags; every bad one is a problem naming it.
    pub(crate) fn new(flags: &BackupFlags) -> Result<Backup, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut boolean = |name: &str, value: &Option<String>, default: bool| {
            flag_bool(name, value.as_deref(), default).unwrap_or_else(|e| {
                problems.push(flag_problem(name, e.to_string()));
                default
            })
        };
        let proxy = boolean("filerProxy", &flags.filer_proxy, false);
        let delete_files = flags
            .do_delete_files
            .is_some()
            .then(|| boolean("doDeleteFiles", &flags.do_delete_files, false));
        let disable_error_retry = boolean("disableErrorRetry", &flags.disable_error_retry, false);
        let initial_snapshot = boolean("initialSnapshot", &flags.initial_snapshot, false);
        boolean("debug", &flags.debug, false);
        boolean("ignore404Error", &flags.ignore404_error, true);
        let (http_address, grpc_address) = match server_address(&flags.filer) {
            Ok(pair) => pair,
            Err(why) => {
                problems.push(flag_problem(
                    "filer",
                    format!("{:?}: {why}", crate::text::cut(&flags.filer)),
                ));
                Default::default()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Backup {
            http_address,
            grpc_address,
            flags: flags.clone(),
            proxy,
            delete_files,
            disable_error_retry,
            initial_snapshot,
        })
    }

    /// Put the flags into the key space, over the files: the source and its filters,
    /// and the metadata-log input.
    pub(crate) fn configure(&self, raw: &mut RawConfig) {
        let f = &self.flags;
        let text = |s: &str| toml::Value::String(s.to_string());
        let on = |b: bool| toml::Value::Boolean(b);
        raw.set_flag(
            "source.filer.grpcAddress",
            text(&self.grpc_address),
            "-filer",
        );
        raw.set_flag("source.filer.directory", text(&f.filer_path), "-filerPath");
        // util.StringSplit: empty items dropped, nothing trimmed.
        let excluded = f
            .exclude_paths
            .split(',')
            .filter(|p| !p.is_empty())
            .map(text)
            .collect();
        raw.set_flag(
            "source.filer.excludeDirectories",
            toml::Value::Array(excluded),
            "-filerExcludePaths",
        );
        raw.set_flag(
            "source.filer.excludeFileNames",
            text(&f.exclude_file_names),
            "-filerExcludeFileNames",
        );
        raw.set_flag(
            "source.filer.excludePathPatterns",
            text(&f.exclude_path_patterns),
            "-filerExcludePathPatterns",
        );
        raw.set_flag(
            "source.filer.excludeFileNameRegexp",
            text(&f.exclude_file_name),
            "-filerExcludeFileName",
        );
        raw.set_flag("source.filer.filerProxy", on(self.proxy), "-filerProxy");
        let http = if self.proxy { &self.http_address } else { "" };
        raw.set_flag("source.filer.httpAddress", text(http), "-filerProxy");
        raw.set_flag("source.filer.subscribe", on(true), "filer.backup");
        raw.set_flag(
            "source.filer.initial_snapshot",
            on(self.initial_snapshot),
            "-initialSnapshot",
        );
    }

    /// Settle what depends on the sink: the checkpoint key, the delete policy, retention
    /// and the failure policy. Returns what to tell the operator at start.
    pub(crate) fn adjust(&self, settings: &mut Settings, raw: &RawConfig) -> Vec<String> {
        let mut notes = Vec::new();
        let sink = settings.sink.name();
        // GetSinkToDirectory() is the `directory` key as written.
        let directory = match raw.get(&format!("sink.{sink}.directory")) {
            Some((toml::Value::String(s), _)) => s,
            _ => String::new(),
        };
        if let InputSettings::Subscribe(cfg) = &mut settings.input {
            cfg.checkpoint_key = checkpoint_key(&self.flags.filer_path, sink, &directory);
            cfg.legacy_checkpoint_key = Some(legacy_checkpoint_key(sink, &directory));
        }
        // weed filer.backup joins the sink directory, the date and the path below
        // -filerPath, which never starts with `/`: into a GCS bucket with no directory,
        // object names have no leading `/` whatever -filerPath ends with.
        if let SinkSettings::Gcs(o) = &mut settings.sink
            && directory.is_empty()
        {
            o.slashless = true;
        }
        // Upstream keeps what the source deletes unless -doDeleteFiles says otherwise. The
        // file's `deletes` counts when it asks for more than a plain mirror: "keep", or
        // "trash" (which deletes too, so -doDeleteFiles keeps it). A "mirror" in the file
        // is what every template says, not a choice: it needs -doDeleteFiles, as upstream.
        let deletes_key = format!("sink.{sink}.deletes");
        let in_file = raw
            .set_outside_flags(&deletes_key)
            .then_some(settings.deletes);
        settings.deletes = match (self.delete_files, in_file) {
            (Some(true), Some(DeletePolicy::Trash)) => DeletePolicy::Trash,
            (Some(true), _) => DeletePolicy::Mirror,
            (Some(false), _) => DeletePolicy::Keep,
            (None, Some(DeletePolicy::Keep | DeletePolicy::Trash)) => settings.deletes,
            (None, Some(DeletePolicy::Mirror)) => {
                notes.push(format!(
                    "{deletes_key} = \"mirror\" is not used without -doDeleteFiles (as weed \
                     filer.backup): the sink keeps what the source deletes"
                ));
                DeletePolicy::Keep
            }
            (None, None) => DeletePolicy::Keep,
        };
        if settings.deletes != DeletePolicy::Trash {
            settings.trash = None;
        }
        let days = self.flags.retention_days;
        if days > 0 {
            if !settings.sink.incremental() {
                notes.push(format!(
                    "-retentionDays={days} has no effect: [sink.{sink}] is not incremental (as upstream)"
                ));
            } else {
                settings.retention_days = Some(u32::try_from(days.min(36_500)).unwrap_or(36_500));
            }
        }
        if self.disable_error_retry {
            settings.replicate.on_failure = FailurePolicy::Park;
            notes.push(format!(
                "-disableErrorRetry: an event that keeps failing is parked in {} after \
                 replicate.event_deadline_seconds, not dropped",
                settings.replicate.parked_file.display()
            ));
        }
        if self.flags.ignore404_error.is_some() {
            notes.push(
                "-ignore404Error: no effect; content gone from the source is always settled \
                 against the live source"
                    .into(),
            );
        }
        let unused: Vec<&str> = FROM_FLAGS
            .into_iter()
            .filter(|k| raw.set_outside_flags(&format!("source.filer.{k}")))
            .collect();
        if !unused.is_empty() {
            notes.push(format!(
                "the source comes from -filer and -filerPath, as with weed filer.backup; \
                 [source.filer] {} in the configuration are not used",
                unused.join(", ")
            ));
        }
        notes
    }

    /// Whether `-debug` asks for every event to be logged.
    pub(crate) fn debug(flags: &BackupFlags) -> Result<bool, FlagError> {
        flag_bool("debug", flags.debug.as_deref(), false)
    }
}

fn flag_problem(name: &str, message: String) -> Problem {
    Problem {
        origin: Origin::Flag(format!("-{name}")),
        key: String::new(),
        message,
    }
}

/// Where `weed filer.backup` 4.48 keeps its checkpoint in the source filer's KV store:
/// `backup.` and the low 32 bits, big-endian, of the first 8 bytes of the MD5 of the
/// source path (`-filerPath` as given), the sink's name and its directory (as written),
/// NUL-separated (`util.HashStringToLong`, truncated to `int32`).
pub fn checkpoint_key(source_path: &str, sink_name: &str, sink_directory: &str) -> Vec<u8> {
    key_of(&format!("{source_path}\0{sink_name}\0{sink_directory}"))
}

/// The key of `weed filer.backup` before 4.48, from the sink alone (two backups of one
/// sink shared it); 4.48 reads it when its own key has nothing yet.
pub(crate) fn legacy_checkpoint_key(sink_name: &str, sink_directory: &str) -> Vec<u8> {
    key_of(&format!("{sink_name}{sink_directory}"))
}

fn key_of(text: &str) -> Vec<u8> {
    use md5::Digest;
    let digest = md5::Md5::digest(text.as_bytes());
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&digest[4..8]);
    key
}

/// A weed server address (`pb.ServerAddress`): `host:port`, whose gRPC port is port +
/// 10000, or `host:port.grpcPort`. Returns the HTTP and the gRPC address.
fn server_address(address: &str) -> Result<(String, String), String> {
    let Some((host, ports)) = address.rsplit_once(':') else {
        return Err("no port; give host:port (the filer's HTTP port)".into());
    };
    if host.is_empty() {
        return Err("no host; give host:port".into());
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port"))
    };
    match ports.rsplit_once('.') {
        Some((http, grpc)) => Ok((
            format!("{host}:{}", port(http)?),
            format!("{host}:{}", port(grpc)?),
        )),
        None => {
            let http = port(ports)?;
            let grpc = u32::from(http) + 10_000;
            if grpc > u32::from(u16::MAX) {
                return Err(format!(
                    "gRPC port {grpc} (HTTP port + 10000) is out of range; give host:port.grpcPort"
                ));
            }
            Ok((format!("{host}:{http}"), format!("{host}:{grpc}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_as_weed_reads_them() {
        let ok = |a: &str| server_address(a).unwrap();
        assert_eq!(
            ok("localhost:8888"),
            ("localhost:8888".into(), "localhost:18888".into())
        );
        assert_eq!(
            ok("10.0.0.1:8888.9999"),
            ("10.0.0.1:8888".into(), "10.0.0.1:9999".into())
        );
        assert_eq!(
            ok("[::1]:8888"),
            ("[::1]:8888".into(), "[::1]:18888".into())
        );
        for bad in [
            "", "filer", ":8888", "h:x", "h:0", "h:60000", "h:1.x", "h:99999",
        ] {
            assert!(server_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checkpoint_keys_are_upstreams() {
        // Printed by Go (stdlib only) running upstream's HashStringToLong, int32 and
        // Uint32toBytes; the first two are also what weed filer.backup 4.48 wrote.
        for (path, name, dir, want) in [
            ("/data", "local", "/tmp/exp/s2", "6261636b75702e789068f8"),
            ("/data/", "local", "/tmp/exp/s2", "6261636b75702edc56cfac"),
            ("/", "s3", "/", "6261636b75702efa95c3df"),
            (
                "/buckets",
                "local_incremental",
                "/data/inc",
                "6261636b75702eaeee91a6",
            ),
        ] {
            assert_eq!(
                hex::encode(checkpoint_key(path, name, dir)),
                want,
                "{name} {dir}"
            );
        }
        for (name, dir, want) in [
            ("local", "/backup", "6261636b75702e998c546d"),
            ("s3", "/", "6261636b75702e2d650357"),
            ("local_incremental", "/data/inc", "6261636b75702ec9acdac1"),
        ] {
            assert_eq!(
                hex::encode(legacy_checkpoint_key(name, dir)),
                want,
                "{name} {dir}"
            );
        }
    }

    fn flags(args: &[&str]) -> BackupFlags {
        use clap::Parser;
        let mut all = vec!["replicate".to_string(), "filer.backup".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        match crate::cli::Cli::try_parse_from(crate::cli::normalize_args(all))
            .unwrap()
            .command
        {
            Some(crate::cli::Command::FilerBackup(f)) => *f,
            other => panic!("{other:?}"),
        }
    }

    const FILES: &str = r#"
[source.filer]
grpcAddress = "elsewhere:18888"
directory = "/buckets"
excludeDirectories = "/buckets/tmp"
checkpoint_interval_seconds = 7
[sink.local]
enabled = true
directory = "/backup"
"#;

    /// Settings for `filer.backup` with `args` over `files`, and the notes, or every
    /// problem as text.
    fn settle(files: &str, args: &[&str]) -> Result<(Settings, Vec<String>), Vec<String>> {
        let text = |p: Vec<Problem>| p.iter().map(ToString::to_string).collect::<Vec<_>>();
        let backup = Backup::new(&flags(args)).map_err(text)?;
        let mut raw = RawConfig::from_toml(files, Default::default());
        backup.configure(&mut raw);
        let mut settings =
            crate::config::resolve(&raw, std::path::Path::new("/work")).map_err(|e| text(e.0))?;
        let notes = backup.adjust(&mut settings, &raw);
        Ok((settings, notes))
    }

    #[test]
    fn the_flags_stand_for_the_source_and_the_checkpoint_is_upstreams() {
        let (s, notes) = settle(
            FILES,
            &[
                "-filer=filer1:8889",
                "-filerPath=/data",
                "-filerExcludePaths=/data/a,,/data/b",
                "-filerExcludeFileName=^\\.~",
                "-filerExcludeFileNames=*.tmp",
                "-ignore404Error=false",
            ],
        )
        .unwrap();
        assert_eq!(s.source.grpc_address, "filer1:18889");
        assert_eq!(s.source.directory, "/data");
        assert_eq!(s.source.exclude_directories, ["/data/a", "/data/b"]);
        assert!(s.source.filter.excludes_file_name(".~x"));
        assert!(s.source.filter.excludes_file_name("x.tmp"));
        assert!(!s.source.filter.excludes_file_name("x.txt"));
        assert_eq!(s.source.proxy, None);
        let InputSettings::Subscribe(cfg) = &s.input else {
            panic!("{:?}", s.input)
        };
        assert_eq!(
            cfg.checkpoint_key,
            checkpoint_key("/data", "local", "/backup")
        );
        assert_eq!(
            hex::encode(cfg.legacy_checkpoint_key.as_ref().unwrap()),
            "6261636b75702e998c546d"
        );
        assert_eq!(
            cfg.checkpoint_interval.as_secs(),
            7,
            "our own keys still count"
        );
        assert!(!cfg.initial_snapshot);
        assert_eq!(
            s.deletes,
            DeletePolicy::Keep,
            "upstream's -doDeleteFiles=false"
        );
        assert!(
            notes.iter().any(|n| n.contains("-ignore404Error")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("grpcAddress, directory, excludeDirectories")),
            "{notes:?}"
        );
    }

    #[test]
    fn deletes_retention_proxy_and_failures() {
        let deletes = |files: &str, args: &[&str]| settle(files, args).unwrap().0.deletes;
        assert_eq!(deletes(FILES, &["-doDeleteFiles"]), DeletePolicy::Mirror);
        assert_eq!(
            deletes(FILES, &["-doDeleteFiles=false"]),
            DeletePolicy::Keep
        );
        let mirror = FILES.replace(
            "directory = \"/backup\"",
            "directory = \"/backup\"\ndeletes = \"mirror\"",
        );
        assert_eq!(
            deletes(&mirror, &[]),
            DeletePolicy::Keep,
            "a template's mirror is not a choice: it needs -doDeleteFiles"
        );
        assert_eq!(deletes(&mirror, &["-doDeleteFiles"]), DeletePolicy::Mirror);
        let keep = mirror.replace("\"mirror\"", "\"keep\"");
        assert_eq!(deletes(&keep, &[]), DeletePolicy::Keep);
        assert_eq!(deletes(&keep, &["-doDeleteFiles"]), DeletePolicy::Mirror);
        let trash = mirror.replace("\"mirror\"", "\"trash\"");
        assert_eq!(
            deletes(&trash, &[]),
            DeletePolicy::Trash,
            "the file's own choice"
        );
        assert_eq!(deletes(&trash, &["-doDeleteFiles"]), DeletePolicy::Trash);
        assert_eq!(deletes(&trash, &["-doDeleteFiles=0"]), DeletePolicy::Keep);
        let (s, _) = settle(&trash, &["-doDeleteFiles=false"]).unwrap();
        assert_eq!(s.trash, None);
        let (s, _) = settle(&trash, &[]).unwrap();
        assert!(s.trash.is_some());
        // A file that reads through its filer, and flags that do not: the flags win,
        // httpAddress included.
        let proxied = FILES.replace(
            "checkpoint_interval_seconds = 7",
            "checkpoint_interval_seconds = 7\nfilerProxy = true\nhttpAddress = \"f:1\"",
        );
        let (s, notes) = settle(&proxied, &[]).unwrap();
        assert_eq!(s.source.proxy, None);
        assert!(
            notes.iter().any(|n| n.contains("filerProxy, httpAddress")),
            "{notes:?}"
        );

        let (s, notes) = settle(FILES, &["-retentionDays=3", "-disableErrorRetry"]).unwrap();
        assert_eq!(s.retention_days, None);
        assert!(
            notes.iter().any(|n| n.contains("not incremental")),
            "{notes:?}"
        );
        assert_eq!(s.replicate.on_failure, FailurePolicy::Park);
        let dated = FILES.replace("[sink.local]", "[sink.local_incremental]");
        let (s, _) = settle(&dated, &["-retentionDays=3"]).unwrap();
        assert_eq!(s.retention_days, Some(3));

        let (s, _) = settle(
            FILES,
            &["-filer=f:8888.7777", "-filerProxy", "-initialSnapshot"],
        )
        .unwrap();
        assert_eq!(s.source.grpc_address, "f:7777");
        assert_eq!(s.source.proxy.as_deref(), Some("f:8888"));
        let InputSettings::Subscribe(cfg) = &s.input else {
            panic!()
        };
        assert!(cfg.initial_snapshot);
    }

    #[test]
    fn gcs_object_names_follow_filer_backups_layout() {
        let gcs = |dir: &str| {
            FILES.replace(
                "[sink.local]\nenabled = true\ndirectory = \"/backup\"",
                &format!("[sink.google_cloud_storage]\nenabled = true\nbucket = \"b\"\n{dir}"),
            )
        };
        let slashless = |files: &str, path: &str| match settle(files, &[path]).unwrap().0.sink {
            SinkSettings::Gcs(o) => o.slashless,
            other => panic!("{other:?}"),
        };
        // No directory: "a/b" under -filerPath=/data as under /data/ (filer.replicate
        // writes "/a/b" for a source directory without the slash).
        assert!(slashless(&gcs(""), "-filerPath=/data"));
        assert!(slashless(&gcs("directory = \"\""), "-filerPath=/data"));
        assert!(slashless(&gcs(""), "-filerPath=/data/"));
        assert!(!slashless(&gcs("directory = \"/x\""), "-filerPath=/data"));
        assert!(slashless(&gcs("directory = \"x\""), "-filerPath=/data"));
    }

    #[test]
    fn bad_flags_are_named_all_at_once() {
        let e = settle(
            FILES,
            &["-filer=nohost", "-doDeleteFiles=maybe", "-debug=2"],
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("flag -doDeleteFiles: "), "{e:?}");
        assert!(
            e.iter().any(|p| p.starts_with("flag -filer: \"nohost\"")),
            "{e:?}"
        );
        let e = settle(
            FILES,
            &[
                "-filerPath=data",
                "-filerExcludeFileName=(",
                "-filerExcludePaths=x",
            ],
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter()
                .any(|p| p.starts_with("flag -filerPath: source.filer.directory")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p
                    .starts_with("flag -filerExcludeFileName: source.filer.excludeFileNameRegexp")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|p| p.starts_with("flag -filerExcludePaths: source.filer.excludeDirectories")),
            "{e:?}"
        );
    }
}
