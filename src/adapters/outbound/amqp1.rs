//! AMQP 1.0 outbound (ActiveMQ Artemis, Qpid, Azure Service Bus, Solace, RabbitMQ's AMQP 1.0
//! plugin): sends each message unsettled on a sender link and counts the delivery done only
//! when the broker settles it `accepted`. `rejected`, `released` or `modified`, no outcome
//! within `settle_timeout`, or a lost connection is a failed attempt, retried by the
//! destination's policy.
//!
//! The message id travels as the AMQP `message-id`, so a consumer recognises a message sent
//! again after a crash or a lost outcome (and brokers with duplicate detection drop it).
//! One connection and one sender link per destination, shared by its deliveries in flight.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::amqp1;
use crate::adapters::broker::{redact, Link, Pace, Tls};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Header, Message as AmqpMessage, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};
use fe2o3_amqp::Sender;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Amqp1Outbound")]
pub struct Config {
    /// The broker: `amqp://user:${AMQP_PASSWORD}@host:5672`, or `amqps://…:5671` for TLS.
    pub url: amqp1::Url,
    /// The address to send to: a queue or topic (`orders`; RabbitMQ's plugin:
    /// `/queue/orders` or `/exchange/NAME/ROUTING-KEY`; Azure Service Bus: `orders`).
    pub address: String,
    /// The SASL PLAIN user, instead of the URL's (Azure Service Bus: the shared access
    /// policy's name).
    #[serde(default)]
    pub user: Option<String>,
    /// The SASL PLAIN password, instead of the URL's — not percent-encoded, so a key with
    /// `+`, `/` or `=` can come straight from `${ENV}` (Azure Service Bus: the policy's key).
    #[serde(default)]
    pub password: Option<String>,
    /// The host name in the AMQP open frame (default: the URL's host). RabbitMQ picks a
    /// vhost with `vhost:NAME`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The message's `subject`, a template (RabbitMQ's `/exchange/NAME` address routes by
    /// it).
    #[serde(default)]
    pub subject: Option<Template>,
    /// AMQP properties, templates; `content_type` defaults to the message's own.
    #[serde(default)]
    pub properties: Properties1,
    /// Application properties, templates.
    #[serde(default)]
    pub application_properties: BTreeMap<String, Template>,
    /// Durable messages, kept by the broker across its restarts (default true).
    #[serde(default = "yes")]
    pub durable: bool,
    /// Longest wait for the broker's outcome (default `30s`).
    #[serde(default = "default_settle_timeout")]
    pub settle_timeout: Duration,
    /// Longest connecting may take (default `10s`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// TLS settings for `amqps://`.
    #[serde(default)]
    pub tls: Tls,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

/// AMQP 1.0 message properties, each a template.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Properties1 {
    #[serde(default)]
    pub content_type: Option<Template>,
    #[serde(default)]
    pub correlation_id: Option<Template>,
    #[serde(default)]
    pub reply_to: Option<Template>,
    /// The group (Azure Service Bus: the session id, for ordered sessions).
    #[serde(default)]
    pub group_id: Option<Template>,
    #[serde(default)]
    pub to: Option<Template>,
}

fn yes() -> bool {
    true
}
fn default_settle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    fn login(&self) -> amqp1::Login {
        amqp1::Login {
            user: self.user.clone(),
            password: self.password.clone(),
            hostname: self.hostname.clone(),
        }
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<Amqp1Outbound> {
        amqp1::check(&self.tls).map_err(anyhow::Error::msg)?;
        Ok(Amqp1Outbound {
            link: Arc::new(Link::idle(format!(
                "{} address {}",
                redact(&self.url),
                self.address
            ))),
            cfg: self.clone(),
            session: Mutex::new(None),
            pace: Pace::default(),
        })
    }
}

struct Session {
    opened: Mutex<Option<amqp1::Opened>>,
    sender: Mutex<Sender>,
}

pub struct Amqp1Outbound {
    cfg: Config,
    session: Mutex<Option<Arc<Session>>>,
    pace: Pace,
    link: Arc<Link>,
}

impl Amqp1Outbound {
    /// The open sender link, or a new one.
    async fn session(&self) -> Result<Arc<Session>, SendError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
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
        let cfg = &self.cfg;
        let mut opened =
            amqp1::open(&cfg.url, &cfg.tls, &cfg.login(), "switchyard publisher").await?;
        let name = format!("switchyard-to-{}", uuid::Uuid::new_v4().simple());
        match Sender::attach(&mut opened.session, name, cfg.address.as_str()).await {
            Ok(sender) => Ok(Session {
                opened: Mutex::new(Some(opened)),
                sender: Mutex::new(sender),
            }),
            Err(e) => {
                opened.close().await;
                Err(format!("cannot send to `{}`: {e}", cfg.address))
            }
        }
    }

    /// Forgets `broken` (if it is still the open session), so the next delivery reconnects.
    async fn drop_session(&self, broken: &Arc<Session>, error: &str) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            *slot = None;
            if let Some(opened) = broken.opened.lock().await.take() {
                // In the background: the next delivery need not wait for the goodbye.
                tokio::spawn(opened.close());
            }
            self.pace.failed(&self.link, error);
        }
    }

    fn message(&self, msg: &Message) -> AmqpMessage<Data> {
        let cfg = &self.cfg;
        let render = |t: &Option<Template>| t.as_ref().map(|t| t.render(msg));
        let p = &cfg.properties;
        let content_type = render(&p.content_type)
            .or_else(|| msg.header("content-type").map(str::to_string))
            .map(Into::into);
        let properties = Properties {
            message_id: Some(MessageId::String(msg.id.to_string())),
            subject: render(&cfg.subject),
            content_type,
            correlation_id: render(&p.correlation_id).map(MessageId::String),
            reply_to: render(&p.reply_to),
            group_id: render(&p.group_id),
            to: render(&p.to),
            creation_time: Some(fe2o3_amqp::types::primitives::Timestamp::from_milliseconds(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            )),
            ..Default::default()
        };
        let mut builder = AmqpMessage::builder()
            .header(Header {
                durable: cfg.durable,
                ..Default::default()
            })
            .properties(properties);
        if !cfg.application_properties.is_empty() {
            let mut props = ApplicationProperties::builder();
            for (name, value) in &cfg.application_properties {
                props = props.insert(name.clone(), SimpleValue::String(value.render(msg)));
            }
            builder = builder.application_properties(props.build());
        }
        builder.data(Binary::from(msg.body.to_vec())).build()
    }
}

#[async_trait]
impl Outbound for Amqp1Outbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let session = self.session().await?;
        let sendable = Sendable::builder()
            .message(self.message(msg))
            .settled(false)
            .build();
        // The link is held only to put the transfer on the wire; the outcome is awaited
        // without it, so deliveries in flight overlap.
        let queued = session.sender.lock().await.send_batchable(sendable).await;
        let outcome = match queued {
            Ok(fut) => tokio::time::timeout(self.cfg.settle_timeout.0, fut).await,
            Err(e) => {
                let error = format!("cannot send to {}: {e}", self.link.broker);
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
        };
        let outcome = match outcome {
            Err(_) => {
                let error = format!(
                    "no outcome from {} within {:?}",
                    self.link.broker, self.cfg.settle_timeout.0
                );
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
            Ok(Err(e)) => {
                let error = format!(
                    "the link to {} failed before the outcome: {e}",
                    self.link.broker
                );
                self.drop_session(&session, &error).await;
                return Err(SendError::retryable(error));
            }
            Ok(Ok(o)) => o,
        };
        match outcome {
            Outcome::Accepted(_) => Ok(Sent(format!("accepted by {}", self.link.broker))),
            Outcome::Rejected(r) => Err(SendError::retryable(format!(
                "{} rejected the message: {}",
                self.link.broker,
                r.error
                    .map(|e| format!(
                        "{:?}{}",
                        e.condition,
                        e.description.map(|d| format!(" ({d})")).unwrap_or_default()
                    ))
                    .unwrap_or_else(|| "no reason given".into())
            ))),
            Outcome::Released(_) => Err(SendError::retryable(format!(
                "{} released the message without taking it",
                self.link.broker
            ))),
            Outcome::Modified(_) => Err(SendError::retryable(format!(
                "{} did not take the message (modified)",
                self.link.broker
            ))),
            #[allow(unreachable_patterns)]
            _ => Err(SendError::retryable(format!(
                "{} answered with an outcome other than accepted",
                self.link.broker
            ))),
        }
    }

    /// The link pipelines: a batch's transfers go out at once (as credit allows) and their
    /// outcomes are awaited together.
    fn batching(&self) -> Batching {
        Batching::Pipelined
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
