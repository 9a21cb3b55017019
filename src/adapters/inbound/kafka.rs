//! Apache Kafka inbound: a member of a consumer group, whose offsets are committed only after
//! the records below them are committed to the store — the broker contract in
//! [`crate::adapters::broker`].
//!
//! Records are stored up to `prefetch` at a time. A partition's offset moves past a record
//! only once that record and every record before it in the partition are in the store, so a
//! crash re-reads what was not yet committed and nothing else; offsets are committed every
//! `commit_interval`, when partitions are revoked, and at a stop. A record read again is
//! recognised by its `switchyard-message-id` header, or else by topic, partition, offset and
//! timestamp, and recorded as `duplicate`. A record the intake refuses (over `max_size`, not
//! the declared `content`) is recorded as failed and passed. When the store cannot take a
//! record, the adapter tries again with backoff and the partition's offset stays where it is.
//!
//! Several routes, or several nodes on one PostgreSQL store, in one group share the topic's
//! partitions: the group coordinator gives each partition to one member at a time, for as
//! long as that member keeps its session (`session_timeout`).

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::kafka::{record_id, Connection, Context, Sasl};
use crate::adapters::broker::{Backoff, Link, LinkState, Tls, ID_NAME};
use crate::config::values::{ByteSize, Duration};
use crate::message::Headers;
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message, OwnedMessage};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "KafkaInbound")]
pub struct Config {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topics to consume; a name starting with `^` is a regular expression.
    pub topics: Vec<String>,
    /// The consumer group (`group.id`): Kafka remembers the group's offsets across restarts,
    /// and shares the partitions among the group's members.
    pub group: String,
    /// Where a group without a committed offset starts: `earliest` (default: nothing already
    /// in the topic is missed) or `latest`.
    #[serde(default)]
    pub start: Start,
    /// Records in hand at once, read but not yet committed to the store (default 256).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// How often the group's offsets are committed to Kafka (default `1s`): what a crash
    /// makes the engine read again, and record as duplicates.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Duration,
    /// How long the group waits for a member that stopped answering before it gives that
    /// member's partitions to another (default `10s`).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: Duration,
    /// Largest record accepted (default `1MiB`, Kafka's own default); larger ones are recorded
    /// as failed and passed.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed and passed.
    #[serde(default)]
    pub content: Content,
    /// SASL authentication (PLAIN, SCRAM).
    #[serde(default)]
    pub sasl: Option<Sasl>,
    /// TLS: `tls: {}` for the system's roots, `tls: { ca: ca.pem }` for a private CA.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// librdkafka settings, which override the engine's (`fetch.min.bytes: "1024"`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a new consumer group starts reading.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

fn default_prefetch() -> usize {
    256
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
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

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<KafkaInbound> {
        let connection = self.connection();
        connection.check().map_err(anyhow::Error::msg)?;
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            anyhow::bail!("`topics` needs at least one topic name");
        }
        if self.group.trim().is_empty() {
            anyhow::bail!("`group` must not be empty");
        }
        if self.prefetch == 0 {
            anyhow::bail!("`prefetch` must be at least 1");
        }
        if self.commit_interval.0 < std::time::Duration::from_millis(10) {
            anyhow::bail!("`commit_interval` must be at least 10ms");
        }
        Ok(KafkaInbound {
            link: Arc::new(Link::new(format!(
                "{} group {} topics {}",
                connection.describe(),
                self.group,
                self.topics.join(",")
            ))),
            cfg: Arc::new(self.clone()),
        })
    }

    /// The consumer's librdkafka settings: offsets stored by the adapter once a record is
    /// committed, and committed by librdkafka every `commit_interval` and on a revoke.
    fn client_config(&self) -> rdkafka::ClientConfig {
        let start = match self.start {
            Start::Earliest => "earliest",
            Start::Latest => "latest",
        };
        // librdkafka reads ahead on its own, up to `queued_kib` (a bound on the route's
        // memory). When a fetch leaves its queue above that, it waits `fetch.queue.backoff.ms`
        // before the next: librdkafka's default, a second, idled the consumer most of the
        // time — with 4 MiB, one fetch from three partitions overshot it and the intake ran at
        // 3,500 records/s against 21,000 with 16 MiB and 10 ms (docs/performance.md).
        let queued_kib = (self.max_size.0 / 1024 * 4).clamp(QUEUED_KIB_MIN, 65536);
        self.connection().config(&[
            ("group.id", self.group.clone()),
            ("client.id", format!("switchyard-{}", self.group)),
            ("enable.auto.commit", "true".into()),
            ("enable.auto.offset.store", "false".into()),
            (
                "auto.commit.interval.ms",
                self.commit_interval.0.as_millis().to_string(),
            ),
            ("auto.offset.reset", start.into()),
            (
                "session.timeout.ms",
                self.session_timeout.0.as_millis().to_string(),
            ),
            (
                "heartbeat.interval.ms",
                (self.session_timeout.0.as_millis() / 3)
                    .max(100)
                    .to_string(),
            ),
            ("queued.max.messages.kbytes", queued_kib.to_string()),
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string()),
            (
                "fetch.message.max.bytes",
                self.max_size.0.clamp(1024, 1 << 30).to_string(),
            ),
        ])
    }
}

/// The least librdkafka may read ahead, in KiB: above what one fetch of a few partitions
/// brings (1 MiB a partition), so the queue does not overshoot its bound after every fetch.
const QUEUED_KIB_MIN: u64 = 16 * 1024;
/// How long librdkafka waits to fetch again when its read-ahead is full.
const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

pub struct KafkaInbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

/// Where each partition's committed offset may move: the records in hand, and the highest
/// offset stored. The offset moves to just below the lowest record still in hand.
#[derive(Default)]
struct Positions {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Default)]
struct Partition {
    in_hand: BTreeSet<i64>,
    /// The lowest offset read: nothing below it is this consumer's to commit.
    first: Option<i64>,
    done: i64,
    /// The last offset handed to librdkafka to commit (the record's own; it commits +1).
    stored: Option<i64>,
}

impl Positions {
    fn take(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_default();
        p.in_hand.insert(offset);
        p.first = Some(p.first.map_or(offset, |f| f.min(offset)));
    }

    /// A record is in the store: the offset the partition may now move to, if it moved.
    fn done(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_string(), partition))?;
        p.in_hand.remove(&offset);
        p.done = p.done.max(offset);
        let to = match p.in_hand.first() {
            Some(&lowest) => lowest - 1,
            None => p.done,
        };
        if p.stored.is_some_and(|s| s >= to) || p.first.is_none_or(|f| to < f) {
            return None;
        }
        p.stored = Some(to);
        Some(to)
    }
}

#[async_trait]
impl Inbound for KafkaInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let context = Context {
            link: self.link.clone(),
            route: intake.route.clone(),
        };
        let consumer: StreamConsumer<Context> = cfg
            .client_config()
            .create_with_context(context)
            .map_err(|e| anyhow::anyhow!("cannot make a Kafka consumer: {e}"))?;
        let consumer = Arc::new(consumer);
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
        let positions = Arc::new(Mutex::new(Positions::default()));
        let room = Arc::new(tokio::sync::Semaphore::new(cfg.prefetch));
        let mut in_hand = JoinSet::new();
        loop {
            while in_hand.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = room.clone().acquire_owned() => p?,
            };
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = consumer.recv() => Some(r.map(|m| m.detach())),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => None,
            };
            match received {
                None => {
                    if !self.link.is_up() {
                        self.probe(&consumer).await;
                    }
                }
                Some(Err(e)) => {
                    // librdkafka tells of a lost connection here too, and reconnects by
                    // itself: wait a moment, not a backoff.
                    if self.link.status().state != LinkState::Down {
                        self.link.down(
                            &format!("reading from Kafka failed: {e}"),
                            std::time::Duration::ZERO,
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
                Some(Ok(record)) => {
                    if !self.link.is_up() {
                        self.link.up();
                    }
                    let (topic, partition, offset) = (
                        record.topic().to_string(),
                        record.partition(),
                        record.offset(),
                    );
                    lock(&positions).take(&topic, partition, offset);
                    let (cfg, intake, shutdown) = (cfg.clone(), intake.clone(), shutdown.clone());
                    let (positions, consumer) = (positions.clone(), consumer.clone());
                    in_hand.spawn(async move {
                        let _permit = permit;
                        if take(&cfg, &intake, record, &shutdown).await {
                            let to = lock(&positions).done(&topic, partition, offset);
                            if let Some(to) = to {
                                // A partition revoked meanwhile refuses it: its new owner
                                // reads the record again and finds it a duplicate.
                                let _ = consumer.store_offset(&topic, partition, to);
                            }
                        }
                    });
                }
            }
        }
        while in_hand.join_next().await.is_some() {}
        // Commit what is stored, then leave the group (both block: librdkafka's own calls).
        let route = intake.route.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                if !matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::NoOffset)
                ) {
                    tracing::warn!(route, error = %e,
                        "offsets not committed at the stop; the records after them will be read again and recorded as duplicates");
                }
            }
            drop(consumer);
        })
        .await?;
        Ok(())
    }

    async fn failed(
        &self,
        _original: &crate::message::Message,
        _reason: &str,
    ) -> anyhow::Result<()> {
        Ok(()) // passed after the commit; the failure is in the store
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

impl KafkaInbound {
    /// Asks the cluster for its metadata, to learn that a lost connection is back while no
    /// records flow.
    async fn probe(&self, consumer: &Arc<StreamConsumer<Context>>) {
        let c = consumer.clone();
        let answered = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, std::time::Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if answered && !self.link.is_up() {
            self.link.up();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores one record (or records it as refused); true once it is in the store. A store
/// failure is tried again until it works or the route stops.
async fn take(
    cfg: &Config,
    intake: &Intake,
    r: OwnedMessage,
    shutdown: &CancellationToken,
) -> bool {
    let headers = headers(&r);
    let body = Bytes::copy_from_slice(r.payload().unwrap_or_default());
    let refusal =
        super::refusal(&body, cfg.max_size, cfg.content).map(|why| format!("{why}; passed"));
    let key = header(&r, ID_NAME).unwrap_or_else(|| record_id(&r));
    let mut backoff = Backoff::default();
    loop {
        let stored = match &refusal {
            Some(why) => intake.refuse(headers.clone(), why).await.map(drop),
            None => intake
                .submit_once(
                    headers.clone(),
                    body.clone(),
                    Some(("broker_message_id".into(), key.clone())),
                )
                .await
                .map(drop),
        };
        match stored {
            Ok(()) => return true,
            Err(e) => {
                let wait = backoff.wait();
                tracing::warn!(route = %intake.route, error = %e, topic = r.topic(),
                    partition = r.partition(), offset = r.offset(), retry_in = ?wait,
                    "record not stored; its partition's offset stays until it is");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn header(r: &OwnedMessage, name: &str) -> Option<String> {
    let hs = r.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The record's envelope as headers: `kafka.topic`, `kafka.partition`, `kafka.offset`,
/// `kafka.timestamp` (milliseconds), `kafka.key` (text; `kafka.key_base64` when it is not
/// UTF-8), each record header as `kafka.header.NAME`, and a `content-type` header as
/// `content-type`.
fn headers(r: &OwnedMessage) -> Headers {
    use base64::Engine as _;
    let mut h = Headers::new();
    h.insert("kafka.topic".into(), r.topic().to_string());
    h.insert("kafka.partition".into(), r.partition().to_string());
    h.insert("kafka.offset".into(), r.offset().to_string());
    if let Some(ts) = r.timestamp().to_millis() {
        h.insert("kafka.timestamp".into(), ts.to_string());
    }
    if let Some(key) = r.key() {
        match std::str::from_utf8(key) {
            Ok(text) => h.insert("kafka.key".into(), text.to_string()),
            Err(_) => h.insert(
                "kafka.key_base64".into(),
                base64::engine::general_purpose::STANDARD.encode(key),
            ),
        };
    }
    if let Some(hs) = r.headers() {
        for header in hs.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if header.key.eq_ignore_ascii_case("content-type") {
                h.insert("content-type".into(), value.clone());
            }
            h.insert(format!("kafka.header.{}", header.key), value);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-ahead stays bounded, and a full one is fetched again soon (librdkafka's
    /// default of a second cut the intake to a sixth: docs/performance.md, "Kafka").
    #[test]
    fn the_consumer_reads_ahead_within_a_bound_and_refills_it_soon() {
        let cfg = |max_size: &str, options: &str| -> Config {
            crate::config::yaml::parse_str(&format!(
                "{{ brokers: [ \"127.0.0.1:9092\" ], topics: [ t ], group: g, max_size: {max_size}, options: {{ {options} }} }}"
            ))
            .expect("a valid config")
        };
        let read_ahead = |c: &Config| {
            let c = c.client_config();
            (
                c.get("queued.max.messages.kbytes").map(str::to_string),
                c.get("fetch.queue.backoff.ms").map(str::to_string),
            )
        };
        let some = |kib: &str, ms: &str| (Some(kib.to_string()), Some(ms.to_string()));
        assert_eq!(read_ahead(&cfg("1MiB", "")), some("16384", "10"));
        assert_eq!(read_ahead(&cfg("8MiB", "")), some("32768", "10"));
        assert_eq!(read_ahead(&cfg("1GiB", "")), some("65536", "10"));
        // The route's own settings win.
        assert_eq!(
            read_ahead(&cfg("1MiB", "fetch.queue.backoff.ms: \"500\"")),
            some("16384", "500")
        );
    }

    #[test]
    fn the_offset_moves_only_past_records_all_stored() {
        let mut p = Positions::default();
        for o in 10..14 {
            p.take("t", 0, o);
        }
        // 11 and 12 done first: 10 is still in hand, nothing moves.
        assert_eq!(p.done("t", 0, 11), None);
        assert_eq!(p.done("t", 0, 12), None);
        assert_eq!(p.done("t", 0, 10), Some(12));
        assert_eq!(p.done("t", 0, 13), Some(13));
        // A record read again below the stored offset never moves it back.
        p.take("t", 0, 11);
        assert_eq!(p.done("t", 0, 11), None);
        // Partitions are apart.
        p.take("t", 1, 0);
        assert_eq!(p.done("t", 1, 0), Some(0));
        assert_eq!(p.done("x", 0, 5), None);
    }
}
