//! The contract every broker adapter follows (RabbitMQ, MQTT, and the brokers after them),
//! and the parts they share. `docs/adapters/brokers.md` says the same for users.
//!
//! - Inbound: a delivery is committed through [`crate::adapters::inbound::Intake`] *before*
//!   the broker hears an acknowledgement. A crash between the two makes the broker redeliver;
//!   where the broker gives a stable message id, the redelivery is recognised by that id in
//!   the store ([`crate::adapters::inbound::Intake::submit_once`]) and recorded as
//!   `duplicate`, never processed twice.
//! - A delivery the intake refuses (too large, not the declared content) is recorded as failed
//!   and rejected without requeue, so it is never redelivered for ever.
//! - Outbound: a delivery is done only once the broker confirmed it (publisher confirm,
//!   PUBACK); a refusal, a timeout or a lost connection is a failed attempt, retried by the
//!   destination's policy.
//! - Backpressure: at most `prefetch` deliveries are unacknowledged at once; the broker sends
//!   no more until the store took them.
//! - Connections are the adapter's own: it reconnects with [`Backoff`], declares its topology
//!   again, and reports its state through a [`Link`] (logs, `/routes`, `/metrics`).

pub mod amqp;
pub mod amqp1;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The name under which Switchyard's broker destinations send the message id where the
/// broker has no message-id property of its own (an MQTT user property, a Redis field, an SQS
/// message attribute), and where its inbounds look for it.
pub const ID_NAME: &str = "switchyard-message-id";

/// How many of a pulling inbound's `prefetch` places must be free before it pulls again: half.
/// A pull is a round trip (for JetStream also an API call the server answers); pulling as soon
/// as one place was free fetched one message a pull once the window was full (pulling by
/// halves: +4–6% NATS intake, docs/performance.md).
pub fn pull_when_free(prefetch: usize) -> usize {
    prefetch.div_ceil(2)
}

/// What a route using SQS hears from a build without it.
#[cfg(not(feature = "sqs"))]
pub const NO_SQS: &str = "this Switchyard was built without Amazon SQS support: build it with `cargo build --release --features sqs`";

/// What a route using Kafka hears from a build without it.
#[cfg(not(feature = "kafka"))]
pub const NO_KAFKA: &str = "this Switchyard was built without Apache Kafka support: build it with `cargo build --release --features kafka`";

/// Reads a `kafka:` adapter in a build without Kafka: an error where the route file says
/// `kafka:`, so `switchyard check` reports it with file, line and column.
#[cfg(not(feature = "kafka"))]
pub fn no_kafka<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(NO_KAFKA))
}

/// Reads an `sqs:` adapter in a build without SQS, like [`no_kafka`].
#[cfg(not(feature = "sqs"))]
pub fn no_sqs<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(NO_SQS))
}

/// The schema of an adapter this build leaves out (`kafka`, `sqs` without their feature):
/// any options, so an editor does not flag a route meant for another build.
#[derive(Debug)]
pub struct NotBuilt;

impl schemars::JsonSchema for NotBuilt {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NotBuilt".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "object" })
    }
}

/// TLS for `amqps://` and `mqtts://` URLs (rustls with ring).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "BrokerTls")]
pub struct Tls {
    /// CA certificate(s) to trust (PEM), for a broker with a private CA or a self-signed
    /// certificate. Without it, the public web roots are trusted.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// The state of one broker connection, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// A destination that has not delivered yet: it connects on its first delivery.
    Idle,
    Connecting,
    Connected,
    /// Lost or refused; the adapter is waiting to try again.
    Down,
}

/// One adapter's connection to its broker: its state, since when, the last error, and how
/// often it reconnected. Shared between the adapter (which sets it) and the admin API.
pub struct Link {
    /// The broker, without credentials (`amqp://127.0.0.1:5672/%2f`).
    pub broker: String,
    /// The route and the adapter's name in it (`from`, `to[0]`), for the log.
    owner: Mutex<(String, String)>,
    inner: Mutex<LinkInner>,
}

struct LinkInner {
    state: LinkState,
    since: SystemTime,
    error: Option<String>,
    reconnects: u64,
    ever_connected: bool,
    /// Connected at some point since the last `connecting`.
    came_up: bool,
}

/// A copy of a [`Link`]'s state, for the admin API and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub broker: String,
    pub state: LinkState,
    pub since: String,
    pub error: Option<String>,
    pub reconnects: u64,
}

impl Link {
    /// An inbound's connection, about to be made.
    pub fn new(broker: String) -> Link {
        Self::starting(broker, LinkState::Connecting)
    }

    /// A destination's connection, made on its first delivery.
    pub fn idle(broker: String) -> Link {
        Self::starting(broker, LinkState::Idle)
    }

    fn starting(broker: String, state: LinkState) -> Link {
        Link {
            broker,
            owner: Mutex::new(Default::default()),
            inner: Mutex::new(LinkInner {
                state,
                since: SystemTime::now(),
                error: None,
                reconnects: 0,
                ever_connected: false,
                came_up: false,
            }),
        }
    }

    fn set(&self, state: LinkState, error: Option<String>) {
        if let Ok(mut l) = self.inner.lock() {
            if l.state != state {
                l.since = SystemTime::now();
            }
            if state == LinkState::Connected && l.state != LinkState::Connected {
                if l.ever_connected {
                    l.reconnects += 1;
                }
                l.ever_connected = true;
                l.came_up = true;
            }
            l.state = state;
            if error.is_some() || state == LinkState::Connected {
                l.error = error;
            }
        }
    }

    /// Names the route and adapter this connection serves, for the log.
    pub fn owned_by(&self, route: &str, adapter: &str) {
        if let Ok(mut o) = self.owner.lock() {
            *o = (route.to_string(), adapter.to_string());
        }
    }

    fn owner(&self) -> (String, String) {
        self.owner.lock().map(|o| o.clone()).unwrap_or_default()
    }

    pub fn connecting(&self) {
        self.set(LinkState::Connecting, None);
        if let Ok(mut l) = self.inner.lock() {
            l.came_up = false;
        }
    }

    pub fn up(&self) {
        let (route, adapter) = self.owner();
        tracing::info!(route, adapter, broker = %self.broker, "broker connection up");
        self.set(LinkState::Connected, None);
    }

    /// The connection was lost or could not be made; `error` must not hold credentials.
    pub fn down(&self, error: &str, retry_in: Duration) {
        let (route, adapter) = self.owner();
        tracing::warn!(route, adapter, broker = %self.broker, error,
            retry_in = ?retry_in, "broker connection down; reconnecting");
        self.set(LinkState::Down, Some(error.to_string()));
    }

    /// True when the connection came up since the last [`Link::connecting`]: the session that
    /// just ended had worked.
    fn was_up(&self) -> bool {
        self.inner.lock().is_ok_and(|l| l.came_up)
    }

    pub fn is_up(&self) -> bool {
        self.inner
            .lock()
            .is_ok_and(|l| l.state == LinkState::Connected)
    }

    pub fn status(&self) -> LinkStatus {
        let l = self.inner.lock();
        let (state, since, error, reconnects) = match &l {
            Ok(l) => (l.state, l.since, l.error.clone(), l.reconnects),
            Err(_) => (LinkState::Down, SystemTime::now(), None, 0),
        };
        LinkStatus {
            broker: self.broker.clone(),
            state,
            since: humantime::format_rfc3339_millis(since).to_string(),
            error,
            reconnects,
        }
    }
}

/// Waits between reconnection attempts: 200 ms, doubling to at most 30 s, with jitter so that
/// many adapters do not knock on a restarted broker at the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(30);

    /// The wait before the next attempt; each call doubles the one after.
    pub fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter = uuid::Uuid::new_v4().as_u128() as u64 % (base.as_millis() as u64 / 4 + 1);
        base + Duration::from_millis(jitter)
    }

    /// A connection worked: start again from the shortest wait.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Paces a destination's reconnects: after a failed connection, deliveries fail fast ("the
/// next attempt to reconnect is in …") until the [`Backoff`]'s wait has passed, so a dead
/// broker is not hammered by every retry of every delivery.
pub struct Pace(Mutex<(std::time::Instant, Backoff)>);

impl Default for Pace {
    fn default() -> Self {
        Pace(Mutex::new((std::time::Instant::now(), Backoff::default())))
    }
}

impl Pace {
    /// `Err` with the reason when the next connection attempt is not due yet.
    pub fn ready(&self, link: &Link) -> Result<(), String> {
        let not_before = self
            .0
            .lock()
            .map(|p| p.0)
            .unwrap_or_else(|_| std::time::Instant::now());
        let now = std::time::Instant::now();
        if now < not_before {
            return Err(format!(
                "the connection to {} is down; the next attempt to reconnect is in {:?}",
                link.broker,
                not_before - now
            ));
        }
        Ok(())
    }

    /// A connection was made: the next failure waits the shortest time again.
    pub fn connected(&self) {
        if let Ok(mut p) = self.0.lock() {
            p.1.reset();
        }
    }

    /// Makes a destination's connection with `connect`, no sooner than the backoff allows,
    /// and reports the outcome on `link`: every broker destination connects through here.
    pub async fn connect<T>(
        &self,
        link: &Link,
        connect: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        self.ready(link)?;
        link.connecting();
        match connect.await {
            Ok(made) => {
                self.connected();
                link.up();
                Ok(made)
            }
            Err(e) => {
                self.failed(link, &e);
                Err(e)
            }
        }
    }

    /// The connection failed or was lost: pace the next attempt and report it on `link`.
    pub fn failed(&self, link: &Link, error: &str) {
        let wait = match self.0.lock() {
            Ok(mut p) => {
                let wait = p.1.wait();
                p.0 = std::time::Instant::now() + wait;
                wait
            }
            Err(_) => Duration::from_secs(1),
        };
        link.down(error, wait);
    }
}

/// Runs an inbound's connection `session` again and again until one ends with `Ok` (the
/// route stops) or `shutdown`: after a failure the link goes down with the error and the next
/// try waits the [`Backoff`] — from its shortest wait again when the failed session had been
/// up, so a connection lost after working is retried at once.
pub async fn keep_connected<F, Fut>(
    link: &Link,
    shutdown: &tokio_util::sync::CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = Backoff::default();
    loop {
        link.connecting();
        let Err(e) = session().await else {
            return;
        };
        if link.was_up() {
            backoff.reset();
        }
        let wait = backoff.wait();
        link.down(&e, wait);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// `url` without its password, for logs, errors and the admin API.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// An error's text with any occurrence of `secret` replaced, for errors from client crates
/// that may quote the URL they were given.
pub fn scrub(text: impl std::fmt::Display, secret: Option<&str>) -> String {
    let text = text.to_string();
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://app:s3cret@mq.example.com:5672/prod"),
            "amqp://app:***@mq.example.com:5672/prod"
        );
        assert_eq!(redact("mqtt://127.0.0.1:1883"), "mqtt://127.0.0.1:1883");
        assert_eq!(redact("amqps://u@h/v?x=a@b"), "amqps://u:***@h/v?x=a@b");
        assert_eq!(scrub("bad login s3cret", Some("s3cret")), "bad login ***");
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let first = b.wait();
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(250));
        for _ in 0..20 {
            b.wait();
        }
        assert!(b.wait() <= Duration::from_millis(37_500));
        b.reset();
        assert!(b.wait() <= Duration::from_millis(250));
    }

    #[test]
    fn link_counts_reconnects_not_the_first_connection() {
        let l = Link::new("amqp://h".into());
        assert_eq!(l.status().state, LinkState::Connecting);
        l.owned_by("r", "from");
        l.up();
        l.down("connection reset", Duration::from_secs(1));
        assert_eq!(l.status().error.as_deref(), Some("connection reset"));
        l.up();
        let s = l.status();
        assert_eq!(
            (s.state, s.reconnects, s.error),
            (LinkState::Connected, 1, None)
        );
    }
}
