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
    let args = cli::normalize_args(std::env::args());
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
    app::init_logging(cli.verbosity, cli.log_format);
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
