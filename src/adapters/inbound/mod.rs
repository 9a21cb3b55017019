//! Inbound adapters: where messages come from.
//!
//! An adapter receives bytes from a sender, hands them to [`Intake::submit`] — which returns
//! only once the message is committed to the store — and only then acknowledges the sender
//! (moves the file away, answers 2xx, sends an ACK). That order is the engine's first promise.

pub mod file;

use crate::message::{Headers, Message};
use crate::store::{MessageState, Store, StoreError};
use crate::telemetry;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The `from:` entry of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundConfig {
    /// Picks up files from a watched directory.
    File(file::Config),
}

impl InboundConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            InboundConfig::File(_) => "file",
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
        }
    }

    pub fn build(&self) -> anyhow::Result<Arc<dyn Inbound>> {
        Ok(match self {
            InboundConfig::File(c) => Arc::new(c.build()?),
        })
    }
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
}

/// The adapter's way into the store and on to the route's steps.
#[derive(Clone)]
pub struct Intake {
    pub(crate) route: String,
    pub(crate) version: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) queue: mpsc::Sender<Message>,
}

impl Intake {
    pub fn new(
        route: &str,
        version: &str,
        store: Arc<dyn Store>,
        queue: mpsc::Sender<Message>,
    ) -> Intake {
        Intake {
            route: route.to_string(),
            version: version.to_string(),
            store,
            queue,
        }
    }

    /// Commits a new message and queues it for the steps. When this returns `Ok`, the message
    /// is durable and the adapter may acknowledge the sender. Waits while the route's queue is
    /// full (backpressure), before storing anything.
    pub async fn submit(&self, headers: Headers, body: Bytes) -> Result<Uuid, StoreError> {
        let permit =
            self.queue.reserve().await.map_err(|_| {
                StoreError("route is stopping; the message was not accepted".into())
            })?;
        let mut msg = Message::new(&self.route, body);
        msg.headers = headers;
        self.store
            .insert(&msg, &self.version, MessageState::Received, None)
            .await?;
        telemetry::received(&msg);
        let id = msg.id;
        permit.send(msg);
        Ok(id)
    }

    /// Records a message the adapter could not take in (too large, unreadable) as failed,
    /// with `reason`; the body is not stored.
    pub async fn refuse(&self, headers: Headers, reason: &str) -> Result<Uuid, StoreError> {
        let mut msg = Message::new(&self.route, Bytes::new());
        msg.headers = headers;
        self.store
            .insert(&msg, &self.version, MessageState::Failed, Some(reason))
            .await?;
        telemetry::refused(&msg, reason);
        Ok(msg.id)
    }
}
