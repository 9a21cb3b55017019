//! `enrich` from a database: a query with named parameters (`:customer`) whose values come
//! from the message's JSON body, and its row (or rows) as the answer. The connection is made
//! by the layer that owns database connections (the adapters) and handed in through the
//! step's build context, so this step knows databases only by this module's trait.

use super::super::map::{get, parse_path, Segment};
use super::Transient;
use crate::message::Message;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "QueryEnrich")]
pub struct Config {
    /// `postgres://user@host:5432/db` or `mysql://user:password@host:3306/db` — or leave it
    /// out and name a `database` endpoint with the step's `endpoint`.
    #[serde(default)]
    pub database: Option<String>,
    /// The query, with named parameters (`SELECT name, credit_limit FROM customers WHERE id =
    /// :customer`); always bound as parameters, never spliced into the text.
    pub sql: String,
    /// Where each parameter's value is in the JSON body, by name (`customer: order.customer`).
    /// A parameter not listed takes the body's top-level field of its name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `first` (default): the first row, as an object — no row is "not found"; `all`: every
    /// row, as an array (possibly empty).
    #[serde(default)]
    pub rows: Rows,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Rows {
    #[default]
    First,
    All,
}

/// Why a query failed, and whether trying again may help (a lost connection, a timeout).
#[derive(Debug, Clone)]
pub struct QueryError {
    pub message: String,
    pub transient: bool,
}

/// A query against a database.
#[async_trait::async_trait]
pub trait Query: Send + Sync {
    /// The parameter names, in the order [`Query::rows`] takes their values.
    fn names(&self) -> &[String];
    /// The rows for these values, each a JSON object.
    async fn rows(&self, values: Vec<Value>) -> Result<Vec<Map<String, Value>>, QueryError>;
}

/// Makes a [`Query`] from a database URL and the SQL (checking both).
pub type Connect = Arc<dyn Fn(&str, &str) -> Result<Arc<dyn Query>, String> + Send + Sync>;

/// A built lookup: the query and where each of its values comes from.
pub struct Lookup {
    pub query: Arc<dyn Query>,
    sources: Vec<(String, Vec<Segment>)>,
    pub rows: Rows,
}

impl Config {
    pub fn build(&self, connect: Option<&Connect>) -> Result<Lookup, String> {
        let url = self.database.as_deref().ok_or(
            "query.database is missing: give a database URL, or name a database endpoint with `endpoint`",
        )?;
        let connect = connect.ok_or("database queries cannot be made here")?;
        let query = connect(url, &self.sql)?;
        for name in self.params.keys() {
            if !query.names().contains(name) {
                return Err(format!(
                    "query.params.{name}: the query has no parameter :{name} (it has: {})",
                    query
                        .names()
                        .iter()
                        .map(|n| format!(":{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let sources = query
            .names()
            .iter()
            .map(|n| {
                let path = self.params.get(n).map_or(n.as_str(), String::as_str);
                parse_path(path)
                    .map(|p| (n.clone(), p))
                    .map_err(|e| format!("query.params.{n}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Lookup {
            query,
            sources,
            rows: self.rows,
        })
    }
}

impl Lookup {
    /// The values asked for, for messages: `:customer = "C-9"`.
    pub fn describe(&self, body: Option<&Value>) -> String {
        self.sources
            .iter()
            .map(|(name, path)| {
                let v = body
                    .and_then(|b| get(b, path))
                    .map_or("nothing".into(), Value::to_string);
                format!(":{name} = {v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The query's values from the body, in the query's order.
    pub fn values(&self, body: Option<&Value>) -> Result<Vec<Value>, String> {
        self.sources
            .iter()
            .map(|(name, path)| {
                body.and_then(|b| get(b, path)).cloned().ok_or_else(|| {
                    format!("the query's parameter :{name} takes a value from the body, which has none there (or is not JSON)")
                })
            })
            .collect()
    }
}

impl super::Enrich {
    /// A database's row (`rows: first`; `None` when there is none) or rows (`rows: all`).
    pub(super) fn fetch_query(
        &self,
        lookup: &Lookup,
        msg: &mut Message,
        body: Option<&Value>,
    ) -> Result<Option<Value>, String> {
        let values = lookup.values(body)?;
        let key = serde_json::to_string(&values).unwrap_or_default();
        let (status, answer, cached) = self
            .cached_or(
                key,
                || {
                    let rows = self.with_retries(|| async {
                        match lookup.query.rows(values.clone()).await {
                            Ok(rows) => Ok(Ok(rows)),
                            Err(e) if e.transient => Err(Transient(e.message)),
                            // Not worth another try (bad SQL, a type the column refuses).
                            Err(e) => Ok(Err(e.message)),
                        }
                    })??;
                    let value = match lookup.rows {
                        Rows::All => Value::Array(rows.into_iter().map(Value::Object).collect()),
                        Rows::First => match rows.into_iter().next() {
                            Some(row) => Value::Object(row),
                            None => return Ok((404, Bytes::new())),
                        },
                    };
                    Ok((
                        200,
                        Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
                    ))
                },
                |_| true,
            )
            .map_err(|e| format!("query: {e}"))?;
        let name = &self.into_name;
        if cached {
            msg.headers
                .insert(format!("enrich.{name}.cached"), "true".into());
        }
        if status == 404 {
            msg.headers
                .insert(format!("enrich.{name}.rows"), "0".into());
            return match self.not_found {
                super::NotFound::Skip => Ok(None),
                super::NotFound::Fail => Err(format!(
                    "query: no row for {} (set `not_found: skip` to go on without)",
                    lookup.describe(body)
                )),
            };
        }
        let value = super::answer_value(&answer);
        let rows = value.as_array().map_or(1, Vec::len);
        msg.headers
            .insert(format!("enrich.{name}.rows"), rows.to_string());
        Ok(Some(value))
    }
}
