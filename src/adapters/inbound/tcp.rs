//! TCP inbound: a listener for legacy systems that frame messages on a stream — MLLP for HL7,
//! lines, length prefixes, a custom delimiter — with a charset conversion at the edge.
//!
//! Each connection is served on its own task, one message at a time (the sender waits for
//! its acknowledgement, so order per connection holds). With `ack: hl7`, every message is
//! answered: AA once it is committed (or, with `ack_after: steps`, once the steps passed), AE
//! with the reason when the steps fail, AR with the reason when it is not HL7 at all. A bad
//! frame (too large, cut off, garbage between frames) is recorded as a failed message; the
//! connection that sent it may be closed, every other connection goes on.

use super::http::TlsFiles;
use super::{Inbound, Intake};
use crate::codec::charset::Charset;
use crate::codec::framing::{Decoded, FrameCodec, FrameError, Framing};
use crate::config::values::{ByteSize, Duration};
use crate::hl7::{self, Hl7};
use crate::listeners::Listeners;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use crate::store::MessageState;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How messages are answered.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    /// No answer.
    None,
    /// An HL7 ACK (AA, AE or AR) echoing MSH-10, in the same framing.
    Hl7,
}

/// When an AA is sent.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AckAfter {
    /// As soon as the message is committed (default).
    #[default]
    Commit,
    /// Once the route's steps passed: AE with the reason when they fail.
    Steps,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TcpInbound")]
pub struct Config {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// `mllp` (default), `lines`, `{ length_prefixed: { bytes: 2 } }` or
    /// `{ delimiter: { end: "\u0003" } }`.
    #[serde(default)]
    pub framing: Framing,
    /// Charset on the wire (default `utf-8`); messages are UTF-8 inside.
    #[serde(default)]
    pub charset: Charset,
    /// `hl7` (default with `mllp` framing) or `none` (default otherwise).
    #[serde(default)]
    pub ack: Option<Ack>,
    /// `commit` (default) or `steps`.
    #[serde(default)]
    pub ack_after: AckAfter,
    /// With `ack_after: steps`, the longest wait for the steps before an AA is sent anyway
    /// (the message is committed; default `30s`).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// Largest message accepted (default `1MiB`).
    #[serde(default = "default_max_frame")]
    pub max_frame: ByteSize,
    /// A connection idle this long is closed (default `5m`).
    #[serde(default = "default_idle")]
    pub idle_timeout: Duration,
    /// Connections served at once (default 256); more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serve TLS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_frame() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_idle() -> Duration {
    Duration::from_secs(300)
}
fn default_max_connections() -> usize {
    256
}

impl Config {
    pub fn ack(&self) -> Ack {
        self.ack.unwrap_or(if self.framing == Framing::Mllp {
            Ack::Hl7
        } else {
            Ack::None
        })
    }

    pub fn build(&self, cx: &BuildContext) -> anyhow::Result<TcpInbound> {
        self.framing.check().map_err(anyhow::Error::msg)?;
        let listener = cx.listeners.reserve(&self.listen)?;
        let tls = TlsFiles::acceptor(self.tls.as_ref())?;
        Ok(TcpInbound {
            cfg: Arc::new(self.clone()),
            listener: Mutex::new(listener),
            listeners: cx.listeners.clone(),
            tls,
        })
    }
}

pub struct TcpInbound {
    cfg: Arc<Config>,
    listener: Mutex<Option<std::net::TcpListener>>,
    listeners: Arc<Listeners>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

#[async_trait]
impl Inbound for TcpInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listener = self.listeners.acquire(&self.listener, &self.cfg.listen)?;
        tracing::info!(route = %intake.route, listen = %listener.local_addr()?, "TCP listener ready");
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let Some((stream, remote)) =
                crate::listeners::accept(&listener, &shutdown, &self.cfg.listen).await
            else {
                break;
            };
            while connections.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let (cfg, intake, stop, tls) = (
                self.cfg.clone(),
                intake.clone(),
                shutdown.clone(),
                self.tls.clone(),
            );
            connections.spawn(async move {
                let conn = Connection {
                    cfg,
                    intake,
                    remote,
                };
                match tls {
                    None => conn.serve(stream, stop).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            acceptor.accept(stream),
                        );
                        if let Ok(Ok(s)) = handshake.await {
                            conn.serve(s, stop).await;
                        }
                    }
                }
                drop(slot);
            });
        }
        self.listeners.release(&self.cfg.listen, listener);
        // Messages being committed finish; idle connections are closed.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(()) // the sender was answered (AA after commit, or AE in `ack_after: steps`)
    }
}

struct Connection {
    cfg: Arc<Config>,
    intake: Intake,
    remote: SocketAddr,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S, stop: CancellationToken) {
        let cfg = &self.cfg;
        let codec = FrameCodec::new(cfg.framing.clone(), cfg.max_frame.0 as usize);
        let mut framed = Framed::with_capacity(stream, codec, 8192);
        loop {
            // Frames already buffered come first; then the stream reads more.
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(cfg.idle_timeout.0, framed.next()) => r,
            };
            let decoded = match next {
                Err(_) => {
                    tracing::debug!(remote = %self.remote, "idle connection closed");
                    return;
                }
                Ok(None) => return,
                Ok(Some(decoded)) => decoded,
            };
            match decoded {
                Ok(Decoded::Frame(frame)) => {
                    if !self.handle(frame, &mut framed).await {
                        return;
                    }
                }
                Ok(Decoded::Skipped(n)) => {
                    self.bad_input(
                        &format!("{n} bytes outside any frame were skipped"),
                        &mut framed,
                        false,
                    )
                    .await;
                }
                Ok(Decoded::Broken(why)) => self.bad_input(&why, &mut framed, false).await,
                Err(FrameError::Bad(e)) => {
                    // No safe place to pick up again: answer, record, close.
                    self.bad_input(&e, &mut framed, true).await;
                    return;
                }
                Err(FrameError::Unfinished(problem)) => {
                    self.record(&problem).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(remote = %self.remote, error = %e, "connection failed");
                    return;
                }
            }
        }
    }

    fn headers(&self) -> Headers {
        let mut h = Headers::new();
        h.insert("tcp.remote".into(), self.remote.to_string());
        h
    }

    /// Records a failed message for input that could not be taken.
    async fn record(&self, problem: &str) {
        let reason = format!("from {}: {problem}", self.remote);
        if let Err(e) = self.intake.refuse(self.headers(), &reason).await {
            tracing::error!(route = %self.intake.route, error = %e, "could not record bad input");
        }
    }

    async fn bad_input<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        problem: &str,
        framed: &mut Framed<S, FrameCodec>,
        fatal: bool,
    ) {
        self.record(problem).await;
        if self.cfg.ack() == Ack::Hl7 {
            let _ = self.send(framed, &hl7::reject_unparsed(problem)).await;
        }
        if fatal {
            let _ = framed.get_mut().shutdown().await;
        }
    }

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        framed: &mut Framed<S, FrameCodec>,
        text: &str,
    ) -> Result<(), FrameError> {
        let bytes = self
            .cfg
            .charset
            .encode(text)
            .unwrap_or_else(|_| text.as_bytes().to_vec());
        framed.send(bytes.as_slice()).await
    }

    /// Takes one frame; returns false when the connection must close.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        frame: Bytes,
        stream: &mut Framed<S, FrameCodec>,
    ) -> bool {
        let text = match self.cfg.charset.decode(&frame) {
            Ok(t) => t,
            Err(e) => {
                self.bad_input(&e, stream, false).await;
                return true;
            }
        };
        let mut headers = self.headers();
        let parsed = if self.cfg.ack() == Ack::Hl7 {
            match Hl7::parse(&text) {
                Ok(m) => {
                    for (header, path) in crate::steps::hl7::HEADERS {
                        if let Ok(Some(v)) = m.get(path) {
                            headers.insert(header.into(), v);
                        }
                    }
                    headers.insert("content-type".into(), "application/hl7-v2".into());
                    Some(m)
                }
                Err(e) => {
                    self.bad_input(&e, stream, false).await;
                    return true;
                }
            }
        } else {
            None
        };
        let body = Bytes::from(text.clone().into_bytes());
        let answer = match (&parsed, self.cfg.ack_after) {
            (None, _) => match self.intake.submit(headers, body).await {
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(route = %self.intake.route, error = %e, "not stored; closing the connection so the sender retries");
                    return false;
                }
            },
            (Some(m), AckAfter::Commit) => match self.intake.submit(headers, body).await {
                Ok(_) => Some(m.ack("AA", "")),
                // Not stored: tell the sender to send it again.
                Err(e) => Some(m.ack("AE", &format!("not stored, send it again: {e}"))),
            },
            (Some(m), AckAfter::Steps) => {
                match self
                    .intake
                    .submit_and_wait(headers, body, self.cfg.ack_timeout.0)
                    .await
                {
                    Err(e) => Some(m.ack("AE", &format!("not stored, send it again: {e}"))),
                    Ok((_, None)) => Some(m.ack("AA", "")), // committed; the steps are slow
                    Ok((_, Some(reply))) if reply.state == MessageState::Failed => {
                        Some(m.ack("AE", reply.error.as_deref().unwrap_or("the message failed")))
                    }
                    Ok((_, Some(_))) => Some(m.ack("AA", "")),
                }
            }
        };
        if let Some(ack) = answer {
            if let Err(e) = self.send(stream, &ack).await {
                tracing::debug!(remote = %self.remote, error = %e, "could not send the ACK");
                return false;
            }
        }
        true
    }
}
