//! What the Redis inbound and outbound share: the server URL (credentials kept out of logs),
//! connecting (TLS with a CA file), and reading stream entries from raw replies.

use super::{redact, scrub, Tls};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use serde::Deserialize;

/// The entry field carrying the message id, set by the outbound and read by the inbound
/// unless its `id_field` says otherwise.
pub const ID_FIELD: &str = super::ID_NAME;

/// A Redis URL (`redis://[:password@]host:6379[/db]`, `rediss://` for TLS), checked while the
/// route file is read.
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
        let known = ["redis://", "rediss://"].iter().any(|s| url.starts_with(s));
        let parsed = redis::parse_redis_url(&url);
        if !known || parsed.is_none() {
            return Err(serde::de::Error::custom(format!(
                "`{}` is not a Redis URL; write redis://host:6379/0, redis://:password@host:6379 or rediss://host:6380",
                redact(&url)
            )));
        }
        Ok(Url(url))
    }
}

crate::config::schema::text_value!(
    Url,
    "A Redis URL (`redis://` or `rediss://`).",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:${REDIS_PASSWORD}@redis.example.com:6380"
    ]
);

/// Checks what can be checked before connecting.
pub fn check(tls: &Tls) -> Result<(), String> {
    super::amqp::check(tls)
}

/// A client for `url`: with `tls.ca`, `rediss://` trusts that CA.
pub fn client(url: &Url, tls: &Tls) -> Result<redis::Client, String> {
    crate::tls::install_crypto();
    let secret = redis::parse_redis_url(url).and_then(|u| u.password().map(str::to_string));
    let made = match &tls.ca {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read tls.ca {}: {e}", ca.display()))?;
            redis::Client::build_with_tls(
                url.as_ref() as &str,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => redis::Client::open(url.as_ref() as &str),
    };
    made.map_err(|e| {
        format!(
            "cannot use {}: {}",
            redact(url),
            scrub(e, secret.as_deref())
        )
    })
}

/// A connection; `wait` is the longest a command may take (blocking reads get a connection of
/// their own, with a wait longer than their block).
pub async fn connect(
    client: &redis::Client,
    url: &Url,
    wait: Option<std::time::Duration>,
) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(wait);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))
}

/// One stream entry: its id, and its fields in order — `None` when the entry was removed
/// from the stream (trimmed by `MAXLEN`, deleted) while it was still pending.
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

/// The entries of an `XREADGROUP` reply for one stream: `[[key, [[id, [f, v, ...]], ...]]]`
/// (RESP2) or `{key: [...]}` (RESP3); nothing for a timed-out read.
pub fn read_entries(reply: &Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(pair)) if pair.len() == 2 => entry_list(&pair[1]),
            _ => Vec::new(),
        },
        Value::Map(streams) => streams
            .first()
            .map(|(_, list)| entry_list(list))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A list of entries, `[[id, [f, v, ...]], ...]`, as in the reply of `XAUTOCLAIM`.
pub fn entry_list(list: &Value) -> Vec<Entry> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(Value::Array(kv)) => Some(
                    kv.chunks(2)
                        .filter_map(|c| match c {
                            [k, v] => Some((text(k)?, bytes(v)?)),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            };
            Some(Entry { id, fields })
        })
        .collect()
}

pub fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_of_a_read_and_of_a_claim() {
        let read = Value::Array(vec![Value::Array(vec![
            b("orders"),
            Value::Array(vec![
                Value::Array(vec![b("1-0"), Value::Array(vec![b("body"), b("{}")])]),
                Value::Array(vec![b("2-0"), Value::Nil]),
            ]),
        ])]);
        let e = read_entries(&read);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].id, "1-0");
        assert_eq!(
            e[0].fields.as_deref(),
            Some(&[("body".to_string(), b"{}".to_vec())][..])
        );
        assert!(e[1].fields.is_none(), "a trimmed entry has no fields");
        let claimed = Value::Array(vec![Value::Array(vec![
            b("3-0"),
            Value::Array(vec![b("k"), b("v")]),
        ])]);
        assert_eq!(entry_list(&claimed)[0].id, "3-0");
    }
}
