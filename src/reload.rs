//! Hot reload: the routes directory is watched while the engine runs, and changes are applied
//! route by route without losing or duplicating a message.
//!
//! A round (after a burst of file-system events settles, or every few seconds, since events
//! get lost) reads every route file and compares versions (hashes of the files):
//! - a new route starts;
//! - a changed route is validated as a whole first; then its old version stops intake
//!   (everything it accepted is committed), stops its workers (whatever they had not finished
//!   stays in the store), and the new version starts and resumes that work. A listener on an
//!   unchanged address is handed from the old version to the new one without closing, so
//!   clients connecting meanwhile wait in the backlog instead of being refused;
//! - a removed file stops its route the same way;
//! - an invalid file changes nothing: the running version keeps running, and every problem is
//!   logged as `file:line:column: message`.
//!
//! Deliveries belong to destinations by name (`to[0]`, ...), so deliveries already queued when
//! a destination's settings change are made with the new settings.

use crate::engine::{Engine, ReloadSummary as Summary};
use crate::route::{self, Route};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the directory is read even without events.
const POLL: Duration = Duration::from_secs(2);
/// Quiet time after the last event before a round starts (editors write files in steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the routes directory and applies changes while the engine runs, as one of the
/// engine's own tasks (stopped with it).
pub fn watch_routes(engine: &Arc<Engine>, routes: PathBuf, adapters: PathBuf) {
    let (me, stop) = (engine.clone(), engine.shutdown_token());
    engine.spawn_task(async move { watch(me, routes, adapters, stop).await });
}

async fn watch(engine: Arc<Engine>, dir: PathBuf, adapters: PathBuf, stop: CancellationToken) {
    let (tx, mut events) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
    })
    .and_then(|mut w| {
        notify::Watcher::watch(&mut w, &dir, notify::RecursiveMode::NonRecursive)?;
        // Named endpoints change routes too; the directory may not exist.
        let _ = notify::Watcher::watch(&mut w, &adapters, notify::RecursiveMode::NonRecursive);
        Ok(w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no file-system events for the routes directory; polling");
            None
        }
    };
    let mut seen = snapshot(&dir, &adapters);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = events.recv() => {
                // Let a burst of events (an editor's save) settle.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        more = tokio::time::timeout(DEBOUNCE, events.recv()) => if more.is_err() { break },
                    }
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = snapshot(&dir, &adapters);
        if now == seen {
            continue;
        }
        seen = now;
        apply(&engine, &dir, &adapters).await;
    }
}

/// The route files and their versions, to tell whether anything changed at all.
fn snapshot(dir: &Path, adapters: &Path) -> BTreeMap<PathBuf, String> {
    route::route_files(dir)
        .unwrap_or_default()
        .into_iter()
        .chain(route::route_files(adapters).unwrap_or_default())
        .map(|f| {
            let v = std::fs::read(&f)
                .map(|b| route::version_hash(&b))
                .unwrap_or_default();
            (f, v)
        })
        .collect()
}

/// Reads the directory and brings the running routes in line with it.
pub async fn apply(engine: &Engine, dir: &Path, adapters: &Path) -> Summary {
    let mut summary = Summary {
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        ..Summary::default()
    };
    let files = match route::route_files(dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the routes directory; nothing changed");
            return summary;
        }
    };
    let endpoints = route::endpoints::Endpoints::load(adapters);
    let (loaded, problems) = route::load_all(&files, &endpoints);
    let bad_files: HashSet<PathBuf> = problems.iter().map(|d| d.file.clone()).collect();
    for d in &problems {
        tracing::error!(event = "reload", outcome = "rejected", file = %d.file.display(), "{d}");
        summary.rejected.push(d.to_string());
    }
    let mut versions = engine.versions().lock().await;

    // Diff: what is new, what changed, what went away. A route whose file has problems is
    // neither changed nor removed: its running version keeps working.
    let loaded_ids: HashSet<String> = loaded.iter().map(|r| r.id.clone()).collect();
    let removed: Vec<String> = versions
        .iter()
        .filter(|(id, v)| !loaded_ids.contains(*id) && !bad_files.contains(&v.route.file))
        .map(|(id, _)| id.clone())
        .collect();
    let new_versions: Vec<Arc<Route>> = loaded
        .into_iter()
        .filter(|r| {
            versions
                .get(&r.id)
                .is_none_or(|v| v.route.version != r.version)
        })
        .map(Arc::new)
        .collect();

    // Build every new version before stopping any running one: a version that cannot be
    // built (an adapter refusing its settings, a listener that cannot be had) is rejected
    // while the previous one still runs, untouched.
    let mut built = Vec::new();
    for route in new_versions {
        // A socket is handed from the version that stops to the one that starts; one that
        // another running route keeps cannot be.
        let fixed = route
            .from
            .listen_address()
            .filter(|a| !crate::listeners::any_free_port(a));
        let taken = fixed.and_then(|addr| {
            versions
                .iter()
                .find(|(id, v)| {
                    **id != route.id
                        && !removed.contains(id)
                        && v.route.from.listen_address() == Some(addr)
                })
                .map(|(id, _)| (addr, id))
        });
        if let Some((addr, other)) = taken {
            let problem = format!(
                "{}: cannot listen on {addr}: route `{other}` listens there",
                route.file.display()
            );
            tracing::error!(event = "reload", outcome = "rejected", route = %route.id, "{problem}");
            summary.rejected.push(problem);
            continue;
        }
        match engine.build_version(route.clone()) {
            Ok(b) => built.push(b),
            Err(e) => {
                let keeps = if versions.contains_key(&route.id) {
                    "; the previous version keeps running"
                } else {
                    ""
                };
                let problem = format!("{}: {e:#}{keeps}", route.file.display());
                tracing::error!(event = "reload", outcome = "rejected", route = %route.id, "{problem}");
                summary.rejected.push(problem);
            }
        }
    }

    // Apply: stop what went away, swap what changed, start what is new.
    for id in removed {
        if let Some(v) = versions.remove(&id) {
            tracing::info!(event = "reload", route = %id, old_version = %v.route.version, "route removed; stopping it");
            engine.stop_version(v).await;
            summary.removed.push(id);
        }
    }
    for b in built {
        let route = b.route.clone();
        match versions.remove(&route.id) {
            Some(old) => {
                tracing::info!(event = "reload", route = %route.id, old_version = %old.route.version, new_version = %route.version, "route changed; swapping versions");
                engine.stop_version(old).await;
                summary.changed.push(route.id.clone());
            }
            None => {
                tracing::info!(event = "reload", route = %route.id, new_version = %route.version, "route added");
                summary.added.push(route.id.clone());
            }
        }
        versions.insert(route.id.clone(), engine.launch_version(b));
    }
    let in_use: HashSet<String> = versions
        .values()
        .filter_map(|v| v.route.from.listen_address().map(str::to_string))
        .collect();
    engine.listeners().retain(|addr| in_use.contains(addr));
    tracing::info!(
        event = "reload",
        added = ?summary.added,
        changed = ?summary.changed,
        removed = ?summary.removed,
        rejected = summary.rejected.len(),
        "routes reloaded"
    );
    engine.set_last_reload(summary.clone()).await;
    summary
}
