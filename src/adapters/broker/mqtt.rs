//! What the MQTT inbound and outbound share: the broker URL (`mqtt://`, `mqtts://` with a CA
//! file), credentials kept out of logs, and the client options (MQTT 5).

use super::{redact, Tls};
use rumqttc::v5::MqttOptions;
use serde::Deserialize;
use std::sync::Arc;

/// An MQTT URL, checked while the route file is read (a typo is a `file:line:column` error
/// of `switchyard check`).
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
        parse_url(&url).map_err(serde::de::Error::custom)?;
        Ok(Url(url))
    }
}

crate::config::schema::text_value!(
    Url,
    "An MQTT URL (`mqtt://` or `mqtts://`).",
    [
        "mqtt://127.0.0.1:1883",
        "mqtts://user:${MQTT_PASSWORD}@broker.example.com:8883"
    ]
);

/// An MQTT QoS level from a route file: 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos(pub u8);

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let level = u8::deserialize(d)?;
        qos(level).map_err(serde::de::Error::custom)?;
        Ok(Qos(level))
    }
}

impl schemars::JsonSchema for Qos {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Qos".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "enum": [0, 1, 2], "description": "An MQTT QoS level."})
    }
}

/// A broker address taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Reads `mqtt://[user[:password]@]host[:port]` (port 1883) or `mqtts://...` (port 8883).
pub fn parse_url(url: &str) -> Result<Broker, String> {
    let bad = |why: &str| format!("`{}` is not an MQTT URL: {why}", redact(url));
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(bad("it must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad(&format!("bad port `{p}`")))?,
        ),
        None => (hostport, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("no host"));
    }
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    Ok(Broker {
        tls,
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        username,
        password,
    })
}

/// Client options for `broker`, as client `client_id`.
pub fn options(
    broker: &Broker,
    client_id: &str,
    tls: &Tls,
    keep_alive: std::time::Duration,
) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(keep_alive.max(std::time::Duration::from_secs(1)));
    if let Some(user) = &broker.username {
        o.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
    }
    if broker.tls {
        let config = crate::tls::client_config(tls.ca.as_deref()).map_err(|e| format!("{e:#}"))?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    Ok(o)
}

/// A QoS from a route file (0, 1 or 2).
pub fn qos(level: u8) -> Result<rumqttc::v5::mqttbytes::QoS, String> {
    use rumqttc::v5::mqttbytes::QoS;
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        n => Err(format!("`qos: {n}`: MQTT knows QoS 0, 1 and 2")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_qos_are_checked_where_they_are_written() {
        assert!(crate::config::yaml::parse_str::<Url>("mqtt://h:1883").is_ok());
        let e = crate::config::yaml::parse_str::<Url>("http://u:s3cret@h")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must start with mqtt://") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(crate::config::yaml::parse_str::<Qos>("3")
            .unwrap_err()
            .to_string()
            .contains("QoS 0, 1 and 2"));
    }

    #[test]
    fn urls() {
        let b = parse_url("mqtts://app:s3cret@broker.example.com").unwrap();
        assert_eq!(
            b,
            Broker {
                tls: true,
                host: "broker.example.com".into(),
                port: 8883,
                username: Some("app".into()),
                password: Some("s3cret".into()),
            }
        );
        assert_eq!(parse_url("mqtt://127.0.0.1:1884").unwrap().port, 1884);
        let e = parse_url("tcp://u:s3cret@h").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(parse_url("mqtt://h:x").is_err());
    }
}
