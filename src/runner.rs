//! The replicator's run loop: one sink fed by the input, or several each fed from a
//! backlog of its own (built by `setup`), and signals. Exits only on configuration
//! errors or a signal; everything at run time is retried.

use crate::setup::{AppError, Setup, config_error};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long in-flight events may run after SIGTERM/SIGINT before they are abandoned.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);

pub(crate) async fn replicate(
    place: crate::config::Place,
    metrics_address: Option<String>,
    start_over: Option<crate::config::settings::StartFrom>,
    backup: Option<crate::backup::Backup>,
) -> Result<(), AppError> {
    let stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    spawn_signal_handler(stop.clone(), hard_stop.clone());
    let mut setup = Setup::load_with(&place, backup.as_ref())?;
    if let Some(start) = start_over {
        setup.start_over(start)?;
    }
    if setup.settings.several_sinks() {
        carry_checkpoint_over(&mut setup);
    }
    let setup = Arc::new(setup);
    setup.warn_typos();
    let settings = &setup.settings;
    let raw = &setup.raw;

    // The listener comes first, so that /healthz answers while start-up waits.
    let metrics_server = match metrics_address.or(settings.metrics.address.clone()) {
        None => None,
        Some(address) => {
            let bad = |e: String| config_error(raw, "metrics.address", e);
            crate::config::settings::check_listen_address(&address)
                .map_err(|e| bad(e.to_string()))?;
            let listener = crate::metrics::bind(&address)
                .await
                .map_err(|e| bad(format!("{address:?}: cannot listen: {e}")))?;
            let local = listener.local_addr().map(|a| a.to_string());
            tracing::info!(address = %local.unwrap_or(address), "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(crate::metrics::serve(listener, stop.clone())))
        }
    };

    if settings.several_sinks() {
        return several(setup, stop, hard_stop, metrics_server).await;
    }
    let leftover = left_by_several(&setup).await?;
    let open = setup.sink().await?;
    let Some(skip_signatures) = setup.connect(&open, &stop).await else {
        return Ok(());
    };
    if let (Some((_, client)), Some(_)) = (&open.target, &settings.trash) {
        refuse_a_trash_above_buckets(
            client.clone(),
            &settings.sink.directory(),
            raw,
            &settings.sink_id,
        )
        .await?;
    }
    tracing::info!(sink = settings.sink.name(), directory = %settings.sink.directory(), "Configure sink to {}", settings.sink.name());
    if let Err(e) = open.sink.recover().await {
        tracing::warn!(error = %e, "cleaning up after an earlier run failed; it is tried again at the next start");
    }
    let pipeline = setup.pipeline(setup.rules(skip_signatures), open.sink, stop.clone());
    crate::metrics::get().set_max_event_age(settings.metrics.ready_max_event_age);
    let marker = settings
        .replicate
        .parked_file
        .with_file_name("replicate.reconcile-pending");
    let gaps = crate::gaps::init(settings.replicate.on_gap, marker);
    if let Some((own, owes)) = leftover {
        if owes {
            let then = crate::gaps::report(
                crate::gaps::Reason::BacklogLeft,
                "this sink's backlog from a run with several sinks held events it had not \
                 applied (acknowledged to the input back then), or owed a reconciliation",
            );
            if then == crate::gaps::Then::Stop {
                // The backlog stays, so that every start says so until an operator acts.
                crate::notify::notify("READY=1");
                crate::metrics::get().set_started();
                stop.cancelled().await;
                return Ok(());
            }
        }
        set_aside(&own, &settings.sink_id).await?;
    }
    let reconciler = gaps.map(|gaps| {
        tokio::spawn(crate::ops::reconcile::serve(
            setup.clone(),
            pipeline.clone(),
            gaps,
            stop.clone(),
        ))
    });

    spawn_retention(&setup, &stop);

    // Start-up is done: the sink and the filers answered. systemd (Type=notify) may now
    // consider the service started.
    crate::notify::notify("READY=1");
    crate::notify::spawn_watchdog();
    crate::metrics::get().set_started();
    if let Some(every) = settings.metrics.progress_interval {
        tokio::spawn(crate::metrics::progress(every, stop.clone()));
    }
    tokio::spawn(pipeline.clone().watch_outages(stop.clone()));
    let input = setup.input();
    tracing::info!(input = %input.describe(), "Configure notification input to {}", settings.input.name());
    input
        .run(pipeline.clone(), stop, hard_stop)
        .await
        .map_err(|e| match e {
            crate::source::InputError::Config { key, detail } => config_error(raw, key, detail),
            e => AppError::Runtime(e.to_string()),
        })?;
    if let Some(r) = reconciler {
        // It stops with `stop` (its events are abandoned like any in flight).
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    if let Some(server) = metrics_server {
        // It stops with `stop`; a scraper holding a connection open does not delay exit.
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    pipeline.log_stopped();
    Ok(())
}

/// Several sinks on the metadata log: remember the checkpoint key in `sinks/`, and when
/// it changed (the first sink is another now) for the same source, look under the one
/// used before. The file keeps the source, the key now and the one before it, so that a
/// stop before the first save under the new key still finds the old one.
fn carry_checkpoint_over(setup: &mut Setup) {
    let file = setup
        .settings
        .replicate
        .parked_file
        .with_file_name("sinks")
        .join("checkpoint-key");
    let source = format!(
        "{}|{}",
        setup.settings.source.grpc_address, setup.settings.source.directory
    );
    let crate::config::settings::InputSettings::Subscribe(cfg) = &mut setup.settings.input else {
        return;
    };
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines = text.lines();
    let key = |line: Option<&str>| {
        line.and_then(|l| hex::decode(l.trim()).ok())
            .filter(|k| !k.is_empty() && k.len() <= 1024)
    };
    let previous = if lines.next() == Some(source.as_str()) {
        match (key(lines.next()), key(lines.next())) {
            (Some(now), before) if now == cfg.checkpoint_key => before,
            (now, _) => now,
        }
    } else {
        None
    };
    let mut remembered = format!("{source}\n{}\n", hex::encode(&cfg.checkpoint_key));
    if let Some(previous) = &previous {
        remembered.push_str(&hex::encode(previous));
        remembered.push('\n');
    }
    cfg.previous_checkpoint_key = previous;
    let temp = file.with_extension("new");
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&temp, remembered))
        .and_then(|()| std::fs::rename(&temp, &file));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot remember the checkpoint key");
    }
}

/// One sink, where a run with several sinks left their state (`sinks/` beside the parked
/// file): this start counts as a run the others missed (each is reconciled when it is
/// fed again). If this sink has a backlog there: its directory, and whether it held
/// events never applied (acknowledged to the input back then) or owed a reconciliation.
async fn left_by_several(setup: &Setup) -> Result<Option<(std::path::PathBuf, bool)>, AppError> {
    let settings = &setup.settings;
    let sinks = settings.replicate.parked_file.with_file_name("sinks");
    if !sinks.is_dir() {
        return Ok(None);
    }
    crate::fanout::Runs::next(&sinks).map_err(|e| AppError::Runtime(e.to_string()))?;
    let own = sinks.join(&settings.sink_id);
    if !own.join("backlog.redb").exists() {
        return Ok(None);
    }
    let id: &'static str = Box::leak(settings.sink_id.clone().into_boxed_str());
    let runs = crate::fanout::Runs {
        previous: 0,
        current: 0,
    };
    let backlog = crate::fanout::Backlog::open(id, &own, u64::MAX, runs)
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    // A damaged backlog is set aside by `open` and owes a reconciliation.
    let owes = backlog.len() > 0 || backlog.debt().map_or(true, |d| d > 0);
    Ok(Some((own, owes)))
}

/// Set this sink's backlog from a run with several sinks aside, once what it owed is
/// recorded (see [`left_by_several`]).
async fn set_aside(own: &std::path::Path, sink_id: &str) -> Result<(), AppError> {
    let aside = own.with_file_name(format!(
        "{sink_id}.left-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    // The database closes with its writer, which notices its backlog is gone.
    let mut tries = 0;
    while let Err(e) = std::fs::rename(own, &aside) {
        tries += 1;
        if tries > 50 {
            return Err(AppError::Runtime(format!(
                "moving {} aside: {e}",
                own.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(sink = sink_id, moved_to = %aside.display(), "one sink now, where several were fed: its backlog is set aside");
    Ok(())
}

/// Retention sweeps for the dated directories of one sink: its dated copies, its trash.
fn spawn_retention(setup: &Arc<Setup>, stop: &CancellationToken) {
    use crate::ops::retention::Dated;
    let settings = &setup.settings;
    let dated = settings
        .retention_days
        .map(|days| Dated::Copies { days })
        .into_iter()
        .chain(settings.trash.as_ref().and_then(|t| {
            t.days.map(|days| Dated::Trash {
                directory: t.directory.clone(),
                days,
            })
        }));
    for dated in dated {
        tokio::spawn(crate::ops::retention::serve(
            setup.clone(),
            dated,
            stop.clone(),
        ));
    }
}

/// Several sinks from one input (see [`crate::fanout`]): every sink is built first (a
/// configuration problem in any ends the start), then each starts on its own, so one
/// that is down holds back neither the others nor the input.
async fn several(
    setup: Arc<Setup>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), AppError> {
    use crate::fanout::{Backlog, FanOut};
    let settings = &setup.settings;
    let views = setup.views();
    let mut opened = Vec::new();
    for view in &views {
        opened.push(view.sink().await?);
    }
    let sinks_dir = settings.replicate.parked_file.with_file_name("sinks");
    let runs =
        crate::fanout::Runs::next(&sinks_dir).map_err(|e| AppError::Runtime(e.to_string()))?;
    let mut backlogs = Vec::new();
    for view in &views {
        let id: &'static str = Box::leak(view.settings.sink_id.clone().into_boxed_str());
        crate::metrics::get().set_sink_up(id, false);
        let dir = view
            .settings
            .replicate
            .parked_file
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let backlog = Backlog::open(id, &dir, view.settings.replicate.backlog_events, runs)
            .map_err(|e| AppError::Runtime(e.to_string()))?;
        backlogs.push(backlog);
    }
    tracing::info!(
        sinks = %views.iter().map(|v| v.settings.sink_id.as_str()).collect::<Vec<_>>().join(", "),
        "feeding {} sinks from one input, each from a backlog of its own",
        views.len()
    );
    crate::metrics::get().set_max_event_age(settings.metrics.ready_max_event_age);
    // A gap in the input is owed by every sink, each reconciling on its own.
    let marker = settings
        .replicate
        .parked_file
        .with_file_name("replicate.reconcile-pending");
    if let Some(mut gaps) = crate::gaps::init(settings.replicate.on_gap, marker) {
        let backlogs = backlogs.clone();
        tokio::spawn(async move {
            while gaps.recv().await.is_some() {
                let mut recorded = true;
                for b in &backlogs {
                    let b = b.clone();
                    let done = tokio::task::spawn_blocking(move || b.owe()).await;
                    if let Some(e) = match done {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    } {
                        tracing::warn!(error = %e, "cannot record that a sink owes a reconciliation");
                        recorded = false;
                    }
                }
                if recorded {
                    crate::gaps::reconciled();
                }
            }
        });
    }
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<AppError>(views.len());
    let mut sinks = Vec::new();
    for ((view, open), backlog) in views.iter().zip(opened).zip(backlogs.iter()) {
        spawn_retention(view, &stop);
        sinks.push(tokio::spawn(run_sink(
            view.clone(),
            open,
            backlog.clone(),
            stop.clone(),
            hard_stop.clone(),
            fatal_tx.clone(),
        )));
    }
    drop(fatal_tx);
    crate::notify::notify("READY=1");
    crate::notify::spawn_watchdog();
    crate::metrics::get().set_started();
    if let Some(every) = settings.metrics.progress_interval {
        tokio::spawn(crate::metrics::progress(every, stop.clone()));
    }
    let fan_out = Arc::new(
        setup
            .bare_pipeline(
                setup.rules(Vec::new()),
                Box::new(crate::fanout::NoSink),
                stop.clone(),
            )
            .handing_on(Box::new(FanOut::new(backlogs))),
    );
    let input = setup.input();
    tracing::info!(input = %input.describe(), "Configure notification input to {}", settings.input.name());
    let raw = &setup.raw;
    let outcome = tokio::select! {
        r = input.run(fan_out, stop.clone(), hard_stop.clone()) => r.map_err(|e| match e {
            crate::source::InputError::Config { key, detail } => config_error(raw, key, detail),
            e => AppError::Runtime(e.to_string()),
        }),
        Some(e) = fatal_rx.recv() => Err(e),
    };
    if outcome.is_err() {
        // No signal handler counts the grace for an error: events in flight get it too.
        let hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            hard_stop.cancel();
        });
    }
    stop.cancel();
    // One deadline for all: each ends within the shutdown grace.
    let _ = tokio::time::timeout(
        SHUTDOWN_GRACE + Duration::from_secs(2),
        futures::future::join_all(sinks),
    )
    .await;
    if let Some(server) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    outcome
}

/// One of several sinks: wait until it answers, then drain its backlog until `stop`.
async fn run_sink(
    setup: Arc<Setup>,
    open: crate::setup::OpenSink,
    backlog: Arc<crate::fanout::Backlog>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    fatal: tokio::sync::mpsc::Sender<AppError>,
) {
    let settings = &setup.settings;
    let Some(skip_signatures) = setup.connect(&open, &stop).await else {
        return;
    };
    crate::metrics::get().set_sink_up(backlog.id, true);
    if let (Some((_, client)), Some(_)) = (&open.target, &settings.trash)
        && let Err(e) = refuse_a_trash_above_buckets(
            client.clone(),
            &settings.sink.directory(),
            &setup.raw,
            &settings.sink_id,
        )
        .await
    {
        let _ = fatal.send(e).await;
        return;
    }
    tracing::info!(sink = backlog.id, directory = %settings.sink.directory(), "Configure sink to {}", settings.sink.name());
    if let Err(e) = open.sink.recover().await {
        tracing::warn!(sink = backlog.id, error = %e, "cleaning up after an earlier run failed; it is tried again at the next start");
    }
    let pipeline = Arc::new(
        setup
            .bare_pipeline(setup.rules(skip_signatures), open.sink, stop.clone())
            .for_sink(backlog.id),
    );
    tokio::spawn(pipeline.clone().watch_outages(stop.clone()));
    crate::fanout::drain(
        backlog.clone(),
        pipeline.clone(),
        setup.clone(),
        stop,
        hard_stop,
    )
    .await;
    pipeline.log_stopped();
}

/// A filer keeps each bucket's data in the bucket's own collection and drops the
/// collection with the bucket, so a trash that holds entries of several buckets (a filer
/// sink at or above the target's buckets folder) would lose what it holds when a bucket
/// is deleted: a configuration error. Inside one bucket, the trash is that bucket's.
async fn refuse_a_trash_above_buckets(
    mut client: crate::pb::seaweed_filer_client::SeaweedFilerClient<tonic::transport::Channel>,
    directory: &str,
    raw: &crate::config::RawConfig,
    sink_id: &str,
) -> Result<(), AppError> {
    let buckets = match client
        .get_filer_configuration(crate::pb::GetFilerConfigurationRequest {})
        .await
    {
        Ok(r) => r.into_inner().dir_buckets,
        // The sink answered a moment ago; if it cannot say now, the default is assumed.
        Err(_) => String::new(),
    };
    let buckets = if buckets.is_empty() {
        "/buckets".to_string()
    } else {
        buckets
    };
    let parts = |p: &str| crate::path::components(p).unwrap_or_default();
    if crate::path::is_equal_or_under(&parts(&buckets), &parts(directory)) {
        return Err(config_error(
            raw,
            &format!("sink.{sink_id}.deletes"),
            format!(
                "\"trash\" into {directory:?} would hold entries of several buckets of the \
                 target's {buckets}, and a filer drops a bucket's data with the bucket; \
                 set directory inside one bucket, or outside {buckets}"
            ),
        ));
    }
    Ok(())
}

/// Handle SIGTERM and SIGINT from now on (registered before this returns, so a stop
/// that arrives during start-up is a clean stop too, not death by the signal).
fn spawn_signal_handler(stop: CancellationToken, hard_stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping intake, finishing in-flight events"),
            _ = int.recv() => tracing::info!("SIGINT: stopping intake, finishing in-flight events"),
        }
        crate::notify::notify("STOPPING=1");
        stop.cancel();
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        hard_stop.cancel();
    });
}
