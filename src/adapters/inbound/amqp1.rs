//! AMQP 1.0 inbound (ActiveMQ Artemis, Qpid, Azure Service Bus, Solace, RabbitMQ's AMQP 1.0
//! plugin): a receiver link on an address, each delivery settled `accepted` only after it is
//! committed to the store — the broker contract in [`crate::adapters::broker`].
//!
//! The link's credit (`prefetch`) bounds what the broker sends ahead; at most `prefetch`
//! deliveries are in hand at once. A delivery whose `message-id` was stored before is
//! recorded as `duplicate`; one the intake refuses (over `max_size`, not the declared
//! `content`, a body that is neither data nor text) is recorded as failed and `rejected`, so
//! the broker dead-letters or drops it instead of sending it again; one the store cannot take
//! is `released`, for the broker to deliver again.
//!
//! One task owns the link: it receives, and it settles what the tasks storing the deliveries
//! report back, so receiving never waits for a commit.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::amqp1;
use crate::adapters::broker::{keep_connected, redact, Link, Tls};
use crate::config::values::ByteSize;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Message as AmqpMessage, MessageId};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Amqp1Inbound")]
pub struct Config {
    /// The broker: `amqp://user:${AMQP_PASSWORD}@host:5672`, or `amqps://…:5671` for TLS.
    pub url: amqp1::Url,
    /// The address to receive from: a queue (`orders`; RabbitMQ's plugin: `/queue/orders`;
    /// Azure Service Bus: `orders` or `topic/subscriptions/name`).
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
    /// The link's credit (default 64): deliveries the broker sends ahead, and the most in
    /// hand at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Largest message accepted (default `1MiB`); larger ones are recorded as failed and
    /// rejected.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed and rejected.
    #[serde(default)]
    pub content: Content,
    /// TLS settings for `amqps://`.
    #[serde(default)]
    pub tls: Tls,
}

fn default_prefetch() -> u32 {
    64
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    fn login(&self) -> amqp1::Login {
        amqp1::Login {
            user: self.user.clone(),
            password: self.password.clone(),
            hostname: self.hostname.clone(),
        }
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<Amqp1Inbound> {
        amqp1::check(&self.tls).map_err(anyhow::Error::msg)?;
        if self.prefetch == 0 {
            anyhow::bail!("`prefetch` must be at least 1");
        }
        Ok(Amqp1Inbound {
            link: Arc::new(Link::new(format!(
                "{} address {}",
                redact(&self.url),
                self.address
            ))),
            cfg: Arc::new(self.clone()),
        })
    }
}

pub struct Amqp1Inbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

#[async_trait]
impl Inbound for Amqp1Inbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        keep_connected(&self.link, &shutdown, || self.session(&intake, &shutdown)).await;
        Ok(())
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(()) // settled after the commit; the failure is in the store
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

/// How a delivery is to be settled, reported by the task that stored it.
enum Settle {
    Accept,
    Reject(String),
    Release,
}

impl Amqp1Inbound {
    /// One connection's life: open, attach the receiver, receive until the link fails
    /// (`Err`) or `shutdown` (`Ok`). Deliveries in hand when it ends are stored and settled
    /// first; a delivery left unsettled when the connection goes is delivered again.
    async fn session(&self, intake: &Intake, shutdown: &CancellationToken) -> Result<(), String> {
        let cfg = &self.cfg;
        let container = format!("switchyard {}", intake.route);
        let login = cfg.login();
        let opening = amqp1::open(&cfg.url, &cfg.tls, &login, &container);
        let mut opened = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            o = opening => o?,
        };
        let attached = Receiver::builder()
            .name(format!("switchyard-{}", intake.route))
            .source(cfg.address.as_str())
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .attach(&mut opened.session)
            .await;
        let mut receiver = match attached {
            Ok(r) => r,
            Err(e) => {
                opened.close().await;
                return Err(format!("cannot receive from `{}`: {e}", cfg.address));
            }
        };
        self.link.up();
        tracing::info!(route = %intake.route, address = %cfg.address, prefetch = cfg.prefetch, "consuming");
        let (done, mut settled) = mpsc::channel::<(DeliveryInfo, Settle)>(cfg.prefetch as usize);
        let prefetch = cfg.prefetch as usize;
        let mut in_hand = 0usize;
        // Credit is granted only once the last grant is used up, so no transfer is ever on
        // its way when a grant goes out: RabbitMQ's AMQP 1.0 plugin counts a new grant from
        // what it has sent rather than from what the receiver has received, and with
        // transfers in flight it sends more than fe2o3 allows ("the peer sent more message
        // transfers than currently allowed"), which cost a reconnect each time.
        let (mut granted, mut received) = (0u64, 0u64);
        let result = loop {
            let room = prefetch - in_hand;
            if granted == received && (room >= (prefetch / 4).max(1) || in_hand == 0) {
                if let Err(e) = receiver.set_credit(room as u32).await {
                    break Err(format!("cannot grant credit on `{}`: {e}", cfg.address));
                }
                granted += room as u64;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some((info, how)) = settled.recv() => {
                    in_hand -= 1;
                    if let Err(e) = settle(&receiver, info, how).await {
                        break Err(e);
                    }
                }
                delivery = receiver.recv::<Body<Value>>(), if in_hand < prefetch => {
                    match delivery {
                        Ok(d) => {
                            in_hand += 1;
                            received += 1;
                            let (info, message) = d.into_parts();
                            let (cfg, intake, done) = (cfg.clone(), intake.clone(), done.clone());
                            tokio::spawn(async move {
                                let how = take(&cfg, &intake, message).await;
                                let _ = done.send((info, how)).await;
                            });
                        }
                        Err(e) => break Err(format!("receiving from `{}` failed: {e}", cfg.address)),
                    }
                }
            }
        };
        // Finish what is in hand: stored and settled, or — when the link is gone — left to
        // the broker to deliver again.
        while in_hand > 0 {
            let Some((info, how)) = settled.recv().await else {
                break;
            };
            in_hand -= 1;
            let _ = settle(&receiver, info, how).await;
        }
        let _ = tokio::time::timeout(amqp1::GOODBYE, receiver.close()).await;
        opened.close().await;
        result
    }
}

async fn settle(receiver: &Receiver, info: DeliveryInfo, how: Settle) -> Result<(), String> {
    let settled = match how {
        Settle::Accept => receiver.accept(info).await,
        Settle::Reject(reason) => {
            let error = fe2o3_amqp::types::definitions::Error::new(
                fe2o3_amqp::types::definitions::AmqpError::PreconditionFailed,
                Some(reason),
                None,
            );
            receiver.reject(info, error).await
        }
        Settle::Release => receiver.release(info).await,
    };
    settled.map_err(|e| format!("cannot settle a delivery: {e}"))
}

/// Stores one delivery (or records it as refused) and says how to settle it.
async fn take(cfg: &Config, intake: &Intake, message: AmqpMessage<Body<Value>>) -> Settle {
    let headers = headers(cfg, &message);
    let body = match body(message.body) {
        Ok(b) => b,
        Err(reason) => return refuse(intake, headers, reason).await,
    };
    if let Some(reason) = super::refusal(&body, cfg.max_size, cfg.content) {
        return refuse(intake, headers, reason).await;
    }
    let key = message
        .properties
        .as_ref()
        .and_then(|p| p.message_id.as_ref())
        .map(id_text)
        .filter(|id| !id.is_empty())
        .map(|id| ("broker_message_id".to_string(), id));
    match intake.submit_once(headers, body, key).await {
        Ok(_) => Settle::Accept,
        Err(e) => {
            tracing::warn!(route = %intake.route, error = %e,
                "message not stored; released to the broker for redelivery");
            Settle::Release
        }
    }
}

async fn refuse(intake: &Intake, headers: Headers, reason: String) -> Settle {
    let reason = format!("{reason}; rejected");
    match intake.refuse(headers, &reason).await {
        Ok(_) => Settle::Reject(reason),
        Err(_) => Settle::Release,
    }
}

/// The body as bytes: data sections joined, or a text or binary value.
fn body(body: Body<Value>) -> Result<Bytes, String> {
    match body {
        Body::Data(sections) => {
            let mut all = Vec::new();
            for d in sections {
                all.extend_from_slice(&d.0);
            }
            Ok(Bytes::from(all))
        }
        Body::Value(v) => match v.0 {
            Value::String(s) => Ok(Bytes::from(s)),
            Value::Binary(b) => Ok(Bytes::from(b.into_vec())),
            other => Err(format!(
                "the body is an AMQP value of type {}, not data or text",
                type_name(&other)
            )),
        },
        Body::Sequence(_) => Err("the body is an AMQP sequence, not data or text".into()),
        Body::Empty => Ok(Bytes::new()),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Map(_) => "map",
        Value::List(_) => "list",
        Value::Array(_) => "array",
        Value::Symbol(_) => "symbol",
        _ => "number or other scalar",
    }
}

fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(*u.as_inner()).to_string(),
        MessageId::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The delivery's properties, application properties and annotations as headers.
fn headers(cfg: &Config, m: &AmqpMessage<Body<Value>>) -> Headers {
    let mut h = Headers::new();
    h.insert("amqp1.address".into(), cfg.address.clone());
    if let Some(header) = &m.header {
        h.insert(
            "amqp1.delivery_count".into(),
            header.delivery_count.to_string(),
        );
    }
    if let Some(p) = &m.properties {
        let texts = [
            ("amqp1.message_id", p.message_id.as_ref().map(id_text)),
            (
                "amqp1.correlation_id",
                p.correlation_id.as_ref().map(id_text),
            ),
            ("amqp1.to", p.to.clone()),
            ("amqp1.subject", p.subject.clone()),
            ("amqp1.reply_to", p.reply_to.clone()),
            ("amqp1.group_id", p.group_id.clone()),
            ("content-type", p.content_type.as_ref().map(|s| s.0.clone())),
        ];
        for (name, value) in texts {
            if let Some(v) = value {
                h.insert(name.into(), v);
            }
        }
    }
    if let Some(props) = &m.application_properties {
        for (k, v) in props.0.iter() {
            h.insert(format!("amqp1.property.{k}"), text(&Value::from(v.clone())));
        }
    }
    if let Some(ann) = &m.message_annotations {
        for (k, v) in ann.0.iter() {
            h.insert(format!("amqp1.annotation.{}", key_text(k)), text(v));
        }
    }
    h
}

fn key_text(k: &fe2o3_amqp::types::messaging::annotations::OwnedKey) -> String {
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    match k {
        OwnedKey::Symbol(s) => s.0.clone(),
        OwnedKey::Ulong(n) => n.to_string(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.0.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Ubyte(n) => n.to_string(),
        Value::Ushort(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Ulong(n) => n.to_string(),
        Value::Byte(n) => n.to_string(),
        Value::Short(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}
