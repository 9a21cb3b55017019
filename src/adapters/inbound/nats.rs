//! NATS JetStream inbound: a durable pull consumer on a stream, each message acknowledged
//! only after it is committed to the store — the broker contract in
//! [`crate::adapters::broker`].
//!
//! At most `prefetch` messages are unacknowledged at once (the consumer's `max_ack_pending`).
//! While a message is being stored, in-progress acknowledgements keep JetStream from sending
//! it again (`ack_wait`). The acknowledgement is a double ack: the server confirms it, so a
//! message whose ack was lost is known to come again. A redelivered message is recognised by
//! its `Nats-Msg-Id` header, or else by its stream sequence, and recorded as `duplicate`.
//! A message the intake refuses (over `max_size`, not the declared `content`) is recorded as
//! failed and terminated (`+TERM`), so JetStream never sends it again; one JetStream gave up
//! on after `max_deliver` deliveries (a crash loop) is recorded as failed from the server's
//! advisory.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::nats::{self as nats, StreamDecl};
use crate::adapters::broker::{keep_connected, pull_when_free, redact, Link, Tls};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NatsInbound")]
pub struct Config {
    /// The server: `nats://host:4222`, `nats://user:${NATS_PASSWORD}@host:4222`, or
    /// `tls://host:4222`.
    pub url: nats::Url,
    /// The stream to consume.
    pub stream: String,
    /// Create the stream with these settings when it does not exist.
    #[serde(default)]
    pub create_stream: Option<StreamDecl>,
    /// The durable consumer's name: JetStream remembers what it acknowledged under this name
    /// across restarts. Created when missing; an existing one keeps its settings.
    pub consumer: String,
    /// Only messages of these subjects (default: the whole stream). Used when the consumer is
    /// created.
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// Messages unacknowledged at once (default 64): the consumer's `max_ack_pending`, the
    /// bound on what is in flight between the server and the store.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// How long JetStream waits for an acknowledgement before it sends a message again
    /// (default `30s`); in-progress acknowledgements extend it while a message is stored.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Deliveries of one message before JetStream gives up on it (default 10); the engine
    /// then records it as failed. `-1`: no limit.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Largest message accepted (default `1MiB`); larger ones are recorded as failed and
    /// terminated.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// `any` (default), `json` or `xml`: other content is recorded as failed and terminated.
    #[serde(default)]
    pub content: Content,
    /// TLS settings for `tls://` (or a server that requires TLS).
    #[serde(default)]
    pub tls: Tls,
}

fn default_prefetch() -> u32 {
    64
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_deliver() -> i64 {
    10
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<NatsInbound> {
        nats::check(&self.tls).map_err(anyhow::Error::msg)?;
        if self.prefetch == 0 {
            anyhow::bail!("`prefetch` must be at least 1");
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            anyhow::bail!("`max_deliver` must be at least 1, or -1 for no limit");
        }
        if self.ack_wait.0 < std::time::Duration::from_secs(1) {
            anyhow::bail!("`ack_wait` must be at least 1s");
        }
        Ok(NatsInbound {
            link: Arc::new(Link::new(format!(
                "{} stream {} consumer {}",
                redact(&self.url),
                self.stream,
                self.consumer
            ))),
            cfg: Arc::new(self.clone()),
        })
    }
}

pub struct NatsInbound {
    cfg: Arc<Config>,
    link: Arc<Link>,
}

#[async_trait]
impl Inbound for NatsInbound {
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

impl NatsInbound {
    /// One client's life: connect, find or create the stream and the consumer, pull until
    /// the subscription fails (`Err`) or `shutdown` (`Ok`). The client reconnects by itself
    /// in between; messages in hand when it ends are finished first.
    async fn session(&self, intake: &Intake, shutdown: &CancellationToken) -> Result<(), String> {
        let cfg = &self.cfg;
        let name = format!("switchyard {}", intake.route);
        let client = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = nats::connect(&cfg.url, &cfg.tls, &name, self.link.clone()) => c?,
        };
        let js = jetstream::new(client.clone());
        let mut stream = nats::stream(&js, &cfg.stream, cfg.create_stream.as_ref()).await?;
        // Sequences start again in a stream made anew: its creation time keeps the keys of
        // the old one from matching.
        let epoch = stream
            .info()
            .await
            .map_err(|e| format!("cannot read stream `{}`: {e}", cfg.stream))?
            .created
            .unix_timestamp();
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &cfg.consumer,
                pull::Config {
                    durable_name: Some(cfg.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: cfg.ack_wait.0,
                    max_deliver: cfg.max_deliver,
                    max_ack_pending: cfg.prefetch as i64,
                    filter_subject: cfg.filter_subject.clone().unwrap_or_default(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot create consumer `{}`: {e}", cfg.consumer))?;
        let mut gave_up = client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
                cfg.stream, cfg.consumer
            ))
            .await
            .map_err(|e| format!("cannot subscribe to JetStream advisories: {e}"))?;
        tracing::info!(route = %intake.route, stream = %cfg.stream, consumer = %cfg.consumer,
            prefetch = cfg.prefetch, "consuming");
        let mut in_hand = JoinSet::new();
        // Pulls in batches the engine asks for, rather than a continuous subscription: every
        // message the server sent is in hand when a batch ends, so a shutdown or a reload
        // leaves none stranded in a buffer until `ack_wait` runs out.
        let mut idle = false;
        let result = loop {
            while in_hand.try_join_next().is_some() {}
            while let Some(Some(advisory)) = gave_up.next().now_or_never() {
                let (stream, intake) = (stream.clone(), intake.clone());
                in_hand.spawn(async move { given_up(&stream, &intake, &advisory.payload).await });
            }
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let window = cfg.prefetch as usize;
            if window.saturating_sub(in_hand.len()) < pull_when_free(window) {
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = in_hand.join_next() => continue,
                }
            }
            let room = window - in_hand.len();
            // What is there now, at once; when nothing was, wait (up to a second) for one.
            let batch = if idle {
                consumer
                    .batch()
                    .max_messages(1)
                    .expires(WAIT)
                    .messages()
                    .await
            } else {
                // With `expires` the client gives up on a pull whose answer was lost with a
                // connection (5 s after it), instead of waiting for ever.
                consumer
                    .fetch()
                    .max_messages(room)
                    .expires(WAIT)
                    .messages()
                    .await
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => break Err(format!("pulling from `{}` failed: {e}", cfg.consumer)),
            };
            let mut got = 0;
            let mut failed = None;
            while let Some(next) = batch.next().await {
                match next {
                    Ok(msg) => {
                        got += 1;
                        let (cfg, intake) = (cfg.clone(), intake.clone());
                        in_hand.spawn(async move { take(&cfg, &intake, msg, epoch).await });
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            if let Some(e) = failed {
                break Err(format!("pulling from `{}` failed: {e}", cfg.consumer));
            }
            idle = got == 0;
        };
        while in_hand.join_next().await.is_some() {}
        // Unsubscribes and closes the connection once what is buffered went out (the
        // acknowledgements of the last messages).
        let _ = client.drain().await;
        result
    }
}

/// How long one pull waits for a message when there was none: also how long a stop or a
/// reload may wait for the pull in progress (the pull is let finish, never dropped, so no
/// message sent to it waits out `ack_wait`).
const WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Commits one message, then acknowledges it; terminates poison.
async fn take(cfg: &Config, intake: &Intake, msg: jetstream::Message, epoch: i64) {
    let (headers, key) = match msg.info() {
        Ok(info) => {
            let fallback = format!("{}@{epoch}:{}", info.stream, info.stream_sequence);
            (headers(&msg, &info), fallback)
        }
        Err(e) => {
            // Not a JetStream delivery (no ack subject): nothing can be acknowledged.
            tracing::warn!(route = %intake.route, error = %e, "NATS message without JetStream metadata ignored");
            return;
        }
    };
    if let Some(reason) = super::refusal(&msg.payload, cfg.max_size, cfg.content) {
        let reason = format!("{reason}; terminated, JetStream will not send it again");
        match intake.refuse(headers, &reason).await {
            Ok(_) => {
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Err(e) => nak(intake, &msg, &e.to_string()).await,
        }
        return;
    }
    let key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or(key);
    let submit = intake.submit_once(
        headers,
        msg.payload.clone(),
        Some(("broker_message_id".into(), key)),
    );
    tokio::pin!(submit);
    // Tell JetStream the message is being worked on well before `ack_wait` runs out.
    let every = cfg.ack_wait.0 / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let stored = loop {
        tokio::select! {
            stored = &mut submit => break stored,
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    match stored {
        Ok(_) => {
            if let Err(e) = msg.double_ack().await {
                // Committed, not acknowledged: JetStream sends it again and the store records
                // the copy as `duplicate`.
                tracing::warn!(route = %intake.route, error = %e,
                    "message committed but the server did not confirm its acknowledgement; it may be redelivered");
            }
        }
        Err(e) => nak(intake, &msg, &e.to_string()).await,
    }
}

async fn nak(intake: &Intake, msg: &jetstream::Message, error: &str) {
    tracing::warn!(route = %intake.route, error,
        "message not stored; handed back to JetStream for redelivery");
    let _ = msg
        .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
        .await;
}

/// JetStream's advisory that it stopped sending a message after `max_deliver` deliveries:
/// the message never reached the store, so it is recorded as failed, with where it still is.
async fn given_up(stream: &jetstream::stream::Stream, intake: &Intake, advisory: &[u8]) {
    #[derive(Deserialize)]
    struct MaxDeliveries {
        stream: String,
        consumer: String,
        stream_seq: u64,
        deliveries: u64,
    }
    let Ok(a) = serde_json::from_slice::<MaxDeliveries>(advisory) else {
        return;
    };
    let mut headers = Headers::new();
    headers.insert("nats.stream".into(), a.stream.clone());
    headers.insert("nats.stream_seq".into(), a.stream_seq.to_string());
    headers.insert("nats.delivered".into(), a.deliveries.to_string());
    if let Ok(raw) = stream.get_raw_message(a.stream_seq).await {
        headers.insert("nats.subject".into(), raw.subject.to_string());
    }
    let reason = format!(
        "JetStream gave up after {} deliveries (max_deliver) without an acknowledgement; the message is still in stream `{}` at sequence {} (consumer `{}`)",
        a.deliveries, a.stream, a.stream_seq, a.consumer
    );
    if let Err(e) = intake.refuse(headers, &reason).await {
        tracing::error!(route = %intake.route, error = %e, reason, "cannot record a message JetStream gave up on");
    }
}

/// The message's envelope as headers: `nats.*`, its NATS headers as `nats.header.NAME`, and
/// `Content-Type` as `content-type`.
fn headers(msg: &jetstream::Message, info: &jetstream::message::Info<'_>) -> Headers {
    let mut h = Headers::new();
    h.insert("nats.subject".into(), msg.subject.to_string());
    h.insert("nats.stream".into(), info.stream.to_string());
    h.insert("nats.consumer".into(), info.consumer.to_string());
    h.insert("nats.stream_seq".into(), info.stream_sequence.to_string());
    h.insert("nats.delivered".into(), info.delivered.to_string());
    let published = std::time::SystemTime::from(info.published);
    h.insert(
        "nats.published".into(),
        humantime::format_rfc3339_millis(published).to_string(),
    );
    if let Some(map) = &msg.headers {
        for (name, values) in map.iter() {
            let name = name.to_string();
            let value = values
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if name.eq_ignore_ascii_case("content-type") {
                h.insert("content-type".into(), value.clone());
            }
            h.insert(format!("nats.header.{name}"), value);
        }
    }
    h
}
