//! The live log: the processing log's last lines, filtered as `switchyard tail` filters
//! (route, message, outcome, errors only), then its new lines as server-sent events.

use super::layout;
use super::{Ctx, Outcome};
use crate::admin::{answer, Answer};
use crate::tail::{Filter, Follower};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use maud::html;
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Lines shown when the page opens.
const LAST: usize = 200;
/// How often the file is looked at for new lines.
const POLL: Duration = Duration::from_millis(250);
/// A comment this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn filter(ctx: &Ctx<'_>) -> Filter {
    let get = |k: &str| {
        ctx.query
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Filter {
        route: get("route"),
        message: get("message"),
        state: get("state"),
        errors: get("errors").is_some(),
        since: None,
    }
}

/// What the page and the stream send of one line.
fn row(e: &Value) -> Value {
    let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    serde_json::json!({
        "timestamp": field("timestamp"),
        "level": field("level"),
        "route": field("route"),
        "message_id": field("message_id"),
        "event": field("event"),
        "outcome": field("outcome"),
        "text": crate::tail::details(e).trim(),
    })
}

pub fn page(ctx: &Ctx<'_>) -> Outcome {
    let f = filter(ctx);
    let lines = crate::tail::last_lines(&ctx.access.log, &f, LAST);
    let v = |k: &str| ctx.query.get(k).cloned().unwrap_or_default();
    let events = {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                ["route", "message", "state", "errors"]
                    .iter()
                    .filter_map(|k| ctx.query.get(*k).map(|v| (*k, v.as_str()))),
            )
            .finish();
        format!("/ui/log/events?{q}")
    };
    let content = html! {
        form.filters method="get" action="/ui/log" {
            label { "Route" input type="text" name="route" value=(v("route")) size="14"; }
            label { "Message id (start or end)" input type="text" name="message" value=(v("message")) size="14"; }
            label { "Outcome" input type="text" name="state" value=(v("state")) size="10" placeholder="dead, retry…"; }
            label { "Errors only" input type="checkbox" name="errors" value="1" checked[f.errors]; }
            button type="submit" { "Filter" }
        }
        p.hint #log-status { "The last " (LAST) " matching lines; with JavaScript on, new lines appear as they are written." }
        table #log data-events=(events) {
            thead { tr { th { "Time" } th { "Level" } th { "Route" } th { "Message" } th { "Event" } th { "Outcome" } th { "Detail" } } }
            tbody {
                @for e in lines.iter().map(row) {
                    @let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                    tr {
                        td.mono { (s("timestamp").replace('T', " ").chars().take(23).collect::<String>()) }
                        td { (s("level")) }
                        td { (s("route")) }
                        td.mono {
                            @let id = s("message_id");
                            @if !id.is_empty() { a href={ "/ui/messages/" (id) } { (id.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<String>()) } }
                        }
                        td { (s("event")) }
                        td class=(if matches!(s("outcome").as_str(), "failed" | "dead" | "error" | "rejected") { "error" } else { "" }) { (s("outcome")) }
                        td.mono { (s("text")) }
                    }
                }
            }
        }
    };
    Outcome::Page(StatusCode::OK, layout::frame(ctx, "Live log", content))
}

/// New matching lines as server-sent events, until the browser goes away or the engine stops.
pub fn events(ctx: &Ctx<'_>, stop: CancellationToken) -> Answer {
    let f = filter(ctx);
    let path = ctx.access.log.clone();
    // Bounded: a browser that stops reading stops the follower, never grows a queue.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut follower = Follower::new(path, true);
        let mut quiet = Duration::ZERO;
        loop {
            let mut sent = false;
            // Read what is there: a local file, read in short steps between polls.
            while let Ok(Some(line)) = follower.next_line() {
                let Ok(e) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if f.matches(&e) {
                    let event = format!("data: {}\n\n", row(&e));
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    sent = true;
                }
            }
            quiet = if sent { Duration::ZERO } else { quiet + POLL };
            if quiet >= KEEPALIVE {
                quiet = Duration::ZERO;
                if tx
                    .send(Bytes::from_static(b": still here\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    let mut r = answer(StatusCode::OK, "text/event-stream", String::new());
    *r.body_mut() = StreamBody::new(stream).boxed();
    let h = r.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}
