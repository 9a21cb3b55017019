//! `enrich` from a TCP backend: the request framed (MLLP, lines, length prefix, delimiter) and
//! sent, one framed answer read — a legacy system queried over a socket, or an HL7 system
//! whose answer (a query response, an ACK with data) is what the route needs.

use super::Transient;
use crate::codec::charset::Charset;
use crate::codec::framing::{next_frame, FrameCodec, FrameError, Framing};
use crate::config::values::ByteSize;
use crate::message::Message;
use bytes::Bytes;
use futures_util::SinkExt as _;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TcpEnrich")]
pub struct Config {
    /// The backend's host.
    pub host: String,
    /// The backend's port.
    pub port: u16,
    /// `mllp` (default), `lines`, `{ length_prefixed: { bytes: 2 } }` or
    /// `{ delimiter: { end: "\u0003" } }`, as for the TCP adapters.
    #[serde(default)]
    pub framing: Framing,
    /// Charset on the wire (default `utf-8`).
    #[serde(default)]
    pub charset: Charset,
    /// Largest answer accepted (default `1MiB`).
    #[serde(default = "Config::default_max_frame")]
    pub max_frame: ByteSize,
}

impl Config {
    fn default_max_frame() -> ByteSize {
        ByteSize(1 << 20)
    }

    pub fn build(&self) -> Result<Exchange, String> {
        self.framing.check()?;
        Ok(Exchange {
            cfg: self.clone(),
            conn: tokio::sync::Mutex::new(None),
        })
    }
}

/// One connection to the backend, kept between calls and made again after any failure;
/// one request at a time on it, so that each answer is its request's.
pub struct Exchange {
    cfg: Config,
    conn: tokio::sync::Mutex<Option<Framed<TcpStream, FrameCodec>>>,
}

impl Exchange {
    pub fn address(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    /// Sends `request` and returns the answer's text. Every failure is transient (the
    /// backend down, slow or out of step): the step tries again, then `on_error` decides.
    pub async fn call(
        &self,
        request: &str,
        timeout: std::time::Duration,
    ) -> Result<String, Transient> {
        let addr = self.address();
        let wire = self
            .cfg
            .charset
            .encode(request)
            .and_then(|b| self.cfg.framing.can_carry(&b).map(|()| b))
            .map_err(|e| Transient(format!("cannot frame the request for {addr}: {e}")))?;
        let mut slot = self.conn.lock().await;
        let answer = tokio::time::timeout(timeout, self.exchange(&mut slot, &wire))
            .await
            .unwrap_or_else(|_| Err(Transient(format!("no answer from {addr} in time"))));
        if answer.is_err() {
            // The stream may be out of step: start afresh next time.
            *slot = None;
        }
        let frame = answer?;
        self.cfg
            .charset
            .decode(&frame)
            .map_err(|e| Transient(format!("the answer from {addr}: {e}")))
    }

    async fn exchange(
        &self,
        slot: &mut Option<Framed<TcpStream, FrameCodec>>,
        payload: &[u8],
    ) -> Result<bytes::Bytes, Transient> {
        let addr = self.address();
        if slot.is_none() {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| Transient(format!("cannot connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let codec = FrameCodec::new(self.cfg.framing.clone(), self.cfg.max_frame.0 as usize);
            *slot = Some(Framed::with_capacity(stream, codec, 4096));
        }
        let Some(framed) = slot.as_mut() else {
            return Err(Transient(format!("not connected to {addr}")));
        };
        framed
            .send(payload)
            .await
            .map_err(|e| Transient(format!("cannot send to {addr}: {e}")))?;
        next_frame(framed).await.map_err(|e| {
            Transient(match e {
                FrameError::Closed | FrameError::Unfinished(_) => {
                    format!("{addr} closed the connection without an answer")
                }
                FrameError::Bad(e) => format!("bad answer from {addr}: {e}"),
                FrameError::Io(e) => format!("reading the answer from {addr}: {e}"),
            })
        })
    }
}

impl super::Enrich {
    /// A TCP backend's answer to the request (`send`, or the whole body as text).
    pub(super) fn fetch_tcp(
        &self,
        exchange: &Exchange,
        msg: &mut Message,
        body: Option<&Value>,
    ) -> Result<Option<Value>, String> {
        let request = match (&self.send, body) {
            (None, _) => msg.body_text()?.to_string(),
            (Some(path), Some(b)) => match crate::steps::map::get(b, path) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => return Err("`send` names a part of the body that is not there".into()),
            },
            (Some(_), None) => {
                return Err("`send` names a part of the body, which is not JSON".into())
            }
        };
        let address = exchange.address();
        let (_, answer, cached) = self
            .cached_or(
                request.clone(),
                || {
                    self.with_retries(|| async {
                        exchange
                            .call(&request, self.timeout)
                            .await
                            .map(|text| (200, Bytes::from(text)))
                    })
                },
                |_| true,
            )
            .map_err(|e| format!("tcp {address}: {e}"))?;
        let name = &self.into_name;
        msg.headers
            .insert(format!("enrich.{name}.address"), address);
        if cached {
            msg.headers
                .insert(format!("enrich.{name}.cached"), "true".into());
        }
        Ok(Some(super::answer_value(&answer)))
    }
}
