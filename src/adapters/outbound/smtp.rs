//! SMTP outbound: sends each message as an e-mail (lettre, async on tokio, rustls).
//!
//! The body goes out as the mail's text, or as an attachment beside a short text. Addresses
//! and the subject are templates. Temporary SMTP failures (4xx answers, connection problems,
//! timeouts) are retried by the destination's policy; permanent ones (5xx, a bad address) fail
//! the delivery at once.

use super::{DeliveryConfig, Outbound, SendError, Sent};
use crate::config::values::Duration;
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

/// How the connection is protected.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which the server must offer (default; port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (port 25); only for servers on a trusted network.
    None,
}

/// What the message body becomes.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BodyAs {
    /// The mail's text (default).
    #[default]
    Text,
    /// An attachment, beside the `text`.
    Attachment,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SmtpOutbound")]
pub struct Config {
    /// The SMTP server.
    pub host: String,
    /// Port (default: 587 for `starttls`, 465 for `tls`, 25 for `none`).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub security: Security,
    /// User name for SMTP AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH; write `${SMTP_PASSWORD}` rather than the password itself.
    #[serde(default)]
    pub password: Option<String>,
    /// Sender, a template: `Switchyard <noreply@example.com>`.
    pub from: Template,
    /// Recipients, templates.
    pub to: Vec<Template>,
    /// Copy recipients, templates.
    #[serde(default)]
    pub cc: Vec<Template>,
    /// Subject, a template.
    pub subject: Template,
    /// `text` (default) or `attachment`.
    #[serde(default)]
    pub body_as: BodyAs,
    /// The mail's text when the body is attached (a template).
    #[serde(default = "default_text")]
    pub text: Template,
    /// The attachment's file name (a template; default `{{original_name}}`, or
    /// `message-{{id}}` when the message has no file name).
    #[serde(default)]
    pub attachment_name: Option<Template>,
    /// Longest one SMTP exchange may take (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_text() -> Template {
    Template::parse("Message {{id}} is attached.").expect("valid template")
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<SmtpOutbound> {
        if self.to.is_empty() {
            anyhow::bail!("`to` lists no recipient");
        }
        crate::tls::install_crypto();
        let (tls, port) = match self.security {
            Security::None => (Tls::None, 25),
            Security::Starttls => (Tls::Required(TlsParameters::new(self.host.clone())?), 587),
            Security::Tls => (Tls::Wrapper(TlsParameters::new(self.host.clone())?), 465),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(self.timeout.0));
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                builder = builder.credentials(Credentials::new(u.clone(), p.clone()))
            }
            (None, None) => {}
            _ => anyhow::bail!("give both `username` and `password`, or neither"),
        }
        Ok(SmtpOutbound {
            transport: builder.build(),
            cfg: self.clone(),
        })
    }
}

pub struct SmtpOutbound {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    cfg: Config,
}

impl SmtpOutbound {
    fn mail(&self, msg: &Message) -> Result<lettre::Message, SendError> {
        let mailbox = |t: &Template, what: &str| -> Result<Mailbox, SendError> {
            let text = t.render(msg);
            text.parse::<Mailbox>().map_err(|e| {
                SendError::permanent(format!(
                    "`{what}` gives `{text}`, which is not an e-mail address: {e}"
                ))
            })
        };
        let mut b = lettre::Message::builder()
            .from(mailbox(&self.cfg.from, "from")?)
            .subject(self.cfg.subject.render(msg))
            .message_id(Some(format!("<{}@switchyard>", msg.id)));
        for t in &self.cfg.to {
            b = b.to(mailbox(t, "to")?);
        }
        for t in &self.cfg.cc {
            b = b.cc(mailbox(t, "cc")?);
        }
        let built = match self.cfg.body_as {
            BodyAs::Text => {
                let text = msg.body_text().map_err(|e| {
                    SendError::permanent(format!("cannot send the body as text: {e}"))
                })?;
                b.header(ContentType::TEXT_PLAIN).body(text.to_string())
            }
            BodyAs::Attachment => {
                let name = match &self.cfg.attachment_name {
                    Some(t) => t.render(msg),
                    None => msg
                        .header("file.name")
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("message-{}", msg.id)),
                };
                let ctype = msg
                    .header("content-type")
                    .and_then(|c| ContentType::parse(c).ok())
                    .unwrap_or_else(|| {
                        ContentType::parse("application/octet-stream").expect("valid")
                    });
                b.multipart(
                    MultiPart::mixed()
                        .singlepart(SinglePart::plain(self.cfg.text.render(msg)))
                        .singlepart(
                            Attachment::new(crate::adapters::fs::safe_file_name(&name))
                                .body(msg.body.to_vec(), ctype),
                        ),
                )
            }
        };
        built.map_err(|e| SendError::permanent(format!("cannot build the e-mail: {e}")))
    }
}

#[async_trait]
impl Outbound for SmtpOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let mail = self.mail(msg)?;
        let host = &self.cfg.host;
        match self.transport.send(mail).await {
            Ok(resp) => Ok(Sent(format!(
                "SMTP {} from {host}: {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            ))),
            Err(e) if e.is_permanent() => Err(SendError::permanent(format!(
                "SMTP server {host} refused the mail: {e}"
            ))),
            Err(e) => Err(SendError::retryable(format!("SMTP to {host} failed: {e}"))),
        }
    }
}
