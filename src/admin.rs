//! The admin HTTP API, on its own address: health and readiness for load balancers, metrics
//! for Prometheus, the route list, and pausing and resuming routes. Everything but `/health`
//! and `/ready` needs `Authorization: Bearer <token>` when a token is set.

use crate::engine::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, ctype: &'static str, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Answer {
    answer(status, "application/json", v.to_string())
}

/// Serves the admin API on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: Option<String>,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let token = Arc::new(token);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let (engine, token) = (engine.clone(), token.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (engine, token) = (engine.clone(), token.clone());
                async move { Ok::<_, Infallible>(handle(req, &engine, token.as_deref()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, engine: &Engine, token: Option<&str>) -> Answer {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health") => return answer(StatusCode::OK, "text/plain", "ok\n".into()),
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
    if let Some(t) = token {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if given.len() != t.len()
            || given
                .bytes()
                .zip(t.bytes())
                .fold(0, |a, (x, y)| a | (x ^ y))
                != 0
        {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "missing or wrong admin token"}),
            );
        }
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
            if let Ok(pending) = engine.store().pending_deliveries().await {
                for (route, destination, n) in pending {
                    gauges.push((
                        "switchyard_queue_depth",
                        "Pending deliveries, by route and destination.",
                        vec![("route", route), ("destination", destination)],
                        n as f64,
                    ));
                }
            }
            for r in engine.status().await {
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
                "endpoints": ["GET /health", "GET /ready", "GET /metrics", "GET /routes", "GET /reload", "GET /messages", "GET /messages/{id}", "POST /messages/{id}/replay", "POST /messages/replay", "POST /routes/{id}/pause", "POST /routes/{id}/resume"]}),
        ),
    }
}

/// A store search from query parameters: route, state, text, since, until, limit.
fn search_from(
    q: &std::collections::HashMap<String, String>,
) -> Result<crate::store::Search, String> {
    let when = |key: &str| -> Result<Option<std::time::SystemTime>, String> {
        let Some(v) = q.get(key) else { return Ok(None) };
        if let Ok(t) = humantime::parse_rfc3339_weak(v.trim_end_matches('Z')) {
            return Ok(Some(t));
        }
        humantime::parse_duration(v)
            .map(|d| Some(std::time::SystemTime::now() - d))
            .map_err(|_| format!("`{key}={v}`: give a time (RFC 3339) or a duration such as 2h"))
    };
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(
            crate::store::MessageState::parse(s).ok_or_else(|| format!("unknown state `{s}`"))?,
        ),
    };
    Ok(crate::store::Search {
        route: q.get("route").cloned(),
        state,
        since: when("since")?,
        until: when("until")?,
        text: q.get("text").cloned(),
        field: q
            .get("field")
            .and_then(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string())),
        limit: q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(50),
    })
}
