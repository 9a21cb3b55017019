//! Listening sockets that outlive a route version. When a route is reloaded, its old version
//! hands its listener back here and the new version takes it over, so the socket is never
//! closed: clients connecting during the swap wait in the kernel's backlog instead of being
//! refused. And the one accept loop every listener uses ([`accept`]).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What an inbound keeps beside its socket across versions (an HTTP route's open
/// connections); closed with the socket when no version wants the address any more.
pub trait Kept: Any + Send + Sync {
    fn close(&self);
}

#[derive(Default)]
pub struct Listeners {
    sockets: Mutex<HashMap<String, TcpListener>>,
    kept: Mutex<HashMap<String, Arc<dyn Kept>>>,
    /// Addresses a running version listens on now (between `acquire` and `release`).
    held: Mutex<HashSet<String>>,
}

/// Whether `addr` asks for any free port (`:0`): a new socket each time, never one handed over.
pub fn any_free_port(addr: &str) -> bool {
    addr.ends_with(":0")
}

impl Listeners {
    /// The listener handed back for `addr`, or a new one bound to it.
    fn take_or_bind(&self, addr: &str) -> std::io::Result<TcpListener> {
        if let Some(l) = self.sockets.lock().ok().and_then(|mut m| m.remove(addr)) {
            return Ok(l);
        }
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// The listener for a version being built: bound now, so that a taken port is an error
    /// before anything stops, or `None` while a running version listens on `addr` — the
    /// reload stops that version first (checked in [`crate::reload`]), and it hands its
    /// socket over to [`Listeners::acquire`].
    /// A failure names the address, so a taken port is an error at start that says which.
    pub fn reserve(&self, addr: &str) -> std::io::Result<Option<TcpListener>> {
        let held = !any_free_port(addr) && self.held.lock().is_ok_and(|h| h.contains(addr));
        if held {
            return Ok(None);
        }
        self.take_or_bind(addr)
            .map(Some)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
    }

    /// Keeps a listener open for the next version of its route (not for port 0, which means
    /// "any free port" and so cannot be asked for again).
    pub fn give_back(&self, addr: &str, listener: TcpListener) {
        if any_free_port(addr) {
            return;
        }
        if let Ok(mut m) = self.sockets.lock() {
            m.insert(addr.to_string(), listener);
        }
    }

    /// The listener an adapter bound at build (`bound`), or after a pause the one it handed
    /// back, ready for tokio.
    pub fn acquire(
        &self,
        bound: &Mutex<Option<TcpListener>>,
        addr: &str,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        let taken = bound
            .lock()
            .map_err(|_| anyhow::anyhow!("listener lock poisoned"))?
            .take();
        let std_listener = match taken {
            Some(l) => l,
            None => self
                .take_or_bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        };
        if let Ok(mut held) = self.held.lock() {
            held.insert(addr.to_string());
        }
        Ok(tokio::net::TcpListener::from_std(std_listener)?)
    }

    /// Keeps an adapter's socket open for the route's next version (a reload); the engine
    /// closes it when no version wants it.
    pub fn release(&self, addr: &str, listener: tokio::net::TcpListener) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(addr);
        }
        if let Ok(std) = listener.into_std() {
            self.give_back(addr, std);
        }
    }

    /// What the inbound on `addr` keeps across versions, made on first use (`None` only when
    /// `addr` keeps something of another type, which no two inbounds share).
    pub fn kept<T: Kept + Default>(&self, addr: &str) -> Option<Arc<T>> {
        let mut m = self.kept.lock().ok()?;
        let entry = m
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(T::default()));
        let any: Arc<dyn Any + Send + Sync> = entry.clone();
        any.downcast::<T>().ok()
    }

    /// Closes the listeners, and what is kept with them, that no running route uses any more.
    pub fn retain(&self, in_use: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.sockets.lock() {
            m.retain(|addr, _| in_use(addr));
        }
        if let Ok(mut m) = self.kept.lock() {
            m.retain(|addr, kept| {
                let keep = in_use(addr);
                if !keep {
                    kept.close();
                }
                keep
            });
        }
    }

    /// Closes everything (the engine stops).
    pub fn close_all(&self) {
        self.retain(|_| false);
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. A failed accept
/// (out of file descriptors, say) is logged and retried after a pause rather than at once,
/// so a listener never spins on an error it cannot get out of.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed; trying again in 50 ms");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
}
