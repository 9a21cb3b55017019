//! The message that flows through a route: an id, the route it belongs to, string headers and a
//! body of bytes. Cheap to clone: the body is reference-counted.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::SystemTime;
use uuid::Uuid;

pub type Headers = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct Message {
    /// Time-ordered (UUIDv7), so ids sort in arrival order.
    pub id: Uuid,
    pub route: String,
    pub headers: Headers,
    pub body: Bytes,
    pub received_at: SystemTime,
}

impl Message {
    pub fn new(route: &str, body: Bytes) -> Message {
        Message {
            id: Uuid::now_v7(),
            route: route.to_string(),
            headers: Headers::new(),
            body,
            received_at: SystemTime::now(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Where a message is in its life. All but the first two are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Stored; the steps have not completed yet (or will run again later).
    Received,
    /// Steps done; one or more deliveries are pending.
    Delivering,
    /// Every destination has it.
    Delivered,
    /// A step or the intake refused it (see its error).
    Failed,
    /// A filter dropped it on purpose (see its error for the reason).
    Filtered,
    /// No routing rule matched and there is no `otherwise`.
    Unrouted,
    /// A split step turned it into child messages, which carry on by themselves.
    Split,
    /// At least one destination gave up after its last attempt.
    Dead,
    /// Received again with the key of an earlier message of its route (a broker redelivered
    /// a message whose commit it never heard of, or the route's `dedupe` key was seen within
    /// its window): kept for the record, never processed.
    Duplicate,
    /// Waiting in its `aggregate` group for the group to complete.
    Aggregating,
    /// Combined with the other members of its group into a new message (named in its
    /// error text), which carries on in its place.
    Aggregated,
}

impl MessageState {
    pub const ALL: [MessageState; 11] = [
        MessageState::Received,
        MessageState::Delivering,
        MessageState::Delivered,
        MessageState::Failed,
        MessageState::Filtered,
        MessageState::Unrouted,
        MessageState::Split,
        MessageState::Dead,
        MessageState::Duplicate,
        MessageState::Aggregating,
        MessageState::Aggregated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Received => "received",
            MessageState::Delivering => "delivering",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Filtered => "filtered",
            MessageState::Unrouted => "unrouted",
            MessageState::Split => "split",
            MessageState::Dead => "dead",
            MessageState::Duplicate => "duplicate",
            MessageState::Aggregating => "aggregating",
            MessageState::Aggregated => "aggregated",
        }
    }

    pub fn parse(s: &str) -> Option<MessageState> {
        MessageState::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            MessageState::Received | MessageState::Delivering | MessageState::Aggregating
        )
    }
}

/// The body as UTF-8 text, or an error saying where the first bad byte is.
pub fn utf8<'a>(body: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(body).map_err(|e| {
        let (line, col) = line_col(body, e.valid_up_to());
        format!(
            "{what} body is not UTF-8: bad byte at line {line}, column {col} (offset {}); convert it to UTF-8 first",
            e.valid_up_to()
        )
    })
}

/// 1-based line and column of a byte offset, for error messages.
pub fn line_col(body: &[u8], offset: usize) -> (usize, usize) {
    let upto = &body[..offset.min(body.len())];
    let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
    let col = upto.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

/// Deepest JSON nesting the engine reads: serde_json's recursion limit (128) refuses a 128th
/// level; it keeps a hostile body from exhausting the stack.
pub const JSON_DEPTH: usize = 127;

/// Why `what` (`body`, `the body`) could not be read as JSON, saying so plainly when it is
/// valid JSON nested deeper than [`JSON_DEPTH`] rather than calling it invalid.
pub fn json_error(what: &str, e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("recursion limit exceeded") {
        format!(
            "{what} is JSON nested deeper than {JSON_DEPTH} levels, the most Switchyard reads (at line {} column {}); flatten it, or convert it as text",
            e.line(),
            e.column()
        )
    } else {
        format!("{what} is not valid JSON: {text}")
    }
}

/// Whether `json` (read as JSON text) nests arrays and objects deeper than [`JSON_DEPTH`]:
/// a scan, so a check that does not build the value (`content: json`) finds it too.
pub fn json_too_deep(json: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > JSON_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Message {
    /// The body as text.
    pub fn body_text(&self) -> Result<&str, String> {
        utf8(&self.body, "the")
    }

    /// The body parsed as JSON.
    pub fn body_json(&self) -> Result<serde_json::Value, String> {
        let text = utf8(&self.body, "JSON")?;
        serde_json::from_str(text).map_err(|e| json_error("body", &e))
    }

    /// Whether the `content-type` header says JSON.
    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|c| c.contains("json"))
    }

    /// Replaces the body with `value` as JSON and says so in `content-type`.
    pub fn set_json(&mut self, value: &serde_json::Value) {
        self.body = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
        self.headers
            .insert("content-type".into(), "application/json".into());
    }

    /// Replaces the body with text and sets `content-type`.
    pub fn set_text(&mut self, text: String, content_type: &str) {
        self.body = Bytes::from(text.into_bytes());
        self.headers
            .insert("content-type".into(), content_type.into());
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    #[test]
    fn the_depth_scan_agrees_with_the_parser() {
        for depth in [1, 127, 128, 129, 300] {
            let json = format!("{}\"]}}\\\"[\"{}", "[".repeat(depth), "]".repeat(depth));
            let parsed = serde_json::from_str::<serde_json::Value>(&json);
            assert_eq!(
                json_too_deep(json.as_bytes()),
                parsed.is_err(),
                "depth {depth}: {parsed:?}"
            );
        }
    }
}
