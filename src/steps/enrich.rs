//! `enrich`: the content enricher. Calls an HTTP endpoint with a request built from the
//! message and puts the answer into the JSON body at a path.
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

use super::map::{parse_path, set, Segment};
use super::{BuildError, Step, StepError};
use crate::message::Message;
use crate::route::values::Duration;
use crate::template::Template;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The URL: text with placeholders — `{{body.PATH}}` (a value of the JSON body, percent-
    /// encoded), `{{header.NAME}}` (percent-encoded), and the other template placeholders.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: Method,
    /// Request headers (values may use the template placeholders).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// For `POST`: the JSON body path sent as the request body (`$` for the whole body).
    #[serde(default)]
    pub send: Option<String>,
    /// Where the answer goes in the JSON body (`customer`, `order.customer`); created when
    /// missing, replaced when there. A JSON answer goes in as JSON, any other as text.
    pub into: String,
    /// What a 404 means: `fail` (default) the message, or `skip`: leave the body as it is.
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

impl Config {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// Written `GET` / `POST` as the HTTP destination's `method`, or `get` / `post` as
/// `http_poll`'s.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    #[serde(alias = "get")]
    Get,
    #[serde(alias = "post")]
    Post,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    #[default]
    Fail,
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
    url: Vec<Part>,
    method: Method,
    headers: Vec<(String, Template)>,
    send: Option<Vec<Segment>>,
    into: Vec<Segment>,
    into_name: String,
    not_found: NotFound,
    retry: Retry,
    client: reqwest::Client,
    cache: Option<Cache>,
}

impl Config {
    pub fn build(&self) -> Result<Enrich, BuildError> {
        let url = parse_url(&self.url).map_err(BuildError::new)?;
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(BuildError::new(format!(
                "url `{}` must start with http:// or https://",
                self.url
            )));
        }
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)))
            .collect::<Result<_, _>>()
            .map_err(|e| BuildError::new(format!("headers: {e}")))?;
        let send = match (&self.send, self.method) {
            (Some(p), Method::Post) => {
                Some(parse_path(p).map_err(|e| BuildError::new(format!("send: {e}")))?)
            }
            (Some(_), Method::Get) => return Err(BuildError::new("`send` needs `method: POST`")),
            (None, _) => None,
        };
        let into = parse_path(&self.into).map_err(|e| BuildError::new(format!("into: {e}")))?;
        if self.retry.max_attempts == 0 {
            return Err(BuildError::new("retry.max_attempts must be at least 1"));
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout.0)
            .build()
            .map_err(|e| BuildError::new(format!("cannot make an HTTP client: {e}")))?;
        Ok(Enrich {
            url,
            method: self.method,
            headers,
            send,
            into,
            into_name: self.into.clone(),
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

fn parse_url(source: &str) -> Result<Vec<Part>, String> {
    crate::template::split(source, Part::Text, |name| {
        Ok(match name.strip_prefix("body.") {
            Some(path) => Part::Body(parse_path(path).map_err(|e| format!("url: {e}"))?),
            None => Part::Template(Template::parse(&format!("{{{{{name}}}}}"))?),
        })
    })
}

/// Percent-encodes all but the unreserved characters: a value is one path segment or query
/// value, whatever it holds.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The request of one message: URL, headers, body.
struct Request {
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn cache_key(&self) -> String {
        format!(
            "{}\n{:?}\n{}",
            self.url,
            self.headers,
            self.body
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        )
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
    fn call(&self, req: &Request) -> Result<(u16, Bytes), String> {
        let mut wait = self.retry.backoff.0;
        let mut attempt = 1;
        loop {
            match run(self.send_once(req)) {
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
struct Transient(String);

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        cut.push('…');
    }
    cut
}

/// Runs a future to completion from a step: on the engine's blocking threads through its
/// runtime; elsewhere (`switchyard test`) on a runtime of this module's own.
fn run<T>(fut: impl std::future::Future<Output = T>) -> Result<T, Transient> {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        return Ok(handle.block_on(fut));
    }
    static OWN: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let rt = OWN.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
    });
    match rt {
        Some(rt) => Ok(rt.block_on(fut)),
        None => Err(Transient("cannot start an async runtime".into())),
    }
}

impl Step for Enrich {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let mut body: Value = serde_json::from_slice(&msg.body).map_err(|e| {
            StepError(format!(
                "the body is not JSON ({e}); enrich puts its answer into a JSON body"
            ))
        })?;
        let req = self.request(msg, Some(&body))?;
        let cached = self.cache.as_ref().and_then(|c| c.get(&req.cache_key()));
        let (status, answer, from_cache) = match cached {
            Some((status, answer)) => (status, answer, true),
            None => {
                let (status, answer) = self
                    .call(&req)
                    .map_err(|e| StepError(format!("{} {}: {e}", method(self.method), req.url)))?;
                (status, answer, false)
            }
        };
        let name = &self.into_name;
        msg.headers
            .insert(format!("enrich.{name}.url"), req.url.clone());
        msg.headers
            .insert(format!("enrich.{name}.status"), status.to_string());
        if from_cache {
            msg.headers
                .insert(format!("enrich.{name}.cached"), "true".into());
        }
        match status {
            200..=299 => {}
            404 if self.not_found == NotFound::Skip => return Ok(()),
            _ => {
                return Err(StepError(format!(
                    "{} {} answered HTTP {status}: {}",
                    method(self.method),
                    req.url,
                    excerpt(&answer)
                )))
            }
        }
        if !from_cache {
            if let Some(c) = &self.cache {
                c.put(req.cache_key(), status, answer.clone());
            }
        }
        let value = serde_json::from_slice(&answer)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
        set(&mut body, &self.into, value).map_err(StepError)?;
        msg.body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        msg.headers
            .insert("content-type".into(), "application/json".into());
        Ok(())
    }
}

fn method(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
    }
}

/// Answers by request, each for `ttl`, at most `max` of them (the oldest go first).
struct Cache {
    ttl: std::time::Duration,
    max: usize,
    entries: Mutex<Entries>,
}

/// The answers by request (when stored, status, body), and the requests oldest first.
type Entries = (HashMap<String, (Instant, u16, Bytes)>, VecDeque<String>);

impl Cache {
    fn new(ttl: std::time::Duration, max: usize) -> Cache {
        Cache {
            ttl,
            max: max.max(1),
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn get(&self, key: &str) -> Option<(u16, Bytes)> {
        let entries = self.entries.lock().ok()?;
        entries
            .0
            .get(key)
            .filter(|(at, _, _)| at.elapsed() < self.ttl)
            .map(|(_, status, body)| (*status, body.clone()))
    }

    fn put(&self, key: String, status: u16, body: Bytes) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let (map, order) = &mut *entries;
        if map
            .insert(key.clone(), (Instant::now(), status, body))
            .is_none()
        {
            order.push_back(key);
        }
        while map.len() > self.max {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_url_takes_encoded_values_from_the_body_and_headers() {
        let e = config("url: http://crm/customers/{{body.order.customer}}?src={{header.source}}\ninto: customer\n")
            .build()
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
        ] {
            let e = config(yaml).build().err().unwrap().message;
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
