//! Uploading into a remote directory, for the `sftp` and `ftp` outbounds: each message a file,
//! written under a hidden temporary name and renamed into place once whole, so the partner
//! never picks up half a file; the delivery is done once the rename succeeded. A file of the
//! same name is replaced, so a delivery sent again after a crash writes the same file again
//! rather than a second one. One session per destination, made again when it breaks.

use super::{Outbound, SendError, Sent};
use crate::adapters::broker::{Link, Pace};
use crate::adapters::remote::{join, make_dirs, Connect, Remote};
use crate::message::Message;
use crate::template::Template;
use async_trait::async_trait;
use std::sync::Arc;

pub struct RemoteOutbound {
    connect: Arc<dyn Connect>,
    name: Template,
    create_dirs: bool,
    session: tokio::sync::Mutex<Option<Arc<dyn Remote>>>,
    link: Arc<Link>,
    pace: Pace,
}

impl RemoteOutbound {
    pub fn new(connect: Arc<dyn Connect>, name: Template, create_dirs: bool) -> RemoteOutbound {
        RemoteOutbound {
            link: Arc::new(Link::idle(connect.name())),
            connect,
            name,
            create_dirs,
            session: tokio::sync::Mutex::new(None),
            pace: Pace::default(),
        }
    }

    /// The shared session, made when there is none.
    async fn session(&self) -> Result<Arc<dyn Remote>, SendError> {
        let mut held = self.session.lock().await;
        if let Some(s) = held.as_ref() {
            return Ok(s.clone());
        }
        self.pace.ready(&self.link).map_err(SendError::retryable)?;
        self.link.connecting();
        match self.connect.connect().await {
            Ok(s) => {
                self.pace.connected();
                self.link.up();
                let s: Arc<dyn Remote> = Arc::from(s);
                if self.create_dirs {
                    make_dirs(s.as_ref(), self.connect.dir()).await;
                }
                *held = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                self.pace.failed(&self.link, &e);
                Err(SendError::retryable(e))
            }
        }
    }

    /// Forgets a session that failed a request, so the next delivery makes a new one.
    async fn drop_session(&self, broken: &Arc<dyn Remote>) {
        let mut held = self.session.lock().await;
        if held.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            *held = None;
        }
    }

    async fn upload(
        &self,
        remote: &dyn Remote,
        msg: &Message,
        name: &str,
    ) -> Result<String, String> {
        let dir = self.connect.dir();
        let target = join(dir, name);
        let temp = join(dir, &format!(".{name}.switchyard-{}.tmp", msg.id));
        remote.write(&temp, &msg.body).await?;
        if remote.rename(&temp, &target).await.is_err() {
            // Rename does not replace: a file of that name (this delivery's own, sent before
            // a crash, or an older one) is removed first.
            let _ = remote.remove(&target).await;
            remote.rename(&temp, &target).await?;
        }
        Ok(target)
    }
}

/// A file name from the template, without path separators (a header cannot climb out of the
/// remote directory).
fn safe_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

#[async_trait]
impl Outbound for RemoteOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let Some(name) = safe_name(&self.name.render(msg)) else {
            return Err(SendError::permanent(format!(
                "the name template `{}` gives an empty file name for message {}",
                self.name.source(),
                msg.id
            )));
        };
        let remote = self.session().await?;
        match self.upload(remote.as_ref(), msg, &name).await {
            Ok(target) => Ok(Sent(format!("uploaded {target}"))),
            Err(e) => {
                self.drop_session(&remote).await;
                Err(SendError::retryable(e))
            }
        }
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn names_cannot_leave_the_directory() {
        assert_eq!(
            safe_name("../../etc/passwd").as_deref(),
            Some("_.._etc_passwd")
        );
        assert_eq!(safe_name("order-1.xml").as_deref(), Some("order-1.xml"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(""), None);
    }
}
