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

use super::integrity::{self, Damage};
use super::StoreResult;
use super::{closed, sql_err, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Jobs a single transaction may hold; bounds the latency one commit adds.
const MAX_BATCH: usize = 512;

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
    tx: oneshot::Sender<StoreResult<R>>,
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
        let out = match (self.result, commit) {
            (None, Err(e)) => Err(StoreError(e)),
            (None, Ok(())) => Err(StoreError("the write did not run".into())),
            (Some(Err(e)), _) => Err(sql_err(e)),
            (Some(Ok(_)), Err(e)) => Err(StoreError(format!("commit failed: {e}"))),
            (Some(Ok(r)), Ok(())) => Ok(r),
        };
        let _ = self.tx.send(out);
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
    rx.await.map_err(|_| closed())?
}

/// Starts the writer on `conn`, the store's write connection.
pub(super) fn start(
    conn: Connection,
    path: &Path,
    damage: Arc<Damage>,
) -> StoreResult<(Jobs, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Box<dyn Job>>(4096);
    let path = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || write_loop(conn, rx, &damage, &path))
        .map_err(sql_err)?;
    Ok((tx, handle))
}

fn write_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    damage: &Damage,
    path: &Path,
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
    }
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
