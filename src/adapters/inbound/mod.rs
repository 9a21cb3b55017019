//! Inbound adapters: where messages come from.
//!
//! An adapter receives bytes from a sender, hands them to [`Intake::submit`] — which returns
//! only once the message is committed to the store — and only then acknowledges the sender
//! (moves the file away, answers 2xx, sends an ACK). That order is the engine's first promise.

pub mod amqp;
pub mod amqp1;
pub mod database;
pub mod file;
pub mod ftp;
pub mod http;
pub mod http_poll;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod remote;
pub mod schedule;
pub mod sftp;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod tcp;

mod intake;
pub use intake::{Intake, Ran, Replies, Reply, SplitError, Steps, Submitted, INLINE_BUDGET};

use crate::message::Message;
use crate::steps::BuildContext;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The `from:` entry of a route.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InboundConfig {
    /// Picks up files from a watched directory.
    File(file::Config),
    /// Listens for HTTP requests.
    Http(http::Config),
    /// Listens for framed messages on TCP (MLLP for HL7, lines, length prefixes, ...).
    Tcp(tcp::Config),
    /// Consumes a RabbitMQ (AMQP 0-9-1) queue.
    Amqp(amqp::Config),
    /// Receives from an AMQP 1.0 address (ActiveMQ Artemis, Qpid, Azure Service Bus, ...).
    Amqp1(amqp1::Config),
    /// Subscribes to MQTT topics.
    Mqtt(mqtt::Config),
    /// Consumes a NATS JetStream stream through a durable pull consumer.
    Nats(nats::Config),
    /// Reads a Redis stream through a consumer group.
    Redis(redis::Config),
    /// Polls a query on a PostgreSQL or MySQL/MariaDB database; each row is a message.
    Database(Box<database::Config>),
    /// Makes a message at cron times or at an interval.
    Schedule(Box<schedule::Config>),
    /// Requests a URL on a schedule; a new answer (or each item of it) is a message.
    HttpPoll(Box<http_poll::Config>),
    /// Takes files from a remote directory over SFTP.
    Sftp(Box<sftp::Config>),
    /// Takes files from a remote directory over FTP or FTPS.
    Ftp(Box<ftp::Config>),
    /// Long-polls an Amazon SQS queue (cargo feature `sqs`).
    #[cfg(feature = "sqs")]
    Sqs(sqs::Config),
    /// Long-polls an Amazon SQS queue: this build has no SQS support (cargo feature `sqs`).
    #[cfg(not(feature = "sqs"))]
    #[serde(deserialize_with = "crate::adapters::broker::no_sqs")]
    #[schemars(with = "crate::adapters::broker::NotBuilt")]
    Sqs(()),
    /// Consumes Apache Kafka topics as a member of a consumer group (cargo feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(kafka::Config),
    /// Consumes Apache Kafka topics: this build has no Kafka support (cargo feature `kafka`).
    #[cfg(not(feature = "kafka"))]
    #[serde(deserialize_with = "crate::adapters::broker::no_kafka")]
    #[schemars(with = "crate::adapters::broker::NotBuilt")]
    Kafka(()),
    /// A named endpoint from the adapters directory, replaced by its definition on load.
    Endpoint(String),
}

impl InboundConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            InboundConfig::File(_) => "file",
            InboundConfig::Http(_) => "http",
            InboundConfig::Tcp(_) => "tcp",
            InboundConfig::Amqp(_) => "amqp",
            InboundConfig::Amqp1(_) => "amqp1",
            InboundConfig::Mqtt(_) => "mqtt",
            InboundConfig::Nats(_) => "nats",
            InboundConfig::Redis(_) => "redis",
            InboundConfig::Database(_) => "database",
            InboundConfig::Schedule(_) => "schedule",
            InboundConfig::HttpPoll(_) => "http_poll",
            InboundConfig::Sftp(_) => "sftp",
            InboundConfig::Ftp(_) => "ftp",
            InboundConfig::Sqs(_) => "sqs",
            InboundConfig::Kafka(_) => "kafka",
            InboundConfig::Endpoint(_) => "endpoint",
        }
    }

    /// The resource this adapter takes for itself (a directory, a port), which no other route
    /// may take too.
    pub fn claim(&self) -> Option<String> {
        match self {
            InboundConfig::File(c) => {
                // Compare resolved paths, so `inbox` and `./inbox` are seen as one directory.
                let p = std::fs::canonicalize(&c.path)
                    .or_else(|_| std::path::absolute(&c.path))
                    .unwrap_or_else(|_| c.path.clone());
                Some(format!("directory {}", p.display()))
            }
            // Port 0 asks for a fresh port each time: nothing to share.
            InboundConfig::Http(c) if crate::listeners::any_free_port(&c.listen) => None,
            InboundConfig::Http(c) => Some(format!("address {}", c.listen)),
            InboundConfig::Tcp(c) if crate::listeners::any_free_port(&c.listen) => None,
            InboundConfig::Tcp(c) => Some(format!("address {}", c.listen)),
            // Several consumers of one queue share its messages: nothing is taken for itself.
            InboundConfig::Amqp(_) | InboundConfig::Amqp1(_) => None,
            // One MQTT client id is one session: two routes with it would knock each other off.
            InboundConfig::Mqtt(c) => Some(format!("MQTT client id {}", c.client_id)),
            // Several routes on one durable consumer share its messages, like queue consumers.
            // Readers of one queue share its messages.
            // The group's coordinator gives each partition to one member.
            InboundConfig::Nats(_) | InboundConfig::Sqs(_) | InboundConfig::Kafka(_) => None,
            // Several readers of one table: each route keeps its own position or marks.
            InboundConfig::Database(_) => None,
            // Each route keeps its own position; two routes polling one URL are two pollers.
            InboundConfig::Schedule(_) | InboundConfig::HttpPoll(_) => None,
            // One remote directory read by two routes would have them race for its files.
            InboundConfig::Sftp(c) => Some(format!("SFTP directory {}", c.url.text)),
            InboundConfig::Ftp(c) => Some(format!("FTP directory {}", c.url.text)),
            // One consumer name in a group is one pending list: two routes with it would
            // take each other's entries as their own.
            InboundConfig::Redis(c) => Some(format!(
                "Redis consumer {} of group {} on stream {}",
                c.consumer, c.group, c.stream
            )),
            InboundConfig::Endpoint(_) => None,
        }
    }

    /// How many messages a broker inbound keeps unacknowledged at once (`prefetch`,
    /// `receive_maximum`); `None` for the other kinds.
    pub fn in_flight(&self) -> Option<usize> {
        match self {
            InboundConfig::Amqp(c) => Some(c.prefetch as usize),
            InboundConfig::Amqp1(c) => Some(c.prefetch as usize),
            InboundConfig::Mqtt(c) => Some(c.receive_maximum as usize),
            InboundConfig::Nats(c) => Some(c.prefetch as usize),
            InboundConfig::Redis(c) => Some(c.prefetch),
            InboundConfig::Database(c) => Some(c.prefetch),
            #[cfg(feature = "sqs")]
            InboundConfig::Sqs(c) => Some(c.prefetch),
            #[cfg(feature = "kafka")]
            InboundConfig::Kafka(c) => Some(c.prefetch),
            _ => None,
        }
    }

    /// The address this adapter listens on, if it listens.
    pub fn listen_address(&self) -> Option<&str> {
        match self {
            InboundConfig::File(_)
            | InboundConfig::Amqp(_)
            | InboundConfig::Amqp1(_)
            | InboundConfig::Mqtt(_)
            | InboundConfig::Nats(_)
            | InboundConfig::Redis(_)
            | InboundConfig::Database(_)
            | InboundConfig::Schedule(_)
            | InboundConfig::HttpPoll(_)
            | InboundConfig::Sftp(_)
            | InboundConfig::Ftp(_)
            | InboundConfig::Sqs(_)
            | InboundConfig::Kafka(_)
            | InboundConfig::Endpoint(_) => None,
            InboundConfig::Http(c) => Some(&c.listen),
            InboundConfig::Tcp(c) => Some(&c.listen),
        }
    }

    /// What is wrong with the settings, found without connecting or binding anything, for
    /// `switchyard check` and the route's load: the kinds whose `build` is free of side
    /// effects are built and dropped.
    pub fn check(&self, cx: &BuildContext) -> Result<(), String> {
        let built = match self {
            InboundConfig::Database(c) => c.build(cx).map(drop),
            InboundConfig::Schedule(c) => c.build(cx).map(drop),
            InboundConfig::HttpPoll(c) => c.build(cx).map(drop),
            InboundConfig::Sftp(c) => c.build(cx).map(drop),
            InboundConfig::Ftp(c) => c.build(cx).map(drop),
            _ => Ok(()),
        };
        built.map_err(|e| format!("{e:#}"))
    }

    /// Builds the adapter; listeners come from `listeners`, where an earlier version of the
    /// route may have left its socket open.
    pub fn build(&self, cx: &BuildContext) -> anyhow::Result<Arc<dyn Inbound>> {
        Ok(match self {
            InboundConfig::File(c) => Arc::new(c.build(cx)?),
            InboundConfig::Http(c) => Arc::new(c.build(cx)?),
            InboundConfig::Tcp(c) => Arc::new(c.build(cx)?),
            InboundConfig::Amqp(c) => Arc::new(c.build(cx)?),
            InboundConfig::Amqp1(c) => Arc::new(c.build(cx)?),
            InboundConfig::Mqtt(c) => Arc::new(c.build(cx)?),
            InboundConfig::Nats(c) => Arc::new(c.build(cx)?),
            InboundConfig::Redis(c) => Arc::new(c.build(cx)?),
            InboundConfig::Database(c) => Arc::new(c.build(cx)?),
            InboundConfig::Schedule(c) => Arc::new(c.build(cx)?),
            InboundConfig::HttpPoll(c) => Arc::new(c.build(cx)?),
            InboundConfig::Sftp(c) => Arc::new(c.build(cx)?),
            InboundConfig::Ftp(c) => Arc::new(c.build(cx)?),
            #[cfg(feature = "sqs")]
            InboundConfig::Sqs(c) => Arc::new(c.build(cx)?),
            #[cfg(not(feature = "sqs"))]
            InboundConfig::Sqs(_) => anyhow::bail!(crate::adapters::broker::NO_SQS),
            #[cfg(feature = "kafka")]
            InboundConfig::Kafka(c) => Arc::new(c.build(cx)?),
            #[cfg(not(feature = "kafka"))]
            InboundConfig::Kafka(_) => anyhow::bail!(crate::adapters::broker::NO_KAFKA),
            InboundConfig::Endpoint(name) => anyhow::bail!("endpoint `{name}` was not resolved"),
        })
    }
}

/// Why a broker delivery is refused before it is stored: larger than `max_size`, or not the
/// declared `content`. Shared by every broker inbound, so the reasons read alike.
pub fn refusal(
    body: &[u8],
    max_size: crate::config::values::ByteSize,
    content: http::Content,
) -> Option<String> {
    if body.len() as u64 > max_size.0 {
        return Some(format!(
            "message of {} bytes is larger than max_size ({} bytes)",
            body.len(),
            max_size.0
        ));
    }
    content.error(body)
}

/// A running inbound adapter.
#[async_trait]
pub trait Inbound: Send + Sync {
    /// Receives messages and submits them through `intake` until `shutdown` is cancelled.
    /// Returns an error only when the adapter cannot go on at all.
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()>;

    /// A message this adapter received failed in the steps: give the original back to the
    /// sender's side the way this adapter does it (the file adapter writes it to its error
    /// directory). The failure is already recorded in the store.
    async fn failed(&self, original: &Message, reason: &str) -> anyhow::Result<()>;

    /// True when the adapter reads something other nodes may see too (a shared directory):
    /// on a shared store one node at a time runs it, and another takes over when that node
    /// dies. Listeners (HTTP, TCP) are each node's own and run everywhere.
    fn exclusive(&self) -> bool {
        false
    }

    /// The adapter's connection to a broker, for the admin API and metrics.
    fn link(&self) -> Option<Arc<crate::adapters::broker::Link>> {
        None
    }

    /// While the route is paused, until `stop`: a listener answers its callers at once that
    /// the route is paused (HTTP: `503` with `Retry-After`), rather than leave them waiting
    /// in the socket's backlog to be taken in at the resume. Others do nothing.
    async fn paused(&self, stop: CancellationToken) {
        let _ = stop;
    }
}
