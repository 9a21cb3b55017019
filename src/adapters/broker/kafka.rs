//! What the Kafka inbound and outbound share: the connection keys (brokers, SASL, TLS, raw
//! librdkafka options) turned into a librdkafka configuration, and the client context that
//! reports librdkafka's errors and the consumer's rebalances on the adapter's [`Link`].
//!
//! librdkafka keeps its own connections to every broker of the cluster and reconnects by
//! itself; the [`Link`] shows what it last said: down on a transport error, up again on the
//! next answer from the cluster.

use super::{Link, LinkState, Tls};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::ProducerContext;
use rdkafka::{Message, TopicPartitionList};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// SASL authentication.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN` (default), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default = "default_mechanism")]
    pub mechanism: String,
    pub username: String,
    /// Write `${ENV}`.
    pub password: String,
}

fn default_mechanism() -> String {
    "PLAIN".into()
}

/// How to reach the cluster: the keys both adapters share.
#[derive(Debug, Clone)]
pub struct Connection {
    pub brokers: Vec<String>,
    pub sasl: Option<Sasl>,
    pub tls: Option<Tls>,
    pub options: BTreeMap<String, String>,
}

impl Connection {
    /// The cluster as operators see it (no credentials).
    pub fn describe(&self) -> String {
        format!("kafka://{}", self.brokers.join(","))
    }

    /// Checks what can be checked before connecting, so a route with a mistake is refused
    /// when it is loaded.
    pub fn check(&self) -> Result<(), String> {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return Err("`brokers` needs at least one `host:port`".into());
        }
        if let Some(bad) = self.brokers.iter().find(|b| b.contains("://")) {
            return Err(format!(
                "`{bad}` is not a broker address: write `host:port`, without a scheme"
            ));
        }
        if let Some(s) = &self.sasl {
            if !matches!(
                s.mechanism.as_str(),
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512"
            ) {
                return Err(format!(
                    "SASL mechanism `{}` is not supported: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                    s.mechanism
                ));
            }
        }
        if let Some(ca) = self.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            if !ca.is_file() {
                return Err(format!("tls.ca `{}` is not a file", ca.display()));
            }
        }
        Ok(())
    }

    /// A librdkafka configuration with the connection keys, then `defaults` (the adapter's
    /// own settings), then the route's `options`, which override both.
    pub fn config(&self, defaults: &[(&str, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            // An idle connection closed by the broker is not news.
            .set("log.connection.close", "false")
            .set_log_level(RDKafkaLogLevel::Warning);
        let protocol = match (&self.sasl, &self.tls) {
            (None, None) => "plaintext",
            (None, Some(_)) => "ssl",
            (Some(_), None) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(s) = &self.sasl {
            c.set("sasl.mechanism", &s.mechanism)
                .set("sasl.username", &s.username)
                .set("sasl.password", &s.password);
        }
        if let Some(ca) = self.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        for (k, v) in defaults {
            c.set(*k, v);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// librdkafka's callbacks, told to the adapter's [`Link`] and the log.
pub struct Context {
    pub link: Arc<Link>,
    /// The route, for the log.
    pub route: String,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(route = %self.route, facility, "librdkafka: {line}")
            }
            // librdkafka says "error" of a failed connection it will try again by itself.
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(route = %self.route, facility, "librdkafka: {line}")
            }
            _ => tracing::debug!(route = %self.route, facility, "librdkafka: {line}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reconnects by itself and says so again on every failed attempt: the
        // first says the link is down, the next answer from the cluster marks it up again.
        if self.link.status().state == LinkState::Down {
            tracing::debug!(route = %self.route, error = %error, reason, "librdkafka error");
        } else {
            self.link
                .down(&format!("{error}: {reason}"), std::time::Duration::ZERO);
        }
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if !self.link.is_up() {
                    self.link.up();
                }
                tracing::info!(route = %self.route, partitions = %partitions(tpl), "consuming");
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(route = %self.route, partitions = %partitions(tpl),
                    "partitions revoked (given to another member of the group)")
            }
            Rebalance::Error(e) => {
                tracing::warn!(route = %self.route, error = %e, "rebalance failed")
            }
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// `orders[0,1,2] audit[0]`, for the log.
fn partitions(tpl: &TopicPartitionList) -> String {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in tpl.elements() {
        by_topic
            .entry(e.topic().to_string())
            .or_default()
            .push(e.partition());
    }
    by_topic
        .iter()
        .map(|(t, ps)| {
            let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
            format!("{t}[{}]", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A record's identity where it has no `switchyard-message-id` header: topic, partition,
/// offset — and its timestamp, so that a topic deleted and made again (its offsets starting
/// at 0 again) is not taken for the one already read.
pub fn record_id(m: &impl Message) -> String {
    let ts = m.timestamp().to_millis().unwrap_or(-1);
    format!("{}/{}@{}:{ts}", m.topic(), m.partition(), m.offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(brokers: &[&str]) -> Connection {
        Connection {
            brokers: brokers.iter().map(|b| b.to_string()).collect(),
            sasl: None,
            tls: None,
            options: BTreeMap::new(),
        }
    }

    #[test]
    fn checks_addresses_and_mechanisms() {
        assert!(conn(&["127.0.0.1:9092"]).check().is_ok());
        assert!(conn(&[]).check().is_err());
        let e = conn(&["kafka://h:9092"]).check().unwrap_err();
        assert!(e.contains("without a scheme"), "{e}");
        let mut c = conn(&["h:9092"]);
        c.sasl = Some(Sasl {
            mechanism: "GSSAPI".into(),
            username: "u".into(),
            password: "p".into(),
        });
        assert!(c.check().unwrap_err().contains("GSSAPI"));
    }

    #[test]
    fn options_override_the_adapters_defaults() {
        let mut c = conn(&["a:9092", "b:9092"]);
        c.sasl = Some(Sasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "u".into(),
            password: "p".into(),
        });
        c.tls = Some(Tls::default());
        c.options.insert("linger.ms".into(), "50".into());
        let cfg = c.config(&[("linger.ms", "5".into()), ("acks", "all".into())]);
        assert_eq!(cfg.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cfg.get("linger.ms"), Some("50"));
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(c.describe(), "kafka://a:9092,b:9092");
    }
}
