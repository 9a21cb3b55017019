//! Routes that start work themselves: the `schedule` inbound (intervals and cron times, missed
//! fires caught up once or skipped across a restart) and the `http_poll` inbound (a new answer
//! makes messages, an unchanged one none — by `ETag`, by `Last-Modified`, or by its content —
//! also after a restart), against real sockets and the real engine.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fire times of the stored (non-duplicate) schedule messages, in order.
fn fire_times(ws: &Workspace) -> Vec<String> {
    let mut times: Vec<String> = ws
        .query_pairs(
            "SELECT json_extract(headers, '$.\"schedule.fire_time\"'), COUNT(*) FROM messages
             WHERE state != 'duplicate' GROUP BY 1",
        )
        .into_iter()
        .map(|(t, n)| {
            assert_eq!(n, 1, "fire {t} stored {n} times");
            t
        })
        .collect();
    times.sort();
    times
}

fn parse(t: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[test]
fn an_interval_schedule_fires_and_catches_up_once_after_downtime() {
    let ws = Workspace::new();
    ws.write_route(
        "tick.yaml",
        r#"from:
  schedule:
    every: 1s
    body: '{"run": "{{header.schedule.fire_time}}"}'
    headers: { job: nightly-export }
to:
  - file: { path: outbox, name: "{{id}}.json" }
"#,
    );
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        >= 3));
    engine.stop();
    let before = fire_times(&ws);
    // One fire a second, each a second after the last.
    for pair in before.windows(2) {
        assert_eq!(
            (parse(&pair[1]) - parse(&pair[0])).num_milliseconds(),
            1000,
            "{before:?}"
        );
    }
    let body = std::fs::read_to_string(ws.path("outbox").join(&ws.files("outbox")[0])).unwrap();
    assert!(body.starts_with("{\"run\": \"20"), "{body}");

    // Down for 3.5 s: three fires missed; at the start, one fire for the latest of them.
    std::thread::sleep(Duration::from_millis(3500));
    let restarted = chrono::Utc::now();
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(10), || fire_times(&ws)
        .len()
        > before.len()));
    let after = fire_times(&ws);
    let caught_up = parse(&after[before.len()]);
    let last = parse(before.last().unwrap());
    assert!(
        caught_up < restarted && (caught_up - last).num_milliseconds() >= 3000,
        "the catch-up fire is the latest missed time: {last} then {caught_up} (restart {restarted})"
    );
    // The processing log is written a moment after the fact.
    assert!(wait_until(Duration::from_secs(5), || ws
        .log_events()
        .iter()
        .any(
            |e| e["message"] == "firing once for the schedule's missed times"
        )));
    // Then on a second apart again, the missed ones between not fired.
    assert!(wait_until(Duration::from_secs(10), || fire_times(&ws)
        .len()
        >= before.len() + 3));
    let after = fire_times(&ws);
    assert_eq!(
        (parse(&after[before.len() + 1]) - caught_up).num_milliseconds(),
        1000
    );
    let headers =
        ws.query_pairs("SELECT json_extract(headers, '$.job'), COUNT(*) FROM messages GROUP BY 1");
    assert!(headers.contains_key("nightly-export"), "{headers:?}");
    engine.stop();
}

#[test]
fn a_cron_schedule_fires_on_its_seconds_and_skips_missed_times_when_told() {
    let ws = Workspace::new();
    ws.write_route(
        "cron.yaml",
        r#"from:
  schedule:
    cron: "*/2 * * * * *"
    time_zone: Europe/Amsterdam
    missed: skip
to:
  - file: { path: outbox, name: "{{id}}.txt" }
"#,
    );
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        >= 2));
    engine.stop();
    let before = fire_times(&ws);
    for t in &before {
        let t = parse(t);
        assert_eq!(
            (t.timestamp() % 2, t.timestamp_subsec_millis()),
            (0, 0),
            "fires on even seconds: {t}"
        );
    }
    std::thread::sleep(Duration::from_millis(4500));
    let restarted = chrono::Utc::now();
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(10), || fire_times(&ws)
        .len()
        > before.len()));
    let next = parse(&fire_times(&ws)[before.len()]);
    assert!(
        next >= restarted,
        "missed times skipped: {next} < {restarted}"
    );
    engine.stop();
}

#[test]
fn a_bad_schedule_is_refused_with_its_position() {
    let ws = Workspace::new();
    let path = ws.write_route(
        "bad.yaml",
        "from:\n  schedule:\n    cron: \"61 * * * *\"\nto:\n  - file: { path: outbox }\n",
    );
    let out = ws.run(&["check", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("bad.yaml:") && text.contains("cron `61 * * * *`"),
        "{text}"
    );
}

/// A JSON API that answers with the current document, its `ETag` or `Last-Modified` (or
/// neither), and `304` to a request that names the current one; it records what it was sent.
struct Api {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<ApiState>>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Default)]
struct ApiState {
    body: String,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Each request's conditional headers: (If-None-Match, If-Modified-Since).
    requests: Vec<(Option<String>, Option<String>)>,
}

impl Api {
    fn start() -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(ApiState::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                let h = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_string)
                                };
                                let (inm, ims) = (h("if-none-match"), h("if-modified-since"));
                                let mut s = st.lock().unwrap();
                                s.requests.push((inm.clone(), ims.clone()));
                                let unchanged = (s.etag.is_some() && inm == s.etag)
                                    || (s.last_modified.is_some() && ims == s.last_modified);
                                let mut resp = hyper::Response::new(Full::new(if unchanged {
                                    Bytes::new()
                                } else {
                                    Bytes::from(s.body.clone())
                                }));
                                if unchanged {
                                    *resp.status_mut() = hyper::StatusCode::NOT_MODIFIED;
                                }
                                resp.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                if let Some(e) = &s.etag {
                                    resp.headers_mut().insert("etag", e.parse().unwrap());
                                }
                                if let Some(l) = &s.last_modified {
                                    resp.headers_mut()
                                        .insert("last-modified", l.parse().unwrap());
                                }
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Api {
            addr,
            state,
            _rt: rt,
        }
    }

    fn serve(&self, body: &str, etag: Option<&str>, last_modified: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        s.body = body.to_string();
        s.etag = etag.map(str::to_string);
        s.last_modified = last_modified.map(str::to_string);
    }

    fn requests(&self) -> Vec<(Option<String>, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn poll_route(api: &Api, split: bool) -> String {
    format!(
        r#"from:
  http_poll:
    url: "http://{}/orders"
    every: 300ms
    split: {split}
to:
  - file: {{ path: outbox, name: "{{{{id}}}}.json" }}
"#,
        api.addr
    )
}

#[test]
fn polling_splits_a_new_answer_and_skips_an_unchanged_one_by_etag_even_after_a_restart() {
    let api = Api::start();
    api.serve(r#"[{"n":1},{"n":2},{"n":3}]"#, Some("\"v1\""), None);
    let ws = Workspace::new();
    ws.write_route("poll.yaml", &poll_route(&api, true));
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 3));
    // More polls, each answered 304: nothing new.
    let polls = api.requests().len();
    assert!(wait_until(Duration::from_secs(10), || api.requests().len()
        >= polls + 3));
    assert_eq!(ws.count("delivered"), 3);
    assert!(api.requests()[1..]
        .iter()
        .all(|(inm, _)| inm.as_deref() == Some("\"v1\"")));
    // A new version: its items.
    api.serve(r#"[{"n":4},{"n":5}]"#, Some("\"v2\""), None);
    assert!(wait_until(Duration::from_secs(10), || ws
        .count("delivered")
        == 5));
    engine.stop();
    // After a restart the first poll already names v2, and gets 304.
    let polls = api.requests().len();
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(10), || api.requests().len() > polls));
    assert_eq!(api.requests()[polls].0.as_deref(), Some("\"v2\""));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ws.count("delivered"), 5);
    let bodies: Vec<String> = ws
        .files("outbox")
        .iter()
        .map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).unwrap())
        .collect();
    assert!(bodies.contains(&"{\"n\":4}".to_string()), "{bodies:?}");
    engine.stop();
}

#[test]
fn polling_without_etag_uses_last_modified_or_the_answer_itself() {
    let api = Api::start();
    api.serve(
        r#"{"report":1}"#,
        None,
        Some("Tue, 01 Dec 2026 10:00:00 GMT"),
    );
    let ws = Workspace::new();
    ws.write_route("poll.yaml", &poll_route(&api, false));
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 1));
    let polls = api.requests().len();
    assert!(wait_until(Duration::from_secs(10), || api.requests().len()
        >= polls + 2));
    assert_eq!(
        api.requests().last().unwrap().1.as_deref(),
        Some("Tue, 01 Dec 2026 10:00:00 GMT")
    );
    // No validators at all: the same answer is recognised by its content.
    api.serve(r#"{"report":2}"#, None, None);
    assert!(wait_until(Duration::from_secs(10), || ws
        .count("delivered")
        == 2));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ws.count("delivered"),
        2,
        "an unchanged answer made a message"
    );
    api.serve(r#"{"report":3}"#, None, None);
    assert!(wait_until(Duration::from_secs(10), || ws
        .count("delivered")
        == 3));
    engine.stop();
}
