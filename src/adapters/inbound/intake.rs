//! The one path every inbound takes into the store: [`Intake::submit`] (and its variants for
//! replies, splits and refusals) runs the route's throttle, search fields and `dedupe` key,
//! the steps inline when they are quick, and commits — only then may the adapter acknowledge
//! its sender.

use crate::message::{Headers, Message};
use crate::steps::split::Split;
use crate::store::{
    HeldDeliveries, Insert, Key, MessageState, Pending, Processed, Processing, StepRecord,
    StoreError, Stored,
};
use crate::telemetry;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

/// How long the intake waits for a message's steps before it commits the message without
/// their outcome (and acknowledges the sender): quick steps cost no write of their own, slow
/// ones never hold a sender up for long.
pub const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// A route's steps and routing, run by the intake itself before the commit, so that a new
/// message and what its steps made of it are stored in one write (the engine provides it;
/// routes with a split step leave it out and take the two-phase path: store, then process).
#[async_trait]
pub trait Steps: Send + Sync {
    /// Runs the steps and routing on a new message. `None` when they could not run at all
    /// (the worker died): then the message is stored as received and processed later.
    async fn run(&self, msg: Message) -> Option<Ran>;
}

/// What the steps made of a new message, to be committed with it.
pub struct Ran {
    pub steps: Vec<StepRecord>,
    pub result: Processed,
    /// Called once the message and its outcome are committed, with its state and the
    /// deliveries held for this node (see [`Stored::Processed`]; none when the steps' outcome
    /// was recorded apart): logs the steps, hands the held deliveries to their workers, wakes
    /// the other destinations, answers a waiting caller.
    pub then: Box<dyn FnOnce(MessageState, HeldDeliveries) + Send>,
}

/// The adapter's way into the store and on to the route's steps.
#[derive(Clone)]
pub struct Intake {
    pub(crate) route: String,
    pub(crate) version: String,
    pub(crate) store: Arc<dyn Processing>,
    pub(crate) queue: mpsc::Sender<Pending>,
    /// Wire-tap destinations, which get a copy of each message as received, and their
    /// workers' wake-ups.
    pub(crate) wire_taps: Vec<(String, Arc<Notify>)>,
    /// The route's FIFO destinations (see [`Insert::fifo`]).
    pub(crate) fifo: Vec<String>,
    /// Wakes the route's scheduler, which queues stored split children.
    pub(crate) scheduled: Arc<Notify>,
    /// Set when the route's first step is a split: files are split while they are read.
    pub(crate) split_first: Option<Arc<Split>>,
    /// Where callers wait for a message's result (request-reply).
    pub(crate) replies: Arc<Replies>,
    /// The route's search fields, extracted as each message is stored.
    pub(crate) index: Arc<crate::keys::Index>,
    /// The route's steps, when they run before the commit (see [`Steps`]).
    pub(crate) steps: Option<Arc<dyn Steps>>,
    /// The route's `dedupe` key: a message whose key was seen within the window is a
    /// duplicate.
    pub(crate) dedupe: Option<Arc<crate::keys::Dedupe>>,
    /// The route's `throttle`: each message taken in takes a token, waiting for one.
    pub(crate) throttle: Option<Arc<crate::throttle::Bucket>>,
}

/// A message's result after its steps, for adapters that answer with it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub state: MessageState,
    pub headers: Headers,
    pub body: Bytes,
    /// The error, or the reason (filtered, split).
    pub error: Option<String>,
}

/// Callers waiting for results, by message id. The engine completes an entry when the
/// message's steps are recorded; an entry nobody waits for is never made.
#[derive(Default)]
pub struct Replies(
    std::sync::Mutex<std::collections::HashMap<Uuid, tokio::sync::oneshot::Sender<Reply>>>,
);

impl Replies {
    fn register(&self, id: Uuid) -> tokio::sync::oneshot::Receiver<Reply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, tx);
        }
        rx
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&id);
        }
    }

    /// Hands `reply` to whoever waits for `id`, if anyone does.
    pub fn complete(&self, id: Uuid, reply: impl FnOnce() -> Reply) {
        let waiter = self.0.lock().ok().and_then(|mut m| m.remove(&id));
        if let Some(tx) = waiter {
            let _ = tx.send(reply());
        }
    }
}

impl Intake {
    pub fn new(
        route: &str,
        version: &str,
        store: Arc<dyn Processing>,
        queue: mpsc::Sender<Pending>,
    ) -> Intake {
        Intake {
            route: route.to_string(),
            version: version.to_string(),
            store,
            queue,
            wire_taps: Vec::new(),
            fifo: Vec::new(),
            scheduled: Arc::new(Notify::new()),
            split_first: None,
            replies: Arc::new(Replies::default()),
            index: Arc::new(crate::keys::Index::default()),
            steps: None,
            dedupe: None,
            throttle: None,
        }
    }

    fn insert(&self, msg: Message, state: MessageState, error: Option<&str>) -> Insert {
        let index = self.index.extract(&msg);
        Insert {
            msg,
            route_version: self.version.clone(),
            state,
            error: error.map(str::to_string),
            parent: None,
            resume_step: 0,
            scheduled: false,
            wire_taps: self.wire_taps.iter().map(|(n, _)| n.clone()).collect(),
            fifo: self.fifo.clone(),
            index,
            position: None,
        }
    }

    fn wake_taps(&self) {
        self.wire_taps.iter().for_each(|(_, w)| w.notify_one());
    }

    /// A place in the route's queue, waited for before anything is stored (backpressure).
    async fn reserve(&self) -> Result<mpsc::Permit<'_, Pending>, StoreError> {
        self.queue
            .reserve()
            .await
            .map_err(|_| StoreError("route is stopping; the message was not accepted".into()))
    }

    fn message(&self, headers: Headers, body: Bytes) -> Message {
        let mut msg = Message::new(&self.route, body);
        msg.headers = headers;
        msg
    }

    /// The stored record of a new message; its keys are among its search fields (each
    /// replacing a field of the same name), so that a later copy is found by them.
    fn insert_keyed(&self, msg: &Message, keys: &[Key], at: &At) -> Insert {
        let mut insert = self.insert(msg.clone(), MessageState::Received, None);
        insert.position = at.0.clone();
        for key in keys {
            insert.index.retain(|(name, _)| *name != key.name);
            insert.index.push((key.name.clone(), key.value.clone()));
        }
        insert
    }

    /// Commits a new message as received, before its steps: under `keys` (see
    /// [`Intake::submit_once`]) a message stored with one of them before makes this one a
    /// duplicate, and the first's id is returned.
    async fn commit_received(
        &self,
        msg: &Message,
        keys: Vec<Key>,
        at: &At,
    ) -> Result<Option<Uuid>, StoreError> {
        let insert = self.insert_keyed(msg, &keys, at);
        let first = match keys.is_empty() {
            true => self.store.insert(vec![insert]).await.map(|_| None)?,
            false => self.store.insert_once(insert, keys).await?,
        };
        match first {
            Some(first) => telemetry::duplicate(msg, first),
            None => {
                telemetry::received(msg);
                self.wake_taps();
            }
        }
        Ok(first)
    }

    /// Hands a committed message to the route's step workers.
    fn queue_committed(&self, permit: mpsc::Permit<'_, Pending>, msg: Message) {
        permit.send(Pending {
            msg,
            resume_step: 0,
            attempts: 0,
        });
    }

    /// Commits a new message and queues it for the steps. When this returns `Ok`, the message
    /// is durable and the adapter may acknowledge the sender. Waits while the route's queue is
    /// full (backpressure), before storing anything.
    pub async fn submit(&self, headers: Headers, body: Bytes) -> Result<Uuid, StoreError> {
        match self.submit_once(headers, body, None).await? {
            Submitted::New(id) | Submitted::Duplicate { id, .. } => Ok(id),
        }
    }

    /// Runs the steps, then commits the message with their outcome in one write (see
    /// [`Steps`]). Steps that take longer than [`INLINE_BUDGET`] do not hold the sender up:
    /// the message is committed as received at that point and their outcome recorded when
    /// they finish. `Err(msg)` hands the message back when the steps could not run.
    async fn submit_processed(
        &self,
        steps: &Arc<dyn Steps>,
        msg: Message,
        keys: Vec<Key>,
        at: &At,
    ) -> Result<Result<Submitted, StoreError>, Message> {
        let steps = steps.clone();
        let input = msg.clone();
        let mut running = Box::pin(async move { steps.run(input).await });
        let ran = tokio::select! {
            biased;
            ran = &mut running => ran,
            _ = tokio::time::sleep(INLINE_BUDGET) => {
                return Ok(self.submit_before_steps(msg, keys, at, running).await);
            }
        };
        let Some(ran) = ran else {
            return Err(msg);
        };
        let insert = self.insert_keyed(&msg, &keys, at);
        let stored = self
            .store
            .insert_processed(insert, ran.steps, ran.result, keys)
            .await;
        Ok(stored.map(|stored| match stored {
            Stored::Processed(state, held) => {
                telemetry::received(&msg);
                self.wake_taps();
                (ran.then)(state, held);
                Submitted::New(msg.id)
            }
            Stored::Duplicate { first } => {
                telemetry::duplicate(&msg, first);
                Submitted::Duplicate { id: msg.id, first }
            }
        }))
    }

    /// The slow case of [`Intake::submit_processed`]: commits the message as received (this
    /// node holds it) while its steps go on, and records their outcome when they finish. If
    /// they cannot, the message is handed back and the route's workers process it.
    async fn submit_before_steps(
        &self,
        msg: Message,
        keys: Vec<Key>,
        at: &At,
        running: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Ran>> + Send>>,
    ) -> Result<Submitted, StoreError> {
        let id = msg.id;
        if let Some(first) = self.commit_received(&msg, keys, at).await? {
            return Ok(Submitted::Duplicate { id, first });
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            let recorded = match running.await {
                Some(ran) => match store.finish_steps(id, ran.steps, ran.result).await {
                    Ok(Some(state)) => {
                        (ran.then)(state, Vec::new());
                        true
                    }
                    Ok(None) => true, // processed already
                    Err(e) => {
                        tracing::error!(route = %msg.route, message_id = %id, error = %e,
                            "could not record the steps' result; the message stays received and is processed again");
                        false
                    }
                },
                None => false,
            };
            if !recorded {
                let _ = store.release(vec![id]).await;
            }
        });
        Ok(Submitted::New(id))
    }

    /// Like [`Intake::submit`], then waits up to `timeout` for the message's result. Returns
    /// the id and the result, or `None` when it did not come in time (the message is stored
    /// and will still be processed). A duplicate (the route's `dedupe`) is answered at once,
    /// with the first's id in the error.
    pub async fn submit_and_wait(
        &self,
        headers: Headers,
        body: Bytes,
        timeout: std::time::Duration,
    ) -> Result<(Uuid, Option<Reply>), StoreError> {
        let msg = self.message(headers, body);
        let id = msg.id;
        let result = self.replies.register(id);
        let headers = msg.headers.clone();
        match self.submit_message(msg, None, &At::default()).await {
            Err(e) => {
                self.replies.forget(id);
                return Err(e);
            }
            Ok(Submitted::Duplicate { first, .. }) => {
                self.replies.forget(id);
                let reply = Reply {
                    state: MessageState::Duplicate,
                    headers,
                    body: Bytes::new(),
                    error: Some(format!("duplicate of message {first}; not processed again")),
                };
                return Ok((id, Some(reply)));
            }
            Ok(Submitted::New(_)) => {}
        }
        match tokio::time::timeout(timeout, result).await {
            Ok(Ok(reply)) => Ok((id, Some(reply))),
            _ => {
                self.replies.forget(id);
                Ok((id, None))
            }
        }
    }

    /// Like [`Intake::submit`] for senders that redeliver what they did not hear acknowledged
    /// (brokers): `key` is a search field (name, value) that identifies the message at its
    /// sender — a broker's message id. When an earlier message of the route was stored with
    /// the same key, this one is recorded as `duplicate` and not processed, and the answer is
    /// [`Submitted::Duplicate`]; either way the sender may be acknowledged.
    pub async fn submit_once(
        &self,
        headers: Headers,
        body: Bytes,
        key: Option<(String, String)>,
    ) -> Result<Submitted, StoreError> {
        self.submit_message(self.message(headers, body), key, &At::default())
            .await
    }

    /// [`Intake::submit_once`] for a reader that keeps its place in the store: `position`
    /// (name, value) is committed in the same write as the message, and read back with
    /// [`Intake::position`] — a database reader's watermark.
    pub async fn submit_at(
        &self,
        headers: Headers,
        body: Bytes,
        key: Option<(String, String)>,
        position: Option<(String, String)>,
    ) -> Result<Submitted, StoreError> {
        self.submit_message(self.message(headers, body), key, &At(position))
            .await
    }

    /// The position `name` last committed by [`Intake::submit_at`] on this route.
    pub async fn position(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.store.position(&self.route, name).await
    }

    /// [`Intake::submit_once`] of a message already made: its steps run before the commit
    /// when the route allows; otherwise it is committed as received and queued for them.
    /// With the route's `dedupe`, its key is one more key; a message without one is recorded
    /// as failed (it cannot be checked, and is never let through unchecked).
    async fn submit_message(
        &self,
        msg: Message,
        key: Option<(String, String)>,
        at: &At,
    ) -> Result<Submitted, StoreError> {
        if let Some(throttle) = &self.throttle {
            throttle.acquire().await;
        }
        let mut keys: Vec<Key> = key.into_iter().map(|(n, v)| Key::sender(n, v)).collect();
        if let Some(dedupe) = &self.dedupe {
            match dedupe.key(&msg) {
                Ok(key) => keys.push(key),
                Err(reason) => return self.fail(msg, &reason).await.map(Submitted::New),
            }
        }
        let msg = match &self.steps {
            Some(steps) => match self.submit_processed(steps, msg, keys.clone(), at).await {
                Ok(stored) => return stored,
                Err(msg) => msg,
            },
            None => msg,
        };
        let permit = self.reserve().await?;
        let id = msg.id;
        if let Some(first) = self.commit_received(&msg, keys, at).await? {
            return Ok(Submitted::Duplicate { id, first });
        }
        self.queue_committed(permit, msg);
        Ok(Submitted::New(id))
    }

    /// Records a message the adapter could not take in (too large, unreadable) as failed,
    /// with `reason`; the body is not stored.
    pub async fn refuse(&self, headers: Headers, reason: &str) -> Result<Uuid, StoreError> {
        self.fail(self.message(headers, Bytes::new()), reason).await
    }

    /// Records `msg` as failed with `reason`, without running its steps.
    async fn fail(&self, msg: Message, reason: &str) -> Result<Uuid, StoreError> {
        self.store
            .insert(vec![self.insert(
                msg.clone(),
                MessageState::Failed,
                Some(reason),
            )])
            .await?;
        telemetry::refused(&msg, reason);
        self.wake_taps();
        // A caller waiting for the result (request-reply) hears it now: no steps will run.
        self.replies.complete(msg.id, || Reply {
            state: MessageState::Failed,
            headers: msg.headers.clone(),
            body: Bytes::new(),
            error: Some(reason.to_string()),
        });
        Ok(msg.id)
    }

    /// The route's first step when it is a split, so an adapter can split while it reads.
    pub fn split_first(&self) -> Option<Arc<Split>> {
        self.split_first.clone()
    }

    /// Stores a message as split while it was read: the parent (headers only, state `split`)
    /// and its children, committed in batches as they come, so memory holds one batch however
    /// large the input. `read` feeds `emit` the children's bodies in order. Returns the parent
    /// id and the number of children once everything is committed: only then may the adapter
    /// acknowledge the sender. If it fails half-way, the children stored so far stay (and are
    /// delivered); taking the input again stores them again, as duplicates.
    pub async fn submit_split(
        &self,
        headers: Headers,
        split: Arc<Split>,
        read: impl FnOnce(&mut dyn FnMut(Bytes) -> Result<(), String>) -> Result<usize, String>
            + Send
            + 'static,
    ) -> Result<(Uuid, usize), SplitError> {
        const BATCH: usize = 256;
        let mut parent = Message::new(&self.route, Bytes::new());
        parent.headers = headers;
        let parent_id = parent.id;
        let (tx, mut rx) = mpsc::channel::<Vec<Insert>>(2);
        let (route_version, p, sp) = (self.version.clone(), parent.clone(), split.clone());
        let fields = self.index.clone();
        // Reading and splitting block: do them on a blocking thread, handing batches over a
        // small channel so that reading waits for the store (backpressure, bounded memory).
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut index = 0usize;
            let result = read(&mut |body: Bytes| {
                index += 1;
                let child = sp.child(&p, index, body);
                let extracted = fields.extract(&child);
                batch.push(Insert {
                    msg: child,
                    route_version: route_version.clone(),
                    state: MessageState::Received,
                    error: None,
                    parent: Some(p.id),
                    resume_step: 1,
                    scheduled: true,
                    wire_taps: Vec::new(),
                    fifo: Vec::new(),
                    index: extracted,
                    position: None,
                });
                if batch.len() == BATCH {
                    tx.blocking_send(std::mem::take(&mut batch))
                        .map_err(|_| "the store stopped taking children".to_string())?;
                }
                Ok(())
            });
            if result.is_ok() && !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            result
        });
        let mut parent_insert = self.insert(parent.clone(), MessageState::Split, None);
        parent_insert.error = Some("split while read".into());
        self.store
            .insert(vec![parent_insert])
            .await
            .map_err(|e| SplitError::NotStored(e.to_string()))?;
        telemetry::received(&parent);
        self.wake_taps();
        let mut stored = 0usize;
        let mut store_error = None;
        while let Some(batch) = rx.recv().await {
            let n = batch.len();
            if let Err(e) = self.store.insert(batch).await {
                // Dropping the receiver stops the reader at its next batch.
                store_error = Some(e.to_string());
                break;
            }
            stored += n;
            self.scheduled.notify_one();
        }
        drop(rx);
        let outcome = reader
            .await
            .map_err(|e| format!("the reader failed: {e}"))
            .and_then(|r| r)
            .and_then(|n| match store_error {
                Some(e) => Err(format!("cannot store children: {e}")),
                None => Ok(n),
            });
        let (state, text) = match &outcome {
            Ok(n) => (
                MessageState::Split,
                format!("split into {n} messages while read"),
            ),
            Err(e) => (
                MessageState::Failed,
                format!("split failed after {stored} messages: {e}"),
            ),
        };
        self.store
            .annotate(parent_id, state, &text)
            .await
            .map_err(|e| SplitError::NotStored(e.to_string()))?;
        match outcome {
            Ok(n) => Ok((parent_id, n)),
            Err(_) => Err(SplitError::Failed {
                parent: parent_id,
                error: text,
            }),
        }
    }
}

/// The reader's position committed with a message (see [`Intake::submit_at`]).
#[derive(Default)]
struct At(Option<(String, String)>);

/// What [`Intake::submit_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Stored and queued for the steps.
    New(Uuid),
    /// Stored as `duplicate` of `first`, not processed.
    Duplicate { id: Uuid, first: Uuid },
}

/// Why a split while reading did not complete.
#[derive(Debug)]
pub enum SplitError {
    /// Nothing was recorded (the store refused the parent): leave the input where it is.
    NotStored(String),
    /// The parent is recorded as failed with `error`; children stored before the failure
    /// carry on.
    Failed { parent: Uuid, error: String },
}
