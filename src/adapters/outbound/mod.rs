//! Outbound adapters: where processed messages go. Each destination of a route is one
//! outbound adapter; the delivery worker ([`crate::delivery`]) calls [`Outbound::send`] and
//! records the outcome, so adapters never touch the store.

pub mod amqp;
pub mod amqp1;
pub mod database;
pub mod file;
pub mod ftp;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod remote;
pub mod sftp;
pub mod smtp;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod tcp;

use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use async_trait::async_trait;
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;

/// One entry of a route's `to:` list.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboundConfig {
    /// Writes each message to a file in a directory.
    File(file::Config),
    /// Sends each message as an HTTP request.
    Http(http::Config),
    /// Sends each message as an e-mail.
    Smtp(smtp::Config),
    /// Sends each message on a TCP connection (an MLLP client for HL7).
    Tcp(tcp::Config),
    /// Publishes each message to a RabbitMQ (AMQP 0-9-1) exchange, with publisher confirms.
    Amqp(Box<amqp::Config>),
    /// Sends each message to an AMQP 1.0 address, done on the broker's `accepted` outcome.
    Amqp1(Box<amqp1::Config>),
    /// Publishes each message to an MQTT topic (QoS 1).
    Mqtt(mqtt::Config),
    /// Publishes each message to a NATS JetStream subject, done on the stream's PubAck.
    Nats(nats::Config),
    /// Appends each message to a Redis stream (or pushes it on a list, or publishes it).
    Redis(redis::Config),
    /// Runs a statement for each message on a PostgreSQL or MySQL/MariaDB database, done on
    /// the commit.
    Database(Box<database::Config>),
    /// Uploads each message as a file over SFTP, renamed into place when whole.
    Sftp(Box<sftp::Config>),
    /// Uploads each message as a file over FTP or FTPS, renamed into place when whole.
    Ftp(Box<ftp::Config>),
    /// Sends each message to an Amazon SQS queue (cargo feature `sqs`).
    #[cfg(feature = "sqs")]
    Sqs(Box<sqs::Config>),
    /// Sends each message to an Amazon SQS queue: this build has no SQS support (cargo
    /// feature `sqs`).
    #[cfg(not(feature = "sqs"))]
    #[serde(deserialize_with = "crate::adapters::broker::no_sqs")]
    #[schemars(with = "crate::adapters::broker::NotBuilt")]
    Sqs(()),
    /// Produces each message to an Apache Kafka topic, done on the acknowledgement of all
    /// in-sync replicas (cargo feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::Config>),
    /// Produces each message to an Apache Kafka topic: this build has no Kafka support (cargo
    /// feature `kafka`).
    #[cfg(not(feature = "kafka"))]
    #[serde(deserialize_with = "crate::adapters::broker::no_kafka")]
    #[schemars(with = "crate::adapters::broker::NotBuilt")]
    Kafka(()),
    /// A named endpoint from the adapters directory (`endpoint: lab-system`), replaced by its
    /// definition when the route is loaded.
    Endpoint(String),
}

impl OutboundConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            OutboundConfig::File(_) => "file",
            OutboundConfig::Http(_) => "http",
            OutboundConfig::Smtp(_) => "smtp",
            OutboundConfig::Tcp(_) => "tcp",
            OutboundConfig::Amqp(_) => "amqp",
            OutboundConfig::Amqp1(_) => "amqp1",
            OutboundConfig::Mqtt(_) => "mqtt",
            OutboundConfig::Nats(_) => "nats",
            OutboundConfig::Redis(_) => "redis",
            OutboundConfig::Database(_) => "database",
            OutboundConfig::Sftp(_) => "sftp",
            OutboundConfig::Ftp(_) => "ftp",
            OutboundConfig::Sqs(_) => "sqs",
            OutboundConfig::Kafka(_) => "kafka",
            OutboundConfig::Endpoint(_) => "endpoint",
        }
    }

    /// The destination's delivery settings, with the kind's own default ordering filled in
    /// (`fifo` for TCP, where legacy feeds need order; `parallel` for the others).
    pub fn delivery(&self) -> DeliveryConfig {
        let (d, default) = match self {
            OutboundConfig::File(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Http(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Smtp(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Tcp(c) => (&c.delivery, DeliveryOrder::Fifo),
            OutboundConfig::Amqp(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Amqp1(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Mqtt(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Nats(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Redis(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Database(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Sftp(c) => (&c.delivery, DeliveryOrder::Parallel),
            OutboundConfig::Ftp(c) => (&c.delivery, DeliveryOrder::Parallel),
            #[cfg(feature = "sqs")]
            OutboundConfig::Sqs(c) => (&c.delivery, DeliveryOrder::Parallel),
            #[cfg(not(feature = "sqs"))]
            OutboundConfig::Sqs(_) => return DeliveryConfig::default(),
            #[cfg(feature = "kafka")]
            OutboundConfig::Kafka(c) => (&c.delivery, DeliveryOrder::Parallel),
            #[cfg(not(feature = "kafka"))]
            OutboundConfig::Kafka(_) => return DeliveryConfig::default(),
            OutboundConfig::Endpoint(_) => return DeliveryConfig::default(),
        };
        let mut d = d.clone();
        d.ordering.get_or_insert(default);
        d
    }

    /// What is wrong with the settings, found without connecting, for `switchyard check` and
    /// the route's load (see [`crate::adapters::inbound::InboundConfig::check`]).
    pub fn check(&self, cx: &BuildContext) -> Result<(), String> {
        match self {
            OutboundConfig::Database(c) => c.build(cx).map(drop).map_err(|e| format!("{e:#}")),
            OutboundConfig::Sftp(c) => c.build(cx).map(drop).map_err(|e| format!("{e:#}")),
            OutboundConfig::Ftp(c) => c.build(cx).map(drop).map_err(|e| format!("{e:#}")),
            _ => Ok(()),
        }
    }

    pub fn build(&self, cx: &BuildContext) -> anyhow::Result<Arc<dyn Outbound>> {
        Ok(match self {
            OutboundConfig::File(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Http(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Smtp(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Tcp(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Amqp(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Amqp1(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Mqtt(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Nats(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Redis(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Database(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Sftp(c) => Arc::new(c.build(cx)?),
            OutboundConfig::Ftp(c) => Arc::new(c.build(cx)?),
            #[cfg(feature = "sqs")]
            OutboundConfig::Sqs(c) => Arc::new(c.build(cx)?),
            #[cfg(not(feature = "sqs"))]
            OutboundConfig::Sqs(_) => anyhow::bail!(crate::adapters::broker::NO_SQS),
            #[cfg(feature = "kafka")]
            OutboundConfig::Kafka(c) => Arc::new(c.build(cx)?),
            #[cfg(not(feature = "kafka"))]
            OutboundConfig::Kafka(_) => anyhow::bail!(crate::adapters::broker::NO_KAFKA),
            OutboundConfig::Endpoint(name) => anyhow::bail!("endpoint `{name}` was not resolved"),
        })
    }
}

/// How a destination takes its deliveries: how many at once, in what order, how retried.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Deliveries in flight at once (default 4; `fifo` always sends one at a time). Not for
    /// destinations that take whole batches of up to 64 instead: file, database and SQS
    /// destinations one batch at a time, broker destinations (AMQP, AMQP 1.0, NATS, Redis,
    /// Kafka) up to four batches at once, each sent as one pipeline.
    pub concurrency: usize,
    /// `parallel` or `fifo`: strictly one after the other in the order the messages were
    /// processed; a delivery that fails holds back the ones after it until it is delivered or
    /// dead (what HL7 feeds need). Default: `fifo` for TCP, `parallel` otherwise.
    pub ordering: Option<DeliveryOrder>,
    /// Retry policy for failed deliveries.
    pub retry: RetryConfig,
    /// At most this many attempts per time (`20/s`, `600/min`), retries included; what is
    /// due beyond it waits in the store. Per node.
    pub rate: Option<crate::config::values::Rate>,
    /// Attempts that may go at once after a quiet spell (default: a second's worth of
    /// `rate`, at least 1).
    pub burst: Option<u32>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 4,
            ordering: None,
            retry: RetryConfig::default(),
            rate: None,
            burst: None,
        }
    }
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOrder {
    #[default]
    Parallel,
    Fifo,
}

/// How a destination retries failed deliveries: exponential backoff with jitter.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (default 10). After the last the delivery is dead.
    pub max_attempts: u32,
    /// Wait before the second attempt (default `1s`); it doubles with each attempt.
    pub backoff: Duration,
    /// Longest wait between two attempts (default `5m`).
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A running destination.
#[async_trait]
pub trait Outbound: Send + Sync {
    /// Delivers one message. Called again for the same message after a failure or a crash,
    /// so it should be idempotent where it can be.
    async fn send(&self, msg: &Message) -> Result<Sent, SendError>;

    /// How the delivery worker hands this destination its due deliveries.
    fn batching(&self) -> Batching {
        Batching::No
    }

    /// The destination's connection to a broker, for the admin API and metrics.
    fn link(&self) -> Option<Arc<crate::adapters::broker::Link>> {
        None
    }

    /// Delivers several messages; one result per message, in order. A result is final for
    /// its message only: one failure does not fail the others. By default a pipeline
    /// ([`pipelined`]), what [`Batching::Pipelined`] destinations use; [`Batching::Whole`]
    /// destinations write the batch their own way.
    async fn send_batch(&self, msgs: &[Message]) -> Vec<Result<Sent, SendError>> {
        pipelined(self, msgs).await
    }
}

/// How a destination takes its due deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// One delivery per [`Outbound::send`], `concurrency` at a time.
    No,
    /// Whole batches through [`Outbound::send_batch`], one batch at a time: it costs less per
    /// message than `send` (a file destination syncs a batch once; a database commits it once;
    /// SQS sends ten to a call).
    Whole,
    /// Whole batches as pipelines (the default [`Outbound::send_batch`]), several batches at once, so that one
    /// batch's confirmations and its record overlap the next batch's sending: for broker
    /// clients that pipeline on one connection (Kafka, NATS, Redis, AMQP 0-9-1 and 1.0).
    Pipelined,
}

/// Batches a pipelined destination has in flight at once.
pub const PIPELINED_BATCHES: usize = 4;

impl Batching {
    /// Batches sent at once (`No`: none, its deliveries go one by one).
    pub fn at_once(self) -> usize {
        match self {
            Batching::No => 0,
            Batching::Whole => 1,
            Batching::Pipelined => PIPELINED_BATCHES,
        }
    }
}

/// A batch sent as one pipeline: every message is put on the destination's one connection in
/// order (`join_all` polls its futures in order) and the broker's confirmations are awaited
/// together — about one round trip for the batch instead of one per message, each message
/// still done only on its own confirmation.
async fn pipelined<O: Outbound + ?Sized>(
    out: &O,
    msgs: &[Message],
) -> Vec<Result<Sent, SendError>> {
    futures_util::future::join_all(msgs.iter().map(|m| out.send(m))).await
}

/// What a successful delivery did, for the log (a path, a status code).
#[derive(Debug, Clone)]
pub struct Sent(pub String);

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone)]
pub struct SendError {
    pub message: String,
    pub retryable: bool,
}

impl SendError {
    pub fn retryable(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
