//! `replicate`: parse the command line, set up logging, run, map errors to exit codes.

use clap::Parser;
use seaweed_replicate::{app, cli};
use std::process::ExitCode;

/// glibc's allocator keeps freed multi-MiB chunk buffers in its heaps (its mmap threshold
/// rises after each free of a large block) and gives each thread an arena; fixing the
/// threshold and capping arenas keeps the resident size near what is really in use.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    seaweed_replicate::http::install_tls_provider();
    let mut args = Vec::new();
    for (i, a) in std::env::args_os().enumerate() {
        match a.into_string() {
            Ok(a) => args.push(a),
            Err(a) => {
                eprintln!(
                    "replicate: argument {i} ({}) is not UTF-8",
                    a.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let args = match cli::with_flags_from_env_and_options(cli::normalize_args(args), &env, &|p| {
        std::fs::read_to_string(p)
    }) {
        Ok(args) => args,
        Err(problems) => {
            for p in &problems {
                eprintln!("replicate: {p}");
            }
            return ExitCode::from(2);
        }
    };
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = seaweed_replicate::logging::init(&cli) {
        eprintln!("replicate: {e}");
        return ExitCode::from(2);
    }
    tracing::debug!(
        version = seaweed_replicate::VERSION,
        v = cli.verbosity,
        config_dir = ?cli.config_dir,
        logdir = ?cli.logdir,
        "flags in effect"
    );
    let ignored = cli.ignored_flags();
    if !ignored.is_empty() {
        tracing::info!(
            flags = %ignored.join(" "),
            "accepted for compatibility with weed; no effect here"
        );
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(app::run(cli));
    // Do not wait for a blocking call (a Kafka metadata request) still under way.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replicate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
