//! One message's whole life: received (source, headers, size), each step with its outcome and
//! duration, the routing decision, each delivery with every attempt and the next retry; the
//! body as received and as delivered (JSON and XML pretty-printed, HL7 as a table of
//! segments) and the difference between them; its split parent and children; replay.

use super::layout::{self, state};
use super::{audit, Ctx, Outcome};
use crate::store::{Details, Search};
use hyper::StatusCode;
use maud::{html, Markup};
use std::collections::HashMap;

/// A body is shown up to this size; the rest is cut (`switchyard messages show` has it all).
const SHOWN: usize = 256 * 1024;

pub async fn page(ctx: &Ctx<'_>, id: &str) -> Outcome {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Outcome::problem(
            ctx,
            StatusCode::BAD_REQUEST,
            "No such message",
            html! { "`" (id) "` is not a message id." },
        );
    };
    let store = ctx.engine.store();
    let d = match store.details(id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Outcome::problem(
                ctx,
                StatusCode::NOT_FOUND,
                "No such message",
                html! { "There is no message " code { (id) } " in the store (retention may have deleted it)." },
            )
        }
        Err(e) => {
            return Outcome::problem(
                ctx,
                StatusCode::SERVICE_UNAVAILABLE,
                "Message",
                html! { (e.0) },
            )
        }
    };
    let children = store
        .search(&Search {
            parent: Some(id),
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    let content = html! {
        @if let Some(done) = ctx.query.get("replayed") {
            p.notice role="status" { (done) }
        }
        (summary(ctx, &d, &children))
        h2 { "Timeline" }
        (timeline(&d))
        h2 { "Deliveries" }
        (deliveries(ctx, &d))
        h2 { "Headers" }
        (headers(&d))
        h2 { "Body" }
        (bodies(&d))
    };
    Outcome::Page(
        StatusCode::OK,
        layout::frame(ctx, &format!("Message {id}"), content),
    )
}

fn summary(ctx: &Ctx<'_>, d: &Details, children: &[crate::store::StoredMessage]) -> Markup {
    let m = &d.message;
    html! {
        dl.facts {
            dt { "Route" } dd { a href=(layout::search_link(&[("route", &m.route)])) { (m.route) } " (version " span.mono { (m.route_version) } ")" }
            dt { "State" } dd { (state(m.state.as_str())) }
            dt { "Received" } dd { (layout::time(m.received_at)) }
            dt { "Size" } dd { (d.body.len()) " bytes" }
            @if let Some(e) = &m.error { dt { "Error" } dd.error { (e) } }
            @if let Some(p) = m.parent { dt { "Split from" } dd.mono { a href={ "/ui/messages/" (p) } { (p) } } }
            @if !children.is_empty() {
                dt { "Split into" }
                dd { @for c in children { a.mono href={ "/ui/messages/" (c.id) } { (c.id) } " " (state(c.state.as_str())) br; } }
            }
        }
        @if ctx.can_act() {
            p {
                form.inline method="post" action={ "/ui/messages/" (m.id) "/replay" } {
                    (layout::csrf(ctx))
                    button type="submit" { "Replay the whole message" }
                    span.hint { " — its steps run again and create new deliveries" }
                }
            }
        }
    }
}

fn timeline(d: &Details) -> Markup {
    let start = d.message.received_at;
    let offset = |at: &str| -> String {
        humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
            .ok()
            .and_then(|t| t.duration_since(start).ok())
            .map(|d| format!("+{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_default()
    };
    let source = ["file.name", "http.path", "hl7.control_id", "remote_file"]
        .iter()
        .find_map(|k| d.message.headers.get(*k).map(|v| format!("{k}: {v}")));
    html! {
        table {
            thead { tr { th { "At" } th.num { "After" } th { "What" } th { "Name" } th { "Outcome" } th.num { "Took" } th { "Detail" } } }
            tbody {
                @for t in &d.transitions {
                    tr {
                        td.mono { (t.at.replace('T', " ")) }
                        td.num.muted { (offset(&t.at)) }
                        td { (t.event) }
                        td.mono { @if let Some(n) = &t.name { (n) } }
                        td { (state(&t.outcome)) }
                        td.num { @if let Some(us) = t.duration_us { (format!("{:.2} ms", us as f64 / 1000.0)) } }
                        td {
                            @if let Some(x) = &t.detail { (x) }
                            @if t.event == "received" {
                                @if let Some(s) = &source { (s) " · " }
                                (d.body.len()) " bytes"
                            }
                            @if t.event == "state" && t.outcome == "delivering" {
                                "routed to "
                                (d.deliveries.iter().filter(|x| x.kind == "main").map(|x| x.destination.as_str()).collect::<Vec<_>>().join(", "))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn deliveries(ctx: &Ctx<'_>, d: &Details) -> Markup {
    html! {
        @if d.deliveries.is_empty() {
            p.muted { "None: this message was not routed to any destination." }
        } @else {
            table {
                thead { tr { th { "Destination" } th { "Kind" } th { "State" } th.num { "Attempts" } th { "Next attempt" } th { "Last error" } th {} } }
                tbody {
                    @for x in &d.deliveries {
                        tr {
                            td.mono { (x.destination) }
                            td { (x.kind) }
                            td { (state(&x.state)) }
                            td.num { (x.attempts) }
                            td.mono { @if x.state == "pending" { (x.next_attempt_at.replace('T', " ")) } }
                            td.error { @if let Some(e) = &x.last_error { (e) } }
                            td {
                                @if ctx.can_act() && x.state != "pending" && x.kind != "replaced" {
                                    form.inline method="post" action={ "/ui/messages/" (d.message.id) "/replay" } {
                                        (layout::csrf(ctx))
                                        input type="hidden" name="destination" value=(x.destination);
                                        button.quiet type="submit" { "Send again" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn headers(d: &Details) -> Markup {
    let out = d.out_headers.as_ref().filter(|o| **o != d.message.headers);
    html! {
        div.grid {
            div {
                @if out.is_some() { h3 { "As received" } }
                (header_table(&d.message.headers))
            }
            @if let Some(o) = out {
                div { h3 { "After the steps" } (header_table(o)) }
            }
        }
    }
}

fn header_table(h: &crate::message::Headers) -> Markup {
    html! {
        table {
            tbody {
                @for (k, v) in h { tr { td.mono { (k) } td.mono { (v) } } }
            }
        }
    }
}

fn bodies(d: &Details) -> Markup {
    let received = pretty(&d.body);
    let delivered = d.out_body.as_ref().map(|b| pretty(b));
    html! {
        div.grid {
            div {
                h3 { "As received" }
                (show(&d.body, &received))
            }
            @if let (Some(b), Some(p)) = (&d.out_body, &delivered) {
                div { h3 { "As delivered (after the steps)" } (show(b, p)) }
            }
        }
        @if let Some(p) = &delivered {
            @if p.text != received.text {
                h3 { "What the steps changed" }
                (diff(&received.text, &p.text))
            }
        }
    }
}

/// A body made readable, and what it was taken to be.
struct Pretty {
    kind: &'static str,
    text: String,
}

fn pretty(body: &[u8]) -> Pretty {
    let cut = &body[..body.len().min(SHOWN)];
    let text = String::from_utf8_lossy(cut).into_owned();
    let start = text.trim_start();
    if start.starts_with('{') || start.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Ok(p) = serde_json::to_string_pretty(&v) {
                return Pretty {
                    kind: "JSON",
                    text: p,
                };
            }
        }
    }
    if start.starts_with('<') {
        if let Some(p) = indent_xml(start) {
            return Pretty {
                kind: "XML",
                text: p,
            };
        }
    }
    if start.starts_with("MSH") {
        return Pretty {
            kind: "HL7",
            text: start.replace("\r\n", "\n").replace('\r', "\n"),
        };
    }
    Pretty { kind: "text", text }
}

/// The XML re-indented, or `None` when it does not parse (then it is shown as written). Only
/// reads and writes events: no entity is expanded, nothing is fetched.
fn indent_xml(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    loop {
        match reader.read_event().ok()? {
            Event::Eof => break,
            e => writer.write_event(e).ok()?,
        }
    }
    String::from_utf8(writer.into_inner()).ok()
}

fn show(raw: &[u8], p: &Pretty) -> Markup {
    html! {
        p.hint {
            (p.kind) ", " (raw.len()) " bytes"
            @if raw.len() > SHOWN { " — the first " (SHOWN / 1024) " KiB are shown" }
        }
        @if p.kind == "HL7" { (hl7_table(&p.text)) }
        pre { (p.text) }
    }
}

fn hl7_table(text: &str) -> Markup {
    // The field separator is the character after `MSH`.
    let sep = text.chars().nth(3).unwrap_or('|');
    html! {
        table.mono {
            tbody {
                @for seg in text.lines().filter(|l| !l.trim().is_empty()) {
                    @let mut fields = seg.split(sep);
                    @let name = fields.next().unwrap_or("");
                    tr {
                        th { (name) }
                        td {
                            @for (i, f) in fields.enumerate() {
                                @if !f.is_empty() {
                                    // MSH-1 is the separator itself, so MSH's fields count from 2.
                                    span title={ (name) "-" (if name == "MSH" { i + 2 } else { i + 1 }) } {
                                        sup.muted { (if name == "MSH" { i + 2 } else { i + 1 }) } (f)
                                    }
                                    " "
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn diff(before: &str, after: &str) -> Markup {
    let diff = similar::TextDiff::from_lines(before, after);
    html! {
        pre.diff {
            @for (i, group) in diff.grouped_ops(3).iter().enumerate() {
                @if i > 0 { span.muted { "⋯\n" } }
                @for op in group {
                    @for change in diff.iter_changes(op) {
                        @match change.tag() {
                            similar::ChangeTag::Delete => span.del { "- " (change.value().trim_end_matches('\n')) }
                            similar::ChangeTag::Insert => span.add { "+ " (change.value().trim_end_matches('\n')) }
                            similar::ChangeTag::Equal => { "  " (change.value()) }
                        }
                    }
                }
            }
        }
    }
}

pub async fn replay(ctx: &Ctx<'_>, id: &str, form: &HashMap<String, String>) -> Outcome {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Outcome::problem(
            ctx,
            StatusCode::BAD_REQUEST,
            "Not replayed",
            html! { "Not a message id." },
        );
    };
    let destination = form
        .get("destination")
        .map(String::as_str)
        .filter(|d| !d.is_empty());
    match ctx.engine.store().replay(id, destination).await {
        Ok(said) => {
            audit(ctx, "replay", &said);
            Outcome::Redirect(format!(
                "/ui/messages/{id}?replayed={}",
                form_urlencoded::byte_serialize(said.as_bytes()).collect::<String>()
            ))
        }
        Err(e) => Outcome::problem(
            ctx,
            StatusCode::CONFLICT,
            "Not replayed",
            html! { (e.0) " " a href={ "/ui/messages/" (id) } { "Back to the message" } },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_made_readable() {
        assert_eq!(pretty(br#"{"a":[1,2]}"#).kind, "JSON");
        let x = pretty(b"<order><id>1</id><lines><line/></lines></order>");
        assert_eq!(x.kind, "XML");
        assert!(x.text.contains("\n  <id>1</id>"), "{}", x.text);
        let h = pretty(b"MSH|^~\\&|LAB\rPID|1||42");
        assert_eq!((h.kind, h.text.lines().count()), ("HL7", 2));
        // Broken XML is shown as written.
        assert_eq!(pretty(b"<a><b></a>").kind, "text");
        // An entity is neither expanded nor fetched.
        let e = pretty(b"<!DOCTYPE a [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><a>&x;</a>");
        assert!(!e.text.contains("root:"), "{}", e.text);
    }

    #[test]
    fn the_diff_marks_what_changed() {
        let d = diff("a\nb\nc\n", "a\nB\nc\n").into_string();
        assert!(d.contains("<span class=\"del\">- b</span>"), "{d}");
        assert!(d.contains("<span class=\"add\">+ B</span>"), "{d}");
    }
}
