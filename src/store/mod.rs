//! The transactional message store: the one source of truth about every message.
//!
//! The inbound side acknowledges a sender only after [`Store::insert`] returns (the message is
//! committed). Each later change — the steps' outcome, each delivery attempt — is one recorded
//! transition, so after a crash or restart every unfinished message resumes from the store:
//! messages still `received` run through the steps again, and `pending` deliveries are retried.
//!
//! The trait is small on purpose so that a PostgreSQL backend can sit beside [`sqlite`].

pub mod sqlite;

use crate::message::{Headers, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Where a message is in its life. The last four are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Stored; the steps have not completed yet.
    Received,
    /// Steps done; one or more deliveries are pending.
    Delivering,
    /// Every destination has it.
    Delivered,
    /// A step or the intake refused it (see its error).
    Failed,
    /// A filter dropped it on purpose.
    Filtered,
    /// At least one destination gave up after its last attempt.
    Dead,
}

impl MessageState {
    pub const ALL: [MessageState; 6] = [
        MessageState::Received,
        MessageState::Delivering,
        MessageState::Delivered,
        MessageState::Failed,
        MessageState::Filtered,
        MessageState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Received => "received",
            MessageState::Delivering => "delivering",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Filtered => "filtered",
            MessageState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<MessageState> {
        MessageState::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, MessageState::Received | MessageState::Delivering)
    }
}

/// The outcome of one step, recorded as a transition.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// `steps[0].xml_to_json` and the like.
    pub step: String,
    pub ok: bool,
    pub duration: Duration,
    pub detail: Option<String>,
}

/// What the steps made of a message.
#[derive(Debug, Clone)]
pub enum Processed {
    /// The steps succeeded: store the result and create one pending delivery per destination.
    Routed {
        headers: Headers,
        body: Bytes,
        destinations: Vec<String>,
    },
    /// A step failed the message.
    Failed { error: String },
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: SystemTime,
    },
    /// Failed for good.
    Dead {
        error: String,
    },
}

/// A pending delivery with the processed message it carries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub destination: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub message: Message,
}

/// One delivery attempt as recorded.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub delivery: i64,
    pub message: Uuid,
    pub destination: &'a str,
    /// 1 for the first attempt.
    pub number: u32,
    pub duration: Duration,
    pub outcome: AttemptOutcome,
}

/// A stored message as an operator sees it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: Uuid,
    pub route: String,
    pub route_version: String,
    pub state: MessageState,
    pub headers: Headers,
    pub error: Option<String>,
    pub received_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
#[error("message store: {0}")]
pub struct StoreError(pub String);

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync {
    /// Commits a newly received message. `error` is set when the intake refused it
    /// (`state` is then [`MessageState::Failed`]).
    async fn insert(
        &self,
        msg: &Message,
        route_version: &str,
        state: MessageState,
        error: Option<&str>,
    ) -> StoreResult<()>;

    /// Records the steps' outcomes and the result in one transaction. Returns the message's
    /// new state, or `None` when it was no longer waiting for its steps (processed already),
    /// in which case nothing is recorded: processing a message twice never doubles deliveries.
    async fn finish_steps(
        &self,
        id: Uuid,
        steps: Vec<StepRecord>,
        result: Processed,
    ) -> StoreResult<Option<MessageState>>;

    /// Records a delivery attempt; when it was the message's last open delivery, also moves
    /// the message to its terminal state and returns it.
    async fn record_attempt(&self, attempt: Attempt<'_>) -> StoreResult<Option<MessageState>>;

    /// Messages of `route` still waiting for their steps, oldest first, after `after`.
    async fn received_messages(
        &self,
        route: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;

    /// Pending deliveries of one destination that are due at `now`, oldest first.
    async fn due_deliveries(
        &self,
        route: &str,
        destination: &str,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    /// When the next pending delivery of the destination falls due, if any is pending.
    async fn next_due(&self, route: &str, destination: &str) -> StoreResult<Option<SystemTime>>;

    /// One message's record, if it exists.
    async fn message(&self, id: Uuid) -> StoreResult<Option<StoredMessage>>;

    /// How many messages are in each state (of one route, or of all).
    async fn count_by_state(&self, route: Option<&str>)
        -> StoreResult<BTreeMap<MessageState, u64>>;

    /// Messages oldest first (of one route, or of all), at most `limit`.
    async fn list_messages(
        &self,
        route: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// Flushes and closes; later calls fail.
    async fn close(&self) -> StoreResult<()>;
}
