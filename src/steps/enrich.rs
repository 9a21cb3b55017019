//! `enrich`: the content enricher. Asks a backend — an HTTP endpoint (`url`), a database
//! (`query`), a TCP/MLLP system (`tcp`), or a named endpoint of one of those kinds
//! (`endpoint`, resolved by the route file) — with a request built from the message, and puts
//! the answer into the JSON body at a path (or in place of the body: `into: $`).
//!
//! ```yaml
//! - enrich:
//!     url: "${CRM_URL}/customers/{{body.order.customer}}"
//!     headers: { authorization: "Bearer ${CRM_TOKEN}" }
//!     into: customer
//!     cache: { ttl: 5m, max_entries: 10000 }
//! ```
//!
//! The one step that waits on I/O: it runs on the engine's blocking threads like every step,
//! bounded by the route's `concurrency`. Transient failures (no connection, a timeout, 5xx,
//! 429) are retried inside the step (`retry`); after the last try, and at once for any other
//! answer, the step fails and the route's `on_error.transform` decides (fail, dead letter, or
//! retry the steps later with backoff).

mod cache;
pub mod query;
mod request;
pub mod tcp;

use cache::Cache;
use request::{describe, encode, excerpt, parse_url, run, Request};

use super::map::{parse_path, set, Segment};
use super::script_options::scripted_step_config;
use super::{BuildContext, BuildError, Step, StepError};
use crate::config::values::Duration;
use crate::message::Message;
use crate::template::Template;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

scripted_step_config! {
    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "EnrichStep")]
    pub struct Config {
        /// An HTTP backend's URL: text with placeholders — `{{body.PATH}}` (a value of the JSON
        /// body, percent-encoded), `{{header.NAME}}` (percent-encoded), and the other template
        /// placeholders. One of `url`, `query`, `tcp` or `endpoint`.
        #[serde(default)]
        pub url: Option<String>,
        /// A database query whose row (or rows) is the answer.
        #[serde(default)]
        pub query: Option<query::Config>,
        /// A TCP backend (MLLP or another framing) that answers each request with one frame.
        #[serde(default)]
        pub tcp: Option<tcp::Config>,
        /// A named endpoint (`adapters/NAME.yaml`) of kind `http` (its URL and headers), `tcp`
        /// (its host, port, framing, charset) or `database` (its URL, with `query.sql` here).
        #[serde(default)]
        pub endpoint: Option<String>,
        /// `GET` (default) or `POST`.
        #[serde(default)]
        pub method: Method,
        /// Request headers (values may use the template placeholders).
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
        /// What is sent: for HTTP `POST`, the JSON body path sent as the request body (`$` for the
        /// whole body); for `tcp`, the body path whose value is sent (a string as it is, other
        /// JSON as JSON text) — without it, the whole body as text (an HL7 message, say).
        #[serde(default)]
        pub send: Option<String>,
        /// Where the answer goes in the JSON body (`customer`, `order.customer`); created when
        /// missing, replaced when there. A JSON answer goes in as JSON, any other as text. `$`
        /// replaces the whole body with the answer (then the body need not be JSON). Or:
        #[serde(default)]
        pub into: Option<String>,
        /// A Rhai script that merges the answer itself: `answer` holds it (a map or array when
        /// JSON, else a string), `body` and `headers` the message as for a `transform`; the script
        /// sets `body` (and may change `headers`).
        #[serde(default)]
        pub merge: Option<String>,
        /// What "not found" (HTTP 404, no row) means: `fail` (default) the message, or `skip`:
        /// leave the body as it is.
        #[serde(default)]
        pub not_found: NotFound,
        /// How long to wait for the whole answer (default `10s`).
        #[serde(default = "Config::default_timeout")]
        pub timeout: Duration,
        /// Transient failures tried again inside the step before it fails.
        #[serde(default)]
        pub retry: Retry,
        /// Answers kept for the same request, so that a busy route does not call per message.
        #[serde(default)]
        pub cache: Option<CacheConfig>,
    }
}

impl Config {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// Written `GET` / `POST` as the HTTP destination's `method`, or `get` / `post` as
/// `http_poll`'s.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
#[schemars(rename = "EnrichMethod")]
pub enum Method {
    #[default]
    #[serde(alias = "get")]
    Get,
    #[serde(alias = "post")]
    Post,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    #[default]
    Fail,
    Skip,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Tries in all, the first included (default 3).
    pub max_attempts: u32,
    /// Wait before the second try (default `200ms`), doubling after each.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is used (e.g. `5m`).
    pub ttl: Duration,
    /// Answers kept at most; the oldest go first (default 10000).
    #[serde(default = "CacheConfig::default_entries")]
    pub max_entries: usize,
}

impl CacheConfig {
    fn default_entries() -> usize {
        10_000
    }
}

/// One piece of the URL.
#[derive(Debug)]
enum Part {
    Text(String),
    Body(Vec<Segment>),
    /// Any other placeholder, rendered by the template module.
    Template(Template),
}

pub struct Enrich {
    source: Source,
    url: Vec<Part>,
    method: Method,
    headers: Vec<(String, Template)>,
    send: Option<Vec<Segment>>,
    into: Vec<Segment>,
    into_name: String,
    merge: Option<crate::script::Script>,
    not_found: NotFound,
    retry: Retry,
    timeout: std::time::Duration,
    client: reqwest::Client,
    cache: Option<Cache>,
}

/// Which kind of backend answers.
enum Source {
    Http,
    Tcp(Box<tcp::Exchange>),
    Query(query::Lookup),
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Enrich, BuildError> {
        let given = [self.url.is_some(), self.query.is_some(), self.tcp.is_some()];
        if self.endpoint.is_some() {
            return Err(BuildError::new(
                "`endpoint` is resolved when the route file is read; build the route with `switchyard check`",
            ));
        }
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(BuildError::new(
                "give exactly one backend: `url` (HTTP), `query` (a database), `tcp`, or `endpoint` (a named one)",
            ));
        }
        let source = match (&self.query, &self.tcp) {
            (Some(q), _) => {
                if self.send.is_some() {
                    return Err(BuildError::new(
                        "`send` is for HTTP and TCP; a query takes its values through `query.params`",
                    ));
                }
                Source::Query(
                    q.build(cx.databases.as_ref())
                        .map_err(|e| BuildError::new(format!("query: {e}")))?,
                )
            }
            (None, Some(t)) => Source::Tcp(Box::new(
                t.build()
                    .map_err(|e| BuildError::new(format!("tcp: {e}")))?,
            )),
            (None, None) => Source::Http,
        };
        let url_text = self.url.clone().unwrap_or_default();
        let url = parse_url(&url_text).map_err(BuildError::new)?;
        if matches!(source, Source::Http)
            && !url_text.starts_with("http://")
            && !url_text.starts_with("https://")
        {
            return Err(BuildError::new(format!(
                "url `{url_text}` must start with http:// or https://"
            )));
        }
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)))
            .collect::<Result<_, _>>()
            .map_err(|e| BuildError::new(format!("headers: {e}")))?;
        let send = match (&self.send, self.method, &source) {
            (Some(p), Method::Post, _) | (Some(p), _, Source::Tcp(_)) => {
                Some(parse_path(p).map_err(|e| BuildError::new(format!("send: {e}")))?)
            }
            (Some(_), Method::Get, _) => {
                return Err(BuildError::new("`send` needs `method: POST`"))
            }
            (None, _, _) => None,
        };
        let (into, merge) = match (&self.into, &self.merge) {
            (Some(into), None) => (
                parse_path(into).map_err(|e| BuildError::new(format!("into: {e}")))?,
                None,
            ),
            (None, Some(script)) => {
                let options = self.script_options();
                let script = crate::script::Script::compile_declaring(
                    options.engine(cx)?,
                    options.limits,
                    script,
                    &["answer"],
                )
                .map_err(|e| BuildError {
                    message: format!("merge: script syntax error: {}", e.message),
                    script: Some(super::ScriptPosition {
                        file: None,
                        line: e.line,
                        column: e.column,
                    }),
                })?;
                (Vec::new(), Some(script))
            }
            _ => {
                return Err(BuildError::new(
                    "say where the answer goes: `into` (a path, or `$` for the whole body) or `merge` (a script), one of them",
                ))
            }
        };
        if self.retry.max_attempts == 0 {
            return Err(BuildError::new("retry.max_attempts must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout.0)
            .build()
            .map_err(|e| BuildError::new(format!("cannot make an HTTP client: {e}")))?;
        Ok(Enrich {
            source,
            timeout: self.timeout.0,
            url,
            method: self.method,
            headers,
            send,
            into,
            into_name: self.into.clone().unwrap_or_else(|| "answer".into()),
            merge,
            not_found: self.not_found,
            retry: self.retry.clone(),
            client,
            cache: self
                .cache
                .as_ref()
                .map(|c| Cache::new(c.ttl.0, c.max_entries)),
        })
    }
}

impl Enrich {
    fn request(&self, msg: &Message, body: Option<&Value>) -> Result<Request, String> {
        let mut url = String::new();
        for part in &self.url {
            match part {
                Part::Text(t) => url.push_str(t),
                Part::Template(t) => url.push_str(&encode(&t.render(msg))),
                Part::Body(path) => {
                    let v = body
                        .and_then(|b| super::map::get(b, path))
                        .ok_or_else(|| "the url takes a value from the body, which has none at that path (or is not JSON)".to_string())?;
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Null | Value::Array(_) | Value::Object(_) => {
                            return Err(format!(
                                "the url takes a value from the body, which is {v} there, not a string or number"
                            ))
                        }
                        other => other.to_string(),
                    };
                    url.push_str(&encode(&text));
                }
            }
        }
        let headers = self
            .headers
            .iter()
            .map(|(k, t)| (k.clone(), t.render(msg)))
            .collect();
        let body = match &self.send {
            None => None,
            Some(path) => {
                let v = body
                    .and_then(|b| super::map::get(b, path))
                    .ok_or("`send` names a part of the body that is not there")?;
                Some(serde_json::to_vec(v).unwrap_or_default())
            }
        };
        Ok(Request { url, headers, body })
    }

    /// One call, with the step's retries of transient failures.
    fn with_retries<T, F: std::future::Future<Output = Result<T, Transient>>>(
        &self,
        call: impl Fn() -> F,
    ) -> Result<T, String> {
        let mut wait = self.retry.backoff.0;
        let mut attempt = 1;
        loop {
            match run(call()) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Transient(e))) | Err(Transient(e)) if attempt >= self.retry.max_attempts => {
                    return Err(match attempt {
                        1 => e,
                        n => format!("{e} (after {n} tries)"),
                    });
                }
                Ok(Err(Transient(_))) | Err(Transient(_)) => {
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// The answer (cached, or asked for now) to `key`: `(status, body)`; `ask` runs with the
    /// step's retries, and an answer is cached unless `keep` says not to.
    fn cached_or(
        &self,
        key: String,
        ask: impl FnOnce() -> Result<(u16, Bytes), String>,
        keep: impl Fn(u16) -> bool,
    ) -> Result<(u16, Bytes, bool), String> {
        if let Some((status, answer)) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return Ok((status, answer, true));
        }
        let (status, answer) = ask()?;
        if keep(status) {
            if let Some(c) = &self.cache {
                c.put(key, status, answer.clone());
            }
        }
        Ok((status, answer, false))
    }

    /// An HTTP backend's answer: `None` for a 404.
    fn fetch_http(&self, msg: &mut Message, body: Option<&Value>) -> Result<Option<Value>, String> {
        let req = self.request(msg, body)?;
        let label = format!("{} {}", method(self.method), req.url);
        let (status, answer, cached) = self
            .cached_or(
                req.cache_key(),
                || self.with_retries(|| self.send_once(&req)),
                |status| (200..300).contains(&status),
            )
            .map_err(|e| format!("{label}: {e}"))?;
        let name = &self.into_name;
        msg.headers
            .insert(format!("enrich.{name}.url"), req.url.clone());
        msg.headers
            .insert(format!("enrich.{name}.status"), status.to_string());
        if cached {
            msg.headers
                .insert(format!("enrich.{name}.cached"), "true".into());
        }
        match status {
            200..=299 => Ok(Some(answer_value(&answer))),
            404 if self.not_found == NotFound::Skip => Ok(None),
            _ => Err(format!(
                "{label} answered HTTP {status}: {}",
                excerpt(&answer)
            )),
        }
    }

    async fn send_once(&self, req: &Request) -> Result<(u16, Bytes), Transient> {
        let mut builder = match self.method {
            Method::Get => self.client.get(&req.url),
            Method::Post => self.client.post(&req.url),
        };
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(body) = &req.body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let answer = builder.send().await.map_err(|e| Transient(describe(&e)))?;
        let status = answer.status().as_u16();
        let body = answer.bytes().await.map_err(|e| Transient(describe(&e)))?;
        if status == 429 || status >= 500 {
            return Err(Transient(format!("HTTP {status}: {}", excerpt(&body))));
        }
        Ok((status, body))
    }
}

/// A failure worth another try.
pub struct Transient(pub String);

impl Step for Enrich {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let whole = self.into.is_empty();
        let body = match serde_json::from_slice::<Value>(&msg.body) {
            Ok(v) => Some(v),
            Err(_) if whole => None,
            Err(e) => {
                return Err(StepError(format!(
                    "the body is not JSON ({e}); enrich puts its answer into a JSON body (or in place of the body: `into: $`)"
                )))
            }
        };
        let found = match &self.source {
            Source::Http => self.fetch_http(msg, body.as_ref()),
            Source::Tcp(t) => self.fetch_tcp(t, msg, body.as_ref()),
            Source::Query(q) => self.fetch_query(q, msg, body.as_ref()),
        }
        .map_err(StepError)?;
        // Not found, and `not_found: skip`: the body stays as it is.
        let Some(value) = found else {
            return Ok(());
        };
        if let Some(script) = &self.merge {
            let answer = serde_json::from_value::<rhai::Dynamic>(value)
                .map_err(|e| StepError(format!("the answer cannot be given to `merge`: {e}")))?;
            let current = crate::script::body_to_dynamic(msg)?;
            let (_, mut scope) = script
                .run_with(msg, current, vec![("answer", answer)])
                .map_err(|e| StepError(format!("merge: {e}")))?;
            crate::script::write_back(msg, &mut scope)?;
            return Ok(());
        }
        match (whole, value, body) {
            // In place of the body: text stays text (an HL7 answer, say).
            (true, Value::String(text), _) => {
                msg.body = Bytes::from(text.into_bytes());
                msg.headers
                    .insert("content-type".into(), "text/plain".into());
            }
            (_, value, body) => {
                let mut body = body.unwrap_or(Value::Null);
                set(&mut body, &self.into, value).map_err(StepError)?;
                msg.body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                msg.headers
                    .insert("content-type".into(), "application/json".into());
            }
        }
        Ok(())
    }
}

/// An answer as it goes into the body: JSON as JSON, anything else as text.
fn answer_value(answer: &[u8]) -> Value {
    serde_json::from_slice(answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(answer).into_owned()))
}

fn method(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        crate::config::yaml::parse_str(yaml).unwrap()
    }

    #[test]
    fn the_url_takes_encoded_values_from_the_body_and_headers() {
        let e = config("url: http://crm/customers/{{body.order.customer}}?src={{header.source}}\ninto: customer\n")
            .build(&BuildContext::new("."))
            .unwrap();
        let mut msg = Message::new(
            "r",
            Bytes::from_static(br#"{"order": {"customer": "A/7 b"}}"#),
        );
        msg.headers.insert("source".into(), "web shop".into());
        let body: Value = serde_json::from_slice(&msg.body).unwrap();
        let req = e.request(&msg, Some(&body)).unwrap();
        assert_eq!(req.url, "http://crm/customers/A%2F7%20b?src=web%20shop");
        let missing = Value::Object(Default::default());
        let err = e.request(&msg, Some(&missing)).err().unwrap();
        assert!(err.contains("has none at that path"), "{err}");
    }

    #[test]
    fn mistakes_are_found_when_the_route_loads() {
        for (yaml, wanted) in [
            ("url: ftp://x\ninto: a\n", "must start with http"),
            ("url: http://x/{{body.a\ninto: a\n", "never closed"),
            ("url: http://x/{{nope}}\ninto: a\n", "nope"),
            ("url: http://x\ninto: a\nsend: $\n", "needs `method: POST`"),
            ("url: http://x\n", "say where the answer goes"),
            (
                "url: http://x\ninto: a\nmerge: 'body = 1;'\n",
                "say where the answer goes",
            ),
            ("url: http://x\nmerge: 'body = ;'\n", "syntax error"),
            ("into: a\n", "exactly one backend"),
        ] {
            let e = config(yaml)
                .build(&BuildContext::new("."))
                .err()
                .unwrap()
                .message;
            assert!(e.contains(wanted), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_cache_keeps_answers_for_their_ttl_and_at_most_max() {
        let c = Cache::new(std::time::Duration::from_secs(60), 2);
        c.put("a".into(), 200, Bytes::from_static(b"1"));
        c.put("b".into(), 200, Bytes::from_static(b"2"));
        c.put("c".into(), 200, Bytes::from_static(b"3"));
        assert!(c.get("a").is_none(), "the oldest went first");
        assert_eq!(c.get("c").unwrap().1, Bytes::from_static(b"3"));
        let short = Cache::new(std::time::Duration::ZERO, 2);
        short.put("a".into(), 200, Bytes::new());
        assert!(short.get("a").is_none(), "expired");
    }
}
