//! Typed settings resolved (purely: files and environment come through the `Reader`)
//! from the merged key space, one module per area: `source`,
//! `input`, `sink`, `security`, `replicate` and `metrics`, each with its types and its
//! resolve. This module runs them in that order (problems are listed in it) and joins
//! what depends on two areas (the metadata-log input's checkpoint key).

mod input;
mod metrics;
mod replicate;
mod security;
mod sink;
mod source;

pub(crate) use input::*;
pub(crate) use metrics::*;
pub(crate) use replicate::*;
pub(crate) use security::*;
pub(crate) use sink::*;
pub(crate) use source::*;

#[cfg(test)]
use super::FileCheck;
use super::{ConfigErrors, Problem, RawConfig, Reader};
use crate::path::{components, normalize_dir};
pub(crate) use crate::sink::filer::FilerSinkOptions;
pub(crate) use crate::sink::object::azure::{AzureCredential, AzureSinkOptions};
pub(crate) use crate::sink::object::b2::B2SinkOptions;
pub(crate) use crate::sink::object::gcs::GcsSinkOptions;
pub(crate) use crate::sink::object::s3::S3SinkOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Inputs in upstream's precedence order.
pub(crate) const INPUTS: [&str; 4] = ["aws_sqs", "gocdk_pub_sub", "google_pub_sub", "kafka"];
/// Sinks in upstream's precedence order.
pub(crate) const SINKS: [&str; 7] = [
    "azure",
    "backblaze",
    "filer",
    "google_cloud_storage",
    "local_incremental",
    "local",
    "s3",
];

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub source: SourceSettings,
    pub input: InputSettings,
    /// The first sink's section under `sink.` (see [`SinkChoice::id`]).
    pub sink_id: String,
    /// The first sink (the only one, unless named sections enable more).
    pub sink: SinkSettings,
    /// The sink's `deletes`.
    pub deletes: DeletePolicy,
    /// The sink's `retention_days`, for dated copies.
    pub retention_days: Option<u32>,
    /// With `deletes = "trash"`: where and for how long.
    pub trash: Option<TrashSettings>,
    /// The other sinks fed (named sections), in upstream's order of kinds, then by name.
    pub also: Vec<SinkChoice>,
    /// What the log should warn about (several unnamed sinks enabled).
    pub warnings: Vec<String>,
    /// `[replicate] on_failure`, for the sinks without their own (`replicate.on_failure`
    /// is the first sink's).
    pub on_failure_default: FailurePolicy,
    pub security: SecuritySettings,
    pub replicate: ReplicateSettings,
    pub metrics: MetricsSettings,
    /// Keys that mean nothing (misspelt, unknown sections, in the wrong file): warnings,
    /// or errors under `-strict`.
    pub typos: Vec<Problem>,
}

fn enabled_sections(r: &mut Reader, prefix: &str, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .copied()
        .filter(|n| r.bool(&format!("{prefix}.{n}.enabled"), false))
        .collect()
}

/// A section's `aws_access_key_id` and `aws_secret_access_key`: both, or neither (the
/// default credential chain).
fn aws_keys(r: &mut Reader, section: &str) -> (String, String) {
    let id = r.string(&format!("{section}.aws_access_key_id"), "");
    let secret = r.string(&format!("{section}.aws_secret_access_key"), "");
    if id.is_empty() != secret.is_empty() {
        r.problem(&format!("{section}.aws_access_key_id"), "aws_access_key_id and aws_secret_access_key must be set together (or both left empty for the default credential chain)");
    }
    (id, secret)
}

/// `{section}.google_application_credentials`: inline JSON as it is, else a file path
/// made absolute against `cwd` (after `~/` is expanded, where `expand_home`) that must
/// exist. Empty means application default credentials.
fn google_credentials(r: &mut Reader, section: &str, cwd: &Path, expand_home: bool) -> String {
    let key = format!("{section}.google_application_credentials");
    let mut credentials = r.string(&key, "");
    if expand_home
        && let Some(rest) = credentials.strip_prefix("~/")
        && let Some(home) = r.env("HOME")
    {
        credentials = Path::new(&home).join(rest).display().to_string();
    }
    if !credentials.is_empty() && !credentials.trim_start().starts_with('{') {
        credentials = cwd.join(&credentials).display().to_string();
        if !r.is_file(Path::new(&credentials)) {
            r.problem(&key, format!("file {credentials:?} does not exist"));
        }
    }
    credentials
}

/// Resolve typed settings, relative paths against `cwd`. Pure apart from reading nothing.
pub(crate) fn resolve(raw: &RawConfig, cwd: &Path) -> Result<Settings, ConfigErrors> {
    let mut r = Reader::new(raw);
    let source = resolve_source(&mut r);
    let (mut input, subscribe) = resolve_inputs(&mut r, cwd);
    let mut warnings = Vec::new();
    let mut sinks = resolve_sinks(&mut r, &source, cwd, &mut warnings);
    let security = resolve_security(&mut r, cwd);
    let replicate = resolve_replicate(&mut r, cwd);
    let metrics = resolve_metrics(&mut r);

    if subscribe.enabled && !sinks.is_empty() {
        input = Some(subscribe_input(&subscribe, &source, &sinks));
    }

    #[cfg(test)]
    super::typos::assert_templates_know(&r.read.borrow());
    let typos = super::typos::find(raw, &r.read.borrow());
    let typos = if raw.strict {
        r.problems.extend(typos);
        Vec::new()
    } else {
        typos
    };
    match input {
        Some(input) if r.problems.is_empty() && !sinks.is_empty() => {
            let first = sinks.remove(0);
            let mut replicate = replicate;
            let on_failure_default = replicate.on_failure;
            if let Some(policy) = first.on_failure {
                replicate.on_failure = policy;
            }
            Ok(Settings {
                on_failure_default,
                source,
                input,
                sink_id: first.id,
                sink: first.settings,
                deletes: first.deletes,
                retention_days: first.retention_days,
                trash: first.trash,
                also: sinks,
                warnings,
                security,
                replicate,
                metrics,
                typos,
            })
        }
        _ => Err(ConfigErrors(r.problems)),
    }
}

impl Settings {
    /// Whether several sinks are fed.
    pub(crate) fn several_sinks(&self) -> bool {
        !self.also.is_empty()
    }

    /// One view of the settings per sink, each with that sink alone; with several, each
    /// keeps its state (the parked file and what lives beside it) in a directory of its
    /// own, `sinks/<id>/` beside the configured parked file.
    pub(crate) fn views(&self) -> Vec<Settings> {
        let first = SinkChoice {
            id: self.sink_id.clone(),
            settings: self.sink.clone(),
            deletes: self.deletes,
            retention_days: self.retention_days,
            trash: self.trash.clone(),
            // Already applied to `replicate`.
            on_failure: Some(self.replicate.on_failure),
        };
        let several = self.several_sinks();
        std::iter::once(first)
            .chain(self.also.iter().cloned())
            .map(|choice| {
                let mut view = self.clone();
                view.also = Vec::new();
                if several {
                    let parked = &self.replicate.parked_file;
                    let name = parked.file_name().unwrap_or_default();
                    view.replicate.parked_file =
                        parked.with_file_name("sinks").join(&choice.id).join(name);
                }
                view.sink_id = choice.id;
                view.sink = choice.settings;
                view.deletes = choice.deletes;
                view.retention_days = choice.retention_days;
                view.trash = choice.trash;
                view.replicate.on_failure = choice.on_failure.unwrap_or(self.on_failure_default);
                view
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[source.filer]
grpcAddress = "localhost:18888"
directory = "/buckets/"
excludeDirectories = "/buckets/tmp /buckets/cache"
[sink.local]
enabled = true
directory = "/data"
[notification.kafka]
enabled = true
hosts = ["localhost:9092"]
topic = "seaweedfs_filer"
offsetFile = "./last.offset"
offsetSaveIntervalSeconds = 10
"#;

    fn resolve_text(text: &str) -> Result<Settings, ConfigErrors> {
        resolve(
            &RawConfig::from_toml(text, HashMap::new()),
            Path::new("/work"),
        )
    }

    fn with_input(input: &str) -> String {
        let base = GOOD.split("[notification.kafka]").next().unwrap();
        format!("{base}{input}")
    }

    #[test]
    fn named_files_are_checked_through_the_configuration_not_the_disk() {
        let text = GOOD.replace(
            "[sink.local]\nenabled = true\ndirectory = \"/data\"",
            "[sink.google_cloud_storage]\nenabled = true\nbucket = \"b\"\n\
             google_application_credentials = \"keys/gcs.json\"",
        );
        let mut raw = RawConfig::from_toml(&text, HashMap::new());
        let e = resolve(&raw, Path::new("/nowhere"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("google_application_credentials") && e.contains("does not exist"),
            "{e}"
        );
        // The same configuration where the check says the file is there: no disk asked.
        raw.file_check = FileCheck(|p| p == Path::new("/nowhere/keys/gcs.json"));
        let s = resolve(&raw, Path::new("/nowhere")).unwrap();
        assert_eq!(s.sink.name(), "google_cloud_storage");
    }

    #[test]
    fn object_store_directories_as_upstream_accepts_them() {
        // (source directory, sink directory, incremental) -> (directory, GCS slashless)
        let cases = [
            ("/buckets", "backup", false, "/backup", true),
            ("/buckets", "/backup", false, "/backup", false),
            ("/buckets", "", false, "/", false),
            ("/buckets/", "", false, "/", true),
            ("/", "", false, "/", true),
            ("/buckets", "", true, "/", true),
            ("/buckets", "/", true, "/", false),
        ];
        // The GCS sink's directory and slashless for a source directory and the rest of
        // its section.
        let gcs = |source: &str, section: &str| {
            let text = GOOD
                .replace(
                    "directory = \"/buckets/\"",
                    &format!("directory = \"{source}\""),
                )
                .replace(
                    "[sink.local]\nenabled = true\ndirectory = \"/data\"",
                    &format!(
                        "[sink.google_cloud_storage]\nenabled = true\nbucket = \"b\"\n{section}"
                    ),
                );
            match resolve_text(&text).unwrap().sink {
                SinkSettings::Gcs(g) => (g.directory, g.slashless),
                other => panic!("gcs expected, got {other:?}"),
            }
        };
        for (source, dir, inc, want, slashless) in cases {
            let section = format!(
                "directory = \"{dir}\"\nis_incremental = {inc}\n\
                 [sink.s3]\nenabled = false\nbucket = \"b\"\ndirectory = \"{dir}\""
            );
            assert_eq!(
                gcs(source, &section),
                (want.to_string(), slashless),
                "{source} {dir:?} {inc}"
            );
        }
        // A missing directory is empty, as viper reads it (not "/").
        for (source, slashless) in [("/buckets/", true), ("/buckets", false)] {
            assert_eq!(gcs(source, ""), ("/".to_string(), slashless), "{source}");
        }
        let text = GOOD.replace("directory = \"/data\"", "directory = \"a/../../x\"");
        let text = text.replace("[sink.local]", "[sink.s3]\nbucket = \"b\"");
        let e = resolve_text(&text).unwrap_err();
        assert!(e.to_string().contains("sink.s3.directory"), "{e}");
    }

    #[test]
    fn the_metadata_log_starts_where_start_from_says() {
        let subscribe = |extra: &str| {
            GOOD.split("[notification.kafka]").next().unwrap().replace(
                "[source.filer]\n",
                &format!("[source.filer]\nsubscribe = true\n{extra}"),
            )
        };
        let start = |extra: &str| match resolve_text(&subscribe(extra)).unwrap().input {
            InputSettings::Subscribe(s) => (s.start_from, s.start_over),
            _ => panic!("subscribe expected"),
        };
        assert_eq!(start(""), (None, None));
        assert_eq!(
            start("start_from = \"1764547200123\"\n"),
            (Some(StartFrom::At(1_764_547_200_123_000_000)), None),
            "Unix milliseconds, as -a.fromTsMs"
        );
        assert_eq!(
            start("start_from = \"2026-12-01T01:00:00.5+01:00\"\n").0,
            Some(StartFrom::At(1_796_083_200_500_000_000)),
            "RFC 3339, offset included"
        );
        assert_eq!(
            start("start_from = \"1h30m\"\n").0,
            Some(StartFrom::Ago(Duration::from_secs(5400))),
            "a duration ago, as -timeAgo"
        );
        assert_eq!(
            StartFrom::Ago(Duration::from_secs(2)).ns(10_000_000_000),
            8_000_000_000
        );
        assert_eq!(StartFrom::At(5).ns(10_000_000_000), 5);
        assert_eq!(
            StartFrom::At(1_796_083_200_500_000_000).to_string(),
            "2026-12-01T00:00:00.500Z"
        );
        for bad in [
            "yesterday",
            "-1h",
            "1d",
            "2026-12-01",
            "99999999999999999999",
        ] {
            let e = resolve_text(&subscribe(&format!("start_from = \"{bad}\"\n"))).unwrap_err();
            assert_eq!(e.0.len(), 1, "{bad}: {e}");
            assert_eq!(e.0[0].key, "source.filer.start_from", "{bad}");
        }
        let e =
            resolve_text(&subscribe("start_from = \"1h\"\ninitial_snapshot = true\n")).unwrap_err();
        assert!(e.to_string().contains("keep one"), "{e}");
        let e = resolve_text(
            &GOOD.replace("[source.filer]\n", "[source.filer]\nstart_from = \"1h\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only with subscribe"), "{e}");
    }

    #[test]
    fn name_and_pattern_filters_are_comma_separated_wildcards() {
        let s = resolve_text(&GOOD.replace(
            "[source.filer]\n",
            "[source.filer]\nexcludeFileNames = \"*.tmp, ._*,,\"\nexcludePathPatterns = \".snapshot\"\n",
        ))
        .unwrap();
        assert_eq!(
            s.source.filter.file_names,
            [
                crate::replicate::filter::Wildcard::new("*.tmp"),
                crate::replicate::filter::Wildcard::new("._*")
            ]
        );
        assert_eq!(
            s.source.filter.path_patterns,
            [crate::replicate::filter::Wildcard::new(".snapshot")]
        );
        let e = resolve_text(&GOOD.replace(
            "[source.filer]\n",
            "[source.filer]\nexcludePathPatterns = \"a/b\"\n",
        ))
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "source.filer.excludePathPatterns");
    }

    #[test]
    fn a_sink_mirrors_deletes_unless_told_to_keep_them() {
        let with = |v: &str| {
            GOOD.replace(
                "[sink.local]\nenabled = true\n",
                &format!("[sink.local]\nenabled = true\ndeletes = \"{v}\"\n"),
            )
        };
        assert_eq!(resolve_text(GOOD).unwrap().deletes, DeletePolicy::Mirror);
        assert_eq!(
            resolve_text(&with("mirror")).unwrap().deletes,
            DeletePolicy::Mirror
        );
        assert_eq!(
            resolve_text(&with("keep")).unwrap().deletes,
            DeletePolicy::Keep
        );
        let e = resolve_text(&with("bin")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "sink.local.deletes");
        assert!(e.to_string().contains("\"trash\""), "{e}");

        // The trash: its defaults, its own keys, and what they must be.
        let s = resolve_text(&with("trash")).unwrap();
        assert_eq!(s.deletes, DeletePolicy::Trash);
        assert_eq!(
            s.trash,
            Some(TrashSettings {
                directory: ".replicate-trash".into(),
                days: Some(30)
            })
        );
        let trash = |extra: &str| {
            with("trash").replace(
                "deletes = \"trash\"\n",
                &format!("deletes = \"trash\"\n{extra}\n"),
            )
        };
        let s = resolve_text(&trash(
            "trash_directory = \"bin\"\ntrash_retention_days = 0",
        ))
        .unwrap();
        assert_eq!(
            s.trash,
            Some(TrashSettings {
                directory: "bin".into(),
                days: None
            })
        );
        for (extra, key) in [
            ("trash_directory = \"a/b\"", "sink.local.trash_directory"),
            ("trash_directory = \"..\"", "sink.local.trash_directory"),
            ("trash_directory = \"\"", "sink.local.trash_directory"),
            (
                "trash_retention_days = 40000",
                "sink.local.trash_retention_days",
            ),
            ("is_incremental = true", "sink.local.deletes"),
        ] {
            let e = resolve_text(&trash(extra)).unwrap_err();
            assert_eq!(e.0.len(), 1, "{extra}: {e}");
            assert_eq!(e.0[0].key, key, "{extra}: {e}");
        }
        // Set to something else without the trash: a problem; at the defaults (as the
        // templates print them): nothing.
        let mirror = |extra: &str| {
            GOOD.replace(
                "[sink.local]\nenabled = true\n",
                &format!("[sink.local]\nenabled = true\n{extra}\n"),
            )
        };
        let e = resolve_text(&mirror("trash_retention_days = 7")).unwrap_err();
        assert_eq!(e.0[0].key, "sink.local.trash_retention_days", "{e}");
        let s = resolve_text(&mirror(
            "trash_directory = \".replicate-trash\"\ntrash_retention_days = 30",
        ))
        .unwrap();
        assert_eq!(s.trash, None);
    }

    #[test]
    fn reads_through_the_filer_use_its_http_address() {
        let with =
            |keys: &str| GOOD.replace("[source.filer]\n", &format!("[source.filer]\n{keys}"));
        assert_eq!(resolve_text(GOOD).unwrap().source.proxy, None);
        // SeaweedFS's convention: the gRPC port is the HTTP port + 10000.
        let s = resolve_text(&with("filerProxy = true\n")).unwrap();
        let grpc = s.source.grpc_address.clone();
        let (host, port) = grpc.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        assert_eq!(s.source.proxy, Some(format!("{host}:{}", port - 10000)));
        let s = resolve_text(&with(
            "filerProxy = true\nhttpAddress = \"filer.local:80\"\n",
        ))
        .unwrap();
        assert_eq!(s.source.proxy.as_deref(), Some("filer.local:80"));
        for (keys, key, says) in [
            (
                "httpAddress = \"filer:8888\"\n",
                "source.filer.httpAddress",
                "filerProxy = true",
            ),
            (
                "filerProxy = true\nhttpAddress = \"filer\"\n",
                "source.filer.httpAddress",
                "not host:port",
            ),
            ("filerProxy = \"yes\"\n", "source.filer.filerProxy", ""),
        ] {
            let e = resolve_text(&with(keys)).unwrap_err();
            assert_eq!(e.0.len(), 1, "{keys}: {e}");
            assert_eq!(e.0[0].key, key, "{keys}");
            assert!(e.to_string().contains(says), "{keys}: {e}");
        }
        let low = GOOD.replace(&grpc, "filer:9000");
        let e =
            resolve_text(&low.replace("[source.filer]\n", "[source.filer]\nfilerProxy = true\n"))
                .unwrap_err();
        assert!(e.to_string().contains("set httpAddress"), "{e}");
    }

    #[test]
    fn an_s3_acl_is_one_of_the_canned_ones() {
        let s3 = |acl: &str| {
            GOOD.replace(
                "[sink.local]\nenabled = true\ndirectory = \"/data\"",
                &format!("[sink.s3]\nenabled = true\nbucket = \"b\"\nacl = \"{acl}\""),
            )
        };
        let s = resolve_text(&s3("bucket-owner-full-control")).unwrap();
        let SinkSettings::S3(o) = &s.sink else {
            panic!("s3 expected")
        };
        assert_eq!(
            o.acl,
            Some(aws_sdk_s3::types::ObjectCannedAcl::BucketOwnerFullControl)
        );
        let SinkSettings::S3(o) = &resolve_text(&s3("")).unwrap().sink else {
            panic!("s3 expected")
        };
        assert_eq!(o.acl, None);
        let e = resolve_text(&s3("public")).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "sink.s3.acl");
        assert!(e.to_string().contains("public-read"), "{e}");
    }

    #[test]
    fn gocdk_urls_map_onto_the_native_inputs() {
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\n\
             sub_url = \"awssqs://sqs.eu-west-1.amazonaws.com/123456789012/filer?region=eu-west-1\"\n",
        ))
        .unwrap();
        let InputSettings::Sqs(q) = &s.input else {
            panic!("sqs expected")
        };
        assert_eq!(q.region, "eu-west-1");
        assert_eq!(q.queue_name, "filer");
        assert_eq!(
            q.queue_url,
            "https://sqs.eu-west-1.amazonaws.com/123456789012/filer"
        );
        assert!(q.gocdk && !q.raw && q.endpoint.is_empty());
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\n\
             sub_url = \"awssqs://h:1/1/q?raw=true&endpoint=http%3A%2F%2Fh%3A1\"\n",
        ))
        .unwrap();
        let InputSettings::Sqs(q) = &s.input else {
            panic!("sqs expected")
        };
        assert!(q.raw && q.endpoint == "http://h:1", "{q:?}");
        let e = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"awssqs://h/1/q?raw=yes\"\n",
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("raw=\"yes\" is not a boolean"),
            "{e}"
        );
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"gcppubsub://projects/p1/subscriptions/s1\"\n",
        ))
        .unwrap();
        let InputSettings::PubSub(p) = &s.input else {
            panic!("pubsub expected")
        };
        assert_eq!(
            (p.project_id.as_str(), p.subscription.as_str()),
            ("p1", "s1")
        );
        assert!(
            p.topic.is_empty(),
            "a subscription URL names no topic to create"
        );
        for (url, want) in [
            (
                "gcppubsub://projects/p1/topics/t",
                "expected gcppubsub://projects/",
            ),
            ("kafka://x", "expected rabbit://"),
        ] {
            let e = resolve_text(&with_input(&format!(
                "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"{url}\"\n"
            )))
            .unwrap_err();
            assert!(e.to_string().contains(want), "{url}: {e}");
        }
        // Resolving reads the environment the configuration was loaded with, never the
        // process's: without RABBIT_SERVER_URL there, a rabbit:// URL is a problem.
        let e = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"rabbit://q\"\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("RABBIT_SERVER_URL"), "{e}");
        let text =
            with_input("[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"rabbit://q\"\n");
        let env = HashMap::from([("RABBIT_SERVER_URL".to_string(), "amqp://h/".to_string())]);
        let s = resolve(&RawConfig::from_toml(&text, env), Path::new("/")).unwrap();
        assert!(matches!(&s.input, InputSettings::Rabbit(r) if r.server_url == "amqp://h/"));
    }

    /// What the environment decides is resolved from the configuration's map: an Entra ID
    /// source that cannot work is a configuration problem naming `account_key`, the
    /// emulators' hosts are read there, and `-strict` travels with the configuration.
    #[test]
    fn the_environment_and_strictness_come_with_the_configuration() {
        let azure = GOOD.replace(
            "[sink.local]\nenabled = true\ndirectory = \"/data\"",
            "[sink.azure]\nenabled = true\naccount_name = \"acct\"\naccount_key = \"\"\n\
             container = \"c\"",
        );
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        // A client secret without a tenant, then a login host that is not https.
        for vars in [
            vec![("AZURE_CLIENT_ID", "id"), ("AZURE_CLIENT_SECRET", "s")],
            vec![
                ("AZURE_CLIENT_ID", "id"),
                ("AZURE_CLIENT_SECRET", "s"),
                ("AZURE_TENANT_ID", "t"),
                ("AZURE_AUTHORITY_HOST", "http://login.example"),
            ],
        ] {
            let e = resolve(&RawConfig::from_toml(&azure, env(&vars)), Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("sink.azure.account_key") && e.contains("Entra ID"),
                "{vars:?}: {e}"
            );
        }
        let vars = [
            ("AZURE_CLIENT_ID", "id"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_TENANT_ID", "t"),
        ];
        let s = resolve(&RawConfig::from_toml(&azure, env(&vars)), Path::new("/")).unwrap();
        assert!(
            matches!(&s.sink, SinkSettings::Azure(a) if matches!(a.credential, AzureCredential::Entra(_))),
            "{:?}",
            s.sink
        );
        let gcs = GOOD.replace(
            "[sink.local]\nenabled = true\ndirectory = \"/data\"",
            "[sink.google_cloud_storage]\nenabled = true\nbucket = \"b\"",
        );
        let vars = [("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")];
        let s = resolve(&RawConfig::from_toml(&gcs, env(&vars)), Path::new("/")).unwrap();
        assert!(
            matches!(&s.sink, SinkSettings::Gcs(g) if g.emulator_host.as_deref() == Some("127.0.0.1:4443"))
        );
        let s = resolve_text(&gcs).unwrap();
        assert!(matches!(&s.sink, SinkSettings::Gcs(g) if g.emulator_host.is_none()));
        // A key that means nothing is a warning, or a problem when the configuration is
        // read strictly.
        let typo = GOOD.replace(
            "directory = \"/data\"",
            "directory = \"/data\"\ndirectroy = \"/x\"",
        );
        let mut raw = RawConfig::from_toml(&typo, HashMap::new());
        raw.files = vec![("replication".into(), "replication.toml".into())];
        let s = resolve(&raw, Path::new("/work")).unwrap();
        assert!(
            s.typos.iter().any(|p| p.key == "sink.local.directroy"),
            "{:?}",
            s.typos
        );
        raw.strict = true;
        let e = resolve(&raw, Path::new("/work")).unwrap_err().to_string();
        assert!(e.contains("directroy"), "{e}");
    }

    #[test]
    fn queue_inputs_and_the_metadata_log() {
        let s = resolve_text(&with_input(
            "[notification.aws_sqs]\nenabled = true\nsqs_queue_name = \"q\"\nendpoint = \"http://localhost:4566\"\n",
        ))
        .unwrap();
        assert!(
            matches!(&s.input, InputSettings::Sqs(q) if q.queue_name == "q" && q.endpoint == "http://localhost:4566")
        );
        let s = resolve_text(&with_input(
            "[notification.google_pub_sub]\nenabled = true\nproject_id = \"p\"\ntopic = \"t\"\n",
        ))
        .unwrap();
        assert!(
            matches!(&s.input, InputSettings::PubSub(p) if p.subscription == "seaweedfs_sub"),
            "upstream's subscription name by default"
        );
        let subscribe = GOOD
            .split("[notification.kafka]")
            .next()
            .unwrap()
            .replace("[source.filer]\n", "[source.filer]\nsubscribe = true\n");
        let s = resolve_text(&subscribe).unwrap();
        let InputSettings::Subscribe(a) = &s.input else {
            panic!("subscribe expected")
        };
        let other =
            resolve_text(&subscribe.replace("directory = \"/data\"", "directory = \"/other\""))
                .unwrap();
        let InputSettings::Subscribe(b) = &other.input else {
            panic!("subscribe expected")
        };
        assert_ne!(
            a.checkpoint_key, b.checkpoint_key,
            "one checkpoint per sink"
        );
        let e =
            resolve_text(&GOOD.replace("[source.filer]\n", "[source.filer]\nsubscribe = true\n"))
                .unwrap_err();
        assert!(e.to_string().contains("use one input"), "{e}");
        let e = resolve_text(&GOOD.replace(
            "[source.filer]\n",
            "[source.filer]\ninitial_snapshot = true\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("only with subscribe"), "{e}");
    }

    #[test]
    fn good_config_resolves() {
        let s = resolve_text(GOOD).unwrap();
        assert_eq!(s.source.directory, "/buckets");
        assert_eq!(
            s.source.exclude_directories,
            vec!["/buckets/tmp", "/buckets/cache"]
        );
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        assert_eq!(k.offset_file, PathBuf::from("/work/./last.offset"));
        assert_eq!(k.offset_save_interval, Duration::from_secs(10));
        assert_eq!(s.sink.name(), "local");
        assert_eq!(s.replicate.on_failure, FailurePolicy::Park);
    }

    #[test]
    fn group_mode_keys() {
        let s = resolve_text(GOOD).unwrap();
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        assert!(k.group.is_none(), "the offset file stays the default");
        let s = resolve_text(&GOOD.replace(
            "offsetSaveIntervalSeconds = 10",
            "group_id = \"replicas\"\nauto_offset_reset = \"Latest\"\nimport_offset_file = true\nsession_timeout_seconds = 10",
        ))
        .unwrap();
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        let g = k.group.as_ref().unwrap();
        assert_eq!(
            (g.id.as_str(), g.auto_offset_reset, g.import_offset_file),
            ("replicas", OffsetReset::Latest, true)
        );
        assert_eq!(g.session_timeout, Duration::from_secs(10));
        assert_eq!(g.assignment, AssignmentStrategy::CooperativeSticky);
        let errs = resolve_text(&GOOD.replace(
            "offsetSaveIntervalSeconds = 10",
            "auto_offset_reset = \"newest\"\nimport_offset_file = true\nsession_timeout_seconds = 2\npartition_assignment_strategy = \"sticky\"",
        ))
        .unwrap_err()
        .0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "notification.kafka.auto_offset_reset",
                "notification.kafka.session_timeout_seconds",
                "notification.kafka.partition_assignment_strategy",
                "notification.kafka.import_offset_file",
            ]
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
[source.filer]
grpcAddress = "localhost"
directory = "buckets"
[sink.local]
enabled = true
directory = "/a"
[sink.s3]
enabled = true
[notification.kafka]
enabled = true
hosts = []
topic = "t"
sasl_enabled = true
sasl_mechanism = "GSSAPI"
sasl_username = "u"
[notification.aws_sqs]
enabled = true
"#;
        let errs = resolve_text(text).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "source.filer.grpcAddress",
                "source.filer.directory",
                "notification.kafka.enabled",
            ],
            "{errs:#?}"
        );
        assert!(
            errs[2]
                .message
                .contains("notification.aws_sqs, notification.kafka"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn the_memory_budget_is_one_key_with_a_small_default() {
        let s = resolve_text(GOOD).unwrap();
        assert_eq!(s.replicate.memory_budget_bytes, 16 * 1024 * 1024);
        assert_eq!(s.replicate.concurrency, 32);
        let s = resolve_text(&format!("{GOOD}\n[replicate]\nmemory_budget_mb = 256\n")).unwrap();
        assert_eq!(s.replicate.memory_budget_bytes, 256 * 1024 * 1024);
        for bad in ["0", "2000000", "-1", "\"lots\""] {
            let errs = resolve_text(&format!("{GOOD}\n[replicate]\nmemory_budget_mb = {bad}\n"))
                .unwrap_err()
                .0;
            assert!(
                errs.iter().any(|p| p.key == "replicate.memory_budget_mb"),
                "{bad}: {errs:#?}"
            );
        }
    }

    #[test]
    fn named_sink_sections_are_fed_together_and_unnamed_ones_first_wins() {
        // Several unnamed: the first in upstream's order, and a warning.
        let text = GOOD.replace(
            "[sink.local]\nenabled = true\ndirectory = \"/data\"",
            "[sink.s3]\nenabled = true\nbucket = \"b\"\n[sink.local]\nenabled = true\ndirectory = \"/data\"",
        );
        let s = resolve_text(&text).unwrap();
        assert_eq!((s.sink_id.as_str(), s.also.len()), ("local", 0));
        assert!(s.warnings[0].contains("[sink.s3]"), "{:?}", s.warnings);
        // Named sections: each with its own keys, and the unnamed one beside them.
        let text = GOOD.replace(
            "[sink.local]\nenabled = true\ndirectory = \"/data\"",
            "[sink.local]\nenabled = true\ndirectory = \"/data\"\n\
             [sink.s3.offsite]\nenabled = true\nbucket = \"b\"\ndeletes = \"keep\"\n\
             [sink.s3.spare]\nenabled = false\nbucket = \"c\"\n\
             [sink.filer.failover]\nenabled = true\ngrpcAddress = \"dr:18888\"\ndirectory = \"/m\"\n\
             deletes = \"trash\"\ntrash_retention_days = 7\n",
        );
        let s = resolve_text(&text).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert!(s.typos.is_empty(), "{:?}", s.typos);
        let views = s.views();
        let ids: Vec<&str> = views.iter().map(|v| v.sink_id.as_str()).collect();
        assert_eq!(ids, ["local", "filer.failover", "s3.offsite"]);
        assert_eq!(views[1].trash.as_ref().and_then(|t| t.days), Some(7));
        assert_eq!(views[2].deletes, DeletePolicy::Keep);
        assert_eq!(views[0].deletes, DeletePolicy::Mirror);
        // on_failure: a sink's own, else [replicate]'s.
        let held = text.replace(
            "deletes = \"keep\"\n",
            "deletes = \"keep\"\non_failure = \"hold\"\n",
        );
        let policies: Vec<FailurePolicy> = resolve_text(&held)
            .unwrap()
            .views()
            .iter()
            .map(|v| v.replicate.on_failure)
            .collect();
        assert_eq!(
            policies,
            [
                FailurePolicy::Park,
                FailurePolicy::Park,
                FailurePolicy::Hold
            ]
        );
        let parked: Vec<String> = views
            .iter()
            .map(|v| v.replicate.parked_file.display().to_string())
            .collect();
        assert!(
            parked[2].ends_with("/sinks/s3.offsite/replicate.parked.jsonl"),
            "{parked:?}"
        );
        assert!(views.iter().all(|v| v.also.is_empty()));
        // Problems name the named section's keys; bad names and twins are refused.
        for (extra, key) in [
            ("[sink.s3.x]\nenabled = true\n", "sink.s3.x.bucket"),
            (
                "[sink.s3.x]\nenabled = true\nbucket = \"b\"\ndeletes = \"no\"\n",
                "sink.s3.x.deletes",
            ),
            (
                "[sink.local.\"a b\"]\nenabled = true\ndirectory = \"/z\"\n",
                "sink.local.a b",
            ),
            (
                "[sink.local.twin]\nenabled = true\ndirectory = \"/data\"\n",
                "sink.local.twin.directory",
            ),
            (
                "[sink.local.z]\nenabled = true\ndirectory = \"/z\"\non_failure = \"drop\"\n",
                "sink.local.z.on_failure",
            ),
        ] {
            let e = resolve_text(&format!("{GOOD}\n{extra}")).unwrap_err();
            assert_eq!(e.0[0].key, key, "{e}");
        }
    }

    #[test]
    fn nothing_enabled_and_empty_directory_are_errors() {
        let errs = resolve_text("[source.filer]\ngrpcAddress = \"h:1\"\n")
            .unwrap_err()
            .0;
        let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(text[0].contains("source.filer.directory: is empty"));
        assert!(text[1].contains("no input is enabled"));
        assert!(text[2].contains("no sink is enabled"));
    }

    #[test]
    fn kafka_key_checks() {
        let text = GOOD.replace("offsetSaveIntervalSeconds = 10", "sasl_enabled = true\nsasl_mechanism = \"scram-sha-512\"\nsasl_username = \"\"\ntls_enabled = true\ntls_client_cert = \"/nonexistent.pem\"");
        let errs = resolve_text(&text).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "notification.kafka.sasl_username",
                "notification.kafka.tls_client_cert",
                "notification.kafka.tls_client_cert"
            ]
        );
    }

    #[test]
    fn grpc_tls_prefers_client_cert_and_needs_all_three() {
        let with = |extra: &str| resolve_text(&format!("{GOOD}\n{extra}"));
        let s = with("[grpc]\nca = \"/ca.pem\"\n[grpc.client]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_cert = \"/cc.pem\"\nclient_key = \"/ck.pem\"").unwrap();
        let t = s.security.grpc_tls.unwrap();
        assert_eq!(
            (t.ca.to_str(), t.cert.to_str(), t.key.to_str()),
            (Some("/ca.pem"), Some("/cc.pem"), Some("/ck.pem"))
        );
        let s =
            with("[grpc]\nca = \"/ca.pem\"\n[grpc.client]\ncert = \"/c.pem\"\nkey = \"/k.pem\"")
                .unwrap();
        assert_eq!(s.security.grpc_tls.unwrap().cert.to_str(), Some("/c.pem"));
        assert!(
            with("[grpc]\nca = \"/ca.pem\"")
                .unwrap()
                .security
                .grpc_tls
                .is_none(),
            "no client pair: plaintext, as upstream"
        );
        let errs = with("[grpc.client]\nclient_cert = \"/cc.pem\"")
            .unwrap_err()
            .0;
        assert_eq!(errs[0].key, "grpc.client.client_cert");
    }

    #[test]
    fn filer_sink_inside_source_on_same_filer_is_refused() {
        let text = GOOD.replace("[sink.local]\nenabled = true", "[sink.filer]\nenabled = true\ngrpcAddress = \"localhost:18888\"\ndirectory = \"/buckets/backup\"\n[sink.local]\nenabled = false");
        let errs = resolve_text(&text).unwrap_err().0;
        assert!(
            errs.iter()
                .any(|p| p.key == "sink.filer.directory" && p.message.contains("feed itself")),
            "{errs:#?}"
        );
    }
}
