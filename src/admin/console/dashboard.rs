//! The dashboard: every route with its state, version and counts by state over a window;
//! every destination's queue (depth, age of the oldest, newest error, which node delivers);
//! the last reload and what it rejected; pause and resume.

use super::layout::{self, age, search_link, state};
use super::{audit, Ctx, Outcome};
use crate::store::MessageState;
use hyper::StatusCode;
use maud::html;
use std::time::{Duration, SystemTime};

/// The windows offered, and the default.
const WINDOWS: [&str; 5] = ["15m", "1h", "24h", "7d", "30d"];
const DEFAULT_WINDOW: &str = "1h";
/// States shown as columns, in the order a message goes through them.
const COLUMNS: [MessageState; 6] = [
    MessageState::Received,
    MessageState::Delivering,
    MessageState::Delivered,
    MessageState::Filtered,
    MessageState::Failed,
    MessageState::Dead,
];

pub async fn page(ctx: &Ctx<'_>) -> Outcome {
    let window = ctx
        .query
        .get("window")
        .map(String::as_str)
        .filter(|w| WINDOWS.contains(w))
        .unwrap_or(DEFAULT_WINDOW);
    let span = window
        .parse::<crate::config::values::Duration>()
        .map_or(Duration::from_secs(3600), |d| d.0);
    let now = SystemTime::now();
    let since = now - span;
    let store = ctx.engine.store();
    let routes = ctx.engine.status().await;
    let ids: Vec<String> = routes.iter().map(|r| r.id.clone()).collect();
    let (counts, queues) = (store.counts_since(&ids, since).await, store.queues().await);
    let reload = ctx.engine.last_reload().await;
    let since_text = humantime::format_rfc3339_seconds(since).to_string();
    let content = html! {
        form.filters method="get" action="/ui" {
            label { "Counts over the last"
                select name="window" {
                    @for w in WINDOWS { option value=(w) selected[w == window] { (w) } }
                }
            }
            button.quiet type="submit" { "Show" }
            span.hint { "This page refreshes itself every 10 seconds." }
        }
        @if let Some(why) = store.damaged() {
            p.warn role="alert" { "The store is damaged; intake is paused and nothing more is written: " (why) }
        }
        h2 { "Routes" }
        @match &counts {
            Err(e) => p.warn { "The store did not answer: " (e.0) }
            Ok(counts) => table {
                thead { tr {
                    th { "Route" } th { "State" } th { "Version" }
                    @for s in COLUMNS { th.num { (s.as_str()) } }
                    th { "Last error" }
                    th {}
                } }
                tbody {
                    @for r in &routes {
                        tr {
                            td {
                                a href=(search_link(&[("route", &r.id)])) { b { (r.id) } }
                                @if let Some(d) = &r.description { br; span.muted { (d) } }
                                br; span.muted.mono { (r.file) }
                            }
                            td {
                                (state(r.state))
                                // The file changed and the new version was refused: this one runs.
                                @for p in reload.iter().flat_map(|x| &x.rejected).filter(|p| p.starts_with(&r.file)) {
                                    br; span.error title="The running version keeps working" { "newer version rejected: " (p) }
                                }
                            }
                            td.mono { (r.version) }
                            @for s in COLUMNS {
                                td.num {
                                    @let n = counts.get(&(r.id.clone(), s)).copied().unwrap_or(0);
                                    @if n > 0 {
                                        a href=(search_link(&[("route", &r.id), ("state", s.as_str()), ("since", &since_text)])) { (n) }
                                    } @else { span.muted { "0" } }
                                }
                            }
                            td.error {
                                @if let Some((at, text)) = crate::metrics::last_error(&r.id) {
                                    span.muted { (layout::time(at)) } " " (text)
                                }
                            }
                            td {
                                @if ctx.can_act() {
                                    @let (action, label) = if r.state == "paused" { ("resume", "Resume") } else { ("pause", "Pause") };
                                    form.inline method="post" action={ "/ui/routes/" (r.id) "/" (action) } {
                                        (layout::csrf(ctx))
                                        button.quiet type="submit" { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Destinations with pending deliveries" }
        @match &queues {
            Err(e) => p.warn { "The store did not answer: " (e.0) }
            Ok(queues) if queues.is_empty() => p.muted { "Nothing is waiting to be delivered." }
            Ok(queues) => table {
                thead { tr {
                    th { "Route" } th { "Destination" } th.num { "Pending" } th.num { "Oldest" }
                    th { "Newest error" } th { "Delivering node" }
                } }
                tbody {
                    @for q in queues {
                        tr {
                            td { (q.route) }
                            td.mono { (q.destination) }
                            td.num { a href=(search_link(&[("route", &q.route), ("state", "delivering")])) { (q.depth) } }
                            td.num { @if let Some(t) = q.oldest { (age(now.duration_since(t).unwrap_or_default())) } }
                            td.error { @if let Some(e) = &q.last_error { (e) } }
                            td { @if q.claimed_by.is_empty() { span.muted { "none now" } } @else { (q.claimed_by.join(", ")) } }
                        }
                    }
                }
            }
        }
        h2 { "Last reload" }
        @match &reload {
            None => p.muted { "No reload since the engine started." }
            Some(r) => {
                dl.facts {
                    dt { "At" } dd { (r.at) }
                    dt { "Added" } dd { (r.added.join(", ")) }
                    dt { "Changed" } dd { (r.changed.join(", ")) }
                    dt { "Removed" } dd { (r.removed.join(", ")) }
                }
                @if !r.rejected.is_empty() {
                    p.warn { "Rejected (the running versions keep working):" }
                    pre.error { @for p in &r.rejected { (p) "\n" } }
                }
            }
        }
    };
    Outcome::Page(
        StatusCode::OK,
        layout::frame_with(ctx, "Dashboard", content, Some(10)),
    )
}

pub async fn pause_or_resume(ctx: &Ctx<'_>, id: &str, action: &str) -> Outcome {
    let result = if action == "pause" {
        ctx.engine.pause(id).await
    } else {
        ctx.engine.resume(id).await
    };
    match result {
        Ok(()) => {
            audit(ctx, action, &format!("route {id}"));
            Outcome::Redirect("/ui".into())
        }
        Err(e) => Outcome::problem(ctx, StatusCode::NOT_FOUND, "Not done", html! { (e) }),
    }
}
