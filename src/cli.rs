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
pub struct Cli {
    /// The replication.toml to use; notification.toml and security.toml are looked for beside it first.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A directory searched first for the configuration files.
    #[arg(long = "config_dir", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Log verbosity as in glog: 0 is normal, 1 logs every event, 3 and up trace.
    #[arg(long = "v", value_name = "N", default_value_t = 0)]
    pub verbosity: u8,
    /// Log lines as text for people, or as one JSON object per line for log shippers.
    #[arg(long = "log-format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics, /healthz and /readyz on host:port or :port (overrides
    /// `[metrics] address`).
    #[arg(long = "metrics.address", value_name = "ADDR")]
    pub metrics_address: Option<String>,
    /// Accepted for compatibility with weed's glog flags; logs always go to stderr.
    #[arg(long = "logtostderr", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub logtostderr: Option<String>,
    #[arg(long = "alsologtostderr", hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub alsologtostderr: Option<String>,
    #[arg(long = "logdir", hide = true)]
    pub logdir: Option<String>,
    #[arg(long = "vmodule", hide = true)]
    pub vmodule: Option<String>,
    #[arg(long = "log_backtrace_at", hide = true)]
    pub log_backtrace_at: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Print a complete configuration template.
    Scaffold {
        /// Which file: replication, notification or security.
        #[arg(long = "config", value_name = "NAME", default_value = "replication")]
        config: String,
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
    /// Print the version.
    Version,
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
            Some(Command::Scaffold { config, output }) => {
                assert_eq!(config, "notification");
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
}
