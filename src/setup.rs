//! The composition root: the configuration loaded and resolved, and the clients, the
//! source reader and the sink built from it. Every command starts here (`app` for the
//! replicator, `ops` for check, verify and backfill); nothing here depends on them.

use crate::config::settings::{DeletePolicy, SinkSettings};
use crate::config::{ConfigErrors, LoadOptions, RawConfig, Settings, resolve};
use crate::filer::{FilerSource, SourceOptions, signature};
use crate::metrics::Component;
use crate::pb::seaweed_filer_client::SeaweedFilerClient;
use crate::pipeline::Pipeline;
use crate::replicate::Rules;
use crate::retry::wait_until_healthy;
use crate::sink::Sink;
use crate::sink::filer::FilerSink;
use crate::sink::local::LocalSink;
use crate::sink::object::ObjectSink;
use crate::sink::object::azure::AzureStore;
use crate::sink::object::b2::B2Store;
use crate::sink::object::gcs::GcsStore;
use crate::sink::object::s3::S3Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
    /// A command could not do its work (`verify` could not list the source or the sink).
    #[error("{0}")]
    Trouble(String),
    /// A command was stopped by a signal before it finished.
    #[error("{0}")]
    Interrupted(String),
    /// The command has printed what went wrong already; a summary and the exit status.
    #[error("{0}")]
    Reported(String, u8),
}

impl AppError {
    /// 2 for configuration and usage errors and for trouble (as `diff` and `cmp` use
    /// it: the comparison could not be made), 130 when interrupted, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Usage(_) | AppError::Trouble(_) => 2,
            AppError::Interrupted(_) => 130,
            AppError::Runtime(_) => 1,
            AppError::Reported(_, code) => *code,
        }
    }
}

/// What every command needs from the configuration: the settings, the HTTP and gRPC
/// clients, and the source cluster.
pub(crate) struct Setup {
    pub raw: RawConfig,
    pub settings: Settings,
    /// For SeaweedFS's servers (`security.toml`'s `[https.client]`).
    pub http: reqwest::Client,
    /// For clouds and their token endpoints (see [`crate::http`]).
    pub cloud: reqwest::Client,
    pub grpc_tls: Option<Arc<rustls::ClientConfig>>,
    pub source: Arc<FilerSource>,
}

/// A sink, and for a filer sink the target filer's client (for its signature).
pub(crate) struct OpenSink {
    pub sink: Box<dyn Sink>,
    pub target: Option<(String, SeaweedFilerClient<Channel>)>,
}

impl Setup {
    /// Warn about keys that mean nothing (`check` lists them as failures instead).
    pub(crate) fn warn_typos(&self) {
        for typo in &self.settings.typos {
            tracing::warn!("{typo} (-strict makes this an error)");
        }
        for warning in &self.settings.warnings {
            tracing::warn!("{warning}");
        }
    }

    /// One setup per sink (see [`Settings::views`]), sharing the clients and the source
    /// reader, so that every sink's reads share one cache and one memory budget.
    pub(crate) fn views(&self) -> Vec<Arc<Setup>> {
        self.settings
            .views()
            .into_iter()
            .map(|settings| {
                Arc::new(Setup {
                    raw: self.raw.clone(),
                    settings,
                    http: self.http.clone(),
                    cloud: self.cloud.clone(),
                    grpc_tls: self.grpc_tls.clone(),
                    source: self.source.clone(),
                })
            })
            .collect()
    }

    /// Start the metadata log at `start` whatever its checkpoint says (`-timeAgo`,
    /// `-fromTsMs`); a usage error for any other input.
    pub(crate) fn start_over(
        &mut self,
        start: crate::config::settings::StartFrom,
    ) -> Result<(), AppError> {
        match &mut self.settings.input {
            crate::config::settings::InputSettings::Subscribe(cfg) => {
                cfg.start_over = Some(start);
                Ok(())
            }
            other => Err(AppError::Usage(format!(
                "-timeAgo and -fromTsMs start the source filer's metadata log \
                 ([source.filer] subscribe = true); the input configured is {}, which has no \
                 start time",
                other.name()
            ))),
        }
    }

    /// Load and resolve the configuration and build the clients; every configuration
    /// problem is an `AppError::Config`.
    pub(crate) fn load(place: &crate::config::Place) -> Result<Setup, AppError> {
        Self::load_with(place, None)
    }

    /// [`Setup::load`], for `filer.backup` with its flags standing for the source's keys.
    pub(crate) fn load_with(
        place: &crate::config::Place,
        backup: Option<&crate::backup::Backup>,
    ) -> Result<Setup, AppError> {
        let mut opts = LoadOptions::from_process(place);
        opts.without_notification = backup.is_some();
        let mut raw = RawConfig::load(&opts)?;
        for (name, path) in &raw.files {
            tracing::info!(file = %path.display(), "loaded {name}");
        }
        if let Some(backup) = backup {
            backup.configure(&mut raw);
        }
        let mut settings = resolve(&raw, &opts.cwd)?;
        if backup.is_some() && settings.several_sinks() {
            let extra = &settings.also[0].id;
            return Err(config_error(
                &raw,
                &format!("sink.{extra}.enabled"),
                format!(
                    "filer.backup feeds one sink, as upstream's does, and its checkpoint is \
                     that sink's; [sink.{}] and [sink.{extra}] are both enabled. Run \
                     `replicate` (with [source.filer] subscribe = true) to feed several",
                    settings.sink_id
                ),
            ));
        }
        if let Some(backup) = backup {
            for note in backup.adjust(&mut settings, &raw) {
                tracing::info!("filer.backup: {note}");
            }
            tracing::info!(
                filer = %backup.http_address,
                grpc = %backup.grpc_address,
                deletes = ?settings.deletes,
                "filer.backup: following the source filer's metadata log; the checkpoint is weed filer.backup's own"
            );
        }

        let read_timeout = settings.replicate.read_timeout;
        let client_problem = |e: crate::http::HttpError| match e {
            crate::http::HttpError::File { key, path, detail } => {
                config_problem(&raw, key, &path, detail)
            }
            e => AppError::Runtime(e.to_string()),
        };
        let http = crate::http::seaweed(read_timeout, settings.security.https_client.as_ref())
            .map_err(client_problem)?;
        let cloud = crate::http::cloud(read_timeout).map_err(client_problem)?;

        let grpc_tls = match &settings.security.grpc_tls {
            None => None,
            Some(t) => Some(
                crate::filer::tls::client_config(&t.ca, &t.cert, &t.key)
                    .map_err(|e| config_problem(&raw, "grpc.ca", &t.ca.display().to_string(), e))?,
            ),
        };
        if grpc_tls.is_some() {
            tracing::info!("gRPC to filers uses mutual TLS (grpc.ca, grpc.client)");
        }
        let source = Arc::new(
            FilerSource::new(
                SourceOptions {
                    grpc_address: settings.source.grpc_address.clone(),
                    data_center: settings.source.data_center.clone(),
                    read_jwt: settings.security.read_jwt.as_ref().map(|j| {
                        crate::filer::jwt::ReadSigner::new(&j.key, j.expires_after_seconds)
                    }),
                    https: settings.security.https_client.is_some(),
                    prefetch: settings.replicate.prefetch_chunks,
                    grpc_tls: grpc_tls.clone(),
                    proxy: settings.source.proxy.clone(),
                    shared_read_bytes: if settings.several_sinks() {
                        settings.replicate.shared_read_bytes
                    } else {
                        0
                    },
                    memory_budget_bytes: settings.replicate.memory_budget_bytes,
                },
                http.clone(),
            )
            .map_err(|e| {
                config_problem(
                    &raw,
                    "source.filer.grpcAddress",
                    &settings.source.grpc_address,
                    e,
                )
            })?,
        );
        Ok(Setup {
            raw,
            settings,
            http,
            cloud,
            grpc_tls,
            source,
        })
    }

    /// The configured input (nothing is contacted yet).
    pub(crate) fn input(&self) -> Box<dyn crate::source::Input> {
        crate::source::open(
            &self.settings.input,
            crate::source::InputContext {
                cloud: self.cloud.clone(),
                source: self.source.clone(),
                source_directory: self.settings.source.directory.clone(),
            },
        )
    }

    /// Build the configured sink (nothing is contacted yet).
    pub(crate) async fn sink(&self) -> Result<OpenSink, AppError> {
        let (raw, cloud, source) = (&self.raw, &self.cloud, &self.source);
        // A key of this sink's section (a named one with several sinks).
        let key = |name: &str| format!("sink.{}.{name}", self.settings.sink_id);
        let sink: Box<dyn Sink> = match &self.settings.sink {
            SinkSettings::Local {
                name, directory, ..
            } => Box::new(LocalSink::new(name, directory.clone(), source.clone())),
            SinkSettings::Azure(opts) => {
                let store = AzureStore::new(opts.clone(), cloud.clone())
                    .map_err(|e| config_problem(raw, &key("account_key"), "(not shown)", e))?;
                tracing::info!(credential = %store.credential(), "Azure authorization");
                Box::new(ObjectSink::new(store, &opts.directory, source.clone()))
            }
            SinkSettings::B2(opts) => Box::new(ObjectSink::new(
                B2Store::new(opts.clone(), cloud.clone()),
                &opts.directory,
                source.clone(),
            )),
            SinkSettings::Gcs(opts) => {
                let store = GcsStore::new(opts.clone(), cloud.clone()).map_err(|e| {
                    config_problem(
                        raw,
                        &key("google_application_credentials"),
                        "(not shown)",
                        e,
                    )
                })?;
                Box::new(ObjectSink::new(store, &opts.directory, source.clone()))
            }
            SinkSettings::S3(opts) => {
                let store = S3Store::new(opts.clone(), self.settings.replicate.read_timeout).await;
                Box::new(ObjectSink::new(store, &opts.directory, source.clone()))
            }
            SinkSettings::Filer(opts) => {
                let opts = crate::sink::filer::FilerSinkOptions {
                    grpc_tls: self.grpc_tls.clone(),
                    journal_dir: Some(
                        self.settings
                            .replicate
                            .parked_file
                            .with_file_name("replicate.filer-uploads"),
                    ),
                    ..opts.clone()
                };
                let sink = FilerSink::new(opts.clone(), source.clone(), self.http.clone())
                    .map_err(|e| config_problem(raw, &key("grpcAddress"), &opts.grpc_address, e))?;
                let target = Some((opts.grpc_address.clone(), sink.client()));
                return Ok(OpenSink {
                    sink: Box::new(sink),
                    target,
                });
            }
        };
        Ok(OpenSink { sink, target: None })
    }

    /// The replication rules; `skip_signatures` are the filers whose changes are not
    /// replicated back (the target filer's).
    pub(crate) fn rules(&self, skip_signatures: Vec<i32>) -> Rules {
        let settings = &self.settings;
        Rules {
            source_dir: settings.source.directory_parts.clone(),
            excludes: settings.source.exclude_parts.clone(),
            filter: settings.source.filter.clone(),
            sink_dir: settings.sink.directory(),
            incremental: settings.sink.incremental(),
            keep_deletes: settings.deletes == DeletePolicy::Keep,
            trash_dir: settings.trash.as_ref().map(|t| t.directory.clone()),
            skip_other_cluster: matches!(settings.sink, SinkSettings::Filer(_)),
            skip_signatures,
        }
    }

    /// The pipeline events run through.
    pub(crate) fn pipeline(
        &self,
        rules: Rules,
        sink: Box<dyn Sink>,
        stop: CancellationToken,
    ) -> Arc<Pipeline> {
        Arc::new(self.bare_pipeline(rules, sink, stop))
    }

    /// [`Setup::pipeline`], not shared yet.
    pub(crate) fn bare_pipeline(
        &self,
        rules: Rules,
        sink: Box<dyn Sink>,
        stop: CancellationToken,
    ) -> Pipeline {
        let r = &self.settings.replicate;
        Pipeline::new(
            rules,
            Some(self.source.clone()),
            sink,
            crate::pipeline::Policies {
                concurrency: r.concurrency,
                on_failure: r.on_failure,
                bad_message: r.bad_message,
                max_message_bytes: r.max_message_bytes,
                parked_file: r.parked_file.clone(),
                deadline: r.event_deadline,
            },
            stop,
        )
    }

    /// Wait until the sink answers and, for a filer sink, learn which signatures to
    /// skip; `None` if `stop` fires first.
    pub(crate) async fn connect(
        &self,
        open: &OpenSink,
        stop: &CancellationToken,
    ) -> Option<Vec<i32>> {
        let what = open.sink.describe();
        wait_until_healthy(&what, stop, || async {
            open.sink.probe().await.map_err(|e| e.to_string())
        })
        .await?;
        tracing::info!("{what} reachable");
        let mut skip_signatures = Vec::new();
        if let Some((address, client)) = &open.target {
            // Loop avoidance: events that already passed through the target filer are not
            // sent back to it. When source and target are the same filer (folder to
            // folder), every event carries that signature, and only is_from_other_cluster
            // applies.
            let target_sig = signature(client.clone(), address, stop).await?;
            let source_sig = signature(
                self.source.client(),
                &self.settings.source.grpc_address,
                stop,
            )
            .await?;
            tracing::info!(target = %address, target_sig, source_sig, "filers reached");
            if target_sig != source_sig {
                skip_signatures.push(target_sig);
            }
            crate::metrics::get().set_up(Component::Source, true);
        }
        crate::metrics::get().set_up(Component::Sink, true);
        Some(skip_signatures)
    }
}

pub(crate) fn config_problem(
    raw: &RawConfig,
    key: &str,
    value: &str,
    e: impl std::fmt::Display,
) -> AppError {
    config_error(raw, key, format!("{value:?}: {e}"))
}

/// A configuration error about `key`, naming where it was set (or the file it belongs in).
pub(crate) fn config_error(raw: &RawConfig, key: &str, message: String) -> AppError {
    AppError::Config(ConfigErrors(vec![crate::config::Problem {
        origin: raw
            .get(key)
            .map(|(_, o)| o)
            .unwrap_or_else(|| raw.home_of(key)),
        key: key.into(),
        message,
    }]))
}
