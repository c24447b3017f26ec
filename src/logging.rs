//! Logging: to standard error, and with `-logdir` to rotated files too, as text or
//! JSON lines. `-v=0` info, `-v=1..2` debug (every event), `-v>=3` trace; `RUST_LOG`
//! overrides.

use crate::cli::Cli;

/// One log destination: lines as text or JSON, filtered by `filter`.
fn fmt_layer<W>(
    writer: W,
    json: bool,
    ansi: bool,
    filter: tracing_subscriber::EnvFilter,
) -> Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    if json {
        layer
            .json()
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        layer.with_ansi(ansi).with_filter(filter).boxed()
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(transparent)]
    Flag(#[from] crate::cli::FlagError),
    #[error("-logdir={}: {source}", dir.display())]
    LogDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Set up logging from the flags: standard error, and with `-logdir` log files too
/// (`-logtostderr`: standard error only; `-alsologtostderr=false`: standard error gets
/// only `-stderrthreshold` and up). An error for a bad flag value or a log directory that
/// cannot be written.
pub fn init(cli: &Cli) -> Result<(), LoggingError> {
    use crate::cli::flag_bool;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    // filer.backup's -debug prints every event it receives: -v=1 here.
    let debug = match &cli.command {
        Some(crate::cli::Command::FilerBackup(flags)) => crate::backup::Backup::debug(flags)?,
        _ => false,
    };
    let level = match cli.verbosity.max(u8::from(debug)) {
        0 => "info",
        1 | 2 => "seaweed_replicate=debug,info",
        _ => "seaweed_replicate=trace,debug",
    };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = flag_bool("log_json", cli.log_json.as_deref(), false)?
        || cli.log_format == crate::cli::LogFormat::Json;
    let only_stderr = flag_bool("logtostderr", cli.logtostderr.as_deref(), false)?;
    let also_stderr = flag_bool("alsologtostderr", cli.alsologtostderr.as_deref(), true)?;
    let compress = flag_bool("log_compress", cli.log_compress.as_deref(), false)?;
    // glog's severities: INFO 0, WARNING 1, ERROR 2, FATAL 3 (FATAL: ERROR here).
    let threshold = match cli
        .stderrthreshold
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("ERROR" | "2" | "FATAL" | "3") => LevelFilter::ERROR,
        Some("WARNING" | "1") => LevelFilter::WARN,
        Some("INFO" | "0") => LevelFilter::INFO,
        Some(other) => {
            return Err(crate::cli::FlagError::Threshold {
                value: crate::text::cut(other).to_string(),
            }
            .into());
        }
    };
    let files = match (&cli.logdir, only_stderr) {
        (Some(dir), false) => {
            // As glog: 0 or less is the default (for hours: no rotation by age).
            let mb = cli.log_max_size_mb.filter(|m| *m > 0).unwrap_or(1800) as u64;
            let policy = crate::logfile::Policy {
                max_bytes: mb.saturating_mul(1024 * 1024),
                max_files: cli.log_max_files.filter(|n| *n > 0).unwrap_or(5) as usize,
                rotate_after: match cli.log_rotate_hours.unwrap_or(168) {
                    h if h <= 0 => None,
                    h => Some(std::time::Duration::from_secs(
                        (h as u64).saturating_mul(3600),
                    )),
                },
                compress,
            };
            Some(
                crate::logfile::LogFiles::open(dir, policy).map_err(|source| {
                    LoggingError::LogDir {
                        dir: dir.clone(),
                        source,
                    }
                })?,
            )
        }
        _ => None,
    };
    let stderr_level = if files.is_none() || also_stderr {
        LevelFilter::TRACE
    } else {
        threshold
    };
    use std::io::IsTerminal;
    let mut layers = vec![
        fmt_layer(
            std::io::stderr,
            json,
            std::io::stderr().is_terminal(),
            filter(),
        )
        .with_filter(stderr_level)
        .boxed(),
    ];
    if let Some(files) = files {
        layers.push(fmt_layer(files, json, false, filter()));
    }
    // Every layer filters for itself; this says, once per call site, what none of them
    // wants, so that those spans and events (hyper's and h2's per-request trace spans)
    // are never built: they cost 8% of the process's CPU at the default level.
    let wanted = filter().max_level_hint().unwrap_or(LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(layers)
        .with(wanted)
        .init();
    Ok(())
}
