//! The engine: runs a set of routes over one store, resumes unfinished work, shuts down.
//!
//! Per route it runs, as tasks on one [`TaskTracker`]:
//! - the inbound adapter, which commits each message through an [`Intake`] and then
//!   acknowledges its sender;
//! - `concurrency` step workers that take messages from the route's bounded queue, run the
//!   steps and record the result with one pending delivery per destination;
//! - a resume feeder that, at start, queues messages a previous run stored but never
//!   finished processing;
//! - one delivery worker per destination ([`crate::delivery`]).
//!
//! Shutdown: cancel the token; inbound adapters stop taking new work, step workers finish the
//! message in hand, delivery workers finish the attempts in flight; then the store closes.
//! Whatever was not finished is in the store and resumes at the next start.

use crate::adapters::inbound::{Inbound, Intake};
use crate::delivery::{self, Destination};
use crate::message::Message;
use crate::route::Route;
use crate::steps::{self, BuiltStep};
use crate::store::{Processed, StepRecord, Store};
use crate::telemetry;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Messages a route's queue holds between intake and its step workers, per worker.
const QUEUE_PER_WORKER: usize = 16;
/// Messages read from the store per page when resuming.
const RESUME_PAGE: usize = 256;

pub struct Engine {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    routes: Vec<String>,
}

/// A route's running parts that its tasks share.
struct RunningRoute {
    id: String,
    inbound: Arc<dyn Inbound>,
    steps: Vec<BuiltStep>,
    destinations: Vec<Arc<Destination>>,
}

impl Engine {
    /// Builds every route, then starts them all. Fails before starting anything when a route
    /// cannot be built (a missing directory, say), naming the route and the reason.
    pub async fn start(routes: Vec<Route>, store: Arc<dyn Store>) -> anyhow::Result<Engine> {
        let mut built = Vec::new();
        for route in &routes {
            let context = || format!("route `{}` ({})", route.id, route.file.display());
            let inbound = route.from.build().with_context(context)?;
            let steps = route.steps.clone();
            let mut destinations = Vec::new();
            for (i, to) in route.to.iter().enumerate() {
                destinations.push(Arc::new(Destination {
                    route: route.id.clone(),
                    name: Route::destination_name(i),
                    outbound: to
                        .build()
                        .with_context(|| format!("{}: to[{i}]", context()))?,
                    retry: to.retry().clone(),
                    wake: Arc::new(Notify::new()),
                }));
            }
            built.push((
                route,
                Arc::new(RunningRoute {
                    id: route.id.clone(),
                    inbound,
                    steps,
                    destinations,
                }),
            ));
        }

        let engine = Engine {
            store,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            routes: routes.iter().map(|r| r.id.clone()).collect(),
        };
        for (route, running) in built {
            engine.launch(route, running);
        }
        tracing::info!(routes = ?engine.routes, "engine started");
        Ok(engine)
    }

    fn launch(&self, route: &Route, running: Arc<RunningRoute>) {
        let workers = route.concurrency.max(1);
        let (tx, rx) = mpsc::channel::<Message>(workers * QUEUE_PER_WORKER);
        let rx = Arc::new(Mutex::new(rx));
        // Everything stored before this id was received by an earlier run.
        let resume_before = Uuid::now_v7();

        for dest in &running.destinations {
            let (dest, store, stop) = (dest.clone(), self.store.clone(), self.shutdown.clone());
            self.tasks.spawn(delivery::run(dest, store, stop));
        }
        for _ in 0..workers {
            let (r, rx, store, stop) = (
                running.clone(),
                rx.clone(),
                self.store.clone(),
                self.shutdown.clone(),
            );
            self.tasks.spawn(async move {
                loop {
                    let next = {
                        let mut rx = rx.lock().await;
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => None,
                            m = rx.recv() => m,
                        }
                    };
                    let Some(msg) = next else { break };
                    process(&r, store.as_ref(), msg).await;
                }
            });
        }
        {
            let (id, tx, store, stop) = (
                route.id.clone(),
                tx.clone(),
                self.store.clone(),
                self.shutdown.clone(),
            );
            self.tasks
                .spawn(async move { resume(&id, resume_before, tx, store.as_ref(), &stop).await });
        }
        let intake = Intake::new(&route.id, &route.version, self.store.clone(), tx);
        let (inbound, stop, id) = (
            running.inbound.clone(),
            self.shutdown.clone(),
            route.id.clone(),
        );
        self.tasks.spawn(async move {
            if let Err(e) = inbound.run(intake, stop).await {
                tracing::error!(route = %id, error = format!("{e:#}"), "inbound adapter stopped");
            }
        });
    }

    /// Ids of the running routes.
    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stops intake, lets work in hand finish (at most `drain`), then closes the store.
    pub async fn shutdown(self, drain: Duration) -> anyhow::Result<()> {
        tracing::info!("shutting down: intake stopped, finishing work in hand");
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(drain, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "work still running after {drain:?}; stopping anyway (it resumes at the next start)"
            );
        }
        self.store.close().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Applies the route's steps, logging each, and turns what they did into store records.
fn run_steps(route: &RunningRoute, msg: Message) -> (Message, Vec<StepRecord>, Option<String>) {
    let (current, runs, failure) = steps::run_all(&route.steps, msg, |run, msg| {
        telemetry::step(msg, &run.name, run.duration, run.error.as_deref());
    });
    let records = runs
        .into_iter()
        .map(|r| StepRecord {
            step: r.name,
            ok: r.error.is_none(),
            duration: r.duration,
            detail: r.error,
        })
        .collect();
    (current, records, failure)
}

/// Queues the route's messages that an earlier run stored but did not finish processing.
async fn resume(
    route: &str,
    before: Uuid,
    tx: mpsc::Sender<Message>,
    store: &dyn Store,
    stop: &CancellationToken,
) {
    let mut after = None;
    let mut resumed = 0usize;
    loop {
        let page = match store.received_messages(route, after, RESUME_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(route, error = %e, "cannot read unfinished messages; they resume at the next start");
                return;
            }
        };
        let last = page.len() < RESUME_PAGE;
        for msg in page {
            if msg.id >= before {
                return;
            }
            after = Some(msg.id);
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = tx.send(msg) => if sent.is_err() { return },
            }
            resumed += 1;
        }
        if last {
            break;
        }
    }
    if resumed > 0 {
        tracing::info!(route, resumed, "resumed unfinished messages from the store");
    }
}

/// Runs the steps on one message and records the outcome.
async fn process(route: &Arc<RunningRoute>, store: &dyn Store, msg: Message) {
    let started = Instant::now();
    let original = msg.clone();
    // Steps are CPU work (parsing, mapping): keep them off the threads that serve I/O, so a
    // large message never delays intake acknowledgements or deliveries.
    let r = route.clone();
    let ran = tokio::task::spawn_blocking(move || run_steps(&r, msg)).await;
    let Ok((current, records, failure)) = ran else {
        tracing::error!(route = %route.id, message_id = %original.id,
            "step worker failed; the message stays received and is processed again at the next start");
        return;
    };
    let result = match &failure {
        None => Processed::Routed {
            headers: current.headers.clone(),
            body: current.body.clone(),
            destinations: route.destinations.iter().map(|d| d.name.clone()).collect(),
        },
        Some(error) => Processed::Failed {
            error: error.clone(),
        },
    };
    match store.finish_steps(current.id, records, result).await {
        Ok(Some(state)) => {
            let destinations = if failure.is_none() {
                route.destinations.len()
            } else {
                0
            };
            telemetry::processed(&current, state, destinations, started.elapsed());
            match failure {
                None => route.destinations.iter().for_each(|d| d.wake.notify_one()),
                Some(error) => {
                    if let Err(e) = route.inbound.failed(&original, &error).await {
                        tracing::error!(route = %route.id, message_id = %original.id, error = format!("{e:#}"),
                            "could not hand the failed message back to the inbound side (it is kept in the store)");
                    }
                }
            }
        }
        Ok(None) => {} // processed already, by an earlier pass
        Err(e) => tracing::error!(route = %route.id, message_id = %current.id, error = %e,
            "could not record the steps' result; the message stays received and is processed again at the next start"),
    }
}
