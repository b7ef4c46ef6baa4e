//! The AWS SDK configuration both DynamoDB users (the session store and the fleet's state
//! store) build their clients on: the normal credential chain and region, an endpoint override
//! for DynamoDB-compatible servers, and the rustls/ring HTTP client.

/// An SDK config for DynamoDB at `endpoint` (None: AWS's own) in `region`.
pub async fn sdk_config(region: Option<&str>, endpoint: Option<&str>) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// A DynamoDB client for `endpoint` and `region`.
pub async fn dynamodb(region: Option<&str>, endpoint: Option<&str>) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(region, endpoint).await)
}
