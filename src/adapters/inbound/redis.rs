//! Redis Streams inbound: reads a stream through a consumer group (`XREADGROUP`) and
//! acknowledges each entry (`XACK`) only after it is committed to the store — the broker
//! contract in [`crate::adapters::broker`].
//!
//! - At most `prefetch` entries are in hand at once; blocking reads have a connection of
//!   their own, acknowledgements another.
//! - Entries delivered to this consumer and never acknowledged (a crash, a lost connection)
//!   are read again first, at every (re)connect; entries pending at another consumer for
//!   longer than `claim_idle` (a consumer that died) are taken over with `XAUTOCLAIM`. A copy
//!   is recognised by its `id_field`, or else by its entry id, and recorded as `duplicate`.
//! - An entry delivered more than `max_deliver` times, or refused by the intake (over
//!   `max_size`, not the declared `content`), is recorded as failed and acknowledged, so it
//!   does not come back for ever; an entry trimmed from the stream (`MAXLEN`) while it was
//!   pending is recorded as failed too — its content is gone at the broker.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::redis::{self as redis_broker, Entry};
use crate::adapters::broker::{keep_connected, pull_when_free, redact, Link, Tls};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RedisInbound")]
pub struct Config {
    /// The server: `redis://host:6379/0`, `redis://:${REDIS_PASSWORD}@host:6379`, or
    /// `rediss://host:6380` for TLS.
    pub url: redis_broker::Url,
    /// The stream's key.
    pub stream: String,
    /// The consumer group. Routes (and nodes) in one group share the stream's entries.
    pub group: String,
    /// This reader's name in the group (default `switchyard`). Keep it stable: entries it
    /// read and did not acknowledge are read again under it after a restart. Give each node
    /// its own (`switchyard-${HOSTNAME}`).
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Create the group (and the stream) when it does not exist (default true).
    #[serde(default = "yes")]
    pub create_group: bool,
    /// Where a group created here starts: `earliest` (default: every entry in the stream)
    /// or `latest` (only entries added from then on).
    #[serde(default)]
    pub start: Start,
    /// Entries in hand at once (default 64): the bound on what is in flight between Redis
    /// and the store.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Entries pending at any consumer of the group for longer than this are taken over
    /// (default `1m`): a consumer that died leaves none behind for long.
    #[serde(default = "default_claim_idle")]
    pub claim_idle: Duration,
    /// Deliveries of one entry before it is recorded as failed and acknowledged
    /// (default 10).
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u64,
    /// The field holding the message body (default `body`). An entry without it becomes a
    /// JSON object of all its fields.
    #[serde(default = "default_body_field")]
    pub body_field: String,
    /// The field carrying a stable message id (default `switchyard-message-id`, which
    /// Switchyard's Redis destinations set). Without it, the entry id identifies a copy.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Largest message accepted (default `1MiB`); larger ones are recorded as failed.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed.
    #[serde(default)]
    pub content: Content,
    /// TLS settings for `rediss://`.
    #[serde(default)]
    pub tls: Tls,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

fn default_consumer() -> String {
    "switchyard".into()
}
fn yes() -> bool {
    true
}
fn default_prefetch() -> usize {
    64
}
fn default_claim_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_deliver() -> u64 {
    10
}
fn default_body_field() -> String {
    "body".into()
}
fn default_id_field() -> String {
    redis_broker::ID_FIELD.into()
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<RedisInbound> {
        redis_broker::check(&self.tls).map_err(anyhow::Error::msg)?;
        if self.prefetch == 0 {
            anyhow::bail!("`prefetch` must be at least 1");
        }
        if self.max_deliver == 0 {
            anyhow::bail!("`max_deliver` must be at least 1");
        }
        if self.claim_idle.0 < std::time::Duration::from_secs(1) {
            anyhow::bail!("`claim_idle` must be at least 1s");
        }
        Ok(RedisInbound {
            link: Arc::new(Link::new(format!(
                "{} stream {} group {}",
                redact(&self.url),
                self.stream,
                self.group
            ))),
            cfg: Arc::new(self.clone()),
        })
    }
}

pub struct RedisInbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

#[async_trait]
impl Inbound for RedisInbound {
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

/// How long one blocking read waits for new entries: also how long a shutdown may wait.
const BLOCK_MS: u64 = 1000;

/// One entry in hand, and how often Redis delivered it (known for claimed entries).
struct Work {
    entry: Entry,
    delivered: Option<u64>,
}

impl RedisInbound {
    /// One pair of connections' life: read (own pending entries first, then new ones, and
    /// claimed ones now and then) until a command fails (`Err`) or `shutdown` (`Ok`).
    /// Entries in hand when it ends are finished first.
    async fn session(&self, intake: &Intake, shutdown: &CancellationToken) -> Result<(), String> {
        let cfg = &self.cfg;
        let client = redis_broker::client(&cfg.url, &cfg.tls)?;
        let connecting = async {
            // A blocking read answers within BLOCK_MS; a connection that died without a
            // word is noticed 10 s after that.
            let wait = std::time::Duration::from_millis(BLOCK_MS + 10_000);
            let reader = redis_broker::connect(&client, &cfg.url, Some(wait)).await?;
            let acks =
                redis_broker::connect(&client, &cfg.url, Some(std::time::Duration::from_secs(10)))
                    .await?;
            Ok::<_, String>((reader, acks))
        };
        let (mut reader, mut acks) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connecting => c?,
        };
        if cfg.create_group {
            let start = match cfg.start {
                Start::Earliest => "0",
                Start::Latest => "$",
            };
            let made: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&cfg.stream)
                .arg(&cfg.group)
                .arg(start)
                .arg("MKSTREAM")
                .query_async(&mut acks)
                .await;
            if let Err(e) = made {
                if e.code() != Some("BUSYGROUP") {
                    return Err(format!(
                        "cannot create group `{}` on stream `{}`: {e}",
                        cfg.group, cfg.stream
                    ));
                }
            }
        }
        self.link.up();
        tracing::info!(route = %intake.route, stream = %cfg.stream, group = %cfg.group,
            consumer = %cfg.consumer, prefetch = cfg.prefetch, "consuming");
        let in_hand_ids: Arc<Mutex<HashSet<String>>> = Default::default();
        let mut in_hand = JoinSet::new();
        // This consumer's own pending entries are read first, from the start of its list.
        let mut pending_after = Some("0-0".to_string());
        let mut claim_cursor = "0-0".to_string();
        let mut last_claim = tokio::time::Instant::now();
        let result: Result<(), String> = loop {
            while in_hand.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break Ok(());
            }
            if cfg.prefetch.saturating_sub(in_hand.len()) < pull_when_free(cfg.prefetch) {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = in_hand.join_next() => continue,
                }
            }
            let room = cfg.prefetch - in_hand.len();
            let mut work = Vec::new();
            if last_claim.elapsed() >= cfg.claim_idle.0 / 2 {
                last_claim = tokio::time::Instant::now();
                match claim(cfg, &mut acks, &mut claim_cursor, room, &in_hand_ids).await {
                    Ok(claimed) => work = claimed,
                    Err(e) => break Err(e),
                }
            }
            if work.is_empty() {
                let mut read = redis::cmd("XREADGROUP");
                read.arg("GROUP")
                    .arg(&cfg.group)
                    .arg(&cfg.consumer)
                    .arg("COUNT")
                    .arg(room);
                if pending_after.is_none() {
                    read.arg("BLOCK").arg(BLOCK_MS);
                }
                read.arg("STREAMS")
                    .arg(&cfg.stream)
                    .arg(pending_after.as_deref().unwrap_or(">"));
                let reply: Value = match read.query_async(&mut reader).await {
                    Ok(v) => v,
                    Err(e) => break Err(format!("reading stream `{}` failed: {e}", cfg.stream)),
                };
                let entries = redis_broker::read_entries(&reply);
                if pending_after.is_some() {
                    // Redelivered: they were read before and never acknowledged.
                    pending_after = entries.last().map(|e| e.id.clone());
                }
                work = entries
                    .into_iter()
                    .map(|entry| Work {
                        entry,
                        delivered: None,
                    })
                    .collect();
            }
            for w in work {
                if let Ok(mut ids) = in_hand_ids.lock() {
                    ids.insert(w.entry.id.clone());
                }
                let (cfg, intake, acks, ids) = (
                    cfg.clone(),
                    intake.clone(),
                    acks.clone(),
                    in_hand_ids.clone(),
                );
                in_hand.spawn(async move {
                    let id = w.entry.id.clone();
                    take(&cfg, &intake, acks, w).await;
                    if let Ok(mut ids) = ids.lock() {
                        ids.remove(&id);
                    }
                });
            }
        };
        while in_hand.join_next().await.is_some() {}
        result
    }
}

/// Takes over entries pending longer than `claim_idle` at any consumer of the group (this
/// one included: an entry whose commit failed), with how often each was delivered. Entries
/// gone from the stream come back without fields.
async fn claim(
    cfg: &Config,
    conn: &mut MultiplexedConnection,
    cursor: &mut String,
    room: usize,
    in_hand: &Mutex<HashSet<String>>,
) -> Result<Vec<Work>, String> {
    let failed = |e: redis::RedisError| format!("claiming idle entries of `{}`: {e}", cfg.stream);
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg(&cfg.consumer)
        .arg(cfg.claim_idle.0.as_millis() as u64)
        .arg(cursor.as_str())
        .arg("COUNT")
        .arg(room)
        .query_async(conn)
        .await
        .map_err(failed)?;
    let Value::Array(parts) = reply else {
        return Ok(Vec::new());
    };
    *cursor = parts
        .first()
        .and_then(redis_broker::text)
        .unwrap_or_else(|| "0-0".into());
    let mut entries = parts
        .get(1)
        .map(redis_broker::entry_list)
        .unwrap_or_default();
    // Redis 7 lists the ids of claimed entries that no longer exist apart.
    if let Some(Value::Array(gone)) = parts.get(2) {
        entries.extend(
            gone.iter()
                .filter_map(redis_broker::text)
                .map(|id| Entry { id, fields: None }),
        );
    }
    if let Ok(ids) = in_hand.lock() {
        entries.retain(|e| !ids.contains(&e.id));
    }
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // How often each was delivered: XPENDING over the claimed range, for this consumer.
    let (first, last) = entries
        .iter()
        .fold((None::<&str>, None::<&str>), |(lo, hi), e| {
            let id = e.id.as_str();
            let older = |a: &str, b: &str| id_key(a) < id_key(b);
            (
                Some(lo.filter(|l| older(l, id)).unwrap_or(id)),
                Some(hi.filter(|h| older(id, h)).unwrap_or(id)),
            )
        });
    let pending: Value = redis::cmd("XPENDING")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg(first.unwrap_or("-"))
        .arg(last.unwrap_or("+"))
        .arg(entries.len() * 2)
        .arg(&cfg.consumer)
        .query_async(conn)
        .await
        .map_err(failed)?;
    let mut counts = HashMap::new();
    if let Value::Array(rows) = pending {
        for row in rows {
            if let Value::Array(cols) = row {
                if let (Some(id), Some(Value::Int(n))) =
                    (cols.first().and_then(redis_broker::text), cols.get(3))
                {
                    counts.insert(id, *n as u64);
                }
            }
        }
    }
    Ok(entries
        .into_iter()
        .map(|entry| Work {
            delivered: counts.get(&entry.id).copied(),
            entry,
        })
        .collect())
}

/// An entry id (`1700000000000-3`) as numbers, for ordering.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Commits one entry (or records it as failed), then acknowledges it. An entry that could
/// not be recorded at all stays pending and is claimed again after `claim_idle`.
async fn take(cfg: &Config, intake: &Intake, mut acks: MultiplexedConnection, work: Work) {
    let Work { entry, delivered } = work;
    let mut headers = Headers::new();
    headers.insert("redis.stream".into(), cfg.stream.clone());
    headers.insert("redis.id".into(), entry.id.clone());
    if let Some(n) = delivered {
        headers.insert("redis.delivered".into(), n.to_string());
    }
    let recorded = match entry.fields {
        None => {
            let reason = format!(
                "entry {} was removed from stream `{}` (MAXLEN trimming or XDEL) while it was pending, before it was stored: its content is lost at the broker",
                entry.id, cfg.stream
            );
            tracing::warn!(route = %intake.route, reason, "stream entry lost at the broker");
            intake.refuse(headers, &reason).await.map(drop)
        }
        Some(fields) => {
            let (body, key) = message(cfg, &entry.id, fields, &mut headers);
            let refusal = match delivered {
                Some(n) if n > cfg.max_deliver => Some(format!(
                    "entry {} was delivered {n} times without being stored (max_deliver {})",
                    entry.id, cfg.max_deliver
                )),
                _ => super::refusal(&body, cfg.max_size, cfg.content),
            };
            match refusal {
                Some(reason) => intake.refuse(headers, &reason).await.map(drop),
                None => intake
                    .submit_once(headers, body, Some(("broker_message_id".into(), key)))
                    .await
                    .map(drop),
            }
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(route = %intake.route, error = %e, id = %entry.id,
            "stream entry not stored; it stays pending and is claimed again after claim_idle");
        return;
    }
    let acked: redis::RedisResult<Value> = redis::cmd("XACK")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg(&entry.id)
        .query_async(&mut acks)
        .await;
    if let Err(e) = acked {
        tracing::warn!(route = %intake.route, error = %e, id = %entry.id,
            "entry committed but its XACK failed; it will be read again and recorded as duplicate");
    }
}

/// The body of an entry (its `body_field`, or all fields as a JSON object), its other fields
/// as headers (`redis.field.NAME`), and the key that identifies a copy.
fn message(
    cfg: &Config,
    id: &str,
    fields: Vec<(String, Vec<u8>)>,
    headers: &mut Headers,
) -> (Bytes, String) {
    let mut body = None;
    let mut key = None;
    let mut all = serde_json::Map::new();
    for (name, value) in fields {
        if name == cfg.body_field && body.is_none() {
            body = Some(Bytes::from(value));
            continue;
        }
        let text = String::from_utf8_lossy(&value).into_owned();
        if name == cfg.id_field && !text.is_empty() {
            key = Some(text.clone());
        }
        if name.eq_ignore_ascii_case("content-type") {
            headers.insert("content-type".into(), text.clone());
        }
        headers.insert(format!("redis.field.{name}"), text.clone());
        all.insert(name, serde_json::Value::String(text));
    }
    let body = body.unwrap_or_else(|| {
        headers.insert("content-type".into(), "application/json".into());
        Bytes::from(serde_json::Value::Object(all).to_string())
    });
    (body, key.unwrap_or_else(|| format!("{}:{id}", cfg.stream)))
}
