//! Amazon SQS outbound: sends messages to a queue, up to ten per `SendMessageBatch` call; a
//! delivery is done on SQS's reply for its entry (the message is then stored by SQS). An
//! error or a timeout is a failed attempt, retried by the destination's policy.
//!
//! The message id travels as the message attribute `switchyard-message-id`, so a consuming
//! Switchyard route recognises a message sent again after a lost reply; on a FIFO queue it is
//! also the deduplication id (unless `deduplication_id` says otherwise), so SQS itself drops a
//! copy sent within its five-minute window.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::sqs::{error_text, Endpoint};
use crate::adapters::broker::{Link, ID_NAME};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SqsOutbound")]
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

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<SqsOutbound> {
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

/// Entries SQS takes in one `SendMessageBatch` call.
const BATCH_ENTRIES: usize = 10;
/// Bytes one call may carry in all (SQS's limit is 256 KiB; room is left for the request).
const BATCH_BYTES: usize = 240 * 1024;

impl SqsOutbound {
    /// `msg` as an entry of a batch named `id`, or why it can never be sent.
    fn entry(&self, msg: &Message, id: usize) -> Result<SendMessageBatchRequestEntry, SendError> {
        let cfg = &self.cfg;
        let body = std::str::from_utf8(&msg.body).map_err(|_| {
            SendError::permanent(
                "SQS takes text only: the body is not UTF-8 (convert or encode it first)",
            )
        })?;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(body)
            .message_attributes(ID_NAME, text(msg.id.to_string())?);
        if let Some(ct) = msg.header("content-type") {
            if !cfg.attributes.contains_key("content-type") {
                entry = entry.message_attributes("content-type", text(ct.to_string())?);
            }
        }
        for (name, value) in &cfg.attributes {
            entry = entry.message_attributes(name, text(value.render(msg))?);
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
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        if let Some(d) = cfg.delay {
            entry = entry.delay_seconds(d.0.as_secs() as i32);
        }
        entry
            .build()
            .map_err(|e| SendError::permanent(e.to_string()))
    }

    /// Sends up to ten entries in one call; one result per entry, in order.
    async fn send_call(
        &self,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Vec<Result<Sent, SendError>> {
        let cfg = &self.cfg;
        let n = entries.len();
        let ids: Vec<String> = entries.iter().map(|e| e.id().to_string()).collect();
        let call = self
            .client
            .send_message_batch()
            .queue_url(&cfg.queue_url)
            .set_entries(Some(entries))
            .send();
        let out = match tokio::time::timeout(cfg.timeout.0, call).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                use aws_sdk_sqs::error::SdkError;
                let why = format!("{} refused the messages: {}", cfg.queue_url, error_text(&e));
                let error = match &e {
                    // The service answered: a bad request stays bad (no such queue is an
                    // operator's to fix, so it retries).
                    SdkError::ServiceError(s) if s.raw().status().as_u16() == 400 => {
                        let code = aws_sdk_sqs::error::ProvideErrorMetadata::code(&e);
                        if permanent(code) {
                            SendError::permanent(why)
                        } else {
                            SendError::retryable(why)
                        }
                    }
                    _ => {
                        self.link.down(&why, std::time::Duration::ZERO);
                        SendError::retryable(why)
                    }
                };
                return (0..n).map(|_| Err(error.clone())).collect();
            }
            Err(_) => {
                let why = format!("no reply from {} within {:?}", cfg.queue_url, cfg.timeout.0);
                return (0..n)
                    .map(|_| Err(SendError::retryable(why.clone())))
                    .collect();
            }
        };
        self.link.up();
        ids.iter()
            .map(|id| {
                if let Some(ok) = out.successful.iter().find(|o| o.id() == id) {
                    return Ok(Sent(format!(
                        "sent to {} as {}{}",
                        cfg.queue_url,
                        ok.message_id(),
                        ok.sequence_number()
                            .map(|n| format!(" (sequence {n})"))
                            .unwrap_or_default()
                    )));
                }
                let failed = out.failed.iter().find(|f| f.id() == id);
                let why = format!(
                    "{} refused the message: {}",
                    cfg.queue_url,
                    failed
                        .map(|f| format!("{} ({})", f.message().unwrap_or(""), f.code()))
                        .unwrap_or_else(|| "no answer for it in the batch's reply".into())
                );
                match failed {
                    Some(f) if f.sender_fault() && permanent(Some(f.code())) => {
                        Err(SendError::permanent(why))
                    }
                    _ => Err(SendError::retryable(why)),
                }
            })
            .collect()
    }
}

impl SqsOutbound {
    /// Sends the entries gathered in `call` (if any) and files their results.
    async fn flush(
        &self,
        call: &mut Vec<(usize, SendMessageBatchRequestEntry)>,
        results: &mut [Option<Result<Sent, SendError>>],
    ) {
        if call.is_empty() {
            return;
        }
        let (slots, entries): (Vec<usize>, Vec<SendMessageBatchRequestEntry>) =
            std::mem::take(call).into_iter().unzip();
        for (slot, result) in slots.into_iter().zip(self.send_call(entries).await) {
            results[slot] = Some(result);
        }
    }
}

/// Whether SQS's error `code` says the message itself is unacceptable (sending it again
/// cannot help).
fn permanent(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("InvalidMessageContents")
            | Some("AWS.SimpleQueueService.InvalidMessageContents")
            | Some("InvalidParameterValue")
    )
}

#[async_trait]
impl Outbound for SqsOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        self.send_batch(std::slice::from_ref(msg))
            .await
            .pop()
            .unwrap_or_else(|| Err(SendError::retryable("the SQS sender returned no result")))
    }

    /// Due deliveries go out ten to a `SendMessageBatch` call (within 240 KiB), each
    /// entry's outcome its own delivery's.
    fn batching(&self) -> Batching {
        Batching::Whole
    }

    async fn send_batch(&self, msgs: &[Message]) -> Vec<Result<Sent, SendError>> {
        let mut results: Vec<Option<Result<Sent, SendError>>> = vec![None; msgs.len()];
        let mut call: Vec<(usize, SendMessageBatchRequestEntry)> = Vec::new();
        let mut bytes = 0;
        for (i, msg) in msgs.iter().enumerate() {
            let size = msg.body.len() + 256;
            if !call.is_empty() && (call.len() == BATCH_ENTRIES || bytes + size > BATCH_BYTES) {
                self.flush(&mut call, &mut results).await;
                bytes = 0;
            }
            match self.entry(msg, i) {
                Ok(entry) => {
                    call.push((i, entry));
                    bytes += size;
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        self.flush(&mut call, &mut results).await;
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SendError::retryable("not sent"))))
            .collect()
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
