//! Delivery: one worker per destination of each route.
//!
//! The store is the queue. A worker asks the store for its destination's deliveries, sends
//! them and records each attempt: delivered, retry at a later time (exponential backoff with
//! jitter), or dead after the last attempt — and then, for a main delivery, a copy goes to the
//! route's dead-letter destination in the same transaction. Each destination has its own
//! worker and its own rows, so a slow or dead destination delays nobody else, and a crash
//! loses nothing: pending rows are simply found again.
//!
//! Ordering: `parallel` destinations take due deliveries in batches and send `concurrency` at
//! a time (a destination that sends whole batches at once, like the file destination, sends
//! one batch at a time, a broker's a few). Their worker writes once per batch: the attempts
//! finished since its last write, and the claim of what is due next, in one transaction,
//! while the sends go on. It claims ahead of its sends — a batch destination up to as many
//! batches again as it sends at once, each waiting its turn — so that a send finishing during
//! the write is followed at once by the next, not by the end of the write;
//!
//! `fifo` destinations take the oldest pending delivery and nothing else until it is
//! delivered or dead, waiting out its backoff, so order holds across failures and restarts.
//!
//! Hand-over: while a parallel destination's last claim found nothing more due, a message
//! whose steps ran before its commit has its delivery stored as already claimed by this node
//! and handed to the worker in memory once the write commits ([`Handoff`]) — the worker then
//! skips the claim's read and update in the store. The row is the record either way: a
//! delivery handed over and never sent is released (shutdown, reload) or, after a crash,
//! pending again when the store opens.

use crate::adapters::outbound::{
    Batching, DeliveryConfig, DeliveryOrder, Outbound, RetryConfig, SendError, Sent,
};
use crate::message::Message;
use crate::route::DeliveryPolicy;
use crate::store::{Attempt, AttemptOutcome, Claim, Delivery, DeliveryKind, Processing};
use crate::telemetry;
use crate::throttle::Bucket;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Due deliveries fetched per store query.
const BATCH: usize = 64;
/// Bytes of bodies fetched per store query (a larger message comes alone): with at most
/// `concurrency` batches in flight per destination, bounds what delivery holds in memory.
const BATCH_BYTES: u64 = 16 << 20;
/// How often a FIFO destination looks again while its line waits for a message's steps.
const BLOCKED_POLL: Duration = Duration::from_millis(100);
/// Longest sleep between looks at the store, in case a wake-up was missed.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Deliveries waiting in a worker's hand-over queue, at most (then the intake stores them
/// to be claimed, as before).
const HANDOFF: usize = BATCH;
/// Largest body handed over in memory: the queue holds at most [`HANDOFF`] × this (4 MiB);
/// larger messages are claimed from the store, within [`BATCH_BYTES`].
const HANDOFF_BYTES: usize = 64 << 10;

/// A parallel destination's hand-over queue: deliveries committed as claimed by this node,
/// handed from the intake to the worker in memory (see the module's docs).
pub struct Handoff {
    tx: mpsc::Sender<Delivery>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Delivery>>>,
    /// Set while the worker's last claim found nothing more due: only then are deliveries
    /// handed over, so that new messages never pass a backlog in the store.
    open: AtomicBool,
}

impl Default for Handoff {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(HANDOFF);
        Handoff {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            open: AtomicBool::new(false),
        }
    }
}

impl Handoff {
    /// A place in the queue for the delivery of a `bytes`-long message, when the worker takes
    /// deliveries in memory now. Taken before the message's write; sent once it commits (the
    /// place goes back if the permit is dropped).
    pub fn reserve(&self, bytes: usize) -> Option<mpsc::OwnedPermit<Delivery>> {
        if bytes > HANDOFF_BYTES || !self.open.load(Ordering::Relaxed) {
            return None;
        }
        self.tx.clone().try_reserve_owned().ok()
    }

    fn receiver(&self) -> Option<mpsc::Receiver<Delivery>> {
        self.rx.lock().ok()?.take()
    }
}

/// A route's destination, ready to run.
pub struct Destination {
    pub route: String,
    /// `to[0]`, `route.rules[0].to[1]`, `dead_letter`, `wire_tap[0]`: what records name.
    pub name: String,
    pub kind: DeliveryKind,
    pub outbound: Arc<dyn Outbound>,
    pub policy: DeliveryConfig,
    /// The route's `on_error.delivery` (main destinations only).
    pub on_error: DeliveryPolicy,
    /// The route's dead-letter destination and its worker's wake-up.
    pub dead_letter: Option<(String, Arc<Notify>)>,
    /// Signalled when new deliveries for this destination were stored.
    pub wake: Arc<Notify>,
    /// The destination's `rate`: an attempt takes a token.
    pub rate: Option<Bucket>,
    /// Deliveries handed over in memory: parallel main destinations without a `rate`.
    pub handoff: Option<Handoff>,
}

impl Destination {
    /// Attempts in all before a delivery is dead.
    fn max_attempts(&self) -> u32 {
        match (self.kind, self.on_error) {
            (DeliveryKind::Main, DeliveryPolicy::DeadLetter | DeliveryPolicy::Fail) => 1,
            _ => self.policy.retry.max_attempts.max(1),
        }
    }

    /// Where a dead main delivery goes.
    fn dead_letter_name(&self) -> Option<String> {
        match (self.kind, self.on_error) {
            (DeliveryKind::Main, DeliveryPolicy::Retry | DeliveryPolicy::DeadLetter) => {
                self.dead_letter.as_ref().map(|(n, _)| n.clone())
            }
            _ => None,
        }
    }
}

/// Runs until `shutdown`; deliveries in flight then finish, nothing new starts.
pub async fn run(dest: Arc<Destination>, store: Arc<dyn Processing>, shutdown: CancellationToken) {
    match dest.policy.ordering {
        Some(DeliveryOrder::Fifo) => run_fifo(dest, store, shutdown).await,
        _ => run_parallel(dest, store, shutdown).await,
    }
}

async fn run_parallel(
    dest: Arc<Destination>,
    store: Arc<dyn Processing>,
    shutdown: CancellationToken,
) {
    let batching = dest.outbound.batching();
    // Sends under way at once: deliveries, or batches for a destination that sends batches.
    let limit = Arc::new(Semaphore::new(match batching {
        Batching::No => dest.policy.concurrency.max(1),
        batches => batches.at_once(),
    }));
    // Attempts in flight, each ending in what it made (or its delivery unsent, at shutdown).
    let mut sending: JoinSet<Vec<Result<Made, i64>>> = JoinSet::new();
    // Attempts made and not yet recorded: the worker's next write records them all and claims
    // what is due next in the same transaction — one write per batch, while the sends go on.
    let mut made: Vec<Made> = Vec::new();
    let mut unsent: Vec<i64> = Vec::new();
    // The last claim got fewer than it asked for: claim again only when woken (new
    // deliveries stored) or at `look_again` (retries falling due).
    let mut drained = false;
    let mut look_again = Instant::now();
    // Bytes of the bodies claimed and not yet sent.
    let held = Held::default();
    let mut handed = dest.handoff.as_ref().and_then(Handoff::receiver);
    let handed_over = handed
        .as_ref()
        .map(|_| crate::metrics::handed_over(&dest.route, &dest.name));
    // Handed over and not yet started.
    let mut taken: Vec<Delivery> = Vec::new();
    loop {
        while let Some(done) = sending.try_join_next() {
            sort(done, &mut made, &mut unsent);
        }
        let stopping = shutdown.is_cancelled();
        if stopping {
            // No more hand-overs; what was handed over and not started is released below.
            if let Some(rx) = handed.as_mut() {
                rx.close();
                while let Ok(d) = rx.try_recv() {
                    taken.push(d);
                }
            }
            unsent.extend(taken.drain(..).map(|d| d.id));
        }
        if !unsent.is_empty() {
            // Claimed but never started (shutdown): due again at once, for anyone.
            let _ = store.release_deliveries(std::mem::take(&mut unsent)).await;
        }
        if stopping && sending.is_empty() && made.is_empty() {
            if let Some(mut rx) = handed.take() {
                // Hand-overs whose places were taken before the close come in still: wait
                // for each (its intake's write is under way) and release it.
                let mut late = Vec::new();
                while let Some(d) = rx.recv().await {
                    late.push(d.id);
                }
                if !late.is_empty() {
                    let _ = store.release_deliveries(late).await;
                }
            }
            return;
        }
        if drained && Instant::now() >= look_again {
            drained = false;
        }
        let mut free = match () {
            _ if stopping => 0,
            _ if held.bytes() >= BATCH_BYTES => 0,
            // Batches: `at_once` sending (one for a file destination: the batch shares one
            // durability point, and batches side by side in one directory only contend for
            // its lock; a few pipelines for a broker, so that one batch's confirmations
            // overlap the next one's sending) and as many again claimed, waiting their turn.
            // Every free place is claimed for in the same write, so that a backlog is not held
            // to one batch per commit, and a batch that ends while the worker writes is
            // followed at once (docs/performance.md, "Claimed ahead"). Not with a `rate`,
            // whose tokens are taken at the claim: a batch claimed is sent at once.
            _ if batching != Batching::No => {
                let ahead = if dest.rate.is_some() { 1 } else { 2 };
                (ahead * batching.at_once()).saturating_sub(sending.len()) * BATCH
            }
            // One by one: `concurrency` sending, the rest of a batch waiting its turn.
            _ => BATCH.saturating_sub(sending.len()),
        };
        // Nothing more due in the store: start what the intake handed over.
        if drained && free > 0 {
            if let Some(rx) = handed.as_mut() {
                while taken.len() < free {
                    match rx.try_recv() {
                        Ok(d) => taken.push(d),
                        Err(_) => break,
                    }
                }
            }
            free -= taken.len().min(free);
            if let (Some(counter), false) = (&handed_over, taken.is_empty()) {
                counter.increment(taken.len() as u64);
            }
            let now: Vec<Delivery> = std::mem::take(&mut taken);
            start(&dest, &limit, &shutdown, &held, now, &mut sending);
        }
        let room = if drained { 0 } else { free };
        // Nothing to record and little room: wait for sends to finish, so that claims come
        // in batches rather than one by one.
        if made.is_empty() && (room == 0 || (room < BATCH / 2 && !sending.is_empty())) {
            let take_handed = drained && free > 0 && handed.is_some();
            tokio::select! {
                Some(done) = sending.join_next(), if !sending.is_empty() => sort(done, &mut made, &mut unsent),
                Some(d) = recv(&mut handed), if take_handed => taken.push(d),
                _ = dest.wake.notified(), if drained => drained = false,
                _ = tokio::time::sleep_until(look_again.into()), if drained => drained = false,
                _ = shutdown.cancelled(), if !stopping => {}
                else => {}
            }
            continue;
        }
        // A `rate`: claim only what may go now (claimed deliveries start at once, so none
        // waits out its lease in memory); with nothing else to do, wait for the next token.
        let room = match &dest.rate {
            Some(bucket) if room > 0 => match bucket.take_up_to(room) {
                Ok(n) => n,
                Err(next_token) if made.is_empty() => {
                    tokio::select! {
                        Some(done) = sending.join_next(), if !sending.is_empty() => sort(done, &mut made, &mut unsent),
                        _ = tokio::time::sleep(next_token) => {}
                        _ = shutdown.cancelled(), if !stopping => {}
                    }
                    continue;
                }
                Err(_) => 0,
            },
            _ => room,
        };
        let max_bytes = BATCH_BYTES.saturating_sub(held.bytes());
        let claim = (room > 0).then(|| Claim {
            route: dest.route.clone(),
            destination: dest.name.clone(),
            now: SystemTime::now(),
            limit: room,
            max_bytes,
        });
        let attempts: Vec<Attempt> = made.iter().map(|m| m.attempt.clone()).collect();
        match store.record_and_claim(attempts, claim).await {
            Ok(recorded) => {
                for (m, ended) in made.drain(..).zip(recorded.ended) {
                    m.recorded(&dest, ended);
                }
                let bytes: u64 = recorded
                    .due
                    .iter()
                    .map(|d| d.message.body.len() as u64)
                    .sum();
                if let Some(bucket) = &dest.rate {
                    bucket.give_back(room.saturating_sub(recorded.due.len()));
                }
                if room > 0 {
                    let short = recorded.due.len() < room && bytes < max_bytes;
                    if let Some(h) = &dest.handoff {
                        h.open.store(short, Ordering::Relaxed);
                    }
                    if short {
                        drained = true;
                        look_again = Instant::now()
                            + until_next_due(&dest, &store, &recorded.due, &sending).await;
                    }
                }
                start(&dest, &limit, &shutdown, &held, recorded.due, &mut sending);
            }
            Err(e) => {
                if let Some(bucket) = &dest.rate {
                    bucket.give_back(room);
                }
                if let Some(h) = &dest.handoff {
                    h.open.store(false, Ordering::Relaxed);
                }
                tracing::error!(route = %dest.route, destination = %dest.name, error = %e,
                    "cannot record attempts or claim deliveries; recording the attempts one by one");
                for m in made.drain(..) {
                    let (dest, store) = (dest.clone(), store.clone());
                    sending.spawn(async move {
                        record_alone(&dest, store.as_ref(), m).await;
                        Vec::new()
                    });
                }
                drained = true;
                look_again = Instant::now() + Duration::from_secs(1);
            }
        }
    }
}

/// The next delivery handed over, on a worker that takes them.
async fn recv(handed: &mut Option<mpsc::Receiver<Delivery>>) -> Option<Delivery> {
    match handed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Files a finished send's results.
fn sort(
    done: Result<Vec<Result<Made, i64>>, tokio::task::JoinError>,
    made: &mut Vec<Made>,
    unsent: &mut Vec<i64>,
) {
    for r in done.unwrap_or_default() {
        match r {
            Ok(m) => made.push(m),
            Err(id) => unsent.push(id),
        }
    }
}

/// How long to wait before claiming again after a claim came back short: at once when woken
/// (new deliveries), else when the next pending delivery falls due (at most [`IDLE_POLL`]).
async fn until_next_due(
    dest: &Destination,
    store: &Arc<dyn Processing>,
    claimed: &[Delivery],
    sending: &JoinSet<Vec<Result<Made, i64>>>,
) -> Duration {
    // Still busy: the next write comes soon anyway; look at the store then.
    if !claimed.is_empty() || !sending.is_empty() {
        return Duration::from_millis(100);
    }
    let next = match store.next_due(&dest.route, &dest.name).await {
        Ok(Some(t)) => t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(IDLE_POLL),
        _ => IDLE_POLL,
    };
    next.max(Duration::from_millis(10))
}

/// Sends what was claimed: in batches of up to [`BATCH`], one call each, [`Batching::at_once`]
/// at a time (destinations that write batches), or each delivery as a task of its own,
/// `concurrency` at a time.
fn start(
    dest: &Arc<Destination>,
    limit: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    held: &Held,
    due: Vec<Delivery>,
    sending: &mut JoinSet<Vec<Result<Made, i64>>>,
) {
    if due.is_empty() {
        return;
    }
    if dest.outbound.batching() != Batching::No {
        let mut due = due.into_iter().peekable();
        while due.peek().is_some() {
            let batch: Vec<Delivery> = due.by_ref().take(BATCH).collect();
            let (dest, limit, shutdown) = (dest.clone(), limit.clone(), shutdown.clone());
            let bytes = held.take(batch.iter().map(|d| d.message.body.len() as u64).sum());
            sending.spawn(async move {
                let _bytes = bytes;
                // At a shutdown, a batch waiting its turn does not start.
                let permit = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => None,
                    p = limit.acquire_owned() => p.ok(),
                };
                if permit.is_none() {
                    return batch.into_iter().map(|d| Err(d.id)).collect();
                }
                send_batch(&dest, batch).await.into_iter().map(Ok).collect()
            });
        }
        return;
    }
    for delivery in due {
        let (dest, limit, shutdown) = (dest.clone(), limit.clone(), shutdown.clone());
        let bytes = held.take(delivery.message.body.len() as u64);
        sending.spawn(async move {
            let _bytes = bytes;
            let permit = tokio::select! {
                p = limit.acquire_owned() => p,
                _ = shutdown.cancelled() => return vec![Err(delivery.id)],
            };
            let Ok(_permit) = permit else {
                return vec![Err(delivery.id)];
            };
            let (ticket, msg) = outgoing(delivery);
            let started = Instant::now();
            let result = dest.outbound.send(&msg).await;
            vec![Ok(judge(&dest, ticket, msg, result, started.elapsed()))]
        });
    }
}

/// Bytes of bodies a worker holds; each share is given back when its send is over.
#[derive(Default, Clone)]
struct Held(Arc<std::sync::atomic::AtomicU64>);

struct Share(Held, u64);

impl Held {
    fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> Share {
        self.0
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Share(self.clone(), bytes)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        (self.0)
            .0
            .fetch_sub(self.1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn run_fifo(dest: Arc<Destination>, store: Arc<dyn Processing>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let head = match store.oldest_pending(&dest.route, &dest.name).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(route = %dest.route, destination = %dest.name, error = %e, "cannot read deliveries; retrying");
                wait(&dest, &shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(head) = head else {
            // Deliveries pending behind a place kept for a message still in its steps (on
            // this node or another): look again soon. Nothing pending: wait to be woken.
            let blocked = matches!(store.next_due(&dest.route, &dest.name).await, Ok(Some(_)));
            let at_most = if blocked { BLOCKED_POLL } else { IDLE_POLL };
            wait(&dest, &shutdown, at_most).await;
            continue;
        };
        // The head waits out its backoff; nothing behind it may overtake.
        if let Ok(wait_for) = head.next_attempt_at.duration_since(SystemTime::now()) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait_for) => {}
            }
            continue;
        }
        if let Some(bucket) = &dest.rate {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = bucket.acquire() => {}
            }
        }
        attempt(&dest, store.as_ref(), head).await;
    }
}

async fn wait(dest: &Destination, shutdown: &CancellationToken, at_most: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = dest.wake.notified() => {}
        _ = tokio::time::sleep(at_most) => {}
    }
}

async fn attempt(dest: &Destination, store: &dyn Processing, d: Delivery) {
    let (ticket, msg) = outgoing(d);
    let started = Instant::now();
    let result = dest.outbound.send(&msg).await;
    record_alone(
        dest,
        store,
        judge(dest, ticket, msg, result, started.elapsed()),
    )
    .await;
}

/// Sends a batch in one call; every attempt shares the batch's duration.
async fn send_batch(dest: &Destination, batch: Vec<Delivery>) -> Vec<Made> {
    let (tickets, msgs): (Vec<Ticket>, Vec<Message>) = batch.into_iter().map(outgoing).unzip();
    let started = Instant::now();
    let results = dest.outbound.send_batch(&msgs).await;
    let duration = started.elapsed();
    tickets
        .into_iter()
        .zip(msgs)
        .zip(results)
        .map(|((ticket, msg), result)| judge(dest, ticket, msg, result, duration))
        .collect()
}

/// What recording an attempt needs to know about its delivery.
#[derive(Clone, Copy)]
struct Ticket {
    id: i64,
    /// Attempts made before this one.
    attempts: u32,
}

/// The message as it goes out (a dead-letter copy says why it is there), and its ticket.
fn outgoing(d: Delivery) -> (Ticket, Message) {
    let ticket = Ticket {
        id: d.id,
        attempts: d.attempts,
    };
    let mut msg = d.message;
    if d.kind == DeliveryKind::DeadLetter {
        if let Some(e) = &d.error {
            msg.headers.insert("error.reason".into(), e.clone());
        }
        msg.headers
            .insert("error.message_id".into(), msg.id.to_string());
    }
    (ticket, msg)
}

/// An attempt made and judged, to be recorded.
struct Made {
    msg: Message,
    attempt: Attempt,
}

impl Made {
    /// After the record's commit: the message's end, and the dead letter's wake-up.
    fn recorded(self, dest: &Destination, ended: Option<crate::store::MessageState>) {
        if let Some(state) = ended {
            telemetry::finished(&self.msg, state);
        }
        if let AttemptOutcome::Dead {
            dead_letter: Some(_),
            ..
        } = &self.attempt.outcome
        {
            if let Some((_, wake)) = &dest.dead_letter {
                wake.notify_one();
            }
        }
    }
}

/// Judges one attempt's result: delivered, retry later, or dead (and dead-lettered).
fn judge(
    dest: &Destination,
    d: Ticket,
    msg: Message,
    result: Result<Sent, SendError>,
    duration: Duration,
) -> Made {
    let number = d.attempts + 1;
    let max = dest.max_attempts();
    let delivered = result.is_ok();
    let (outcome, detail) = match result {
        Ok(sent) => (AttemptOutcome::Delivered, sent.0),
        Err(e) if e.retryable && number < max => {
            let next = SystemTime::now() + backoff(&dest.policy.retry, number, d.id);
            let detail = e.message.clone();
            (
                AttemptOutcome::Retry {
                    error: e.message,
                    next_attempt_at: next,
                },
                detail,
            )
        }
        Err(e) => {
            let error = if e.retryable && max > 1 {
                format!("{} (attempt {number} was the last)", e.message)
            } else {
                e.message
            };
            (
                AttemptOutcome::Dead {
                    error: error.clone(),
                    dead_letter: dest.dead_letter_name(),
                },
                error,
            )
        }
    };
    let attempted = match outcome {
        AttemptOutcome::Delivered => telemetry::Attempted::Delivered,
        AttemptOutcome::Retry { .. } => telemetry::Attempted::Retry,
        AttemptOutcome::Dead { .. } => telemetry::Attempted::Dead,
    };
    telemetry::attempt(&msg, &dest.name, number, duration, attempted, &detail);
    let attempt = Attempt {
        delivery: d.id,
        message: msg.id,
        destination: dest.name.clone(),
        number,
        duration,
        outcome,
        receipt: delivered.then_some(detail),
    };
    Made { msg, attempt }
}

/// Records one attempt in a write of its own. A failed record (a deadlock between nodes, a
/// dropped connection) would leave the delivery to be sent again after its lease: try a few
/// times before giving up.
async fn record_alone(dest: &Destination, store: &dyn Processing, made: Made) {
    let mut tries = 0;
    let recorded = loop {
        tries += 1;
        match store.record_attempt(made.attempt.clone()).await {
            Err(e) if tries < 5 => {
                tracing::warn!(route = %dest.route, destination = %dest.name, message_id = %made.msg.id, error = %e,
                    "could not record the delivery attempt; trying again");
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            result => break result,
        }
    };
    match recorded {
        Ok(ended) => made.recorded(dest, ended),
        Err(e) => {
            tracing::error!(route = %dest.route, destination = %dest.name, message_id = %made.msg.id, error = %e,
            "could not record the delivery attempt; the delivery stays pending and runs again");
            // Not renewed as this node's any more: due again now, or when its lease ends if
            // even this fails (the store is away).
            let _ = store.release_deliveries(vec![made.attempt.delivery]).await;
        }
    }
}

/// `backoff * 2^(attempt-1)`, capped at `max_backoff`, spread by ±20% so that many failed
/// deliveries do not all return at the same instant.
pub fn backoff(retry: &RetryConfig, attempt: u32, salt: i64) -> Duration {
    let base = retry.backoff.0.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(retry.max_backoff.0.as_secs_f64());
    let h = std::collections::hash_map::RandomState::new().hash_one((salt, attempt));
    let unit = (h % 10_000) as f64 / 10_000.0; // 0..1
    Duration::from_secs_f64(capped * (0.8 + 0.4 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Duration as D;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Insert, MessageState};
    use std::sync::atomic::AtomicUsize;

    /// A batch destination that sends only while the test lets it, and counts what it does.
    struct Gated {
        batching: Batching,
        sending: AtomicUsize,
        most: AtomicUsize,
        batches: AtomicUsize,
        sent: std::sync::Mutex<Vec<uuid::Uuid>>,
        open: Semaphore,
    }

    #[async_trait::async_trait]
    impl Outbound for Gated {
        async fn send(&self, _: &Message) -> Result<Sent, SendError> {
            Err(SendError::retryable("batches only"))
        }

        fn batching(&self) -> Batching {
            self.batching
        }

        async fn send_batch(&self, msgs: &[Message]) -> Vec<Result<Sent, SendError>> {
            let now = self.sending.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.batches.fetch_add(1, Ordering::SeqCst);
            // Each batch takes a pass of its own (the test hands them out).
            if let Ok(pass) = self.open.acquire().await {
                pass.forget();
            }
            self.sent.lock().unwrap().extend(msgs.iter().map(|m| m.id));
            self.sending.fetch_sub(1, Ordering::SeqCst);
            msgs.iter().map(|_| Ok(Sent("sent".into()))).collect()
        }
    }

    async fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A batch destination sends `at_once` batches and no more while the ones claimed ahead
    /// wait their turn; at shutdown the waiting ones are released, and the next worker sends
    /// every delivery exactly once — on a real store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_claimed_ahead_wait_their_turn_and_are_released_at_shutdown() {
        for batching in [Batching::Whole, Batching::Pipelined] {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Processing> =
                Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
            let n = 64 * (2 * batching.at_once() + 3);
            let inserts = (0..n)
                .map(|i| Insert {
                    msg: Message::new("r", bytes::Bytes::from(format!("m{i}"))),
                    route_version: "v1".into(),
                    state: MessageState::Received,
                    error: None,
                    parent: None,
                    resume_step: 0,
                    scheduled: true,
                    wire_taps: vec!["tap".into()],
                    fifo: Vec::new(),
                    index: Vec::new(),
                    position: None,
                })
                .collect();
            store.insert(inserts).await.unwrap();
            let out = Arc::new(Gated {
                batching,
                sending: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                batches: AtomicUsize::new(0),
                sent: Default::default(),
                open: Semaphore::new(0),
            });
            let dest = |outbound: Arc<Gated>| {
                Arc::new(Destination {
                    route: "r".into(),
                    name: "tap".into(),
                    kind: DeliveryKind::WireTap,
                    outbound,
                    policy: DeliveryConfig::default(),
                    on_error: DeliveryPolicy::Retry,
                    dead_letter: None,
                    wake: Arc::new(Notify::new()),
                    rate: None,
                    handoff: None,
                })
            };
            let stop = CancellationToken::new();
            let worker = tokio::spawn(run(dest(out.clone()), store.clone(), stop.clone()));
            let at_once = batching.at_once();
            until("the first batches", || {
                out.sending.load(Ordering::SeqCst) == at_once
            })
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(out.most.load(Ordering::SeqCst), at_once, "{batching:?}");
            // As many batches again claimed, waiting their turn.
            let claimed: usize = rusqlite::Connection::open(dir.path().join("store.db"))
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND owner IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(claimed, 2 * at_once * 64, "{batching:?}");
            // Let one batch through: the next one claimed ahead starts without a write.
            out.open.add_permits(1);
            until("the batch claimed ahead", || {
                out.batches.load(Ordering::SeqCst) == at_once + 1
            })
            .await;
            stop.cancel();
            out.open.add_permits(n);
            worker.await.unwrap();
            // What was sending at the shutdown finished; what waited its turn did not start.
            let first = out.sent.lock().unwrap().len();
            assert_eq!(first, 64 * (at_once + 1), "{batching:?}");
            // The batches waiting at the shutdown are due again for the next worker.
            let stop = CancellationToken::new();
            let worker = tokio::spawn(run(dest(out.clone()), store.clone(), stop.clone()));
            until("every delivery", || out.sent.lock().unwrap().len() >= n).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.cancel();
            worker.await.unwrap();
            let sent = out.sent.lock().unwrap().clone();
            let unique: std::collections::BTreeSet<_> = sent.iter().collect();
            assert_eq!((sent.len(), unique.len()), (n, n), "{batching:?}");
            assert_eq!(out.most.load(Ordering::SeqCst), at_once, "{batching:?}");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = RetryConfig {
            max_attempts: 10,
            backoff: D::from_secs(1),
            max_backoff: D::from_secs(10),
        };
        let b1 = backoff(&r, 1, 7).as_secs_f64();
        let b3 = backoff(&r, 3, 7).as_secs_f64();
        let b9 = backoff(&r, 9, 7).as_secs_f64();
        assert!((0.8..=1.2).contains(&b1), "{b1}");
        assert!((3.2..=4.8).contains(&b3), "{b3}");
        assert!((8.0..=12.0).contains(&b9), "{b9}");
    }
}
