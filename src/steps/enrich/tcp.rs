//! `enrich` from a TCP backend: the request framed (MLLP, lines, length prefix, delimiter) and
//! sent, one framed answer read — a legacy system queried over a socket, or an HL7 system
//! whose answer (a query response, an ACK with data) is what the route needs.

use super::Transient;
use crate::codec::charset::Charset;
use crate::codec::framing::{read_frame, Framing, ReadError};
use crate::config::values::ByteSize;
use bytes::BytesMut;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    conn: tokio::sync::Mutex<Option<(TcpStream, BytesMut)>>,
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
            .and_then(|b| self.cfg.framing.encode(&b))
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
        slot: &mut Option<(TcpStream, BytesMut)>,
        wire: &[u8],
    ) -> Result<bytes::Bytes, Transient> {
        let addr = self.address();
        if slot.is_none() {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|e| Transient(format!("cannot connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            *slot = Some((stream, BytesMut::with_capacity(4096)));
        }
        let Some((stream, buf)) = slot.as_mut() else {
            return Err(Transient(format!("not connected to {addr}")));
        };
        stream
            .write_all(wire)
            .await
            .map_err(|e| Transient(format!("cannot send to {addr}: {e}")))?;
        let max = self.cfg.max_frame.0 as usize;
        read_frame(stream, buf, &self.cfg.framing, max)
            .await
            .map_err(|e| {
                Transient(match e {
                    ReadError::Closed => format!("{addr} closed the connection without an answer"),
                    ReadError::Bad(e) => format!("bad answer from {addr}: {e}"),
                    ReadError::Io(e) => format!("reading the answer from {addr}: {e}"),
                })
            })
    }
}
