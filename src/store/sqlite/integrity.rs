//! Damage in the SQLite store file: finding it (a bounded quick check at start, a periodic
//! one while running, a full one on demand) and, once found, writing nothing more into the
//! file, so that what is there can still be recovered.

use super::{sql_err, StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// How long the check at start may read before the engine starts anyway. A quick check reads
/// every page: on this budget a few gigabytes of store; a bigger one is checked while running
/// (`store_check_every`) or with `switchyard store check`.
pub const START_BUDGET: Duration = Duration::from_secs(10);

/// What becomes of a store found damaged while the engine runs.
pub const WRITES_STOPPED: &str =
    "Intake is paused and nothing more is written to it; stop the engine.";

/// Problems a check reports at most; the first few say what is needed.
const MAX_PROBLEMS: usize = 20;

/// What a check found.
#[derive(Debug, PartialEq)]
pub enum Checked {
    Sound,
    Damaged(Vec<String>),
    /// The budget ran out first; nothing wrong in what was read.
    Unfinished,
}

/// True for the errors SQLite gives when it meets a damaged page or a file that is not (or no
/// longer) a database.
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Reads the store at `path` on a read-only connection — nothing in the file changes —
/// with `PRAGMA integrity_check` (`full`) or `quick_check`, for at most `budget`.
pub fn check_file(path: &Path, full: bool, budget: Option<Duration>) -> StoreResult<Checked> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError(format!("cannot open {} to check it: {e}", path.display())))?;
    // The budget: a watchdog interrupts the check unless told it finished.
    let (finished, done) = std::sync::mpsc::channel::<()>();
    if let Some(budget) = budget {
        let interrupt = conn.get_interrupt_handle();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(budget) {
                interrupt.interrupt();
            }
        });
    }
    let pragma = if full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let found = conn
        .prepare(&format!("PRAGMA {pragma}({MAX_PROBLEMS})"))
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    drop(finished);
    match found {
        Ok(lines) if lines == ["ok"] => Ok(Checked::Sound),
        Ok(lines) => Ok(Checked::Damaged(lines)),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Ok(Checked::Unfinished)
        }
        Err(e) if is_damage(&e) => Ok(Checked::Damaged(vec![e.to_string()])),
        Err(e) => Err(sql_err(e)),
    }
}

/// What to tell an operator about damage in `path`: what was found, what became of the file
/// (`state`), and what to do.
pub fn report(path: &Path, problems: &[String], state: &str) -> String {
    let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
    let more = problems.len().saturating_sub(shown.len());
    format!(
        "the store {} is damaged: {}{}. {state} Keep the file with its -wal and -shm files, and restore the latest backup or recover what it holds (docs/store.md, \"A damaged store\")",
        path.display(),
        shown.join("; "),
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        }
    )
}

/// Damage seen in this store, once: from then on every write is refused with its report.
#[derive(Default)]
pub struct Damage(Mutex<Option<String>>);

impl Damage {
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|d| d.clone())
    }

    /// Records the damage (the first report wins) and logs it once.
    pub fn set(&self, report: String) {
        let Ok(mut d) = self.0.lock() else { return };
        if d.is_none() {
            tracing::error!(event = "store damaged", problem = %report, "the store is damaged; intake stops");
            *d = Some(report);
        }
    }

    /// Records `e` when it is damage; passes it on either way.
    pub fn note(&self, path: &Path, e: rusqlite::Error) -> rusqlite::Error {
        if is_damage(&e) {
            self.set(report(path, &[e.to_string()], WRITES_STOPPED));
        }
        e
    }

    /// Keeps a connection from writing into the file when it closes: the last connection to a
    /// WAL database copies the log into the file at close, which must not happen to a damaged
    /// one (the log may hold the only good copy of recent pages).
    pub fn seal(&self, conn: &Connection) {
        if self.get().is_some() {
            let _ = conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
        }
    }
}
