//! The gRPC channel to a filer, its signature, and what its statuses mean.

use super::*;

/// A gRPC channel to a filer that connects lazily and reconnects on its own; over
/// mutual TLS when `tls` is given.
pub(crate) fn connect_lazy(
    address: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SeaweedFilerClient<Channel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20))
        // hyper's defaults (2 MiB a stream, 5 MiB a connection) let the filer push
        // megabytes of the metadata log ahead of what the pipeline takes: 6 MiB of
        // buffered frames, measured. A quarter MiB still holds hundreds of events.
        .initial_stream_window_size(Some(256 * 1024))
        .initial_connection_window_size(Some(1024 * 1024));
    let channel = match tls {
        None => endpoint.connect_lazy(),
        Some(config) => endpoint.connect_with_connector_lazy(tls::connector(config.clone())),
    };
    Ok(SeaweedFilerClient::new(channel)
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(1 << 30))
}

/// A filer's signature (`GetFilerConfiguration`), retried with backoff until it
/// answers; `None` if `stop` fires first.
pub(crate) async fn signature(
    mut client: SeaweedFilerClient<Channel>,
    address: &str,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<i32> {
    let mut retry = crate::retry::Retry::default();
    loop {
        match client
            .get_filer_configuration(crate::pb::GetFilerConfigurationRequest {})
            .await
        {
            Ok(r) => {
                retry.succeeded();
                return Some(r.into_inner().signature);
            }
            Err(e) => {
                let what = format!("filer {address} unavailable; waiting for it");
                if !retry.wait(&what, &e, stop).await {
                    return None;
                }
            }
        }
    }
}

/// A gRPC status that means the server could not be reached or did not answer.
pub(crate) fn status_is_outage(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// A gRPC status that means "no such entry" (older filers say so only in the text).
pub(crate) fn is_not_found(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound || is_not_found_text(status.message())
}

/// An error text that means "no such entry".
pub(crate) fn is_not_found_text(text: &str) -> bool {
    text.contains("no entry is found") || text.contains("not found")
}
