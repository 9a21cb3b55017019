//! `switchyard tail`: follows the JSON-lines processing log, filtered, as readable coloured
//! lines or as the JSON itself. It keeps following when the engine rotates the file: a file
//! that was renamed away or truncated is reopened from its start.

use serde_json::Value;
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub route: Option<String>,
    pub message: Option<String>,
    /// Matches the event's `outcome` (`delivered`, `failed`, `dead`, `retry`, ...).
    pub state: Option<String>,
    /// Warnings and errors only, and failed, dead and retried messages.
    pub errors: bool,
    pub since: Option<SystemTime>,
}

impl Filter {
    pub fn matches(&self, e: &Value) -> bool {
        let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
        if self.route.as_deref().is_some_and(|r| field("route") != r) {
            return false;
        }
        if self
            .message
            .as_deref()
            // The readable lines show an id's last 8 characters: either end finds it.
            .is_some_and(|m| {
                let id = field("message_id");
                !(id.starts_with(m) || id.ends_with(m))
            })
        {
            return false;
        }
        if self.state.as_deref().is_some_and(|s| field("outcome") != s) {
            return false;
        }
        if self.errors {
            let bad_level = matches!(field("level"), "WARN" | "ERROR");
            let bad_outcome = matches!(
                field("outcome"),
                "failed" | "dead" | "retry" | "error" | "rejected"
            );
            if !bad_level && !bad_outcome {
                return false;
            }
        }
        if let Some(since) = self.since {
            match humantime::parse_rfc3339_weak(field("timestamp").trim_end_matches('Z')) {
                Ok(t) if t < since => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// How lines are printed.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub json: bool,
    pub color: bool,
}

impl Style {
    pub fn auto(json: bool) -> Style {
        Style {
            json,
            color: std::io::stdout().is_terminal(),
        }
    }
}

/// One readable line: time, level, route, message id, event, outcome and the details.
pub fn render(e: &Value, style: Style) -> String {
    let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let c = |code: &str| -> String {
        if style.color {
            format!("\u{1b}[{code}m")
        } else {
            String::new()
        }
    };
    let reset = if style.color { "\u{1b}[0m" } else { "" };
    let outcome = field("outcome");
    let color = match (field("level"), outcome) {
        ("ERROR", _) | (_, "failed" | "dead" | "rejected") => "31",
        ("WARN", _) | (_, "retry" | "error") => "33",
        (_, "delivered" | "stored") => "32",
        _ => "36",
    };
    let time = field("timestamp");
    let time = time.get(11..23).unwrap_or(time);
    let id = field("message_id");
    let short_id = if id.len() > 8 {
        &id[id.len() - 8..]
    } else {
        id
    };
    let mut line = format!(
        "{}{time}{reset} {}{:<5}{reset} {:<20} {short_id:<8} {:<10} {}{outcome}{reset}",
        c("2"),
        c(color),
        field("level"),
        field("route"),
        field("event"),
        c(color),
    );
    line.push_str(&details(e));
    line
}

/// What a line says besides its time, level, route, id, event and outcome: the step,
/// destination, attempt, file, error, and the message of a warning or error.
pub fn details(e: &Value) -> String {
    let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let mut line = String::new();
    for key in [
        "step",
        "destination",
        "attempt",
        "file",
        "to",
        "duration_ms",
        "error",
        "who",
    ] {
        if let Some(v) = e.get(key) {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            if !v.is_empty() {
                line.push_str(&format!(" {key}={v}"));
            }
        }
    }
    // A warning or error says what is wrong in its message (a rejected reload's
    // `file:line:column: …`, a damaged store's report): without it the line says nothing.
    if field("event").is_empty() || matches!(field("level"), "ERROR" | "WARN") {
        line.push_str(&format!(" {}", field("message")));
    }
    if let Some(problem) = e.get("problem").and_then(Value::as_str) {
        line.push_str(&format!(" problem={problem}"));
    }
    line
}

/// Prints matching lines of `path`; with `follow`, keeps waiting for more, across rotations.
pub fn run(path: PathBuf, filter: Filter, style: Style, follow: bool) -> std::io::Result<()> {
    if !follow {
        // What is there: the rotated files, oldest first, then the live one.
        let mut files: Vec<PathBuf> = (1..=100)
            .map(|n| numbered(&path, n))
            .take_while(|p| p.exists())
            .collect();
        files.reverse();
        files.push(path.clone());
        for f in files {
            print_file(&f, &filter, style)?;
        }
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut follower = Follower::new(path, false);
    loop {
        let Some(line) = follower.next_line()? else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Ok(e) = serde_json::from_str::<Value>(&line) {
            if filter.matches(&e) {
                let text = if style.json {
                    line.trim_end().to_string()
                } else {
                    render(&e, style)
                };
                if writeln!(out, "{text}").is_err() {
                    return Ok(()); // the reader went away (a pipe closed)
                }
                let _ = out.flush();
            }
        }
    }
}

/// Reads a log file's whole lines as they are written, across rotations (the file renamed to
/// `.1` goes on with the new one) and truncation (read again from the start).
pub struct Follower {
    path: PathBuf,
    current: Option<(BufReader<std::fs::File>, u64)>,
    /// Start at the end of the file first opened (only what is written from now on).
    from_end: bool,
}

impl Follower {
    pub fn new(path: PathBuf, from_end: bool) -> Follower {
        Follower {
            path,
            current: None,
            from_end,
        }
    }

    /// The next whole line, or `None` when there is none yet.
    pub fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        loop {
            if self.current.is_none() {
                let Ok(mut f) = std::fs::File::open(&self.path) else {
                    return Ok(None); // not written yet
                };
                if std::mem::take(&mut self.from_end) {
                    f.seek(SeekFrom::End(0))?;
                }
                self.current = Some((BufReader::new(f), file_id(&self.path)));
            }
            let Some((r, id)) = self.current.as_mut() else {
                return Ok(None);
            };
            line.clear();
            let n = r.read_line(&mut line)?;
            if n > 0 && line.ends_with('\n') {
                return Ok(Some(line));
            }
            if n > 0 {
                // A line still being written: go back and read it whole later.
                r.seek(SeekFrom::Current(-(n as i64)))?;
            }
            // At the end of the file being read. If the engine rotated the log, this file has
            // been renamed to `.N` and may have grown before that: it was read to its end just
            // now, so go on with the file that came after it. Truncation starts the same file
            // over.
            let pos = r.stream_position()?;
            let len = r.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
            if len > pos {
                continue;
            }
            if file_id(&self.path) != *id {
                let next = successor(&self.path, *id);
                self.current = std::fs::File::open(&next)
                    .ok()
                    .map(|f| (BufReader::new(f), file_id(&next)));
                continue;
            }
            if std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) < pos {
                self.current = None;
                continue;
            }
            return Ok(None);
        }
    }
}

/// The last `n` lines of `path` that `filter` matches, oldest first (reading at most the
/// file's last 1 MiB).
pub fn last_lines(path: &std::path::Path, filter: &Filter, n: usize) -> Vec<Value> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(1 << 20);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut lines = BufReader::new(f).lines();
    if start > 0 {
        lines.next(); // most likely cut in the middle
    }
    let mut found: std::collections::VecDeque<Value> = std::collections::VecDeque::new();
    for line in lines.map_while(Result::ok) {
        if let Ok(e) = serde_json::from_str::<Value>(&line) {
            if filter.matches(&e) {
                if found.len() == n {
                    found.pop_front();
                }
                found.push_back(e);
            }
        }
    }
    found.into()
}

fn numbered(path: &std::path::Path, n: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

fn print_file(path: &std::path::Path, filter: &Filter, style: Style) -> std::io::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(e) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if filter.matches(&e) {
            let text = if style.json { line } else { render(&e, style) };
            if writeln!(out, "{text}").is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The log file written after the one with `id`: rotation renamed that one to `.N`, and its
/// successor is `.N-1`, or the live file when N is 1.
fn successor(path: &std::path::Path, id: u64) -> PathBuf {
    for n in 1..=100 {
        let candidate = numbered(path, n);
        if !candidate.exists() {
            break;
        }
        if file_id(&candidate) == id {
            return if n == 1 {
                path.to_path_buf()
            } else {
                numbered(path, n - 1)
            };
        }
    }
    path.to_path_buf()
}

#[cfg(unix)]
fn file_id(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

#[cfg(not(unix))]
fn file_id(_path: &std::path::Path) -> u64 {
    0
}
