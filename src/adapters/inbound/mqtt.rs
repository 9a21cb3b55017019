//! MQTT inbound (MQTT 5): subscribes to topic filters in a persistent session, and sends each
//! PUBACK only after the message is committed — the broker contract in
//! [`crate::adapters::broker`].
//!
//! The session (a stable `client_id`, `clean_start: false`, a session expiry) keeps the
//! subscriptions and queues what is published while the engine is down. At most
//! `receive_maximum` messages are unacknowledged at once (MQTT 5 flow control): they are
//! committed side by side and acknowledged in the order they came, as MQTT asks. MQTT gives
//! messages no id of their own: a message resent after a lost connection *within one run* is
//! recognised by its packet id while it is still in hand; after a crash, a resent message
//! (the broker sets `dup`) is recognised by the user property `id_property` when the
//! publisher set one (Switchyard does), and otherwise stored again, visible as such
//! (`mqtt.dup: true`).
//! A message the intake refuses (over `max_size`, not the declared `content`) is recorded as
//! failed and acknowledged, so the broker does not send it again.

use super::http::Content;
use super::{Inbound, Intake};
use crate::adapters::broker::mqtt;
use crate::adapters::broker::{redact, Backoff, Link, Tls};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};
use serde::Deserialize;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "MqttInbound")]
pub struct Config {
    /// The broker: `mqtt://host:1883`, `mqtt://user:${MQTT_PASSWORD}@host`, or `mqtts://`.
    pub url: mqtt::Url,
    /// The client id: the name of the session the broker keeps for this route. Keep it
    /// stable, and give each route its own.
    pub client_id: String,
    /// Topic filters, with `+` and `#` wildcards: `[sensors/+/temperature]`.
    pub topics: Vec<String>,
    /// QoS of the subscriptions (default 1; 2 works too; 0 means messages may be lost).
    #[serde(default = "default_qos")]
    pub qos: mqtt::Qos,
    /// Start without the session kept by the broker (default false: the session and what
    /// was queued in it while the engine was away are kept).
    #[serde(default)]
    pub clean_start: bool,
    /// How long the broker keeps the session after the engine disconnects (default `7d`).
    #[serde(default = "default_session_expiry")]
    pub session_expiry: Duration,
    /// Messages unacknowledged at once (MQTT 5 receive maximum, default 64).
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// Keep-alive interval (default `30s`).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Duration,
    /// Largest message accepted (default `1MiB`); larger ones (up to 4× this) are recorded
    /// as failed; beyond that the broker itself drops them, as MQTT 5 requires.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// The MQTT 5 user property that carries a stable message id (default
    /// `switchyard-message-id`, which Switchyard's MQTT destinations set). A message whose id
    /// was stored before (resent after a crash) is recorded as `duplicate`, not processed.
    #[serde(default = "default_id_property")]
    pub id_property: String,
    /// `any` (default), `json` or `xml`: other content is recorded as failed.
    #[serde(default)]
    pub content: Content,
    /// TLS settings for `mqtts://`.
    #[serde(default)]
    pub tls: Tls,
}

fn default_qos() -> mqtt::Qos {
    mqtt::Qos(1)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_receive_maximum() -> u16 {
    64
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_id_property() -> String {
    "switchyard-message-id".into()
}
fn default_max_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<MqttInbound> {
        let broker = mqtt::parse_url(&self.url).map_err(anyhow::Error::msg)?;
        if self.topics.is_empty() {
            anyhow::bail!("`topics` is empty: name at least one topic filter");
        }
        if self.client_id.is_empty() {
            anyhow::bail!("`client_id` is empty: the broker keeps the session under this name");
        }
        if self.receive_maximum == 0 {
            anyhow::bail!("`receive_maximum` must be at least 1");
        }
        mqtt::options(&broker, &self.client_id, &self.tls, self.keep_alive.0)
            .map_err(anyhow::Error::msg)?;
        Ok(MqttInbound {
            link: Arc::new(Link::new(format!(
                "{} client {}",
                redact(&self.url),
                self.client_id
            ))),
            cfg: Arc::new(self.clone()),
            broker,
        })
    }
}

pub struct MqttInbound {
    cfg: Arc<Config>,
    broker: mqtt::Broker,
    link: Arc<Link>,
}

/// What the event-loop task hands the intake.
enum Incoming {
    Connected {
        session_present: bool,
    },
    /// The broker answered the subscription, with a failure text per refused filter.
    Subscribed(Vec<String>),
    Publish(Box<Publish>),
}

#[async_trait]
impl Inbound for MqttInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let mut options = mqtt::options(&self.broker, &cfg.client_id, &cfg.tls, cfg.keep_alive.0)
            .map_err(anyhow::Error::msg)?;
        let packet_limit = cfg.max_size.0.saturating_mul(4).saturating_add(64 << 10);
        options
            .set_manual_acks(true)
            .set_clean_start(cfg.clean_start)
            .set_session_expiry_interval(Some(
                cfg.session_expiry.0.as_secs().min(u32::MAX as u64) as u32
            ))
            .set_receive_maximum(Some(cfg.receive_maximum))
            .set_max_packet_size(Some(packet_limit.min(u32::MAX as u64) as u32));
        let window = cfg.receive_maximum as usize;
        let (client, mut eventloop) = AsyncClient::new(options, window * 2 + 16);
        // The event loop runs on its own task, so the network is served (pings, acks) while
        // messages are being committed. Its channel never holds more than the receive maximum
        // of messages, which the broker respects.
        let (tx, mut rx) = mpsc::channel::<Incoming>(window + 16);
        let stop_loop = CancellationToken::new();
        let mut pump = {
            let stop = stop_loop.clone();
            let link = self.link.clone();
            tokio::spawn(async move {
                let mut backoff = Backoff::default();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = eventloop.poll() => e,
                    };
                    let forward = match event {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            backoff.reset();
                            link.up();
                            Incoming::Connected {
                                session_present: ack.session_present,
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Publish(Box::new(p)),
                        Ok(Event::Incoming(Packet::SubAck(ack))) => Incoming::Subscribed(
                            ack.return_codes
                                .iter()
                                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                                .map(|c| format!("{c:?}"))
                                .collect(),
                        ),
                        // Sent after the last acknowledgements: everything is flushed.
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => continue,
                        Err(e) => {
                            let wait = backoff.wait();
                            link.down(&e.to_string(), wait);
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(wait) => {}
                            }
                            link.connecting();
                            continue;
                        }
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        sent = tx.send(forward) => if sent.is_err() { return },
                    }
                }
            })
        };

        let filters: Vec<Filter> = cfg
            .topics
            .iter()
            .map(|t| Filter::new(t.clone(), mqtt::qos(cfg.qos.0).unwrap_or_default()))
            .collect();
        // Messages being committed, acknowledged in the order they came; and the packet ids
        // among them, to recognise the broker's resend of one after a reconnect.
        let mut committing = FuturesOrdered::new();
        let mut in_hand: HashSet<u16> = HashSet::new();
        let mut subscribed = false;
        // Acknowledgements waiting for room in the client's request queue, in order. The loop
        // never waits for the event-loop task (which may itself be waiting to hand this loop
        // a message): it keeps them here and sends them as room comes.
        let mut unsent: VecDeque<Publish> = VecDeque::new();
        let retry = std::time::Duration::from_millis(2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((publish, stored)) = committing.next(), if !committing.is_empty() => {
                    let publish: Publish = publish;
                    in_hand.remove(&publish.pkid);
                    if stored {
                        unsent.push_back(publish);
                        send_acks(&client, &mut unsent);
                    }
                }
                _ = tokio::time::sleep(retry), if !unsent.is_empty() => {
                    send_acks(&client, &mut unsent);
                }
                incoming = rx.recv() => match incoming {
                    None => break,
                    Some(Incoming::Connected { session_present }) => {
                        // A kept session keeps its subscriptions; subscribing again would make
                        // the broker send retained messages again.
                        if !session_present || !subscribed {
                            if let Err(e) = client.try_subscribe_many(filters.clone()) {
                                tracing::warn!(route = %intake.route, error = %e, "cannot subscribe");
                            }
                            subscribed = true;
                        }
                    }
                    Some(Incoming::Subscribed(refused)) if refused.is_empty() => {
                        tracing::info!(route = %intake.route, topics = ?cfg.topics, "consuming");
                    }
                    Some(Incoming::Subscribed(refused)) => {
                        tracing::error!(route = %intake.route, topics = ?cfg.topics, refused = ?refused,
                            "the broker refused a subscription; check the topic filters and the broker's access rules");
                    }
                    Some(Incoming::Publish(p)) => {
                        let p = *p;
                        if p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce && !in_hand.insert(p.pkid) {
                            // The broker resent a message still being committed (the
                            // connection dropped before its PUBACK): the copy in hand will be
                            // acknowledged.
                            continue;
                        }
                        let (cfg, intake) = (self.cfg.clone(), intake.clone());
                        committing.push_back(async move {
                            let stored = take(&cfg, &intake, &p).await;
                            (p, stored)
                        });
                    }
                }
            }
        }
        // Finish what is in hand (committed messages are acknowledged), then leave the
        // session to the broker, which keeps queueing for it. Messages arriving meanwhile are
        // not taken: unacknowledged, the broker sends them again to the next session.
        let finish = async {
            while !committing.is_empty() || !unsent.is_empty() {
                tokio::select! {
                    Some((publish, stored)) = committing.next(), if !committing.is_empty() => {
                        if stored {
                            unsent.push_back(publish);
                        }
                    }
                    _ = tokio::time::sleep(retry) => {}
                    _ = rx.recv() => {}
                }
                send_acks(&client, &mut unsent);
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), finish).await;
        let _ = client.try_disconnect();
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            // Keep taking what the event loop hands over until it has sent the DISCONNECT.
            loop {
                tokio::select! {
                    _ = &mut pump => return,
                    _ = rx.recv() => {}
                }
            }
        })
        .await;
        if flushed.is_err() {
            stop_loop.cancel();
        }
        Ok(())
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(()) // acknowledged after the commit; the failure is in the store
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

/// Hands the client as many of the waiting acknowledgements as its request queue takes, in
/// order, without waiting.
fn send_acks(client: &AsyncClient, unsent: &mut VecDeque<Publish>) {
    while let Some(p) = unsent.front() {
        match client.try_ack(p) {
            Ok(()) => {
                unsent.pop_front();
            }
            // The queue is full: the rest go on the next try, still in order.
            Err(_) => return,
        }
    }
}

/// Commits one message (or records it as refused); true when the broker may be told.
async fn take(cfg: &Config, intake: &Intake, p: &Publish) -> bool {
    let headers = headers(p);
    let refusal = super::refusal(&p.payload, cfg.max_size, cfg.content);
    let outcome = match refusal {
        Some(reason) => intake.refuse(headers, &reason).await.map(drop),
        None => {
            let key = p
                .properties
                .iter()
                .flat_map(|props| props.user_properties.iter())
                .find(|(k, v)| *k == cfg.id_property && !v.is_empty())
                .map(|(_, v)| ("broker_message_id".to_string(), v.clone()));
            intake
                .submit_once(headers, p.payload.clone(), key)
                .await
                .map(drop)
        }
    };
    match outcome {
        Ok(()) => true,
        Err(e) => {
            // Not acknowledged: the broker sends it again after the next reconnect.
            tracing::warn!(route = %intake.route, error = %e, "message not stored; left unacknowledged");
            false
        }
    }
}

/// Topic, QoS, flags and MQTT 5 properties as message headers.
fn headers(p: &Publish) -> Headers {
    let mut h = Headers::new();
    h.insert(
        "mqtt.topic".into(),
        String::from_utf8_lossy(&p.topic).into_owned(),
    );
    h.insert("mqtt.qos".into(), (p.qos as u8).to_string());
    h.insert("mqtt.retain".into(), p.retain.to_string());
    h.insert("mqtt.dup".into(), p.dup.to_string());
    h.insert("mqtt.packet_id".into(), p.pkid.to_string());
    if let Some(props) = &p.properties {
        if let Some(ct) = &props.content_type {
            h.insert("content-type".into(), ct.clone());
        }
        if let Some(t) = &props.response_topic {
            h.insert("mqtt.response_topic".into(), t.clone());
        }
        if let Some(c) = &props.correlation_data {
            h.insert(
                "mqtt.correlation_data".into(),
                String::from_utf8_lossy(c).into_owned(),
            );
        }
        for (k, v) in &props.user_properties {
            h.insert(format!("mqtt.user.{k}"), v.clone());
        }
    }
    h
}
