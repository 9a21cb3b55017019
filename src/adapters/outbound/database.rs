//! Database outbound: runs a statement (insert, upsert, update, a procedure call) for each
//! message on a PostgreSQL or MySQL/MariaDB database, its `:name` parameters bound from the
//! message — never spliced into the SQL.
//!
//! Deliveries come in batches (up to 64): one transaction per batch, each message in its own
//! savepoint, so a message that breaks a constraint is undone alone and the others commit.
//! A delivery is done only after the commit. A constraint violation or a value the column
//! cannot take fails the delivery without retry (it goes dead, to the dead letter if there is
//! one); a lost connection, a timeout or a deadlock is retried with backoff.

use super::{Batching, DeliveryConfig, Outbound, SendError, Sent};
use crate::adapters::broker::Link;
use crate::adapters::database::{Database, DbError, Decimals, Params, Settings, Sql, Url};
use crate::config::values::Duration;
use crate::message::Message;
use crate::script::Script;
use crate::steps::map::{get, parse_path, Segment};
use crate::steps::BuildContext;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DatabaseOutbound")]
pub struct Config {
    /// The database: `postgres://user@host:5432/db` or `mysql://user:${DB_PASSWORD}@host:3306/db`
    /// (also `mariadb://`).
    pub url: Url,
    /// The statement run for each message, with `:name` parameters:
    /// `INSERT INTO orders (id, total) VALUES (:id, :total) ON CONFLICT (id) DO UPDATE …`.
    pub statement: String,
    /// Where each parameter's value comes from: a path in the JSON body (`order.id`,
    /// `items[0].sku`) or `= expression` in Rhai (`= headers["http.header.x-shop"]`,
    /// `= body.total * 100`, `= id` for the message id). A parameter not listed takes the
    /// body's top-level field of its own name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The longest a statement may run before the database cancels it (default `30s`); a
    /// cancelled batch is retried.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: Duration,
    /// A connection is replaced after this long (default `30m`).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Duration,
    /// Concurrency, ordering and retries (see `docs/delivery.md`).
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(30 * 60)
}

/// Where one parameter's value comes from.
enum Source {
    Path(Vec<Segment>),
    Expression(Script),
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<DatabaseOutbound> {
        let sql = Sql::parse(&self.statement).map_err(|e| anyhow::anyhow!("statement: {e}"))?;
        if let Some(n) = self.params.keys().find(|n| !sql.names.contains(n)) {
            anyhow::bail!("params.{n}: the statement has no parameter :{n}");
        }
        let limits = crate::script::Limits::default();
        let mut engine = None;
        let mut sources = Vec::with_capacity(sql.names.len());
        for name in &sql.names {
            let written = self.params.get(name).map(String::as_str).unwrap_or(name);
            let source = match written.trim_start().strip_prefix('=') {
                Some(expr) => {
                    let engine = engine
                        .get_or_insert_with(crate::steps::script_options::plain_engine)
                        .clone();
                    Source::Expression(Script::compile_expression(engine, &limits, expr).map_err(
                        |e| {
                            anyhow::anyhow!(
                                "params.{name}: expression error at line {}, column {}: {}",
                                e.line,
                                e.column,
                                e.message
                            )
                        },
                    )?)
                }
                None => Source::Path(
                    parse_path(written).map_err(|e| anyhow::anyhow!("params.{name}: {e}"))?,
                ),
            };
            sources.push((name.clone(), source));
        }
        Ok(DatabaseOutbound {
            db: Database::new(Settings {
                url: self.url.clone(),
                statement_timeout: self.statement_timeout.0,
                max_lifetime: self.max_lifetime.0,
                decimals: Decimals::String,
            }),
            sql,
            sources,
        })
    }
}

pub struct DatabaseOutbound {
    db: Database,
    sql: Sql,
    sources: Vec<(String, Source)>,
}

impl DatabaseOutbound {
    /// The statement's parameters for `msg`; an error names the parameter and the message.
    fn params(&self, msg: &Message) -> Result<Params, DbError> {
        let body: Option<Value> = serde_json::from_slice(&msg.body).ok();
        let mut dynamic = None;
        self.sources
            .iter()
            .map(|(name, source)| match source {
                Source::Path(path) => {
                    let body = body.as_ref().ok_or_else(|| {
                        DbError::permanent(format!(
                            "parameter :{name}: the body of message {} is not JSON; bind it with `= expression` in params",
                            msg.id
                        ))
                    })?;
                    get(body, path).cloned().ok_or_else(|| {
                        DbError::permanent(format!(
                            "parameter :{name}: message {} has no field `{}`",
                            msg.id,
                            path_text(path)
                        ))
                    })
                }
                Source::Expression(script) => {
                    let input = match &dynamic {
                        Some(d) => Ok(d),
                        None => crate::script::body_to_dynamic(msg)
                            .map(|d| &*dynamic.insert(d)),
                    }
                    .map_err(|e| DbError::permanent(format!("parameter :{name}: {e}")))?;
                    let (value, _) = script
                        .run(msg, input.clone())
                        .map_err(|e| DbError::permanent(format!("parameter :{name}: {e}")))?;
                    if value.is_unit() {
                        return Ok(Value::Null);
                    }
                    crate::script::to_json(&value)
                        .map_err(|e| DbError::permanent(format!("parameter :{name}: {e}")))
                }
            })
            .collect()
    }
}

fn path_text(path: &[Segment]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[async_trait]
impl Outbound for DatabaseOutbound {
    async fn send(&self, msg: &Message) -> Result<Sent, SendError> {
        self.send_batch(std::slice::from_ref(msg))
            .await
            .pop()
            .unwrap_or_else(|| Err(SendError::retryable("no result")))
    }

    fn batching(&self) -> Batching {
        Batching::Whole
    }

    fn link(&self) -> Option<Arc<Link>> {
        Some(self.db.link.clone())
    }

    async fn send_batch(&self, msgs: &[Message]) -> Vec<Result<Sent, SendError>> {
        let each = msgs.iter().map(|m| self.params(m)).collect();
        match self.db.execute_each(&self.sql, each).await {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    Ok(rows) => Ok(Sent(format!(
                        "{rows} row{} changed, committed",
                        if rows == 1 { "" } else { "s" }
                    ))),
                    Err(e) => Err(SendError {
                        message: e.message,
                        retryable: e.retryable,
                    }),
                })
                .collect(),
            // Nothing committed: a statement the database refuses (bad SQL) fails every
            // message alike; anything else is retried.
            Err(e) => msgs
                .iter()
                .map(|_| {
                    Err(SendError {
                        message: format!("the batch was not committed: {e}"),
                        retryable: e.retryable,
                    })
                })
                .collect(),
        }
    }
}
