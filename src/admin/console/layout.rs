//! The frame every console page shares (navigation, who is logged in, logout), the login and
//! refusal pages, the embedded stylesheet and script, and small formatting helpers.

use super::Ctx;
use crate::admin::{answer, Answer};
use hyper::header::HeaderValue;
use hyper::StatusCode;
use maud::{html, Markup, DOCTYPE};
use std::time::{Duration, SystemTime};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The embedded stylesheet or script at `path`, if it is one (no login needed: nothing in
/// them is secret).
pub fn asset(path: &str) -> Option<Answer> {
    let (body, ctype) = match path {
        "/ui/assets/console.css" => (CSS, "text/css; charset=utf-8"),
        "/ui/assets/console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut r = answer(StatusCode::OK, ctype, body.to_string());
    r.headers_mut().insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=300"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

fn document(title: &str, refresh: Option<u32>, class: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                title { (title) " · Switchyard" }
                // No icon to fetch (the browser would ask the API's /favicon.ico).
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body class=(class) { (body) }
        }
    }
}

/// A page of the console: navigation, the content, who is logged in.
pub fn frame(ctx: &Ctx<'_>, title: &str, content: Markup) -> Markup {
    frame_with(ctx, title, content, None)
}

/// As [`frame`], reloading itself every `refresh` seconds (the dashboard).
pub fn frame_with(ctx: &Ctx<'_>, title: &str, content: Markup, refresh: Option<u32>) -> Markup {
    let body = html! {
            header {
                nav {
                    a.brand href="/ui" { "Switchyard" }
                    a href="/ui" { "Dashboard" }
                    a href="/ui/messages" { "Messages" }
                    a href="/ui/messages?state=failed" { "Failed" }
                    a href="/ui/messages?state=dead" { "Dead" }
                    a href="/ui/log" { "Live log" }
                }
                div.who {
                    span title="This node's name in the store" { "node " b { (ctx.access.node) } }
                    span { (ctx.session.who) }
                    @if ctx.access.token.is_some() {
                        form method="post" action="/ui/logout" {
                            (csrf(ctx))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
            }
            main {
                h1 { (title) }
                (content)
            }
    };
    document(title, refresh, "", body)
}

/// The hidden CSRF field every form carries.
pub fn csrf(ctx: &Ctx<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.session.csrf); }
}

pub fn login(read_only_token: bool, error: Option<&str>, next: Option<&String>) -> Markup {
    let action = match next {
        Some(n) => format!(
            "/ui/login?next={}",
            form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()
        ),
        None => "/ui/login".into(),
    };
    let body = html! {
            main {
                h1 { "Switchyard" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action=(action) {
                    label { "Admin token"
                        input type="password" name="token" autocomplete="current-password" required autofocus;
                    }
                    label { "Your name (for the audit log, optional)"
                        input type="text" name="name" maxlength="64";
                    }
                    button type="submit" { "Log in" }
                }
                p.hint {
                    "The token is the admin listener's (" code { "SWITCHYARD_ADMIN_TOKEN" } ")"
                    @if read_only_token { ", or the read-only one (" code { "SWITCHYARD_ADMIN_READ_TOKEN" } ")" }
                    ". It is exchanged for a session cookie and not kept in the browser."
                }
            }
    };
    document("Log in", None, "login", body)
}

pub fn refusal(status: StatusCode, why: &str) -> Markup {
    let body = html! {
            main {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error role="alert" { (why) }
                p { a href="/ui" { "Back to the console" } }
            }
    };
    document("Refused", None, "login", body)
}

pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
}

/// "3 s", "4 min", "2 h 5 min", "3 d 4 h".
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// A message or delivery state as a coloured badge.
pub fn state(s: &str) -> Markup {
    let class = match s {
        "delivered" | "running" | "ok" | "stored" => "good",
        "failed" | "dead" | "error" | "rejected" => "bad",
        "delivering" | "received" | "pending" | "retry" | "paused" | "standing by" => "busy",
        _ => "quiet",
    };
    html! { span class={ "state " (class) } { (s) } }
}

/// A link to a search with these parameters.
pub fn search_link(pairs: &[(&str, &str)]) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish();
    format!("/ui/messages?{q}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(Duration::from_secs(5)), "5 s");
        assert_eq!(age(Duration::from_secs(600)), "10 min");
        assert_eq!(age(Duration::from_secs(7500)), "2 h 5 min");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3 d 4 h");
    }

    #[test]
    fn search_links_are_encoded() {
        assert_eq!(
            search_link(&[("route", "a b"), ("state", ""), ("field", "order=1&x")]),
            "/ui/messages?route=a+b&field=order%3D1%26x"
        );
    }
}
