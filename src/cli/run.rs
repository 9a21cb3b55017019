//! `switchyard run`: the engine, its admin listener, hot reload, until a signal.

use crate::engine::Engine;
use crate::route;
use crate::route::endpoints::Endpoints;
use crate::settings::{RunArgs, Settings};
use crate::store::Store;
use crate::telemetry;
use std::sync::Arc;

pub(super) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let dirs = Settings::resolve(&args).map_err(|d| anyhow::anyhow!("{d}"))?;
    let (drain, admin) = (dirs.drain, dirs.admin.clone());
    let _log_guard = telemetry::init(Some(&dirs.logs), dirs.rotation, dirs.log_level.as_deref())?;
    let files = route::route_files(&dirs.routes).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the routes directory {}: {e} (set --routes or SWITCHYARD_ROUTES)",
            dirs.routes.display()
        )
    })?;
    let (routes, problems) = route::load_all(&files, &Endpoints::load(&dirs.adapters));
    if !problems.is_empty() {
        for d in &problems {
            tracing::error!("{d}");
        }
        anyhow::bail!(
            "{} problem(s) in the route files; `switchyard check` lists them",
            problems.len()
        );
    }
    if routes.is_empty() {
        anyhow::bail!("no route files (*.yaml) in {}", dirs.routes.display());
    }
    let store: Arc<dyn Store> = crate::store::open(&dirs.store, dirs.claims.clone(), false).await?;
    tracing::info!(store = %dirs.store, node = %dirs.claims.node, logs = %dirs.logs.join(telemetry::LOG_FILE).display(), "store open");
    let engine = match Engine::start(routes, store.clone()).await {
        Ok(e) => Arc::new(e),
        Err(e) => {
            store.close().await?;
            return Err(e);
        }
    };
    crate::reload::watch_routes(&engine, dirs.routes.clone(), dirs.adapters.clone());
    engine.keep_store_bounded(dirs.retention_every);
    engine.watch_store(dirs.store_check_every);
    let admin_stop = tokio_util::sync::CancellationToken::new();
    if let Some(admin) = admin {
        let listener = tokio::net::TcpListener::bind(&admin.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {} for the admin API: {e}", admin.listen)
            })?;
        tracing::info!(listen = %listener.local_addr()?, "admin API ready");
        if admin.token.is_none() {
            tracing::warn!("the admin API has no token (set SWITCHYARD_ADMIN_TOKEN): anyone who reaches it can pause routes and replay messages");
        }
        let access = crate::admin::Access {
            token: admin.token,
            read_token: admin.read_token,
            log: dirs.logs.join(telemetry::LOG_FILE),
            node: dirs.claims.node.clone(),
        };
        tokio::spawn(crate::admin::serve(
            listener,
            access,
            engine.clone(),
            admin_stop.clone(),
        ));
    }
    wait_for_signal().await;
    admin_stop.cancel();
    engine.shutdown(drain).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
