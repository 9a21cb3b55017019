//! The admin HTTP API, on its own address: health and readiness for load balancers, metrics
//! for Prometheus, the route list, message search and replay, pausing and resuming routes, and
//! the web console under `/ui` ([`console`]). Everything but `/health` and `/ready`
//! needs `Authorization: Bearer <token>` when a token is set; the read-only token may only GET.

use crate::engine::Engine;
use crate::http_answer;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

mod api;
mod console;

pub(crate) type Answer = hyper::Response<BoxBody<Bytes, Infallible>>;

pub(crate) fn answer(status: StatusCode, ctype: &'static str, body: String) -> Answer {
    http_answer::answer(status, ctype, body).map(BodyExt::boxed)
}

fn json(status: StatusCode, v: serde_json::Value) -> Answer {
    http_answer::json(status, v).map(BodyExt::boxed)
}

fn error(status: StatusCode, text: impl std::fmt::Display) -> Answer {
    http_answer::error(status, text).map(BodyExt::boxed)
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

impl Access {
    /// The role a presented token gives, if any. With no token configured, everyone is admin
    /// (the listener is for this machine; `switchyard run` warns).
    pub fn role(&self, given: Option<&str>) -> Option<Role> {
        let Some(token) = &self.token else {
            return Some(Role::Admin);
        };
        let given = given?;
        if crate::secrets::same(given.as_bytes(), token.as_bytes()) {
            Some(Role::Admin)
        } else if self
            .read_token
            .as_deref()
            .is_some_and(|t| crate::secrets::same(given.as_bytes(), t.as_bytes()))
        {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }
}

/// What every handler may use.
#[derive(Clone)]
pub(crate) struct Admin {
    engine: Arc<Engine>,
    console: Arc<console::Console>,
    stop: CancellationToken,
}

/// The peer of a connection, put on each of its requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub std::net::SocketAddr);

/// The admin listener's routes. `/health` and `/ready` are open to anyone who reaches the
/// port; the console keeps its own sessions; the API needs a token.
fn router(admin: Admin) -> Router {
    let api = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/routes", get(api::routes))
        .route("/reload", get(api::reload))
        .route("/messages", get(api::search))
        .route("/messages/replay", post(api::replay_many))
        .route("/messages/{id}", get(api::message))
        .route("/messages/{id}/replay", post(api::replay_one))
        .route("/routes/{id}/pause", post(api::pause))
        .route("/routes/{id}/resume", post(api::resume))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route(
            "/health",
            get(|| async { answer(StatusCode::OK, "text/plain", "ok\n".into()) }),
        )
        .route("/ready", get(ready))
        // A browser opened on the admin address finds the console.
        .route("/", get(|| async { redirect("/ui") }))
        .route("/ui", any(console_page))
        .route("/ui/{*page}", any(console_page))
        .merge(api)
        .fallback(not_found)
        .with_state(admin)
}

async fn ready(State(admin): State<Admin>) -> Answer {
    // The reason is in the log; this answer is open to anyone who reaches the port.
    if admin.engine.store().damaged().is_some() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the store is damaged (see the log)\n".into(),
        );
    }
    answer(StatusCode::OK, "text/plain", "ready\n".into())
}

async fn console_page(State(admin): State<Admin>, request: Request) -> Answer {
    let peer = request
        .extensions()
        .get::<Peer>()
        .map_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0);
    admin
        .console
        .handle(request, &admin.engine, peer, admin.stop.clone())
        .await
}

/// The API's gate: a token that gives a role, and the read-only role only for GET.
async fn require_token(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match admin.console.access().role(given) {
        None => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong admin token"}),
        )
        .into_response(),
        Some(Role::ReadOnly) if request.method() != Method::GET => json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "the read-only token may only read (GET)"}),
        )
        .into_response(),
        Some(_) => next.run(request).await,
    }
}

async fn not_found(request: Request) -> Answer {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": format!("no such admin endpoint: {} {}", request.method(), request.uri().path()),
            "endpoints": ["GET /ui (the web console)", "GET /health", "GET /ready", "GET /metrics", "GET /routes", "GET /reload", "GET /messages", "GET /messages/{id}", "POST /messages/{id}/replay", "POST /messages/replay", "POST /routes/{id}/pause", "POST /routes/{id}/resume"]}),
    )
}

fn redirect(to: &'static str) -> Answer {
    let mut r = answer(StatusCode::SEE_OTHER, "text/plain", String::new());
    r.headers_mut()
        .insert(hyper::header::LOCATION, HeaderValue::from_static(to));
    r
}

/// `/routes/` is `/routes`, `/ui/` is `/ui`: the path's trailing slashes are dropped before
/// routing, as they always were.
fn without_trailing_slash<B>(request: &mut hyper::Request<B>) {
    let path = request.uri().path();
    if path.len() < 2 || !path.ends_with('/') {
        return;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let rebuilt = match request.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_string(),
    };
    if let Ok(uri) = rebuilt.parse() {
        *request.uri_mut() = uri;
    }
}

/// Serves the admin API on `listener` until `stop`. Connections are served by hyper with a
/// header-read timeout (a client that never finishes its headers is dropped), each request
/// going through the router.
pub async fn serve(
    listener: tokio::net::TcpListener,
    access: Access,
    engine: Arc<Engine>,
    stop: CancellationToken,
) {
    let console = Arc::new(console::Console::new(access));
    let router = router(Admin {
        engine,
        console,
        stop: stop.clone(),
    });
    while let Some((stream, peer)) = crate::listeners::accept(&listener, &stop, "admin").await {
        let router = router.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                without_trailing_slash(&mut request);
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
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
