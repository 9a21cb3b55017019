//! AMQP 0-9-1 outbound (RabbitMQ): publishes each message to an exchange with publisher
//! confirms. A delivery is done only when the broker confirmed it; a nack, a message
//! returned as unroutable (`mandatory`), a confirm that does not come within
//! `confirm_timeout` or a lost connection is a failed attempt, retried by the destination's
//! policy. The message id travels as the AMQP `message-id`, so a consumer (a Switchyard
//! `amqp` inbound among them) recognises a republished message after a crash.
//!
//! One connection and one confirm-mode channel per destination, shared by its deliveries in
//! flight; after a failure the next delivery reconnects, at most as often as the reconnect
//! backoff allows.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::amqp::{self as amqp, Declare};
use crate::adapters::broker::{redact, Link, Pace, Tls};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AmqpOutbound")]
pub struct Config {
    /// The broker: `amqp://user:${RABBIT_PASSWORD}@host:5672/vhost`, or `amqps://`.
    pub url: amqp::Url,
    /// The exchange to publish to (default: the default exchange, where the routing key is
    /// a queue name).
    #[serde(default)]
    pub exchange: String,
    /// The routing key, a template: `orders.{{header.country}}`.
    pub routing_key: Template,
    /// Ask the broker to return a message no queue takes; it then counts as a failed
    /// attempt (default true).
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// Persistent delivery mode, so the message survives a broker restart (default true).
    #[serde(default = "yes")]
    pub persistent: bool,
    /// AMQP headers, templates.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// AMQP properties, templates; `content_type` defaults to the message's own.
    #[serde(default)]
    pub properties: Properties,
    /// Longest wait for the broker's confirm (default `30s`).
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: Duration,
    /// Longest connecting may take (default `10s`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Exchanges, queues and bindings to declare on every (re)connect.
    #[serde(default)]
    pub declare: Declare,
    /// TLS settings for `amqps://`.
    #[serde(default)]
    pub tls: Tls,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// AMQP message properties, each a template.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "AmqpProperties")]
pub struct Properties {
    #[serde(default)]
    pub content_type: Option<Template>,
    #[serde(default)]
    pub correlation_id: Option<Template>,
    #[serde(default)]
    pub reply_to: Option<Template>,
    /// The message type (`type` in AMQP).
    #[serde(default, rename = "type")]
    pub kind: Option<Template>,
    #[serde(default)]
    pub app_id: Option<Template>,
    /// Per-message TTL in milliseconds, as text (`"60000"`).
    #[serde(default)]
    pub expiration: Option<Template>,
}

fn yes() -> bool {
    true
}
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<AmqpOutbound> {
        amqp::check(&self.tls).map_err(anyhow::Error::msg)?;
        self.declare.check().map_err(anyhow::Error::msg)?;
        let target = if self.exchange.is_empty() {
            "the default exchange".to_string()
        } else {
            format!("exchange {}", self.exchange)
        };
        Ok(AmqpOutbound {
            link: Arc::new(Link::idle(format!("{} {target}", redact(&self.url)))),
            cfg: self.clone(),
            session: Mutex::new(None),
            pace: Pace::default(),
        })
    }
}

struct Session {
    conn: Connection,
    ch: Channel,
}

pub struct AmqpOutbound {
    cfg: Config,
    session: Mutex<Option<Arc<Session>>>,
    pace: Pace,
    link: Arc<Link>,
}

impl AmqpOutbound {
    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, SendError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.ch.status().connected() {
                return Ok(s.clone());
            }
        }
        *slot = None;
        let wait = self.cfg.connect_timeout.0;
        let opening = async {
            tokio::time::timeout(wait, self.open())
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "cannot connect to {} within {wait:?}",
                        redact(&self.cfg.url)
                    ))
                })
        };
        let s = Arc::new(
            self.pace
                .connect(&self.link, opening)
                .await
                .map_err(SendError::retryable)?,
        );
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn open(&self) -> Result<Session, String> {
        let conn = amqp::connect(&self.cfg.url, &self.cfg.tls, "switchyard publisher").await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        self.cfg.declare.apply(&ch).await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("cannot turn on publisher confirms: {e}"))?;
        Ok(Session { conn, ch })
    }

    /// Forgets `broken` (if it is still the open session), so the next delivery reconnects.
    async fn drop_session(&self, broken: &Arc<Session>, error: &str) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            *slot = None;
            let _ = broken.conn.close(200, "reconnecting".into()).await;
            self.pace.failed(&self.link, error);
        }
    }

    fn properties(&self, msg: &Message) -> BasicProperties {
        let p = &self.cfg.properties;
        let render = |t: &Option<Template>| t.as_ref().map(|t| ShortString::from(t.render(msg)));
        let mut props = BasicProperties::default()
            .with_message_id(msg.id.to_string().into())
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
        if self.cfg.persistent {
            props = props.with_delivery_mode(2);
        }
        let content_type =
            render(&p.content_type).or_else(|| msg.header("content-type").map(ShortString::from));
        if let Some(v) = content_type {
            props = props.with_content_type(v);
        }
        if let Some(v) = render(&p.correlation_id) {
            props = props.with_correlation_id(v);
        }
        if let Some(v) = render(&p.reply_to) {
            props = props.with_reply_to(v);
        }
        if let Some(v) = render(&p.kind) {
            props = props.with_type(v);
        }
        if let Some(v) = render(&p.app_id) {
            props = props.with_app_id(v);
        }
        if let Some(v) = render(&p.expiration) {
            props = props.with_expiration(v);
        }
        if !self.cfg.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in &self.cfg.headers {
                table.insert(
                    name.as_str().into(),
                    AMQPValue::LongString(LongString::from(value.render(msg))),
                );
            }
            props = props.with_headers(table);
        }
        props
    }
}

#[async_trait]
impl Outbound for AmqpOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let routing_key = self.cfg.routing_key.render(msg);
        if routing_key.len() > 255 {
            return Err(SendError::permanent(format!(
                "routing key of {} bytes is longer than AMQP's 255",
                routing_key.len()
            )));
        }
        let session = self.session().await?;
        let options = BasicPublishOptions {
            mandatory: self.cfg.mandatory,
            ..Default::default()
        };
        let published = session
            .ch
            .basic_publish(
                self.cfg.exchange.as_str().into(),
                routing_key.as_str().into(),
                options,
                &msg.body,
                self.properties(msg),
            )
            .await;
        let confirm = match published {
            Ok(c) => c,
            Err(e) => {
                let error = format!("cannot publish to {}: {e}", self.link.broker);
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
        };
        let wait = self.cfg.confirm_timeout.0;
        let confirmation = match tokio::time::timeout(wait, confirm).await {
            Err(_) => {
                let error = format!(
                    "no publisher confirm from {} within {wait:?}",
                    self.link.broker
                );
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
            Ok(Err(e)) => {
                let error = format!(
                    "the connection to {} failed before the confirm: {e}",
                    self.link.broker
                );
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
            Ok(Ok(c)) => c,
        };
        if confirmation.is_nack() {
            return Err(SendError::retryable(format!(
                "{} refused the message (basic.nack)",
                self.link.broker
            )));
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(SendError::retryable(format!(
                "no queue took the message: the broker returned it ({} {}) for routing key `{routing_key}`",
                returned.reply_code,
                returned.reply_text.as_str()
            )));
        }
        Ok(Sent(format!(
            "confirmed by {} (routing key `{routing_key}`)",
            self.link.broker
        )))
    }

    /// The confirm-mode channel pipelines: a batch is published at once and its confirms
    /// awaited together.
    fn batching(&self) -> Batching {
        Batching::Pipelined
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
