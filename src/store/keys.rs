//! Keys a route takes a message under only once: a sender's own message id, or a route's
//! `dedupe` key within a window; and what is committed for a message that repeats one.

use super::{plan, Insert, MessageState};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// A search field under which a route takes a message only once: when an earlier message of
/// the route holds the same value, the new one is committed as `duplicate` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub value: String,
    pub scope: KeyScope,
}

/// Which earlier messages a [`Key`] is looked up among.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// A sender's own message id (a broker's message id, a file's identity): every earlier
    /// message of the route, whatever became of it — the sender gave it to us once already.
    Sender,
    /// A route's `dedupe` key: the messages stored within this long before now that neither
    /// failed nor went dead, so that a sender may resend what failed.
    Window(Duration),
}

impl Key {
    /// A sender's message id (see [`KeyScope::Sender`]).
    pub fn sender(name: impl Into<String>, value: impl Into<String>) -> Key {
        Key {
            name: name.into(),
            value: value.into(),
            scope: KeyScope::Sender,
        }
    }

    /// Where the look-up starts: the lowest id that counts (ids are UUIDv7, so a window of
    /// time is a range of ids).
    pub(crate) fn start(&self) -> Uuid {
        match &self.scope {
            KeyScope::Sender => Uuid::nil(),
            KeyScope::Window(window) => plan::first_id_at(
                SystemTime::now()
                    .checked_sub(*window)
                    .unwrap_or(std::time::UNIX_EPOCH),
            ),
        }
    }

    /// Whether messages that failed or went dead hold the key.
    pub(crate) fn failures_count(&self) -> bool {
        self.scope == KeyScope::Sender
    }
}

/// What is committed for a message received again under an earlier message's key: its
/// record, as `duplicate`, without wire taps, never processed.
pub(crate) fn duplicate_of(mut ins: Insert, first: &str, key: &Key) -> Insert {
    let when = match &key.scope {
        KeyScope::Sender => "before".to_string(),
        KeyScope::Window(window) => {
            format!("within the last {}", humantime::format_duration(*window))
        }
    };
    ins.state = MessageState::Duplicate;
    ins.error = Some(format!(
        "duplicate of message {first}: {} `{}` was received {when}; not processed again",
        key.name, key.value
    ));
    ins.wire_taps.clear();
    ins.scheduled = false;
    ins
}
