//! The embedded SQLite store (WAL, `synchronous=FULL`).
//!
//! All writes go through one writer thread with group commit (`writer`): one fsync covers
//! many messages, and no caller hears "stored" before it is. Reads use a second connection,
//! which WAL lets run beside the writer.

use super::plan::{self, Change, Line};
use super::*;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod changes;
mod integrity;
mod log_writes;
mod maintenance;
mod operations;
mod processing;
mod schema;
mod writer;

use changes::*;
use schema::*;

use integrity::Damage;
pub use integrity::{check_file, report as damage_report, Checked};
use writer::Jobs;

pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<Jobs>>,
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
    // Each commit's log frames go to the file in one write (`log_writes`).
    let conn = if log_writes::register() {
        Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), log_writes::NAME)?
    } else {
        Connection::open(path)?
    };
    conn.busy_timeout(Duration::from_secs(10))?;
    // FULL: a commit survives power loss, not only a process crash — "stored" must mean stored.
    // auto_vacuum first: it only takes on a new database, and only before WAL mode is set;
    // it lets retention hand freed pages back to the file system (the file shrinks).
    // temp_store=MEMORY: a statement that may fail halfway keeps its undo pages in memory,
    // not in a temporary file created for it.
    // wal_autocheckpoint=8192: a connection that commits copies the log into the database
    // every 32 MiB of log instead of every 4 MiB (fewer copies of the same hot pages). The
    // store's writer replaces this with its checkpointer thread (`writer`).
    conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA journal_size_limit=67108864; PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint=8192;")?;
    // A statement keeps the plan it was prepared with. Without this, SQLite compiles a
    // statement again whenever a bound value might change its plan — the delivery claim, with
    // a new `now` on every run: 4% of the store writer's CPU went to parsing it again.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Every statement the hot path runs stays prepared (rusqlite keeps 16 by default; the
    // writer alone runs more than that, the history's multi-row inserts among them).
    conn.set_prepared_statement_cache_capacity(64);
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
             UPDATE deliveries SET owner = NULL, lease_until = NULL WHERE state = 'pending' AND owner IS NOT NULL;
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

        let damage = Arc::new(Damage::default());
        let (tx, writer) = writer::start(conn, path, damage.clone())?;
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
        writer::write(jobs, f).await
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
    let (mut delivery, headers) = unparsed_delivery_row(r, route, destination)?;
    delivery.message.headers = parse_headers(headers);
    Ok(delivery)
}

/// [`delivery_row`] with the message's headers as stored (JSON text), left for the caller to
/// parse: a claim runs on the store's one writer thread, which every commit waits for, and
/// parsing a batch's headers there cost 2% of its time (docs/performance.md).
fn unparsed_delivery_row(
    r: &rusqlite::Row<'_>,
    route: &str,
    destination: &str,
) -> rusqlite::Result<(Delivery, Option<String>)> {
    let kind: String = r.get(2)?;
    let id: String = r.get(4)?;
    let delivery = Delivery {
        id: r.get(0)?,
        destination: destination.to_string(),
        kind: DeliveryKind::parse(&kind),
        attempts: r.get(1)?,
        next_attempt_at: from_millis(r.get(3)?),
        error: r.get(6)?,
        message: Message {
            id: parse_id(&id)?,
            route: route.to_string(),
            headers: Headers::new(),
            body: Bytes::from(r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default()),
            received_at: from_millis(r.get(5)?),
        },
    };
    Ok((delivery, r.get(7)?))
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
        assert_eq!(pragma("wal_autocheckpoint"), "Integer(8192)");
    }

    /// SQLite's plan for `query` with `args`, one line per step.
    fn query_plan(conn: &Connection, query: &str, args: &[&dyn rusqlite::ToSql]) -> String {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {query}"))
            .unwrap()
            .query_map(args, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        plan.join("\n")
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
            let plan = query_plan(&conn, &format!("{SELECT_DELIVERY}{query}"), args);
            assert!(plan.contains(index), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            if query == HEAD {
                assert!(plan.contains("deliveries_waiting"), "{plan}");
            }
        }
    }

    /// The statements that record a whole batch of attempts at once find each of their rows
    /// through a key, however many rows the tables hold.
    #[test]
    fn batch_statements_seek_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        migrate(&conn).unwrap();
        let ids: &[&dyn rusqlite::ToSql] = &[&"[\"a\"]"];
        let end: &[&dyn rusqlite::ToSql] = &[&"[\"a\"]", &"delivered", &0];
        let claim: &[&dyn rusqlite::ToSql] = &[&"[1]", &"node", &0];
        for (query, args, key) in [
            (processing::COUNT_OPEN, ids, "deliveries_message"),
            (processing::END_MESSAGES, end, "sqlite_autoindex_messages_1"),
            (processing::CLAIM_ROWS, claim, "INTEGER PRIMARY KEY"),
        ] {
            let plan = query_plan(&conn, query, args);
            assert!(plan.contains(key), "{query}\n{plan}");
            assert!(!plan.contains("SCAN messages"), "{plan}");
            assert!(!plan.contains("SCAN deliveries"), "{plan}");
        }
    }

    /// The queries by a state read the state indexes, which hold every message but the
    /// delivered (`schema::NOT_DELIVERED`): each must repeat the indexes' condition, or SQLite
    /// reads the whole route.
    #[test]
    fn queries_by_state_read_the_partial_state_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        migrate(&conn).unwrap();
        let claim: &[&dyn rusqlite::ToSql] = &[&"r", &0, &64];
        let count: &[&dyn rusqlite::ToSql] = &[&"r", &"failed", &""];
        let delivered: &[&dyn rusqlite::ToSql] = &[&"r", &""];
        for (query, args, index) in [
            (
                format!("{SELECT_PENDING}{}", processing::RECEIVED),
                claim,
                "messages_route_state",
            ),
            (
                operations::COUNT_STATE.to_string(),
                count,
                "messages_route_state",
            ),
            (
                operations::COUNT_DELIVERED.to_string(),
                delivered,
                "messages_route_id",
            ),
            (
                operations::COUNT_DELIVERED.to_string(),
                delivered,
                "messages_route_state",
            ),
        ] {
            let plan = query_plan(&conn, &query, args);
            assert!(plan.contains(index), "{query}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            assert!(!plan.lines().any(|l| l == "SCAN messages"), "{plan}");
        }
        let plan = query_plan(
            &conn,
            &format!("{SELECT_PENDING}{}", processing::SCHEDULED),
            &[&"r", &0, &64],
        );
        assert!(!plan.contains("SCAN messages"), "{plan}");
    }

    /// A store written at version 8 (full state indexes) is upgraded at start, and its
    /// messages are counted and claimed alike through the partial indexes.
    #[test]
    fn a_version_8_store_is_upgraded_to_partial_state_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 8) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; INSERT INTO schema_version (version) VALUES ({v}); COMMIT;"
            ))
            .unwrap();
        }
        for (id, state) in [
            ("a", "delivered"),
            ("b", "failed"),
            ("c", "received"),
            ("d", "delivered"),
        ] {
            conn.execute(
                "INSERT INTO messages (id, route, route_version, state, received_at, updated_at, headers)
                 VALUES (?1, 'r', 'v', ?2, 0, 0, '{}')",
                params![id, state],
            )
            .unwrap();
        }
        migrate(&conn).unwrap();
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 9);
        let count = |state: &str| -> i64 {
            conn.query_row(operations::COUNT_STATE, ["r", state, ""], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count("failed"), count("received")), (1, 1));
        let delivered: i64 = conn
            .query_row(operations::COUNT_DELIVERED, ["r", ""], |r| r.get(0))
            .unwrap();
        assert_eq!(delivered, 2);
        let claimed: Vec<String> = conn
            .prepare(&format!("SELECT id FROM messages{}", processing::RECEIVED))
            .unwrap()
            .query_map(params!["r", 0, 10], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(claimed, ["c"]);
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// The claim runs several times a second per destination with a new `now` each time: it
    /// must run the plan it was prepared with, not be compiled again for every value.
    #[test]
    fn the_claim_is_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("s.db")).unwrap();
        migrate(&conn).unwrap();
        let mut stmt = conn.prepare(&format!("{SELECT_DELIVERY}{DUE}")).unwrap();
        for now in 0..10i64 {
            let mut rows = stmt.query(params!["r", "to[0]", now, 64]).unwrap();
            while rows.next().unwrap().is_some() {}
        }
        let reprepared = stmt.get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(reprepared, 0);
    }
}
