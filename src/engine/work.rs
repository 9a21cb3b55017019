//! The step workers' side of a route: what resumes and what falls due (`resume`, `schedule`),
//! running the steps and routing off the I/O threads (`decide`), and recording the outcome in
//! one write (`record`); plus the inline path an inbound takes when the steps are quick.

use super::*;

/// Queues the route's messages that nobody is processing: at the start, what an earlier run
/// left unfinished; later, what a stopped route version handed back, and the work of another
/// node whose lease ran out (a shared store). Looks again every third of the lease, at most
/// every 5 seconds.
pub(super) async fn resume(
    route: &str,
    tx: mpsc::Sender<Pending>,
    store: &dyn Processing,
    stop: &CancellationToken,
) {
    let every = (store.lease() / 3).min(Duration::from_secs(5));
    loop {
        let mut resumed = 0usize;
        loop {
            let page = match store.claim_received(route, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(route, error = %e, "cannot read unfinished messages; trying again");
                    break;
                }
            };
            let last = page.len() < PAGE;
            for work in page {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    sent = tx.send(work) => if sent.is_err() { return },
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
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Queues stored messages as they fall due: split children and retried steps.
pub(super) async fn schedule(
    route: &RunningRoute,
    tx: mpsc::Sender<Pending>,
    store: &dyn Processing,
    stop: &CancellationToken,
) {
    while !stop.is_cancelled() {
        let due = match store
            .take_scheduled(&route.id, SystemTime::now(), PAGE)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(route = %route.id, error = %e, "cannot read scheduled messages; retrying");
                Vec::new()
            }
        };
        if due.len() == PAGE {
            // More are waiting: queue these and look again at once.
            for work in due {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    sent = tx.send(work) => if sent.is_err() { return },
                }
            }
            continue;
        }
        for work in due {
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = tx.send(work) => if sent.is_err() { return },
            }
        }
        let wait = match store.next_scheduled(&route.id).await {
            Ok(Some(t)) => t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(SCHEDULER_POLL),
            _ => SCHEDULER_POLL,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = route.scheduled.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

/// What the steps and routing made of one message: what to record, and what to do once it
/// is recorded.
pub(super) struct Decision {
    records: Vec<StepRecord>,
    result: Processed,
    after: After,
}

/// What follows the commit of a message's outcome.
pub(super) struct After {
    /// The message as received and as the steps left it.
    original: Message,
    current: Message,
    /// For the log, after the commit.
    records: Vec<StepRecord>,
    started: Instant,
    destinations: Vec<String>,
    reason: Option<String>,
    failure: Option<String>,
    dead_lettered: bool,
    rescheduled: bool,
}

/// Runs the steps and routing on one message (CPU work: call it off the I/O threads) and
/// turns what they did into store records.
pub(super) fn decide(route: &RunningRoute, work: Pending, started: Instant) -> Decision {
    let original = work.msg.clone();
    let Pending {
        msg,
        resume_step,
        attempts,
    } = work;
    let (current, runs, outcome) = steps::run_all(&route.steps, resume_step, msg, |_, _| {});
    let records: Vec<StepRecord> = runs
        .into_iter()
        .map(|r| StepRecord {
            step: r.name,
            ok: r.error.is_none(),
            duration: r.duration,
            detail: r.error,
        })
        .collect();
    let work = Pending {
        msg: current,
        resume_step,
        attempts,
    };
    // Routing runs scripts too; it runs here, on the same thread.
    let routed = match &outcome {
        Outcome::Done => Some(route.router.destinations(&work.msg)),
        _ => None,
    };
    let current = &work.msg;
    let mut failure: Option<String> = None;
    let result = match (outcome, routed) {
        (Outcome::Done, Some(Ok(destinations)))
            if destinations.is_empty() && !route.replies_only =>
        {
            Processed::Unrouted {
                headers: current.headers.clone(),
                body: current.body.clone(),
            }
        }
        (Outcome::Done, Some(Ok(destinations))) => Processed::Routed {
            headers: current.headers.clone(),
            body: current.body.clone(),
            destinations,
            held: Vec::new(),
        },
        (Outcome::Done, routed) => {
            let error = match routed {
                Some(Err(e)) => e,
                _ => "routing did not run".to_string(),
            };
            failure = Some(error.clone());
            on_step_error(route, &work, error, route.on_error.transform)
        }
        (Outcome::Filtered(reason), _) => Processed::Filtered { reason },
        (Outcome::Aggregate(join), _) => Processed::Aggregate {
            headers: current.headers.clone(),
            body: current.body.clone(),
            join,
        },
        (
            Outcome::Split {
                children,
                resume_at,
            },
            _,
        ) => Processed::Split {
            children: children
                .into_iter()
                .map(|msg| Insert {
                    route_version: route.version.clone(),
                    state: MessageState::Received,
                    error: None,
                    parent: Some(current.id),
                    resume_step: resume_at,
                    scheduled: true,
                    wire_taps: Vec::new(),
                    // Children are stored beside their parent, which left its places.
                    fifo: Vec::new(),
                    index: route.index.extract(&msg),
                    position: None,
                    msg,
                })
                .collect(),
        },
        (Outcome::Failed { error, class }, _) => {
            failure = Some(error.clone());
            on_step_error(route, &work, error, route.on_error.for_class(class))
        }
    };
    let after = After {
        destinations: match &result {
            Processed::Routed { destinations, .. } => destinations.clone(),
            _ => Vec::new(),
        },
        reason: match &result {
            Processed::Failed { error, .. } => Some(error.clone()),
            Processed::Filtered { reason } => Some(reason.clone()),
            _ => None,
        },
        dead_lettered: matches!(
            &result,
            Processed::Failed {
                dead_letter: Some(_),
                ..
            }
        ),
        rescheduled: matches!(&result, Processed::Retry { .. } | Processed::Split { .. }),
        failure,
        records: records.clone(),
        started,
        original,
        current: work.msg,
    };
    Decision {
        records,
        result,
        after,
    }
}

/// Everything that follows the commit of a message's outcome: the log, wake-ups of the
/// destinations (but those in `handed`, whose workers got their delivery in memory) and the
/// scheduler, the answer to a waiting caller, and a failed message handed back to the inbound
/// side (the file adapter's error directory).
pub(super) fn recorded(
    route: &Arc<RunningRoute>,
    after: After,
    state: MessageState,
    handed: &[String],
) {
    let current = &after.current;
    for r in &after.records {
        telemetry::step(current, &r.step, r.duration, r.detail.as_deref());
    }
    telemetry::processed(
        current,
        state,
        after.destinations.len(),
        after.started.elapsed(),
    );
    if state != MessageState::Received {
        route.replies.complete(current.id, || Reply {
            state,
            headers: current.headers.clone(),
            body: current.body.clone(),
            error: after.reason.clone(),
        });
    }
    after
        .destinations
        .iter()
        .filter(|d| !handed.contains(d))
        .for_each(|d| route.wake(d));
    if after.dead_lettered {
        if let Some(dl) = &route.dead_letter {
            route.wake(dl);
        }
    }
    if after.rescheduled {
        route.scheduled.notify_one();
    }
    if state == MessageState::Aggregating {
        route.joined.notify_one();
    }
    if let (Some(error), MessageState::Failed) = (after.failure, state) {
        let (route, original) = (route.clone(), after.original);
        tokio::spawn(async move {
            if let Err(e) = route.inbound.failed(&original, &error).await {
                tracing::error!(route = %route.id, message_id = %original.id, error = format!("{e:#}"),
                    "could not hand the failed message back to the inbound side (it is kept in the store)");
            }
        });
    }
}

/// How long scripts may run on the thread that received their message before they are
/// stopped and the message handed to a blocking thread: several times a typical transform
/// (20–60 µs), short enough not to hold the thread's other connections.
const IN_PLACE_BUDGET: Duration = Duration::from_micros(250);

/// Messages a route sends to blocking threads after one of its scripts ran over
/// [`IN_PLACE_BUDGET`]: a route whose scripts are slow stops trying in place.
const AFTER_OVER_BUDGET: u32 = 64;

/// Runs the steps and routing on a stored message, where that is cheapest: on this thread
/// for a small message through cheap steps (`steps::placement`), else on a blocking thread;
/// `None` when the steps' worker died.
pub(super) async fn decide_on_fitting_thread(
    route: &Arc<RunningRoute>,
    work: Pending,
) -> Option<Decision> {
    let started = Instant::now();
    let id = work.msg.id;
    // A panic is caught as a blocking thread's would be: the caller's task lives on.
    let in_place = |work| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decide(route, work, started)
        }))
        .map_err(|_| ())
    };
    let work = match steps::placement(&route.steps, work.msg.body.len()) {
        steps::Placement::InPlace => return died(route, id, in_place(work)),
        steps::Placement::InPlaceWithinBudget if !route.recently_over_budget() => {
            let spare = work.clone();
            match script::within_budget(IN_PLACE_BUDGET, || in_place(work)) {
                Some(decided) => return died(route, id, decided),
                None => {
                    route
                        .over_budget
                        .store(AFTER_OVER_BUDGET, Ordering::Relaxed);
                    spare
                }
            }
        }
        _ => work,
    };
    // Steps are CPU work (parsing, mapping): keep them off the threads that serve I/O, so a
    // large message or a slow script never delays intake acknowledgements or deliveries.
    let r = route.clone();
    let decided = tokio::task::spawn_blocking(move || decide(&r, work, started))
        .await
        .map_err(|_| ());
    died(route, id, decided)
}

fn died(route: &RunningRoute, id: Uuid, decided: Result<Decision, ()>) -> Option<Decision> {
    if decided.is_err() {
        tracing::error!(route = %route.id, message_id = %id,
            "step worker failed; the message stays received and is processed again");
    }
    decided.ok()
}

/// Records the steps' outcome of a stored message and does what follows.
pub(super) async fn record(route: &Arc<RunningRoute>, store: &dyn Processing, d: Decision) {
    let id = d.after.current.id;
    match store.finish_steps(id, d.records, d.result).await {
        Ok(Some(state)) => recorded(route, d.after, state, &[]),
        Ok(None) => {} // processed already, by an earlier pass
        Err(e) => {
            tracing::error!(route = %route.id, message_id = %id, error = %e,
                "could not record the steps' result; the message stays received and is processed again");
            // Handed back, the route's resume loop claims it again within seconds; if even
            // that fails (the database is away), its lease runs out and it is claimed then.
            let _ = store.release(vec![id]).await;
        }
    }
}

/// The route's steps run by the intake, before the commit (see [`crate::adapters::inbound::Steps`]).
pub(super) struct InlineSteps {
    pub(super) route: Arc<RunningRoute>,
    /// Steps running at once: CPU work, bounded like the step workers.
    pub(super) running: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl crate::adapters::inbound::Steps for InlineSteps {
    async fn run(&self, msg: Message) -> Option<Ran> {
        let _permit = self.running.acquire().await.ok()?;
        let work = Pending {
            msg,
            resume_step: 0,
            attempts: 0,
        };
        let mut d = decide_on_fitting_thread(&self.route, work).await?;
        let places = hand_over_places(&self.route, &mut d.result);
        let route = self.route.clone();
        let after = d.after;
        Some(Ran {
            steps: d.records,
            result: d.result,
            then: Box::new(move |state, held| {
                let handed = hand_over(&after.current, places, held);
                recorded(&route, after, state, &handed);
            }),
        })
    }
}

/// Places in the hand-over queues of the destinations a routed message goes to, where their
/// workers take deliveries in memory now (`delivery::Handoff`); those deliveries are then
/// stored as held by this node.
fn hand_over_places(
    route: &RunningRoute,
    result: &mut Processed,
) -> Vec<(String, tokio::sync::mpsc::OwnedPermit<Delivery>)> {
    let Processed::Routed {
        body,
        destinations,
        held,
        ..
    } = result
    else {
        return Vec::new();
    };
    let places: Vec<_> = destinations
        .iter()
        .filter_map(|name| {
            let handoff = route.destinations.get(name)?.handoff.as_ref()?;
            Some((name.clone(), handoff.reserve(body.len())?))
        })
        .collect();
    held.extend(places.iter().map(|(name, _)| name.clone()));
    places
}

/// Hands each delivery held for this node (`held`: by destination and id) to its worker;
/// returns the destinations handed to. A place without its delivery (the outcome was recorded
/// apart, or as a duplicate) goes back unused.
fn hand_over(
    current: &Message,
    places: Vec<(String, tokio::sync::mpsc::OwnedPermit<Delivery>)>,
    held: Vec<(String, i64)>,
) -> Vec<String> {
    let mut handed = Vec::with_capacity(held.len());
    for (name, place) in places {
        let Some((_, id)) = held.iter().find(|(d, _)| *d == name) else {
            continue;
        };
        let mut message = current.clone();
        // As the store keeps it, so that a delivery is the same handed over or claimed.
        message.received_at = store::from_millis(store::millis(message.received_at));
        place.send(Delivery {
            id: *id,
            destination: name.clone(),
            kind: DeliveryKind::Main,
            attempts: 0,
            next_attempt_at: SystemTime::now(),
            message,
            error: None,
        });
        handed.push(name);
    }
    handed
}

/// What the route's `on_error` makes of a failed step.
pub(super) fn on_step_error(
    route: &RunningRoute,
    work: &Pending,
    error: String,
    policy: StepPolicy,
) -> Processed {
    match policy {
        StepPolicy::Fail => Processed::Failed {
            error,
            dead_letter: None,
        },
        StepPolicy::DeadLetter => Processed::Failed {
            error,
            dead_letter: route.dead_letter.clone(),
        },
        StepPolicy::Retry => {
            let retry = &route.on_error.retry;
            let attempt = work.attempts + 1;
            if attempt < retry.max_attempts.max(1) {
                let wait = delivery::backoff(retry, attempt, work.msg.id.as_u128() as i64);
                Processed::Retry {
                    error,
                    next_attempt_at: SystemTime::now() + wait,
                }
            } else {
                Processed::Failed {
                    error: format!("{error} (after {attempt} attempts)"),
                    dead_letter: route.dead_letter.clone(),
                }
            }
        }
    }
}
