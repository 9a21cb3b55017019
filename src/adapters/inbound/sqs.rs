//! Amazon SQS inbound: long-polls a queue and deletes each message only after it is committed
//! to the store — the broker contract in [`crate::adapters::broker`].
//!
//! While a message is being stored its visibility timeout is extended, so SQS does not hand
//! it to another reader. A message received again (after a crash, a lost delete, or a
//! visibility timeout that ran out) is recognised by its `switchyard-message-id` attribute,
//! or else by its SQS message id, and recorded as `duplicate`. A message the intake refuses
//! (over `max_size`, not the declared `content`), or received more than `max_receives` times,
//! is recorded as failed and deleted; one the store cannot take is made visible again at
//! once. A queue's own redrive policy (a dead-letter queue after `maxReceiveCount`) works as
//! ever for messages that never reach the store.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::sqs::{error_text, Endpoint};
use crate::adapters::broker::{Backoff, Link};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SqsInbound")]
pub struct Config {
    /// The queue's URL (`https://sqs.eu-west-1.amazonaws.com/123456789012/orders`).
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
    /// Messages in hand at once (default 10): received ten at a time at most, as SQS
    /// allows.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Longest a receive waits for messages (long polling, default `20s`, at most 20s).
    #[serde(default = "default_wait_time")]
    pub wait_time: Duration,
    /// How long a received message stays invisible to other readers (default `30s`);
    /// extended while it is being stored.
    #[serde(default = "default_visibility_timeout")]
    pub visibility_timeout: Duration,
    /// Receives of one message before it is recorded as failed and deleted (default 10).
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// Largest message accepted (default `256KiB`, SQS's own limit).
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed.
    #[serde(default)]
    pub content: Content,
}

fn default_prefetch() -> usize {
    10
}
fn default_wait_time() -> Duration {
    Duration::from_secs(20)
}
fn default_visibility_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_receives() -> u32 {
    10
}
fn default_max_size() -> ByteSize {
    ByteSize(256 << 10)
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

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<SqsInbound> {
        let endpoint = self.endpoint();
        endpoint.check().map_err(anyhow::Error::msg)?;
        if self.prefetch == 0 || self.max_receives == 0 {
            anyhow::bail!("`prefetch` and `max_receives` must be at least 1");
        }
        if self.wait_time.0 > std::time::Duration::from_secs(20) {
            anyhow::bail!("`wait_time` can be at most 20s (SQS's longest long poll)");
        }
        if self.visibility_timeout.0 < std::time::Duration::from_secs(3) {
            anyhow::bail!("`visibility_timeout` must be at least 3s");
        }
        Ok(SqsInbound {
            link: Arc::new(Link::new(endpoint.describe())),
            cfg: Arc::new(self.clone()),
        })
    }
}

pub struct SqsInbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

#[async_trait]
impl Inbound for SqsInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let client = self.cfg.endpoint().client().map_err(anyhow::Error::msg)?;
        let mut consuming = false;
        let mut in_hand = JoinSet::new();
        loop {
            while in_hand.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            if in_hand.len() >= self.cfg.prefetch {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = in_hand.join_next() => continue,
                }
            }
            if !consuming {
                // One cheap call says whether the queue is there and the credentials work,
                // before a long poll that would only answer after `wait_time`.
                let reached = client
                    .get_queue_attributes()
                    .queue_url(&self.cfg.queue_url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send();
                let reached = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = reached => r,
                };
                match reached {
                    Ok(_) => {
                        consuming = true;
                        self.link.up();
                        backoff.reset();
                        tracing::info!(route = %intake.route, queue = %self.cfg.queue_url,
                            prefetch = self.cfg.prefetch, "consuming");
                    }
                    Err(e) => {
                        let wait = backoff.wait();
                        self.link.down(
                            &format!("cannot reach {}: {}", self.cfg.queue_url, error_text(&e)),
                            wait,
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
            }
            let room = (self.cfg.prefetch - in_hand.len()).min(10) as i32;
            let receive = client
                .receive_message()
                .queue_url(&self.cfg.queue_url)
                .max_number_of_messages(room)
                .wait_time_seconds(self.cfg.wait_time.0.as_secs() as i32)
                .visibility_timeout(self.cfg.visibility_timeout.0.as_secs() as i32)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send();
            // A receive cut short by a stop leaves what it took invisible until the
            // visibility timeout; SQS hands it out again then.
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = receive => r,
            };
            match received {
                Ok(out) => {
                    for m in out.messages.unwrap_or_default() {
                        let (cfg, intake, client) =
                            (self.cfg.clone(), intake.clone(), client.clone());
                        in_hand.spawn(async move { take(&cfg, &intake, &client, m).await });
                    }
                }
                Err(e) => {
                    consuming = false;
                    let wait = backoff.wait();
                    self.link.down(
                        &format!(
                            "receiving from {} failed: {}",
                            self.cfg.queue_url,
                            error_text(&e)
                        ),
                        wait,
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        while in_hand.join_next().await.is_some() {}
        Ok(())
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(()) // deleted after the commit; the failure is in the store
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

/// Stores one message (or records it as refused), then deletes it from the queue.
async fn take(
    cfg: &Config,
    intake: &Intake,
    client: &aws_sdk_sqs::Client,
    m: aws_sdk_sqs::types::Message,
) {
    let Some(receipt) = m.receipt_handle.clone() else {
        return;
    };
    let headers = headers(&m);
    let body = Bytes::from(m.body.clone().unwrap_or_default());
    let received = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    let refusal = if received > cfg.max_receives {
        Some(format!(
            "received {received} times without being stored (max_receives {}); deleted",
            cfg.max_receives
        ))
    } else {
        super::refusal(&body, cfg.max_size, cfg.content).map(|r| format!("{r}; deleted"))
    };
    let stored = match refusal {
        Some(reason) => intake.refuse(headers, &reason).await.map(drop),
        None => {
            let key = m
                .message_attributes
                .as_ref()
                .and_then(|a| a.get(crate::adapters::broker::ID_NAME))
                .and_then(|v| v.string_value.clone())
                .or_else(|| m.message_id.clone())
                .map(|id| ("broker_message_id".to_string(), id));
            let submit = intake.submit_once(headers, body, key);
            tokio::pin!(submit);
            // Keep the message hidden from other readers while it is stored.
            let every = cfg.visibility_timeout.0 / 3;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    stored = &mut submit => break stored.map(drop),
                    _ = tick.tick() => {
                        let _ = client
                            .change_message_visibility()
                            .queue_url(&cfg.queue_url)
                            .receipt_handle(&receipt)
                            .visibility_timeout(cfg.visibility_timeout.0.as_secs() as i32)
                            .send()
                            .await;
                    }
                }
            }
        }
    };
    match stored {
        Ok(()) => {
            let deleted = client
                .delete_message()
                .queue_url(&cfg.queue_url)
                .receipt_handle(&receipt)
                .send()
                .await;
            if let Err(e) = deleted {
                tracing::warn!(route = %intake.route, error = %error_text(&e),
                    "message committed but not deleted from the queue; it will come back and be recorded as duplicate");
            }
        }
        Err(e) => {
            tracing::warn!(route = %intake.route, error = %e,
                "message not stored; made visible again for redelivery");
            let _ = client
                .change_message_visibility()
                .queue_url(&cfg.queue_url)
                .receipt_handle(&receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
}

/// The message's attributes as headers: `sqs.*`, its message attributes as
/// `sqs.attribute.NAME`, a `content-type` attribute as `content-type`.
fn headers(m: &aws_sdk_sqs::types::Message) -> Headers {
    let mut h = Headers::new();
    if let Some(id) = &m.message_id {
        h.insert("sqs.message_id".into(), id.clone());
    }
    if let Some(attributes) = &m.attributes {
        let named = [
            (
                MessageSystemAttributeName::ApproximateReceiveCount,
                "sqs.receive_count",
            ),
            (
                MessageSystemAttributeName::SentTimestamp,
                "sqs.sent_timestamp",
            ),
            (MessageSystemAttributeName::MessageGroupId, "sqs.group_id"),
            (
                MessageSystemAttributeName::MessageDeduplicationId,
                "sqs.deduplication_id",
            ),
            (
                MessageSystemAttributeName::SequenceNumber,
                "sqs.sequence_number",
            ),
            (MessageSystemAttributeName::SenderId, "sqs.sender_id"),
        ];
        for (attribute, name) in named {
            if let Some(v) = attributes.get(&attribute) {
                h.insert(name.into(), v.clone());
            }
        }
    }
    if let Some(attributes) = &m.message_attributes {
        for (name, v) in attributes {
            let value = v
                .string_value
                .clone()
                .unwrap_or_else(|| format!("({} value)", v.data_type));
            if name.eq_ignore_ascii_case("content-type") {
                h.insert("content-type".into(), value.clone());
            }
            h.insert(format!("sqs.attribute.{name}"), value);
        }
    }
    h
}
