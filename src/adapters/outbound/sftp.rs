//! SFTP outbound: uploads each message as a file into a partner's directory over SFTP, renamed
//! into place when whole (see [`super::remote`]). One SSH session per destination, shared by
//! its deliveries (SFTP carries several requests at once).

use super::remote::RemoteOutbound;
use super::DeliveryConfig;
use crate::adapters::sftp::{Auth, HostKey, Server, Url};
use crate::config::values::Duration;
use crate::steps::BuildContext;
use crate::template::Template;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SftpOutbound")]
pub struct Config {
    /// The server and directory: `sftp://switchyard@sftp.partner.com:22/incoming`.
    pub url: Url,
    /// `{ key: keys/partner_ed25519 }` or `{ password: "${PARTNER_SFTP_PASSWORD}" }`.
    pub auth: Auth,
    /// `{ known_hosts: keys/known_hosts }` or `{ fingerprint: "SHA256:…" }`.
    pub host_key: HostKey,
    /// The remote file name, a template (default `{{id}}`; `{{original_name}}` keeps the
    /// name the message came with).
    #[serde(default = "default_name")]
    pub name: Template,
    /// Create the remote directory (and its parents) when it is missing.
    #[serde(default)]
    pub create_dirs: bool,
    /// Longest wait for the server on connecting and on each request (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_name() -> Template {
    Template::parse("{{id}}").expect("valid template")
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<RemoteOutbound> {
        let server = Server {
            url: self.url.clone(),
            auth: self.auth.clone(),
            host_key: self.host_key.clone(),
            timeout: self.timeout.0,
        };
        server.check().map_err(anyhow::Error::msg)?;
        Ok(RemoteOutbound::new(
            Arc::new(server),
            self.name.clone(),
            self.create_dirs,
        ))
    }
}
