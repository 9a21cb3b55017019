//! What the Amazon SQS inbound and outbound share: the client — region, endpoint and
//! credentials from the route file (through `${ENV}`) or the usual AWS variables — over the
//! engine's rustls with ring.

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use serde::Deserialize;

/// Where a queue is and how to sign requests to it: the keys both adapters share.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The queue's URL (`https://sqs.eu-west-1.amazonaws.com/123456789012/orders`); a FIFO
    /// queue's ends in `.fifo`.
    pub queue_url: String,
    /// The region (default: `AWS_REGION`, `AWS_DEFAULT_REGION`, the queue URL's
    /// `sqs.REGION.amazonaws.com`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The service endpoint (default: `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, the queue
    /// URL's own host when it is not on amazonaws.com — LocalStack, ElasticMQ, moto —,
    /// else AWS's).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The access key (default: `AWS_ACCESS_KEY_ID`); write `${ENV}`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key (default: `AWS_SECRET_ACCESS_KEY`); write `${ENV}`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Endpoint {
    /// True for a FIFO queue.
    pub fn fifo(&self) -> bool {
        self.queue_url.trim_end_matches('/').ends_with(".fifo")
    }

    /// The queue as operators see it: its URL (it holds no secret).
    pub fn describe(&self) -> String {
        self.queue_url.clone()
    }

    /// Checks the URL and finds the credentials, so a route without them is refused when it
    /// is loaded rather than on its first message.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.queue_url)
            .map_err(|e| format!("`{}` is not a queue URL: {e}", self.queue_url))?;
        if !matches!(url.scheme(), "http" | "https") || url.path().len() < 2 {
            return Err(format!(
                "`{}` is not a queue URL: write https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE",
                self.queue_url
            ));
        }
        self.credentials().map(drop)
    }

    fn credentials(&self) -> Result<Credentials, String> {
        let key = self
            .access_key_id
            .clone()
            .or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = self
            .secret_access_key
            .clone()
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        match (key, secret) {
            (Some(key), Some(secret)) => Ok(Credentials::new(
                key,
                secret,
                env("AWS_SESSION_TOKEN"),
                None,
                "switchyard",
            )),
            _ => Err("no AWS credentials: give access_key_id and secret_access_key (through ${ENV}), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
        }
    }

    fn region(&self) -> String {
        if let Some(r) = self
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
        {
            return r;
        }
        reqwest::Url::parse(&self.queue_url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_string();
                let rest = host.strip_prefix("sqs.")?;
                let (region, _) = rest.split_once('.')?;
                Some(region.to_string())
            })
            .unwrap_or_else(|| "us-east-1".into())
    }

    fn endpoint(&self) -> Option<String> {
        if let Some(e) = self
            .endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_SQS"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
        {
            return Some(e);
        }
        let url = reqwest::Url::parse(&self.queue_url).ok()?;
        let host = url.host_str()?;
        if host.ends_with(".amazonaws.com") {
            return None;
        }
        Some(format!(
            "{}://{host}{}",
            url.scheme(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ))
    }

    /// A client for this queue.
    pub fn client(&self) -> Result<aws_sdk_sqs::Client, String> {
        crate::tls::install_crypto();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region()))
            .credentials_provider(self.credentials()?)
            .http_client(http);
        if let Some(endpoint) = self.endpoint() {
            config = config.endpoint_url(endpoint);
        }
        Ok(aws_sdk_sqs::Client::from_conf(config.build()))
    }
}

/// An SDK error with the service's own code and message when there is one.
pub fn error_text<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint {
            queue_url: url.into(),
            region: None,
            endpoint_url: None,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
        }
    }

    #[test]
    fn region_and_endpoint_from_the_queue_url() {
        let aws = endpoint("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo");
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            assert_eq!(aws.region(), "eu-west-1");
        }
        assert!(aws.fifo());
        if env("AWS_ENDPOINT_URL").is_none() && env("AWS_ENDPOINT_URL_SQS").is_none() {
            assert_eq!(aws.endpoint(), None);
            let local = endpoint("http://127.0.0.1:4566/000000000000/orders");
            assert_eq!(local.endpoint().as_deref(), Some("http://127.0.0.1:4566"));
            assert!(!local.fifo());
        }
        assert!(endpoint("orders").check().is_err());
    }
}
