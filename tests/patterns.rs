//! Integration patterns end to end through the real binary, real HTTP on 127.0.0.1 and a real
//! SQLite store: the idempotent receiver (`dedupe`), a destination's `rate` and a route's
//! `throttle`, the content enricher (`enrich`) against a real HTTP service.

mod common;

use common::*;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
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
  - transform: { script: 'body = #{ price: 42 }' }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_drops_a_key_seen_within_its_window_and_takes_a_resend_of_a_failure() {
    let ws = Workspace::new();
    ws.write_route("orders.yaml", ORDERS);
    ws.write_route("quotes.yaml", QUOTES);
    let engine = ws.start();
    let orders = format!("http://{}/orders", ws.route_listener("orders", &[]));

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
    let quotes = format!("http://{}/quote", ws.route_listener("quotes", &[]));
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
    let orders = format!("http://{}/orders", ws.route_listener("orders", &[&orders]));
    let (status, after) = post(&orders, r#"{"order": {"id": 1002}}"#).await;
    assert_eq!((status, after["status"].as_str()), (202, Some("duplicate")));
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("duplicate")
        == 3));
    assert_eq!(ws.files("outbox").len(), 3);
    engine.stop();
}

const PACED: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/in] }
to:
  - file: { path: fast, name: "{{id}}.txt" }
  - file:
      path: slow
      name: "{{id}}.txt"
      delivery: { rate: 5/s, burst: 1 }
"#;

const GATED: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/in] }
throttle: { rate: 10/s, burst: 1 }
to:
  - file: { path: gated, name: "{{id}}.txt" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_rate_and_a_route_throttle_hold_without_slowing_anything_else() {
    let ws = Workspace::new();
    ws.write_route("paced.yaml", PACED);
    ws.write_route("gated.yaml", GATED);
    let engine = ws.start();
    let paced = format!("http://{}/in", ws.route_listener("paced", &[]));
    let gated = format!("http://{}/in", ws.route_listener("gated", &[]));

    // A destination at 5/s with a burst of 1: 20 deliveries take at least 19/5 s, while the
    // route's other destination has all 20 at once.
    let started = std::time::Instant::now();
    for i in 0..20 {
        assert_eq!(post(&paced, &format!("{{\"n\": {i}}}")).await.0, 202);
    }
    assert!(wait_until(Duration::from_secs(20), || ws
        .files("fast")
        .len()
        == 20));
    let slow_then = ws.files("slow").len();
    assert!(
        slow_then < 20,
        "the paced destination kept up with the other one"
    );
    assert!(wait_until(Duration::from_secs(30), || ws
        .files("slow")
        .len()
        == 20));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3_700),
        "20 deliveries at 5/s took only {took:?}"
    );

    // A route taking in at most 10/s with a burst of 1: the 11th acknowledgement comes a
    // second after the first at the earliest; nothing is lost on the way.
    let started = std::time::Instant::now();
    for i in 0..11 {
        assert_eq!(post(&gated, &format!("{{\"n\": {i}}}")).await.0, 202);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "11 messages through a 10/s throttle in {took:?}"
    );
    assert!(wait_until(Duration::from_secs(20), || ws
        .files("gated")
        .len()
        == 11));
    engine.stop();
}

/// A customer service answering 503 once (retried inside the step), then 200, then 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_merges_an_answer_retries_a_transient_failure_caches_and_fails_on_404() {
    let crm = common::net::HttpSink::start(vec![503, 200, 404]).await;
    let ws = Workspace::new();
    ws.write_route(
        "enriched.yaml",
        &format!(
            r#"from:
  http: {{ listen: 127.0.0.1:0, paths: [/orders], content: json }}
steps:
  - enrich:
      url: "http://{}/customers/{{{{body.customer}}}}"
      headers: {{ authorization: "Bearer crm-token" }}
      into: customer_record
      cache: {{ ttl: 1m }}
to:
  - file: {{ path: outbox, name: "{{{{id}}}}.json" }}
"#,
            crm.addr
        ),
    );
    let engine = ws.start();
    let orders = format!("http://{}/orders", ws.route_listener("enriched", &[]));
    let read = |id: &serde_json::Value| -> serde_json::Value {
        let path = ws.path(&format!("outbox/{}.json", id.as_str().unwrap()));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };

    let (_, first) = post(&orders, r#"{"customer": "c-1", "total": 10}"#).await;
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 1));
    let out = read(&first["id"]);
    assert_eq!(out["customer_record"], "answer 2", "{out}");
    assert_eq!(out["total"], 10);
    // The same customer again: from the cache, no call.
    let (_, second) = post(&orders, r#"{"customer": "c-1", "total": 20}"#).await;
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 2));
    assert_eq!(read(&second["id"])["customer_record"], "answer 2");
    // A customer the service does not know: the message fails, saying what was called.
    let (_, unknown) = post(&orders, r#"{"customer": "c/9", "total": 30}"#).await;
    assert!(wait_until(Duration::from_secs(20), || ws.count("failed") == 1));
    let error = ws.query_pairs(&format!(
        "SELECT error, 1 FROM messages WHERE id = '{}'",
        unknown["id"].as_str().unwrap()
    ));
    let error = error.keys().next().unwrap();
    assert!(
        error.contains(&format!(
            "steps[0].enrich: GET http://{}/customers/c%2F9 answered HTTP 404: answer 3",
            crm.addr
        )),
        "{error}"
    );
    let calls = crm.requests();
    let paths: Vec<&str> = calls.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/customers/c-1", "/customers/c-1", "/customers/c%2F9"],
        "a 503 tried again, the cached answer not asked for"
    );
    assert_eq!(calls[0].header("authorization"), Some("Bearer crm-token"));
    // The call is recorded with the message's headers.
    let shown = ws.run(&["messages", "show", first["id"].as_str().unwrap()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("headers after the steps")
            && shown.contains("  enrich.customer_record.status: 200"),
        "{shown}"
    );
    engine.stop();
    crm.stop();
}

/// Request-reply through a backend: the caller's request mapped, POSTed to the backend, its
/// answer mapped back and returned to the caller; a backend that keeps failing is a 422 with
/// the backend's answer, after the step's tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_route_answers_with_a_backends_answer_transformed_both_ways() {
    let backend = common::net::HttpSink::start(vec![200, 500]).await;
    let ws = Workspace::new();
    ws.write_route(
        "pricing.yaml",
        &format!(
            r#"from:
  http: {{ listen: 127.0.0.1:0, paths: [/price], content: json, response: reply }}
steps:
  - map: {{ fields: {{ sku: item, qty: amount }} }}
  - enrich: {{ url: "http://{}/prices", method: POST, send: $, into: $, retry: {{ backoff: 10ms }} }}
  - transform: {{ script: 'body = #{{ quote: body, currency: "EUR" }}' }}
"#,
            backend.addr
        ),
    );
    let engine = ws.start();
    let url = format!("http://{}/price", ws.route_listener("pricing", &[]));
    let (status, answer) = post(&url, r#"{"item": "A-7", "amount": 3}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({ "quote": "answer 1", "currency": "EUR" })
    );
    let sent = &backend.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/prices")
    );
    let sent: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent, serde_json::json!({ "sku": "A-7", "qty": 3 }));

    let (status, answer) = post(&url, r#"{"item": "B-1", "amount": 1}"#).await;
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500: answer 4 (after 3 tries)"),
        "{error}"
    );
    assert_eq!(backend.requests().len(), 4);
    engine.stop();
    backend.stop();
}

/// A lab system's query port: MLLP, one HL7 answer per query, its result taken from the
/// specimen asked for; `silent` accepts and never answers. Returns its port and a count of
/// the queries it answered.
async fn lab_system(silent: bool) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        if silent {
                            continue;
                        }
                        let text = String::from_utf8_lossy(&frame[1..frame.len() - 2]).into_owned();
                        let control = text
                            .split('\r')
                            .next()
                            .and_then(|msh| msh.split('|').nth(9))
                            .unwrap_or("");
                        let specimen = text
                            .split('\r')
                            .find(|s| s.starts_with("QRD|"))
                            .and_then(|qrd| qrd.split('|').nth(4))
                            .unwrap_or("");
                        let value = if specimen == "S-1" { "5.4" } else { "7.1" };
                        let answer = format!(
                            "\x0bMSH|^~\\&|LAB|LAB|SWITCHYARD|HOSP|20261204||ORF^R04|A{control}|P|2.5\rMSA|AA|{control}\rOBX|1|NM|GLU^Glucose||{value}|mmol/L\r\x1c\r"
                        );
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, answered)
}

const LAB_QUERY: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/glucose], content: json, response: reply, reply_timeout: 10s }
steps:
  - transform:
      script: |
        body = "MSH|^~\\&|SWITCHYARD|HOSP|LAB|LAB|20261204||QRY^R02|" + id + "|P|2.5\rQRD|20261204|R|I|" + body.specimen + "\r";
  - enrich:
      endpoint: lab-query
      into: $
      timeout: 1s
      retry: { max_attempts: 2, backoff: 100ms }
  - transform:
      script: |
        body = #{ result: hl7(body, "OBX-5"), unit: hl7(body, "OBX-6"), ack: hl7(body, "MSA-1") };
"#;

const LAB_SLOW: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/slow], content: json, response: reply, reply_timeout: 1s }
steps:
  - enrich:
      tcp: { host: 127.0.0.1, port: ${SILENT_PORT}, framing: mllp }
      into: $
      timeout: 3s
      retry: { max_attempts: 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_through_an_mllp_backend_named_as_an_endpoint() {
    let (port, answered) = lab_system(false).await;
    let (silent, _) = lab_system(true).await;
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("adapters")).unwrap();
    std::fs::write(
        ws.path("adapters/lab-query.yaml"),
        format!("tcp: {{ host: 127.0.0.1, port: {port}, framing: mllp }}\n"),
    )
    .unwrap();
    ws.write_route("lab-query.yaml", LAB_QUERY);
    ws.write_route("lab-slow.yaml", LAB_SLOW);
    let engine = ws.start_with_env(&[("SILENT_PORT", &silent.to_string())]);
    let url = format!("http://{}/glucose", ws.route_listener("lab-query", &[]));

    // The JSON request becomes an HL7 query, the lab's HL7 answer the JSON reply.
    for (specimen, result) in [("S-1", "5.4"), ("S-2", "7.1")] {
        let (status, answer) = post(&url, &format!(r#"{{"specimen": "{specimen}"}}"#)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer,
            serde_json::json!({"result": result, "unit": "mmol/L", "ack": "AA"})
        );
    }
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A backend that never answers: the step's tries run out and the caller hears why.
    let slow = format!("http://{}/slow", ws.route_listener("lab-slow", &[]));
    let started = std::time::Instant::now();
    let (status, answer) = post(&slow, "{}").await;
    assert_eq!(status, 504, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Still finished and recorded: failed, saying the backend did not answer.
    assert!(wait_until(Duration::from_secs(20), || ws.count("failed") == 1));
    let errors = ws.query_pairs("SELECT error, 1 FROM messages WHERE state = 'failed'");
    let error = errors.keys().next().unwrap();
    assert!(
        error.contains("no answer from 127.0.0.1:") && error.contains("in time"),
        "{error}"
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_glucose_query_service_runs_as_shipped() {
    let (port, answered) = lab_system(false).await;
    let ws = Workspace::new();
    ws.copy_from_repo(
        "examples/routes/glucose-query-service.yaml",
        "routes/glucose-query-service.yaml",
    );
    ws.copy_from_repo("adapters/lab-query.yaml", "adapters/lab-query.yaml");
    let engine = ws.start_with_env(&[
        ("GLUCOSE_LISTEN", "127.0.0.1:0"),
        ("LAB_QUERY_PORT", &port.to_string()),
    ]);
    let url = format!(
        "http://{}/glucose",
        ws.route_listener("glucose-query-service", &[])
    );
    let (status, answer) = post(&url, r#"{"specimen": "S-1"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"result": "5.4", "unit": "mmol/L", "test": "Glucose"})
    );
    let (status, answer) = post(&url, r#"{"specimen": 7}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
    engine.stop();
}
