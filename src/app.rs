//! The commands: each is dispatched to the module that runs it (`runner` for the
//! replicator, `ops` for the others).

use crate::cli::{Cli, Command};
use crate::config::scaffold;
use crate::runner::replicate;
use crate::setup::AppError;

pub async fn run(cli: Cli) -> Result<(), AppError> {
    let start_over = cli
        .start_over()
        .map_err(|e| AppError::Usage(e.to_string()))?;
    if start_over.is_some()
        && let Some(command) = cli
            .command
            .as_ref()
            .filter(|c| !matches!(c, Command::Run | Command::FilerBackup(_)))
    {
        let flag = if cli.time_ago.is_some() {
            "-timeAgo"
        } else {
            "-fromTsMs"
        };
        let e = crate::cli::FlagError::StartElsewhere {
            flag,
            command: command.name(),
        };
        return Err(AppError::Usage(e.to_string()));
    }
    let place = cli.place();
    match cli.command {
        Some(Command::Version) => {
            println!(
                "replicate {} (seaweed-replicate; drop-in for weed filer.replicate)",
                crate::VERSION
            );
            Ok(())
        }
        Some(Command::Scaffold { output }) => {
            let name = cli.config.as_deref().and_then(|c| c.to_str());
            scaffold_cmd(name.unwrap_or("replication"), output.as_deref())
        }
        Some(Command::Check) => crate::ops::check::run(place).await,
        Some(Command::Verify {
            repair,
            delete,
            size_only,
        }) => {
            let mode = crate::ops::verify::Mode {
                repair,
                delete,
                size_only,
            };
            crate::ops::verify::run(place, mode).await
        }
        Some(Command::Backfill { state, restart }) => {
            crate::ops::backfill::run(place, &state, restart).await
        }
        Some(Command::FilerBackup(flags)) => {
            let backup = crate::backup::Backup::new(&flags)
                .map_err(|p| AppError::Config(crate::config::ConfigErrors(p)))?;
            replicate(place, cli.metrics_address, start_over, Some(backup)).await
        }
        Some(Command::Run) | None => replicate(place, cli.metrics_address, start_over, None).await,
    }
}

fn scaffold_cmd(name: &str, output: Option<&std::path::Path>) -> Result<(), AppError> {
    let text = scaffold::template(name).ok_or_else(|| {
        AppError::Usage(format!(
            "scaffold: unknown -config={name:?}; use replication, notification or security"
        ))
    })?;
    match output {
        None => print!("{text}"),
        Some(dir) => {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, text).map_err(|e| {
                AppError::Usage(format!("scaffold: writing {}: {e}", path.display()))
            })?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
