//! `switchyard test --replay`: a route's stored messages run through a candidate route file —
//! its steps and routing, nothing stored or sent — each compared with what the route did with
//! it: the outcome, the destinations, the headers and the body delivered. A change is checked
//! on real traffic before the reload.

use crate::message::{Headers, Message};
use crate::route::Route;
use crate::store::{Details, MessageState, Search, Store};
use crate::test_runner::{simulate, End};
use std::fmt::Write;
use std::time::SystemTime;
use uuid::Uuid;

/// Which stored messages, and what to leave out of the comparison.
pub struct Options {
    /// The route whose messages are replayed (default: the candidate's id).
    pub route: String,
    pub since: SystemTime,
    /// At most this many messages, newest first.
    pub limit: usize,
    /// Header names, and JSON pointers into the body (`/processedAt`), that may differ.
    pub ignore: Vec<String>,
}

/// What a message became, on one side.
#[derive(Debug, PartialEq)]
enum Outcome {
    Routed {
        destinations: Vec<String>,
        headers: Headers,
        body: Vec<u8>,
    },
    Unrouted,
    Filtered(String),
    Failed(String),
    Split(usize),
}

impl Outcome {
    fn summary(&self) -> String {
        match self {
            Outcome::Routed { destinations, .. } => format!("to {}", destinations.join(", ")),
            Outcome::Unrouted => "unrouted".into(),
            Outcome::Filtered(reason) => format!("filtered: {reason}"),
            Outcome::Failed(error) => format!("failed: {error}"),
            Outcome::Split(n) => format!("split into {n}"),
        }
    }
}

/// The comparison of one message.
pub enum Verdict {
    Same,
    /// What differs, ready to print.
    Different(String),
    /// Not comparable, and why (still in its steps, a duplicate, its body deleted).
    Skipped(String),
}

pub struct Compared {
    pub id: Uuid,
    pub state: MessageState,
    pub verdict: Verdict,
}

/// Replays the stored messages `opts` selects through `candidate`.
pub async fn compare(
    store: &dyn Store,
    candidate: &Route,
    opts: &Options,
) -> Result<Vec<Compared>, String> {
    let found = store
        .search(&Search {
            route: Some(opts.route.clone()),
            since: Some(opts.since),
            limit: opts.limit,
            ..Default::default()
        })
        .await
        .map_err(|e| e.0)?;
    let mut out = Vec::new();
    // Children of a split are compared through their parent.
    for m in found.into_iter().filter(|m| m.parent.is_none()) {
        let Some(details) = store.details(m.id).await.map_err(|e| e.0)? else {
            continue; // deleted by retention meanwhile
        };
        let verdict = match before(store, &details).await? {
            Err(why) => Verdict::Skipped(why),
            Ok(before) => {
                // Steps may wait on I/O (`enrich`): off the async threads.
                let after = tokio::task::block_in_place(|| after(candidate, &details));
                differences(&before, &after, &opts.ignore).map_or(Verdict::Same, Verdict::Different)
            }
        };
        out.push(Compared {
            id: m.id,
            state: m.state,
            verdict,
        });
    }
    Ok(out)
}

/// What the route did with a stored message, or why it cannot be compared.
async fn before(store: &dyn Store, d: &Details) -> Result<Result<Outcome, String>, String> {
    let error = || d.message.error.clone().unwrap_or_default();
    if d.message.headers.contains_key("aggregate.key") {
        return Ok(Err(
            "made by an aggregate group, not received from a sender".into(),
        ));
    }
    Ok(Ok(match d.message.state {
        MessageState::Received => return Ok(Err("still in its steps".into())),
        MessageState::Duplicate => return Ok(Err("a duplicate, never processed".into())),
        MessageState::Aggregating | MessageState::Aggregated => {
            return Ok(Err(
                "a member of an aggregate group (groups are not combined again here)".into(),
            ))
        }
        MessageState::Failed => Outcome::Failed(error()),
        MessageState::Filtered => Outcome::Filtered(error()),
        MessageState::Unrouted => Outcome::Unrouted,
        MessageState::Split => {
            let children = store
                .search(&Search {
                    parent: Some(d.message.id),
                    limit: 100_000,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.0)?;
            Outcome::Split(children.len())
        }
        MessageState::Delivering | MessageState::Delivered | MessageState::Dead => {
            let Some(body) = &d.out_body else {
                return Ok(Err(
                    "its delivered body is no longer stored (retention)".into()
                ));
            };
            Outcome::Routed {
                destinations: d
                    .deliveries
                    .iter()
                    .filter(|x| x.kind == "main")
                    .map(|x| x.destination.clone())
                    .collect(),
                headers: d.out_headers.clone().unwrap_or_default(),
                body: body.to_vec(),
            }
        }
    }))
}

/// What the candidate makes of the message as it was received (same id and time, so that
/// templates and scripts using them agree).
fn after(candidate: &Route, d: &Details) -> Outcome {
    let msg = Message {
        id: d.message.id,
        route: d.message.route.clone(),
        headers: d.message.headers.clone(),
        body: d.body.clone(),
        received_at: d.message.received_at,
    };
    match simulate(candidate, msg, 0, &mut |_, _| {}) {
        End::Routed { msg, destinations } => Outcome::Routed {
            destinations,
            headers: msg.headers,
            body: msg.body.to_vec(),
        },
        End::Unrouted { .. } => Outcome::Unrouted,
        End::Filtered(reason) => Outcome::Filtered(reason),
        End::Failed(error) => Outcome::Failed(error),
        End::Split(children) => Outcome::Split(children.len()),
        End::Aggregated { key, .. } => {
            Outcome::Failed(format!("joins the aggregate group of key `{key}`"))
        }
    }
}

/// What differs between the two, ready to print; `None` when nothing does.
fn differences(before: &Outcome, after: &Outcome, ignore: &[String]) -> Option<String> {
    let mut out = String::new();
    match (before, after) {
        (
            Outcome::Routed {
                destinations: d1,
                headers: h1,
                body: b1,
            },
            Outcome::Routed {
                destinations: d2,
                headers: h2,
                body: b2,
            },
        ) => {
            if d1 != d2 {
                let _ = writeln!(out, "  destinations: {} → {}", d1.join(", "), d2.join(", "));
            }
            let names: std::collections::BTreeSet<&String> = h1.keys().chain(h2.keys()).collect();
            for name in names.into_iter().filter(|n| !ignore.contains(n)) {
                let (a, b) = (h1.get(name), h2.get(name));
                if a != b {
                    let show = |v: Option<&String>| v.map_or("(none)".into(), |v| format!("{v:?}"));
                    let _ = writeln!(out, "  header {name}: {} → {}", show(a), show(b));
                }
            }
            let (a, b) = (comparable(b1, ignore), comparable(b2, ignore));
            if a != b {
                let diff = similar::TextDiff::from_lines(&a, &b);
                let _ = writeln!(out, "  body:");
                for line in diff
                    .unified_diff()
                    .context_radius(2)
                    .header("running", "candidate")
                    .to_string()
                    .lines()
                {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        (a, b) if a != b => {
            let _ = writeln!(out, "  {} → {}", a.summary(), b.summary());
        }
        _ => {}
    }
    (!out.is_empty()).then_some(out)
}

/// A body as compared: JSON pretty-printed with the ignored pointers removed, else text.
fn comparable(body: &[u8], ignore: &[String]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            for pointer in ignore.iter().filter(|p| p.starts_with('/')) {
                remove(&mut v, pointer);
            }
            let mut text = serde_json::to_string_pretty(&sorted(v)).unwrap_or_default();
            text.push('\n');
            text
        }
        Err(_) => {
            let mut text = String::from_utf8_lossy(body).into_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
    }
}

/// Objects with their keys in order (the engine keeps documents' own key order), so that key
/// order never shows as a difference.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut fields: Vec<(String, Value)> = m.into_iter().collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(fields.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn remove(v: &mut serde_json::Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(serde_json::Value::Object(m)) => {
            m.remove(&last);
        }
        Some(serde_json::Value::Array(items)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < items.len() {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// The report: a line per message, the differences under it, and a closing count.
pub fn report(results: &[Compared]) -> String {
    let mut out = String::new();
    let (mut same, mut different, mut skipped) = (0, 0, 0);
    for r in results {
        match &r.verdict {
            Verdict::Same => {
                same += 1;
                let _ = writeln!(out, "same       {}  {}", r.id, r.state.as_str());
            }
            Verdict::Different(what) => {
                different += 1;
                let _ = writeln!(out, "DIFFERENT  {}  {}", r.id, r.state.as_str());
                out.push_str(what);
            }
            Verdict::Skipped(why) => {
                skipped += 1;
                let _ = writeln!(out, "skipped    {}  {}: {why}", r.id, r.state.as_str());
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} message(s): {same} same, {different} different, {skipped} skipped",
        results.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(body: &str, headers: &[(&str, &str)]) -> Outcome {
        Outcome::Routed {
            destinations: vec!["to[0]".into()],
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn json_bodies_compare_by_value_and_ignored_parts_do_not_count() {
        let a = routed(r#"{"id": 1, "at": "10:00", "qty": 2}"#, &[("x", "1")]);
        let b = routed(r#"{"qty": 2, "at": "10:05", "id": 1}"#, &[("x", "1")]);
        let diff = differences(&a, &b, &[]).unwrap();
        assert!(
            diff.contains("-  \"at\": \"10:00\"") && diff.contains("+  \"at\": \"10:05\""),
            "{diff}"
        );
        assert!(differences(&a, &b, &["/at".into()]).is_none());
        let c = routed(r#"{"id": 1, "at": "10:00", "qty": 2}"#, &[("x", "2")]);
        let diff = differences(&a, &c, &[]).unwrap();
        assert_eq!(diff, "  header x: \"1\" → \"2\"\n");
        assert!(differences(&a, &c, &["x".into()]).is_none());
    }

    #[test]
    fn a_changed_outcome_says_both() {
        let a = routed("{}", &[]);
        let b = Outcome::Filtered("test order".into());
        assert_eq!(
            differences(&a, &b, &[]).unwrap(),
            "  to to[0] → filtered: test order\n"
        );
    }
}
