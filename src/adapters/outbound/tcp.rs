//! TCP outbound: a client that sends framed messages to a legacy system — for HL7, an MLLP
//! client that waits for each ACK.
//!
//! One persistent connection per destination, opened on first use and again after any
//! failure (the delivery's retry backoff paces the reconnects). With `ack: hl7`, an AA or CA
//! answer means delivered; AE/CE and a missing answer (timeout) are retried; AR/CR fail the
//! delivery at once. Deliveries are strictly FIFO by default, as HL7 feeds need.

use super::{DeliveryConfig, Outbound, SendError, Sent};
use crate::codec::charset::Charset;
use crate::codec::framing::{next_frame, FrameCodec, FrameError, Framing};
use crate::config::values::{ByteSize, Duration};
use crate::message::Message;
use crate::steps::BuildContext;
use async_trait::async_trait;
use futures_util::SinkExt as _;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::codec::Framed;

/// What the receiver answers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Nothing: written is delivered.
    None,
    /// An HL7 ACK per message.
    Hl7,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TcpOutbound")]
pub struct Config {
    /// The receiver's host.
    pub host: String,
    /// The receiver's port.
    pub port: u16,
    /// `mllp` (default), `lines`, `{ length_prefixed: { bytes: 2 } }` or
    /// `{ delimiter: { end: "\u0003" } }`.
    #[serde(default)]
    pub framing: Framing,
    /// Charset on the wire (default `utf-8`).
    #[serde(default)]
    pub charset: Charset,
    /// `hl7` (default with `mllp`) or `none`.
    #[serde(default)]
    pub ack: Option<Expect>,
    /// Longest connecting may take (default `10s`).
    #[serde(default = "default_connect")]
    pub connect_timeout: Duration,
    /// Longest to wait for the ACK (default `30s`); then the attempt fails and is retried.
    #[serde(default = "default_ack")]
    pub ack_timeout: Duration,
    /// Largest answer accepted (default `1MiB`).
    #[serde(default = "default_max_frame")]
    pub max_frame: ByteSize,
    /// Concurrency, ordering and retries; `ordering` defaults to `fifo` here.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_connect() -> Duration {
    Duration::from_secs(10)
}
fn default_ack() -> Duration {
    Duration::from_secs(30)
}
fn default_max_frame() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    fn expect(&self) -> Expect {
        self.ack.unwrap_or(if self.framing == Framing::Mllp {
            Expect::Hl7
        } else {
            Expect::None
        })
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<TcpOutbound> {
        self.framing.check().map_err(anyhow::Error::msg)?;
        Ok(TcpOutbound {
            cfg: self.clone(),
            conn: Mutex::new(None),
        })
    }
}

type Conn = Framed<TcpStream, FrameCodec>;

pub struct TcpOutbound {
    cfg: Config,
    conn: Mutex<Option<Conn>>,
}

impl TcpOutbound {
    fn addr(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    async fn exchange(&self, conn: &mut Conn, payload: &[u8]) -> Result<String, SendError> {
        let addr = self.addr();
        conn.send(payload).await.map_err(|e| match e {
            FrameError::Bad(e) => SendError::permanent(format!("cannot frame the message: {e}")),
            e => SendError::retryable(format!("cannot send to {addr}: {e}")),
        })?;
        if self.cfg.expect() == Expect::None {
            return Ok(format!("sent {} bytes to {addr}", payload.len()));
        }
        let wait = async {
            next_frame(conn).await.map_err(|e| {
                SendError::retryable(match e {
                    FrameError::Closed | FrameError::Unfinished(_) => {
                        format!("{addr} closed the connection without an ACK")
                    }
                    FrameError::Bad(e) => format!("bad answer from {addr}: {e}"),
                    FrameError::Io(e) => format!("reading the ACK from {addr}: {e}"),
                })
            })
        };
        let frame = tokio::time::timeout(self.cfg.ack_timeout.0, wait)
            .await
            .map_err(|_| {
                SendError::retryable(format!(
                    "no ACK from {addr} within {:?}",
                    self.cfg.ack_timeout.0
                ))
            })??;
        let text = self
            .cfg
            .charset
            .decode(&frame)
            .map_err(|e| SendError::retryable(format!("the ACK from {addr}: {e}")))?;
        let (code, reason) = crate::hl7::ack_code(&text).map_err(SendError::retryable)?;
        let said = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        match code.as_str() {
            "AA" | "CA" => Ok(format!("{code} from {addr}")),
            "AR" | "CR" => Err(SendError::permanent(format!(
                "{addr} rejected the message ({code}){said}"
            ))),
            _ => Err(SendError::retryable(format!(
                "{addr} answered {code}{said}"
            ))),
        }
    }
}

#[async_trait]
impl Outbound for TcpOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let text = msg.body_text().map_err(SendError::permanent)?;
        let bytes = self
            .cfg
            .charset
            .encode(text)
            .map_err(SendError::permanent)?;
        self.cfg
            .framing
            .can_carry(&bytes)
            .map_err(SendError::permanent)?;
        let addr = self.addr();
        // One exchange at a time on the connection: an ACK must match its message.
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            let stream =
                tokio::time::timeout(self.cfg.connect_timeout.0, TcpStream::connect(&addr))
                    .await
                    .map_err(|_| {
                        SendError::retryable(format!(
                            "cannot connect to {addr} within {:?}",
                            self.cfg.connect_timeout.0
                        ))
                    })?
                    .map_err(|e| SendError::retryable(format!("cannot connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let codec = FrameCodec::new(self.cfg.framing.clone(), self.cfg.max_frame.0 as usize);
            *slot = Some(Framed::with_capacity(stream, codec, 4096));
        }
        let conn = slot.as_mut().expect("connected above");
        match self.exchange(conn, &bytes).await {
            Ok(done) => Ok(Sent(done)),
            Err(e) => {
                // After any failure the stream may be out of step: start afresh next time.
                *slot = None;
                Err(e)
            }
        }
    }
}
