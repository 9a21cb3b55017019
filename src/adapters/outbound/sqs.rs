//! Amazon SQS outbound: sends each message to a queue; the delivery is done on SQS's reply
//! (the message is then stored by SQS). An error or a timeout is a failed attempt, retried by
//! the destination's policy.
//!
//! The message id travels as the message attribute `switchyard-message-id`, so a consuming
//! Switchyard route recognises a message sent again after a lost reply; on a FIFO queue it is
//! also the deduplication id (unless `deduplication_id` says otherwise), so SQS itself drops a
//! copy sent within its five-minute window.

use super::{DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::sqs::{error_text, Endpoint};
use crate::adapters::broker::{Link, ID_NAME};
use crate::message::Message;
use crate::route::values::Duration;
use crate::template::Template;
use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The queue's URL; a FIFO queue's ends in `.fifo`.
    pub queue_url: String,
    /// The region (default: `AWS_REGION`, the queue URL's, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The service endpoint, for LocalStack, ElasticMQ or moto (default: the queue URL's
    /// host when it is not on amazonaws.com, else AWS's).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The access key (default: `AWS_ACCESS_KEY_ID`); write `${ENV}`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key (default: `AWS_SECRET_ACCESS_KEY`); write `${ENV}`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// FIFO queues: the message group, a template (default `switchyard`): messages of one
    /// group are delivered in order.
    #[serde(default)]
    pub message_group_id: Option<Template>,
    /// FIFO queues: the deduplication id, a template (default: the message id).
    #[serde(default)]
    pub deduplication_id: Option<Template>,
    /// Message attributes, templates (strings).
    #[serde(default)]
    pub attributes: BTreeMap<String, Template>,
    /// Delay before the message becomes visible (default none; not for FIFO queues).
    #[serde(default)]
    pub delay: Option<Duration>,
    /// Longest wait for SQS's reply (default `10s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            queue_url: self.queue_url.clone(),
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
        }
    }

    pub fn build(&self) -> anyhow::Result<SqsOutbound> {
        let endpoint = self.endpoint();
        endpoint.check().map_err(anyhow::Error::msg)?;
        let fifo = endpoint.fifo();
        if !fifo && (self.message_group_id.is_some() || self.deduplication_id.is_some()) {
            anyhow::bail!(
                "`message_group_id` and `deduplication_id` are for FIFO queues (a URL ending in .fifo)"
            );
        }
        if fifo && self.delay.is_some() {
            anyhow::bail!("`delay` is not allowed on a FIFO queue");
        }
        Ok(SqsOutbound {
            client: endpoint.client().map_err(anyhow::Error::msg)?,
            link: Arc::new(Link::idle(endpoint.describe())),
            fifo,
            cfg: self.clone(),
        })
    }
}

pub struct SqsOutbound {
    cfg: Config,
    client: aws_sdk_sqs::Client,
    fifo: bool,
    link: Arc<Link>,
}

fn text(value: String) -> Result<MessageAttributeValue, SendError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| SendError::permanent(e.to_string()))
}

#[async_trait]
impl Outbound for SqsOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let cfg = &self.cfg;
        let body = std::str::from_utf8(&msg.body).map_err(|_| {
            SendError::permanent(
                "SQS takes text only: the body is not UTF-8 (convert or encode it first)",
            )
        })?;
        let mut send = self
            .client
            .send_message()
            .queue_url(&cfg.queue_url)
            .message_body(body)
            .message_attributes(ID_NAME, text(msg.id.to_string())?);
        if let Some(ct) = msg.header("content-type") {
            if !cfg.attributes.contains_key("content-type") {
                send = send.message_attributes("content-type", text(ct.to_string())?);
            }
        }
        for (name, value) in &cfg.attributes {
            send = send.message_attributes(name, text(value.render(msg))?);
        }
        if self.fifo {
            let group = cfg
                .message_group_id
                .as_ref()
                .map(|t| t.render(msg))
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| "switchyard".into());
            let dedup = cfg
                .deduplication_id
                .as_ref()
                .map(|t| t.render(msg))
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| msg.id.to_string());
            send = send.message_group_id(group).message_deduplication_id(dedup);
        }
        if let Some(d) = cfg.delay {
            send = send.delay_seconds(d.0.as_secs() as i32);
        }
        let reply = tokio::time::timeout(cfg.timeout.0, send.send()).await;
        match reply {
            Ok(Ok(out)) => {
                self.link.up();
                Ok(Sent(format!(
                    "sent to {} as {}{}",
                    cfg.queue_url,
                    out.message_id.unwrap_or_default(),
                    out.sequence_number
                        .map(|n| format!(" (sequence {n})"))
                        .unwrap_or_default()
                )))
            }
            Ok(Err(e)) => {
                use aws_sdk_sqs::error::SdkError;
                let why = format!("{} refused the message: {}", cfg.queue_url, error_text(&e));
                match &e {
                    // The service answered: a bad request stays bad (too large, invalid
                    // characters, no such queue is an operator's to fix, so it retries).
                    SdkError::ServiceError(s) if s.raw().status().as_u16() == 400 => {
                        let code = aws_sdk_sqs::error::ProvideErrorMetadata::code(&e);
                        if matches!(
                            code,
                            Some("InvalidMessageContents")
                                | Some("AWS.SimpleQueueService.InvalidMessageContents")
                                | Some("InvalidParameterValue")
                        ) {
                            Err(SendError::permanent(why))
                        } else {
                            Err(SendError::retryable(why))
                        }
                    }
                    _ => {
                        self.link.down(&why, std::time::Duration::ZERO);
                        Err(SendError::retryable(why))
                    }
                }
            }
            Err(_) => Err(SendError::retryable(format!(
                "no reply from {} within {:?}",
                cfg.queue_url, cfg.timeout.0
            ))),
        }
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
