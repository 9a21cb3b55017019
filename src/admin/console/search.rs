//! Message search (route, state, time range, index field, id prefix, text, error; paged,
//! newest first, on the store's indexes) and the failed and dead lists with bulk replay: the
//! same filter, a count, a confirmation, then one replay per message.

use super::layout::{self, search_link, state};
use super::{audit, Ctx, Outcome};
use crate::store::{MessageState, Search};
use hyper::StatusCode;
use maud::{html, Markup};
use std::collections::HashMap;

/// Rows per page.
const PAGE: usize = 50;
/// At most this many messages in one bulk replay; the page says when there are more.
pub const BULK_MAX: usize = 10_000;
/// The filter's fields, as the form and the links name them.
const FILTERS: [&str; 8] = [
    "route", "state", "since", "until", "field", "id", "error", "text",
];

fn filter_pairs(q: &HashMap<String, String>) -> Vec<(&'static str, String)> {
    FILTERS
        .iter()
        .filter_map(|k| {
            q.get(*k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| (*k, v.to_string()))
        })
        .collect()
}

fn parse(q: &HashMap<String, String>, limit: usize) -> Result<Search, String> {
    let mut q = q.clone();
    q.insert("limit".into(), limit.to_string());
    let mut s = crate::admin::search_from(&q)?;
    s.limit = limit;
    Ok(s)
}

fn form(ctx: &Ctx<'_>) -> Markup {
    let v = |k: &str| ctx.query.get(k).cloned().unwrap_or_default();
    let chosen = v("state");
    html! {
        form.filters method="get" action="/ui/messages" {
            label { "Route" input type="text" name="route" value=(v("route")) size="14"; }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in MessageState::ALL {
                        option value=(s.as_str()) selected[chosen == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Since (time or 2h)" input type="text" name="since" value=(v("since")) size="18"; }
            label { "Until" input type="text" name="until" value=(v("until")) size="18"; }
            label { "Index field (name=value)" input type="text" name="field" value=(v("field")) size="18"; }
            label { "Id or its start" input type="text" name="id" value=(v("id")) size="14"; }
            label { "Text in the last error" input type="text" name="error" value=(v("error")) size="16"; }
            label { "Text in headers or body" input type="text" name="text" value=(v("text")) size="16"; }
            button type="submit" { "Search" }
        }
    }
}

pub async fn page(ctx: &Ctx<'_>) -> Outcome {
    // A whole id goes straight to its message.
    if let Some(id) = ctx.query.get("id").map(|i| i.trim()) {
        if let Ok(id) = id.parse::<uuid::Uuid>() {
            return Outcome::Redirect(format!("/ui/messages/{id}"));
        }
    }
    let title = match ctx.query.get("state").map(String::as_str) {
        Some("failed") => "Failed messages",
        Some("dead") => "Dead messages",
        _ => "Messages",
    };
    let search = match parse(&ctx.query, PAGE) {
        Ok(s) => s,
        Err(e) => {
            let content = html! { (form(ctx)) p.warn role="alert" { (e) } };
            return Outcome::Page(StatusCode::BAD_REQUEST, layout::frame(ctx, title, content));
        }
    };
    let found = ctx.engine.store().search(&search).await;
    let pairs = filter_pairs(&ctx.query);
    let bulk = search.state.is_some_and(|s| s.is_terminal());
    let content = html! {
        (form(ctx))
        @match &found {
            Err(e) => p.warn role="alert" { "The store did not answer: " (e.0) }
            Ok(rows) if rows.is_empty() => p.muted { "No message matches." }
            Ok(rows) => {
                @if bulk && ctx.can_act() {
                    form.inline method="post" action="/ui/replay" {
                        (layout::csrf(ctx))
                        @for (k, v) in &pairs { input type="hidden" name=(k) value=(v); }
                        button.quiet type="submit" { "Replay every message that matches…" }
                        span.hint { " (you see how many, and confirm, before anything is sent)" }
                    }
                }
                table {
                    thead { tr {
                        th { "Received" } th { "Id" } th { "Route" } th { "State" } th { "Source / error" }
                    } }
                    tbody {
                        @for m in rows {
                            tr {
                                td { (layout::time(m.received_at)) }
                                td.mono { a href={ "/ui/messages/" (m.id) } { (m.id) } }
                                td { (m.route) }
                                td { (state(m.state.as_str())) }
                                td {
                                    @if let Some(e) = &m.error { span.error { (e) } }
                                    @else if let Some(f) = m.headers.get("file.name") { (f) }
                                    @else if let Some(c) = m.headers.get("hl7.control_id") { "HL7 " (c) }
                                }
                            }
                        }
                    }
                }
                div.pager {
                    @if search.before.is_some() {
                        a href=(link(&pairs, None)) { "← Newest" }
                    }
                    @if rows.len() == PAGE {
                        @if let Some(last) = rows.last() {
                            a href=(link(&pairs, Some(last.id))) { "Older →" }
                        }
                    }
                }
            }
        }
    };
    Outcome::Page(StatusCode::OK, layout::frame(ctx, title, content))
}

fn link(pairs: &[(&str, String)], before: Option<uuid::Uuid>) -> String {
    let before = before.map(|b| b.to_string()).unwrap_or_default();
    let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("before", &before));
    search_link(&all)
}

/// The first POST shows how many messages the filter matches and asks; the second (with
/// `confirm=yes` and the count it showed) replays them.
pub async fn bulk_replay(ctx: &Ctx<'_>, form: &HashMap<String, String>) -> Outcome {
    let search = match parse(form, BULK_MAX + 1) {
        Ok(s) if s.state.is_some_and(|s| s.is_terminal()) => s,
        Ok(_) => {
            return Outcome::problem(
                ctx,
                StatusCode::BAD_REQUEST,
                "Not replayed",
                html! { "Bulk replay needs a finished state (failed, dead, …) in the filter, so that messages still in flight are never sent twice." },
            )
        }
        Err(e) => {
            return Outcome::problem(ctx, StatusCode::BAD_REQUEST, "Not replayed", html! { (e) })
        }
    };
    let rows = match ctx.engine.store().search(&search).await {
        Ok(r) => r,
        Err(e) => {
            return Outcome::problem(
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "Not replayed",
                html! { (e.0) },
            )
        }
    };
    let pairs = filter_pairs(form);
    let described: String = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let more = rows.len() > BULK_MAX;
    let rows = &rows[..rows.len().min(BULK_MAX)];
    if form.get("confirm").map(String::as_str) != Some("yes") {
        let content = html! {
            @if rows.is_empty() {
                p { "No message matches " code { (described) } " now." }
            } @else {
                p {
                    "Replay " b { (rows.len()) } " message(s) matching " code { (described) } "?"
                    @if more { " Only the newest " (BULK_MAX) " are replayed this time; run it again for the rest." }
                }
                p.hint { "Each runs through its route again, from its first step; its earlier deliveries stay in its history." }
                form method="post" action="/ui/replay" {
                    (layout::csrf(ctx))
                    @for (k, v) in &pairs { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="confirm" value="yes";
                    input type="hidden" name="count" value=(rows.len());
                    button.danger type="submit" { "Replay " (rows.len()) " message(s)" }
                    " "
                    a href=(search_link(&pairs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())) { "Cancel" }
                }
            }
        };
        return Outcome::Page(
            StatusCode::OK,
            layout::frame(ctx, "Replay messages?", content),
        );
    }
    let mut done = 0;
    let mut problems = Vec::new();
    for m in rows {
        match ctx.engine.store().replay(m.id, None).await {
            Ok(_) => done += 1,
            Err(e) => problems.push(format!("{}: {}", m.id, e.0)),
        }
    }
    audit(
        ctx,
        "bulk replay",
        &format!("{done} message(s) matching {described}"),
    );
    let content = html! {
        p.notice role="status" { (done) " message(s) queued to run through their routes again." }
        @if !problems.is_empty() {
            p.warn { "Not replayed:" }
            pre.error { @for p in &problems { (p) "\n" } }
        }
        p { a href=(search_link(&pairs.iter().filter(|(k, _)| *k != "state").map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())) { "See these messages now" } }
    };
    Outcome::Page(StatusCode::OK, layout::frame(ctx, "Replayed", content))
}
