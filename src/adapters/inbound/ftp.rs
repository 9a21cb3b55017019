//! FTP and FTPS inbound: polls a partner's directory on an FTP server; each settled file
//! matching the pattern is committed, then removed or moved (see [`super::remote`] for how
//! files are taken).

use super::remote::{Poll, RemoteInbound};
use crate::adapters::ftp::{Server, Tls, Url};
use crate::config::values::{ByteSize, Duration};
use crate::steps::BuildContext;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FtpInbound")]
pub struct Config {
    /// The server and directory: `ftps://partner@ftp.example.com:21/outgoing` (explicit TLS)
    /// or `ftp://…` in the clear.
    pub url: Url,
    /// The password (`${PARTNER_FTP_PASSWORD}`).
    pub password: String,
    /// `ftps://` only: `{ ca: partner-ca.pem }` to trust a private CA.
    #[serde(default)]
    pub tls: Tls,
    /// File names taken (a glob, default `*`); names starting with `.` never are.
    #[serde(default = "super::remote::default_pattern")]
    pub pattern: String,
    /// How often the directory is listed (default `10s`).
    #[serde(default = "super::remote::default_interval")]
    pub interval: Duration,
    /// How long a file's size and modification time must stay the same before it is taken
    /// (default `2s`).
    #[serde(default = "super::remote::default_settle")]
    pub settle: Duration,
    /// A remote directory files are moved to after their commit; without it they are deleted.
    #[serde(default)]
    pub move_to: Option<String>,
    /// Largest file taken (default `64MiB`); a larger one is recorded as failed and left.
    #[serde(default = "super::remote::default_max_size")]
    pub max_size: ByteSize,
    /// Longest wait for the server when connecting (default `30s`).
    #[serde(default = "super::remote::default_timeout")]
    pub timeout: Duration,
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<RemoteInbound> {
        let server = Server {
            url: self.url.clone(),
            password: self.password.clone(),
            tls: self.tls.clone(),
            timeout: self.timeout.0,
        };
        server.check().map_err(anyhow::Error::msg)?;
        let poll = Poll::new(
            &self.pattern,
            self.interval.0,
            self.settle.0,
            self.move_to.clone(),
            self.max_size.0,
            "ftp",
        )?;
        Ok(RemoteInbound::new(poll, Arc::new(server)))
    }
}
