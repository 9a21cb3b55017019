//! A route version's running parts built from its compiled route: the inbound adapter (with
//! its sockets), one destination per delivery target, and the task that runs the inbound.

use super::*;

pub(super) fn spawn_inbound(
    running: &RunningRoute,
    intake: Intake,
    stop: CancellationToken,
    store: Arc<dyn Store>,
    standby: Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<()> {
    let (inbound, id) = (running.inbound.clone(), running.id.clone());
    tokio::spawn(async move {
        if !inbound.exclusive() {
            if let Err(e) = inbound.run(intake, stop).await {
                tracing::error!(route = %id, error = format!("{e:#}"), "inbound adapter stopped");
            }
            return;
        }
        // A shared directory: run it while this node holds the route's inbound lease, stand
        // by while another node does, take over when that node's lease runs out.
        let every = store.lease() / 3;
        let mut standing_by = false;
        loop {
            match store.hold(&id, crate::store::INBOUND_LEASE).await {
                Ok(true) => {}
                Ok(false) => {
                    if !standing_by {
                        tracing::info!(route = %id, "another node runs this route's inbound; standing by");
                        standing_by = true;
                        standby.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(route = %id, error = %e, "cannot take the route's inbound lease; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => continue,
                    }
                }
            }
            if standing_by {
                tracing::info!(route = %id, "this node now runs the route's inbound (taken over)");
                standing_by = false;
                standby.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            let running = stop.child_token();
            let run = inbound.run(intake.clone(), running.clone());
            tokio::pin!(run);
            loop {
                tokio::select! {
                    ended = &mut run => {
                        if let Err(e) = ended {
                            tracing::error!(route = %id, error = format!("{e:#}"), "inbound adapter stopped");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(every) => {
                        // Unreachable store: keep going; intake fails anyway until it is back.
                        if let Ok(false) = store.hold(&id, crate::store::INBOUND_LEASE).await {
                            tracing::warn!(route = %id, "another node took this route's inbound over; stopping it here");
                            running.cancel();
                            let _ = (&mut run).await;
                            break;
                        }
                    }
                }
            }
        }
    })
}

/// Builds a route's adapters and destinations (side effects: directories are created).
pub(super) fn build(route: &Route, listeners: &Arc<Listeners>) -> anyhow::Result<RunningRoute> {
    let context = || format!("route `{}` ({})", route.id, route.file.display());
    let cx = BuildContext {
        listeners: listeners.clone(),
        ..route.context.clone()
    };
    let inbound = route.from.build(&cx).with_context(context)?;
    if let Some(link) = inbound.link() {
        link.owned_by(&route.id, "from");
    }
    let dead_letter_wake = Arc::new(Notify::new());
    let dead_letter = route.dead_letter().map(str::to_string);
    let mut destinations = HashMap::new();
    for spec in &route.destinations {
        let outbound = spec
            .config
            .build(&cx)
            .with_context(|| format!("{}: {}", context(), spec.name))?;
        if let Some(link) = outbound.link() {
            link.owned_by(&route.id, &spec.name);
        }
        let wake = if spec.kind == DeliveryKind::DeadLetter {
            dead_letter_wake.clone()
        } else {
            Arc::new(Notify::new())
        };
        let policy = spec.config.delivery();
        let handoff = (spec.kind == DeliveryKind::Main
            && policy.ordering != Some(crate::adapters::outbound::DeliveryOrder::Fifo)
            && policy.rate.is_none())
        .then(crate::delivery::Handoff::default);
        destinations.insert(
            spec.name.clone(),
            Arc::new(Destination {
                route: route.id.clone(),
                name: spec.name.clone(),
                kind: spec.kind,
                outbound,
                policy: spec.config.delivery(),
                on_error: route.on_error.delivery,
                dead_letter: dead_letter.clone().map(|n| (n, dead_letter_wake.clone())),
                wake,
                rate: spec
                    .config
                    .delivery()
                    .rate
                    .map(|rate| crate::throttle::Bucket::new(rate, spec.config.delivery().burst)),
                handoff,
            }),
        );
    }
    Ok(RunningRoute {
        id: route.id.clone(),
        version: route.version.clone(),
        inbound,
        steps: route.steps.clone(),
        router: route.router.clone(),
        on_error: route.on_error.clone(),
        destinations,
        dead_letter,
        scheduled: Arc::new(Notify::new()),
        replies: Arc::new(Replies::default()),
        index: route.index.clone(),
        replies_only: !route
            .destinations
            .iter()
            .any(|d| d.kind == DeliveryKind::Main),
        joined: Arc::new(Notify::new()),
        over_budget: AtomicU32::new(0),
    })
}
