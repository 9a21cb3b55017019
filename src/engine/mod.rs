//! The engine: runs a set of routes over one store, resumes unfinished work, shuts down.
//!
//! Per route it runs, as tasks on one [`TaskTracker`]:
//! - the inbound adapter, which commits each message through an [`Intake`] and then
//!   acknowledges its sender;
//! - `concurrency` step workers that take messages from the route's bounded queue, run the
//!   steps and routing, and record the result with one pending delivery per destination;
//! - a resume feeder that, at start, queues messages a previous run stored but never
//!   finished processing;
//! - a scheduler that queues stored messages when they fall due: split children, and
//!   messages whose steps are retried (`on_error: retry`);
//! - one delivery worker per destination ([`crate::delivery`]), the dead letter and wire taps
//!   included.
//!
//! Shutdown: cancel the token; inbound adapters stop taking new work, step workers finish the
//! message in hand, delivery workers finish the attempts in flight; then the store closes.
//! Whatever was not finished is in the store and resumes at the next start.

mod build;
mod upkeep;
mod work;

use build::{build, spawn_inbound};
use work::{decide_on_fitting_thread, record, resume, schedule, InlineSteps};

use crate::adapters::inbound::{Inbound, Intake, Ran, Replies, Reply};
use crate::delivery::{self, Destination};
use crate::listeners::Listeners;
use crate::message::Message;
use crate::route::{OnError, Route, StepPolicy};
use crate::routing::Router;
use crate::script;
use crate::steps::{self, BuildContext, BuiltStep, Outcome};
use crate::store::{
    self, Delivery, DeliveryKind, Insert, MessageState, Pending, Processed, Processing, StepRecord,
    Store,
};
use crate::telemetry;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Messages a route's queue holds between intake and its step workers, per worker.
const QUEUE_PER_WORKER: usize = 16;
/// Messages read from the store per page when resuming or scheduling.
const PAGE: usize = 256;
/// Longest the scheduler sleeps between looks at the store.
const SCHEDULER_POLL: Duration = Duration::from_secs(5);

pub struct Engine {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    /// Engine-wide tasks (the reload watcher).
    tasks: TaskTracker,
    /// The running version of each route, by id.
    versions: Arc<Mutex<HashMap<String, RouteVersion>>>,
    listeners: Arc<Listeners>,
    /// How long a stopping route version may take to finish its work in hand.
    drain: Duration,
    /// What the last reload round did, for the admin API.
    last_reload: Mutex<Option<ReloadSummary>>,
}

/// What a reload round did ([`crate::reload`]), kept for the admin API.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReloadSummary {
    /// When the round ran (RFC 3339).
    pub at: String,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// `file:line:column: message` for each problem found.
    pub rejected: Vec<String>,
}

/// A route version built and not started yet ([`Engine::build_version`]).
pub(crate) struct BuiltVersion {
    pub(crate) route: Arc<Route>,
    running: Arc<RunningRoute>,
}

/// One running version of a route, with its own tasks and stop signals, so that a reload can
/// stop it alone.
pub(crate) struct RouteVersion {
    pub(crate) route: Arc<Route>,
    /// Stops the inbound adapter first, so everything it accepted is committed and queued...
    intake_stop: CancellationToken,
    inbound: JoinHandle<()>,
    /// ...then the workers, the scheduler and the deliveries.
    stop: CancellationToken,
    tasks: TaskTracker,
    /// What restarts intake after a pause.
    running: Arc<RunningRoute>,
    intake: Intake,
    paused: bool,
    /// Messages queued for the steps; what is left here at a stop is handed back to the store.
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    /// True while another node runs this route's exclusive inbound (a shared directory).
    standby: Arc<std::sync::atomic::AtomicBool>,
}

/// A route as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteStatus {
    pub id: String,
    pub description: Option<String>,
    pub version: String,
    pub file: String,
    pub state: &'static str,
    /// Broker connections of the inbound (`from`) and the destinations, by adapter name.
    pub connections: Vec<(String, crate::adapters::broker::LinkStatus)>,
}
/// A route's running parts that its tasks share.
struct RunningRoute {
    id: String,
    version: String,
    inbound: Arc<dyn Inbound>,
    steps: Vec<BuiltStep>,
    router: Arc<Router>,
    on_error: OnError,
    destinations: HashMap<String, Arc<Destination>>,
    dead_letter: Option<String>,
    /// Wakes the scheduler when children or retries were stored.
    scheduled: Arc<Notify>,
    /// Callers (HTTP `reply` mode) waiting for results.
    replies: Arc<Replies>,
    /// The route's search fields.
    index: Arc<crate::keys::Index>,
    /// No destination at all (an HTTP `reply` route that only answers): a message is done,
    /// `delivered`, once its steps are, instead of `unrouted`.
    replies_only: bool,
    /// Wakes the route's aggregator when a member joined its group.
    joined: Arc<Notify>,
    /// Messages left to send to blocking threads since a script ran over its budget in
    /// place (see `work::decide_on_fitting_thread`).
    over_budget: AtomicU32,
}

impl RunningRoute {
    /// Whether a script of this route ran over its in-place budget in the last few messages
    /// (counting this one down).
    fn recently_over_budget(&self) -> bool {
        self.over_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The state of each broker connection the route's adapters hold.
    fn links(&self) -> Vec<(String, crate::adapters::broker::LinkStatus)> {
        let inbound = self
            .inbound
            .link()
            .map(|l| ("from".to_string(), l.status()));
        let mut outbound: Vec<_> = self
            .destinations
            .values()
            .filter_map(|d| d.outbound.link().map(|l| (d.name.clone(), l.status())))
            .collect();
        outbound.sort_by(|a, b| a.0.cmp(&b.0));
        inbound.into_iter().chain(outbound).collect()
    }

    fn wake(&self, name: &str) {
        if let Some(d) = self.destinations.get(name) {
            d.wake.notify_one();
        }
    }
}

impl Engine {
    /// Builds every route, then starts them all. Fails before starting anything when a route
    /// cannot be built (a missing directory, say), naming the route and the reason.
    pub async fn start(routes: Vec<Route>, store: Arc<dyn Store>) -> anyhow::Result<Engine> {
        let engine = Engine {
            store,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            versions: Arc::new(Mutex::new(HashMap::new())),
            listeners: Arc::new(Listeners::default()),
            drain: Duration::from_secs(30),
            last_reload: Mutex::new(None),
        };
        let mut built = Vec::new();
        for route in routes {
            let running = Arc::new(build(&route, &engine.listeners)?);
            built.push((Arc::new(route), running));
        }
        let mut versions = engine.versions.lock().await;
        for (route, running) in built {
            let v = engine.launch(route, running);
            versions.insert(v.route.id.clone(), v);
        }
        let ids: Vec<&String> = versions.keys().collect();
        tracing::info!(routes = ?ids, "engine started");
        drop(versions);
        engine.renew_leases();
        Ok(engine)
    }

    /// Builds a route version's parts (adapters, destinations) without starting anything, so
    /// that a reload finds every problem before it stops the running version.
    pub(crate) fn build_version(&self, route: Arc<Route>) -> anyhow::Result<BuiltVersion> {
        let running = Arc::new(build(&route, &self.listeners)?);
        Ok(BuiltVersion { route, running })
    }

    /// Starts a built version's intake, workers and deliveries.
    pub(crate) fn launch_version(&self, built: BuiltVersion) -> RouteVersion {
        self.launch(built.route, built.running)
    }

    /// Stops a route version: intake first (what it accepted is committed), then the rest,
    /// each within the drain time. Unfinished work stays in the store for the next version.
    pub(crate) async fn stop_version(&self, v: RouteVersion) {
        v.intake_stop.cancel();
        if tokio::time::timeout(self.drain, v.inbound).await.is_err() {
            tracing::warn!(route = %v.route.id, "intake did not stop within the drain time");
        }
        v.stop.cancel();
        v.tasks.close();
        if tokio::time::timeout(self.drain, v.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(route = %v.route.id, "work still running after the drain time; it resumes from the store");
        }
        // What this version claimed but never started goes back to the store, where the next
        // version (or another node) claims it.
        let mut left = Vec::new();
        {
            let mut queue = v.queue.lock().await;
            queue.close();
            while let Ok(p) = queue.try_recv() {
                left.push(p.msg.id);
            }
        }
        if !left.is_empty() {
            if let Err(e) = self.store.release(left).await {
                tracing::error!(route = %v.route.id, error = %e, "cannot hand queued messages back; they resume when their lease ends");
            }
        }
    }

    pub(crate) fn versions(&self) -> &Arc<Mutex<HashMap<String, RouteVersion>>> {
        &self.versions
    }

    pub(crate) async fn set_last_reload(&self, summary: ReloadSummary) {
        *self.last_reload.lock().await = Some(summary);
    }

    /// What the last reload round did, if one ran.
    pub async fn last_reload(&self) -> Option<ReloadSummary> {
        self.last_reload.lock().await.clone()
    }

    pub(crate) fn listeners(&self) -> &Arc<Listeners> {
        &self.listeners
    }

    /// The signal that stops the engine and its tasks.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `task` as one of the engine's own (waited for at shutdown), such as the reload
    /// watcher of [`crate::reload`].
    pub(crate) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    fn launch(&self, route: Arc<Route>, running: Arc<RunningRoute>) -> RouteVersion {
        let stop = self.shutdown.child_token();
        let intake_stop = stop.child_token();
        let tasks = TaskTracker::new();
        let workers = route.concurrency.max(1);
        let (tx, rx) = mpsc::channel::<Pending>(workers * QUEUE_PER_WORKER);
        let rx = Arc::new(Mutex::new(rx));

        for dest in running.destinations.values() {
            let (dest, store, stop) = (dest.clone(), self.store.clone(), stop.clone());
            tasks.spawn(delivery::run(dest, store, stop));
        }
        // A worker hands the commit of each outcome to a task of its own and takes the next
        // message: commits overlap (the store groups them), and no worker waits on a disk.
        // The permits bound how many outcomes wait for their commit.
        let committing = Arc::new(tokio::sync::Semaphore::new(workers * QUEUE_PER_WORKER));
        for _ in 0..workers {
            let (r, rx, store, stop, tasks, committing) = (
                running.clone(),
                rx.clone(),
                self.store.clone(),
                stop.clone(),
                tasks.clone(),
                committing.clone(),
            );
            tasks.clone().spawn(async move {
                loop {
                    let next = {
                        let mut rx = rx.lock().await;
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => None,
                            m = rx.recv() => m,
                        }
                    };
                    let Some(work) = next else { break };
                    let Ok(permit) = committing.clone().acquire_owned().await else {
                        break;
                    };
                    let Some(decision) = decide_on_fitting_thread(&r, work).await else {
                        continue;
                    };
                    let (r, store) = (r.clone(), store.clone());
                    tasks.spawn(async move {
                        record(&r, store.as_ref(), decision).await;
                        drop(permit);
                    });
                }
            });
        }
        {
            let (id, tx, store, stop) = (
                route.id.clone(),
                tx.clone(),
                self.store.clone(),
                stop.clone(),
            );
            tasks.spawn(async move { resume(&id, tx, store.as_ref(), &stop).await });
        }
        {
            let (r, tx, store, stop) = (
                running.clone(),
                tx.clone(),
                self.store.clone(),
                stop.clone(),
            );
            tasks.spawn(async move { schedule(&r, tx, store.as_ref(), &stop).await });
        }
        if let Some(step) = route.aggregate.clone() {
            let aggregator = crate::aggregator::Aggregator {
                route: route.id.clone(),
                version: route.version.clone(),
                step,
                index: running.index.clone(),
                joined: running.joined.clone(),
                scheduled: running.scheduled.clone(),
            };
            tasks.spawn(aggregator.run(self.store.clone(), stop.clone()));
        }
        let mut intake = Intake::new(&route.id, &route.version, self.store.clone(), tx);
        intake.wire_taps = running
            .destinations
            .values()
            .filter(|d| d.kind == DeliveryKind::WireTap)
            .map(|d| (d.name.clone(), d.wake.clone()))
            .collect();
        intake.fifo = route
            .destinations
            .iter()
            .filter(|d| {
                d.kind == DeliveryKind::Main
                    && d.config.delivery().ordering
                        == Some(crate::adapters::outbound::DeliveryOrder::Fifo)
            })
            .map(|d| d.name.clone())
            .collect();
        intake.scheduled = running.scheduled.clone();
        intake.split_first = route.split_first.clone();
        intake.replies = running.replies.clone();
        intake.index = running.index.clone();
        intake.dedupe = route.dedupe.clone();
        intake.throttle = route
            .throttle
            .as_ref()
            .map(|t| Arc::new(crate::throttle::Bucket::new(t.rate, t.burst)));
        // One write per message: the steps run at intake and their outcome is committed with
        // the message. A split may be long (and makes many messages): such routes store first
        // and process after.
        if !running.steps.iter().any(|s| s.name.ends_with(".split")) {
            intake.steps = Some(Arc::new(InlineSteps {
                route: running.clone(),
                running: Arc::new(tokio::sync::Semaphore::new(workers)),
            }));
        }
        let standby = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inbound = spawn_inbound(
            &running,
            intake.clone(),
            intake_stop.clone(),
            self.store.clone(),
            standby.clone(),
        );
        RouteVersion {
            route,
            intake_stop,
            inbound,
            stop,
            tasks,
            running,
            intake,
            paused: false,
            queue: rx,
            standby,
        }
    }

    /// Stops a route's intake; what it already accepted is processed and delivered.
    pub async fn pause(&self, id: &str) -> Result<(), String> {
        let mut versions = self.versions.lock().await;
        let v = versions
            .get_mut(id)
            .ok_or_else(|| format!("no route `{id}`"))?;
        if v.paused {
            return Ok(());
        }
        v.intake_stop.cancel();
        let handle = std::mem::replace(&mut v.inbound, tokio::spawn(async {}));
        let _ = tokio::time::timeout(self.drain, handle).await;
        // Until the resume (or a stop), a listener tells its callers the route is paused.
        v.intake_stop = v.stop.child_token();
        let (inbound, until) = (v.running.inbound.clone(), v.intake_stop.clone());
        v.inbound = tokio::spawn(async move { inbound.paused(until).await });
        v.paused = true;
        tracing::info!(event = "pause", route = %id, "route paused: intake stopped");
        Ok(())
    }

    /// Starts a paused route's intake again.
    pub async fn resume(&self, id: &str) -> Result<(), String> {
        let mut versions = self.versions.lock().await;
        let v = versions
            .get_mut(id)
            .ok_or_else(|| format!("no route `{id}`"))?;
        if !v.paused {
            return Ok(());
        }
        v.intake_stop.cancel();
        let answering = std::mem::replace(&mut v.inbound, tokio::spawn(async {}));
        let _ = tokio::time::timeout(self.drain, answering).await;
        v.intake_stop = v.stop.child_token();
        v.inbound = spawn_inbound(
            &v.running,
            v.intake.clone(),
            v.intake_stop.clone(),
            self.store.clone(),
            v.standby.clone(),
        );
        v.paused = false;
        tracing::info!(event = "resume", route = %id, "route resumed");
        Ok(())
    }

    /// The running routes, by id.
    pub async fn status(&self) -> Vec<RouteStatus> {
        let versions = self.versions.lock().await;
        let mut out: Vec<RouteStatus> = versions
            .values()
            .map(|v| RouteStatus {
                id: v.route.id.clone(),
                description: v.route.description.clone(),
                version: v.route.version.clone(),
                file: v.route.file.display().to_string(),
                state: if v.paused {
                    "paused"
                } else if v.standby.load(std::sync::atomic::Ordering::Relaxed) {
                    "standing by"
                } else {
                    "running"
                },
                connections: v.running.links(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stops intake, lets work in hand finish (at most `drain`), then closes the store.
    pub async fn shutdown(&self, drain: Duration) -> anyhow::Result<()> {
        tracing::info!("shutting down: stopping intake");
        let mut versions: Vec<RouteVersion> =
            self.versions.lock().await.drain().map(|(_, v)| v).collect();
        // Intake of every route first (what it accepted is committed), then everything else.
        versions.iter().for_each(|v| v.intake_stop.cancel());
        // Connections close as their requests are answered; a body still arriving is cut.
        self.listeners.close_all();
        self.shutdown.cancel();
        self.tasks.close();
        let all = async {
            for v in versions.iter_mut() {
                let _ = (&mut v.inbound).await;
            }
            tracing::info!("intake stopped; finishing work in hand");
            for v in versions {
                v.tasks.close();
                v.tasks.wait().await;
            }
            self.tasks.wait().await;
        };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!(
                "work still running after {drain:?}; stopping anyway (it resumes at the next start)"
            );
        }
        self.listeners.close_all(); // the sockets handed back since
        self.store.close().await?;
        tracing::info!("stopped");
        Ok(())
    }
}
