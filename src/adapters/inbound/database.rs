//! Database inbound: polls a query on a PostgreSQL or MySQL/MariaDB database of another
//! system; each row becomes a JSON message (or each poll's rows one message).
//!
//! Two ways not to read a row twice, one of them chosen per route:
//! - `mark`: a statement run in the source database for each row (`UPDATE orders SET
//!   exported = true WHERE id = :id`) once the row's message is committed to the store. A
//!   crash between the two reads the row again; its `key` makes it a recorded `duplicate`,
//!   not a second delivery.
//! - `watermark`: the position after the last row read — a composite of the query's order
//!   columns, such as `(updated_at, id)`, never a bare timestamp — is written to the store in
//!   the same transaction as the message of the poll's last row, and bound as the query's
//!   parameters on the next poll. The poll's other rows are committed before that one; a
//!   crash before it reads them again, and their `key` makes them duplicates.
//!
//! On a shared store one node reads at a time (like a shared directory) and another takes
//! over when it dies.

use super::{Inbound, Intake, Submitted};
use crate::adapters::broker::Link;
use crate::adapters::database::{params_from, Database, Decimals, Settings, Sql, Url};
use crate::config::values::Duration;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The search field holding a row's key (`[17]`, the `key` columns' values as JSON).
pub const KEY_NAME: &str = "database_key";
/// The name of a route's watermark among its inbound positions in the store.
const POSITION: &str = "database";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DatabaseInbound")]
pub struct Config {
    /// The database: `postgres://user@host:5432/db` (`?sslmode=verify-full&sslrootcert=ca.pem`
    /// for TLS) or `mysql://user:${DB_PASSWORD}@host:3306/db` (also `mariadb://`).
    pub url: Url,
    /// The query run on each poll, with `ORDER BY` and `LIMIT`. Its `:name` parameters are
    /// the watermark's columns (`WHERE (updated_at, id) > (:updated_at, :id)`).
    pub query: String,
    /// The columns that identify a row as read: a row read again with the same values is
    /// recorded as a `duplicate` and not delivered again. The primary key in mark mode (plus
    /// a version column if a row may be marked for reading again after a change); in
    /// watermark mode the watermark's columns by default, so a changed row (a new
    /// `updated_at`) is a new message.
    #[serde(default)]
    pub key: Vec<String>,
    /// Mark mode: a statement run in the source database for each row once its message is
    /// committed; its `:name` parameters are the row's columns
    /// (`UPDATE orders SET exported = true WHERE id = :id`).
    #[serde(default)]
    pub mark: Option<String>,
    /// Watermark mode: the position after the last row is kept in the store.
    #[serde(default)]
    pub watermark: Option<Watermark>,
    /// The wait after a poll that found no rows (default `5s`); after a poll that found
    /// some, the next runs at once, so a backlog is read as fast as it is stored.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// `row` (default): each row is a message; `poll`: the rows of one poll are one message,
    /// a JSON array.
    #[serde(default)]
    pub each: Each,
    /// `numeric`/`decimal` columns as exact `string`s (default) or as JSON `number`s.
    #[serde(default)]
    pub decimals: Decimals,
    /// The longest the query (or a mark) may run before the database cancels it (default
    /// `30s`).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: Duration,
    /// A connection is replaced after this long (default `30m`).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Duration,
    /// Rows being stored at once (default 64).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
}

/// Where the next poll starts: after the last row read, by these columns.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// The query's `ORDER BY` columns, compared as one composite: `[updated_at, id]`. A
    /// timestamp alone misses rows that share one with the last row read.
    pub columns: Vec<String>,
    /// The position before the first row, a value per column
    /// (`{ updated_at: "1970-01-01T00:00:00Z", id: 0 }`).
    pub start: Map<String, Value>,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Each {
    #[default]
    Row,
    Poll,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_prefetch() -> usize {
    64
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<DatabaseInbound> {
        let query = Sql::parse(&self.query).map_err(|e| anyhow::anyhow!("query: {e}"))?;
        let mark = match (&self.mark, &self.watermark) {
            (Some(_), Some(_)) | (None, None) => anyhow::bail!(
                "give either `mark` (a statement that marks each row as read) or `watermark` (the columns that order the rows), one of them"
            ),
            (Some(m), None) => Some(Sql::parse(m).map_err(|e| anyhow::anyhow!("mark: {e}"))?),
            (None, Some(_)) => None,
        };
        let key = match (&self.watermark, self.key.is_empty()) {
            (Some(w), true) => w.columns.clone(),
            (None, true) => anyhow::bail!(
                "`key` names no column; name the columns that identify a row (its primary key)"
            ),
            (_, false) => self.key.clone(),
        };
        match &self.watermark {
            Some(w) => {
                if w.columns.is_empty() {
                    anyhow::bail!("watermark.columns names no column");
                }
                if let Some(c) = w.columns.iter().find(|c| !w.start.contains_key(*c)) {
                    anyhow::bail!("watermark.start has no value for column `{c}`");
                }
                if let Some(n) = query.names.iter().find(|n| !w.columns.contains(n)) {
                    anyhow::bail!("query: the parameter :{n} is not a watermark column");
                }
            }
            None if !query.names.is_empty() => anyhow::bail!(
                "query: parameters (:{}) are for watermark columns; in mark mode the query has none",
                query.names[0]
            ),
            None => {}
        }
        if self.prefetch == 0 {
            anyhow::bail!("prefetch must be at least 1");
        }
        Ok(DatabaseInbound {
            config: Config {
                key,
                ..self.clone()
            },
            db: Arc::new(Database::new(Settings {
                url: self.url.clone(),
                statement_timeout: self.statement_timeout.0,
                max_lifetime: self.max_lifetime.0,
                decimals: self.decimals,
            })),
            query,
            mark,
        })
    }
}

pub struct DatabaseInbound {
    config: Config,
    db: Arc<Database>,
    query: Sql,
    mark: Option<Sql>,
}

#[async_trait]
impl Inbound for DatabaseInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.db.link.owned_by(&intake.route, "from");
        let mut idle = false;
        loop {
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.interval.0) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            if shutdown.is_cancelled() {
                return Ok(());
            }
            idle = match self.poll(&intake).await {
                Ok(read) => read == 0,
                Err(e) => {
                    tracing::warn!(route = %intake.route, error = %e,
                        "database poll failed; trying again after the interval");
                    true
                }
            };
        }
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        // The row stays in the source database; the failure is recorded in the store.
        Ok(())
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.db.link.clone())
    }
}

impl DatabaseInbound {
    /// One poll: reads rows, commits them, then marks them (mark mode). Returns the number
    /// of rows read.
    async fn poll(&self, intake: &Intake) -> anyhow::Result<usize> {
        let params = match &self.config.watermark {
            Some(w) => {
                let position = match intake.position(POSITION).await? {
                    Some(text) => {
                        serde_json::from_str::<Map<String, Value>>(&text).map_err(|e| {
                            anyhow::anyhow!(
                                "the stored watermark `{text}` is not a JSON object: {e}"
                            )
                        })?
                    }
                    None => w.start.clone(),
                };
                params_from(&self.query, &position, "watermark").map_err(anyhow::Error::msg)?
            }
            None => Vec::new(),
        };
        let rows = self.db.query(&self.query, params).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = rows
            .iter()
            .map(|r| self.key_of(r))
            .collect::<Result<_, _>>()?;
        let position = match &self.config.watermark {
            Some(w) => {
                let last = rows.last().map(|r| self.position_of(w, r)).transpose()?;
                last.map(|p| (POSITION.to_string(), p))
            }
            None => None,
        };
        match self.config.each {
            Each::Row => self.submit_rows(intake, &rows, &keys, position).await?,
            Each::Poll => {
                let body = serde_json::to_vec(&rows)?;
                let key = format!("{}..{}", keys[0], keys[keys.len() - 1]);
                submit(intake, Bytes::from(body), key, position).await?;
            }
        }
        if let Some(mark) = &self.mark {
            let each = rows
                .iter()
                .map(|r| {
                    params_from(mark, r, "row")
                        .map_err(crate::adapters::database::DbError::permanent)
                })
                .collect();
            let results = self.db.execute_each(mark, each).await.map_err(|e| {
                anyhow::anyhow!("the rows are stored but could not be marked ({e}); they are read again and recorded as duplicates")
            })?;
            for (result, key) in results.iter().zip(&keys) {
                if let Err(e) = result {
                    tracing::warn!(route = %intake.route, key = %key, error = %e,
                        "row stored but not marked; it is read again and recorded as a duplicate");
                }
            }
        }
        Ok(rows.len())
    }

    /// Commits each row as a message, `prefetch` at a time; the last only after all the
    /// others, with the watermark, so the stored position never passes an uncommitted row.
    async fn submit_rows(
        &self,
        intake: &Intake,
        rows: &[Map<String, Value>],
        keys: &[String],
        position: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut running = JoinSet::new();
        let last = rows.len() - 1;
        for (row, key) in rows[..last].iter().zip(keys) {
            while running.len() >= self.config.prefetch {
                joined(running.join_next().await)?;
            }
            let (intake, key) = (intake.clone(), key.clone());
            let body = Bytes::from(serde_json::to_vec(row)?);
            running.spawn(async move { submit(&intake, body, key, None).await });
        }
        while let Some(done) = running.join_next().await {
            joined(Some(done))?;
        }
        let body = Bytes::from(serde_json::to_vec(&rows[last])?);
        submit(intake, body, keys[last].clone(), position).await
    }

    fn key_of(&self, row: &Map<String, Value>) -> anyhow::Result<String> {
        let values: Vec<&Value> = self
            .config
            .key
            .iter()
            .map(|c| {
                row.get(c).ok_or_else(|| {
                    anyhow::anyhow!("the key column `{c}` is not among the query's columns")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(serde_json::to_string(&values)?)
    }

    fn position_of(&self, w: &Watermark, row: &Map<String, Value>) -> anyhow::Result<String> {
        let mut position = Map::new();
        for c in &w.columns {
            let v = row.get(c).ok_or_else(|| {
                anyhow::anyhow!("the watermark column `{c}` is not among the query's columns")
            })?;
            position.insert(c.clone(), v.clone());
        }
        Ok(serde_json::to_string(&position)?)
    }
}

fn joined(done: Option<Result<anyhow::Result<()>, tokio::task::JoinError>>) -> anyhow::Result<()> {
    match done {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(anyhow::anyhow!("storing a row failed: {e}")),
        None => Ok(()),
    }
}

async fn submit(
    intake: &Intake,
    body: Bytes,
    key: String,
    position: Option<(String, String)>,
) -> anyhow::Result<()> {
    let mut headers = Headers::new();
    headers.insert("content-type".into(), "application/json".into());
    headers.insert("database.key".into(), key.clone());
    match intake
        .submit_at(headers, body, Some((KEY_NAME.to_string(), key)), position)
        .await?
    {
        Submitted::New(_) | Submitted::Duplicate { .. } => Ok(()),
    }
}
