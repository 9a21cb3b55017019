//! `switchyard test --replay`: real messages taken in by the real engine over HTTP and stored
//! in a real SQLite store, replayed through candidate route files by the real binary.

mod common;

use common::*;
use std::time::Duration;

const ROUTE: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/orders], content: json }
steps:
  - filter: { drop: 'body.test == true', reason: test orders are not forwarded }
  - map:
      fields:
        order: id
        qty: qty
to:
  - file: { path: outbox, name: "{{id}}.json" }
"#;

/// One POST on a connection of its own, answered `202`.
fn post(addr: &str, body: &str) {
    let answer = net::post_once(addr, "/orders", Some("application/json"), body);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

/// Runs `switchyard test --replay` on `candidate` (written into the workspace) with `extra`.
fn replay(ws: &Workspace, candidate: &str, extra: &[&str]) -> (i32, String) {
    std::fs::write(ws.path("candidate.yaml"), candidate).unwrap();
    let mut args = vec!["test", "--replay", "candidate.yaml", "--route", "orders"];
    args.extend_from_slice(extra);
    let out = ws.run(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn stored_messages_run_through_a_candidate_show_what_it_would_change() {
    let ws = Workspace::new();
    ws.write_route("orders.yaml", ROUTE);
    let engine = ws.start();
    let addr = ws.http_addr();
    post(&addr, r#"{"id": 1, "qty": 5}"#);
    post(&addr, r#"{"id": 2, "qty": 500}"#);
    post(&addr, r#"{"id": 3, "qty": 1, "test": true}"#);
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 2
        && ws.count("filtered") == 1));
    engine.stop();

    // The same route: nothing would change.
    let (code, out) = replay(&ws, ROUTE, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("3 message(s): 3 same, 0 different, 0 skipped"),
        "{out}"
    );

    // A new field in every order: the two delivered messages differ, the filtered one not.
    let added = ROUTE.replace(
        "        qty: qty\n",
        "        qty: qty\n        channel: '= \"web\"'\n",
    );
    let (code, out) = replay(&ws, &added, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("3 message(s): 1 same, 2 different, 0 skipped"),
        "{out}"
    );
    assert!(out.contains("+  \"channel\": \"web\""), "{out}");
    assert!(
        out.contains("--- running") && out.contains("+++ candidate"),
        "{out}"
    );
    // ... unless that field is declared free to differ.
    let (code, out) = replay(&ws, &added, &["--ignore", "/channel"]);
    assert_eq!(code, 0, "{out}");

    // Without the filter, the test order would be delivered: the outcome differs.
    let unfiltered = ROUTE.replace(
        "  - filter: { drop: 'body.test == true', reason: test orders are not forwarded }\n",
        "",
    );
    let (code, out) = replay(&ws, &unfiltered, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("filtered: steps[0].filter: test orders are not forwarded → to to[0]"),
        "{out}"
    );
    // Only messages since a time: none an hour from now.
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let (code, out) = replay(&ws, &unfiltered, &["--since", &later]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 message(s)"), "{out}");
}
