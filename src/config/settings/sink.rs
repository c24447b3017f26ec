//! The sink: `[sink.*]`, in upstream's precedence order.

use super::*;

#[derive(Debug, Clone)]
pub(crate) enum SinkSettings {
    /// `[sink.local]` or `[sink.local_incremental]`.
    Local {
        name: &'static str,
        directory: PathBuf,
        incremental: bool,
    },
    /// `[sink.filer]`.
    Filer(FilerSinkOptions),
    /// `[sink.s3]`.
    S3(S3SinkOptions),
    /// `[sink.google_cloud_storage]`.
    Gcs(GcsSinkOptions),
    /// `[sink.azure]`.
    Azure(AzureSinkOptions),
    /// `[sink.backblaze]`.
    B2(B2SinkOptions),
}

impl SinkSettings {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            SinkSettings::Local { name, .. } => name,
            SinkSettings::Filer(_) => "filer",
            SinkSettings::S3(_) => "s3",
            SinkSettings::Gcs(_) => "google_cloud_storage",
            SinkSettings::Azure(_) => "azure",
            SinkSettings::B2(_) => "backblaze",
        }
    }
    pub(crate) fn directory(&self) -> String {
        match self {
            SinkSettings::Local { directory, .. } => directory.display().to_string(),
            SinkSettings::Filer(o) => o.directory.clone(),
            SinkSettings::S3(o) => o.directory.clone(),
            SinkSettings::Gcs(o) => o.directory.clone(),
            SinkSettings::Azure(o) => o.directory.clone(),
            SinkSettings::B2(o) => o.directory.clone(),
        }
    }
    /// What this sink writes to, for telling checkpoints apart: the kind, the target
    /// (path, filer, bucket, container) and the directory.
    pub(crate) fn identity(&self) -> String {
        let target = match self {
            SinkSettings::Local { .. } => String::new(),
            SinkSettings::Filer(o) => o.grpc_address.clone(),
            SinkSettings::S3(o) => format!("{}/{}", o.endpoint, o.bucket),
            SinkSettings::Gcs(o) => format!("{}/{}", o.endpoint, o.bucket),
            SinkSettings::Azure(o) => format!("{}/{}/{}", o.endpoint, o.account_name, o.container),
            SinkSettings::B2(o) => format!("{}/{}", o.endpoint, o.bucket),
        };
        format!("{}|{target}|{}", self.name(), self.directory())
    }
    pub(crate) fn incremental(&self) -> bool {
        match self {
            SinkSettings::Local { incremental, .. } => *incremental,
            SinkSettings::Filer(o) => o.incremental,
            SinkSettings::S3(o) => o.incremental,
            SinkSettings::Gcs(o) => o.incremental,
            SinkSettings::Azure(o) => o.incremental,
            SinkSettings::B2(o) => o.incremental,
        }
    }
}

/// `deletes`: what the sink does when the source deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeletePolicy {
    /// Deletes, and the old names of renames, go: a mirror (upstream `filer.replicate`).
    Mirror,
    /// The sink keeps what the source deletes, and both names of what it renames (as
    /// `filer.backup` without `-doDeleteFiles`): a backup a mistaken `rm -r` cannot empty.
    Keep,
    /// What the source deletes moves under the sink's trash directory, dated by the day
    /// of the delete, and goes after the trash's retention (see [`TrashSettings`]).
    Trash,
}

/// Where `deletes = "trash"` puts what the source deletes, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrashSettings {
    /// `trash_directory`: one name, directly under the sink's directory.
    pub directory: String,
    /// `trash_retention_days`: dated trash directories older than this go (`None`: never).
    pub days: Option<u32>,
}

/// `deletes` of the sink section `p` (`sink.local`, `sink.s3.backup`).
pub(super) fn resolve_deletes(r: &mut Reader, p: &str) -> DeletePolicy {
    let key = format!("{p}.deletes");
    match r.string(&key, "mirror").as_str() {
        "mirror" => DeletePolicy::Mirror,
        "keep" => DeletePolicy::Keep,
        "trash" => DeletePolicy::Trash,
        other => {
            r.problem(
                &key,
                format!(
                    "{:?} is not a delete policy; use \"mirror\" (deletes and renames are \
                     replicated), \"keep\" (the sink keeps what the source deletes) or \
                     \"trash\" (what the source deletes moves under trash_directory)",
                    crate::text::cut(other)
                ),
            );
            DeletePolicy::Mirror
        }
    }
}

const TRASH_DIRECTORY: &str = ".replicate-trash";
const TRASH_DAYS: u64 = 30;

/// The enabled sink's `trash_directory` and `trash_retention_days`, for `deletes =
/// "trash"`; set without it, or on a sink of dated copies (which never deletes), they are
/// problems.
pub(super) fn resolve_trash(
    r: &mut Reader,
    p: &str,
    sink: &SinkSettings,
    deletes: DeletePolicy,
) -> Option<TrashSettings> {
    let (dir_key, days_key) = (
        format!("{p}.trash_directory"),
        format!("{p}.trash_retention_days"),
    );
    if deletes != DeletePolicy::Trash {
        // The templates print the defaults; another value says the trash was meant.
        let dir_changed = r.string(&dir_key, TRASH_DIRECTORY) != TRASH_DIRECTORY;
        let days_changed = r.count(&days_key, TRASH_DAYS) != TRASH_DAYS;
        for (key, changed) in [(&dir_key, dir_changed), (&days_key, days_changed)] {
            if changed {
                r.problem(key, "works only with deletes = \"trash\"");
            }
        }
        return None;
    }
    if sink.incremental() {
        r.problem(
            &format!("{p}.deletes"),
            "\"trash\" means nothing with is_incremental = true: dated copies are never deleted",
        );
        return None;
    }
    let directory = r.string(&dir_key, TRASH_DIRECTORY);
    if let Err(why) = crate::path::check_name(&directory) {
        r.problem(
            &dir_key,
            format!(
                "{:?} must be one name directly under the sink's directory: {why}",
                crate::text::cut(&directory)
            ),
        );
    }
    let days = match r.count(&days_key, TRASH_DAYS) {
        0 => None,
        d if d <= 36_500 => Some(d as u32),
        d => {
            r.problem(&days_key, format!("{d} is more than 36500 (100 years)"));
            None
        }
    };
    Some(TrashSettings { directory, days })
}

/// `[sink.<name>] retention_days` of the enabled sink: dated directories older than this
/// many days are removed (`None`: kept for ever).
pub(super) fn resolve_retention(r: &mut Reader, p: &str, sink: &SinkSettings) -> Option<u32> {
    let key = format!("{p}.retention_days");
    let days = r.count(&key, 0);
    if days == 0 {
        return None;
    }
    if !sink.incremental() {
        r.problem(
            &key,
            "applies to dated copies only; set is_incremental = true, or remove it (a mirror \
             holds what the source holds)",
        );
        return None;
    }
    match u32::try_from(days) {
        Ok(d) if d <= 36_500 => Some(d),
        _ => {
            r.problem(&key, format!("{days} is more than 36500 (100 years)"));
            None
        }
    }
}

/// One sink to feed: its section and what it says.
#[derive(Debug, Clone)]
pub(crate) struct SinkChoice {
    /// The section under `sink.`: `local` for `[sink.local]`, `s3.backup` for a named
    /// `[sink.s3.backup]`. Logs, metrics labels and state directories use it.
    pub id: String,
    pub settings: SinkSettings,
    pub deletes: DeletePolicy,
    /// `retention_days`, for dated copies.
    pub retention_days: Option<u32>,
    /// With `deletes = "trash"`: where and for how long.
    pub trash: Option<TrashSettings>,
    /// Its own `on_failure`, instead of `[replicate]`'s.
    pub on_failure: Option<FailurePolicy>,
}

/// The most sinks one process feeds.
pub(crate) const MAX_SINKS: usize = 16;

/// The sinks to feed: every enabled named section (`[sink.<kind>.<name>]`), and of the
/// unnamed ones (`[sink.<kind>]`) the first enabled in upstream's order, as upstream
/// picks it (a warning in `warnings` names those left out). Empty when there are
/// problems.
pub(super) fn resolve_sinks(
    r: &mut Reader,
    source: &SourceSettings,
    cwd: &Path,
    warnings: &mut Vec<String>,
) -> Vec<SinkChoice> {
    let unnamed = enabled_sections(r, "sink", &SINKS);
    let mut sections: Vec<(&'static str, String)> = Vec::new();
    if let [first, rest @ ..] = unnamed.as_slice() {
        sections.push((first, format!("sink.{first}")));
        if !rest.is_empty() {
            warnings.push(format!(
                "several unnamed sinks are enabled ({}); as upstream, only the first, \
                 [sink.{first}], is fed. To feed several, name each: [sink.<kind>.<name>], \
                 e.g. [sink.{}.backup]",
                unnamed
                    .iter()
                    .map(|n| format!("[sink.{n}]"))
                    .collect::<Vec<_>>()
                    .join(", "),
                rest[0]
            ));
        }
    }
    for kind in SINKS {
        for name in r.subsections(&format!("sink.{kind}")) {
            let p = format!("sink.{kind}.{name}");
            if let Err(why) = check_sink_name(&name) {
                r.problem(&p, format!("{name:?} cannot name a sink: {why}"));
                continue;
            }
            if r.bool(&format!("{p}.enabled"), false) {
                sections.push((kind, p));
            }
        }
    }
    if sections.is_empty() {
        r.problem(
            "sink",
            format!(
                "no sink is enabled; set enabled = true in one of {}, or in named sections \
                 such as [sink.s3.backup]",
                SINKS.map(|n| format!("[sink.{n}]")).join(", ")
            ),
        );
        return Vec::new();
    }
    if sections.len() > MAX_SINKS {
        r.problem(
            &format!("{}.enabled", sections[MAX_SINKS].1),
            format!(
                "{} sinks are enabled; one process feeds at most {MAX_SINKS}",
                sections.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (kind, p) in sections {
        let Some(settings) = resolve_sink(r, kind, &p, source, cwd) else {
            continue;
        };
        let deletes = resolve_deletes(r, &p);
        let retention_days = resolve_retention(r, &p, &settings);
        let trash = resolve_trash(r, &p, &settings, deletes);
        let on_failure = match r
            .string(&format!("{p}.on_failure"), "")
            .to_lowercase()
            .as_str()
        {
            "" => None,
            "park" => Some(FailurePolicy::Park),
            "hold" => Some(FailurePolicy::Hold),
            other => {
                r.problem(
                    &format!("{p}.on_failure"),
                    format!(
                        "must be empty ([replicate] on_failure applies), \"park\" or \"hold\", got {:?}",
                        crate::text::cut(other)
                    ),
                );
                None
            }
        };
        out.push(SinkChoice {
            id: p.trim_start_matches("sink.").to_string(),
            settings,
            deletes,
            retention_days,
            trash,
            on_failure,
        });
    }
    // Two sections writing to the same place would undo each other.
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i]
            .iter()
            .find(|b| b.settings.identity() == a.settings.identity())
        {
            r.problem(
                &format!("sink.{}.directory", a.id),
                format!(
                    "[sink.{}] writes where [sink.{}] writes; each sink needs a place of its own",
                    a.id, b.id
                ),
            );
        }
    }
    out
}

/// A sink's name: it becomes part of a directory name and a metric label.
fn check_sink_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("a name has 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("use lower-case letters, digits, '_' and '-'");
    }
    Ok(())
}

fn resolve_sink(
    r: &mut Reader,
    name: &'static str,
    p: &str,
    source: &SourceSettings,
    cwd: &Path,
) -> Option<SinkSettings> {
    match name {
        "local" | "local_incremental" => {
            let dir = r.string(&format!("{p}.directory"), "");
            if dir.is_empty() {
                r.problem(
                    &format!("{p}.directory"),
                    "is empty; set the local directory to replicate into",
                );
                return None;
            }
            let incremental = r.bool(&format!("{p}.is_incremental"), name == "local_incremental");
            Some(SinkSettings::Local {
                name,
                directory: cwd.join(dir),
                incremental,
            })
        }
        "filer" => {
            let grpc_address = r.string(&format!("{p}.grpcAddress"), "");
            check_grpc_address(r, &format!("{p}.grpcAddress"), &grpc_address);
            let dir = r.string(&format!("{p}.directory"), "");
            let directory = match normalize_dir(&dir) {
                Ok(d) => d,
                Err(e) => {
                    r.problem(
                        &format!("{p}.directory"),
                        format!(
                            "{dir:?} must be an absolute filer path without . or ..: {}",
                            e.why
                        ),
                    );
                    return None;
                }
            };
            let under = |a: &str, b: &str| matches!((components(a), components(b)), (Ok(a), Ok(b)) if crate::path::is_equal_or_under(&a, &b));
            if grpc_address.eq_ignore_ascii_case(&source.grpc_address)
                && under(&directory, &source.directory)
                && !source
                    .exclude_directories
                    .iter()
                    .any(|ex| under(&directory, ex))
            {
                r.problem(
                    &format!("{p}.directory"),
                    format!("{directory:?} is equal to or under source.filer.directory {:?} on the same filer: replication would feed itself", source.directory),
                );
            }
            let ttl_sec = r.int(&format!("{p}.ttlSec"), 0);
            let chunk_concurrency = r.count(&format!("{p}.chunk_concurrency"), 8);
            if chunk_concurrency == 0 || chunk_concurrency > 1024 {
                r.problem(
                    &format!("{p}.chunk_concurrency"),
                    format!("must be between 1 and 1024, got {chunk_concurrency}"),
                );
            }
            Some(SinkSettings::Filer(FilerSinkOptions {
                grpc_address,
                directory,
                replication: r.string(&format!("{p}.replication"), ""),
                collection: r.string(&format!("{p}.collection"), ""),
                ttl_sec: i32::try_from(ttl_sec).unwrap_or(0),
                disk: r.string(&format!("{p}.disk"), ""),
                data_center: r.string(&format!("{p}.dataCenter"), ""),
                incremental: r.bool(&format!("{p}.is_incremental"), false),
                chunk_concurrency: chunk_concurrency.clamp(1, 1024) as usize,
                https: r.bool("https.client.enabled", false),
                grpc_tls: None,
                journal_dir: None,
            }))
        }
        "s3" => {
            let bucket = r.string(&format!("{p}.bucket"), "");
            if bucket.is_empty() {
                r.problem(
                    &format!("{p}.bucket"),
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            let (directory, _) = object_store_dir(r, p);
            let (access_key_id, secret_access_key) = aws_keys(r, p);
            // uploader_part_size_mb wins; upstream's code reads only uploader_part_size (MiB).
            let part_mb = if r.is_set(&format!("{p}.uploader_part_size_mb")) {
                r.count(&format!("{p}.uploader_part_size_mb"), 8)
            } else {
                match r.count(&format!("{p}.uploader_part_size"), 0) {
                    0 => 8,
                    n => n,
                }
            };
            let max_parts = r.count(&format!("{p}.uploader_max_upload_parts"), 1000);
            if max_parts == 0 || max_parts > 10_000 {
                r.problem(
                    &format!("{p}.uploader_max_upload_parts"),
                    format!("must be between 1 and 10000, got {max_parts}"),
                );
            }
            let concurrency = r.count(&format!("{p}.uploader_concurrency"), 8);
            if concurrency == 0 || concurrency > 256 {
                r.problem(
                    &format!("{p}.uploader_concurrency"),
                    format!("must be between 1 and 256, got {concurrency}"),
                );
            }
            let region = r.string(&format!("{p}.region"), "us-east-2");
            Some(SinkSettings::S3(S3SinkOptions {
                access_key_id,
                secret_access_key,
                region: if region.is_empty() {
                    "us-east-2".into()
                } else {
                    region
                },
                bucket,
                directory,
                endpoint: r.string(&format!("{p}.endpoint"), ""),
                acl: canned_acl(r, p),
                incremental: r.bool(&format!("{p}.is_incremental"), false),
                keep_part_size: r.bool(&format!("{p}.keep_part_size"), true),
                max_upload_parts: max_parts.clamp(1, 10_000),
                part_size: part_mb.max(5) * 1024 * 1024,
                concurrency: concurrency.clamp(1, 256) as usize,
                force_path_style: r.bool(&format!("{p}.s3_force_path_style"), true),
            }))
        }
        "google_cloud_storage" => {
            let bucket = r.string(&format!("{p}.bucket"), "");
            if bucket.is_empty() {
                r.problem(
                    &format!("{p}.bucket"),
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            let (directory, given) = object_store_dir(r, p);
            let incremental = r.bool(&format!("{p}.is_incremental"), false);
            // util.Join(directory, date, key[len(source.directory):]): no leading `/` when
            // the directory is relative, or empty with a date first or a source directory
            // that ends in `/` (so the rest of the key does not start with one).
            let source_slash = r.string("source.filer.directory", "").ends_with('/');
            let slashless = if given.is_empty() {
                incremental || source_slash
            } else {
                !given.starts_with('/')
            };
            let credentials = google_credentials(r, p, cwd, true);
            Some(SinkSettings::Gcs(GcsSinkOptions {
                credentials,
                bucket,
                directory,
                incremental,
                endpoint: r.string(&format!("{p}.endpoint"), ""),
                emulator_host: r.env("STORAGE_EMULATOR_HOST"),
                slashless,
            }))
        }
        "azure" => {
            let account_name = r.string(&format!("{p}.account_name"), "");
            if !(3..=24).contains(&account_name.len())
                || !account_name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                r.problem(&format!("{p}.account_name"), format!("{account_name:?} is not a storage account name (3-24 lowercase letters and digits)"));
            }
            let account_key = r.string(&format!("{p}.account_key"), "");
            // Empty: Entra ID credentials, chosen from the environment below.
            if !account_key.is_empty()
                && base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    account_key.trim(),
                )
                .is_err()
            {
                r.problem(
                    &format!("{p}.account_key"),
                    "is not base64 (copy the key as the portal shows it)",
                );
            }
            let container = r.string(&format!("{p}.container"), "");
            if container.is_empty() {
                r.problem(
                    &format!("{p}.container"),
                    "is empty; set the (existing) container to replicate into",
                );
            }
            let (directory, _) = object_store_dir(r, p);
            let client_id = r.string(&format!("{p}.client_id"), "");
            let credential = if account_key.is_empty() {
                let source =
                    crate::sink::object::entra::TokenSource::choose(&client_id, |k| r.env(k));
                if let Some(problem) = source.problem() {
                    r.problem(
                        &format!("{p}.account_key"),
                        format!("is empty, so Entra ID is used, and {problem}"),
                    );
                }
                AzureCredential::Entra(source)
            } else {
                AzureCredential::SharedKey(account_key)
            };
            Some(SinkSettings::Azure(AzureSinkOptions {
                account_name,
                credential,
                endpoint: r.string(&format!("{p}.endpoint"), ""),
                container,
                directory,
                incremental: r.bool(&format!("{p}.is_incremental"), false),
            }))
        }
        "backblaze" => {
            let mut key_id = r.string(&format!("{p}.b2_account_id"), "");
            let mut key = r.string(&format!("{p}.b2_master_application_key"), "");
            if key_id.is_empty() && key.is_empty() {
                key_id = r.env("B2_APPLICATION_KEY_ID").unwrap_or_default();
                key = r.env("B2_APPLICATION_KEY").unwrap_or_default();
            }
            if key_id.is_empty() || key.is_empty() {
                r.problem(&format!("{p}.b2_account_id"), "b2_account_id (the application key id) and b2_master_application_key must both be set, here or as B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY");
            }
            let bucket = r.string(&format!("{p}.bucket"), "");
            if bucket.is_empty() {
                r.problem(
                    &format!("{p}.bucket"),
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            Some(SinkSettings::B2(B2SinkOptions {
                key_id,
                key,
                bucket,
                directory: object_store_dir(r, p).0,
                incremental: r.bool(&format!("{p}.is_incremental"), false),
                endpoint: r.string(&format!("{p}.endpoint"), ""),
            }))
        }
        other => {
            r.problem(
                &format!("{p}.enabled"),
                format!("the {other} sink is not supported by this version"),
            );
            None
        }
    }
}

/// An object-store sink's `directory`, made absolute (`/` when empty), and as it was
/// given. Upstream accepts relative and empty ones: S3, Azure and B2 strip the leading `/`
/// of object names, so `backup` and `/backup` name the same objects there; GCS does not
/// (see `GcsSinkOptions::slashless`).
fn object_store_dir(r: &mut Reader, section: &str) -> (String, String) {
    let key = format!("{section}.directory");
    // Missing is empty, as viper's GetString: it matters to GCS object names.
    let dir = r.string(&key, "");
    let relative = !dir.starts_with('/');
    let absolute = format!("/{}", dir.trim_start_matches('/'));
    let normalized = normalize_dir(if relative { &absolute } else { &dir }).unwrap_or_else(|e| {
        r.problem(
            &key,
            format!(
                "{:?} must be a path without . or ..: {}",
                crate::text::cut(&dir),
                e.why
            ),
        );
        "/".into()
    });
    (normalized, dir)
}

/// `sink.s3.acl`: empty for none, else one of S3's canned ACLs (upstream reads the key
/// but never applies it; an unknown one would have every write refused).
fn canned_acl(r: &mut Reader, p: &str) -> Option<aws_sdk_s3::types::ObjectCannedAcl> {
    use aws_sdk_s3::types::ObjectCannedAcl;
    let key = format!("{p}.acl");
    let acl = r.string(&key, "");
    if acl.is_empty() {
        return None;
    }
    if !ObjectCannedAcl::values().contains(&acl.as_str()) {
        r.problem(
            &key,
            format!(
                "must be empty or one of {}, got {acl:?}",
                ObjectCannedAcl::values().join(", ")
            ),
        );
        return None;
    }
    Some(ObjectCannedAcl::from(acl.as_str()))
}
