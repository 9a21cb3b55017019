//! FTP and FTPS connections for the `ftp` inbound and outbound (suppaftp, tokio, rustls with
//! ring): `ftp://` in the clear, `ftps://` with explicit TLS (`AUTH TLS`, then protected data
//! connections), the server's certificate checked against the web roots or `tls.ca`. Passive
//! mode; binary transfers; listings by `MLSD` (exact sizes and times), or `LIST` for servers
//! without it.

use crate::adapters::remote::{Connect, Listed, Remote};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use suppaftp::tokio::{AsyncFtpStream, AsyncRustlsConnector, AsyncRustlsFtpStream};
use tokio::io::AsyncReadExt;

/// An `ftp://user@host:21/path` or `ftps://…` URL, checked while the route file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub text: String,
    pub tls: bool,
    pub user: String,
    pub host: String,
    pub port: u16,
    /// The remote directory, relative to the login directory without a leading `/`
    /// (`ftp://u@h/outgoing`), absolute with two (`ftp://u@h//data/out`).
    pub path: String,
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_url(&text).map_err(serde::de::Error::custom)
    }
}

crate::config::schema::text_value!(
    Url,
    "An FTP or FTPS (explicit TLS) URL: user, host, optional port and the remote directory.",
    [
        "ftp://user@ftp.example.com/outgoing",
        "ftps://user@ftp.example.com:21//data/in"
    ]
);

fn parse_url(text: &str) -> Result<Url, String> {
    let bad = |why: &str| {
        format!(
            "`{text}` is not an FTP URL ({why}); write ftp://user@host:21/directory or ftps://…"
        )
    };
    let (tls, rest) = match (text.strip_prefix("ftp://"), text.strip_prefix("ftps://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(bad("it must start with ftp:// or ftps://")),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("it names no user"))?;
    if user.contains(':') {
        return Err(bad("put the password in `password`, not in the URL"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        None => (hostport, 21),
    };
    if host.is_empty() || user.is_empty() {
        return Err(bad("the user or the host is empty"));
    }
    Ok(Url {
        text: text.to_string(),
        tls,
        user: user.to_string(),
        host: host.to_string(),
        port,
        path: if path.is_empty() { "." } else { path }.to_string(),
    })
}

/// TLS settings for `ftps://`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FtpTls")]
pub struct Tls {
    /// CA certificate(s) to trust (PEM), for a server with a private CA or a self-signed
    /// certificate. Without it, the public web roots are trusted.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct Server {
    pub url: Url,
    pub password: String,
    pub tls: Tls,
    pub timeout: Duration,
}

enum Stream {
    Plain(AsyncFtpStream),
    Tls(AsyncRustlsFtpStream),
}

/// One FTP control connection: one request at a time, so concurrent deliveries queue.
pub struct Session(tokio::sync::Mutex<Stream>);

/// Runs `$body` with `$ftp` bound to the stream, plain or TLS alike.
macro_rules! with_stream {
    ($session:expr, $ftp:ident => $body:expr) => {{
        let mut guard = $session.0.lock().await;
        match &mut *guard {
            Stream::Plain($ftp) => $body,
            Stream::Tls($ftp) => $body,
        }
    }};
}

impl Server {
    pub fn check(&self) -> Result<(), String> {
        if self.tls.ca.is_some() && !self.url.tls {
            return Err("tls.ca is for ftps:// URLs".into());
        }
        Ok(())
    }

    async fn open(&self) -> Result<Session, String> {
        let addr = format!("{}:{}", self.url.host, self.url.port);
        let late = || format!("no FTP answer from {addr} within {:?}", self.timeout);
        let refused = |e: suppaftp::FtpError| format!("cannot connect to {addr}: {e}");
        let stream = if self.url.tls {
            let config = crate::tls::client_config(self.tls.ca.as_deref())
                .map_err(|e| format!("FTPS: {e:#}"))?;
            let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(
                std::sync::Arc::new(config),
            ));
            let control = tokio::time::timeout(self.timeout, AsyncRustlsFtpStream::connect(&addr))
                .await
                .map_err(|_| late())?
                .map_err(refused)?;
            let secure = control
                .into_secure(connector, &self.url.host)
                .await
                .map_err(|e| format!("FTPS (AUTH TLS) with {addr} failed: {e}"))?;
            Stream::Tls(secure)
        } else {
            let control = tokio::time::timeout(self.timeout, AsyncFtpStream::connect(&addr))
                .await
                .map_err(|_| late())?
                .map_err(refused)?;
            Stream::Plain(control)
        };
        let session = Session(tokio::sync::Mutex::new(stream));
        let (user, password) = (self.url.user.clone(), self.password.clone());
        with_stream!(session, ftp => {
            ftp.login(&user, &password)
                .await
                .map_err(|e| format!("FTP login as {user} failed: {e}"))?;
            ftp.transfer_type(suppaftp::types::FileType::Binary)
                .await
                .map_err(|e| format!("FTP binary mode: {e}"))?;
        });
        Ok(session)
    }
}

#[async_trait::async_trait]
impl Connect for Server {
    async fn connect(&self) -> Result<Box<dyn Remote>, String> {
        self.open().await.map(|s| Box::new(s) as Box<dyn Remote>)
    }

    fn name(&self) -> String {
        self.url.text.clone()
    }

    fn dir(&self) -> &str {
        &self.url.path
    }
}

fn listed(file: &suppaftp::list::File) -> Option<Listed> {
    file.is_file().then(|| Listed {
        name: file.name().to_string(),
        size: file.size() as u64,
        mtime: file
            .modified()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

#[async_trait::async_trait]
impl Remote for Session {
    async fn list(&self, dir: &str) -> Result<Vec<Listed>, String> {
        let lines = with_stream!(self, ftp => match ftp.mlsd(Some(dir)).await {
            Ok(lines) => Ok((lines, true)),
            // No MLSD: the classic listing, parsed.
            Err(_) => ftp.list(Some(dir)).await.map(|l| (l, false)),
        })
        .map_err(|e| format!("cannot list {dir}: {e}"))?;
        let (lines, mlsd) = lines;
        Ok(lines
            .iter()
            .filter_map(|line| {
                let file = if mlsd {
                    suppaftp::list::ListParser::parse_mlsd(line).ok()
                } else {
                    line.parse::<suppaftp::list::File>().ok()
                }?;
                listed(&file)
            })
            .collect())
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        with_stream!(self, ftp => {
            let mut stream = ftp
                .retr_as_stream(path)
                .await
                .map_err(|e| format!("cannot download {path}: {e}"))?;
            let mut data = Vec::new();
            stream
                .read_to_end(&mut data)
                .await
                .map_err(|e| format!("downloading {path}: {e}"))?;
            stream
                .finish()
                .await
                .map_err(|e| format!("downloading {path}: {e}"))?;
            Ok(data)
        })
    }

    async fn write(&self, path: &str, data: &[u8]) -> Result<(), String> {
        with_stream!(self, ftp => {
            let mut reader = data;
            let written = ftp
                .put_file(path, &mut reader)
                .await
                .map_err(|e| format!("cannot upload {path}: {e}"))?;
            if written != data.len() as u64 {
                return Err(format!("uploading {path}: {written} of {} bytes sent", data.len()));
            }
            Ok(())
        })
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        with_stream!(self, ftp => ftp.rename(from, to).await)
            .map_err(|e| format!("cannot rename {from} to {to}: {e}"))
    }

    async fn remove(&self, path: &str) -> Result<(), String> {
        with_stream!(self, ftp => ftp.rm(path).await)
            .map_err(|e| format!("cannot delete {path}: {e}"))
    }

    async fn make_dir(&self, dir: &str) {
        let _ = with_stream!(self, ftp => ftp.mkdir(dir).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_tls_user_host_port_and_directory() {
        let u = parse_url("ftps://acme@ftp.example.com:2121/in").unwrap();
        assert_eq!(
            (
                u.tls,
                u.user.as_str(),
                u.host.as_str(),
                u.port,
                u.path.as_str()
            ),
            (true, "acme", "ftp.example.com", 2121, "in")
        );
        let u = parse_url("ftp://acme@host//data").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 21, "/data"));
        assert!(parse_url("sftp://acme@host/x").is_err());
        assert!(parse_url("ftp://acme:pw@host/x").is_err());
    }
}
