//! The transactional message store: the one source of truth about every message.
//!
//! The inbound side acknowledges a sender only after the message is committed
//! ([`Processing::insert_processed`], with what its steps made of it, or
//! [`Processing::insert`]). Each later change — each delivery attempt — is one recorded
//! transition, so after a crash or restart every unfinished message resumes from the store:
//! messages still `received` run through the steps again, and `pending` deliveries are retried.
//!
//! A store is three traits: [`Processing`] (what the engine needs), [`Operations`] (what
//! operators need) and [`Maintenance`] (retention); [`Store`] is all three. Which rows each
//! write changes is decided once, in `plan`. Two backends implement them, each a folder with
//! a file per trait: [`sqlite`] (embedded, one engine per file) and [`postgres`] (several
//! engines — nodes — on one database). Work is *claimed*: a message waiting for its steps and
//! a due delivery belong to one node at a time, under a lease the node renews
//! ([`Processing::renew_leases`]); when a node dies, its lease runs out and another node takes
//! its work over. With SQLite the only node is the engine holding the file's lock.

mod contract;
mod keys;
pub(crate) mod plan;
pub mod postgres;
pub mod sqlite;

pub use contract::*;
pub(crate) use keys::duplicate_of;
pub use keys::{Key, KeyScope};

pub use crate::message::MessageState;
use crate::message::{Headers, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Where the message store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store: one engine per file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of engines.
    Postgres(String),
}

impl StoreLocation {
    pub fn parse(s: &str) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres(s.to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "{}", p.display()),
            StoreLocation::Postgres(url) => write!(f, "{}", postgres::redacted(url)),
        }
    }
}

/// What a delivery is for. Only `Main` deliveries decide the message's final state; a
/// dead-letter or wire-tap copy never changes the main flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    Main,
    DeadLetter,
    WireTap,
}

impl DeliveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Main => "main",
            DeliveryKind::DeadLetter => "dead_letter",
            DeliveryKind::WireTap => "wire_tap",
        }
    }

    fn parse(s: &str) -> DeliveryKind {
        match s {
            "dead_letter" => DeliveryKind::DeadLetter,
            "wire_tap" => DeliveryKind::WireTap,
            _ => DeliveryKind::Main,
        }
    }
}

/// A new message to store.
#[derive(Debug, Clone)]
pub struct Insert {
    pub msg: Message,
    pub route_version: String,
    /// `Received`, or `Failed` when the intake refused it (with `error`).
    pub state: MessageState,
    pub error: Option<String>,
    /// The message this one was split from.
    pub parent: Option<Uuid>,
    /// The step to start at (after the split that made it).
    pub resume_step: usize,
    /// `true`: the route's scheduler queues it for the steps (split children); `false`: the
    /// caller queues it itself right after the commit.
    pub scheduled: bool,
    /// Wire-tap destinations that get a copy of the message as received.
    pub wire_taps: Vec<String>,
    /// The route's FIFO destinations: a message committed before its steps ran keeps its
    /// place in their lines from its commit, so that a message whose steps are slow is not
    /// overtaken by a later one (on any node).
    pub fifo: Vec<String>,
    /// Search fields extracted from the message (`order` = `123`), see the route's `index:`.
    pub index: Vec<(String, String)>,
    /// The route's inbound position (name, value) after this message — a database reader's
    /// watermark — written in the same transaction as the message, so that a crash can
    /// neither lose the rows before it nor read them again as new. See
    /// [`Processing::position`].
    pub position: Option<(String, String)>,
}

/// A stored message waiting for its steps.
#[derive(Debug, Clone)]
pub struct Pending {
    pub msg: Message,
    /// The step to start at.
    pub resume_step: usize,
    /// Earlier runs of the steps that ended in `Processed::Retry`.
    pub attempts: u32,
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
    /// Store the result and create one pending delivery per destination.
    Routed {
        headers: Headers,
        body: Bytes,
        destinations: Vec<String>,
        /// Destinations (of `destinations`) whose delivery this node holds from the commit on,
        /// to hand to their workers in memory instead of their claiming it from the store.
        /// Only a new message's one write ([`Processing::insert_processed`]) holds them;
        /// elsewhere this is ignored.
        held: Vec<String>,
    },
    /// No rule matched and there is no `otherwise`: keep the result, deliver nothing.
    Unrouted { headers: Headers, body: Bytes },
    /// A filter dropped the message.
    Filtered { reason: String },
    /// A step failed the message; with `dead_letter`, the original goes to that destination.
    Failed {
        error: String,
        dead_letter: Option<String>,
    },
    /// A step failed, and the route retries: run the steps again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: SystemTime,
    },
    /// A split step made these children; the parent is done.
    Split { children: Vec<Insert> },
    /// An `aggregate` step took the message, as the steps before it left it, into the open
    /// group of its key (opening one when there is none).
    Aggregate {
        headers: Headers,
        body: Bytes,
        join: Join,
    },
}

/// A message's entry into its aggregate group, and when that group completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The correlation key: messages of a route with the same key go into one group.
    pub key: String,
    /// This member completes its group (the step's `when` held).
    pub closes: bool,
    /// The group completes with this many members.
    pub count: Option<u64>,
    /// The group completes once its members' bodies reach this many bytes.
    pub size: u64,
    /// The group completes this long after its first member.
    pub timeout: Option<Duration>,
    /// The group completes when no member joined for this long.
    pub idle: Option<Duration>,
}

/// A completed aggregate group, claimed by this node to be combined (see
/// [`Processing::take_groups`]).
#[derive(Debug, Clone)]
pub struct Group {
    /// Also the id of the message the group becomes.
    pub id: Uuid,
    pub key: String,
    /// What completed it: `count`, `size`, `when`, `timeout` or `idle`.
    pub completed_by: String,
    /// Its members, oldest first, as the steps before the `aggregate` step left them.
    pub members: Vec<Message>,
}

/// What [`Processing::take_groups`] found.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    pub ready: Vec<Group>,
    /// When the route's next open group times out, if one may.
    pub next_due: Option<SystemTime>,
}

/// Deliveries held for this node in a new message's write (`Processed::Routed::held`), by
/// destination and delivery id.
pub type HeldDeliveries = Vec<(String, i64)>;

/// What [`Processing::insert_processed`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The message and its steps' outcome; it is now in this state. With the deliveries held
    /// for this node (`Processed::Routed::held`), by destination and id: they are pending, and
    /// no claim returns them while this node's lease on them lasts.
    Processed(MessageState, HeldDeliveries),
    /// The message as `duplicate` of `first` (same key), its steps' outcome dropped.
    Duplicate { first: Uuid },
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
    /// Failed for good. A main delivery with `dead_letter` set creates a delivery of the
    /// same message to that destination, in the same transaction.
    Dead {
        error: String,
        dead_letter: Option<String>,
    },
}

/// A pending delivery with the message it carries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub destination: String,
    pub kind: DeliveryKind,
    /// Attempts made before this one.
    pub attempts: u32,
    pub next_attempt_at: SystemTime,
    /// The message as the steps left it (main and dead-letter copies of delivery failures),
    /// or as received (wire taps, dead-letter copies of step failures).
    pub message: Message,
    /// The message's recorded error, for dead-letter copies.
    pub error: Option<String>,
}

/// One delivery attempt as recorded.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub delivery: i64,
    pub message: Uuid,
    pub destination: String,
    /// 1 for the first attempt.
    pub number: u32,
    pub duration: Duration,
    pub outcome: AttemptOutcome,
    /// What the other side answered to a delivered attempt (`HTTP 201 from host: {"id":7}`,
    /// a file's path, a broker's confirmation), kept in the attempt's transition.
    pub receipt: Option<String>,
}

/// A delivery worker's claim of its destination's next due deliveries.
#[derive(Debug, Clone)]
pub struct Claim {
    pub route: String,
    pub destination: String,
    /// Deliveries due at or before this time are claimed.
    pub now: SystemTime,
    /// At most this many.
    pub limit: usize,
    /// And no more once their bodies reach this many bytes (the first is always claimed),
    /// so that a batch of large messages does not load them all at once.
    pub max_bytes: u64,
}

/// What [`Processing::record_and_claim`] committed.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Per attempt, in order: the message's terminal state when the attempt closed it.
    pub ended: Vec<Option<MessageState>>,
    /// The deliveries claimed, oldest first.
    pub due: Vec<Delivery>,
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
    pub parent: Option<Uuid>,
    pub received_at: SystemTime,
}

/// How long a route's finished messages are kept. Unset fields keep everything.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Delete finished messages this long after their last change.
    #[serde(default)]
    pub max_age: Option<crate::config::values::Duration>,
    /// Drop the bodies (kept: headers, states, transitions) this long after the last change.
    #[serde(default)]
    pub body_max_age: Option<crate::config::values::Duration>,
    /// Keep at most this many finished messages; the oldest go first.
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// Keep the route's stored bodies under this size (`2GiB`); the oldest finished messages go
    /// first.
    #[serde(default)]
    pub max_bytes: Option<crate::config::values::ByteSize>,
}

/// What one prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: u64,
    pub bodies: u64,
}

/// What `search` looks for; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub route: Option<String>,
    pub state: Option<MessageState>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Text in the headers or the body (as received or after the steps).
    pub text: Option<String>,
    /// An index field and its value: a look-up, not a scan.
    pub field: Option<(String, String)>,
    /// Ids starting with these hex digits (dashes ignored): a range of the primary key.
    pub id_prefix: Option<String>,
    /// Text in the message's last error.
    pub error: Option<String>,
    /// Children of this message (a split's parts).
    pub parent: Option<Uuid>,
    /// Only ids before this one: the next page of a search, newest first.
    pub before: Option<Uuid>,
    pub limit: usize,
}

/// A destination's queue: what an operator watches and alerts on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Queue {
    pub route: String,
    pub destination: String,
    /// Pending deliveries.
    pub depth: u64,
    /// When the message of the oldest pending delivery was received.
    #[serde(skip)]
    pub oldest: Option<SystemTime>,
    /// The newest error among the pending deliveries (a destination failing now).
    pub last_error: Option<String>,
    /// Nodes holding claims on its pending deliveries now (delivering them).
    pub claimed_by: Vec<String>,
}

/// One recorded transition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransitionRecord {
    pub at: String,
    pub event: String,
    pub name: Option<String>,
    pub outcome: String,
    pub duration_us: Option<i64>,
    pub detail: Option<String>,
}

/// One delivery as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRecord {
    pub destination: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: String,
    pub last_error: Option<String>,
}

/// Everything about one message.
#[derive(Debug, Clone)]
pub struct Details {
    pub message: StoredMessage,
    pub body: Bytes,
    pub out_headers: Option<Headers>,
    pub out_body: Option<Bytes>,
    pub transitions: Vec<TransitionRecord>,
    pub deliveries: Vec<DeliveryRecord>,
}

pub use plan::id_range;

/// Opens the store at `location` for an engine (`shared: false`: SQLite takes the file's
/// lock) or beside one (`shared: true`: the `messages` command).
pub async fn open(
    location: &StoreLocation,
    claims: Claims,
    shared: bool,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    Ok(match location {
        StoreLocation::Sqlite(path) if shared => {
            if !path.exists() {
                return Err(StoreError(format!(
                    "no store at {} (set --data, --store or the settings file)",
                    path.display()
                )));
            }
            std::sync::Arc::new(sqlite::SqliteStore::open_shared(path)?)
        }
        StoreLocation::Sqlite(path) => {
            std::sync::Arc::new(sqlite::SqliteStore::open_with(path, claims)?)
        }
        StoreLocation::Postgres(url) => {
            std::sync::Arc::new(postgres::PgStore::connect(url, claims).await?)
        }
    })
}

/// What this process has in hand: messages it claimed and has not finished or handed back,
/// deliveries it claimed and has not recorded. Only these leases are renewed — a claim whose
/// outcome the process never learnt (the commit's answer was lost) runs out and is claimed
/// again, instead of being renewed for ever by a node that does not know it holds it.
#[derive(Default)]
pub(crate) struct InHand {
    messages: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    deliveries: std::sync::Mutex<std::collections::HashSet<i64>>,
}

impl InHand {
    pub(crate) fn take_messages(&self, ids: impl IntoIterator<Item = Uuid>) {
        if let Ok(mut m) = self.messages.lock() {
            m.extend(ids);
        }
    }

    pub(crate) fn drop_messages<'a>(&self, ids: impl IntoIterator<Item = &'a Uuid>) {
        if let Ok(mut m) = self.messages.lock() {
            ids.into_iter().for_each(|id| {
                m.remove(id);
            });
        }
    }

    pub(crate) fn take_deliveries(&self, ids: impl IntoIterator<Item = i64>) {
        if let Ok(mut d) = self.deliveries.lock() {
            d.extend(ids);
        }
    }

    pub(crate) fn drop_deliveries<'a>(&self, ids: impl IntoIterator<Item = &'a i64>) {
        if let Ok(mut d) = self.deliveries.lock() {
            ids.into_iter().for_each(|id| {
                d.remove(id);
            });
        }
    }

    /// After a delivery batch's write: its recorded deliveries are out of hand, and what it
    /// claimed (if it committed) in hand.
    pub(crate) fn recorded(&self, recorded: &[i64], result: &StoreResult<Recorded>) {
        self.drop_deliveries(recorded);
        if let Ok(r) = result {
            self.take_deliveries(r.due.iter().map(|d| d.id));
        }
    }

    /// The messages and deliveries to renew.
    pub(crate) fn snapshot(&self) -> (Vec<Uuid>, Vec<i64>) {
        (
            self.messages
                .lock()
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default(),
            self.deliveries
                .lock()
                .map(|d| d.iter().copied().collect())
                .unwrap_or_default(),
        )
    }
}

/// Leases this node took (FIFO destinations), and until when it may count on one without
/// asking the store again: half a lease after taking it, well before anyone else could.
/// Saves a write per delivery to a FIFO destination.
#[derive(Default)]
pub(crate) struct HeldLeases(
    std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
);

impl HeldLeases {
    pub(crate) fn fresh(&self, route: &str, name: &str) -> bool {
        let now = std::time::Instant::now();
        self.0.lock().is_ok_and(|held| {
            held.get(&(route.to_string(), name.to_string()))
                .is_some_and(|until| *until > now)
        })
    }

    pub(crate) fn took(&self, route: &str, name: &str, lease: Duration) {
        if let Ok(mut held) = self.0.lock() {
            held.insert(
                (route.to_string(), name.to_string()),
                std::time::Instant::now() + lease / 2,
            );
        }
    }
}

/// Unix milliseconds, as both backends store times.
pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Headers as stored: a JSON object.
pub(crate) fn headers_json(h: &Headers) -> String {
    serde_json::to_string(h).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn parse_headers(text: Option<String>) -> Headers {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The lease that lets one node at a time run a route's exclusive inbound (a shared
/// directory). Unlike the other leases, [`Processing::renew_leases`] leaves it alone: only the
/// running inbound renews it (through [`Processing::hold`]), so a node that stops running the
/// inbound — paused, route removed, frozen — lets another take it over.
pub const INBOUND_LEASE: &str = "from";

/// Who this node is and how long its claims hold.
#[derive(Debug, Clone)]
pub struct Claims {
    /// This node's name, recorded on what it claims (default `<host>-<pid>`).
    pub node: String,
    /// A claim not renewed for this long may be taken over by another node.
    pub lease: Duration,
}

impl Default for Claims {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "node".into());
        Claims {
            node: format!("{host}-{}", std::process::id()),
            lease: Duration::from_secs(30),
        }
    }
}
