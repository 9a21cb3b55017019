//! SFTP inbound: polls a partner's directory over SFTP; each settled file matching the pattern
//! is committed, then removed or moved (see [`super::remote`] for how files are taken).

use super::remote::{Poll, RemoteInbound};
use crate::adapters::sftp::{Auth, HostKey, Server, Url};
use crate::config::values::{ByteSize, Duration};
use crate::steps::BuildContext;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SftpInbound")]
pub struct Config {
    /// The server and directory: `sftp://partner@sftp.example.com:22/outgoing`.
    pub url: Url,
    /// `{ key: keys/partner_ed25519 }` or `{ password: "${PARTNER_SFTP_PASSWORD}" }`.
    pub auth: Auth,
    /// `{ known_hosts: keys/known_hosts }` or `{ fingerprint: "SHA256:…" }`.
    pub host_key: HostKey,
    /// File names taken (a glob, default `*`); names starting with `.` never are.
    #[serde(default = "super::remote::default_pattern")]
    pub pattern: String,
    /// How often the directory is listed (default `10s`).
    #[serde(default = "super::remote::default_interval")]
    pub interval: Duration,
    /// How long a file's size and modification time must stay the same before it is taken
    /// (default `2s`): a file still being uploaded is left alone.
    #[serde(default = "super::remote::default_settle")]
    pub settle: Duration,
    /// A remote directory files are moved to after their commit; without it they are
    /// deleted.
    #[serde(default)]
    pub move_to: Option<String>,
    /// Largest file taken (default `64MiB`); a larger one is recorded as failed and left.
    #[serde(default = "super::remote::default_max_size")]
    pub max_size: ByteSize,
    /// Longest wait for the server on connecting and on each request (default `30s`).
    #[serde(default = "super::remote::default_timeout")]
    pub timeout: Duration,
}

impl Config {
    fn server(&self) -> Server {
        Server {
            url: self.url.clone(),
            auth: self.auth.clone(),
            host_key: self.host_key.clone(),
            timeout: self.timeout.0,
        }
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<RemoteInbound> {
        let server = self.server();
        server.check().map_err(anyhow::Error::msg)?;
        let poll = Poll::new(
            &self.pattern,
            self.interval.0,
            self.settle.0,
            self.move_to.clone(),
            self.max_size.0,
            "sftp",
        )?;
        Ok(RemoteInbound::new(poll, Arc::new(server)))
    }
}
