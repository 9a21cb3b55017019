//! Calling out over HTTP: the request's URL built from its placeholders (values
//! percent-encoded), the request a cache tells apart, failures described for people, and
//! running the call from a step's thread.

use super::{Part, Transient};
use crate::steps::map::parse_path;
use crate::template::Template;

pub(super) fn parse_url(source: &str) -> Result<Vec<Part>, String> {
    crate::template::split(source, Part::Text, |name| {
        Ok(match name.strip_prefix("body.") {
            Some(path) => Part::Body(parse_path(path).map_err(|e| format!("url: {e}"))?),
            None => Part::Template(Template::parse(&format!("{{{{{name}}}}}"))?),
        })
    })
}

/// Percent-encodes all but the unreserved characters: a value is one path segment or query
/// value, whatever it holds.
pub(super) fn encode(value: &str) -> String {
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
pub(super) struct Request {
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<Vec<u8>>,
}

impl Request {
    pub(super) fn cache_key(&self) -> String {
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

pub(super) fn describe(e: &reqwest::Error) -> String {
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

pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        cut.push('…');
    }
    cut
}

/// Runs a future to completion from a step: on the engine's blocking threads through its
/// runtime; elsewhere (`switchyard test`) on a runtime of this module's own.
pub(super) fn run<T>(fut: impl std::future::Future<Output = T>) -> Result<T, Transient> {
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
