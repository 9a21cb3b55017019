//! AMQP 0-9-1 inbound (RabbitMQ): consumes a queue, and acknowledges each delivery only
//! after it is committed to the store — the broker contract in [`crate::adapters::broker`].
//!
//! At most `prefetch` deliveries are unacknowledged at once; they are committed side by side
//! (the store groups their commits), so the order in which they are stored follows the queue
//! only with `prefetch: 1`. A delivery with an AMQP `message-id` that was stored before (a
//! redelivery after a crash or a lost acknowledgement) is recorded as `duplicate` and not
//! processed again. A delivery the intake refuses (over `max_size`, not the declared
//! `content`) is recorded as failed and rejected without requeue, so the broker drops it or
//! dead-letters it (`x-dead-letter-exchange`) instead of redelivering it for ever.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::amqp::{self as amqp, Declare};
use crate::adapters::broker::{keep_connected, redact, Link, Tls};
use crate::config::values::ByteSize;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use serde::Deserialize;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AmqpInbound")]
pub struct Config {
    /// The broker: `amqp://user:${RABBIT_PASSWORD}@host:5672/vhost` (`%2f` is the default
    /// vhost `/`), or `amqps://` for TLS.
    pub url: amqp::Url,
    /// The queue to consume.
    pub queue: String,
    /// Deliveries unacknowledged at once (default 64): the bound on what is in flight
    /// between the broker and the store. `1` keeps the queue's order in the store.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// The consumer tag (default: the broker makes one up).
    #[serde(default)]
    pub consumer_tag: Option<String>,
    /// Exchanges, queues and bindings to declare on every (re)connect.
    #[serde(default)]
    pub declare: Declare,
    /// Largest message accepted (default `1MiB`); larger ones are recorded as failed and
    /// rejected without requeue.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed and rejected.
    #[serde(default)]
    pub content: Content,
    /// TLS settings for `amqps://`.
    #[serde(default)]
    pub tls: Tls,
}

fn default_prefetch() -> u16 {
    64
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<AmqpInbound> {
        amqp::check(&self.tls).map_err(anyhow::Error::msg)?;
        self.declare.check().map_err(anyhow::Error::msg)?;
        if self.prefetch == 0 {
            anyhow::bail!("`prefetch` must be at least 1");
        }
        Ok(AmqpInbound {
            cfg: Arc::new(self.clone()),
            link: Arc::new(Link::new(format!(
                "{} queue {}",
                redact(&self.url),
                self.queue
            ))),
        })
    }
}

pub struct AmqpInbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

#[async_trait]
impl Inbound for AmqpInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        keep_connected(&self.link, &shutdown, || self.session(&intake, &shutdown)).await;
        Ok(())
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(()) // acknowledged after the commit; the failure is in the store
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

impl AmqpInbound {
    /// One connection's life: connect, declare, consume until the connection fails (`Err`)
    /// or `shutdown` (`Ok`). Deliveries in hand when it ends are finished first: committed
    /// and acknowledged, or, when the acknowledgement cannot be sent any more, redelivered by
    /// the broker later (and recognised by their message id).
    async fn session(&self, intake: &Intake, shutdown: &CancellationToken) -> Result<(), String> {
        let cfg = &self.cfg;
        let name = format!("switchyard {}", intake.route);
        let connecting = amqp::connect(&cfg.url, &cfg.tls, &name);
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            conn = connecting => conn?,
        };
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        cfg.declare.apply(&ch).await?;
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("cannot set the prefetch: {e}"))?;
        let mut consumer = ch
            .basic_consume(
                cfg.queue.as_str().into(),
                cfg.consumer_tag.clone().unwrap_or_default().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume queue `{}`: {e}", cfg.queue))?;
        self.link.up();
        tracing::info!(route = %intake.route, queue = %cfg.queue, prefetch = cfg.prefetch, "consuming");
        let mut in_hand = JoinSet::new();
        let result = loop {
            while in_hand.try_join_next().is_some() {}
            let next = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let (cfg, intake) = (cfg.clone(), intake.clone());
                    in_hand.spawn(async move { take(&cfg, &intake, delivery).await });
                }
                Some(Err(e)) => break Err(format!("connection lost: {e}")),
                None => break Err("the broker cancelled the consumer".into()),
            }
        };
        if result.is_ok() {
            // Stop deliveries first, so that nothing new arrives while the last ones commit.
            let _ = ch
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
        }
        while in_hand.join_next().await.is_some() {}
        // Closing hands unacknowledged deliveries back to the queue.
        let _ = conn.close(200, "switchyard stopping".into()).await;
        result
    }
}

/// Commits one delivery, then acknowledges it; refuses poison without requeue.
async fn take(cfg: &Config, intake: &Intake, mut delivery: Delivery) {
    let headers = headers(&delivery);
    let acker = &delivery.acker;
    let refusal = super::refusal(&delivery.data, cfg.max_size, cfg.content)
        .map(|r| format!("{r}; rejected without requeue"));
    if let Some(reason) = refusal {
        match intake.refuse(headers, &reason).await {
            Ok(_) => {
                let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            Err(e) => nack(intake, acker, &e.to_string()).await,
        }
        return;
    }
    let key = delivery
        .properties
        .message_id()
        .as_ref()
        .filter(|id| !id.as_str().is_empty())
        .map(|id| ("broker_message_id".to_string(), id.as_str().to_string()));
    match intake
        .submit_once(
            headers,
            Bytes::from(std::mem::take(&mut delivery.data)),
            key,
        )
        .await
    {
        Ok(_) => {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                // Committed, not acknowledged: the broker redelivers it, the store sees it
                // again (as `duplicate` when it has a message id).
                tracing::warn!(route = %intake.route, error = %e,
                    "message committed but its acknowledgement did not reach the broker; it will be redelivered");
            }
        }
        Err(e) => nack(intake, acker, &e.to_string()).await,
    }
}

async fn nack(intake: &Intake, acker: &lapin::Acker, error: &str) {
    tracing::warn!(route = %intake.route, error,
        "message not stored; handed back to the broker for redelivery");
    let _ = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

/// The delivery's envelope and properties as message headers (`amqp.*`, custom headers as
/// `amqp.header.NAME`, the content type as `content-type`).
fn headers(d: &Delivery) -> Headers {
    let mut h = Headers::new();
    let p = &d.properties;
    h.insert("amqp.exchange".into(), d.exchange.as_str().to_string());
    h.insert(
        "amqp.routing_key".into(),
        d.routing_key.as_str().to_string(),
    );
    h.insert("amqp.delivery_tag".into(), d.delivery_tag.to_string());
    h.insert("amqp.redelivered".into(), d.redelivered.to_string());
    let props = [
        ("content-type", p.content_type()),
        ("amqp.content_encoding", p.content_encoding()),
        ("amqp.message_id", p.message_id()),
        ("amqp.correlation_id", p.correlation_id()),
        ("amqp.reply_to", p.reply_to()),
        ("amqp.expiration", p.expiration()),
        ("amqp.type", p.kind()),
        ("amqp.user_id", p.user_id()),
        ("amqp.app_id", p.app_id()),
    ];
    for (name, value) in props {
        if let Some(v) = value {
            h.insert(name.into(), v.as_str().to_string());
        }
    }
    if let Some(t) = p.timestamp() {
        h.insert("amqp.timestamp".into(), t.to_string());
    }
    if let Some(prio) = p.priority() {
        h.insert("amqp.priority".into(), prio.to_string());
    }
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            h.insert(format!("amqp.header.{}", k.as_str()), amqp::text(v));
        }
    }
    h
}
