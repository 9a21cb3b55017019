//! `switchyard messages` and `switchyard backup`: what operators do with the store — find
//! messages, see everything that happened to one, send them again, copy the store safely.
//! They work beside a running engine (which picks replayed messages up within seconds).

use crate::store::{Details, MessageState, Operations, Search, StoredMessage};
use std::fmt::Write as _;
use uuid::Uuid;

fn time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn cut(s: &str, n: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > n {
        format!("{}…", flat.chars().take(n - 1).collect::<String>())
    } else {
        flat
    }
}

pub fn json_row(m: &StoredMessage) -> serde_json::Value {
    serde_json::json!({
        "id": m.id,
        "route": m.route,
        "route_version": m.route_version,
        "state": m.state.as_str(),
        "received_at": time(m.received_at),
        "parent": m.parent,
        "error": m.error,
        "headers": m.headers,
    })
}

/// The table `messages list` prints.
pub fn table(rows: &[StoredMessage]) -> String {
    let mut out = format!(
        "{:<36}  {:<20}  {:<22}  {:<10}  {}\n",
        "ID", "RECEIVED", "ROUTE", "STATE", "FILE / ERROR"
    );
    for m in rows {
        let what = m
            .error
            .clone()
            .or_else(|| m.headers.get("file.name").cloned())
            .or_else(|| m.headers.get("hl7.control_id").cloned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<36}  {:<20}  {:<22}  {:<10}  {}",
            m.id,
            time(m.received_at),
            cut(&m.route, 22),
            m.state.as_str(),
            cut(&what, 70)
        );
    }
    let _ = writeln!(out, "{} message(s)", rows.len());
    out
}

pub fn details_json(d: &Details) -> serde_json::Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    serde_json::json!({
        "message": json_row(&d.message),
        "body": text(&d.body),
        "out_headers": d.out_headers,
        "out_body": d.out_body.as_ref().map(|b| text(b)),
        "transitions": d.transitions,
        "deliveries": d.deliveries,
    })
}

/// What `messages show` prints.
pub fn details_text(d: &Details) -> String {
    let m = &d.message;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "message   {}\nroute     {} (version {})\nstate     {}\nreceived  {}",
        m.id,
        m.route,
        m.route_version,
        m.state.as_str(),
        time(m.received_at)
    );
    if let Some(p) = m.parent {
        let _ = writeln!(out, "parent    {p}");
    }
    if let Some(e) = &m.error {
        let _ = writeln!(out, "error     {e}");
    }
    let _ = writeln!(out, "\nheaders");
    for (k, v) in &m.headers {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(
        out,
        "\nbody ({} bytes)\n{}",
        d.body.len(),
        indent(&String::from_utf8_lossy(&d.body), 4000)
    );
    if let Some(b) = &d.out_body {
        let _ = writeln!(
            out,
            "after the steps ({} bytes)\n{}",
            b.len(),
            indent(&String::from_utf8_lossy(b), 4000)
        );
    }
    if let Some(after) = d.out_headers.as_ref().filter(|h| **h != m.headers) {
        let _ = writeln!(out, "headers after the steps");
        for (k, v) in after.iter().filter(|(k, v)| m.headers.get(*k) != Some(v)) {
            let _ = writeln!(out, "  {k}: {v}");
        }
        for k in m.headers.keys().filter(|k| !after.contains_key(*k)) {
            let _ = writeln!(out, "  {k}: (removed)");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "transitions");
    for t in &d.transitions {
        let _ = writeln!(
            out,
            "  {}  {:<8} {:<24} {:<10} {}",
            t.at,
            t.event,
            t.name.clone().unwrap_or_default(),
            t.outcome,
            t.detail.clone().unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\ndeliveries");
    for dl in &d.deliveries {
        let _ = writeln!(
            out,
            "  {:<24} {:<11} {:<9} attempts {:<3} next {}  {}",
            dl.destination,
            dl.kind,
            dl.state,
            dl.attempts,
            dl.next_attempt_at,
            dl.last_error.clone().unwrap_or_default()
        );
    }
    out
}

fn indent(text: &str, max: usize) -> String {
    let shown: String = text.chars().take(max).collect();
    let mut out: String = shown.lines().map(|l| format!("    {l}\n")).collect();
    if text.chars().count() > max {
        out.push_str("    …\n");
    }
    out
}

/// Replays one message, or every message of a route in a state; returns one line per message.
pub async fn replay(
    store: &dyn Operations,
    id: Option<Uuid>,
    destination: Option<&str>,
    route: Option<String>,
    state: Option<MessageState>,
    limit: usize,
) -> Result<Vec<String>, String> {
    match id {
        Some(id) => store
            .replay(id, destination)
            .await
            .map(|s| vec![s])
            .map_err(|e| e.0),
        None => {
            if route.is_none() || state.is_none() {
                return Err(
                    "give a message id, or both --route and --state (failed or dead)".into(),
                );
            }
            let rows = store
                .search(&Search {
                    route,
                    state,
                    limit,
                    ..Search::default()
                })
                .await
                .map_err(|e| e.0)?;
            let mut out = Vec::new();
            for m in rows {
                out.push(match store.replay(m.id, destination).await {
                    Ok(s) => s,
                    Err(e) => format!("message {}: {}", m.id, e.0),
                });
            }
            Ok(out)
        }
    }
}
