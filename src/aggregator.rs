//! A route's aggregator: turns the completed groups of its `aggregate` step into messages.
//!
//! Members join their groups in the transactions that commit them, and a group that
//! completes by `count`, `size` or `when` is complete from that commit on; this loop finds
//! the groups whose `timeout` or `idle` time passed, claims completed groups (one node each,
//! under a lease), combines each (off the I/O threads) and hands it back to the store, which
//! commits the new message — its id the group's — and ends the group and its members in one
//! transaction. The new message is due for the steps after `aggregate` at once: the route's
//! scheduler takes it from there. A crash between the claim and the commit leaves the group
//! complete, to be claimed again when the claim runs out; a group is emitted once.

use crate::message::Message;
use crate::steps::aggregate::Aggregate;
use crate::store::{Group, Insert, MessageState, Store};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Groups combined per look.
const PAGE: usize = 32;

/// What the aggregator of one route version needs.
pub struct Aggregator {
    pub route: String,
    pub version: String,
    /// The `aggregate` step's place and the step.
    pub step: (usize, Arc<Aggregate>),
    pub index: Arc<crate::keys::Index>,
    /// Woken when a member was committed (its group may be complete).
    pub joined: Arc<Notify>,
    /// The route's scheduler, woken when a group's message was committed.
    pub scheduled: Arc<Notify>,
}

impl Aggregator {
    pub async fn run(self, store: Arc<dyn Store>, stop: CancellationToken) {
        // Another node's claim that ran out is found within this long.
        let look_again = (store.lease() / 3).min(Duration::from_secs(5));
        while !stop.is_cancelled() {
            let groups = match store
                .take_groups(&self.route, SystemTime::now(), PAGE)
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(route = %self.route, error = %e, "cannot read aggregate groups; trying again");
                    Default::default()
                }
            };
            let full = groups.ready.len() == PAGE;
            // All at once: their commits share the store's group commits.
            let emits = groups
                .ready
                .into_iter()
                .map(|g| self.emit(store.as_ref(), g));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = futures_util::future::join_all(emits) => {}
            }
            if full {
                continue;
            }
            let wait = groups
                .next_due
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .map_or(look_again, |d| d.min(look_again));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.joined.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
    }

    async fn emit(&self, store: &dyn Store, group: Group) {
        let id = group.id;
        let (at, step) = self.step.clone();
        let (route, version, index) =
            (self.route.clone(), self.version.clone(), self.index.clone());
        let made = tokio::task::spawn_blocking(move || {
            combined(&route, version, at, &step, &index, group)
        });
        let Ok((ins, members)) = made.await else {
            tracing::error!(route = %self.route, message_id = %id,
                "combining an aggregate group failed; it is taken again later");
            return;
        };
        let state = ins.state;
        match store.emit_group(id, ins).await {
            Ok(true) => {
                tracing::info!(route = %self.route, message_id = %id, members, state = state.as_str(),
                    "aggregate group combined into a message");
                self.scheduled.notify_one();
            }
            // Its claim ran out while it was combined, and another node emitted it.
            Ok(false) => {}
            Err(e) => {
                tracing::error!(route = %self.route, message_id = %id, error = %e,
                    "could not commit an aggregate group's message; it is taken again when its claim runs out")
            }
        }
    }
}

/// The new message a group becomes: combined and due for the steps after `aggregate`, or
/// `failed` with why when its members cannot be combined.
fn combined(
    route: &str,
    version: String,
    at: usize,
    step: &Aggregate,
    index: &crate::keys::Index,
    group: Group,
) -> (Insert, usize) {
    let members = group.members.len();
    let first = group.members.first().map(|m| m.headers.clone());
    let (headers, body, state, error) = match step.combine(&group) {
        Ok((headers, body)) => (headers, body, MessageState::Received, None),
        Err(e) => (
            first.unwrap_or_default(),
            bytes::Bytes::new(),
            MessageState::Failed,
            Some(format!(
                "steps[{at}].aggregate: cannot combine the group of key `{}` ({members} members): {e}; its members are kept (search field aggregate={})",
                group.key, group.id
            )),
        ),
    };
    let msg = Message {
        id: group.id,
        route: route.to_string(),
        headers,
        body,
        received_at: SystemTime::now(),
    };
    let mut fields = index.extract(&msg);
    fields.push(("aggregate_key".into(), group.key));
    let ins = Insert {
        route_version: version,
        scheduled: state == MessageState::Received,
        state,
        error,
        parent: None,
        resume_step: at + 1,
        wire_taps: Vec::new(),
        fifo: Vec::new(),
        index: fields,
        position: None,
        msg,
    };
    (ins, members)
}
