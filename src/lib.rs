//! seaweed-replicate: a drop-in replacement for SeaweedFS's `weed filer.replicate`.
//!
//! Data flows one way: a queue input (`source`) yields raw events, `event` decodes
//! them, `replicate` turns each into a sink operation, `sink` applies it, and the
//! acknowledgement travels back to the input only after the sink has the change.

pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub mod event;
pub mod fence;
pub mod filer;
pub mod gaps;
pub mod gcp;
pub mod go;
pub mod http;
pub mod lane;
pub mod logfile;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pipeline;
pub mod replicate;
pub mod retry;
pub mod setup;
pub mod sink;
pub mod source;

/// Generated protobuf types and the filer gRPC client (see `proto/filer.proto`).
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("filer_pb");
}

/// The version printed by `replicate version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
