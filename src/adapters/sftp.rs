//! SFTP connections shared by the `sftp` inbound (a partner's outgoing directory, polled) and
//! outbound (their incoming one): the server's URL, how we prove who we are (a private key or
//! a password), and how we know the server is the one we mean (its key in a `known_hosts`
//! file, or its pinned fingerprint) — a server whose key does not match is never sent a
//! password or a file. Client: russh and russh-sftp, pure Rust (ring).

use crate::adapters::remote::{Connect, Listed, Remote};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An `sftp://user@host:22/path` URL, checked while the route file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub text: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    /// The remote directory (`/outgoing`; relative to the login directory without a leading
    /// `/`: `sftp://u@h/outgoing` is `outgoing`, `sftp://u@h//data/out` is `/data/out`).
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
    "An SFTP URL: user, host, optional port and the remote directory.",
    ["sftp://partner@sftp.example.com:22/outgoing"]
);

fn parse_url(text: &str) -> Result<Url, String> {
    let bad = |why: &str| {
        format!("`{text}` is not an SFTP URL ({why}); write sftp://user@host:22/directory")
    };
    let rest = text
        .strip_prefix("sftp://")
        .ok_or_else(|| bad("it must start with sftp://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("it names no user"))?;
    if user.contains(':') {
        return Err(bad("put the password in `auth.password`, not in the URL"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?,
        ),
        None => (hostport, 22),
    };
    if host.is_empty() || user.is_empty() {
        return Err(bad("the user or the host is empty"));
    }
    let path = if path.is_empty() { "." } else { path };
    Ok(Url {
        text: text.to_string(),
        user: user.to_string(),
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// How Switchyard logs in: a private key file (OpenSSH format) or a password.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SftpAuth")]
pub struct Auth {
    /// A private key file (`keys/partner_ed25519`; Ed25519, ECDSA or RSA).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The key file's passphrase, if it has one (`${PARTNER_KEY_PASSPHRASE}`).
    #[serde(default)]
    pub passphrase: Option<String>,
    /// A password instead (`${PARTNER_SFTP_PASSWORD}`).
    #[serde(default)]
    pub password: Option<String>,
}

/// How the server is recognised; one of the two is required.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostKey {
    /// A `known_hosts` file holding the server's key (`ssh-keyscan -p 22 host >> known_hosts`).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// The server key's SHA-256 fingerprint, as `ssh-keygen -lf` prints it (`SHA256:…`).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct Server {
    pub url: Url,
    pub auth: Auth,
    pub host_key: HostKey,
    pub timeout: Duration,
}

impl Server {
    /// What can be checked before connecting.
    pub fn check(&self) -> Result<(), String> {
        match (&self.auth.key, &self.auth.password) {
            (None, None) => {
                return Err("auth: give `key` (a private key file) or `password`".into())
            }
            (Some(_), Some(_)) => return Err("auth: give `key` or `password`, not both".into()),
            _ => {}
        }
        match (&self.host_key.known_hosts, &self.host_key.fingerprint) {
            (None, None) => Err(
                "host_key: give `known_hosts` (a file with the server's key) or `fingerprint` (SHA256:…); a server that is not checked may be anyone".into(),
            ),
            (Some(_), Some(_)) => Err("host_key: give `known_hosts` or `fingerprint`, not both".into()),
            (None, Some(f)) if !f.starts_with("SHA256:") => Err(format!(
                "host_key.fingerprint `{f}` is not a SHA-256 fingerprint (SHA256:…, as ssh-keygen -lf prints it)"
            )),
            _ => Ok(()),
        }
    }

    /// The server for messages: `sftp://user@host:22/path`.
    fn name(&self) -> String {
        self.url.text.clone()
    }

    /// Opens a logged-in SFTP session; the error says what failed in an operator's words.
    async fn connect(&self) -> Result<Session, String> {
        let rejected = Arc::new(Mutex::new(None));
        let checker = Checker {
            host: self.url.host.clone(),
            port: self.url.port,
            host_key: self.host_key.clone(),
            rejected: rejected.clone(),
        };
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        });
        let addr = (self.url.host.as_str(), self.url.port);
        let connected =
            tokio::time::timeout(self.timeout, russh::client::connect(config, addr, checker))
                .await
                .map_err(|_| {
                    format!(
                        "no SSH answer from {}:{} within {:?}",
                        self.url.host, self.url.port, self.timeout
                    )
                })?;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                let why = rejected.lock().ok().and_then(|r| r.clone());
                return Err(why.unwrap_or_else(|| {
                    format!("cannot connect to {}:{}: {e}", self.url.host, self.url.port)
                }));
            }
        };
        let user = self.url.user.clone();
        let auth = match (&self.auth.key, &self.auth.password) {
            (Some(path), _) => {
                let key = russh::keys::load_secret_key(path, self.auth.passphrase.as_deref())
                    .map_err(|e| format!("cannot read the private key {}: {e}", path.display()))?;
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten();
                handle
                    .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
            }
            (None, Some(password)) => handle.authenticate_password(&user, password).await,
            (None, None) => return Err("no credentials".into()),
        }
        .map_err(|e| format!("SSH login as {user} failed: {e}"))?;
        if !auth.success() {
            return Err(format!(
                "the server refused the login of {user} with the configured {}",
                if self.auth.key.is_some() {
                    "key"
                } else {
                    "password"
                }
            ));
        }
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open an SSH channel: {e}"))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("the server has no SFTP subsystem: {e}"))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| format!("SFTP session: {e}"))?;
        sftp.set_timeout(self.timeout.as_secs().max(1));
        Ok(Session {
            sftp,
            _handle: handle,
        })
    }
}

/// A logged-in session: the SFTP requests, and the SSH connection under them (closed when
/// this is dropped).
pub struct Session {
    pub sftp: SftpSession,
    _handle: russh::client::Handle<Checker>,
}

#[async_trait::async_trait]
impl Remote for Session {
    async fn list(&self, dir: &str) -> Result<Vec<Listed>, String> {
        let entries = self
            .sftp
            .read_dir(dir)
            .await
            .map_err(|e| format!("cannot list {dir}: {e}"))?;
        Ok(entries
            .filter(|e| e.metadata().is_regular())
            .map(|e| {
                let meta = e.metadata();
                Listed {
                    name: e.file_name(),
                    size: meta.len(),
                    mtime: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                }
            })
            .collect())
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.sftp
            .read(path)
            .await
            .map_err(|e| format!("cannot download {path}: {e}"))
    }

    async fn write(&self, path: &str, data: &[u8]) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let mut file = self
            .sftp
            .create(path)
            .await
            .map_err(|e| format!("cannot create {path}: {e}"))?;
        file.write_all(data)
            .await
            .map_err(|e| format!("writing {path}: {e}"))?;
        // The server has every byte once the file is closed.
        file.shutdown()
            .await
            .map_err(|e| format!("closing {path}: {e}"))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        self.sftp
            .rename(from, to)
            .await
            .map_err(|e| format!("cannot rename {from} to {to}: {e}"))
    }

    async fn remove(&self, path: &str) -> Result<(), String> {
        self.sftp
            .remove_file(path)
            .await
            .map_err(|e| format!("cannot delete {path}: {e}"))
    }

    async fn make_dir(&self, dir: &str) {
        if !self.sftp.try_exists(dir).await.unwrap_or(true) {
            let _ = self.sftp.create_dir(dir).await;
        }
    }
}

#[async_trait::async_trait]
impl Connect for Server {
    async fn connect(&self) -> Result<Box<dyn Remote>, String> {
        Server::connect(self)
            .await
            .map(|s| Box::new(s) as Box<dyn Remote>)
    }

    fn name(&self) -> String {
        Server::name(self)
    }

    fn dir(&self) -> &str {
        &self.url.path
    }
}

/// Recognises the server by its key, and remembers why it did not.
pub struct Checker {
    host: String,
    port: u16,
    host_key: HostKey,
    rejected: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            self.reject("the server offered a certificate; pin its key instead".into());
            return Ok(false);
        };
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        let verdict = match (&self.host_key.fingerprint, &self.host_key.known_hosts) {
            (Some(pinned), _) if *pinned == seen => Ok(()),
            (Some(pinned), _) => Err(format!(
                "the server's key {seen} is not the pinned {pinned}: refused (a changed key may mean someone in between)"
            )),
            (None, Some(path)) => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "the server's key {seen} is not in {} for {}:{}: refused; add it (ssh-keyscan -p {} {}) after checking it with the partner",
                        path.display(), self.host, self.port, self.port, self.host
                    )),
                    Err(e) => Err(format!(
                        "the server's key {seen} does not match {} ({e}): refused",
                        path.display()
                    )),
                }
            }
            (None, None) => Err("no host key to check the server against".into()),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                self.reject(why);
                Ok(false)
            }
        }
    }
}

impl Checker {
    fn reject(&self, why: String) {
        if let Ok(mut r) = self.rejected.lock() {
            *r = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_user_host_port_and_directory() {
        let u = parse_url("sftp://acme@sftp.example.com:2222/outgoing/orders").unwrap();
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.path.as_str()),
            ("acme", "sftp.example.com", 2222, "outgoing/orders")
        );
        let u = parse_url("sftp://acme@host//data/in").unwrap();
        assert_eq!((u.port, u.path.as_str()), (22, "/data/in"));
        assert_eq!(parse_url("sftp://acme@host").unwrap().path, ".");
        assert!(parse_url("ftp://acme@host/x").is_err());
        assert!(parse_url("sftp://host/x").is_err());
        assert!(parse_url("sftp://acme:secret@host/x").is_err());
    }
}
