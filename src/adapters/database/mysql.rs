//! MySQL and MariaDB for the `database` adapters (mysql_async): columns read into JSON by
//! their type, parameters sent as the JSON value's own type (the server converts them, as it
//! does for literals), transactions with a savepoint per message. The session runs in UTC,
//! so `TIMESTAMP` columns read as UTC times.

use super::{DbError, Decimals, Params, Settings, Sql};
use base64::Engine as _;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Row, Value as My};
use serde_json::{Map, Number, Value};

pub struct Connection {
    conn: mysql_async::Conn,
    /// The last error broke the connection: the next use makes a new one.
    broken: bool,
}

/// The character set number of binary strings (`BINARY`, `VARBINARY`, `BLOB`).
const BINARY: u16 = 63;

impl Connection {
    pub async fn open(settings: &Settings) -> Result<Connection, DbError> {
        let url = match settings.url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => settings.url.to_string(),
        };
        let opts = mysql_async::Opts::from_url(&url).map_err(|e| {
            DbError::permanent(format!(
                "bad MySQL URL {}: {e}",
                crate::adapters::broker::redact(&settings.url)
            ))
        })?;
        let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| {
            DbError::retryable(format!(
                "cannot connect to MySQL at {}: {e}",
                crate::adapters::broker::redact(&settings.url)
            ))
        })?;
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(error)?;
        // MariaDB's statement limit is in seconds and covers every statement; MySQL's is in
        // milliseconds and covers SELECT only.
        let timeout = settings.statement_timeout;
        let mariadb = format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64());
        if conn.query_drop(mariadb).await.is_err() {
            conn.query_drop(format!(
                "SET SESSION max_execution_time = {}",
                timeout.as_millis()
            ))
            .await
            .map_err(error)?;
        }
        Ok(Connection {
            conn,
            broken: false,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.broken
    }

    fn fail(&mut self, e: mysql_async::Error) -> DbError {
        self.broken |= e.is_fatal() || !matches!(e, mysql_async::Error::Server(_));
        error(e)
    }

    pub async fn query(
        &mut self,
        sql: &Sql,
        params: &Params,
        decimals: Decimals,
    ) -> Result<Vec<Map<String, Value>>, DbError> {
        let rows: Vec<Row> = match self.conn.exec(&sql.marked, bind(sql, params)).await {
            Ok(rows) => rows,
            Err(e) => return Err(self.fail(e)),
        };
        Ok(rows
            .iter()
            .map(|row| {
                row.columns_ref()
                    .iter()
                    .enumerate()
                    .map(|(i, column)| {
                        let value = row
                            .as_ref(i)
                            .map_or(Value::Null, |v| json(v, column, decimals));
                        (column.name_str().into_owned(), value)
                    })
                    .collect()
            })
            .collect())
    }

    pub async fn execute_each(
        &mut self,
        sql: &Sql,
        each: Vec<Result<Params, DbError>>,
    ) -> Result<Vec<Result<u64, DbError>>, DbError> {
        let outcome = self.transaction(sql, each).await;
        if outcome.is_err() && !self.broken {
            // Whatever the transaction did is undone; the connection stays usable.
            let _ = self.conn.query_drop("ROLLBACK").await;
        }
        outcome
    }

    async fn transaction(
        &mut self,
        sql: &Sql,
        each: Vec<Result<Params, DbError>>,
    ) -> Result<Vec<Result<u64, DbError>>, DbError> {
        // First without savepoints: a third of the round trips. Only if a statement fails is
        // the batch run again with a savepoint per message, so the failing one is undone alone.
        if let Some(results) = self.all_or_nothing(sql, &each).await? {
            return Ok(results);
        }
        if let Err(e) = self.conn.query_drop("START TRANSACTION").await {
            return Err(self.fail(e));
        }
        let mut results = Vec::with_capacity(each.len());
        for params in each {
            let params = match params {
                Ok(p) => p,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            // A savepoint per message: a constraint violation undoes that message alone.
            if let Err(e) = self.conn.query_drop("SAVEPOINT switchyard").await {
                return Err(self.fail(e));
            }
            match self.conn.exec_drop(&sql.marked, bind(sql, &params)).await {
                Ok(()) => results.push(Ok(self.conn.affected_rows())),
                Err(e) => {
                    let failed = self.fail(e);
                    if self.broken {
                        return Err(failed);
                    }
                    if let Err(e) = self
                        .conn
                        .query_drop("ROLLBACK TO SAVEPOINT switchyard")
                        .await
                    {
                        return Err(self.fail(e));
                    }
                    results.push(Err(failed));
                }
            }
        }
        if let Err(e) = self.conn.query_drop("COMMIT").await {
            return Err(self.fail(e));
        }
        Ok(results)
    }
}

impl Connection {
    /// The batch in one transaction, no savepoints; `None` (rolled back) when a statement
    /// failed.
    async fn all_or_nothing(
        &mut self,
        sql: &Sql,
        each: &[Result<Params, DbError>],
    ) -> Result<Option<Vec<Result<u64, DbError>>>, DbError> {
        if let Err(e) = self.conn.query_drop("START TRANSACTION").await {
            return Err(self.fail(e));
        }
        let mut results = Vec::with_capacity(each.len());
        for params in each {
            match params {
                Ok(p) => match self.conn.exec_drop(&sql.marked, bind(sql, p)).await {
                    Ok(()) => results.push(Ok(self.conn.affected_rows())),
                    Err(e) => {
                        let failed = self.fail(e);
                        if self.broken {
                            return Err(failed);
                        }
                        if let Err(e) = self.conn.query_drop("ROLLBACK").await {
                            return Err(self.fail(e));
                        }
                        return Ok(None);
                    }
                },
                Err(e) => results.push(Err(e.clone())),
            }
        }
        if let Err(e) = self.conn.query_drop("COMMIT").await {
            return Err(self.fail(e));
        }
        Ok(Some(results))
    }
}

/// The server's reason, classified: data and constraint errors and bad statements are
/// permanent; lost connections, timeouts, deadlocks and the rest may pass on a retry.
fn error(e: mysql_async::Error) -> DbError {
    match &e {
        mysql_async::Error::Server(s) => {
            let text = format!(
                "MySQL: {} (error {}, SQLSTATE {})",
                s.message, s.code, s.state
            );
            // Bad values that strict mode reports as HY000: no default for a column, a wrong
            // integer, a value out of range, a date that is not one, too long for the column.
            let bad_data = [
                1048, 1054, 1064, 1146, 1264, 1292, 1364, 1366, 1406, 1452, 1062, 3140,
            ];
            if ["22", "23", "42"].iter().any(|p| s.state.starts_with(p))
                || bad_data.contains(&s.code)
            {
                DbError::permanent(text)
            } else {
                DbError::retryable(text)
            }
        }
        mysql_async::Error::Url(u) => DbError::permanent(format!("bad MySQL URL: {u}")),
        other => DbError::retryable(format!("MySQL: {other}")),
    }
}

fn bind(sql: &Sql, params: &Params) -> mysql_async::Params {
    if sql.occurrences.is_empty() {
        return mysql_async::Params::Empty;
    }
    mysql_async::Params::Positional(
        sql.occurrences
            .iter()
            .map(|&n| params.get(n).map_or(My::NULL, param))
            .collect(),
    )
}

fn param(value: &Value) -> My {
    match value {
        Value::Null => My::NULL,
        Value::Bool(b) => My::Int(*b as i64),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => My::Int(i),
            (None, Some(u), _) => My::UInt(u),
            // Exact text for what does not fit a 64-bit integer (a DECIMAL column takes it).
            _ => My::Bytes(n.to_string().into_bytes()),
        },
        Value::String(s) => My::Bytes(s.clone().into_bytes()),
        other => My::Bytes(other.to_string().into_bytes()),
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

fn json(value: &My, column: &Column, decimals: Decimals) -> Value {
    match value {
        My::NULL => Value::Null,
        My::Int(i) => (*i).into(),
        My::UInt(u) => (*u).into(),
        My::Float(f) => float(*f as f64),
        My::Double(d) => float(*d),
        My::Bytes(b) => bytes(b, column, decimals),
        My::Date(y, mo, d, h, mi, s, us) => {
            if column.column_type() == ColumnType::MYSQL_TYPE_DATE {
                Value::String(format!("{y:04}-{mo:02}-{d:02}"))
            } else {
                let frac = fraction(*us, column);
                Value::String(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}"))
            }
        }
        My::Time(negative, days, h, mi, s, us) => {
            let hours = *days as u64 * 24 + *h as u64;
            let sign = if *negative { "-" } else { "" };
            let frac = fraction(*us, column);
            Value::String(format!("{sign}{hours:02}:{mi:02}:{s:02}{frac}"))
        }
    }
}

/// Fractional seconds as the column declares them (`DATETIME(3)`: `.123`).
fn fraction(us: u32, column: &Column) -> String {
    let digits = match column.decimals() {
        d @ 1..=6 => d as usize,
        _ if us != 0 => 6,
        _ => return String::new(),
    };
    let text = format!("{us:06}");
    format!(".{}", &text[..digits])
}

fn bytes(b: &[u8], column: &Column, decimals: Decimals) -> Value {
    match column.column_type() {
        ColumnType::MYSQL_TYPE_NEWDECIMAL | ColumnType::MYSQL_TYPE_DECIMAL => {
            let text = String::from_utf8_lossy(b).into_owned();
            match decimals {
                Decimals::String => Value::String(text),
                Decimals::Number => serde_json::from_str::<Number>(&text)
                    .map(Value::Number)
                    .unwrap_or(Value::String(text)),
            }
        }
        ColumnType::MYSQL_TYPE_JSON => serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
        ColumnType::MYSQL_TYPE_BIT if b.len() <= 8 => {
            Value::from(b.iter().fold(0u64, |n, byte| (n << 8) | *byte as u64))
        }
        _ if column.character_set() == BINARY
            && !column.flags().contains(ColumnFlags::NUM_FLAG) =>
        {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        _ => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        },
    }
}
