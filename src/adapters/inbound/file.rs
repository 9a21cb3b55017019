//! File inbound: picks up files from a watched directory.
//!
//! File-system events (notify) are only hints that something changed: a periodic rescan
//! catches what events miss (network shares often send none). A file is taken only once it
//! is complete: its size and mtime must be seen unchanged across `settle`, timed by the
//! engine's own clock — never by comparing mtime with now, because a copy that keeps an old
//! mtime is still being written. Hidden and temporary files are ignored, so writers that
//! write `.name` or `name.tmp` and then rename are never read half-way.
//!
//! Order per file: read, commit to the store, then archive or delete. A crash between commit
//! and archive leaves the file in place, so it is taken again after restart: a duplicate,
//! never a loss.

use super::{Inbound, Intake, SplitError};
use crate::adapters::fs::{move_into, safe_file_name, write_temp};
use crate::config::values::{ByteSize, Duration, Glob};
use crate::message::{Headers, Message};
use crate::steps::split::Split;
use crate::steps::BuildContext;
use anyhow::Context;
use async_trait::async_trait;
use notify::Watcher;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What to do with a file once its message is committed.
#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum After {
    /// Move it to `archive_dir`.
    #[default]
    Archive,
    /// Delete it.
    Delete,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FileInbound")]
pub struct Config {
    /// The directory to watch (relative paths are relative to the engine's working directory).
    /// Only files directly inside it are taken, not those in subdirectories.
    pub path: PathBuf,
    /// Which file names to take (default `*`).
    #[serde(default)]
    pub pattern: Glob,
    /// How long size and modification time must stay unchanged before a file counts as
    /// completely written (default `1s`).
    #[serde(default = "default_settle")]
    pub settle: Duration,
    /// How often to rescan even without file-system events (default `5s`).
    #[serde(default = "default_poll")]
    pub poll_interval: Duration,
    /// Use file-system events to notice new files at once (default `true`). Set `false` on
    /// network shares where events never arrive: `poll_interval` then does all the work.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// `archive` (default) moves a taken file to `archive_dir`; `delete` removes it.
    #[serde(default)]
    pub after: After,
    /// Where taken files go (default `<path>/archive`).
    #[serde(default)]
    pub archive_dir: Option<PathBuf>,
    /// Where files go that could not be taken, or whose message failed (default
    /// `<path>/error`). Each comes with a `<name>.error.txt` saying why.
    #[serde(default)]
    pub error_dir: Option<PathBuf>,
    /// Largest file accepted (default `64MiB`); a larger one is recorded as failed and moved
    /// to `error_dir` unread.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Create `path` when it does not exist (default `false`: a missing directory is an error
    /// at start, since it usually means a typo or an unmounted share).
    #[serde(default)]
    pub create: bool,
    /// How many files are read and committed at the same time (default 16).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
}

/// Bytes of files read at once (see the scan loop).
const READ_BUDGET: u64 = 64 << 20;

fn default_settle() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_max_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_parallel() -> usize {
    16
}

impl Config {
    pub fn archive_dir(&self) -> PathBuf {
        self.archive_dir
            .clone()
            .unwrap_or_else(|| self.path.join("archive"))
    }

    pub fn error_dir(&self) -> PathBuf {
        self.error_dir
            .clone()
            .unwrap_or_else(|| self.path.join("error"))
    }

    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<FileInbound> {
        if !self.path.is_dir() {
            if self.create {
                std::fs::create_dir_all(&self.path).with_context(|| {
                    format!(
                        "cannot create the inbound directory {}",
                        self.path.display()
                    )
                })?;
            } else if self.path.exists() {
                anyhow::bail!("inbound path {} is not a directory", self.path.display());
            } else {
                anyhow::bail!(
                    "inbound directory {} does not exist: create it, fix `path`, or set `create: true`",
                    self.path.display()
                );
            }
        }
        let archive = self.archive_dir();
        let errors = self.error_dir();
        for dir in [&archive, &errors] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        crate::adapters::fs::sweep_temps(&errors, crate::adapters::fs::STALE_TEMP);
        Ok(FileInbound(Arc::new(Inner {
            cfg: self.clone(),
            archive,
            errors,
        })))
    }
}

pub struct FileInbound(Arc<Inner>);

struct Inner {
    cfg: Config,
    archive: PathBuf,
    errors: PathBuf,
}

/// What a scan saw of a file, and since when it has looked like that.
struct Observation {
    size: u64,
    mtime: Option<SystemTime>,
    since: Instant,
}

/// Names that writers use while a file is not finished, by common convention.
fn is_temporary(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".tmp",
        ".temp",
        ".part",
        ".partial",
        ".crdownload",
        ".swp",
        "~",
    ];
    name.starts_with('.')
        || name.starts_with('~')
        || SUFFIXES
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

impl Inner {
    /// Lists candidate files and returns those that have been stable for `settle`, plus the
    /// earliest instant at which another candidate could become stable.
    fn scan(
        &self,
        seen: &mut HashMap<PathBuf, Observation>,
        skip: &HashSet<PathBuf>,
    ) -> std::io::Result<(Vec<PathBuf>, Option<Instant>)> {
        let now = Instant::now();
        let settle = self.cfg.settle.0;
        let mut present = HashSet::new();
        let mut ready = Vec::new();
        let mut next: Option<Instant> = None;
        for entry in std::fs::read_dir(&self.cfg.path)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) || !self.cfg.pattern.matches(&name) {
                continue;
            }
            let path = entry.path();
            // Follows symlinks: a link to a file is taken like the file.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // gone already
                Err(_) => {
                    // Unreadable (permissions, a symlink loop): `take` records why and moves
                    // it to the error directory, rather than ignoring it forever.
                    if !skip.contains(&path) {
                        ready.push(path);
                    }
                    continue;
                }
            };
            if !meta.is_file() || skip.contains(&path) {
                continue;
            }
            present.insert(path.clone());
            let (size, mtime) = (meta.len(), meta.modified().ok());
            let obs = seen.entry(path.clone()).or_insert(Observation {
                size,
                mtime,
                since: now,
            });
            if obs.size != size || obs.mtime != mtime {
                *obs = Observation {
                    size,
                    mtime,
                    since: now,
                };
            }
            let due = obs.since + settle;
            if due <= now {
                ready.push(path);
            } else {
                next = Some(next.map_or(due, |n: Instant| n.min(due)));
            }
        }
        seen.retain(|p, _| present.contains(p));
        // Oldest first, so a backlog drains in the order it arrived.
        ready.sort_by_key(|p| (seen.get(p).and_then(|o| o.mtime), p.clone()));
        Ok((ready, next))
    }

    /// Takes one stable file: read, commit, then archive or delete. Returns the path when the
    /// file must be skipped from now on (it could not be moved away after it was handled).
    async fn take(&self, path: PathBuf, expected_size: u64, intake: &Intake) -> Option<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // One trip to a blocking thread for the look and the read: per-file hops between
        // threads cost more than the I/O of a small file.
        let max = self.cfg.max_size.0;
        let read_body = intake.split_first().is_none();
        let p = path.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&p)?;
            let body = (read_body && meta.len() == expected_size && meta.len() <= max)
                .then(|| read_limited(&p, max));
            Ok::<_, std::io::Error>((meta, body))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("reader task failed: {e}"))));
        let (meta, body) = match looked {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                let reason = format!("cannot read {}: {e}", path.display());
                return self
                    .reject(&path, &name, Headers::new(), &reason, intake)
                    .await;
            }
        };
        if meta.len() != expected_size {
            return None; // still changing: the next scan observes it again
        }
        let mut headers = Headers::new();
        headers.insert("file.name".into(), name.clone());
        headers.insert("file.path".into(), path.display().to_string());
        headers.insert("file.size".into(), meta.len().to_string());
        if let Ok(m) = meta.modified() {
            headers.insert(
                "file.modified".into(),
                humantime::format_rfc3339_millis(m).to_string(),
            );
        }
        if let Some(split) = intake.split_first() {
            return self.take_split(path, name, headers, split, intake).await;
        }
        if meta.len() > max {
            let reason = format!(
                "file {} is {} bytes, over this route's max_size of {}; raise `max_size` or split the file before it arrives",
                path.display(),
                meta.len(),
                self.cfg.max_size
            );
            return self.reject(&path, &name, headers, &reason, intake).await;
        }
        let body = match body {
            Some(Ok(b)) if b.len() as u64 == expected_size => b,
            Some(Ok(_)) | None => return None, // changed while we read it: observe again
            Some(Err(e)) => {
                let reason = format!("cannot read {}: {e}", path.display());
                return self.reject(&path, &name, headers, &reason, intake).await;
            }
        };
        // The file's identity (device, inode, status-change time, size): a file taken again
        // after a crash, before it was moved away, has the same one and is recorded as a
        // `duplicate`; the same name dropped again later is a new file and a new message.
        let identity = {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{:09}:{}",
                meta.dev(),
                meta.ino(),
                meta.ctime(),
                meta.ctime_nsec(),
                meta.len()
            )
        };
        let key = Some(("file_identity".to_string(), identity));
        let id = match intake.submit_once(headers, body.into(), key).await {
            Ok(super::Submitted::New(id) | super::Submitted::Duplicate { id, .. }) => id,
            Err(e) => {
                // Not committed, so not acknowledged: the file stays and is tried again.
                tracing::error!(route = %intake.route, file = %path.display(), error = %e, "could not store file; it stays in place and is retried");
                return None;
            }
        };
        self.acknowledge(&path, &name, id, intake)
    }

    /// Takes a file whose route starts with a split: the file is split while it is read, in
    /// bounded memory, whatever its size (`max_size` does not apply; `max_child_size` does).
    async fn take_split(
        &self,
        path: PathBuf,
        name: String,
        headers: Headers,
        split: Arc<Split>,
        intake: &Intake,
    ) -> Option<PathBuf> {
        let file = path.clone();
        let splitter = split.clone();
        let result = intake
            .submit_split(headers, split, move |emit| {
                let f = std::fs::File::open(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                splitter.split(std::io::BufReader::with_capacity(256 << 10, f), emit)
            })
            .await;
        match result {
            Ok((id, n)) => {
                tracing::info!(route = %intake.route, message_id = %id, file = %path.display(), children = n, "file split while read");
                self.acknowledge(&path, &name, id, intake)
            }
            Err(SplitError::NotStored(e)) => {
                tracing::error!(route = %intake.route, file = %path.display(), error = %e, "could not store file; it stays in place and is retried");
                None
            }
            Err(SplitError::Failed { parent, error }) => {
                tracing::warn!(route = %intake.route, message_id = %parent, file = %path.display(), error = %error, "split failed");
                let moved = move_into(&path, &self.errors, &name).and_then(|to| {
                    write_reason(&to, &format!("message {parent}: {error}")).map(|_| ())
                });
                match moved {
                    Ok(()) => None,
                    Err(_) => Some(path),
                }
            }
        }
    }

    /// Archives or deletes a file whose message is committed.
    fn acknowledge(
        &self,
        path: &Path,
        name: &str,
        id: uuid::Uuid,
        intake: &Intake,
    ) -> Option<PathBuf> {
        let done = match self.cfg.after {
            After::Delete => std::fs::remove_file(path).map(|_| ()),
            After::Archive => move_into(path, &self.archive, name).map(|_| ()),
        };
        match done {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(route = %intake.route, message_id = %id, file = %path.display(), error = %e,
                    "file was stored but could not be archived or deleted; it is skipped until it is moved away");
                Some(path.to_path_buf())
            }
        }
    }

    /// Records a file that could not be taken as failed and moves it to the error directory.
    async fn reject(
        &self,
        path: &Path,
        name: &str,
        headers: Headers,
        reason: &str,
        intake: &Intake,
    ) -> Option<PathBuf> {
        if let Err(e) = intake.refuse(headers, reason).await {
            tracing::error!(route = %intake.route, file = %path.display(), error = %e, "could not record refused file");
            return None;
        }
        let moved = move_into(path, &self.errors, name)
            .and_then(|to| write_reason(&to, reason).map(|_| ()));
        match moved {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(route = %intake.route, file = %path.display(), error = %e,
                    "could not move the refused file to the error directory; it is skipped until it is moved away");
                Some(path.to_path_buf())
            }
        }
    }
}

fn write_reason(file: &Path, reason: &str) -> std::io::Result<()> {
    let mut name = file.as_os_str().to_owned();
    name.push(".error.txt");
    std::fs::write(PathBuf::from(name), format!("{reason}\n"))
}

/// Reads at most `max` bytes; a file that grew past `max` since it was measured is an error.
fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    // Sized for the file, so that the buffer is not regrown (and briefly held twice).
    let size = file.metadata()?.len().min(max);
    let mut buf = Vec::with_capacity(size as usize + 1);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "file grew past max_size ({max} bytes) while being read"
        )));
    }
    Ok(buf)
}

#[async_trait]
impl Inbound for FileInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.0;
        let (tx, mut events) = mpsc::channel::<()>(1);
        let _watcher = if inner.cfg.watch {
            let watcher =
                notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                    let _ = tx.try_send(()); // a full channel already holds a wake-up
                })
                .and_then(|mut w| {
                    w.watch(&inner.cfg.path, notify::RecursiveMode::NonRecursive)
                        .map(|_| w)
                });
            match watcher {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(route = %intake.route, dir = %inner.cfg.path.display(), error = %e,
                        "file-system events unavailable; relying on polling");
                    None
                }
            }
        } else {
            None
        };
        let mut seen = HashMap::new();
        let mut skip: HashSet<PathBuf> = HashSet::new();
        let mut reported_scan_error = false;
        loop {
            // Listing a large directory blocks: do it on a blocking thread.
            let (me, skipped) = (inner.clone(), skip.clone());
            let mut observed = std::mem::take(&mut seen);
            let (scanned, observed) = tokio::task::spawn_blocking(move || {
                let r = me.scan(&mut observed, &skipped);
                (r, observed)
            })
            .await?;
            seen = observed;
            let (ready, next) = match scanned {
                Ok(r) => {
                    reported_scan_error = false;
                    r
                }
                Err(e) => {
                    if !reported_scan_error {
                        tracing::error!(route = %intake.route, dir = %inner.cfg.path.display(), error = %e,
                            "cannot list the inbound directory; retrying");
                        reported_scan_error = true;
                    }
                    (Vec::new(), None)
                }
            };
            // Files that are gone no longer need skipping.
            skip.retain(|p| p.exists());

            let mut tasks = JoinSet::new();
            // Bytes of the files being taken: small files go `parallel` at a time, large
            // ones one by one, so intake holds at most READ_BUDGET (or one larger file).
            let mut reading = 0u64;
            for path in ready {
                if shutdown.is_cancelled() {
                    break;
                }
                let size = seen.get(&path).map(|o| o.size).unwrap_or(0);
                while !tasks.is_empty()
                    && (tasks.len() >= inner.cfg.parallel.max(1) || reading + size > READ_BUDGET)
                {
                    if let Some(Ok((bytes, stuck))) = tasks.join_next().await {
                        reading -= bytes;
                        skip.extend(stuck);
                    }
                }
                seen.remove(&path);
                reading += size;
                let (me, intake) = (self.0.clone(), intake.clone());
                tasks.spawn(async move { (size, me.take(path, size, &intake).await) });
            }
            while let Some(res) = tasks.join_next().await {
                if let Ok((_, Some(stuck))) = res {
                    skip.insert(stuck);
                }
            }

            let poll = tokio::time::Instant::now() + inner.cfg.poll_interval.0;
            let wake = next
                .map(|n| tokio::time::Instant::from_std(n).min(poll))
                .unwrap_or(poll);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = events.recv() => {
                    // Let a burst of events settle into one rescan.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn failed(&self, original: &Message, reason: &str) -> anyhow::Result<()> {
        let name = safe_file_name(original.header("file.name").unwrap_or("message"));
        let dir = &self.0.errors;
        // The input was archived when it was committed; move that copy over rather than keep
        // the failed input in both places. Otherwise write it back from the store.
        let archived = self.0.archive.join(&name);
        let from = if std::fs::read(&archived).is_ok_and(|b| b == original.body) {
            archived
        } else {
            write_temp(dir, &original.id.to_string(), &original.body)?
        };
        let to = move_into(&from, dir, &name)?;
        write_reason(&to, &format!("message {}: {reason}", original.id))?;
        Ok(())
    }

    fn exclusive(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::is_temporary;

    #[test]
    fn ignores_hidden_and_temporary_files() {
        for n in [".x.xml", "a.xml.tmp", "a.part", "a.xml~", "~lock", "A.TMP"] {
            assert!(is_temporary(n), "{n}");
        }
        assert!(!is_temporary("order.xml"));
    }
}
