//! What every backend promises, split by who asks: the engine ([`Processing`]), operators
//! ([`Operations`]: search, details, replay, backup) and upkeep ([`Maintenance`]: retention,
//! reclaiming what a dead node held). Both backends pass one conformance suite on them.

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("message store: {0}")]
pub struct StoreError(pub String);

pub type StoreResult<T> = Result<T, StoreError>;

/// What the engine needs of a store: taking messages in, recording what the steps and the
/// deliveries did, claiming work and holding it under leases.
#[async_trait]
pub trait Processing: Send + Sync {
    /// Commits new messages (and their wire-tap deliveries) in one transaction.
    async fn insert(&self, batch: Vec<Insert>) -> StoreResult<()>;

    /// Commits one new message unless a message of its route holds one of `keys` (see
    /// [`Key`]): a broker redelivering what was committed but never acknowledged, or a
    /// business key seen within a route's `dedupe` window. Then the new one is committed as
    /// `duplicate` (with the keys, naming the first) instead, and the first's id is returned:
    /// the caller acknowledges the sender and processes nothing. The look-up and the insert
    /// are one transaction (on PostgreSQL serialised across nodes), so two copies arriving at
    /// once are never both taken. `ins.index` should hold the keys, so that the next copy is
    /// found too.
    async fn insert_once(&self, ins: Insert, keys: Vec<Key>) -> StoreResult<Option<Uuid>>;

    /// Commits a new message together with what its steps made of it (they ran before the
    /// commit): its row, the step transitions, its result and deliveries, in one write — the
    /// common life of a message costs this write and its delivery's. With `keys`, as
    /// [`Processing::insert_once`]: a message of the route holding one of them makes this one
    /// a `duplicate`, and its outcome is not recorded.
    async fn insert_processed(
        &self,
        ins: Insert,
        steps: Vec<StepRecord>,
        result: Processed,
        keys: Vec<Key>,
    ) -> StoreResult<Stored>;

    /// Records the steps' outcomes and the result in one transaction. Returns the message's
    /// new state, or `None` when it was no longer waiting for its steps (processed already),
    /// in which case nothing is recorded: processing a message twice never doubles deliveries.
    async fn finish_steps(
        &self,
        id: Uuid,
        steps: Vec<StepRecord>,
        result: Processed,
    ) -> StoreResult<Option<MessageState>>;

    /// A delivery worker's one write per batch: records `attempts` (each one's delivery row
    /// and transition; when it was its message's last open main delivery, the message's
    /// terminal state) and, with `claim`, claims the destination's next due deliveries — not
    /// claimed by a live node, in the order they fell due (then by id: new deliveries in the
    /// order they were stored), each held until its attempt is recorded — in
    /// the same transaction. All or nothing: on an error nothing is recorded or claimed.
    async fn record_and_claim(
        &self,
        attempts: Vec<Attempt>,
        claim: Option<Claim>,
    ) -> StoreResult<Recorded>;

    /// Records one attempt alone (FIFO destinations, and an attempt whose batch could not be
    /// written); returns the message's terminal state when the attempt closed it.
    async fn record_attempt(&self, attempt: Attempt) -> StoreResult<Option<MessageState>> {
        let mut recorded = self.record_and_claim(vec![attempt], None).await?;
        Ok(recorded.ended.pop().flatten())
    }

    /// Claims, oldest first, up to `limit` messages of `route` that wait for their steps, are
    /// not scheduled for later and that no live node holds: after a restart, everything the
    /// last run left unfinished; with several nodes, the work of a node whose lease ran out.
    /// Messages stored by this node are its own from the start: returned here only if its
    /// own lease on them ran out (renewals failed while the database was away), which is
    /// safe — recording the steps' result twice is refused.
    async fn claim_received(&self, route: &str, limit: usize) -> StoreResult<Vec<Pending>>;

    /// Hands back messages this node claimed but will not process (a route version stopped
    /// with them still queued), so that they can be claimed again at once.
    async fn release(&self, ids: Vec<Uuid>) -> StoreResult<()>;

    /// Hands back deliveries this node claimed but could not record an attempt for (the
    /// store failed several times): they are due again at once, for any node.
    async fn release_deliveries(&self, ids: Vec<i64>) -> StoreResult<()>;

    /// Takes or renews a named lease of a route for this node — what one node at a time may
    /// do, such as running an inbound that reads a shared directory. True while this node
    /// holds it; false while another live node does.
    async fn hold(&self, route: &str, name: &str) -> StoreResult<bool>;

    /// Extends this node's leases: messages in hand, claimed deliveries, FIFO destinations.
    /// The engine calls it every third of [`Processing::lease`].
    async fn renew_leases(&self) -> StoreResult<()>;

    /// How long a claim holds without renewal; another node may take the work over after.
    fn lease(&self) -> Duration;

    /// Takes messages of `route` scheduled for their steps at or before `now` (split
    /// children, retries): they are unscheduled in the same write, so each is taken once.
    async fn take_scheduled(
        &self,
        route: &str,
        now: SystemTime,
        limit: usize,
    ) -> StoreResult<Vec<Pending>>;

    /// When the next scheduled message of `route` is due, if any.
    async fn next_scheduled(&self, route: &str) -> StoreResult<Option<SystemTime>>;

    /// The inbound position `name` of `route` last committed with a message (see
    /// [`Insert::position`]); `None` before the first.
    async fn position(&self, route: &str, name: &str) -> StoreResult<Option<String>>;

    /// The oldest pending delivery of a destination, due or not (strict FIFO order), when
    /// this node holds the destination's lease (taken here when free): one node at a time
    /// delivers to a FIFO destination, so order holds across nodes. `None` while another
    /// node holds it.
    async fn oldest_pending(&self, route: &str, destination: &str)
        -> StoreResult<Option<Delivery>>;

    /// When the next pending delivery of the destination can be claimed (due, and its claim,
    /// if any, ended), if any is pending.
    async fn next_due(&self, route: &str, destination: &str) -> StoreResult<Option<SystemTime>>;

    /// Completes the groups of `route` whose timeout passed by `now`, and claims up to `limit`
    /// completed groups no live node holds, with their members: the route's aggregator
    /// combines them and hands each back through [`Processing::emit_group`].
    async fn take_groups(&self, route: &str, now: SystemTime, limit: usize) -> StoreResult<Groups>;

    /// Commits what a claimed group became — a new message whose id is the group's, with
    /// the members as its links — and ends the group and its members (`aggregated`), in one
    /// transaction. False, with nothing written, when this node no longer holds the group
    /// (its claim ran out and another node emitted it): a group becomes one message, once.
    async fn emit_group(&self, group: Uuid, combined: Insert) -> StoreResult<bool>;

    /// Sets a message's state and its error or reason text (a split made while reading
    /// records how it ended this way).
    async fn annotate(&self, id: Uuid, state: MessageState, text: &str) -> StoreResult<()>;

    /// Flushes and closes; later calls fail.
    async fn close(&self) -> StoreResult<()>;
}

/// What operators need: look-ups, search, the record of one message, replay (the
/// `messages` command, the admin API).
#[async_trait]
pub trait Operations: Send + Sync {
    /// Every destination with pending deliveries: depth, age of the oldest, newest error.
    async fn queues(&self) -> StoreResult<Vec<Queue>>;

    /// How many messages of each of `routes` are in `state`, all of them (for the dead, the
    /// failed: an index range each, not the whole store).
    async fn count_in_state(
        &self,
        routes: &[String],
        state: MessageState,
    ) -> StoreResult<Vec<(String, u64)>>;

    /// Messages of `routes` per route and state received since `since` (ids are UUIDv7, so
    /// this reads index ranges from that time on, nothing older).
    async fn counts_since(
        &self,
        routes: &[String],
        since: SystemTime,
    ) -> StoreResult<BTreeMap<(String, MessageState), u64>>;

    /// Messages matching `filter`, newest first.
    async fn search(&self, filter: &Search) -> StoreResult<Vec<StoredMessage>>;

    /// Everything recorded about one message: bodies, transitions, deliveries.
    async fn details(&self, id: Uuid) -> StoreResult<Option<Details>>;

    /// Sends a message through again: from the start (its steps run again, creating new
    /// deliveries; a split's child or a group's message from the step after the split or
    /// `aggregate` that made it), or to one destination only (that delivery is pending again). The running
    /// engine picks it up within seconds. Returns what was done, for the operator.
    async fn replay(&self, id: Uuid, destination: Option<&str>) -> StoreResult<String>;
}

/// Keeping the store bounded: retention, and handing space back to the file system.
#[async_trait]
pub trait Maintenance: Send + Sync {
    /// Deletes (or strips the bodies of) up to `batch` finished messages of `route` that
    /// `policy` no longer keeps. Messages with pending deliveries are never touched.
    async fn prune(&self, route: &str, policy: &Retention, batch: usize) -> StoreResult<Pruned>;

    /// Hands up to `pages` free pages back to the file system; returns how many it freed.
    async fn reclaim(&self, pages: u32) -> StoreResult<u64>;

    /// Reads the store for damage — every page and index (`full`), or the quicker look that
    /// skips matching indexes to tables — and returns what is wrong, empty when nothing is.
    /// Damage found stops every later write, as [`Maintenance::damaged`] reports.
    async fn check(&self, full: bool) -> StoreResult<Vec<String>>;

    /// Why nothing more is written to the store, once damage was found (by a check, or by a
    /// read or write that met a damaged page).
    fn damaged(&self) -> Option<String>;
}

/// A whole store: every backend is one (see `tests/store.rs`, the conformance suite).
pub trait Store: Processing + Operations + Maintenance {}

impl<T: Processing + Operations + Maintenance + ?Sized> Store for T {}
