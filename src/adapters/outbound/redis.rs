//! Redis outbound: appends each message to a stream (`XADD`, the default), or pushes it on a
//! list (`LPUSH`/`RPUSH`, for legacy list queues) or publishes it on a channel (`PUBLISH`).
//! A delivery is done on Redis's reply; an error or a lost connection is a failed attempt,
//! retried by the destination's policy.
//!
//! With `XADD` the message id travels as the field `switchyard-message-id`, so a consuming
//! Switchyard route recognises an entry added again after a lost reply. Redis itself keeps
//! what it acknowledged only as far as its persistence settings (AOF, `appendfsync`) say.
//! `PUBLISH` keeps nothing: a message no subscriber listens to is gone, and counts as
//! delivered — the reply's subscriber count is in the attempt's log.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::redis as redis_broker;
use crate::adapters::broker::{redact, Link, Pace, Tls};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RedisOutbound")]
pub struct Config {
    /// The server: `redis://host:6379/0`, `redis://:${REDIS_PASSWORD}@host:6379`, or
    /// `rediss://host:6380` for TLS.
    pub url: redis_broker::Url,
    /// `xadd` (default), `lpush`, `rpush` or `publish`.
    #[serde(default)]
    pub command: Command,
    /// The stream or list key, or the channel for `publish`; a template:
    /// `orders:{{header.country}}`.
    pub key: Template,
    /// `xadd` only: trim the stream to about this many entries (`MAXLEN ~`).
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// `xadd` only: more fields, templates (`source: "{{header.http.header.x-source}}"`).
    #[serde(default)]
    pub fields: BTreeMap<String, Template>,
    /// `xadd` only: the field holding the body (default `body`).
    #[serde(default = "default_body_field")]
    pub body_field: String,
    /// Longest wait for Redis's reply (default `10s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// TLS settings for `rediss://`.
    #[serde(default)]
    pub tls: Tls,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    #[default]
    Xadd,
    Lpush,
    Rpush,
    Publish,
}

fn default_body_field() -> String {
    "body".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<RedisOutbound> {
        redis_broker::check(&self.tls).map_err(anyhow::Error::msg)?;
        if self.command != Command::Xadd && (self.maxlen.is_some() || !self.fields.is_empty()) {
            anyhow::bail!("`maxlen` and `fields` are for `command: xadd` only");
        }
        let client = redis_broker::client(&self.url, &self.tls).map_err(anyhow::Error::msg)?;
        Ok(RedisOutbound {
            link: Arc::new(Link::idle(format!(
                "{} key {}",
                redact(&self.url),
                self.key.source()
            ))),
            cfg: self.clone(),
            client,
            conn: Mutex::new(None),
            pace: Pace::default(),
        })
    }
}

pub struct RedisOutbound {
    cfg: Config,
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    pace: Pace,
    link: Arc<Link>,
}

impl RedisOutbound {
    /// The open connection (shared by the deliveries in flight), or a new one.
    async fn conn(&self) -> Result<MultiplexedConnection, SendError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connecting =
            redis_broker::connect(&self.client, &self.cfg.url, Some(self.cfg.timeout.0));
        let c = self
            .pace
            .connect(&self.link, connecting)
            .await
            .map_err(SendError::retryable)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The connection broke: the next delivery connects anew.
    async fn lost(&self, error: &str) {
        let mut slot = self.conn.lock().await;
        if slot.take().is_some() {
            self.pace.failed(&self.link, error);
        }
    }

    fn command(&self, msg: &Message, key: &str) -> redis::Cmd {
        let cfg = &self.cfg;
        match cfg.command {
            Command::Xadd => {
                let mut c = redis::cmd("XADD");
                c.arg(key);
                if let Some(n) = cfg.maxlen {
                    c.arg("MAXLEN").arg("~").arg(n);
                }
                c.arg("*")
                    .arg(&cfg.body_field)
                    .arg(msg.body.as_ref())
                    .arg(redis_broker::ID_FIELD)
                    .arg(msg.id.to_string());
                if let Some(ct) = msg.header("content-type") {
                    if !cfg.fields.contains_key("content-type") {
                        c.arg("content-type").arg(ct);
                    }
                }
                for (name, value) in &cfg.fields {
                    c.arg(name).arg(value.render(msg));
                }
                c
            }
            Command::Lpush | Command::Rpush | Command::Publish => {
                let name = match cfg.command {
                    Command::Lpush => "LPUSH",
                    Command::Rpush => "RPUSH",
                    _ => "PUBLISH",
                };
                let mut c = redis::cmd(name);
                c.arg(key).arg(msg.body.as_ref());
                c
            }
        }
    }
}

#[async_trait]
impl Outbound for RedisOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let key = self.cfg.key.render(msg);
        if key.is_empty() {
            return Err(SendError::permanent(format!(
                "the key `{}` rendered empty for this message",
                self.cfg.key.source()
            )));
        }
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<Value> = self.command(msg, &key).query_async(&mut conn).await;
        match reply {
            Ok(v) => {
                let what = match (self.cfg.command, &v) {
                    (Command::Xadd, v) => format!(
                        "added to stream `{key}` as {}",
                        redis_broker::text(v).unwrap_or_default()
                    ),
                    (Command::Publish, Value::Int(n)) => {
                        format!("published on channel `{key}` to {n} subscriber(s)")
                    }
                    (_, Value::Int(n)) => format!("pushed on list `{key}` (now {n} long)"),
                    _ => format!("stored under `{key}`"),
                };
                Ok(Sent(what))
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                let error = format!("{} failed: {e}", self.link.broker);
                self.lost(&error).await;
                Err(SendError::retryable(error))
            }
            // The key holds another type, or the command is refused as written: a retry
            // does not change that.
            Err(e) if matches!(e.code(), Some("WRONGTYPE") | Some("ERR")) => Err(
                SendError::permanent(format!("Redis refused the message for `{key}`: {e}")),
            ),
            Err(e) => Err(SendError::retryable(format!(
                "Redis refused the message for `{key}`: {e}"
            ))),
        }
    }

    /// The multiplexed connection pipelines: a batch's commands go out at once and their
    /// replies are awaited together.
    fn batching(&self) -> Batching {
        Batching::Pipelined
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
