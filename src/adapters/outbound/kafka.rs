//! Apache Kafka outbound: produces each message to a topic with `acks=all` through an
//! idempotent producer, and counts the delivery done only on the broker's acknowledgement —
//! the record is then written to every in-sync replica. No acknowledgement within `timeout`,
//! or an error, is a failed attempt, retried by the destination's policy; a record the
//! broker can never take (too large) fails without retries.
//!
//! The idempotent producer keeps librdkafka's own retries from writing a record twice. The
//! message id travels as the record header `switchyard-message-id`, so a consuming Switchyard
//! route recognises a message produced again after a crash or a lost acknowledgement.
//!
//! One producer per destination, made on the first delivery; the delivery worker hands it its
//! due deliveries in batches of up to 64, queued at once, which librdkafka sends together.
//! librdkafka keeps its own connections.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::kafka::{Connection, Context, Sasl};
use crate::adapters::broker::{Link, LinkState, Tls, ID_NAME};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "KafkaOutbound")]
pub struct Config {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// The topic, a template: `orders.{{header.country}}`.
    pub topic: Template,
    /// The record key, a template (`{{header.customer}}`): records with one key go to one
    /// partition, in order. Default: no key (spread over the partitions).
    #[serde(default)]
    pub key: Option<Template>,
    /// Record headers, templates. `switchyard-message-id` and `content-type` are added.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Longest wait for the broker's acknowledgement, librdkafka's retries included (default
    /// `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How long librdkafka waits for more records before it sends a batch (default `1ms`;
    /// the deliveries of a batch are queued together anyway).
    #[serde(default = "default_linger")]
    pub linger: Duration,
    /// SASL authentication (PLAIN, SCRAM).
    #[serde(default)]
    pub sasl: Option<Sasl>,
    /// TLS: `tls: {}` for the system's roots, `tls: { ca: ca.pem }` for a private CA.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// librdkafka settings, which override the engine's (`compression.type: lz4`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_linger() -> Duration {
    Duration::from_millis(1)
}

impl Config {
    fn connection(&self) -> Connection {
        Connection {
            brokers: self.brokers.clone(),
            sasl: self.sasl.clone(),
            tls: self.tls.clone(),
            options: self.options.clone(),
        }
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<KafkaOutbound> {
        let connection = self.connection();
        connection.check().map_err(anyhow::Error::msg)?;
        if self.timeout.0 < std::time::Duration::from_secs(1) {
            anyhow::bail!("`timeout` must be at least 1s");
        }
        Ok(KafkaOutbound {
            link: Arc::new(Link::idle(format!(
                "{} topic {}",
                connection.describe(),
                self.topic.source()
            ))),
            cfg: self.clone(),
            producer: Mutex::new(None),
        })
    }

    fn client_config(&self) -> rdkafka::ClientConfig {
        self.connection().config(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("message.timeout.ms", self.timeout.0.as_millis().to_string()),
            ("linger.ms", self.linger.0.as_millis().to_string()),
        ])
    }
}

pub struct KafkaOutbound {
    cfg: Config,
    producer: Mutex<Option<FutureProducer<Context>>>,
    link: Arc<Link>,
}

impl KafkaOutbound {
    async fn producer(&self, route: &str) -> Result<FutureProducer<Context>, SendError> {
        let mut slot = self.producer.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        self.link.connecting();
        let context = Context {
            link: self.link.clone(),
            route: route.to_string(),
        };
        let made: FutureProducer<Context> =
            self.cfg
                .client_config()
                .create_with_context(context)
                .map_err(|e| SendError::permanent(format!("cannot make a Kafka producer: {e}")))?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// After a fatal error (the idempotent producer fenced or out of sequence) librdkafka's
    /// producer is finished: the next delivery makes a new one.
    async fn forget_if_fatal(&self, producer: &FutureProducer<Context>) {
        if let Some((code, why)) = producer.client().fatal_error() {
            tracing::warn!(broker = %self.link.broker, error = %code, why,
                "the Kafka producer hit a fatal error; a new one is made for the next delivery");
            *self.producer.lock().await = None;
        }
    }
}

#[async_trait]
impl Outbound for KafkaOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let topic = self.cfg.topic.render(msg);
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(SendError::permanent(format!(
                "`{topic}` is not a Kafka topic name: 1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`"
            )));
        }
        let producer = self.producer(&msg.route).await?;
        let id = msg.id.to_string();
        let mut headers = OwnedHeaders::new().insert(Header {
            key: ID_NAME,
            value: Some(&id),
        });
        let rendered: Vec<(&String, String)> = self
            .cfg
            .headers
            .iter()
            .map(|(name, value)| (name, value.render(msg)))
            .collect();
        for (name, value) in &rendered {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let has_type = |n: &str| n.eq_ignore_ascii_case("content-type");
        if let Some(ct) = msg.header("content-type") {
            if !self.cfg.headers.keys().any(|n| has_type(n)) {
                headers = headers.insert(Header {
                    key: "content-type",
                    value: Some(ct),
                });
            }
        }
        let key = self.cfg.key.as_ref().map(|k| k.render(msg));
        let mut record = FutureRecord::<str, [u8]>::to(&topic)
            .payload(&msg.body[..])
            .headers(headers);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        // The queue wait is bounded by the delivery timeout too: a full local queue is
        // backpressure, not a reason to fail.
        match producer.send(record, self.cfg.timeout.0).await {
            Ok(d) => {
                if !self.link.is_up() {
                    self.link.up();
                }
                Ok(Sent(format!(
                    "acknowledged by all in-sync replicas: topic {topic} partition {} offset {}",
                    d.partition, d.offset
                )))
            }
            Err((e, _)) => {
                self.forget_if_fatal(&producer).await;
                let why = format!("producing to topic `{topic}` failed: {e}");
                let code = e.rdkafka_error_code();
                match code {
                    Some(RDKafkaErrorCode::MessageSizeTooLarge)
                    | Some(RDKafkaErrorCode::InvalidMessageSize)
                    | Some(RDKafkaErrorCode::InvalidRecord) => Err(SendError::permanent(why)),
                    Some(RDKafkaErrorCode::MessageTimedOut) => {
                        // librdkafka's own reason (a refused password, a certificate it does
                        // not trust) came through its error callback, not with the record.
                        let status = self.link.status();
                        let why = match status.error {
                            Some(e) if status.state == LinkState::Down => {
                                format!("the cluster cannot be reached: {e}")
                            }
                            _ => "the cluster is down, or the topic does not exist".into(),
                        };
                        Err(SendError::retryable(format!(
                            "no acknowledgement for topic `{topic}` within {:?}: {why}",
                            self.cfg.timeout.0
                        )))
                    }
                    _ => Err(SendError::retryable(why)),
                }
            }
        }
    }

    /// librdkafka sends what is queued together (one produce request per partition), so a
    /// batch of due deliveries is queued at once and costs about one round trip.
    fn batching(&self) -> Batching {
        Batching::Pipelined
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
