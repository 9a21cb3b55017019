//! MQTT outbound (MQTT 5): publishes each message with QoS 1 (or 2), and records it done only
//! on the broker's PUBACK (PUBCOMP for QoS 2) with a success reason code. A refusal (a
//! failure reason code), no answer within `confirm_timeout` or a lost connection is a failed
//! attempt, retried by the destination's policy.
//!
//! The client crate does not say which packet id a publish got, so one task drives the
//! connection and matches answers to deliveries: publishes leave in the order they were
//! handed over, each `Outgoing::Publish(id)` event names the next one's id, and the answer
//! carrying that id completes it. After a lost connection the client is made anew (so it does
//! not resend by itself) and every delivery in flight fails and is retried.

use super::{DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::mqtt;
use crate::adapters::broker::{redact, Link, Pace, Tls};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use rumqttc::v5::mqttbytes::v5::{
    Packet, PubAckReason, PubCompReason, PubRecReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use rumqttc::Outgoing;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex as SyncMutex};
use tokio::sync::{oneshot, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "MqttOutbound")]
pub struct Config {
    /// The broker: `mqtt://host:1883`, `mqtt://user:${MQTT_PASSWORD}@host`, or `mqtts://`.
    pub url: mqtt::Url,
    /// The topic, a template: `plant/{{header.line}}/orders`.
    pub topic: Template,
    /// 1 (default) or 2.
    #[serde(default = "default_qos", deserialize_with = "confirmed_qos")]
    #[schemars(range(min = 1, max = 2))]
    pub qos: u8,
    /// Publish as the topic's retained message (default false).
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 user properties, templates.
    #[serde(default)]
    pub user_properties: BTreeMap<String, Template>,
    /// The client id (default `switchyard-` and a random suffix).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Longest wait for the broker's acknowledgement (default `30s`).
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: Duration,
    /// Keep-alive interval (default `30s`).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Duration,
    /// TLS settings for `mqtts://`.
    #[serde(default)]
    pub tls: Tls,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_qos() -> u8 {
    1
}
fn confirmed_qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    match u8::deserialize(d)? {
        n @ (1 | 2) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "`qos: {n}`: an MQTT destination publishes with QoS 1 or 2, so that the broker confirms each message"
        ))),
    }
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<MqttOutbound> {
        let broker = mqtt::parse_url(&self.url).map_err(anyhow::Error::msg)?;
        let qos = mqtt::qos(self.qos).map_err(anyhow::Error::msg)?;
        let client_id = self.client_id.clone().unwrap_or_else(|| {
            format!(
                "switchyard-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        Ok(MqttOutbound {
            link: Arc::new(Link::idle(format!(
                "{} client {client_id}",
                redact(&self.url)
            ))),
            cfg: self.clone(),
            broker,
            qos,
            client_id,
            conn: Mutex::new(None),
            pace: Pace::default(),
        })
    }
}

type Answer = Result<String, String>;

/// Deliveries waiting for the broker: handed to the client but without a packet id yet (in
/// order), and by packet id.
#[derive(Default)]
struct Waiting {
    unnumbered: VecDeque<oneshot::Sender<Answer>>,
    by_id: HashMap<u16, oneshot::Sender<Answer>>,
}

impl Waiting {
    fn fail_all(&mut self, error: &str) {
        for tx in self
            .unnumbered
            .drain(..)
            .chain(self.by_id.drain().map(|(_, t)| t))
        {
            let _ = tx.send(Err(error.to_string()));
        }
    }
}

/// One connection: the client, its driving task, and who waits for what.
struct Conn {
    client: AsyncClient,
    waiting: Arc<SyncMutex<Waiting>>,
    /// Set by the driving task when the connection is gone.
    dead: CancellationToken,
    stop: CancellationToken,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub struct MqttOutbound {
    cfg: Config,
    broker: mqtt::Broker,
    qos: QoS,
    client_id: String,
    conn: Mutex<Option<Arc<Conn>>>,
    pace: Pace,
    link: Arc<Link>,
}

impl MqttOutbound {
    /// Starts a connection; the driving task reports `Connected` once the broker accepted it.
    fn connect(&self) -> Result<(Arc<Conn>, oneshot::Receiver<Answer>), String> {
        let mut options = mqtt::options(
            &self.broker,
            &self.client_id,
            &self.cfg.tls,
            self.cfg.keep_alive.0,
        )?;
        options.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let waiting = Arc::new(SyncMutex::new(Waiting::default()));
        let (dead, stop) = (CancellationToken::new(), CancellationToken::new());
        let (ready_tx, ready) = oneshot::channel();
        let conn = Arc::new(Conn {
            client,
            waiting: waiting.clone(),
            dead: dead.clone(),
            stop: stop.clone(),
        });
        let link = self.link.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let error = loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break "the destination was stopped".to_string(),
                    e = eventloop.poll() => e,
                };
                let Ok(mut w) = waiting.lock() else {
                    break "internal lock poisoned".into();
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(String::new()));
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(id))) => {
                        if let Some(tx) = w.unnumbered.pop_front() {
                            w.by_id.insert(id, tx);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(tx) = w.by_id.remove(&ack.pkid) {
                            let answer = match ack.reason {
                                PubAckReason::Success => Ok("PUBACK".into()),
                                PubAckReason::NoMatchingSubscribers => {
                                    Ok("PUBACK (no subscriber yet)".into())
                                }
                                other => Err(format!("the broker refused the message: {other:?}")),
                            };
                            let _ = tx.send(answer);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubRec(rec))) => {
                        let refused = !matches!(
                            rec.reason,
                            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                        );
                        if refused {
                            if let Some(tx) = w.by_id.remove(&rec.pkid) {
                                let _ = tx.send(Err(format!(
                                    "the broker refused the message: {:?}",
                                    rec.reason
                                )));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubComp(comp))) => {
                        if let Some(tx) = w.by_id.remove(&comp.pkid) {
                            let _ = tx.send(match comp.reason {
                                PubCompReason::Success => Ok("PUBCOMP".into()),
                                other => Err(format!(
                                    "the broker did not complete the message: {other:?}"
                                )),
                            });
                        }
                    }
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        break format!("the broker disconnected: {:?}", d.reason_code);
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            if let Ok(mut w) = waiting.lock() {
                w.fail_all(&format!(
                    "connection to the broker lost before its acknowledgement: {error}"
                ));
            }
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(Err(error.clone()));
            }
            dead.cancel();
            if !stop.is_cancelled() {
                link.down(&error, std::time::Duration::ZERO);
            }
        });
        Ok((conn, ready))
    }

    /// The open connection, or a new one (at most as often as the reconnect backoff allows).
    async fn conn(&self) -> Result<Arc<Conn>, SendError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.is_cancelled() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        self.pace.ready(&self.link).map_err(SendError::retryable)?;
        self.link.connecting();
        let (conn, ready) = self.connect().map_err(SendError::permanent)?;
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ready)
            .await
            .map_err(|_| "no CONNACK within 10s".to_string())
            .and_then(|r| r.map_err(|_| "connection task ended".to_string()))
            .and_then(|r| r);
        match answer {
            Ok(_) => {
                self.pace.connected();
                self.link.up();
                *slot = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let error = format!("cannot connect to {}: {e}", self.link.broker);
                self.pace.failed(&self.link, &error);
                Err(SendError::retryable(error))
            }
        }
    }
}

#[async_trait]
impl Outbound for MqttOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let topic = self.cfg.topic.render(msg);
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(SendError::permanent(format!(
                "`{topic}` is not a topic to publish to (empty, or with a wildcard)"
            )));
        }
        let conn = self.conn().await?;
        let mut properties = PublishProperties {
            content_type: msg.header("content-type").map(str::to_string),
            ..Default::default()
        };
        properties
            .user_properties
            .push(("switchyard-message-id".into(), msg.id.to_string()));
        for (k, v) in &self.cfg.user_properties {
            properties.user_properties.push((k.clone(), v.render(msg)));
        }
        let (tx, rx) = oneshot::channel();
        {
            // The waiter queues up in the same order as the publish, whatever runs beside.
            let _order = self.conn.lock().await;
            if let Ok(mut w) = conn.waiting.lock() {
                w.unnumbered.push_back(tx);
            }
            let handed = conn
                .client
                .publish_with_properties(
                    topic.clone(),
                    self.qos,
                    self.cfg.retain,
                    msg.body.clone(),
                    properties,
                )
                .await;
            if let Err(e) = handed {
                if let Ok(mut w) = conn.waiting.lock() {
                    w.unnumbered.pop_back();
                }
                return Err(SendError::retryable(format!("cannot publish: {e}")));
            }
        }
        let wait = self.cfg.confirm_timeout.0;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(what))) => Ok(Sent(format!(
                "{what} from {} for topic `{topic}`",
                self.link.broker
            ))),
            Ok(Ok(Err(e))) => Err(SendError::retryable(e)),
            Ok(Err(_)) => Err(SendError::retryable(
                "the connection task ended before the acknowledgement",
            )),
            Err(_) => {
                // Without an answer the connection cannot be trusted: start afresh.
                let mut slot = self.conn.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    *slot = None;
                }
                Err(SendError::retryable(format!(
                    "no acknowledgement from {} within {wait:?}",
                    self.link.broker
                )))
            }
        }
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}
