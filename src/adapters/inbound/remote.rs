//! Polling a remote directory, for the `sftp` and `ftp` inbounds: list it, take each settled
//! file matching the pattern, commit it to the store, and only then delete it or move it to
//! another remote directory (ack after commit).
//!
//! A file is taken once its size and modification time stayed the same across listings for
//! `settle`, so a file still being uploaded is left alone. A crash between the commit and the
//! delete finds the file again: its key — path, size and modification time — makes it a
//! recorded `duplicate`, not a second delivery, and it is deleted then. On a shared store one
//! node polls at a time, like a shared local directory.

use super::{Inbound, Intake, Submitted};
use crate::adapters::broker::{Backoff, Link};
use crate::adapters::remote::{join, Connect, Listed, Remote};
use crate::message::{Headers, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The search field holding a remote file's identity (`path|size|mtime`).
pub const KEY_NAME: &str = "remote_file";

/// What to take and what to do with it.
pub struct Poll {
    pub pattern: glob::Pattern,
    pub interval: Duration,
    pub settle: Duration,
    pub move_to: Option<String>,
    pub max_size: u64,
    /// The protocol, for headers (`sftp.path`, `ftp.path`).
    pub scheme: &'static str,
}

impl Poll {
    pub fn new(
        pattern: &str,
        interval: Duration,
        settle: Duration,
        move_to: Option<String>,
        max_size: u64,
        scheme: &'static str,
    ) -> anyhow::Result<Poll> {
        let pattern =
            glob::Pattern::new(pattern).map_err(|e| anyhow::anyhow!("pattern `{pattern}`: {e}"))?;
        Ok(Poll {
            pattern,
            interval,
            settle,
            move_to,
            max_size,
            scheme,
        })
    }
}

// The defaults of the keys every remote-directory inbound shares (`sftp`, `ftp`).
pub(super) fn default_pattern() -> String {
    "*".into()
}
pub(super) fn default_interval() -> crate::config::values::Duration {
    crate::config::values::Duration::from_secs(10)
}
pub(super) fn default_settle() -> crate::config::values::Duration {
    crate::config::values::Duration::from_secs(2)
}
pub(super) fn default_max_size() -> crate::config::values::ByteSize {
    crate::config::values::ByteSize(64 << 20)
}
pub(super) fn default_timeout() -> crate::config::values::Duration {
    crate::config::values::Duration::from_secs(30)
}

/// An inbound polling a remote directory through `connect`.
pub struct RemoteInbound {
    pub poll: Poll,
    pub connect: Arc<dyn Connect>,
    pub link: Arc<Link>,
}

impl RemoteInbound {
    pub fn new(poll: Poll, connect: Arc<dyn Connect>) -> RemoteInbound {
        RemoteInbound {
            link: Arc::new(Link::new(connect.name())),
            poll,
            connect,
        }
    }
}

/// What the poller remembers between listings: when each file was first seen as it is now,
/// and the files it refused (too large), so they are recorded once per run.
#[derive(Default)]
struct Memory {
    seen: HashMap<String, (Listed, Instant)>,
    refused: HashSet<Listed>,
}

#[async_trait]
impl Inbound for RemoteInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.link.owned_by(&intake.route, "from");
        let mut session: Option<Box<dyn Remote>> = None;
        let mut memory = Memory::default();
        let mut backoff = Backoff::default();
        loop {
            if session.is_none() {
                self.link.connecting();
                match self.connect.connect().await {
                    Ok(s) => {
                        self.link.up();
                        backoff.reset();
                        session = Some(s);
                    }
                    Err(e) => {
                        let wait = backoff.wait();
                        self.link.down(&e, wait);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue,
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
            }
            let Some(s) = session.as_deref() else {
                continue;
            };
            let wait = match self.take(&intake, s, &mut memory, &shutdown).await {
                Ok(waiting) if waiting => self.poll.settle.min(self.poll.interval),
                Ok(_) => self.poll.interval,
                Err(e) => {
                    // A lost connection, most likely: make a new one.
                    session = None;
                    let wait = backoff.wait();
                    self.link.down(&e, wait);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        // The file is already taken from the server; the failure is recorded in the store.
        Ok(())
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
}

impl RemoteInbound {
    /// One listing: takes the settled files. Returns whether files are waiting to settle.
    async fn take(
        &self,
        intake: &Intake,
        remote: &dyn Remote,
        memory: &mut Memory,
        shutdown: &CancellationToken,
    ) -> Result<bool, String> {
        let dir = self.connect.dir().to_string();
        let now = Instant::now();
        let listed: Vec<Listed> = remote
            .list(&dir)
            .await?
            .into_iter()
            .filter(|l| !l.name.starts_with('.') && self.poll.pattern.matches(&l.name))
            .collect();
        // Forget what is gone; start the settle clock of what is new or changed.
        memory
            .seen
            .retain(|name, _| listed.iter().any(|l| &l.name == name));
        let mut waiting = false;
        let mut ready = Vec::new();
        for l in listed {
            match memory.seen.get(&l.name) {
                Some((before, since)) if *before == l => {
                    if now.duration_since(*since) >= self.poll.settle {
                        ready.push(l);
                    } else {
                        waiting = true;
                    }
                }
                _ => {
                    memory.seen.insert(l.name.clone(), (l, now));
                    waiting = true;
                }
            }
        }
        ready.sort_by(|a, b| (a.mtime, &a.name).cmp(&(b.mtime, &b.name)));
        for file in ready {
            if shutdown.is_cancelled() {
                break;
            }
            if memory.refused.contains(&file) {
                continue;
            }
            let path = join(&dir, &file.name);
            let scheme = self.poll.scheme;
            let mut headers = Headers::new();
            headers.insert("file.name".into(), file.name.clone());
            headers.insert(format!("{scheme}.path"), path.clone());
            headers.insert(format!("{scheme}.size"), file.size.to_string());
            headers.insert(format!("{scheme}.modified"), file.mtime.to_string());
            if file.size > self.poll.max_size {
                let reason = format!(
                    "remote file {path} of {} bytes is larger than max_size ({} bytes); left on the server",
                    file.size, self.poll.max_size
                );
                intake
                    .refuse(headers, &reason)
                    .await
                    .map_err(|e| e.to_string())?;
                memory.refused.insert(file);
                continue;
            }
            let body = remote.read(&path).await?;
            if body.len() as u64 != file.size {
                // Changed while it was read: look again at the next listing.
                memory.seen.remove(&file.name);
                waiting = true;
                continue;
            }
            let key = (
                KEY_NAME.to_string(),
                format!("{path}|{}|{}", file.size, file.mtime),
            );
            let submitted = intake
                .submit_once(headers, Bytes::from(body), Some(key))
                .await
                .map_err(|e| format!("cannot store {path}: {e}"))?;
            if let Submitted::Duplicate { first, .. } = submitted {
                tracing::info!(route = %intake.route, path = %path, first = %first,
                    "remote file taken before (a crash before it was removed); removing it now");
            }
            // Committed: now the file may leave the server's directory.
            match &self.poll.move_to {
                Some(to) => {
                    let target = join(to, &file.name);
                    if remote.rename(&path, &target).await.is_err() {
                        // A file of that name is there already: keep both, the new one by time.
                        let stamped = join(to, &format!("{}.{}", file.name, file.mtime));
                        remote.rename(&path, &stamped).await?;
                    }
                }
                None => remote.remove(&path).await?,
            }
            memory.seen.remove(&file.name);
        }
        Ok(waiting)
    }
}
