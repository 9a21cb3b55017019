//! The processing log. Every lifecycle transition of a message is one structured event with
//! the same field names — `event`, `message_id`, `route`, `step` or `destination`, `outcome`,
//! `duration_ms`, `error` — written as a readable line on the console and as one JSON object
//! per line in `logs/switchyard.jsonl`. The functions below are the only places that emit
//! them, so this file is the list of what the engine reports.

use crate::message::Message;
use crate::message::MessageState;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The target of lifecycle events, for filtering (`SWITCHYARD_LOG=switchyard::message=debug`).
pub const TARGET: &str = "switchyard::message";
/// Name of the JSON-lines processing log inside the log directory.
pub const LOG_FILE: &str = "switchyard.jsonl";

/// Installs console and JSON-file logging. Keep the guard alive: dropping it flushes the file.
/// The level comes from `SWITCHYARD_LOG`, else `level` (from the settings file), else `info`.
pub fn init(
    log_dir: Option<&Path>,
    rotation: Rotation,
    level: Option<&str>,
) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = || {
        EnvFilter::try_from_env("SWITCHYARD_LOG")
            .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")))
    };
    let console = fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let (file_layer, guard) = match log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create log directory {}: {e}", dir.display())
            })?;
            let appender = Rotating::open(dir.join(LOG_FILE), rotation)?;
            // Not lossy: a processing log with holes is worse than a briefly slower engine.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(appender);
            let layer = fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer)
                .with_filter(filter());
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(console)
        .with(file_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install logging: {e}"))?;
    Ok(guard)
}

/// When the processing log is rotated: past `max_size` bytes it is renamed to
/// `switchyard.jsonl.1` (older ones shift to `.2`, ... up to `keep`) and a new file starts.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 64 << 20,
            keep: 5,
        }
    }
}

/// The log file writer. Each write is one whole event (the formatter writes an event at a
/// time), so rotation never splits a line.
struct Rotating {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    rotation: Rotation,
}

impl Rotating {
    fn open(path: std::path::PathBuf, rotation: Rotation) -> anyhow::Result<Rotating> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Rotating {
            path,
            file,
            size,
            rotation,
        })
    }

    fn numbered(&self, n: usize) -> std::path::PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.keep.max(1);
        let _ = std::fs::remove_file(self.numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl std::io::Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn received(msg: &Message) {
    crate::metrics::received(&msg.route);
    tracing::info!(target: TARGET, event = "received", message_id = %msg.id, route = %msg.route,
        bytes = msg.body.len(), file = msg.header("file.name").unwrap_or(""), outcome = "stored", "received");
}

pub fn refused(msg: &Message, reason: &str) {
    crate::metrics::received(&msg.route);
    crate::metrics::message(&msg.route, MessageState::Failed.as_str());
    crate::metrics::error(&msg.route, reason);
    tracing::warn!(target: TARGET, event = "received", message_id = %msg.id, route = %msg.route,
        file = msg.header("file.name").unwrap_or(""), outcome = "failed", error = reason, "refused at intake");
}

pub fn duplicate(msg: &Message, first: uuid::Uuid) {
    crate::metrics::received(&msg.route);
    crate::metrics::message(&msg.route, MessageState::Duplicate.as_str());
    tracing::warn!(target: TARGET, event = "received", message_id = %msg.id, route = %msg.route,
        duplicate_of = %first, outcome = "duplicate", "received again (a sender's redelivery, or a dedupe key seen within its window); recorded, not processed");
}

pub fn step(msg: &Message, step: &str, duration: Duration, error: Option<&str>) {
    crate::metrics::step(&msg.route, step, duration.as_secs_f64());
    match error {
        None => {
            tracing::debug!(target: TARGET, event = "step", message_id = %msg.id, route = %msg.route,
            step, outcome = "ok", duration_ms = ms(duration), "step done")
        }
        Some(e) => {
            crate::metrics::error(&msg.route, &format!("{step}: {e}"));
            tracing::warn!(target: TARGET, event = "step", message_id = %msg.id, route = %msg.route,
            step, outcome = "error", duration_ms = ms(duration), error = e, "step failed")
        }
    }
}

pub fn processed(msg: &Message, state: MessageState, destinations: usize, duration: Duration) {
    if state.is_terminal() {
        crate::metrics::message(&msg.route, state.as_str());
    }
    tracing::info!(target: TARGET, event = "processed", message_id = %msg.id, route = %msg.route,
        outcome = state.as_str(), destinations, duration_ms = ms(duration), "steps finished");
}

/// How a delivery attempt ended, as the log and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    Delivered,
    /// Failed; another attempt is due later.
    Retry,
    /// Failed for the last time.
    Dead,
}

impl Attempted {
    pub fn as_str(self) -> &'static str {
        match self {
            Attempted::Delivered => "delivered",
            Attempted::Retry => "retry",
            Attempted::Dead => "dead",
        }
    }
}

pub fn attempt(
    msg: &Message,
    destination: &str,
    number: u32,
    duration: Duration,
    attempted: Attempted,
    detail: &str,
) {
    let outcome = attempted.as_str();
    crate::metrics::delivery(&msg.route, destination, outcome);
    if attempted != Attempted::Delivered {
        crate::metrics::error(&msg.route, &format!("{destination}: {detail}"));
    }
    if attempted == Attempted::Delivered {
        tracing::info!(target: TARGET, event = "attempt", message_id = %msg.id, route = %msg.route,
            destination, attempt = number, outcome, duration_ms = ms(duration), to = detail, "delivered");
    } else {
        tracing::warn!(target: TARGET, event = "attempt", message_id = %msg.id, route = %msg.route,
            destination, attempt = number, outcome, duration_ms = ms(duration), error = detail, "delivery failed");
    }
}

pub fn finished(msg: &Message, state: MessageState) {
    crate::metrics::message(&msg.route, state.as_str());
    tracing::info!(target: TARGET, event = "finished", message_id = %msg.id, route = %msg.route,
        outcome = state.as_str(), "message complete");
}
