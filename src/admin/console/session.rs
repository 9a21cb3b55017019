//! Console sessions: a login exchanges the admin token for a random session id kept in an
//! HttpOnly, SameSite=Strict cookie (the token never travels again, nor sits in a URL), with a
//! CSRF token that every state-changing form carries back.

use crate::admin::Role;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "switchyard_session";
/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions; the least recently used goes first.
const MAX: usize = 1000;

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub role: Role,
    /// Sent back in every form; a POST without it is refused.
    pub csrf: String,
    /// Who logged in, for the audit log: the name they gave, the token's role, their address.
    pub who: String,
    last_seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    all: Mutex<HashMap<String, Session>>,
}

/// 244 random bits from the OS's generator (two v4 UUIDs), as 64 hex digits.
fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    pub fn start(&self, role: Role, who: String) -> Session {
        let session = Session {
            id: secret(),
            role,
            csrf: secret(),
            who,
            last_seen: Instant::now(),
        };
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, s| s.last_seen.elapsed() < IDLE);
        if all.len() >= MAX {
            if let Some(oldest) = all
                .values()
                .min_by_key(|s| s.last_seen)
                .map(|s| s.id.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(session.id.clone(), session.clone());
        session
    }

    /// The session with this id, if it is still valid (and marks it used).
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.get_mut(id)?;
        if s.last_seen.elapsed() >= IDLE {
            all.remove(id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    pub fn end(&self, id: &str) {
        self.all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The session id from a `Cookie` header.
pub fn from_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session (`None`: one that clears it).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_and_end() {
        let s = Sessions::default();
        let a = s.start(Role::Admin, "a".into());
        let b = s.start(Role::ReadOnly, "b".into());
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert_eq!(a.id.len(), 64);
        assert_eq!(s.get(&b.id).map(|x| x.role), Some(Role::ReadOnly));
        s.end(&a.id);
        assert!(s.get(&a.id).is_none());
        assert_eq!(
            from_cookie(&format!("x=1; {COOKIE}={}; y=2", b.id)),
            Some(b.id.as_str())
        );
    }
}
