//! The plain answers both of Switchyard's HTTP servers give — the HTTP inbound and the admin
//! API: a body with its content type, a JSON value, and `{"error": "…"}`. The admin API boxes
//! them (`.map(BodyExt::boxed)`), since its console also streams server-sent events.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// A whole answer, its body in memory.
pub type Answer = Response<Full<Bytes>>;

/// `body` with its content type (left out if `content_type` is not a valid header value).
pub fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// A JSON value.
pub fn json(status: StatusCode, value: serde_json::Value) -> Answer {
    answer(status, "application/json", value.to_string())
}

/// `{"error": text}`: what went wrong, for a person to read.
pub fn error(status: StatusCode, text: impl std::fmt::Display) -> Answer {
    json(status, serde_json::json!({ "error": text.to_string() }))
}
