//! What the NATS JetStream inbound and outbound share: the server URL (credentials kept out
//! of logs), connecting — TLS with a CA file, the client's own reconnects reported through a
//! [`Link`] — and the stream either side may create.

use super::{redact, scrub, Link, Tls};
use crate::config::values::Duration;
use async_nats::jetstream;
use serde::Deserialize;
use std::sync::Arc;

/// A NATS URL (`nats://[user:password@]host:4222`, `tls://` for TLS), checked while the
/// route file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(String);

impl std::ops::Deref for Url {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        let known = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
        let parsed = url.parse::<async_nats::ServerAddr>();
        if !known || parsed.is_err() {
            let why = parsed.err().map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(serde::de::Error::custom(format!(
                "`{}` is not a NATS URL{why}; write nats://host:4222, nats://user:password@host:4222 or tls://host:4222",
                redact(&url)
            )));
        }
        Ok(Url(url))
    }
}

crate::config::schema::text_value!(
    Url,
    "A NATS URL (`nats://` or `tls://`).",
    [
        "nats://127.0.0.1:4222",
        "tls://user:${NATS_PASSWORD}@nats.example.com:4222"
    ]
);

fn retention_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "enum": ["limits", "workqueue", "interest"], "default": "limits" })
}

fn storage_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "enum": ["file", "memory"], "default": "file" })
}

/// A stream to create when it does not exist yet. An existing stream is used as it is:
/// change one with `nats stream edit`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamDecl {
    /// The subjects the stream captures (`orders.>`).
    pub subjects: Vec<String>,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a republished copy (default
    /// `2m`, JetStream's own default).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
    /// `limits` (default: kept until a limit), `workqueue` (removed once acknowledged) or
    /// `interest` (removed once every consumer acknowledged it).
    #[serde(default)]
    #[schemars(schema_with = "retention_schema")]
    pub retention: jetstream::stream::RetentionPolicy,
    /// `file` (default) or `memory`.
    #[serde(default)]
    #[schemars(schema_with = "storage_schema")]
    pub storage: jetstream::stream::StorageType,
    /// Oldest message kept (default: no limit).
    #[serde(default)]
    pub max_age: Option<Duration>,
    /// Copies in a cluster (default 1).
    #[serde(default = "one")]
    pub replicas: usize,
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn one() -> usize {
    1
}

impl StreamDecl {
    fn config(&self, name: &str) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: name.to_string(),
            subjects: self.subjects.clone(),
            duplicate_window: self.duplicate_window.0,
            retention: self.retention,
            storage: self.storage,
            max_age: self.max_age.map(|d| d.0).unwrap_or_default(),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// The stream `name`: created from `decl` when it is missing and `decl` is given.
pub async fn stream(
    js: &jetstream::Context,
    name: &str,
    decl: Option<&StreamDecl>,
) -> Result<jetstream::stream::Stream, String> {
    match decl {
        Some(d) => js
            .get_or_create_stream(d.config(name))
            .await
            .map_err(|e| format!("cannot create stream `{name}`: {e}")),
        None => js.get_stream(name).await.map_err(|e| {
            format!("cannot use stream `{name}`: {e} (create it, or add `create_stream:`)")
        }),
    }
}

/// Checks what can be checked before connecting.
pub fn check(tls: &Tls) -> Result<(), String> {
    super::amqp::check(tls)
}

/// Connects to the server. The client then reconnects by itself for as long as it lives,
/// waiting like [`super::Backoff`]; `link` follows its state.
pub async fn connect(
    url: &Url,
    tls: &Tls,
    name: &str,
    link: Arc<Link>,
) -> Result<async_nats::Client, String> {
    let events = link.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(std::time::Duration::from_secs(10))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exp = attempts.min(8) as u32;
            std::time::Duration::from_millis(200 * 2u64.pow(exp)).min(super::Backoff::MAX)
        })
        .event_callback(move |event| {
            let link = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => link.up(),
                    async_nats::Event::Disconnected => {
                        link.down("disconnected", std::time::Duration::from_millis(200))
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(broker = %link.broker, error = %e, "NATS server error")
                    }
                    _ => {}
                }
            }
        });
    if url.starts_with("tls://") || tls.ca.is_some() {
        let config = crate::tls::client_config(tls.ca.as_deref()).map_err(|e| e.to_string())?;
        options = options.require_tls(true).tls_client_config(config);
    }
    let secret = url
        .parse::<async_nats::ServerAddr>()
        .ok()
        .and_then(|a| a.password().map(str::to_string));
    options.connect(url.as_ref() as &str).await.map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            redact(url),
            scrub(e, secret.as_deref())
        )
    })
}
