//! NATS JetStream outbound: publishes each message to a subject a stream captures, and counts
//! the delivery done only on the stream's acknowledgement (PubAck) — the message is then
//! stored by JetStream. No PubAck within `ack_timeout`, no stream for the subject, or a lost
//! connection is a failed attempt, retried by the destination's policy.
//!
//! The message id travels as `Nats-Msg-Id`: a message published again after a crash or a
//! lost PubAck is dropped by the stream itself within its `duplicate_window` (the PubAck
//! says `duplicate`), and recognised by a consuming Switchyard route after it.
//!
//! One client per destination, shared by its deliveries in flight; the client reconnects by
//! itself once connected. A first connection that fails is tried again on a later delivery,
//! at most as often as the reconnect backoff allows.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::nats::{self as nats, StreamDecl};
use crate::adapters::broker::{redact, Link, Pace, Tls};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NatsOutbound")]
pub struct Config {
    /// The server: `nats://host:4222`, `nats://user:${NATS_PASSWORD}@host:4222`, or
    /// `tls://host:4222`.
    pub url: nats::Url,
    /// The subject, a template: `orders.{{header.country}}`. A stream must capture it.
    pub subject: Template,
    /// The stream that must store the message (sent as `Nats-Expected-Stream`: a subject
    /// captured by another stream is then a failed attempt). Default: any stream.
    #[serde(default)]
    pub stream: Option<String>,
    /// Create `stream` with these settings when it does not exist.
    #[serde(default)]
    pub create_stream: Option<StreamDecl>,
    /// NATS headers, templates.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Longest wait for the stream's PubAck (default `10s`).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// TLS settings for `tls://` (or a server that requires TLS).
    #[serde(default)]
    pub tls: Tls,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<NatsOutbound> {
        nats::check(&self.tls).map_err(anyhow::Error::msg)?;
        if self.create_stream.is_some() && self.stream.is_none() {
            anyhow::bail!("`create_stream` needs `stream:`, the name of the stream to create");
        }
        Ok(NatsOutbound {
            link: Arc::new(Link::idle(format!(
                "{} subject {}",
                redact(&self.url),
                self.subject.source()
            ))),
            cfg: self.clone(),
            js: Mutex::new(None),
            pace: Pace::default(),
        })
    }
}

pub struct NatsOutbound {
    cfg: Config,
    js: Mutex<Option<jetstream::Context>>,
    pace: Pace,
    link: Arc<Link>,
}

impl NatsOutbound {
    /// The JetStream context of the connected client, or a new one.
    async fn context(&self) -> Result<jetstream::Context, SendError> {
        let mut slot = self.js.lock().await;
        if let Some(js) = slot.as_ref() {
            return Ok(js.clone());
        }
        let js = self
            .pace
            .connect(&self.link, self.open())
            .await
            .map_err(SendError::retryable)?;
        *slot = Some(js.clone());
        Ok(js)
    }

    async fn open(&self) -> Result<jetstream::Context, String> {
        let client = nats::connect(
            &self.cfg.url,
            &self.cfg.tls,
            "switchyard publisher",
            self.link.clone(),
        )
        .await?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.cfg.ack_timeout.0);
        if let (Some(name), Some(decl)) = (&self.cfg.stream, &self.cfg.create_stream) {
            nats::stream(&js, name, Some(decl)).await?;
        }
        Ok(js)
    }
}

#[async_trait]
impl Outbound for NatsOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let subject = self.cfg.subject.render(msg);
        if subject.is_empty()
            || subject.contains(['*', '>'])
            || subject.contains(char::is_whitespace)
            || subject.split('.').any(str::is_empty)
        {
            return Err(SendError::permanent(format!(
                "`{subject}` is not a subject to publish to: no spaces, wildcards or empty tokens"
            )));
        }
        let js = self.context().await?;
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &self.cfg.headers {
            headers.insert(name.as_str(), value.render(msg).as_str());
        }
        let has_type = |n: &str| n.eq_ignore_ascii_case("content-type");
        if let Some(ct) = msg.header("content-type") {
            if !self.cfg.headers.keys().any(|n| has_type(n)) {
                headers.insert("Content-Type", ct);
            }
        }
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(msg.body.clone())
            .headers(headers)
            .message_id(msg.id.to_string());
        if let Some(stream) = &self.cfg.stream {
            publish = publish.expected_stream(stream);
        }
        let waited = tokio::time::timeout(self.cfg.ack_timeout.0, async {
            js.send_publish(subject.clone(), publish).await?.await
        })
        .await;
        let ack = match waited {
            Ok(Ok(ack)) => ack,
            Err(_) => {
                return Err(SendError::retryable(format!(
                    "no PubAck from {} within {:?} for subject `{subject}`",
                    self.link.broker, self.cfg.ack_timeout.0
                )))
            }
            Ok(Err(e)) => {
                let why = match e.kind() {
                    PublishErrorKind::StreamNotFound => format!(
                        "no stream takes subject `{subject}` (JetStream: no responders); create one, or add `create_stream:`"
                    ),
                    PublishErrorKind::TimedOut => format!(
                        "no PubAck from {} within {:?} for subject `{subject}`",
                        self.link.broker, self.cfg.ack_timeout.0
                    ),
                    _ => format!("publishing to `{subject}` failed: {e}"),
                };
                return Err(SendError::retryable(why));
            }
        };
        let copy = if ack.duplicate {
            " (a copy: the stream already held this message id and dropped it)"
        } else {
            ""
        };
        Ok(Sent(format!(
            "PubAck: stream {} sequence {}{copy} (subject `{subject}`)",
            ack.stream, ack.sequence
        )))
    }

    /// The client pipelines: a batch is published at once and its PubAcks awaited together.
    fn batching(&self) -> Batching {
        Batching::Pipelined
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
