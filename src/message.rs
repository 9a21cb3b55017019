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
