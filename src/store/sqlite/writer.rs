//! The store's one writer: group commit.
//!
//! All writes go through one thread that owns the write connection. It takes every job
//! waiting in its queue, runs them one after another in one transaction, commits (the commit
//! syncs the log: `synchronous=FULL`), and only then answers each caller. One sync covers many
//! messages, and no caller hears "stored" before it is. A job that fails does not take the
//! others with it: the transaction is rolled back and run again without that job (jobs are
//! plain functions of the connection, so running one twice is safe). That costs a rerun when a
//! job fails, which is rare, instead of a savepoint around every job, which is paid on every
//! message (each savepoint copies the pages it touches into a statement journal).
//!
//! Copying the log into the database file (a checkpoint) is not the writer's work either: a
//! checkpoint inside a commit held every caller of that commit for the whole copy and its
//! sync. A thread of its own copies the log beside the writer once it has grown
//! ([`CHECKPOINT_PAGES`]), which SQLite allows while writes go on; the writer then copies only
//! what was committed meanwhile, so that the log can start afresh (or everything, if the log
//! outgrows [`CHECKPOINT_PAGES_MAX`]): the log stays bounded.

use super::integrity::{self, Damage};
use super::StoreResult;
use super::{closed, sql_err, StoreError};
use rusqlite::Connection;
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use tokio::sync::{mpsc, oneshot};

/// Jobs a single transaction may hold; bounds the latency one commit adds.
const MAX_BATCH: usize = 512;

/// Log pages (4 KiB each) after which the checkpointer copies the log into the database:
/// the pages every commit touches (the last leaf of each index) are copied once per
/// checkpoint however often they were logged, so a longer log costs fewer copies.
const CHECKPOINT_PAGES: i32 = 8192;
/// Log pages after which the writer checkpoints itself, the checkpointer having fallen
/// behind (256 MiB).
const CHECKPOINT_PAGES_MAX: i32 = 8 * CHECKPOINT_PAGES;

thread_local! {
    /// Pages in the log after the writer's last commit (SQLite's WAL hook, on its thread).
    static LOG_PAGES: Cell<i32> = const { Cell::new(0) };
}

fn note_log_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    LOG_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// The writer's queue.
pub(super) type Jobs = mpsc::Sender<Box<dyn Job>>;

/// One caller's writes, run by the writer thread inside its transaction.
pub(super) trait Job: Send {
    /// Runs the job's statements in the open transaction; false when they failed (the error
    /// is kept for the caller). May run more than once: only the last run counts.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction's fate (`commit`) is known.
    fn answer(self: Box<Self>, commit: Result<(), String>);
    /// The damage the last run met (a damaged page, a file that is no database), if any.
    fn damage(&self) -> Option<String>;
}

struct Call<R, F> {
    f: F,
    result: Option<rusqlite::Result<R>>,
    /// The job goes back with its answer: what it owns (a message's bodies and headers, its
    /// steps' records) is freed by the caller, not by the one thread every write waits for.
    tx: oneshot::Sender<(StoreResult<R>, F)>,
}

impl<R, F> Job for Call<R, F>
where
    R: Send,
    F: Fn(&Connection) -> rusqlite::Result<R> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, commit: Result<(), String>) {
        let Call { f, result, tx } = *self;
        let out = match (result, commit) {
            (None, Err(e)) => Err(StoreError(e)),
            (None, Ok(())) => Err(StoreError("the write did not run".into())),
            (Some(Err(e)), _) => Err(sql_err(e)),
            (Some(Ok(_)), Err(e)) => Err(StoreError(format!("commit failed: {e}"))),
            (Some(Ok(r)), Ok(())) => Ok(r),
        };
        let _ = tx.send((out, f));
    }

    fn damage(&self) -> Option<String> {
        match &self.result {
            Some(Err(e)) if integrity::is_damage(e) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// Queues `f` for the writer and waits until it is committed.
pub(super) async fn write<R, F>(jobs: Jobs, f: F) -> StoreResult<R>
where
    R: Send + 'static,
    F: Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Box<dyn Job> = Box::new(Call {
        f,
        result: None,
        tx,
    });
    jobs.send(job).await.map_err(|_| closed())?;
    let (out, _job) = rx.await.map_err(|_| closed())?;
    out
}

/// Starts the writer on `conn`, the store's write connection.
pub(super) fn start(
    conn: Connection,
    path: &Path,
    damage: Arc<Damage>,
) -> StoreResult<(Jobs, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Box<dyn Job>>(4096);
    let checkpointer = Checkpointer::start(path, damage.clone())?;
    // Instead of SQLite's own checkpoint inside the commit (the hook replaces it).
    conn.wal_hook(Some(note_log_pages));
    let path = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            raise_priority();
            write_loop(conn, rx, &damage, &path, checkpointer)
        })
        .map_err(sql_err)?;
    Ok((tx, handle))
}

/// How many nice levels the writer runs above the process (see [`raise_priority`]).
const WRITER_PRIORITY: i32 = 5;

/// Runs the calling thread — the writer — ahead of the runtime's threads when both want a
/// core: every commit waits for the writer, so while it is off a core the whole engine's
/// intake and delivery wait, whereas a runtime thread off a core delays only its own tasks.
/// Measured on two cores (HTTP → HTTP sink, docs/performance.md): a larger share of the
/// disk's floor in each of five alternated runs (26.2% against 23.8% on average). Raising a
/// priority needs root, `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows it (systemd's
/// `LimitNICE=`); without them the writer runs at the process's own priority, as before, and
/// says so in the debug log.
fn raise_priority() {
    if let Err(e) = nice_by(-WRITER_PRIORITY) {
        tracing::debug!(error = %e,
            "the store writer runs at the process's priority: raising it needs root, CAP_SYS_NICE or a LimitNICE= that allows it");
    }
}

/// Adds `delta` to the calling thread's nice value (on Linux a nice value is a thread's own:
/// `who = 0` is the calling thread), within -20..=19.
fn nice_by(delta: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let now = thread_nice();
        let target = (now + delta).clamp(-20, 19);
        // SAFETY: setpriority reads and writes no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = delta;
    Ok(())
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn thread_nice() -> i32 {
    // SAFETY: getpriority reads no memory of ours. (It returns -1 both for nice -1 and for an
    // error, which for the calling thread cannot happen.)
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The thread that copies the log into the database beside the writer.
struct Checkpointer {
    kick: std_mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<()>,
    /// Set by the thread when it has copied what the log held when it was asked.
    copied: Arc<AtomicBool>,
    /// Asked for the log as it is now (until the log starts afresh).
    asked: bool,
}

impl Checkpointer {
    fn start(path: &Path, damage: Arc<Damage>) -> StoreResult<Checkpointer> {
        let conn = super::open_connection(path).map_err(sql_err)?;
        let (kick, kicks) = std_mpsc::sync_channel::<()>(1);
        let copied = Arc::new(AtomicBool::new(false));
        let done = copied.clone();
        let path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while kicks.recv().is_ok() {
                    if copy_log(&conn, &damage, &path) {
                        done.store(true, Ordering::Release);
                    }
                }
                damage.seal(&conn);
            })
            .map_err(sql_err)?;
        Ok(Checkpointer {
            kick,
            handle,
            copied,
            asked: false,
        })
    }

    /// After a commit: once the log has grown, the checkpointer copies it beside the writer;
    /// once that is done, the writer copies the little committed since (the log can only
    /// start afresh when all of it is in the file), so its own pause is short.
    fn after_commit(&mut self, conn: &Connection, damage: &Damage, path: &Path) {
        let pages = LOG_PAGES.with(|p| p.get());
        if pages < CHECKPOINT_PAGES {
            self.asked = false;
            return;
        }
        if pages >= CHECKPOINT_PAGES_MAX || self.copied.swap(false, Ordering::Acquire) {
            copy_log(conn, damage, path);
            self.asked = false;
        } else if !self.asked {
            self.asked = self.kick.try_send(()).is_ok();
        }
    }

    fn stop(self) {
        drop(self.kick);
        let _ = self.handle.join();
    }
}

/// Copies what no reader still needs of the log into the database file (PASSIVE: waits for
/// no one), never into a damaged file; true when it did.
fn copy_log(conn: &Connection, damage: &Damage, path: &Path) -> bool {
    if damage.get().is_some() {
        return false;
    }
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => true,
        Err(e) => {
            let e = damage.note(path, e);
            tracing::warn!(error = %e, "could not copy the store's log into its file; trying again");
            false
        }
    }
}

fn write_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    damage: &Damage,
    path: &Path,
    mut checkpointer: Checkpointer,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Some(report) = damage.get() {
            // Found since these were queued (by a read, a check): nothing more goes in.
            batch
                .into_iter()
                .for_each(|job| job.answer(Err(report.clone())));
            continue;
        }
        if let Some(problem) = commit_batch(&conn, batch) {
            damage.set(integrity::report(
                path,
                &[problem],
                integrity::WRITES_STOPPED,
            ));
        }
        checkpointer.after_commit(&conn, damage, path);
    }
    checkpointer.stop();
    // Dropping the connection must not copy the log into a damaged file.
    damage.seal(&conn);
}

/// Runs `batch` in one transaction and answers every job. A failing job is answered with its
/// error and the transaction is run again without it, so each job's writes are committed
/// whole or not at all, whatever the others do. Returns the damage met, if any: then the
/// jobs not yet answered are refused rather than run again on a damaged file.
fn commit_batch(conn: &Connection, mut batch: Vec<Box<dyn Job>>) -> Option<String> {
    let refuse = |batch: Vec<Box<dyn Job>>, msg: String| {
        batch
            .into_iter()
            .for_each(|job| job.answer(Err(msg.clone())));
    };
    while !batch.is_empty() {
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Nothing ran, and running jobs outside a transaction would not be atomic: every
            // caller hears the error and keeps its message unacknowledged.
            refuse(batch, format!("cannot begin a transaction: {e}"));
            return integrity::is_damage(&e).then(|| e.to_string());
        }
        match batch.iter_mut().position(|job| !job.run(conn)) {
            Some(failed) => {
                // Some errors (a full disk) end the transaction by themselves: then there is
                // nothing left to roll back.
                let _ = conn.execute_batch("ROLLBACK");
                // Its own error is what it answers with; the commit is not its business.
                let job = batch.remove(failed);
                let damage = job.damage();
                job.answer(Ok(()));
                if let Some(problem) = damage {
                    refuse(batch, format!("the store is damaged: {problem}"));
                    return Some(problem);
                }
            }
            None => {
                let commit = conn.execute_batch("COMMIT");
                let damage = commit
                    .as_ref()
                    .err()
                    .filter(|e| integrity::is_damage(e))
                    .map(|e| e.to_string());
                let commit = commit.map_err(|e| e.to_string());
                if commit.is_err() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                batch.into_iter().for_each(|job| job.answer(commit.clone()));
                return damage;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path) -> (Jobs, std::thread::JoinHandle<()>, std::path::PathBuf) {
        let path = dir.join("w.db");
        let conn = super::super::open_connection(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let (tx, handle) = start(conn, &path, Arc::new(Damage::default())).unwrap();
        (tx, handle, path)
    }

    fn insert(k: i64) -> impl Fn(&Connection) -> rusqlite::Result<usize> + Send + 'static {
        move |c: &Connection| c.execute("INSERT INTO t (k) VALUES (?1)", [k])
    }

    /// Writes from many callers at once share transactions; one that fails (a duplicate key)
    /// hears its own error and takes no other write with it, whichever transaction it was in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_among_many() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, path) = writer(dir.path());
        write(tx.clone(), insert(7)).await.unwrap();
        let calls: Vec<_> = (0..2000)
            .map(|k| tokio::spawn(write(tx.clone(), insert(k))))
            .collect();
        let mut failed = Vec::new();
        for (k, call) in calls.into_iter().enumerate() {
            if let Err(e) = call.await.unwrap() {
                failed.push((k, e.to_string()));
            }
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, 7);
        assert!(failed[0].1.contains("UNIQUE"), "{}", failed[0].1);
        drop(tx);
        handle.join().unwrap();
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2000);
    }

    /// The log is copied into the database file beside the writer once it has grown: with
    /// nobody checkpointing, the file would keep only its first pages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_copied_into_the_file_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, path) = writer(dir.path());
        write(tx.clone(), |c: &Connection| {
            c.execute_batch("CREATE TABLE b (v BLOB)")
        })
        .await
        .unwrap();
        let log_bytes = CHECKPOINT_PAGES as u64 * 4096;
        for _ in 0..(log_bytes / (256 << 10) + 8) {
            write(tx.clone(), |c: &Connection| {
                c.execute("INSERT INTO b (v) VALUES (zeroblob(262144))", [])
            })
            .await
            .unwrap();
        }
        // Without a checkpoint the file keeps its first few pages; the log repeats some pages,
        // so the file holds less than the log did.
        let copied = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= log_bytes / 2;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !copied() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            copied(),
            "{} bytes",
            std::fs::metadata(&path).unwrap().len()
        );
        drop(tx);
        handle.join().unwrap();
    }

    /// The writer runs 5 nice levels above the process where the process may raise a
    /// priority (as root, here and in CI), and at the process's own where it may not.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_writer_runs_ahead_of_the_runtime_where_allowed() {
        let base = thread_nice();
        let allowed = std::thread::spawn(|| nice_by(-WRITER_PRIORITY).is_ok())
            .join()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, _) = writer(dir.path());
        let nice = write(tx.clone(), |_: &Connection| Ok(thread_nice()))
            .await
            .unwrap();
        let expected = match allowed {
            true => (base - WRITER_PRIORITY).max(-20),
            false => base,
        };
        assert_eq!(nice, expected, "the process runs at nice {base}");
        // The runtime's own threads keep the process's priority.
        assert_eq!(thread_nice(), base);
        drop(tx);
        handle.join().unwrap();
    }

    /// The writer's commits sync the log: "stored" is on the disk when the caller hears it.
    #[tokio::test]
    async fn the_writers_commits_sync_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, handle, _) = writer(dir.path());
        let mode: i64 = write(tx.clone(), |c: &Connection| {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))
        })
        .await
        .unwrap();
        assert_eq!(mode, 2, "FULL");
        drop(tx);
        handle.join().unwrap();
    }
}
