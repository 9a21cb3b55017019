//! The web console under `/ui` on the admin listener: server-rendered pages (maud, escaped by
//! default) for the dashboard, message search, one message's life, failed and dead messages
//! with bulk replay, and the live processing log. Readable without JavaScript; one small
//! embedded script streams the live log.
//!
//! Security: a login exchanges a token for a session cookie (see [`session`]); every POST
//! carries the session's CSRF token and passes an Origin check; pages forbid framing and
//! foreign scripts (Content-Security-Policy); replays, pauses and resumes are written to the
//! audit log (`switchyard::audit`) with who did what.

mod dashboard;
mod layout;
mod log;
mod message;
mod search;
mod session;

use super::{answer, Access, Answer, Role};
use crate::engine::Engine;
use axum::extract::Request;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use session::Sessions;

/// The target of audit events (`SWITCHYARD_LOG=switchyard::audit=info`).
pub const AUDIT: &str = "switchyard::audit";
/// A form body larger than this is refused.
const MAX_FORM: usize = 64 * 1024;

pub struct Console {
    access: Access,
    sessions: Sessions,
}

/// What a page handler gets: who asks, and how to call back.
pub struct Ctx<'a> {
    pub engine: &'a Arc<Engine>,
    pub access: &'a Access,
    pub session: &'a session::Session,
    pub query: HashMap<String, String>,
}

impl Ctx<'_> {
    pub fn can_act(&self) -> bool {
        self.session.role == Role::Admin
    }
}

/// A request refused, or a redirect: what handlers return besides a page.
pub enum Outcome {
    Page(StatusCode, maud::Markup),
    Redirect(String),
    Raw(Answer),
}

impl Outcome {
    /// A page that says what went wrong.
    pub fn problem(ctx: &Ctx<'_>, status: StatusCode, title: &str, said: maud::Markup) -> Outcome {
        Outcome::Page(
            status,
            layout::frame(ctx, title, maud::html! { p.warn role="alert" { (said) } }),
        )
    }
}

impl Console {
    pub fn new(access: Access) -> Console {
        Console {
            access,
            sessions: Sessions::default(),
        }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub async fn handle(
        &self,
        req: Request,
        engine: &Arc<Engine>,
        peer: std::net::SocketAddr,
        stop: CancellationToken,
    ) -> Answer {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let method = req.method().clone();
        if method == Method::GET {
            if let Some(asset) = layout::asset(&path) {
                return asset;
            }
        }
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let same_origin = same_origin(&req);
        let cookie = req
            .headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(session::from_cookie)
            .map(str::to_string);
        let mut session = cookie.as_deref().and_then(|id| self.sessions.get(id));
        let mut new_cookie = None;
        if method == Method::POST && !same_origin {
            return refuse(
                StatusCode::FORBIDDEN,
                "This request came from another site (its Origin is not this console's) and was refused.",
            );
        }
        let form = if method == Method::POST {
            match read_form(req).await {
                Ok(f) => f,
                Err(e) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, &e),
            }
        } else {
            HashMap::new()
        };

        if path == "/ui/login" {
            return match method {
                Method::POST => self.login(&form, &query, peer).await,
                _ => page(
                    StatusCode::OK,
                    layout::login(self.access.read_token.is_some(), None, query.get("next")),
                ),
            };
        }
        if session.is_none() && self.access.token.is_none() {
            // No token set: the console is open, as the API is; a session still carries the
            // CSRF token for its forms.
            let s = self.sessions.start(
                Role::Admin,
                format!("anyone (no admin token) from {}", peer.ip()),
            );
            new_cookie = Some(s.id.clone());
            session = Some(s);
        }
        let Some(session) = session else {
            if method == Method::GET {
                let here = req_path_and_query(&path, &query);
                return redirect(&format!(
                    "/ui/login?next={}",
                    form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
                ));
            }
            return refuse(StatusCode::UNAUTHORIZED, "Log in first.");
        };
        if method == Method::POST {
            let given = form.get("csrf").map(String::as_str).unwrap_or("");
            if !crate::secrets::same(given.as_bytes(), session.csrf.as_bytes()) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "This form is out of date or did not come from the console (its CSRF token is missing or wrong). Reload the page and try again.",
                );
            }
            if path == "/ui/logout" {
                self.sessions.end(&session.id);
                let mut r = redirect("/ui/login");
                set_cookie(&mut r, None);
                return r;
            }
            if session.role != Role::Admin {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "You are logged in with the read-only token: replay, pause and resume need the admin token.",
                );
            }
        }
        let ctx = Ctx {
            engine,
            access: &self.access,
            session: &session,
            query,
        };
        let parts: Vec<&str> = path.trim_start_matches("/ui").split('/').collect();
        let outcome = match (&method, &parts[..]) {
            (&Method::GET, [""]) => dashboard::page(&ctx).await,
            (&Method::POST, ["", "routes", id, action @ ("pause" | "resume")]) => {
                dashboard::pause_or_resume(&ctx, id, action).await
            }
            (&Method::GET, ["", "messages"]) => search::page(&ctx).await,
            (&Method::POST, ["", "replay"]) => search::bulk_replay(&ctx, &form).await,
            (&Method::GET, ["", "messages", id]) => message::page(&ctx, id).await,
            (&Method::POST, ["", "messages", id, "replay"]) => {
                message::replay(&ctx, id, &form).await
            }
            (&Method::GET, ["", "log"]) => log::page(&ctx),
            (&Method::GET, ["", "log", "events"]) => Outcome::Raw(log::events(&ctx, stop)),
            _ => Outcome::Page(
                StatusCode::NOT_FOUND,
                layout::frame(
                    &ctx,
                    "Not found",
                    maud::html! { p { "There is no console page at " code { (path) } "." } },
                ),
            ),
        };
        let mut r = match outcome {
            Outcome::Page(status, markup) => page(status, markup),
            Outcome::Redirect(to) => redirect(&to),
            Outcome::Raw(r) => r,
        };
        if let Some(id) = new_cookie {
            set_cookie(&mut r, Some(&id));
        }
        r
    }

    async fn login(
        &self,
        form: &HashMap<String, String>,
        query: &HashMap<String, String>,
        peer: std::net::SocketAddr,
    ) -> Answer {
        let token = form.get("token").map(String::as_str).unwrap_or("");
        let role = if self.access.token.is_some() {
            self.access.role(Some(token))
        } else {
            Some(Role::Admin)
        };
        let Some(role) = role else {
            tracing::warn!(target: AUDIT, action = "login refused", from = %peer.ip(), "console login refused: wrong token");
            // Guessing costs time (the token is long and random; this keeps logs readable).
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return page(
                StatusCode::UNAUTHORIZED,
                layout::login(
                    self.access.read_token.is_some(),
                    Some("That token is not the admin token (nor the read-only one)."),
                    query.get("next"),
                ),
            );
        };
        let name = form
            .get("name")
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| n.chars().take(64).collect::<String>());
        let who = format!(
            "{} ({} token) from {}",
            name.as_deref().unwrap_or("someone"),
            role.as_str(),
            peer.ip()
        );
        tracing::info!(target: AUDIT, action = "login", who = %who, "console login");
        let s = self.sessions.start(role, who);
        // Only a path of this console: never send someone on to another site.
        let next = query
            .get("next")
            .filter(|n| n.starts_with("/ui") && !n.starts_with("//"))
            .cloned()
            .unwrap_or_else(|| "/ui".into());
        let mut r = redirect(&next);
        set_cookie(&mut r, Some(&s.id));
        r
    }
}

/// Records an operator's action in the audit log.
pub fn audit(ctx: &Ctx<'_>, action: &str, what: &str) {
    tracing::info!(target: AUDIT, action = %action, who = %ctx.session.who, what = %what, "console: {action} {what}");
}

fn req_path_and_query(path: &str, query: &HashMap<String, String>) -> String {
    if query.is_empty() {
        return path.to_string();
    }
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query.iter())
        .finish();
    format!("{path}?{q}")
}

/// A state-changing request must come from a page of this console: a browser names the page's
/// origin in `Origin` (and `Sec-Fetch-Site`); tools that send neither rely on the CSRF token.
fn same_origin(req: &Request) -> bool {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host == Some(host)
}

async fn read_form(req: Request) -> Result<HashMap<String, String>, String> {
    match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(body) => Ok(form_urlencoded::parse(&body.to_bytes())
            .into_owned()
            .collect()),
        Err(_) => Err(format!(
            "The form was not read (larger than {MAX_FORM} bytes, or the connection broke)."
        )),
    }
}

fn secure_headers(r: &mut Answer) {
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
}

fn page(status: StatusCode, markup: maud::Markup) -> Answer {
    let mut r = answer(status, "text/html; charset=utf-8", markup.into_string());
    secure_headers(&mut r);
    r
}

fn refuse(status: StatusCode, why: &str) -> Answer {
    page(status, layout::refusal(status, why))
}

fn redirect(to: &str) -> Answer {
    let mut r = answer(StatusCode::SEE_OTHER, "text/plain", String::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(&mut r);
    r
}

fn set_cookie(r: &mut Answer, id: Option<&str>) {
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(id)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}
