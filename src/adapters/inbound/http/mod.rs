//! HTTP inbound: a listener that turns requests into messages.
//!
//! Order per request: path and method, then authentication — before a byte of the body is
//! read — then the body within `max_body` and `body_timeout`, then the commit, then the
//! answer: `202` with the message id (`ack`), or, in `reply` mode, the route's result once
//! the steps are done (`504` when that takes longer than `reply_timeout`). Nothing is stored
//! for a request refused with 401, 404, 405, 408 or 413.
//!
//! `hyper` serves each connection with a header-read timeout (a client that trickles its
//! headers is cut off) and the listener keeps accepting others meanwhile.
//!
//! Connections outlive route versions ([`Connections`]): a reload hands the open keep-alive
//! connections to the next version instead of closing them, because a request a client sends
//! on a connection just as the server closes it fails, and a POST is not sent again.

use super::{Inbound, Intake, Reply, Submitted};
use crate::config::values::{ByteSize, Duration};
use crate::listeners::Listeners;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use crate::store::MessageState;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::{TaskTracker, TaskTrackerToken};

mod connections;
mod handler;

pub use connections::Connections;
use connections::{closing_answer, paused_answer, Take};

/// What the client gets back.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// `202 Accepted` with the message id, as soon as the message is committed (default).
    #[default]
    Ack,
    /// The route's result: the message as the steps left it, once they are done.
    Reply,
}

/// What the body must be, checked before the message is accepted.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// Anything (default).
    #[default]
    Any,
    /// Valid JSON; otherwise `400` with the parser's message, and a failed record.
    Json,
    /// Well-formed XML; otherwise `400` with the parser's message, and a failed record.
    Xml,
}

impl Content {
    /// Why `body` is not this content, if it is not. Shared by every inbound with `content:`.
    pub fn error(self, body: &[u8]) -> Option<String> {
        match self {
            Content::Any => None,
            Content::Json => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) if crate::message::json_too_deep(body) => Some(format!(
                    "the body is JSON nested deeper than {} levels, the most Switchyard reads; flatten it, or take it as text",
                    crate::message::JSON_DEPTH
                )),
                Ok(_) => None,
                Err(e) => Some(crate::message::json_error("the body", &e)),
            },
            Content::Xml => crate::convert::xml::check_xml(body).err(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpAuth")]
pub struct Auth {
    /// Accepted bearer tokens (`Authorization: Bearer <token>`); use `${ENV}`.
    #[serde(default)]
    pub bearer: Vec<String>,
    /// Accepted basic credentials.
    #[serde(default)]
    pub basic: Vec<BasicUser>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicUser {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The acceptor a listener serves TLS with, when `tls` is set (the HTTP and TCP inbounds).
    pub fn acceptor(tls: Option<&TlsFiles>) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        crate::tls::acceptor(tls.map(|t| (t.cert.as_path(), t.key.as_path())))
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HttpInbound")]
pub struct Config {
    /// Address to listen on, `host:port` (`127.0.0.1:8080`; port 0 picks a free one).
    pub listen: String,
    /// Paths accepted, exactly (default `["/"]`).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Methods accepted (default `[POST]`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// `ack` (default) or `reply`.
    #[serde(default)]
    pub response: ResponseMode,
    /// In `reply` mode, how long to wait for the route's result (default `30s`).
    #[serde(default = "default_reply_timeout")]
    pub reply_timeout: Duration,
    /// Largest body accepted (default `10MiB`); larger gets `413`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// `any` (default), `json` or `xml`.
    #[serde(default)]
    pub content: Content,
    /// Credentials a request must carry; without `auth`, none.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Longest a client may take to send its request headers (default `10s`).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Longest a client may take to send the body (default `30s`); then `408`.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
}

fn default_paths() -> Vec<String> {
    vec!["/".into()]
}
fn default_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn default_reply_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Binds the listener now, so a taken port is an error at start, naming the address.
    pub fn build(&self, cx: &BuildContext) -> anyhow::Result<HttpInbound> {
        let listener = cx.listeners.reserve(&self.listen)?;
        let tls = TlsFiles::acceptor(self.tls.as_ref())?;
        for m in &self.methods {
            hyper::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| anyhow::anyhow!("`{m}` is not an HTTP method"))?;
        }
        Ok(HttpInbound {
            cfg: Arc::new(self.clone()),
            listener: Mutex::new(listener),
            listeners: cx.listeners.clone(),
            tls,
        })
    }
}

pub struct HttpInbound {
    cfg: Arc<Config>,
    listener: Mutex<Option<std::net::TcpListener>>,
    listeners: Arc<Listeners>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpInbound {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener
            .lock()
            .ok()?
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }
}

use crate::http_answer::{answer, error as problem, json, Answer};

fn authorized(auth: &Auth, header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return auth
            .bearer
            .iter()
            .any(|t| crate::secrets::same(t.as_bytes(), token.trim().as_bytes()));
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some((user, pass)) = std::str::from_utf8(&decoded)
            .ok()
            .and_then(|s| s.split_once(':'))
        else {
            return false;
        };
        return auth.basic.iter().any(|b| {
            crate::secrets::same(b.username.as_bytes(), user.as_bytes())
                & crate::secrets::same(b.password.as_bytes(), pass.as_bytes())
        });
    }
    false
}

/// One route version taking requests.
struct Handler {
    cfg: Arc<Config>,
    intake: Intake,
    /// Requests this version took and has not answered: its stop waits for them.
    in_flight: TaskTracker,
}

/// Who takes the requests arriving on an address's connections.
enum Taker {
    /// Between two versions (a reload), or before the first: requests wait for the next.
    Swapping,
    Version(Arc<Handler>),
    /// The route is paused: `503` at once.
    Paused,
}

/// How long a request waits for the next version during a reload before it is answered
/// `503`; a reload takes milliseconds, this is for one that never comes.
const SWAP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl HttpInbound {
    /// The connections of this route's address: kept across versions, except on port 0 (any
    /// free port), which a next version cannot ask for again.
    fn connections(&self) -> (Arc<Connections>, bool) {
        let kept = (!crate::listeners::any_free_port(&self.cfg.listen))
            .then(|| self.listeners.kept::<Connections>(&self.cfg.listen))
            .flatten();
        match kept {
            Some(c) => (c, true),
            None => (Arc::new(Connections::default()), false),
        }
    }

    /// Accepts connections for `connections` until `stop`, then hands the listener back.
    async fn accept(
        &self,
        listener: tokio::net::TcpListener,
        connections: &Arc<Connections>,
        stop: &CancellationToken,
    ) {
        while let Some((stream, remote)) =
            crate::listeners::accept(&listener, stop, &self.cfg.listen).await
        {
            tokio::spawn(connection(
                connections.clone(),
                stream,
                remote,
                self.tls.clone(),
                self.cfg.header_timeout.0,
            ));
        }
        self.listeners.release(&self.cfg.listen, listener);
    }
}

/// Serves one connection for as long as the client keeps it, each request taken by the
/// version taking requests at that moment.
async fn connection(
    connections: Arc<Connections>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: std::time::Duration,
) {
    let closed = connections.closed.clone();
    let service = service_fn(move |req| {
        let connections = connections.clone();
        async move {
            let answer = match connections.take().await {
                Take::Version(h, token) => {
                    let answer = h.handle(req, remote, &connections.closed).await;
                    drop(token);
                    answer
                }
                Take::Paused => paused_answer(),
                Take::Closing => closing_answer(),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    match tls {
        None => serve(builder, TokioIo::new(stream), service, closed).await,
        Some(acceptor) => {
            // A failed or stalled handshake just closes the connection.
            let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
            if let Ok(Ok(tls_stream)) = handshake.await {
                serve(builder, TokioIo::new(tls_stream), service, closed).await
            }
        }
    }
}

#[async_trait]
impl Inbound for HttpInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = self.listeners.acquire(&self.listener, &self.cfg.listen)?;
        tracing::info!(route = %intake.route, listen = %listener.local_addr()?, "HTTP listener ready");
        let (connections, kept) = self.connections();
        let version = Arc::new(Handler {
            cfg: self.cfg.clone(),
            intake,
            in_flight: TaskTracker::new(),
        });
        connections.hand_to(Taker::Version(version.clone()));
        self.accept(listener, &connections, &shutdown).await;
        // Requests this version took finish (their messages are being committed); the
        // connections stay open for the next version.
        connections.stop(&version);
        version.in_flight.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), version.in_flight.wait())
            .await;
        if !kept {
            connections.closed.cancel();
        }
        Ok(())
    }

    async fn paused(&self, stop: CancellationToken) {
        let listener = match self.listeners.acquire(&self.listener, &self.cfg.listen) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(listen = %self.cfg.listen, error = %e, "cannot answer callers while paused");
                return;
            }
        };
        let (connections, kept) = self.connections();
        connections.hand_to(Taker::Paused);
        self.accept(listener, &connections, &stop).await;
        connections.unpause();
        if !kept {
            connections.closed.cancel();
        }
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        // The client was answered already (202), or gets the failure in the reply.
        Ok(())
    }
}

async fn serve<I, S>(builder: http1::Builder, io: I, service: S, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Send,
    S::Future: Send,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            // A connection accepted a moment ago may not have sent its request yet: give it a
            // moment to be served, rather than closing it under the client.
            if tokio::time::timeout(std::time::Duration::from_secs(1), conn.as_mut()).await.is_err() {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
