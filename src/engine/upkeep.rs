//! The engine's care of its store, in the background: renewing this node's claims, applying
//! each route's retention, and watching for damage.

use super::Engine;
use std::sync::Arc;
use std::time::Duration;

impl Engine {
    /// Renews this node's claims every third of the lease, so that no other node takes over
    /// work this one is doing.
    pub(super) fn renew_leases(&self) {
        let (store, stop) = (self.store.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            let every = store.lease() / 3;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = store.renew_leases().await {
                    tracing::error!(error = %e, "cannot renew this node's leases; other nodes may take its work over");
                }
            }
        });
    }

    /// Applies each route's retention in the background: small batches, each its own short
    /// transaction in the writer's queue, so processing never waits long; then hands the
    /// freed pages back to the file system so the store file shrinks.
    pub fn keep_store_bounded(self: &Arc<Self>, every: Duration) {
        let (engine, stop) = (self.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let policies: Vec<(String, crate::store::Retention)> = engine
                    .versions
                    .lock()
                    .await
                    .values()
                    .map(|v| (v.route.id.clone(), v.route.retention.clone()))
                    .filter(|(_, r)| {
                        r.max_age.is_some()
                            || r.body_max_age.is_some()
                            || r.max_messages.is_some()
                            || r.max_bytes.is_some()
                    })
                    .collect();
                let mut total = crate::store::Pruned::default();
                for (route, policy) in policies {
                    for _ in 0..100 {
                        if stop.is_cancelled() {
                            return;
                        }
                        match engine.store.prune(&route, &policy, 200).await {
                            Ok(p) if p.deleted + p.bodies == 0 => break,
                            Ok(p) => {
                                total.deleted += p.deleted;
                                total.bodies += p.bodies;
                            }
                            Err(e) => {
                                tracing::warn!(route = %route, error = %e, "retention failed; trying again later");
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if total.deleted + total.bodies > 0 {
                    let mut freed = 0;
                    while let Ok(n) = engine.store.reclaim(2000).await {
                        freed += n;
                        if n == 0 || stop.is_cancelled() {
                            break;
                        }
                    }
                    tracing::info!(event = "retention", deleted = total.deleted, bodies = total.bodies, pages_freed = freed, "store pruned");
                }
            }
        });
    }

    /// Watches the store for damage: a quick check every `every` (none when zero), and a look
    /// each second at what reads and writes met. Damage pauses every route's intake — nothing
    /// more can be stored anyway — and `/ready` and `/metrics` report it.
    pub fn watch_store(self: &Arc<Self>, every: Duration) {
        let (engine, stop) = (self.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            let mut next_check = (!every.is_zero()).then(|| tokio::time::Instant::now() + every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if next_check.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    next_check = Some(tokio::time::Instant::now() + every);
                    match engine.store.check(false).await {
                        Ok(problems) if problems.is_empty() => {
                            tracing::debug!("store check: no damage")
                        }
                        Ok(_) => {} // the store reports it below, once
                        Err(e) => tracing::warn!(error = %e, "the store check could not run"),
                    }
                }
                if engine.store.damaged().is_some() {
                    let ids: Vec<String> = engine.versions.lock().await.keys().cloned().collect();
                    for id in ids {
                        let _ = engine.pause(&id).await;
                    }
                    tracing::error!("every route's intake is paused: the store is damaged");
                    return;
                }
            }
        });
    }
}
