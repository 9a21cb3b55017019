//! What the AMQP 0-9-1 (RabbitMQ) inbound and outbound share: connecting (TLS with a CA
//! file, credentials kept out of logs), the topology they declare on every (re)connect, and
//! AMQP field values from YAML.

use super::{redact, scrub, Tls};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;

/// An AMQP URL, checked while the route file is read (so a typo is a `file:line:column`
/// error of `switchyard check`, not a connection that never comes up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(String);

impl std::ops::Deref for Url {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| {
            serde::de::Error::custom(format!(
                "`{}` is not an AMQP URL ({e}); write amqp://user:password@host:5672/vhost or amqps://...",
                redact(&url)
            ))
        })?;
        Ok(Url(url))
    }
}

crate::config::schema::text_value!(
    Url,
    "An AMQP 0-9-1 URL (RabbitMQ): `amqp://` or `amqps://`, with the virtual host as its path.",
    [
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "amqps://user:${AMQP_PASSWORD}@rabbit.example.com/orders"
    ]
);

/// Exchanges, queues and bindings declared on every (re)connect, before consuming or
/// publishing. Declaring what exists with the same settings changes nothing; with other
/// settings the broker refuses, and the adapter says so and retries.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Declare {
    #[serde(default)]
    pub exchanges: Vec<ExchangeDecl>,
    #[serde(default)]
    pub queues: Vec<QueueDecl>,
    #[serde(default)]
    pub bindings: Vec<BindingDecl>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDecl {
    pub name: String,
    /// `direct`, `fanout`, `topic` (default) or `headers`.
    #[serde(
        rename = "type",
        default = "default_exchange_type",
        deserialize_with = "exchange_type"
    )]
    pub kind: String,
    /// Survives a broker restart (default true).
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// Exchange arguments (`alternate-exchange: unrouted`).
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    pub name: String,
    /// Survives a broker restart (default true).
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub auto_delete: bool,
    /// Queue arguments: `x-queue-type: quorum`, `x-dead-letter-exchange: orders.dlx`,
    /// `x-max-length: 100000`, `x-delivery-limit: 5`, ...
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingDecl {
    pub queue: String,
    pub exchange: String,
    /// The binding key (`order.#` on a topic exchange; default empty).
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

fn default_exchange_type() -> String {
    "topic".into()
}

fn exchange_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let kind = String::deserialize(d)?;
    if matches!(kind.as_str(), "direct" | "fanout" | "topic" | "headers") || kind.starts_with("x-")
    {
        Ok(kind)
    } else {
        Err(serde::de::Error::custom(format!(
            "unknown exchange type `{kind}`: use direct, fanout, topic, headers or a plugin's x-... type"
        )))
    }
}
fn yes() -> bool {
    true
}

impl Declare {
    /// Checks what can be checked before connecting.
    pub fn check(&self) -> Result<(), String> {
        let tables = self
            .exchanges
            .iter()
            .map(|e| &e.arguments)
            .chain(self.queues.iter().map(|q| &q.arguments))
            .chain(self.bindings.iter().map(|b| &b.arguments));
        for t in tables {
            table(t)?;
        }
        Ok(())
    }

    /// Declares everything, in order: exchanges, queues, bindings.
    pub async fn apply(&self, ch: &Channel) -> Result<(), String> {
        for e in &self.exchanges {
            let kind = match e.kind.as_str() {
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                "topic" => ExchangeKind::Topic,
                "headers" => ExchangeKind::Headers,
                other => ExchangeKind::Custom(other.to_string()),
            };
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                auto_delete: e.auto_delete,
                ..Default::default()
            };
            ch.exchange_declare(e.name.as_str().into(), kind, options, table(&e.arguments)?)
                .await
                .map_err(|err| format!("cannot declare exchange `{}`: {err}", e.name))?;
        }
        for q in &self.queues {
            let options = QueueDeclareOptions {
                durable: q.durable,
                exclusive: q.exclusive,
                auto_delete: q.auto_delete,
                ..Default::default()
            };
            ch.queue_declare(q.name.as_str().into(), options, table(&q.arguments)?)
                .await
                .map_err(|err| format!("cannot declare queue `{}`: {err}", q.name))?;
        }
        for b in &self.bindings {
            ch.queue_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                table(&b.arguments)?,
            )
            .await
            .map_err(|err| {
                format!(
                    "cannot bind queue `{}` to exchange `{}` with `{}`: {err}",
                    b.queue, b.exchange, b.routing_key
                )
            })?;
        }
        Ok(())
    }
}

/// An AMQP field table from YAML: strings, integers, floats, booleans, lists and maps.
pub fn table(map: &serde_json::Map<String, serde_json::Value>) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    for (k, v) in map {
        let key = ShortString::try_new(k.as_str())
            .map_err(|_| format!("argument name `{k}` is longer than 255 bytes"))?;
        t.insert(key, value(v)?);
    }
    Ok(t)
}

fn value(v: &serde_json::Value) -> Result<AMQPValue, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => AMQPValue::Void,
        J::Bool(b) => AMQPValue::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        J::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        J::Array(a) => {
            AMQPValue::FieldArray(a.iter().map(value).collect::<Result<Vec<_>, _>>()?.into())
        }
        J::Object(o) => AMQPValue::FieldTable(table(o)?),
    })
}

/// A header value as text, for message headers.
pub fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Void => String::new(),
        other => format!("{other:?}"),
    }
}

/// The password in an AMQP URL, to keep it out of error texts.
fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.find('@')?];
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Opens a connection, named after `name` in the broker's management UI. Errors never quote
/// the password.
pub async fn connect(url: &str, tls: &Tls, name: &str) -> Result<Connection, String> {
    let mut config = lapin::tcp::OwnedTLSConfig::default();
    if let Some(ca) = &tls.ca {
        config.cert_chain = Some(
            std::fs::read_to_string(ca)
                .map_err(|e| format!("cannot read tls.ca {}: {e}", ca.display()))?,
        );
    }
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    Connection::connect_with_config(url, properties, config, runtime)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to {}: {}",
                redact(url),
                scrub(e, password(url))
            )
        })
}

/// Checks the CA file before anything connects, so a wrong path is a route error rather
/// than a connection that never comes up.
pub fn check(tls: &Tls) -> Result<(), String> {
    if let Some(ca) = &tls.ca {
        std::fs::metadata(ca).map_err(|e| format!("cannot read tls.ca {}: {e}", ca.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_arguments_become_amqp_values() {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"x-queue-type": "quorum", "x-max-length": 100, "x-flag": true}"#,
        )
        .unwrap();
        let t = table(&map).unwrap();
        assert_eq!(
            t.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(100))
        );
        assert_eq!(text(t.inner().get("x-queue-type").unwrap()), "quorum");
        let url = |u: &str| crate::config::yaml::parse_str::<Url>(u);
        assert!(url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        let e = url("http://app:s3cret@x").unwrap_err().to_string();
        assert!(
            e.contains("is not an AMQP URL") && !e.contains("s3cret"),
            "{e}"
        );
        let e =
            crate::config::yaml::parse_str::<ExchangeDecl>("{ name: e, type: topik }").unwrap_err();
        assert!(
            e.to_string().contains("unknown exchange type `topik`"),
            "{e}"
        );
        let missing = Tls {
            ca: Some("/nonexistent/ca.pem".into()),
        };
        let e = check(&missing).unwrap_err();
        assert!(e.contains("cannot read tls.ca /nonexistent/ca.pem"), "{e}");
        assert_eq!(password("amqp://u:p4ss@h:1/v"), Some("p4ss"));
    }
}
