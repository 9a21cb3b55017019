//! The admin HTTP API, on its own address: health and readiness for load balancers, metrics
//! for Prometheus, the route list, message search and replay, pausing and resuming routes, and
//! the web console under `/ui` ([`console`]). Everything but `/health` and `/ready`
//! needs `Authorization: Bearer <token>` when a token is set; the read-only token may only GET.

use crate::engine::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod console;

pub(crate) type Answer = Response<BoxBody<Bytes, Infallible>>;

pub(crate) fn answer(status: StatusCode, ctype: &'static str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Answer {
    answer(status, "application/json", v.to_string())
}

/// Who may use the admin listener, and what the console reads.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Needed for everything but `/health` and `/ready` when set.
    pub token: Option<String>,
    /// May read only (GET).
    pub read_token: Option<String>,
    /// The processing log, for the console's live log.
    pub log: std::path::PathBuf,
    /// This node's name in the store.
    pub node: String,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// Equal without saying where they differ (no timing side channel).
fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0, |a, (x, y)| a | (x ^ y))
            == 0
}

impl Access {
    /// The role a presented token gives, if any. With no token configured, everyone is admin
    /// (the listener is for this machine; `switchyard run` warns).
    pub fn role(&self, given: Option<&str>) -> Option<Role> {
        let Some(token) = &self.token else {
            return Some(Role::Admin);
        };
        let given = given?;
        if same(given, token) {
            Some(Role::Admin)
        } else if self.read_token.as_deref().is_some_and(|t| same(given, t)) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }
}

/// Serves the admin API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let console = Arc::new(console::Console::new(access));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let (engine, console, stop) = (engine.clone(), console.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (engine, console, stop) = (engine.clone(), console.clone(), stop.clone());
                async move { Ok::<_, Infallible>(handle(req, &engine, &console, peer, stop).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    engine: &Arc<Engine>,
    console: &Arc<console::Console>,
    peer: std::net::SocketAddr,
    stop: CancellationToken,
) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => return answer(StatusCode::OK, "text/plain", "ok\n".into()),
        // A browser opened on the admin address finds the console.
        (&Method::GET, "") => {
            let mut r = answer(StatusCode::SEE_OTHER, "text/plain", String::new());
            r.headers_mut()
                .insert(hyper::header::LOCATION, HeaderValue::from_static("/ui"));
            return r;
        }
        (&Method::GET, "/ready") => {
            // The reason is in the log; this answer is open to anyone who reaches the port.
            if engine.store().damaged().is_some() {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: the store is damaged (see the log)\n".into(),
                );
            }
            return answer(StatusCode::OK, "text/plain", "ready\n".into());
        }
        _ => {}
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return console.handle(req, engine, peer, stop).await;
    }
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match console.access().role(given) {
        None => {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "missing or wrong admin token"}),
            )
        }
        Some(crate::admin::Role::ReadOnly) if method != Method::GET => {
            return json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "the read-only token may only read (GET)"}),
            )
        }
        Some(_) => {}
    }
    let query: std::collections::HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut gauges = Vec::new();
            if let Ok(queues) = engine.store().queues().await {
                let now = std::time::SystemTime::now();
                for q in queues {
                    let labels = vec![("route", q.route), ("destination", q.destination)];
                    gauges.push((
                        "switchyard_queue_depth",
                        "Pending deliveries, by route and destination.",
                        labels.clone(),
                        q.depth as f64,
                    ));
                    let age = q
                        .oldest
                        .and_then(|t| now.duration_since(t).ok())
                        .unwrap_or_default();
                    gauges.push((
                        "switchyard_queue_oldest_seconds",
                        "Age of the oldest pending delivery's message, by route and destination.",
                        labels,
                        age.as_secs_f64(),
                    ));
                }
            }
            let status = engine.status().await;
            let routes: Vec<String> = status.iter().map(|r| r.id.clone()).collect();
            if let Ok(counts) = engine
                .store()
                .count_in_state(&routes, crate::store::MessageState::Dead)
                .await
            {
                for (route, n) in counts {
                    gauges.push((
                        "switchyard_messages_dead",
                        "Messages in the store that are dead (delivery given up), by route.",
                        vec![("route", route)],
                        n as f64,
                    ));
                }
            }
            for r in status {
                // A destination that has not delivered yet has no connection to report.
                let used = r
                    .connections
                    .iter()
                    .filter(|(_, l)| l.state != crate::adapters::broker::LinkState::Idle);
                for (adapter, link) in used {
                    gauges.push((
                        "switchyard_broker_connected",
                        "1 while the adapter's broker connection is up, by route and adapter.",
                        vec![("route", r.id.clone()), ("adapter", adapter.clone())],
                        if link.state == crate::adapters::broker::LinkState::Connected {
                            1.0
                        } else {
                            0.0
                        },
                    ));
                }
                for (adapter, link) in &r.connections {
                    gauges.push((
                        "switchyard_broker_reconnects",
                        "Times the adapter's broker connection was made again since the route started.",
                        vec![("route", r.id.clone()), ("adapter", adapter.clone())],
                        link.reconnects as f64,
                    ));
                }
                gauges.push((
                    "switchyard_route_up",
                    "1 when the route takes messages, 0 when it is paused.",
                    vec![("route", r.id)],
                    if r.state == "running" { 1.0 } else { 0.0 },
                ));
            }
            gauges.push((
                "switchyard_store_damaged",
                "1 once damage was found in the store (intake paused, nothing more written).",
                Vec::new(),
                if engine.store().damaged().is_some() {
                    1.0
                } else {
                    0.0
                },
            ));
            // Prometheus wants each metric's samples together.
            gauges.sort_by(|a, b| a.0.cmp(b.0));
            answer(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::global().render(&gauges),
            )
        }
        (&Method::GET, ["routes"]) => {
            let m = crate::metrics::global();
            let routes: Vec<serde_json::Value> = engine
                .status()
                .await
                .into_iter()
                .map(|r| {
                    let last_error = m.last_error(&r.id).map(|(at, text)| {
                        serde_json::json!({"at": humantime::format_rfc3339_millis(at).to_string(), "error": text})
                    });
                    serde_json::json!({
                        "id": r.id,
                        "description": r.description,
                        "state": r.state,
                        "version": r.version,
                        "file": r.file,
                        "received": m.counts("switchyard_messages_received_total", &r.id, "route").values().sum::<u64>(),
                        "messages": m.counts("switchyard_messages_total", &r.id, "state"),
                        "deliveries": m.counts("switchyard_deliveries_total", &r.id, "outcome"),
                        "last_error": last_error,
                        "connections": r.connections.iter().map(|(adapter, link)| {
                            let mut v = serde_json::to_value(link).unwrap_or_default();
                            if let Some(o) = v.as_object_mut() {
                                o.insert("adapter".into(), adapter.clone().into());
                            }
                            v
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(routes))
        }
        (&Method::GET, ["messages"]) => {
            let search = match search_from(&query) {
                Ok(s) => s,
                Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
            };
            match engine.store().search(&search).await {
                Ok(rows) => json(
                    StatusCode::OK,
                    serde_json::Value::Array(rows.iter().map(crate::messages::json_row).collect()),
                ),
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e.0}),
                ),
            }
        }
        (&Method::GET, ["messages", id]) => match id.parse::<uuid::Uuid>() {
            Err(_) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("`{id}` is not a message id")}),
            ),
            Ok(id) => match engine.store().details(id).await {
                Ok(Some(d)) => json(StatusCode::OK, crate::messages::details_json(&d)),
                Ok(None) => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": format!("no message {id}")}),
                ),
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e.0}),
                ),
            },
        },
        (&Method::POST, ["messages", "replay"]) => {
            let search = match search_from(&query) {
                Ok(s) if s.route.is_some() && s.state.is_some() => s,
                Ok(_) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "give route and state"}),
                    )
                }
                Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e})),
            };
            let rows = match engine.store().search(&search).await {
                Ok(r) => r,
                Err(e) => {
                    return json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"error": e.0}),
                    )
                }
            };
            let mut done = Vec::new();
            for m in rows {
                let r = engine
                    .store()
                    .replay(m.id, query.get("destination").map(String::as_str))
                    .await;
                done.push(serde_json::json!({"id": m.id, "result": r.map_err(|e| e.0).unwrap_or_else(|e| e)}));
            }
            json(StatusCode::OK, serde_json::Value::Array(done))
        }
        (&Method::POST, ["messages", id, "replay"]) => match id.parse::<uuid::Uuid>() {
            Err(_) => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("`{id}` is not a message id")}),
            ),
            Ok(id) => match engine
                .store()
                .replay(id, query.get("destination").map(String::as_str))
                .await
            {
                Ok(r) => json(StatusCode::OK, serde_json::json!({"id": id, "result": r})),
                Err(e) => json(StatusCode::NOT_FOUND, serde_json::json!({"error": e.0})),
            },
        },
        (&Method::GET, ["reload"]) => match engine.last_reload().await {
            Some(s) => json(StatusCode::OK, serde_json::to_value(s).unwrap_or_default()),
            None => json(
                StatusCode::OK,
                serde_json::json!({"at": null, "message": "no reload since start"}),
            ),
        },
        (&Method::POST, ["routes", id, action @ ("pause" | "resume")]) => {
            let result = if *action == "pause" {
                engine.pause(id).await
            } else {
                engine.resume(id).await
            };
            match result {
                Ok(()) => json(
                    StatusCode::OK,
                    serde_json::json!({"id": id, "state": if *action == "pause" { "paused" } else { "running" }}),
                ),
                Err(e) => json(StatusCode::NOT_FOUND, serde_json::json!({"error": e})),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no such admin endpoint: {method} {path}"),
                "endpoints": ["GET /ui (the web console)", "GET /health", "GET /ready", "GET /metrics", "GET /routes", "GET /reload", "GET /messages", "GET /messages/{id}", "POST /messages/{id}/replay", "POST /messages/replay", "POST /routes/{id}/pause", "POST /routes/{id}/resume"]}),
        ),
    }
}

/// A store search from query parameters: route, state, since, until, text, field
/// (`name=value`), id (a prefix), error, parent, before, limit.
pub(crate) fn search_from(
    q: &std::collections::HashMap<String, String>,
) -> Result<crate::store::Search, String> {
    // Empty form fields mean "any".
    let get = |key: &str| q.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let when = |key: &str| -> Result<Option<std::time::SystemTime>, String> {
        let Some(v) = get(key) else { return Ok(None) };
        v.parse::<crate::config::values::Since>()
            .map(|s| Some(s.0))
            .map_err(|_| format!("`{key}={v}`: give a time (RFC 3339) or a duration such as 2h"))
    };
    let id = |key: &str| -> Result<Option<uuid::Uuid>, String> {
        get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("`{key}={v}` is not a message id"))
            })
            .transpose()
    };
    let state = match get("state") {
        None => None,
        Some(s) => Some(
            crate::store::MessageState::parse(s).ok_or_else(|| format!("unknown state `{s}`"))?,
        ),
    };
    let field = match get("field") {
        None => None,
        Some(f) => {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| format!("`field={f}`: give an index field as name=value"))?;
            Some((k.trim().to_string(), v.trim().to_string()))
        }
    };
    let id_prefix = get("id").map(str::to_string);
    if let Some(p) = &id_prefix {
        crate::store::id_range(p)?;
    }
    Ok(crate::store::Search {
        route: get("route").map(str::to_string),
        state,
        since: when("since")?,
        until: when("until")?,
        text: get("text").map(str::to_string),
        field,
        id_prefix,
        error: get("error").map(str::to_string),
        parent: id("parent")?,
        before: id("before")?,
        limit: get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(50)
            .min(1000),
    })
}
