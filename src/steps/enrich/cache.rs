//! The answers kept for the same request, so a busy route does not call per message: each for
//! its `ttl`, at most `max_entries`, the oldest going first.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

/// Answers by request, each for `ttl`, at most `max` of them (the oldest go first).
pub(super) struct Cache {
    ttl: std::time::Duration,
    max: usize,
    entries: Mutex<Entries>,
}

/// The answers by request (when stored, status, body), and the requests oldest first.
pub(super) type Entries = (HashMap<String, (Instant, u16, Bytes)>, VecDeque<String>);

impl Cache {
    pub(super) fn new(ttl: std::time::Duration, max: usize) -> Cache {
        Cache {
            ttl,
            max: max.max(1),
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<(u16, Bytes)> {
        let entries = self.entries.lock().ok()?;
        entries
            .0
            .get(key)
            .filter(|(at, _, _)| at.elapsed() < self.ttl)
            .map(|(_, status, body)| (*status, body.clone()))
    }

    pub(super) fn put(&self, key: String, status: u16, body: Bytes) {
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
