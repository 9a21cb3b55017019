//! The JSON API's handlers: metrics, routes, messages and their replay, reload status, pause
//! and resume. The router in the parent module decides who may call them.

use super::{error, json, Admin, Answer};
use crate::adapters::broker::LinkState;
use crate::metrics::Gauge;
use crate::store::MessageState;
use axum::extract::{Path, Query, State};
use hyper::StatusCode;
use serde_json::json as value;
use std::collections::HashMap;

type Params = Query<HashMap<String, String>>;

fn message_id(id: &str) -> Result<uuid::Uuid, String> {
    id.parse()
        .map_err(|_| format!("`{id}` is not a message id"))
}

pub async fn metrics(State(admin): State<Admin>) -> Answer {
    let engine = &admin.engine;
    let mut gauges = Vec::new();
    if let Ok(queues) = engine.store().queues().await {
        let now = std::time::SystemTime::now();
        for q in queues {
            let labels = vec![("route", q.route), ("destination", q.destination)];
            let age = q
                .oldest
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            gauges.push(Gauge {
                name: "switchyard_queue_depth",
                help: "Pending deliveries, by route and destination.",
                labels: labels.clone(),
                value: q.depth as f64,
            });
            gauges.push(Gauge {
                name: "switchyard_queue_oldest_seconds",
                help: "Age of the oldest pending delivery's message, by route and destination.",
                labels,
                value: age.as_secs_f64(),
            });
        }
    }
    let status = engine.status().await;
    let routes: Vec<String> = status.iter().map(|r| r.id.clone()).collect();
    if let Ok(counts) = engine
        .store()
        .count_in_state(&routes, MessageState::Dead)
        .await
    {
        for (route, n) in counts {
            gauges.push(Gauge {
                name: "switchyard_messages_dead",
                help: "Messages in the store that are dead (delivery given up), by route.",
                labels: vec![("route", route)],
                value: n as f64,
            });
        }
    }
    for r in status {
        for (adapter, link) in &r.connections {
            let labels = vec![("route", r.id.clone()), ("adapter", adapter.clone())];
            // A destination that has not delivered yet has no connection to report.
            if link.state != LinkState::Idle {
                gauges.push(Gauge {
                    name: "switchyard_broker_connected",
                    help: "1 while the adapter's broker connection is up, by route and adapter.",
                    labels: labels.clone(),
                    value: f64::from(u8::from(link.state == LinkState::Connected)),
                });
            }
            gauges.push(Gauge {
                name: "switchyard_broker_reconnects",
                help:
                    "Times the adapter's broker connection was made again since the route started.",
                labels,
                value: link.reconnects as f64,
            });
        }
        gauges.push(Gauge {
            name: "switchyard_route_up",
            help: "1 when the route takes messages, 0 when it is paused.",
            labels: vec![("route", r.id)],
            value: f64::from(u8::from(r.state == "running")),
        });
    }
    gauges.push(Gauge {
        name: "switchyard_store_damaged",
        help: "1 once damage was found in the store (intake paused, nothing more written).",
        labels: Vec::new(),
        value: f64::from(u8::from(engine.store().damaged().is_some())),
    });
    super::answer(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        crate::metrics::render(gauges),
    )
}

pub async fn routes(State(admin): State<Admin>) -> Answer {
    let routes: Vec<serde_json::Value> = admin
        .engine
        .status()
        .await
        .into_iter()
        .map(|r| {
            let counts = crate::metrics::counts(&r.id);
            let last_error = crate::metrics::last_error(&r.id).map(|(at, text)| {
                value!({"at": humantime::format_rfc3339_millis(at).to_string(), "error": text})
            });
            let connections: Vec<serde_json::Value> = r
                .connections
                .iter()
                .map(|(adapter, link)| {
                    let mut v = serde_json::to_value(link).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("adapter".into(), adapter.clone().into());
                    }
                    v
                })
                .collect();
            value!({
                "id": r.id,
                "description": r.description,
                "state": r.state,
                "version": r.version,
                "file": r.file,
                "received": counts.received,
                "messages": counts.messages,
                "deliveries": counts.deliveries,
                "last_error": last_error,
                "connections": connections,
            })
        })
        .collect();
    json(StatusCode::OK, serde_json::Value::Array(routes))
}

pub async fn search(State(admin): State<Admin>, Query(query): Params) -> Answer {
    let search = match super::search_from(&query) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match admin.engine.store().search(&search).await {
        Ok(rows) => json(
            StatusCode::OK,
            serde_json::Value::Array(rows.iter().map(crate::message_views::json_row).collect()),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.0),
    }
}

pub async fn message(State(admin): State<Admin>, Path(id): Path<String>) -> Answer {
    let id = match message_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match admin.engine.store().details(id).await {
        Ok(Some(d)) => json(StatusCode::OK, crate::message_views::details_json(&d)),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.0),
    }
}

pub async fn replay_many(State(admin): State<Admin>, Query(query): Params) -> Answer {
    let search = match super::search_from(&query) {
        Ok(s) if s.route.is_some() && s.state.is_some() => s,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "give route and state"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let store = admin.engine.store();
    let rows = match store.search(&search).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.0),
    };
    let destination = query.get("destination").map(String::as_str);
    let mut done = Vec::new();
    for m in rows {
        let result = store.replay(m.id, destination).await;
        done.push(value!({"id": m.id, "result": result.unwrap_or_else(|e| e.0)}));
    }
    json(StatusCode::OK, serde_json::Value::Array(done))
}

pub async fn replay_one(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    Query(query): Params,
) -> Answer {
    let id = match message_id(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let destination = query.get("destination").map(String::as_str);
    match admin.engine.store().replay(id, destination).await {
        Ok(r) => json(StatusCode::OK, value!({"id": id, "result": r})),
        Err(e) => error(StatusCode::NOT_FOUND, e.0),
    }
}

pub async fn reload(State(admin): State<Admin>) -> Answer {
    match admin.engine.last_reload().await {
        Some(s) => json(StatusCode::OK, serde_json::to_value(s).unwrap_or_default()),
        None => json(
            StatusCode::OK,
            value!({"at": null, "message": "no reload since start"}),
        ),
    }
}

pub async fn pause(State(admin): State<Admin>, Path(id): Path<String>) -> Answer {
    match admin.engine.pause(&id).await {
        Ok(()) => json(StatusCode::OK, value!({"id": id, "state": "paused"})),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

pub async fn resume(State(admin): State<Admin>, Path(id): Path<String>) -> Answer {
    match admin.engine.resume(&id).await {
        Ok(()) => json(StatusCode::OK, value!({"id": id, "state": "running"})),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}
