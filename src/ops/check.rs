//! `replicate check`: validate the configuration, then try the source filer, the input
//! and the sink once each, and print a report.
//!
//! Exit status: 0 all well, 1 something could not be reached, 2 configuration problems.

use crate::config::settings::InputSettings;
use crate::setup::{AppError, Setup};
use std::future::Future;
use std::time::Duration;

/// How long each connectivity test may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

async fn probe<F: Future<Output = Result<String, String>>>(what: &str, f: F) -> bool {
    let result = match tokio::time::timeout(PROBE_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    };
    match result {
        Ok(found) => {
            println!("  ok    {what}: {found}");
            true
        }
        Err(why) => {
            println!("  FAIL  {what}: {why}");
            false
        }
    }
}

pub(crate) async fn run(place: crate::config::Place) -> Result<(), AppError> {
    println!("configuration");
    let setup = match Setup::load(&place) {
        Ok(s) => s,
        Err(AppError::Config(problems)) => {
            for p in &problems.0 {
                println!("  FAIL  {p}");
            }
            let summary = format!(
                "{} configuration problem{}; nothing was contacted",
                problems.0.len(),
                if problems.0.len() == 1 { "" } else { "s" }
            );
            println!("{summary}");
            return Err(AppError::Reported(summary, 2));
        }
        Err(e) => return Err(e),
    };
    for name in crate::config::FILES {
        match setup.raw.files.iter().find(|(n, _)| n == name) {
            Some((_, path)) => println!("  ok    {name}.toml: {}", path.display()),
            None => println!("  ok    {name}.toml: not found; defaults apply"),
        }
    }
    // Keys that mean nothing: the daemon starts with a warning, check fails on them.
    for typo in &setup.settings.typos {
        println!("  FAIL  {typo}");
    }
    let s = &setup.settings;
    println!(
        "  ok    replicating {} (excluding {}) to the {} sink at {}",
        s.source.directory,
        if s.source.exclude_directories.is_empty() {
            "nothing".to_string()
        } else {
            s.source.exclude_directories.join(", ")
        },
        s.sink.name(),
        s.sink.directory()
    );
    for other in &s.also {
        println!(
            "  ok    and to the {} sink [sink.{}] at {}",
            other.settings.name(),
            other.id,
            other.settings.directory()
        );
    }

    println!("connectivity");
    let mut failed = 0;
    let source = setup.source.clone();
    let address = s.source.grpc_address.clone();
    let source_ok = probe("source filer", async {
        let c = source
            .client()
            .get_filer_configuration(crate::pb::GetFilerConfigurationRequest {})
            .await
            .map_err(|e| format!("{address}: {}", e.message()))?
            .into_inner();
        Ok(format!(
            "{address} (SeaweedFS {}, signature {})",
            c.version, c.signature
        ))
    })
    .await;
    if !source_ok {
        failed += 1;
    }
    let input_ok = if matches!(s.input, InputSettings::Subscribe(_)) {
        let word = if source_ok { "ok  " } else { "FAIL" };
        println!("  {word}  input: the source filer's metadata log (tested above)");
        // Not counted twice: it is the source filer.
        true
    } else {
        let input = setup.input();
        probe("input", async {
            input.probe().await.map_err(|e| e.to_string())
        })
        .await
    };
    if !input_ok {
        failed += 1;
    }
    let views = setup.views();
    for view in &views {
        let open = view.sink().await?;
        let what = open.sink.describe();
        let label = if views.len() > 1 {
            format!("sink {}", view.settings.sink_id)
        } else {
            "sink".to_string()
        };
        if !probe(&label, async {
            open.sink
                .probe()
                .await
                .map(|()| what.clone())
                .map_err(|e| e.to_string())
        })
        .await
        {
            failed += 1;
        }
    }
    if !setup.settings.typos.is_empty() {
        let n = setup.settings.typos.len();
        let summary = format!(
            "{n} configuration problem{} (keys that mean nothing; the daemon would only warn)",
            if n == 1 { "" } else { "s" }
        );
        println!("{summary}");
        return Err(AppError::Reported(summary, 2));
    }
    if failed == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        println!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
        Err(AppError::Runtime(format!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        )))
    }
}
