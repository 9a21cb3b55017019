//! File outbound: writes each message to a file.
//!
//! The body goes to a hidden temporary file in the target directory, is fsynced, and is then
//! put in place atomically (a hard link for "never overwrite", a rename for "overwrite"), and
//! the directory is fsynced: a reader sees the whole file or none, and a file that is there
//! survives power loss. The name comes from a template whose result is sanitised into one
//! file name, so nothing from a message can write outside the directory.
//!
//! Deliveries come in batches: every file of a batch is written, then all are made durable
//! at once (one `syncfs` on Linux), then each is put in place, then the directory is synced
//! once.
//!
//! After a crash a delivery may run again. When the target name already holds a file with
//! exactly this content, the delivery counts as done, so a retry does not duplicate it.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::fs::{
    create_temp, mark, marked, safe_file_name, sync_dir, sync_files, with_suffix,
};
use crate::message::Message;
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use serde::Deserialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

/// What to do when the target name is taken.
#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnClash {
    /// Keep both: add `-2`, `-3`, … before the extension (default).
    #[default]
    Suffix,
    /// Fail the delivery (it is retried, then dead).
    Fail,
    /// Replace the existing file.
    Overwrite,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FileOutbound")]
pub struct Config {
    /// Target directory (relative paths are relative to the engine's working directory);
    /// created when missing.
    pub path: PathBuf,
    /// File name template (default `{{id}}`); see `docs/routes.md` for the placeholders.
    #[serde(default = "default_name")]
    pub name: Template,
    /// What to do when the name is taken: `suffix` (default), `fail` or `overwrite`.
    #[serde(default)]
    pub on_clash: OnClash,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_name() -> Template {
    Template::parse("{{id}}").expect("valid template")
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<FileOutbound> {
        // A missing directory is created now; one that cannot be created (yet) is not fatal:
        // each delivery tries again and fails with the reason, so messages wait, not vanish.
        if let Err(e) = std::fs::create_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot create output directory yet");
        }
        crate::adapters::fs::sweep_temps(&self.path, crate::adapters::fs::STALE_TEMP);
        Ok(FileOutbound {
            cfg: Arc::new(self.clone()),
        })
    }
}

pub struct FileOutbound {
    cfg: Arc<Config>,
}

impl FileOutbound {
    #[cfg(test)]
    fn write(&self, msg: &Message) -> io::Result<PathBuf> {
        self.write_batch(std::slice::from_ref(msg))
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("no result")))
    }

    /// Writes every body to its temporary file, makes them all durable at one point
    /// ([`sync_files`]), then puts each in place and syncs the directory once: one durability
    /// point per batch is what makes durable file output fast (see docs/performance.md).
    fn write_batch(&self, msgs: &[Message]) -> Vec<io::Result<PathBuf>> {
        let dir = &self.cfg.path;
        if let Err(e) = std::fs::create_dir_all(dir) {
            return msgs
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect();
        }
        let temps: Vec<io::Result<(PathBuf, std::fs::File)>> = msgs
            .iter()
            .map(|msg| {
                // Unique even when two deliveries of one message are in flight (a replay).
                let seq = TEMP_SEQ.fetch_add(1, AtomicOrdering::Relaxed);
                let temp = create_temp(dir, &format!("{}-{seq}", msg.id), &msg.body)?;
                mark(&temp.1, &msg.id.to_string());
                Ok(temp)
            })
            .collect();
        let files: Vec<&std::fs::File> = temps.iter().flatten().map(|(_, f)| f).collect();
        let mut syncs = sync_files(&files).into_iter();
        let synced: Vec<io::Result<PathBuf>> = temps
            .into_iter()
            .map(|t| {
                let (tmp, _file) = t?;
                match syncs.next().unwrap_or(Ok(())) {
                    Ok(()) => Ok(tmp),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(e)
                    }
                }
            })
            .collect();
        let mut placed: Vec<io::Result<PathBuf>> = synced
            .into_iter()
            .zip(msgs)
            .map(|(tmp, msg)| {
                let tmp = tmp?;
                let name = safe_file_name(&self.cfg.name.render(msg));
                let result = self.place(&tmp, dir, &name, msg);
                let _ = std::fs::remove_file(&tmp);
                result
            })
            .collect();
        if placed.iter().any(|p| p.is_ok()) {
            if let Err(e) = sync_dir(dir) {
                // Not durable yet: the deliveries run again and find their files in place.
                for p in placed.iter_mut().filter(|p| p.is_ok()) {
                    *p = Err(io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
        placed
    }

    fn place(&self, tmp: &Path, dir: &Path, name: &str, msg: &Message) -> io::Result<PathBuf> {
        let mut n = 1;
        loop {
            let target = if n == 1 {
                dir.join(name)
            } else {
                dir.join(with_suffix(name, n))
            };
            if self.cfg.on_clash == OnClash::Overwrite {
                std::fs::rename(tmp, &target)?;
                return Ok(target);
            }
            // link() never replaces an existing file, unlike rename().
            match std::fs::hard_link(tmp, &target) {
                Ok(()) => return Ok(target),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // An earlier attempt of this delivery that got through (a crash before it
                    // was recorded) left this message's body there, marked with its id (or
                    // unmarked, where the file system keeps no marks). Another message's file
                    // with the same body, or this message's with another body (a replay after
                    // a change), is a clash.
                    let earlier = marked(&target).is_none_or(|id| id == msg.id.to_string())
                        && same_content(&target, &msg.body);
                    if earlier {
                        return Ok(target);
                    }
                    if self.cfg.on_clash == OnClash::Fail {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "{} already exists (on_clash: fail); move it away or choose another `name`",
                                target.display()
                            ),
                        ));
                    }
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn same_content(path: &Path, body: &[u8]) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == body.len() as u64 => std::fs::read(path).is_ok_and(|b| b == body),
        _ => false,
    }
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl Outbound for FileOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        let mut results = self.send_batch(std::slice::from_ref(msg)).await;
        results
            .pop()
            .unwrap_or_else(|| Err(SendError::retryable("the file writer returned no result")))
    }

    fn batching(&self) -> Batching {
        Batching::Whole
    }

    async fn send_batch(&self, msgs: &[Message]) -> Vec<Result<Sent, SendError>> {
        // File I/O blocks; keep it off the async workers.
        let me = FileOutbound {
            cfg: Arc::clone(&self.cfg),
        };
        let owned = msgs.to_vec();
        let dir = self.cfg.path.display().to_string();
        match tokio::task::spawn_blocking(move || me.write_batch(&owned)).await {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.map(|p| Sent(p.display().to_string()))
                        .map_err(|e| SendError::retryable(format!("cannot write to {dir}: {e}")))
                })
                .collect(),
            Err(e) => msgs
                .iter()
                .map(|_| Err(SendError::retryable(format!("writer task failed: {e}"))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn outbound(dir: &Path, yaml: &str) -> FileOutbound {
        let cfg: Config =
            crate::config::yaml::parse_str(&format!("path: {}\n{yaml}", dir.display())).unwrap();
        cfg.build(&BuildContext::default()).unwrap()
    }

    fn msg(name: &str, body: &str) -> Message {
        let mut m = Message::new("r", Bytes::from(body.to_string()));
        m.headers.insert("file.name".into(), name.into());
        m
    }

    #[test]
    fn names_from_input_stay_inside_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let o = outbound(&out, "name: \"{{original_name}}\"");
        let p = o.write(&msg("../../escape.txt", "x")).unwrap();
        assert_eq!(p.parent().unwrap(), out);
        assert!(!tmp.path().join("escape.txt").exists());
    }

    #[test]
    fn clash_policies() {
        let tmp = tempfile::tempdir().unwrap();
        let suffix = outbound(tmp.path(), "name: \"{{original_name}}\"");
        let first = msg("a.json", "1");
        let a = suffix.write(&first).unwrap();
        let b = suffix.write(&msg("a.json", "2")).unwrap();
        assert_eq!(b.file_name().unwrap(), "a-2.json");
        // The same message again is an earlier attempt of the same delivery...
        assert_eq!(suffix.write(&first).unwrap(), a);
        // ...but another message with the same name and content is a file of its own (where
        // the file system keeps marks: tmpfs before Linux 6.6 does not).
        if marked(&a).is_some() {
            let twin = suffix.write(&msg("a.json", "1")).unwrap();
            assert_eq!(twin.file_name().unwrap(), "a-3.json");
        }
        // A file without a mark (written by someone else, or where the file system keeps
        // none) with the same content is still taken as an earlier attempt.
        std::fs::write(tmp.path().join("b.json"), "9").unwrap();
        let unmarked = suffix.write(&msg("b.json", "9")).unwrap();
        assert_eq!(unmarked.file_name().unwrap(), "b.json");

        let fail = outbound(tmp.path(), "name: \"{{original_name}}\"\non_clash: fail");
        let e = fail.write(&msg("a.json", "3")).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");

        let over = outbound(
            tmp.path(),
            "name: \"{{original_name}}\"\non_clash: overwrite",
        );
        over.write(&msg("a.json", "4")).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "4");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }

    #[test]
    fn a_batch_fails_only_the_messages_that_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let o = outbound(tmp.path(), "name: \"{{original_name}}\"\non_clash: fail");
        std::fs::write(tmp.path().join("taken.json"), "older").unwrap();
        let batch = [
            msg("a.json", "1"),
            msg("taken.json", "2"),
            msg("b.json", "3"),
        ];
        let results = o.write_batch(&batch);
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let e = results[1].as_ref().unwrap_err();
        assert!(e.to_string().contains("taken.json already exists"), "{e}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("a.json")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("b.json")).unwrap(),
            "3"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("taken.json")).unwrap(),
            "older"
        );
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["a.json", "b.json", "taken.json"],
            "temporary files left behind"
        );
    }

    #[test]
    fn two_deliveries_of_one_message_in_one_batch_both_land() {
        let tmp = tempfile::tempdir().unwrap();
        let o = outbound(tmp.path(), "name: \"{{original_name}}\"");
        let first = msg("r.json", "one");
        let mut replay = first.clone();
        replay.body = Bytes::from("two");
        let results = o.write_batch(&[first, replay]);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("r.json")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("r-2.json")).unwrap(),
            "two"
        );
    }
}
