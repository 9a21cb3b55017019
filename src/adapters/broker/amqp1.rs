//! What the AMQP 1.0 inbound and outbound share (ActiveMQ Artemis, Qpid, Azure Service Bus,
//! Solace, RabbitMQ's AMQP 1.0 plugin): the URL (credentials kept out of logs) and opening a
//! connection and a session — TLS through the engine's own rustls setup, SASL PLAIN from
//! the URL's user and password, or ANONYMOUS without them.

use super::{redact, Tls};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Session};
use serde::Deserialize;
use std::sync::Arc;

/// An AMQP 1.0 URL (`amqp://[user:password@]host[:5672]`, `amqps://…[:5671]`), checked while
/// the route file is read.
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
        parse(&url).map_err(serde::de::Error::custom)?;
        Ok(Url(url))
    }
}

crate::config::schema::text_value!(
    Url,
    "An AMQP 1.0 URL (`amqp://` or `amqps://`).",
    [
        "amqp://guest:guest@127.0.0.1:5672",
        "amqps://broker.example.com:5671"
    ]
);

/// A URL taken apart.
#[derive(Debug)]
struct Parts {
    tls: bool,
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
}

fn parse(url: &str) -> Result<Parts, String> {
    let bad = |why: &str| format!("`{}` is not an AMQP 1.0 URL: {why}", redact(url));
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let tls = match u.scheme() {
        "amqp" => false,
        "amqps" => true,
        _ => return Err(bad("it must start with amqp:// or amqps://")),
    };
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it has no host"))?
        .to_string();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|d| d.into_owned())
            .map_err(|_| bad("the user or password is not valid percent-encoded UTF-8"))
    };
    let user = match u.username() {
        "" => None,
        name => Some(decode(name)?),
    };
    let password = u.password().map(decode).transpose()?;
    Ok(Parts {
        tls,
        port: u.port().unwrap_or(if tls { 5671 } else { 5672 }),
        host,
        user,
        password,
    })
}

/// Checks what can be checked before connecting.
pub fn check(tls: &Tls) -> Result<(), String> {
    super::amqp::check(tls)
}

/// An open connection with one session on it.
pub struct Opened {
    pub conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
}

/// How long a polite goodbye may take. RabbitMQ's AMQP 1.0 plugin (3.10) sometimes never
/// answers a session's `end`; waiting for it held a stopping route for ever. Past this the
/// connection is dropped, which the broker handles like any lost connection.
pub const GOODBYE: std::time::Duration = std::time::Duration::from_secs(3);

impl Opened {
    /// Ends the session and closes the connection, politely but within [`GOODBYE`] each;
    /// errors are of no use here.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(GOODBYE, self.session.end()).await;
        let _ = tokio::time::timeout(GOODBYE, self.conn.close()).await;
    }
}

/// How to log in, besides the URL: `user` and `password` replace the URL's; `hostname` is the
/// AMQP open frame's host name (default: the URL's host).
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<String>,
    pub hostname: Option<String>,
}

/// Opens a connection (TLS for `amqps://` or with `tls.ca`) and begins a session. SASL PLAIN
/// with the user and password of `login` or of the URL; ANONYMOUS without either.
pub async fn open(url: &Url, tls: &Tls, login: &Login, container: &str) -> Result<Opened, String> {
    let mut parts = parse(url)?;
    if login.user.is_some() {
        parts.user = login.user.clone();
    }
    if login.password.is_some() {
        parts.password = login.password.clone();
    }
    let hostname = login.hostname.as_deref();
    let failed = |e: &dyn std::fmt::Display| format!("cannot connect to {}: {e}", redact(url));
    let tcp = tokio::net::TcpStream::connect((parts.host.as_str(), parts.port))
        .await
        .map_err(|e| failed(&e))?;
    let _ = tcp.set_nodelay(true);
    let mut builder = Connection::builder()
        .container_id(container)
        .hostname(hostname.unwrap_or(parts.host.as_str()));
    if let Some(user) = &parts.user {
        builder = builder.sasl_profile(SaslProfile::Plain {
            username: user.clone(),
            password: parts.password.clone().unwrap_or_default(),
        });
    }
    let mut conn = if parts.tls || tls.ca.is_some() {
        let config = crate::tls::client_config(tls.ca.as_deref()).map_err(|e| failed(&e))?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(parts.host.clone())
            .map_err(|e| failed(&e))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| failed(&e))?;
        // The stream is already encrypted: AMQP runs over it as over plain TCP.
        builder.open_with_stream(stream).await
    } else {
        builder.open_with_stream(tcp).await
    }
    .map_err(|e| failed(&e))?;
    match Session::begin(&mut conn).await {
        Ok(session) => Ok(Opened { conn, session }),
        Err(e) => {
            let _ = tokio::time::timeout(GOODBYE, conn.close()).await;
            Err(format!("{} refused a session: {e}", redact(url)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_credentials() {
        let p = parse("amqps://app:p%40ss@bus.example.com").unwrap();
        assert_eq!(
            (
                p.tls,
                p.host.as_str(),
                p.port,
                p.user.as_deref(),
                p.password.as_deref()
            ),
            (true, "bus.example.com", 5671, Some("app"), Some("p@ss"))
        );
        let p = parse("amqp://127.0.0.1:5673").unwrap();
        assert_eq!((p.tls, p.port, p.user), (false, 5673, None));
        assert!(parse("http://host")
            .unwrap_err()
            .contains("amqp:// or amqps://"));
    }
}
