//! The embedded SQLite store (WAL, `synchronous=FULL`).
//!
//! All writes go through one writer thread that owns the write connection. It takes every job
//! waiting in its queue, runs them one after another in one transaction, commits, and only
//! then answers each caller. This is group commit: one fsync covers many messages, and no
//! caller hears "stored" before it is. A job that fails does not take the others with it: the
//! transaction is rolled back and run again without that job (jobs are plain functions of the
//! connection, so running one twice is safe). That costs a rerun when a job fails, which is
//! rare, instead of a savepoint around every job, which is paid on every message (each
//! savepoint copies the pages it touches into a statement journal). Reads use a second
//! connection, which WAL lets run beside the writer.

use super::plan::{self, Change, Line};
use super::*;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

mod integrity;
mod maintenance;
mod operations;
mod processing;

use integrity::Damage;
pub use integrity::{check_file, report as damage_report, Checked};

/// Jobs a single transaction may hold; bounds the latency one commit adds.
const MAX_BATCH: usize = 512;

/// One caller's writes, run by the writer thread inside its transaction.
trait Job: Send {
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

pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// Held while an engine uses the store; released by `close`.
    lock: Mutex<Option<std::fs::File>>,
    claims: Claims,
    held: HeldLeases,
    in_hand: InHand,
    /// Damage found in the file: from then on nothing is written to it.
    damage: Arc<Damage>,
}

fn sql_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn closed() -> StoreError {
    StoreError("the store is closed (the engine is shutting down)".into())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // FULL: a commit survives power loss, not only a process crash — "stored" must mean stored.
    // auto_vacuum first: it only takes on a new database, and only before WAL mode is set;
    // it lets retention hand freed pages back to the file system (the file shrinks).
    // temp_store=MEMORY: a statement that may fail halfway keeps its undo pages in memory,
    // not in a temporary file created for it.
    conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA journal_size_limit=67108864; PRAGMA temp_store=MEMORY;")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating when missing) the store at `path` and applies the schema.
    /// Opens the store for an engine: only one engine may use a store file at a time (two
    /// would process the same messages), which a lock file next to it enforces.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(path, Claims::default())
    }

    /// [`SqliteStore::open`] with this node's name and lease.
    pub fn open_with(path: &Path, claims: Claims) -> StoreResult<SqliteStore> {
        let lock = Self::lock(path)?;
        // Before anything is written: a damaged store is refused untouched, so that what it
        // holds can still be recovered.
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            match integrity::check_file(path, false, Some(integrity::START_BUDGET))? {
                Checked::Sound => {}
                Checked::Damaged(problems) => {
                    return Err(StoreError(integrity::report(
                        path,
                        &problems,
                        "The engine did not start and left the file as it was.",
                    )))
                }
                Checked::Unfinished => tracing::warn!(
                    store = %path.display(),
                    "the store was checked for {:?} at start without finishing (it is big); it is checked in full while running (store_check_every), or now with `switchyard store check`",
                    integrity::START_BUDGET
                ),
            }
        }
        let mut store = Self::open_shared(path)?;
        store.claims = claims;
        if let Ok(mut l) = store.lock.lock() {
            *l = Some(lock);
        }
        // Holding the lock, this is the only engine: whatever an earlier run claimed is free.
        let conn = open_connection(path).map_err(sql_err)?;
        conn.execute_batch(
            "BEGIN;
             UPDATE messages SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL;
             UPDATE deliveries SET owner = NULL, lease_until = NULL WHERE owner IS NOT NULL;
             DELETE FROM destination_leases;
             COMMIT;",
        )
        .map_err(sql_err)?;
        Ok(store)
    }

    fn lock(path: &Path) -> StoreResult<std::fs::File> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError(format!(
                    "cannot create the lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError(format!(
                "{} is in use by another switchyard engine; stop that one first, or give this one its own store (--data)",
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StoreError(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
    }

    /// [`SqliteStore::open_shared`] under a node name and lease of its own (tests of claims).
    pub fn open_shared_with(path: &Path, claims: Claims) -> StoreResult<SqliteStore> {
        let mut store = Self::open_shared(path)?;
        store.claims = claims;
        Ok(store)
    }

    /// Opens the store beside a running engine (for `messages`, `backup`): no engine lock.
    pub fn open_shared(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError(format!(
                    "cannot create the store directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let damaged = |e: rusqlite::Error| {
            StoreError(format!(
                "cannot open the store {}: {e}. If the file is damaged, stop the engine, move it away and restore the latest backup (`switchyard backup`, see docs/store.md), or start with an empty store",
                path.display()
            ))
        };
        let conn = open_connection(path).map_err(damaged)?;
        migrate(&conn).map_err(damaged)?;
        let reader = open_connection(path).map_err(sql_err)?;

        let (tx, rx) = mpsc::channel::<Box<dyn Job>>(4096);
        let damage = Arc::new(Damage::default());
        let (writer_damage, writer_path) = (damage.clone(), path.to_path_buf());
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(conn, rx, &writer_damage, &writer_path))
            .map_err(sql_err)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            reader: Arc::new(Mutex::new(reader)),
            lock: Mutex::new(None),
            claims: Claims::default(),
            held: HeldLeases::default(),
            in_hand: InHand::default(),
            damage,
        })
    }

    /// Copies the store, while it is in use, to `to` (SQLite's online backup).
    pub fn backup(&self, to: &Path) -> StoreResult<()> {
        let src = open_connection(&self.path).map_err(sql_err)?;
        let mut dst = rusqlite::Connection::open(to)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", to.display())))?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sql_err)?;
        backup
            .run_to_completion(256, Duration::from_millis(10), None)
            .map_err(|e| StoreError(format!("backup to {} failed: {e}", to.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This node's name and lease in milliseconds, for the write closures.
    fn claim_args(&self) -> (String, i64) {
        (
            self.claims.node.clone(),
            self.claims.lease.as_millis() as i64,
        )
    }

    async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        if let Some(report) = self.damage.get() {
            return Err(StoreError(report));
        }
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| closed())?
            .clone()
            .ok_or_else(closed)?;
        let (tx, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Call {
            f,
            result: None,
            tx,
        });
        jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (reader, damage, path) = (self.reader.clone(), self.damage.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| closed())?;
            let result = f(&conn).map_err(|e| sql_err(damage.note(&path, e)));
            damage.seal(&conn);
            result
        })
        .await
        .map_err(sql_err)?
    }
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

/// Schema changes in order; each runs once, in its own transaction, and is recorded in
/// `schema_version`. Append new ones; never edit one that has shipped.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
    (6, SCHEMA_V6),
    (7, SCHEMA_V7),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")?;
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; INSERT INTO schema_version (version) VALUES ({v}); COMMIT;"
        ))?;
    }
    Ok(())
}

/// Aggregate groups (the `aggregate` step): one row per group from its first member until it
/// is emitted as a message. `open_key` is the key while the group takes members and NULL once
/// complete, so that a route has one open group per key (a unique index ignores NULLs) and
/// the next member of a completed group's key opens a new one.
const SCHEMA_V7: &str = "
        CREATE TABLE aggregates (
            group_id     TEXT PRIMARY KEY,   -- also the id of the message it becomes
            route        TEXT NOT NULL,
            key          TEXT NOT NULL,
            open_key     TEXT,
            members      INTEGER NOT NULL,
            bytes        INTEGER NOT NULL,
            opened_at    INTEGER NOT NULL,
            timeout_at   INTEGER,            -- unix ms: opened_at + the step's timeout
            due_at       INTEGER,            -- open: when it times out; complete: since when
            completed_by TEXT,
            owner        TEXT,               -- the node combining it, once complete
            lease_until  INTEGER
        );
        CREATE UNIQUE INDEX aggregates_open ON aggregates (route, open_key);
        CREATE INDEX aggregates_due ON aggregates (route, due_at)";

/// Pending deliveries only, in the two orders their queries read them: a parallel
/// destination's claims by due time (`deliveries_due`), a FIFO destination's head by id
/// (`deliveries_pending`: without it, each FIFO delivery sorted the destination's whole queue —
/// 64 ms apiece with 100,000 pending). A delivery leaves both when it ends, so they hold the
/// backlog and nothing else.
/// Places kept in FIFO lines by messages whose steps have not run (`Line::Kept`): a FIFO head
/// looks for one before it. Only waiting rows are in it, so other deliveries pay nothing.
/// Inbound positions (a database reader's watermark), written with the messages that reach
/// them; one row per route and name, never pruned with the messages.
const SCHEMA_V6: &str = "
        CREATE TABLE positions (
            route TEXT NOT NULL,
            name  TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (route, name)
        )";

const SCHEMA_V5: &str = "
        CREATE INDEX deliveries_waiting ON deliveries (route, destination, id) WHERE state = 'waiting'";

const SCHEMA_V4: &str = "
        DROP INDEX deliveries_due;
        CREATE INDEX deliveries_due ON deliveries (route, destination, next_attempt_at, id)
            WHERE state = 'pending';
        CREATE INDEX deliveries_pending ON deliveries (route, destination, id) WHERE state = 'pending'";

/// A route's newest messages, and a route's messages in a time range (ids sort by arrival):
/// `messages list --route` and the console's search on a large store. Never changes after
/// the insert (route and id are fixed), so it costs one index entry per message.
const SCHEMA_V3: &str = "CREATE INDEX messages_route_id ON messages (route, id)";

/// Claims (see the module docs of `store`): who holds a message or delivery, and until when.
const SCHEMA_V2: &str = "
        ALTER TABLE messages ADD COLUMN owner TEXT;
        ALTER TABLE messages ADD COLUMN lease_until INTEGER;
        ALTER TABLE deliveries ADD COLUMN owner TEXT;
        ALTER TABLE deliveries ADD COLUMN lease_until INTEGER;
        CREATE INDEX messages_owner ON messages (owner) WHERE owner IS NOT NULL;
        CREATE INDEX deliveries_owner ON deliveries (owner) WHERE owner IS NOT NULL;
        CREATE TABLE destination_leases (
            route       TEXT NOT NULL,
            destination TEXT NOT NULL,
            owner       TEXT NOT NULL,
            lease_until INTEGER NOT NULL,
            PRIMARY KEY (route, destination)
        )";

const SCHEMA_V1: &str = "
        CREATE TABLE messages (
            id              TEXT PRIMARY KEY,   -- UUIDv7: sorts by arrival
            route           TEXT NOT NULL,
            route_version   TEXT NOT NULL,
            state           TEXT NOT NULL,
            received_at     INTEGER NOT NULL,   -- unix ms
            updated_at      INTEGER NOT NULL,
            headers         TEXT NOT NULL,      -- JSON object, as received
            body            BLOB,               -- as received
            out_headers     TEXT,               -- after the steps
            out_body        BLOB,
            error           TEXT,
            parent_id       TEXT,               -- the message this one was split from
            resume_step     INTEGER NOT NULL DEFAULT 0,
            attempts        INTEGER NOT NULL DEFAULT 0, -- runs of the steps that were retried
            next_attempt_at INTEGER             -- set: the scheduler runs the steps then
        );
        CREATE INDEX messages_route_state ON messages (route, state, id);
        CREATE INDEX messages_scheduled ON messages (route, next_attempt_at) WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX messages_state ON messages (state, id);
        CREATE INDEX messages_route_updated ON messages (route, updated_at);
        CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;
        CREATE TABLE deliveries (
            id              INTEGER PRIMARY KEY,
            message_id      TEXT NOT NULL,
            route           TEXT NOT NULL,
            destination     TEXT NOT NULL,
            kind            TEXT NOT NULL DEFAULT 'main', -- main, dead_letter, wire_tap, replaced (a main one before a replay)
            payload         TEXT NOT NULL DEFAULT 'out',  -- out: after the steps; in: as received
            state           TEXT NOT NULL,    -- pending, delivered, dead
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            last_error      TEXT,
            updated_at      INTEGER NOT NULL
        );
        CREATE INDEX deliveries_due ON deliveries (route, destination, state, next_attempt_at, id);
        CREATE INDEX deliveries_message ON deliveries (message_id);
        CREATE TABLE message_index (
            name        TEXT NOT NULL,
            value       TEXT NOT NULL,
            message_id  TEXT NOT NULL
        );
        CREATE INDEX message_index_lookup ON message_index (name, value);
        CREATE INDEX message_index_message ON message_index (message_id);
        CREATE TABLE transitions (
            id          INTEGER PRIMARY KEY,
            message_id  TEXT NOT NULL,
            at          INTEGER NOT NULL,
            event       TEXT NOT NULL,        -- received, step, attempt, state
            name        TEXT,                 -- the step or destination
            outcome     TEXT NOT NULL,
            duration_us INTEGER,
            detail      TEXT
        );
        CREATE INDEX transitions_message ON transitions (message_id)";

#[allow(clippy::too_many_arguments)]
fn transition(
    conn: &Connection,
    message: &str,
    at: i64,
    event: &str,
    name: Option<&str>,
    outcome: &str,
    duration: Option<Duration>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message,
        at,
        event,
        name,
        outcome,
        duration.map(|d| d.as_micros() as i64),
        detail
    ])?;
    Ok(())
}

/// Takes or renews the lease `name` of `route` for `node`: true when `node` holds it now (it
/// was free, expired, or already this node's).
fn take_lease(
    conn: &Connection,
    route: &str,
    name: &str,
    node: &str,
    now: i64,
    lease: i64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "INSERT INTO destination_leases (route, destination, owner, lease_until) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (route, destination) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
         WHERE destination_leases.owner = excluded.owner OR destination_leases.lease_until < ?5
         RETURNING owner",
    )?
    .query_row(params![route, name, node, now + lease, now], |_| Ok(()))
    .optional()
    .map(|held| held.is_some())
}

fn parse_id(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Executes one planned change (see [`plan`]).
fn apply(
    conn: &Connection,
    change: &Change<'_>,
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<()> {
    match change {
        Change::Message { ins, held, finish } => {
            let m = &ins.msg;
            let (state, error) = match finish {
                Some(f) => (f.state, f.error.as_deref()),
                None => (ins.state, ins.error.as_deref()),
            };
            let output = finish.as_ref().and_then(|f| f.output);
            let retry_at = finish.as_ref().and_then(|f| f.retry_at);
            conn.prepare_cached(
                "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                       error, parent_id, resume_step, next_attempt_at, owner, lease_until,
                                       out_headers, out_body, attempts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                m.id.to_string(),
                m.route,
                ins.route_version,
                state.as_str(),
                millis(m.received_at),
                headers_json(&m.headers),
                &m.body[..],
                error,
                ins.parent.map(|p| p.to_string()),
                ins.resume_step as i64,
                match retry_at {
                    Some(at) => Some(millis(at)),
                    None => ins.scheduled.then_some(now),
                },
                held.then_some(node),
                held.then_some(now + lease),
                output.map(|(h, _)| headers_json(h)),
                output.map(|(_, b)| &b[..]),
                retry_at.is_some() as i64,
            ])?;
        }
        Change::Child { parent, ins } => {
            let m = &ins.msg;
            conn.prepare_cached(
                "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers, body,
                                       parent_id, resume_step, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'received', ?4, ?4, ?5, ?6, ?7, ?8, ?4)",
            )?
            .execute(params![
                m.id.to_string(),
                m.route,
                ins.route_version,
                millis(m.received_at),
                headers_json(&m.headers),
                &m.body[..],
                parent.to_string(),
                ins.resume_step as i64,
            ])?;
        }
        Change::Position { route, name, value } => {
            conn.prepare_cached(
                "INSERT INTO positions (route, name, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (route, name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![route, name, value])?;
        }
        Change::Index {
            message,
            name,
            value,
        } => {
            conn.prepare_cached(
                "INSERT INTO message_index (name, value, message_id) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, value, message.to_string()])?;
        }
        Change::Transition {
            message,
            at,
            event,
            name,
            outcome,
            duration,
            detail,
        } => {
            transition(
                conn,
                &message.to_string(),
                at.map(millis).unwrap_or(now),
                event,
                *name,
                outcome,
                *duration,
                detail.as_deref(),
            )?;
        }
        Change::Output {
            message,
            state,
            headers,
            body,
        } => {
            conn.prepare_cached(
                "UPDATE messages SET state = ?2, updated_at = ?3, out_headers = ?4, out_body = ?5, error = NULL
                 WHERE id = ?1",
            )?
            .execute(params![
                message.to_string(),
                state.as_str(),
                now,
                headers_json(headers),
                &body[..]
            ])?;
        }
        Change::State {
            message,
            state,
            error,
        } => set_state(conn, &message.to_string(), now, *state, error.as_deref())?,
        Change::Error { message, error } => {
            conn.prepare_cached("UPDATE messages SET error = ?2 WHERE id = ?1")?
                .execute(params![message.to_string(), error])?;
        }
        Change::Final { message, state } => {
            conn.prepare_cached(
                "UPDATE messages SET state = ?2, updated_at = ?3,
                 error = CASE WHEN ?2 = 'delivered' THEN NULL ELSE error END WHERE id = ?1",
            )?
            .execute(params![message.to_string(), state.as_str(), now])?;
        }
        Change::Retry { message, at, error } => {
            conn.prepare_cached(
                "UPDATE messages SET attempts = attempts + 1, next_attempt_at = ?2, updated_at = ?3, error = ?4,
                 owner = NULL, lease_until = NULL WHERE id = ?1",
            )?
            .execute(params![message.to_string(), millis(*at), now, error])?;
        }
        Change::Delivery {
            message,
            route,
            destination,
            kind,
            payload,
            line,
        } => add_delivery(
            conn,
            &message.to_string(),
            route,
            destination,
            (*kind, payload.as_str(), *line),
            now,
        )?,
        Change::LeaveLines { message, .. } => {
            // Runs after the plan's deliveries took their places: what is left is not routed.
            conn.prepare_cached(
                "DELETE FROM deliveries WHERE message_id = ?1 AND state = 'waiting'",
            )?
            .execute([message.to_string()])?;
        }
        Change::Join {
            message,
            route,
            join,
            bytes,
        } => join_group(conn, *message, route, join, *bytes, now)?,
        Change::Members { group, text } => {
            let group = group.to_string();
            conn.prepare_cached(
                "INSERT INTO transitions (message_id, at, event, name, outcome, duration_us, detail)
                 SELECT i.message_id, ?3, 'state', NULL, 'aggregated', NULL, ?4
                 FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = ?1 AND i.value = ?2 AND m.state = 'aggregating'",
            )?
            .execute(params![plan::GROUP_FIELD, group, now, text])?;
            conn.prepare_cached(
                "UPDATE messages SET state = 'aggregated', updated_at = ?3, error = ?4
                 WHERE state = 'aggregating'
                   AND id IN (SELECT message_id FROM message_index WHERE name = ?1 AND value = ?2)",
            )?
            .execute(params![plan::GROUP_FIELD, group, now, text])?;
        }
    }
    Ok(())
}

/// A member joins the open group of its key (see [`plan::joined`]).
fn join_group(
    conn: &Connection,
    message: Uuid,
    route: &str,
    join: &crate::store::Join,
    bytes: u64,
    now: i64,
) -> rusqlite::Result<()> {
    let (group, members, total, timeout_at): (String, i64, i64, Option<i64>) = conn
        .prepare_cached(
            "INSERT INTO aggregates (group_id, route, key, open_key, members, bytes, opened_at, timeout_at)
             VALUES (?1, ?2, ?3, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT (route, open_key) DO UPDATE
               SET members = aggregates.members + 1, bytes = aggregates.bytes + excluded.bytes
             RETURNING group_id, members, bytes, timeout_at",
        )?
        .query_row(
            params![
                Uuid::now_v7().to_string(),
                route,
                join.key,
                bytes as i64,
                now,
                plan::group_timeout_at(join, now)
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let (members, total) = (members.max(0) as u64, total.max(0) as u64);
    let (due, completed) = plan::joined(join, members, total, timeout_at, now);
    conn.prepare_cached(
        "UPDATE aggregates SET due_at = ?2, completed_by = ?3,
           open_key = CASE WHEN ?3 IS NULL THEN open_key ELSE NULL END
         WHERE group_id = ?1",
    )?
    .execute(params![group, due, completed])?;
    let id = message.to_string();
    conn.prepare_cached("INSERT INTO message_index (name, value, message_id) VALUES (?1, ?2, ?3)")?
        .execute(params![plan::GROUP_FIELD, group, id])?;
    let group = parse_id(&group)?;
    transition(
        conn,
        &id,
        now,
        "aggregate",
        None,
        "joined",
        None,
        Some(&plan::join_text(group, &join.key, members, completed)),
    )
}

fn apply_all(
    conn: &Connection,
    plan: &[Change<'_>],
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<()> {
    plan.iter()
        .try_for_each(|c| apply(conn, c, now, node, lease))
}

/// Writes one new message (see [`plan::new_message`]).
fn insert_one(
    conn: &Connection,
    ins: &Insert,
    held: bool,
    now: i64,
    node: &str,
    lease: i64,
) -> rusqlite::Result<()> {
    apply_all(conn, &plan::new_message(ins, held), now, node, lease)
}

/// The first message of `route` stored under the search field `key`, if any.
/// The first message of `route` holding one of `keys` (see [`Key`]), with the key it holds.
fn first_with_keys<'k>(
    conn: &Connection,
    route: &str,
    keys: &'k [Key],
) -> rusqlite::Result<Option<(String, &'k Key)>> {
    for key in keys {
        let first: Option<String> = conn
            .prepare_cached(
                "SELECT i.message_id FROM message_index i JOIN messages m ON m.id = i.message_id
                 WHERE i.name = ?1 AND i.value = ?2 AND m.route = ?3 AND i.message_id >= ?4
                   AND (?5 OR m.state NOT IN ('failed', 'dead', 'duplicate'))
                 ORDER BY i.message_id LIMIT 1",
            )?
            .query_row(
                params![
                    key.name,
                    key.value,
                    route,
                    key.start().to_string(),
                    key.failures_count()
                ],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(first) = first {
            return Ok(Some((first, key)));
        }
    }
    Ok(None)
}

fn add_delivery(
    conn: &Connection,
    message: &str,
    route: &str,
    destination: &str,
    (kind, payload, line): (DeliveryKind, &str, Line),
    now: i64,
) -> rusqlite::Result<()> {
    if line == Line::InPlace {
        let kept = conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'pending', kind = ?3, payload = ?4, next_attempt_at = ?5, updated_at = ?5
                 WHERE message_id = ?1 AND destination = ?2 AND state = 'waiting'",
            )?
            .execute(params![message, destination, kind.as_str(), payload, now])?;
        if kept > 0 {
            return Ok(());
        }
    }
    let state = match line {
        Line::Kept => "waiting",
        Line::End | Line::InPlace => "pending",
    };
    conn.prepare_cached(
        "INSERT INTO deliveries (message_id, route, destination, kind, payload, state, next_attempt_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?
    .execute(params![message, route, destination, kind.as_str(), payload, state, now])?;
    Ok(())
}

fn set_state(
    conn: &Connection,
    id: &str,
    now: i64,
    state: MessageState,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE messages SET state = ?2, updated_at = ?3, error = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), now, error])?;
    Ok(())
}

const SELECT_PENDING: &str =
    "SELECT id, route, headers, body, received_at, resume_step, attempts FROM messages";

fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pending> {
    let id: String = r.get(0)?;
    Ok(Pending {
        msg: Message {
            id: parse_id(&id)?,
            route: r.get(1)?,
            headers: parse_headers(r.get(2)?),
            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default()),
            received_at: from_millis(r.get(4)?),
        },
        resume_step: r.get::<_, i64>(5)?.max(0) as usize,
        attempts: r.get::<_, i64>(6)?.max(0) as u32,
    })
}

/// A destination's due deliveries, in the order of `deliveries_due` (due time, then id), so
/// that a claim reads its batch and no more: ordered by id alone, every claim sorted the whole
/// due queue.
const DUE: &str = " WHERE d.route = ?1 AND d.destination = ?2 AND d.state = 'pending'
    AND d.next_attempt_at <= ?3 AND (d.owner IS NULL OR d.lease_until < ?3)
    ORDER BY d.next_attempt_at, d.id LIMIT ?4";

/// A FIFO destination's head: its oldest pending delivery (`deliveries_pending`) — unless a
/// place before it is kept for a message still in its steps (`deliveries_waiting`): then
/// nothing, until those steps end.
const HEAD: &str = " WHERE d.id = (SELECT id FROM deliveries WHERE route = ?1 AND destination = ?2
        AND state = 'pending' ORDER BY id LIMIT 1)
    AND NOT EXISTS (SELECT 1 FROM deliveries w WHERE w.route = ?1 AND w.destination = ?2
        AND w.state = 'waiting' AND w.id < d.id)";

const SELECT_DELIVERY: &str =
    "SELECT d.id, d.attempts, d.kind, d.next_attempt_at, m.id, m.received_at, m.error,
        CASE d.payload WHEN 'in' THEN m.headers ELSE m.out_headers END,
        CASE d.payload WHEN 'in' THEN m.body ELSE m.out_body END
     FROM deliveries d JOIN messages m ON m.id = d.message_id";

fn delivery_row(
    r: &rusqlite::Row<'_>,
    route: &str,
    destination: &str,
) -> rusqlite::Result<Delivery> {
    let kind: String = r.get(2)?;
    let id: String = r.get(4)?;
    Ok(Delivery {
        id: r.get(0)?,
        destination: destination.to_string(),
        kind: DeliveryKind::parse(&kind),
        attempts: r.get(1)?,
        next_attempt_at: from_millis(r.get(3)?),
        error: r.get(6)?,
        message: Message {
            id: parse_id(&id)?,
            route: route.to_string(),
            headers: parse_headers(r.get(7)?),
            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default()),
            received_at: from_millis(r.get(5)?),
        },
    })
}

const SELECT_STORED: &str =
    "SELECT id, route, route_version, state, headers, error, received_at, parent_id FROM messages";

fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let id: String = r.get(0)?;
    let state: String = r.get(3)?;
    Ok(StoredMessage {
        id: parse_id(&id)?,
        route: r.get(1)?,
        route_version: r.get(2)?,
        state: MessageState::parse(&state).unwrap_or(MessageState::Failed),
        headers: parse_headers(r.get(4)?),
        error: r.get(5)?,
        received_at: from_millis(r.get(6)?),
        parent: r
            .get::<_, Option<String>>(7)?
            .and_then(|p| Uuid::parse_str(&p).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every setting the store's durability and write path rely on is in force on both of its
    /// connections, not only the first of the batch of pragmas.
    #[test]
    fn connections_run_in_wal_with_full_sync_and_memory_temp_store() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
        assert_eq!(pragma("synchronous"), "Integer(2)", "FULL");
        assert_eq!(pragma("temp_store"), "Integer(2)", "MEMORY");
        assert_eq!(pragma("auto_vacuum"), "Integer(2)", "INCREMENTAL");
    }

    /// Claims and a FIFO head read their rows in an index's order: no sort of the queue,
    /// however long it is.
    #[test]
    fn delivery_queries_read_the_queue_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        migrate(&conn).unwrap();
        let due: &[&dyn rusqlite::ToSql] = &[&"r", &"to[0]", &0, &64];
        let head: &[&dyn rusqlite::ToSql] = &[&"r", &"to[0]"];
        for (query, args, index) in [
            (DUE, due, "deliveries_due"),
            (HEAD, head, "deliveries_pending"),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {SELECT_DELIVERY}{query}"))
                .unwrap()
                .query_map(args, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains(index), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            if query == HEAD {
                assert!(plan.contains("deliveries_waiting"), "{plan}");
            }
        }
    }
}
