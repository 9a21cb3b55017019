//! What a route computes from each message as it is received, before the message is
//! committed: its search fields (`index`) and its `dedupe` key. The route compiles them from
//! its file; the inbound side evaluates them on every message it takes in.

use crate::message::Message;
use crate::script::Script;
use crate::store::{Key, KeyScope};
use std::fmt;

/// A route's search fields, compiled.
#[derive(Default)]
pub struct Index(pub Vec<(String, Script)>);

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Index {
    /// The fields' values for `msg`; a field whose expression fails or gives `()` is left
    /// out (a search field must never cost a message).
    pub fn extract(&self, msg: &Message) -> Vec<(String, String)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let Ok(body) = crate::script::body_to_dynamic(msg) else {
            return Vec::new();
        };
        self.0
            .iter()
            .filter_map(|(name, script)| {
                let (v, _) = script.run(msg, body.clone()).ok()?;
                if v.is_unit() {
                    return None;
                }
                let text = if v.is_string() {
                    v.into_string().ok()?
                } else {
                    v.to_string()
                };
                Some((name.clone(), text))
            })
            .collect()
    }
}

/// A route's `dedupe` key, compiled.
pub struct Dedupe {
    pub(crate) key: Script,
    /// The expression as written, for errors.
    pub(crate) source: String,
    pub(crate) window: std::time::Duration,
}

impl fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedupe")
            .field("key", &self.source)
            .field("window", &self.window)
            .finish()
    }
}

impl Dedupe {
    /// The search field the key is stored under.
    pub const FIELD: &'static str = "dedupe_key";

    /// `msg`'s key, or why it has none.
    pub fn key(&self, msg: &Message) -> Result<Key, String> {
        let why = |e: String| {
            format!(
                "dedupe.key `{}` gave no key for this message ({e}); it cannot be checked for duplicates, so it was not processed",
                self.source
            )
        };
        let body = crate::script::body_to_dynamic(msg).map_err(|e| why(e.to_string()))?;
        let (v, _) = self.key.run(msg, body).map_err(|e| why(e.to_string()))?;
        if v.is_unit() {
            return Err(why("it is `()`: nothing at that path".into()));
        }
        let value = if v.is_string() {
            v.into_string().unwrap_or_default()
        } else {
            v.to_string()
        };
        if value.is_empty() {
            return Err(why("it is empty".into()));
        }
        Ok(Key {
            name: Self::FIELD.into(),
            value,
            scope: KeyScope::Window(self.window),
        })
    }
}
