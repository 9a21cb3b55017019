//! HTTP outbound: sends each message as an HTTP request (reqwest with rustls).
//!
//! Success is a 2xx answer unless `success` says otherwise. Connection errors, timeouts and
//! the statuses in `retry_on` (5xx, 408 and 429 by default) are retried by the destination's
//! policy; any other status fails the delivery at once. The status and the first bytes of the
//! answer are recorded with each attempt.

use super::{DeliveryConfig, Outbound, SendError, Sent};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How much of an answer's body is kept with the attempt.
const RECORDED_BODY: usize = 512;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpOutbound")]
pub struct Config {
    /// The URL, a template: `https://erp.example.com/orders/{{header.order-id}}`.
    pub url: Template,
    /// The method (default `POST`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers, templates (use `${ENV}` for secrets). `content-type` defaults to the
    /// message's own.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Longest a whole request may take (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Longest connecting may take (default `10s`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Statuses that count as delivered: codes (`201`) or classes (`2xx`). Default `[2xx]`.
    #[serde(default = "default_success")]
    pub success: Vec<StatusPattern>,
    /// Statuses worth retrying. Default `[5xx, 408, 429]`; other failures are permanent.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<StatusPattern>,
    /// TLS settings for `https` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra CA certificate (PEM) to trust, for servers with a private CA.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Accept any certificate. Only for tests: it removes the protection TLS gives.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A status code (`404`) or class (`4xx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPattern(String);

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        let s = status.to_string();
        self.0.len() == 3
            && self
                .0
                .chars()
                .zip(s.chars())
                .all(|(p, c)| p == 'x' || p == c)
    }
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Code(c) => c.to_string(),
            Raw::Text(t) => t.trim().to_ascii_lowercase(),
        };
        let ok = text.len() == 3
            && text
                .chars()
                .next()
                .is_some_and(|c| ('1'..='5').contains(&c))
            && text.chars().all(|c| c.is_ascii_digit() || c == 'x');
        if ok {
            Ok(StatusPattern(text))
        } else {
            Err(serde::de::Error::custom(format!(
                "bad status `{text}`: write a code such as 404 or a class such as 5xx"
            )))
        }
    }
}

impl schemars::JsonSchema for StatusPattern {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusPattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["integer", "string"],
            "description": "An HTTP status, or a pattern with `x` for any digit.",
            "examples": [409, "4xx"]
        })
    }
}

fn default_method() -> String {
    "POST".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_success() -> Vec<StatusPattern> {
    vec![StatusPattern("2xx".into())]
}
fn default_retry_on() -> Vec<StatusPattern> {
    ["5xx", "408", "429"]
        .iter()
        .map(|s| StatusPattern(s.to_string()))
        .collect()
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<HttpOutbound> {
        let method = reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("`{}` is not an HTTP method", self.method))?;
        crate::tls::install_crypto();
        let mut client = reqwest::Client::builder()
            .timeout(self.timeout.0)
            .connect_timeout(self.connect_timeout.0)
            .danger_accept_invalid_certs(self.tls.insecure_skip_verify);
        if let Some(ca) = &self.tls.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read tls.ca {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!("tls.ca {} is not a PEM certificate: {e}", ca.display())
            })?;
            client = client.add_root_certificate(cert);
        }
        // A URL without placeholders is parsed (and checked) once, not for every message.
        let fixed_url = match self.url.fixed() {
            Some(text) => Some(
                reqwest::Url::parse(text)
                    .map_err(|e| anyhow::anyhow!("`{text}` is not a URL: {e}"))?,
            ),
            None => None,
        };
        Ok(HttpOutbound {
            client: client.build()?,
            method,
            fixed_url,
            cfg: self.clone(),
        })
    }
}

pub struct HttpOutbound {
    client: reqwest::Client,
    method: reqwest::Method,
    fixed_url: Option<reqwest::Url>,
    cfg: Config,
}

/// The first bytes of an answer, as text, for the record.
fn excerpt(body: &[u8]) -> String {
    let cut = body.len().min(RECORDED_BODY);
    let mut text = String::from_utf8_lossy(&body[..cut]).into_owned();
    if body.len() > cut {
        text.push_str(&format!("… ({} more bytes)", body.len() - cut));
    }
    text
}

#[async_trait]
impl Outbound for HttpOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        // Parsed once: reqwest takes the parsed URL as it is, and errors name its host.
        let parsed = match &self.fixed_url {
            Some(url) => Ok(url.clone()),
            None => reqwest::Url::parse(&self.cfg.url.render(msg)),
        };
        let url = match parsed {
            Ok(url) => url,
            Err(e) => {
                return Err(SendError::permanent(format!(
                    "bad request for the configured URL: {e}"
                )));
            }
        };
        // The URL may carry credentials or tokens: errors name the host only.
        let host = url.host_str().unwrap_or("the configured URL").to_string();
        let mut req = self
            .client
            .request(self.method.clone(), url)
            .body(msg.body.clone());
        let mut has_type = false;
        for (name, value) in &self.cfg.headers {
            has_type |= name.eq_ignore_ascii_case("content-type");
            req = req.header(name.as_str(), value.render(msg));
        }
        if !has_type {
            if let Some(ct) = msg.header("content-type") {
                req = req.header("content-type", ct);
            }
        }
        req = req.header("x-message-id", msg.id.to_string());
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    format!(
                        "no answer from {host} within {:?} (timeout)",
                        self.cfg.timeout.0
                    )
                } else if e.is_connect() {
                    format!("cannot connect to {host}: {}", root_cause(&e))
                } else if e.is_builder() {
                    return Err(SendError::permanent(format!(
                        "bad request for {host}: {}",
                        root_cause(&e)
                    )));
                } else {
                    format!("request to {host} failed: {}", root_cause(&e))
                };
                return Err(SendError::retryable(what));
            }
        };
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        let summary = format!("HTTP {status} from {host}: {}", excerpt(&body));
        if self.cfg.success.iter().any(|p| p.matches(status)) {
            Ok(Sent(summary))
        } else if self.cfg.retry_on.iter().any(|p| p.matches(status)) {
            Err(SendError::retryable(summary))
        } else {
            Err(SendError::permanent(summary))
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_url_is_checked_when_built() {
        let build = |yaml: &str| {
            let cfg: Config = crate::config::yaml::parse_str(yaml).unwrap();
            cfg.build(&BuildContext::new(PathBuf::from(".")))
                .map(|_| ())
        };
        let e = build("url: erp.example.com/orders")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`erp.example.com/orders` is not a URL: relative URL without a base"),
            "{e}"
        );
        assert!(build("url: http://erp.example.com/orders").is_ok());
        // With a placeholder it can only be checked per message.
        assert!(build("url: \"{{header.target}}\"").is_ok());
    }

    #[test]
    fn status_patterns() {
        let p: Vec<StatusPattern> = crate::config::yaml::parse_str("[2xx, 404, '5x3']").unwrap();
        assert!(p[0].matches(201) && !p[0].matches(301));
        assert!(p[1].matches(404) && !p[1].matches(405));
        assert!(p[2].matches(503) && !p[2].matches(502));
        assert!(crate::config::yaml::parse_str::<Vec<StatusPattern>>("[600]").is_err());
        assert!(crate::config::yaml::parse_str::<Vec<StatusPattern>>("[2x]").is_err());
    }
}
