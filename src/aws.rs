//! Shared AWS SDK setup for the S3 sink and the SQS input: TLS with ring, static
//! credentials when both keys are given (else the default chain), an optional endpoint.

/// An SDK configuration for `region`, with `access_key_id`/`secret_access_key` when both
/// are set and `endpoint` when not empty. `origin` names where the keys came from.
///
/// Every request has timeouts: an endpoint that accepts connections but stops
/// answering (a frozen server) fails the attempt after `stall` without a byte, and any
/// attempt after [`crate::retry::attempt_limit`], so a stall surfaces as an outage
/// instead of hanging events forever.
pub async fn sdk_config(
    region: &str,
    access_key_id: &str,
    secret_access_key: &str,
    endpoint: &str,
    origin: &'static str,
    stall: std::time::Duration,
) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(stall)
                .operation_attempt_timeout(crate::retry::attempt_limit(stall))
                .build(),
        )
        .region(aws_config::Region::new(region.to_string()));
    if !access_key_id.is_empty() && !secret_access_key.is_empty() {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            origin,
        ));
    }
    if !endpoint.is_empty() {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
