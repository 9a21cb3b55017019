//! FTP and FTPS outbound: uploads each message as a file into a partner's directory on an FTP
//! server, renamed into place when whole (see [`super::remote`]). One control connection per
//! destination: its deliveries take turns.

use super::remote::RemoteOutbound;
use super::DeliveryConfig;
use crate::adapters::ftp::{Server, Tls, Url};
use crate::config::values::Duration;
use crate::steps::BuildContext;
use crate::template::Template;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FtpOutbound")]
pub struct Config {
    /// The server and directory: `ftps://switchyard@ftp.partner.com:21/incoming` (explicit
    /// TLS) or `ftp://…` in the clear.
    pub url: Url,
    /// The password (`${PARTNER_FTP_PASSWORD}`).
    pub password: String,
    /// `ftps://` only: `{ ca: partner-ca.pem }` to trust a private CA.
    #[serde(default)]
    pub tls: Tls,
    /// The remote file name, a template (default `{{id}}`).
    #[serde(default = "default_name")]
    pub name: Template,
    /// Create the remote directory (and its parents) when it is missing.
    #[serde(default)]
    pub create_dirs: bool,
    /// Longest wait for the server when connecting (default `30s`).
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
            password: self.password.clone(),
            tls: self.tls.clone(),
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
