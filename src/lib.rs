//! seaweed-replicate: a drop-in replacement for SeaweedFS's `weed filer.replicate`.
//!
//! Data flows one way: a queue input (`source`) yields raw events, `event` decodes
//! them, `replicate` turns each into a sink operation, `sink` applies it, and the
//! acknowledgement travels back to the input only after the sink has the change.

// Modules the binary or the integration tests use are `pub`; the rest are the crate's.
pub mod app;
pub mod aws;
pub mod backup;
pub mod cli;
pub mod config;
pub mod event;
pub(crate) mod fanout;
pub(crate) mod fence;
pub mod filer;
pub(crate) mod gaps;
pub(crate) mod gcp;
pub(crate) mod go;
pub mod http;
pub mod lane;
pub(crate) mod logfile;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod ops;
pub mod path;
pub mod pipeline;
pub mod replicate;
pub mod retry;
pub(crate) mod runner;
pub(crate) mod setup;
pub mod sink;
pub mod source;
pub(crate) mod text;

/// Generated protobuf types and the filer gRPC client (see `proto/filer.proto`).
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("filer_pb");
}

/// The version printed by `replicate version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
