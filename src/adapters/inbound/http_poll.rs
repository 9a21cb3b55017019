//! HTTP polling inbound: requests a URL on a schedule (at start, then every so often or at
//! cron times) and makes a message of each new answer — or, with `split`, one per item of a
//! JSON array answer.
//!
//! An unchanged answer makes no message: the answer's `ETag` and `Last-Modified` are kept as
//! the route's inbound position in the store, committed with the answer's (last) message, and
//! sent back as `If-None-Match` / `If-Modified-Since`; a `304 Not Modified` ends the poll. A
//! server without either validator is compared by the answer's hash, kept the same way. Each
//! message's key is the answer's validator and its item number, so an answer stored in part
//! before a crash is stored again without doubling what was stored.

use super::schedule::Timing;
use super::{Inbound, Intake};
use crate::adapters::broker::{Backoff, Link};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The poller's position among the route's inbound positions in the store.
const POSITION: &str = "http_poll";
/// The search field holding an answer's validator and item number.
pub const KEY_NAME: &str = "http_poll_item";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpPollInbound")]
pub struct Config {
    /// The URL to request (`https://partner.example.com/api/orders`).
    pub url: String,
    /// `get` (default) or `post`.
    #[serde(default)]
    pub method: Method,
    /// Request headers (`authorization: "Bearer ${PARTNER_TOKEN}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, for `post`.
    #[serde(default)]
    pub body: Option<String>,
    /// How often to poll (default `1m`); the first poll is at start. Or `cron`.
    #[serde(default)]
    pub every: Option<Duration>,
    /// Poll at cron times instead (`*/15 * * * *`), in `time_zone`.
    #[serde(default)]
    pub cron: Option<String>,
    /// The time zone of `cron` (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// A JSON array answer becomes one message per item.
    #[serde(default)]
    pub split: bool,
    /// Longest wait for the answer (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Largest answer taken (default `16MiB`); a larger one is recorded as failed.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "HttpPollMethod")]
pub enum Method {
    #[default]
    Get,
    Post,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_size() -> ByteSize {
    ByteSize(16 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<HttpPollInbound> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| anyhow::anyhow!("url `{}`: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!("url `{}` is not http:// or https://", self.url);
        }
        let every = match (&self.cron, self.every) {
            (None, None) => Some(Duration::from_secs(60)),
            (_, every) => every,
        };
        let timing = Timing::new(self.cron.as_deref(), every, self.time_zone.as_deref())?;
        crate::tls::install_crypto();
        let client = reqwest::Client::builder()
            .timeout(self.timeout.0)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot make an HTTP client: {e}"))?;
        Ok(HttpPollInbound {
            link: Arc::new(Link::new(crate::adapters::broker::redact(&self.url))),
            config: self.clone(),
            timing,
            client,
        })
    }
}

pub struct HttpPollInbound {
    config: Config,
    timing: Timing,
    client: reqwest::Client,
    link: Arc<Link>,
}

/// What the last stored answer was, to ask for a newer one.
#[derive(Debug, Default, serde::Serialize, Deserialize, schemars::JsonSchema)]
struct Seen {
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
    #[serde(default)]
    hash: Option<String>,
}

/// FNV-1a: a stable hash of an answer without validators (stable across builds, unlike
/// std's hasher), enough to tell an unchanged answer.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[async_trait]
impl Inbound for HttpPollInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.link.owned_by(&intake.route, "from");
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.poll(&intake).await {
                Ok(()) => {
                    backoff.reset();
                    let now = chrono::Utc::now();
                    let next = self.timing.next_after(now).unwrap_or(now);
                    (next - now).to_std().unwrap_or_default()
                }
                Err(e) => {
                    let wait = backoff.wait();
                    self.link.down(&format!("{e:#}"), wait);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

impl HttpPollInbound {
    async fn poll(&self, intake: &Intake) -> anyhow::Result<()> {
        let seen: Seen = match intake.position(POSITION).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Seen::default(),
        };
        let c = &self.config;
        let mut request = match c.method {
            Method::Get => self.client.get(&c.url),
            Method::Post => self
                .client
                .post(&c.url)
                .body(c.body.clone().unwrap_or_default()),
        };
        for (name, value) in &c.headers {
            request = request.header(name, value);
        }
        if let Some(etag) = &seen.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(since) = &seen.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, since);
        }
        self.link.connecting();
        let answer = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {}: {}", self.link.broker, describe(&e)))?;
        let status = answer.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            self.link.up();
            return Ok(());
        }
        if !status.is_success() {
            anyhow::bail!("{} answered {status}", self.link.broker);
        }
        self.link.up();
        let header = |name: reqwest::header::HeaderName| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let last_modified = header(reqwest::header::LAST_MODIFIED);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        if answer.content_length().is_some_and(|n| n > c.max_size.0) {
            let reason = format!(
                "the answer is larger than max_size ({} bytes)",
                c.max_size.0
            );
            intake.refuse(Headers::new(), &reason).await?;
            return Ok(());
        }
        let body = answer
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer: {}", describe(&e)))?;
        if body.len() as u64 > c.max_size.0 {
            let reason = format!(
                "the answer is larger than max_size ({} bytes)",
                c.max_size.0
            );
            intake.refuse(Headers::new(), &reason).await?;
            return Ok(());
        }
        let hash = (etag.is_none() && last_modified.is_none()).then(|| fnv1a(&body));
        if hash.is_some() && hash == seen.hash {
            return Ok(()); // the same answer as last time
        }
        let validator = etag
            .clone()
            .or_else(|| last_modified.clone())
            .or_else(|| hash.clone())
            .unwrap_or_default();
        let now = Seen {
            etag,
            last_modified,
            hash,
        };
        let position = (POSITION.to_string(), serde_json::to_string(&now)?);
        let mut headers = Headers::new();
        headers.insert("http.status".into(), status.as_u16().to_string());
        headers.insert("http.url".into(), self.link.broker.clone());
        if let Some(ct) = &content_type {
            headers.insert("content-type".into(), ct.clone());
        }
        let items: Vec<Bytes> = if c.split {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(items)) => items
                    .iter()
                    .map(|i| serde_json::to_vec(i).map(Bytes::from))
                    .collect::<Result<_, _>>()?,
                _ => {
                    intake
                        .refuse(headers, "split: the answer is not a JSON array")
                        .await?;
                    return Ok(());
                }
            }
        } else {
            vec![body]
        };
        let count = items.len();
        if count == 0 {
            return Ok(());
        }
        for (i, item) in items.into_iter().enumerate() {
            let mut h = headers.clone();
            if c.split {
                h.insert("content-type".into(), "application/json".into());
                h.insert("http_poll.item".into(), i.to_string());
            }
            let key = (KEY_NAME.to_string(), format!("{validator}#{i}"));
            // The position goes with the last item: before it, the answer is not done.
            let at = (i + 1 == count).then(|| position.clone());
            intake.submit_at(h, item, Some(key), at).await?;
        }
        Ok(())
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
