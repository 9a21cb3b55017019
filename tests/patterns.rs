//! Integration patterns end to end through the real binary, real HTTP on 127.0.0.1 and a real
//! SQLite store: the idempotent receiver (`dedupe`).

mod common;

use common::*;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The address the HTTP listener of `route` bound to.
fn listen_addr(ws: &Workspace, route: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = ws
            .log_events()
            .iter()
            .find(|e| e["message"] == "HTTP listener ready" && e["route"] == route)
            .and_then(|e| e["listen"].as_str().map(str::to_string));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("route {route}'s HTTP listener never became ready"))
}

async fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

const ORDERS: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/orders], content: json }
dedupe:
  key: body.order.id
  window: 1h
steps:
  - transform:
      script: |
        if body.order.reject == true { throw "order refused by the shop rules" }
        body
to:
  - file: { path: outbox, name: "order-{{id}}.json" }
"#;

const QUOTES: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/quote], response: reply }
dedupe: { key: 'headers["http.header.idempotency-key"]', window: 10m }
steps:
  - transform: { script: '#{ price: 42 }' }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_drops_a_key_seen_within_its_window_and_takes_a_resend_of_a_failure() {
    let ws = Workspace::new();
    ws.write_route("orders.yaml", ORDERS);
    ws.write_route("quotes.yaml", QUOTES);
    let engine = ws.start();
    let orders = format!("http://{}/orders", listen_addr(&ws, "orders"));

    let (status, first) = post(&orders, r#"{"order": {"id": 1001}}"#).await;
    assert_eq!((status, first["status"].as_str()), (202, Some("accepted")));
    // The same order again: taken (the sender must not resend), recorded, not delivered.
    let (status, again) = post(&orders, r#"{"order": {"id": 1001, "note": "resent"}}"#).await;
    assert_eq!(status, 202);
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["duplicate_of"], first["id"]);
    let (status, _) = post(&orders, r#"{"order": {"id": 1002}}"#).await;
    assert_eq!(status, 202);
    // A failed order does not hold its key: the corrected resend goes through.
    let (status, _) = post(&orders, r#"{"order": {"id": 1003, "reject": true}}"#).await;
    assert_eq!(status, 202);
    assert!(wait_until(Duration::from_secs(20), || ws.count("failed") == 1));
    let (status, resent) = post(&orders, r#"{"order": {"id": 1003}}"#).await;
    assert_eq!((status, resent["status"].as_str()), (202, Some("accepted")));
    // No key: recorded as failed, saying why, never let through unchecked.
    let (status, keyless) = post(&orders, r#"{"customer": "x"}"#).await;
    assert_eq!(status, 202);

    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 3),
        "{:?}",
        ws.states()
    );
    assert_eq!(ws.files("outbox").len(), 3, "{:?}", ws.files("outbox"));
    assert_eq!(ws.count("duplicate"), 1);
    assert_eq!(ws.count("failed"), 2);
    let error = ws.query_pairs(&format!(
        "SELECT error, 1 FROM messages WHERE id = '{}'",
        keyless["id"].as_str().unwrap()
    ));
    let error = error.keys().next().unwrap();
    assert!(
        error.contains("dedupe.key `body.order.id` gave no key"),
        "{error}"
    );

    // The key is a search field; the duplicate names the first and the window.
    let keyed = ws.query_pairs(
        "SELECT value, COUNT(*) FROM message_index WHERE name = 'dedupe_key' GROUP BY value",
    );
    assert_eq!(keyed.get("1001"), Some(&2), "{keyed:?}");
    let found = ws.run(&["messages", "list", "--field", "dedupe_key=1001"]);
    let out = String::from_utf8_lossy(&found.stdout);
    for id in [&first["id"], &again["id"]] {
        let id = id.as_str().unwrap();
        assert!(out.contains(id), "{id} not in\n{out}");
    }
    assert!(out.contains("2 message(s)"), "{out}");
    let dup = ws.run(&["messages", "show", again["id"].as_str().unwrap()]);
    let shown = String::from_utf8_lossy(&dup.stdout);
    assert!(
        shown.contains(&format!(
            "duplicate of message {}: dedupe_key `1001` was received within the last 1h",
            first["id"].as_str().unwrap()
        )),
        "{shown}"
    );

    // Request-reply: a second request with the same idempotency key is answered 409 at once.
    let quotes = format!("http://{}/quote", listen_addr(&ws, "quotes"));
    let ask = || {
        client()
            .post(&quotes)
            .header("idempotency-key", "q-7")
            .body("{}")
            .send()
    };
    let r = ask().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = ask().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("duplicate of message"),
        "{body}"
    );

    // Without the key: answered at once, 422, saying what is missing.
    let r = client().post(&quotes).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("dedupe.key `headers[\"http.header.idempotency-key\"]` gave no key"),
        "{body}"
    );

    // The keys live in the store: after a SIGKILL and a restart, a resend is still dropped.
    engine.kill();
    let engine = ws.start();
    let orders = format!(
        "http://{}/orders",
        wait_for_new_listener(&ws, "orders", &orders)
    );
    let (status, after) = post(&orders, r#"{"order": {"id": 1002}}"#).await;
    assert_eq!((status, after["status"].as_str()), (202, Some("duplicate")));
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("duplicate")
        == 3));
    assert_eq!(ws.files("outbox").len(), 3);
    engine.stop();
}

/// The listener of `route` started after `old` (a restarted engine binds another port).
fn wait_for_new_listener(ws: &Workspace, route: &str, old: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = ws
            .log_events()
            .iter()
            .filter(|e| e["message"] == "HTTP listener ready" && e["route"] == route)
            .filter_map(|e| e["listen"].as_str().map(str::to_string))
            .rfind(|a| !old.contains(a.as_str()));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("route {route} did not listen again"))
}
