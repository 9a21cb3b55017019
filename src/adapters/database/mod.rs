//! Databases as systems to integrate (not the message store): the connection, the SQL with
//! named parameters and the column and parameter types shared by the `database` inbound (a
//! reader polling a query) and outbound (a writer running a statement per message), for
//! PostgreSQL ([`postgres`]) and MySQL/MariaDB ([`mysql`]).
//!
//! Statements are written once with named parameters (`:order_id`) for both databases and
//! always bound as parameters, never spliced into the SQL text, so a message's fields cannot
//! change a statement. Rows become JSON objects with exact types (see
//! `docs/adapters/database.md`).

pub mod mysql;
pub mod postgres;

use crate::adapters::broker::{Backoff, Link};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A database URL: `postgres://user@host:5432/db` (or `postgresql://`), or
/// `mysql://user:password@host:3306/db` (or `mariadb://`); checked while the route file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(String);

impl std::ops::Deref for Url {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Url {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        match Dialect::of(&url) {
            Some(_) => Ok(Url(url)),
            None => Err(serde::de::Error::custom(format!(
                "`{}` is not a database URL; write postgres://user@host:5432/database or mysql://user:password@host:3306/database",
                crate::adapters::broker::redact(&url)
            ))),
        }
    }
}

crate::config::schema::text_value!(
    Url,
    "A database URL: PostgreSQL or MySQL/MariaDB.",
    [
        "postgres://user@host:5432/database",
        "mysql://user:${DB_PASSWORD}@host:3306/database"
    ]
);

/// Which database speaks at the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl Dialect {
    pub fn of(url: &str) -> Option<Dialect> {
        let scheme = url.split_once("://")?.0;
        match scheme {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::Mysql),
            _ => None,
        }
    }
}

/// A statement with named parameters (`:name`), as each database wants it: `$1` … for
/// PostgreSQL (one number per name), `?` per occurrence for MySQL.
#[derive(Debug, Clone)]
pub struct Sql {
    /// The statement as written, for messages.
    pub text: String,
    /// PostgreSQL's form.
    pub numbered: String,
    /// MySQL's form.
    pub marked: String,
    /// The parameter names, each once, in the order of their first occurrence (`$1` is
    /// `names[0]`).
    pub names: Vec<String>,
    /// For MySQL: the name index of each `?`, in order.
    pub occurrences: Vec<usize>,
}

impl Sql {
    /// Finds the `:name` parameters, outside string literals, quoted identifiers and
    /// comments; `::` (a PostgreSQL cast) is not a parameter.
    pub fn parse(text: &str) -> Result<Sql, String> {
        let mut sql = Sql {
            text: text.to_string(),
            numbered: String::with_capacity(text.len()),
            marked: String::with_capacity(text.len()),
            names: Vec::new(),
            occurrences: Vec::new(),
        };
        let b = text.as_bytes();
        let mut i = 0;
        let mut copied = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'\'' | b'"' | b'`') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        // MySQL's backslash escapes; in PostgreSQL a backslash before the
                        // closing quote is rare enough not to matter here.
                        i += if b[i] == b'\\' && q == b'\'' { 2 } else { 1 };
                    }
                    if i >= b.len() {
                        return Err(format!(
                            "a {} is not closed",
                            if q == b'\'' { "string" } else { "quoted name" }
                        ));
                    }
                    i += 1;
                }
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                        i += 1;
                    }
                    i += 2;
                }
                b':' if b.get(i + 1) == Some(&b':') => i += 2,
                b':' if b
                    .get(i + 1)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
                {
                    let start = i + 1;
                    let mut end = start;
                    while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                        end += 1;
                    }
                    let name = &text[start..end];
                    let n = match sql.names.iter().position(|x| x == name) {
                        Some(n) => n,
                        None => {
                            sql.names.push(name.to_string());
                            sql.names.len() - 1
                        }
                    };
                    sql.numbered.push_str(&text[copied..i]);
                    sql.marked.push_str(&text[copied..i]);
                    sql.numbered.push_str(&format!("${}", n + 1));
                    sql.marked.push('?');
                    sql.occurrences.push(n);
                    copied = end;
                    i = end;
                }
                b'?' => {
                    return Err(
                        "write parameters by name (`:order_id`), not as `?`: the same statement then works on PostgreSQL and MySQL".into(),
                    )
                }
                _ => i += 1,
            }
        }
        let rest = &text[copied.min(text.len())..];
        sql.numbered.push_str(rest);
        sql.marked.push_str(rest);
        Ok(sql)
    }
}

/// How exact numbers (`numeric`, `decimal`) are written into a row's JSON.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Decimals {
    /// As strings (`"12.50"`), exact whatever their size (default).
    #[default]
    String,
    /// As JSON numbers (`12.50`), exact in the JSON text; readers that parse JSON numbers as
    /// doubles may round those beyond 15–17 digits.
    Number,
}

/// Why a statement failed, and whether trying again may help: a constraint violation or bad
/// data never goes through on a retry; a lost connection or a timeout may.
#[derive(Debug, Clone)]
pub struct DbError {
    pub message: String,
    pub retryable: bool,
}

impl DbError {
    pub fn retryable(message: impl Into<String>) -> DbError {
        DbError {
            message: message.into(),
            retryable: true,
        }
    }
    pub fn permanent(message: impl Into<String>) -> DbError {
        DbError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::error::Error for DbError {}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Connection settings shared by the reader and the writer.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Url,
    /// The longest a statement may run; the database cancels it after that.
    pub statement_timeout: Duration,
    /// A connection older than this is closed and a new one made (load balancers and
    /// failovers drop old connections silently).
    pub max_lifetime: Duration,
    pub decimals: Decimals,
}

/// One connection to the database, made on first use, remade after `max_lifetime` and after
/// an error that may have broken it; its state is shown in the admin API like a broker's.
pub struct Database {
    settings: Settings,
    dialect: Dialect,
    open: tokio::sync::Mutex<Option<(Connection, Instant)>>,
    pub link: Arc<Link>,
    backoff: std::sync::Mutex<(Instant, Backoff)>,
}

enum Connection {
    Postgres(postgres::Connection),
    Mysql(mysql::Connection),
}

/// A statement's parameters, in the order of [`Sql::names`].
pub type Params = Vec<Value>;

impl Database {
    pub fn new(settings: Settings) -> Database {
        let dialect = Dialect::of(&settings.url).unwrap_or(Dialect::Postgres);
        let link = Arc::new(Link::idle(crate::adapters::broker::redact(&settings.url)));
        Database {
            settings,
            dialect,
            open: tokio::sync::Mutex::new(None),
            link,
            backoff: std::sync::Mutex::new((Instant::now(), Backoff::default())),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection, made or remade first when needed (the guard always holds one).
    async fn connection(&self) -> Result<Guard<'_>, DbError> {
        let mut open = self.open.lock().await;
        if open
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= self.settings.max_lifetime)
        {
            *open = None;
        }
        if open.is_some() {
            return Ok(open);
        }
        let wait = self
            .backoff
            .lock()
            .map(|b| b.0.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(DbError::retryable(format!(
                "not connected to the database; the next attempt to connect is in {} ms",
                wait.as_millis()
            )));
        }
        self.link.connecting();
        let made = match self.dialect {
            Dialect::Postgres => postgres::Connection::open(&self.settings)
                .await
                .map(Connection::Postgres),
            Dialect::Mysql => mysql::Connection::open(&self.settings)
                .await
                .map(Connection::Mysql),
        };
        match made {
            Ok(c) => {
                self.link.up();
                if let Ok(mut b) = self.backoff.lock() {
                    b.1.reset();
                }
                *open = Some((c, Instant::now()));
                Ok(open)
            }
            Err(e) => {
                let wait = self
                    .backoff
                    .lock()
                    .map(|mut b| {
                        let w = b.1.wait();
                        b.0 = Instant::now() + w;
                        w
                    })
                    .unwrap_or(Backoff::MAX);
                self.link.down(&e.message, wait);
                Err(e)
            }
        }
    }

    /// Drops the connection after an error that may have broken it, so the next use
    /// reconnects.
    fn settle<T>(&self, open: &mut Guard<'_>, result: Result<T, DbError>) -> Result<T, DbError> {
        if let (Err(e), Some((conn, _))) = (&result, open.as_ref()) {
            let broken = match conn {
                Connection::Postgres(c) => c.is_closed(),
                Connection::Mysql(c) => c.is_closed(),
            };
            if broken {
                self.link.down(&e.message, Duration::ZERO);
                **open = None;
            }
        }
        result
    }

    /// Runs a query; each row as a JSON object, columns in their order.
    pub async fn query(
        &self,
        sql: &Sql,
        params: Params,
    ) -> Result<Vec<Map<String, Value>>, DbError> {
        let decimals = self.settings.decimals;
        let mut open = self.connection().await?;
        let result = match open.as_mut().map(|(c, _)| c) {
            Some(Connection::Postgres(c)) => c.query(sql, &params, decimals).await,
            Some(Connection::Mysql(c)) => c.query(sql, &params, decimals).await,
            None => Err(DbError::retryable("not connected to the database")),
        };
        self.settle(&mut open, result)
    }

    /// Runs `sql` once per parameter list in one transaction, each in a savepoint: one
    /// result per list, and `Err` for all when the transaction cannot commit. A list whose
    /// statement fails is undone alone; the others commit.
    pub async fn execute_each(
        &self,
        sql: &Sql,
        each: Vec<Result<Params, DbError>>,
    ) -> Result<Vec<Result<u64, DbError>>, DbError> {
        let mut open = self.connection().await?;
        let result = match open.as_mut().map(|(c, _)| c) {
            Some(Connection::Postgres(c)) => c.execute_each(sql, each).await,
            Some(Connection::Mysql(c)) => c.execute_each(sql, each).await,
            None => Err(DbError::retryable("not connected to the database")),
        };
        self.settle(&mut open, result)
    }
}

type Guard<'a> = tokio::sync::MutexGuard<'a, Option<(Connection, Instant)>>;

/// Database queries for the `enrich` step, which knows databases only by its `Query` trait:
/// each step gets a connection of its own, made on first use (exact numbers as strings, a
/// statement cancelled after 30 s, the connection remade every 30 minutes, as the database
/// adapters do by default).
pub fn enrich_queries() -> crate::steps::enrich::query::Connect {
    Arc::new(|url: &str, sql: &str| {
        if Dialect::of(url).is_none() {
            return Err(format!(
                "`{}` is not a database URL; write postgres://user@host:5432/database or mysql://user:password@host:3306/database",
                crate::adapters::broker::redact(url)
            ));
        }
        let sql = Sql::parse(sql).map_err(|e| format!("sql: {e}"))?;
        let db = Database::new(Settings {
            url: Url(url.to_string()),
            statement_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            decimals: Decimals::String,
        });
        Ok(Arc::new(EnrichQuery { db, sql }) as Arc<dyn crate::steps::enrich::query::Query>)
    })
}

struct EnrichQuery {
    db: Database,
    sql: Sql,
}

#[async_trait::async_trait]
impl crate::steps::enrich::query::Query for EnrichQuery {
    fn names(&self) -> &[String] {
        &self.sql.names
    }

    async fn rows(
        &self,
        values: Vec<Value>,
    ) -> Result<Vec<Map<String, Value>>, crate::steps::enrich::query::QueryError> {
        self.db.query(&self.sql, values).await.map_err(|e| {
            crate::steps::enrich::query::QueryError {
                message: e.message,
                transient: e.retryable,
            }
        })
    }
}

/// The parameters of `sql` taken from a JSON object by name; a name the object lacks is an
/// error naming it.
pub fn params_from(sql: &Sql, values: &Map<String, Value>, what: &str) -> Result<Params, String> {
    sql.names
        .iter()
        .map(|n| {
            values.get(n).cloned().ok_or_else(|| {
                format!("the statement's parameter :{n} is not a column of the {what}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_each_databases_placeholders() {
        let sql = Sql::parse(
            "SELECT ':no', \"a:b\", x::text -- :neither\n FROM t WHERE a = :a AND b = :b_1 OR a = :a /* :c */",
        )
        .unwrap();
        assert_eq!(sql.names, vec!["a", "b_1"]);
        assert_eq!(sql.occurrences, vec![0, 1, 0]);
        assert!(sql
            .numbered
            .ends_with("WHERE a = $1 AND b = $2 OR a = $1 /* :c */"));
        assert!(sql
            .marked
            .ends_with("WHERE a = ? AND b = ? OR a = ? /* :c */"));
        assert!(sql.numbered.contains("x::text"));
        assert!(Sql::parse("SELECT 'open").is_err());
        assert!(Sql::parse("SELECT * FROM t WHERE a = ?").is_err());
    }
}
