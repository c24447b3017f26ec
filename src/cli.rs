//! Command-line definitions. Go-style single-dash flags (`-config=x`, `-config x`,
//! `-v=1`) are accepted as well as `--config`, so scripts written for
//! `weed filer.replicate` work unchanged.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "replicate",
    version,
    about = "Replicate SeaweedFS filer changes from a message queue into another filer, a directory or object storage.",
    long_about = "A drop-in replacement for `weed filer.replicate`: reads replication.toml, notification.toml \
and security.toml from -config_dir, ., $HOME/.seaweedfs, /usr/local/etc/seaweedfs or /etc/seaweedfs, consumes \
the filer's change events and applies them to the configured sink. With no subcommand it runs the replicator."
)]
#[command(args_override_self = true)]
pub struct Cli {
    /// The replication.toml to use; notification.toml and security.toml are looked for
    /// beside it first. For `scaffold`: which template (replication, notification, security).
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// A directory searched first for the configuration files.
    #[arg(long = "config_dir", value_name = "DIR", global = true)]
    pub config_dir: Option<PathBuf>,
    /// Log verbosity as in glog: 0 is normal, 1 logs every event, 3 and up trace.
    #[arg(long = "v", value_name = "N", default_value_t = 0, global = true)]
    pub verbosity: u8,
    /// Log lines as text for people, or as one JSON object per line for log shippers.
    #[arg(long = "log-format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics, /healthz and /readyz on host:port or :port (overrides
    /// `[metrics] address`).
    #[arg(long = "metrics.address", value_name = "ADDR", global = true)]
    pub metrics_address: Option<String>,
    /// Also write log files (glog's names) into this directory.
    #[arg(long = "logdir", alias = "log_dir", value_name = "DIR", global = true)]
    pub logdir: Option<PathBuf>,
    /// With -logdir: log to standard error only, not to files.
    #[arg(long = "logtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", global = true)]
    pub logtostderr: Option<String>,
    /// With -logdir: log to standard error as well as to files (default true).
    #[arg(long = "alsologtostderr", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", global = true)]
    pub alsologtostderr: Option<String>,
    /// With -logdir and -alsologtostderr=false: the least severity also written to
    /// standard error (INFO, WARNING, ERROR, FATAL or 0-3; default ERROR).
    #[arg(long = "stderrthreshold", value_name = "SEVERITY", global = true)]
    pub stderrthreshold: Option<String>,
    /// Log lines as JSON (as -log-format=json).
    #[arg(long = "log_json", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", global = true)]
    pub log_json: Option<String>,
    /// With -logdir: start a new log file past this size (default 1800).
    #[arg(
        long = "log_max_size_mb",
        value_name = "MB",
        global = true,
        allow_negative_numbers = true
    )]
    pub log_max_size_mb: Option<i64>,
    /// With -logdir: log files kept (default 5).
    #[arg(
        long = "log_max_files",
        value_name = "N",
        global = true,
        allow_negative_numbers = true
    )]
    pub log_max_files: Option<i64>,
    /// With -logdir: start a new log file after this many hours (default 168; 0: never).
    #[arg(
        long = "log_rotate_hours",
        value_name = "N",
        global = true,
        allow_negative_numbers = true
    )]
    pub log_rotate_hours: Option<i64>,
    /// Misspelt keys, unknown sections and keys in the wrong file are configuration
    /// errors (exit 2) instead of warnings.
    #[arg(long = "strict", global = true)]
    pub strict: bool,
    /// Read flags from this file (`name=value` lines, as weed's -options); the command line
    /// and WEED_<FLAG> variables win over it.
    #[arg(long = "options", value_name = "FILE", global = true)]
    pub options: Option<PathBuf>,
    /// With -logdir: gzip log files once a newer one is started.
    #[arg(long = "log_compress", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", global = true)]
    pub log_compress: Option<String>,
    /// Metadata-log input: start this long ago (Go syntax: 90m, 1.5h, 2h45m), even over
    /// an existing checkpoint (as `weed filer.backup -timeAgo`).
    #[arg(long = "timeAgo", value_name = "DURATION", global = true)]
    pub time_ago: Option<String>,
    /// Metadata-log input: start at this Unix time in milliseconds, even over an existing
    /// checkpoint (as `weed filer.sync -a.fromTsMs`).
    #[arg(long = "fromTsMs", value_name = "MS", global = true)]
    pub from_ts_ms: Option<String>,
    /// Accepted for compatibility with weed's glog flags; no effect here.
    #[arg(long = "vmodule", hide = true, global = true)]
    pub vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", hide = true, global = true)]
    pub log_backtrace_at: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The weed flags given (on the command line, in the environment or an options file)
    /// that have no effect here, for one line at start.
    /// Where the configuration is, and how strictly it is read.
    pub(crate) fn place(&self) -> crate::config::Place {
        crate::config::Place {
            config_dir: self.config_dir.clone(),
            config: self.config.clone(),
            strict: self.strict,
        }
    }

    pub fn ignored_flags(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.vmodule.is_some() {
            out.push("-vmodule");
        }
        if self.log_backtrace_at.is_some() {
            out.push("-log_backtrace_at");
        }
        if self.logdir.is_none() {
            for (given, name) in [
                (self.log_max_size_mb.is_some(), "-log_max_size_mb"),
                (self.log_max_files.is_some(), "-log_max_files"),
                (self.log_rotate_hours.is_some(), "-log_rotate_hours"),
                (self.stderrthreshold.is_some(), "-stderrthreshold"),
                (self.logtostderr.is_some(), "-logtostderr"),
                (self.alsologtostderr.is_some(), "-alsologtostderr"),
                (self.log_compress.is_some(), "-log_compress"),
            ] {
                if given {
                    out.push(name);
                }
            }
        }
        out
    }
}

/// A flag value that cannot be used, said with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("-{name}={value:?}: not a boolean (true, false, 1, 0)")]
    NotBoolean { name: String, value: String },
    #[error("{from}: -{name}={value:?} is not a whole number")]
    NotNumber {
        from: String,
        name: String,
        value: String,
    },
    #[error("{var} is empty; -v takes a number (0 to 4)")]
    EmptyVerbosity { var: String },
    #[error("-options={file}: {source}")]
    OptionsFile {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {name} has no value")]
    NoValue {
        file: String,
        line: usize,
        name: String,
    },
    #[error("-stderrthreshold={value:?}: expected INFO, WARNING, ERROR, FATAL or 0-3")]
    Threshold { value: String },
    #[error("-timeAgo={value:?}: not a duration (Go syntax: 90m, 1.5h, 2h45m)")]
    TimeAgo { value: String },
    #[error("-fromTsMs={value:?}: not Unix milliseconds of a moment past")]
    FromTsMs { value: String },
    #[error("-timeAgo and -fromTsMs both say where to start; give one")]
    TwoStarts,
    #[error("{flag} starts the replicator's metadata log; `{command}` has none")]
    StartElsewhere {
        flag: &'static str,
        command: &'static str,
    },
}

impl Cli {
    /// Where `-timeAgo` or `-fromTsMs` start the metadata log, over any checkpoint. As
    /// upstream, 0 means not given.
    pub(crate) fn start_over(
        &self,
    ) -> Result<Option<crate::config::settings::StartFrom>, FlagError> {
        use crate::config::settings::StartFrom;
        let ago = match self.time_ago.as_deref() {
            None => None,
            Some(v) => match crate::go::parse_duration(v) {
                Some(0) => None,
                Some(ns) if ns > 0 => {
                    Some(StartFrom::Ago(std::time::Duration::from_nanos(ns as u64)))
                }
                _ => {
                    return Err(FlagError::TimeAgo {
                        value: crate::text::cut(v).to_string(),
                    });
                }
            },
        };
        let at = match self.from_ts_ms.as_deref() {
            None => None,
            Some(v) => match v
                .parse::<i64>()
                .ok()
                .and_then(|ms| ms.checked_mul(1_000_000))
            {
                Some(0) => None,
                Some(ns)
                    if ns > 0
                        && ns <= chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX) =>
                {
                    Some(StartFrom::At(ns))
                }
                _ => {
                    return Err(FlagError::FromTsMs {
                        value: crate::text::cut(v).to_string(),
                    });
                }
            },
        };
        match (ago, at) {
            (Some(_), Some(_)) => Err(FlagError::TwoStarts),
            (start, None) | (None, start) => Ok(start),
        }
    }
}

/// A boolean flag's value as Go's flag package reads it.
pub(crate) fn flag_bool(name: &str, value: Option<&str>, default: bool) -> Result<bool, FlagError> {
    match value {
        None => Ok(default),
        Some(v) => crate::go::parse_bool(v).ok_or_else(|| FlagError::NotBoolean {
            name: name.to_string(),
            value: crate::text::cut(v).to_string(),
        }),
    }
}

/// Upstream's global flags that `WEED_<FLAG>` variables and `-options` files may set, and
/// whether each is a boolean.
const GLOBAL_FLAGS: [(&str, bool); 15] = [
    ("config_dir", false),
    ("v", false),
    ("logtostderr", true),
    ("alsologtostderr", true),
    ("stderrthreshold", false),
    ("vmodule", false),
    ("log_backtrace_at", false),
    ("logdir", false),
    ("log_dir", false),
    ("log_max_size_mb", false),
    ("log_max_files", false),
    ("log_rotate_hours", false),
    ("log_json", true),
    ("log_compress", true),
    ("options", false),
];

/// A value for a numeric flag that will not parse, said with where it came from.
fn check_number(name: &str, value: &str, from: &str) -> Result<(), FlagError> {
    let ok = match name {
        "v" => value.parse::<u8>().is_ok(),
        // Go ints: 0 or less means the default (or, for hours, never).
        "log_max_size_mb" | "log_max_files" | "log_rotate_hours" => value.parse::<i64>().is_ok(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(FlagError::NotNumber {
            from: from.to_string(),
            name: name.to_string(),
            value: crate::text::cut(value).to_string(),
        })
    }
}

/// Weed's flag parser lets `WEED_<FLAG>` set a global flag the command line leaves unset,
/// and an `-options` file (`name=value`, `name value` or `name: value` lines, `#`
/// comments) set what neither sets. This returns `args` (already normalized) with those
/// values put in front as `--name=value`, or every problem found, each naming its source.
pub fn with_flags_from_env_and_options(
    args: Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&std::path::Path) -> std::io::Result<String>,
) -> Result<Vec<String>, Vec<FlagError>> {
    let on_cli = |name: &str| {
        let long = format!("--{name}");
        args.iter()
            .skip(1)
            .take_while(|a| *a != "--")
            .any(|a| *a == long || a.starts_with(&format!("{long}=")))
    };
    // -logdir and -log_dir are one flag: whichever source sets one sets both.
    let alias = |name: &str| match name {
        "logdir" => Some("log_dir"),
        "log_dir" => Some("logdir"),
        _ => None,
    };
    // Set already, under either name, by the command line or an earlier source.
    let given = |name: &str, set: &[(&str, String)]| {
        on_cli(name)
            || alias(name).is_some_and(&on_cli)
            || set
                .iter()
                .any(|(s, _)| *s == name || Some(*s) == alias(name))
    };
    let mut problems = Vec::new();
    let mut set: Vec<(&str, String)> = Vec::new();
    for (name, boolean) in GLOBAL_FLAGS {
        if given(name, &set) {
            continue;
        }
        let var = format!("WEED_{}", name.to_uppercase());
        let Some(value) = env(&var) else { continue };
        let value = match (value.is_empty(), boolean) {
            (true, true) => "true".to_string(),
            (true, false) if name == "v" => {
                problems.push(FlagError::EmptyVerbosity { var });
                continue;
            }
            (true, false) => continue,
            (false, _) => value,
        };
        if let Err(e) = check_number(name, &value, &var) {
            problems.push(e);
            continue;
        }
        set.push((name, value));
    }
    // The options file: named on the command line, else in WEED_OPTIONS.
    let options = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .enumerate()
        .find_map(|(i, a)| {
            if a == "--options" {
                args.get(i + 2).cloned()
            } else {
                a.strip_prefix("--options=").map(String::from)
            }
        })
        .or_else(|| {
            set.iter()
                .find(|(n, _)| *n == "options")
                .map(|(_, v)| v.clone())
        });
    if let Some(file) = options.filter(|f| !f.is_empty()) {
        match read(std::path::Path::new(&file)) {
            Err(source) => problems.push(FlagError::OptionsFile { file, source }),
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let line = line.strip_prefix('-').unwrap_or(line);
                    let (name, value) = match line.find(['=', ' ', '\t', ':']) {
                        Some(at) => (
                            line[..at].trim(),
                            line[at + 1..]
                                .trim_start_matches([' ', '\t', '=', ':'])
                                .trim(),
                        ),
                        None => (line, ""),
                    };
                    let Some(&(name, boolean)) = GLOBAL_FLAGS.iter().find(|(f, _)| *f == name)
                    else {
                        // weed ignores names it does not define; so does this.
                        continue;
                    };
                    if name == "options" || given(name, &set) {
                        continue;
                    }
                    let value = if value.is_empty() && boolean {
                        "true".to_string()
                    } else {
                        value.to_string()
                    };
                    if value.is_empty() {
                        problems.push(FlagError::NoValue {
                            file: file.clone(),
                            line: n + 1,
                            name: name.to_string(),
                        });
                        continue;
                    }
                    if let Err(e) = check_number(name, &value, &format!("{file}:{}", n + 1)) {
                        problems.push(e);
                        continue;
                    }
                    set.push((name, value));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut out = Vec::with_capacity(args.len() + set.len());
    out.extend(args.first().cloned());
    for (name, value) in set {
        if name == "options" {
            continue;
        }
        out.push(format!("--{name}={value}"));
    }
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the replicator (the default; named as in `weed filer.replicate`).
    #[command(name = "filer.replicate")]
    Run,
    /// Print a complete configuration template; -config names which: replication (the
    /// default), notification or security.
    Scaffold {
        /// Write <DIR>/<NAME>.toml instead of printing.
        #[arg(long = "output", value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Validate the configuration and test the source filer, the input and the sink;
    /// print a report. Exits 0 when all is well, 1 when something is unreachable, 2 on
    /// configuration problems.
    Check,
    /// Compare the source directory with the sink: report missing, extra and differing
    /// files (size and SHA-256). Exits 0 when they match, 1 when they differ, 2 when
    /// they cannot be compared.
    Verify {
        /// Replicate what is missing or differs.
        #[arg(long = "repair")]
        repair: bool,
        /// With -repair, also delete from the sink what the source does not have.
        #[arg(long = "delete", requires = "repair")]
        delete: bool,
        /// Compare sizes only, without reading file content.
        #[arg(long = "size-only")]
        size_only: bool,
    },
    /// Replicate every file that already exists under the source directory (what
    /// `fs.meta.notify` in `weed shell` is used for upstream). Resumable: directories
    /// finished are recorded in the state file and skipped by the next run.
    Backfill {
        /// Where progress is recorded.
        #[arg(
            long = "state",
            value_name = "FILE",
            default_value = "./replicate.backfill.state"
        )]
        state: PathBuf,
        /// Ignore the state file and start over.
        #[arg(long = "restart")]
        restart: bool,
    },
    /// Follow the source filer's metadata log into the sink of replication.toml, as
    /// `weed filer.backup` does, with its flags and its checkpoint (in the source filer's
    /// KV store): either can take over from the other without copying again.
    #[command(name = "filer.backup")]
    FilerBackup(Box<BackupFlags>),
    /// Print the version.
    Version,
}

/// `weed filer.backup`'s flags, with its defaults. Booleans are Go's: `-debug`,
/// `-debug=true`, `-doDeleteFiles=false`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupFlags {
    /// The source filer: host:port (its HTTP port; gRPC is that + 10000) or
    /// host:port.grpcPort.
    #[arg(
        long = "filer",
        value_name = "HOST:PORT",
        default_value = "localhost:8888"
    )]
    pub filer: String,
    /// The directory to back up.
    #[arg(long = "filerPath", value_name = "DIR", default_value = "/")]
    pub filer_path: String,
    /// Directories to leave out, comma-separated.
    #[arg(long = "filerExcludePaths", value_name = "DIRS", default_value = "")]
    pub exclude_paths: String,
    /// Deprecated upstream (use -filerExcludeFileNames): leave out files whose name this
    /// regular expression matches.
    #[arg(
        long = "filerExcludeFileName",
        value_name = "REGEXP",
        default_value = ""
    )]
    pub exclude_file_name: String,
    /// Comma-separated wildcards: leave out files whose name matches one ("*.tmp,._*").
    #[arg(
        long = "filerExcludeFileNames",
        value_name = "WILDCARDS",
        default_value = ""
    )]
    pub exclude_file_names: String,
    /// Comma-separated wildcards: leave out entries under a directory whose name matches
    /// one (".snapshot,temp*").
    #[arg(
        long = "filerExcludePathPatterns",
        value_name = "WILDCARDS",
        default_value = ""
    )]
    pub exclude_path_patterns: String,
    /// Read file content through the filer instead of from the volume servers.
    #[arg(long = "filerProxy", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub filer_proxy: Option<String>,
    /// Delete on the sink what the source deletes (default false: a backup keeps it).
    #[arg(long = "doDeleteFiles", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub do_delete_files: Option<String>,
    /// Log every event (as -v=1).
    #[arg(long = "debug", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub debug: Option<String>,
    /// An incremental sink's dated directories older than this many days are removed.
    #[arg(
        long = "retentionDays",
        value_name = "DAYS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub retention_days: i64,
    /// Do not retry a failing event: here it is parked (replicate.parked_file) instead.
    #[arg(long = "disableErrorRetry", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_error_retry: Option<String>,
    /// Accepted; no effect here: content gone from the source is always settled against
    /// the live source.
    #[arg(long = "ignore404Error", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ignore404_error: Option<String>,
    /// Without a checkpoint: copy the live tree first, then follow the log.
    #[arg(long = "initialSnapshot", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub initial_snapshot: Option<String>,
}

impl Command {
    /// The command's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run => "filer.replicate",
            Command::Scaffold { .. } => "scaffold",
            Command::Check => "check",
            Command::Verify { .. } => "verify",
            Command::Backfill { .. } => "backfill",
            Command::FilerBackup(_) => "filer.backup",
            Command::Version => "version",
        }
    }
}

/// Rewrite Go-style single-dash long flags (`-config=x`, `-v=1`, `-config_dir`) as
/// `--flag`. Lone short flags clap knows (`-h`, `-V`) and `-` itself are left alone.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest_verbatim = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || rest_verbatim {
            out.push(a);
            continue;
        }
        if a == "--" {
            rest_verbatim = true;
            out.push(a);
            continue;
        }
        let single_dash_long = a.starts_with('-')
            && !a.starts_with("--")
            && a.len() > 1
            && a.as_bytes()[1].is_ascii_alphabetic()
            && !matches!(a.as_str(), "-h" | "-V");
        out.push(if single_dash_long { format!("-{a}") } else { a });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(normalize_args(args.iter().map(|s| s.to_string()))).unwrap()
    }

    #[test]
    fn go_style_and_gnu_style_flags() {
        let c = parse(&[
            "replicate",
            "-config=/etc/r.toml",
            "-v=2",
            "-config_dir",
            "/cfg",
        ]);
        assert_eq!(
            c.config.as_deref(),
            Some(std::path::Path::new("/etc/r.toml"))
        );
        assert_eq!(c.verbosity, 2);
        assert_eq!(c.config_dir.as_deref(), Some(std::path::Path::new("/cfg")));
        let c = parse(&[
            "replicate",
            "--config",
            "x.toml",
            "-v",
            "1",
            "-logtostderr",
            "filer.replicate",
        ]);
        assert_eq!(c.config.as_deref(), Some(std::path::Path::new("x.toml")));
        assert_eq!(c.verbosity, 1);
        assert!(matches!(c.command, Some(Command::Run)));
    }

    #[test]
    fn scaffold_takes_go_style_flags() {
        let c = parse(&[
            "replicate",
            "scaffold",
            "-config=notification",
            "-output=/tmp/x",
        ]);
        match c.command {
            Some(Command::Scaffold { output }) => {
                assert_eq!(
                    c.config.as_deref(),
                    Some(std::path::Path::new("notification"))
                );
                assert_eq!(output.as_deref(), Some(std::path::Path::new("/tmp/x")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leaves_short_flags_and_values_alone() {
        let n = normalize_args(["r", "-h", "-", "--", "-x=1"].map(String::from));
        assert_eq!(n, ["r", "-h", "-", "--", "-x=1"]);
    }

    fn resolve(args: &[&str], env: &[(&str, &str)], options: &str) -> Result<Cli, Vec<String>> {
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let options = options.to_string();
        let args = with_flags_from_env_and_options(
            normalize_args(args.iter().map(|s| s.to_string())),
            &|name| env.get(name).cloned(),
            &|p| {
                if p == std::path::Path::new("opts") {
                    Ok(options.clone())
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::NotFound))
                }
            },
        )
        .map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        Cli::try_parse_from(args).map_err(|e| vec![e.to_string()])
    }

    #[test]
    fn weed_environment_variables_set_flags_the_command_line_leaves_unset() {
        let c = resolve(
            &["replicate", "-v=2", "filer.replicate"],
            &[
                ("WEED_V", "1"),
                ("WEED_CONFIG_DIR", "/cfg"),
                ("WEED_LOGTOSTDERR", ""),
            ],
            "",
        )
        .unwrap();
        assert_eq!(c.verbosity, 2, "the command line wins");
        assert_eq!(c.config_dir.as_deref(), Some(std::path::Path::new("/cfg")));
        assert_eq!(
            c.logtostderr.as_deref(),
            Some("true"),
            "an empty boolean is true"
        );
        let e = resolve(&["replicate"], &[("WEED_V", "")], "").unwrap_err();
        assert!(e[0].contains("WEED_V is empty"), "{e:?}");
        let e = resolve(
            &["replicate"],
            &[("WEED_V", "x"), ("WEED_LOG_MAX_FILES", "many")],
            "",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("WEED_V: -v=\"x\""), "{e:?}");
    }

    #[test]
    fn options_files_as_weed_reads_them() {
        let opts = "# comment\n-log_max_files=3\nundefined_flag 7\nlog_rotate_hours: 2\n\
                    v = 4\nlog_json\nconfig_dir /from/options\n";
        let c = resolve(
            &["replicate", "check", "-options=opts", "-config_dir=/cli"],
            &[("WEED_V", "1")],
            opts,
        )
        .unwrap();
        assert_eq!(c.log_max_files, Some(3));
        assert_eq!(c.log_rotate_hours, Some(2));
        assert_eq!(c.verbosity, 1, "the environment wins over the file");
        assert_eq!(c.log_json.as_deref(), Some("true"));
        assert_eq!(c.config_dir.as_deref(), Some(std::path::Path::new("/cli")));
        assert!(matches!(c.command, Some(Command::Check)));
        // Named in WEED_OPTIONS too; a bad value names file and line; a missing file is
        // an error.
        let e = resolve(&["replicate"], &[("WEED_OPTIONS", "opts")], "\nv=lots\n").unwrap_err();
        assert!(e[0].starts_with("opts:2: -v="), "{e:?}");
        let e = resolve(&["replicate", "-options", "nope"], &[], "").unwrap_err();
        assert!(e[0].starts_with("-options=nope:"), "{e:?}");
    }

    #[test]
    fn global_flags_work_after_a_subcommand() {
        let c = resolve(
            &[
                "replicate",
                "verify",
                "-config_dir=/x",
                "-logdir=/l",
                "-v=3",
                "-log_compress",
            ],
            &[],
            "",
        )
        .unwrap();
        assert_eq!(c.config_dir.as_deref(), Some(std::path::Path::new("/x")));
        assert_eq!(c.logdir.as_deref(), Some(std::path::Path::new("/l")));
        assert_eq!(c.verbosity, 3);
        let c = resolve(
            &["replicate", "-log_dir=/l2", "-vmodule=x=1"],
            &[("WEED_LOGDIR", "/env")],
            "",
        )
        .unwrap();
        assert_eq!(c.logdir.as_deref(), Some(std::path::Path::new("/l2")));
        assert_eq!(c.ignored_flags(), ["-vmodule"]);
        // One flag under two names, from two sources: the first source wins, no clash.
        let c = resolve(
            &["replicate", "-options=opts"],
            &[("WEED_LOGDIR", "/env"), ("WEED_LOG_DIR", "/env2")],
            "log_dir /file\nlogdir /file2\n",
        )
        .unwrap();
        assert_eq!(c.logdir.as_deref(), Some(std::path::Path::new("/env")));
        // A repeated flag: the last one wins, as in Go; Go ints may be negative.
        let c = resolve(
            &["replicate", "-v=1", "check", "-v=3", "-log_max_files=-1"],
            &[],
            "",
        )
        .unwrap();
        assert_eq!((c.verbosity, c.log_max_files), (3, Some(-1)));
    }
}
