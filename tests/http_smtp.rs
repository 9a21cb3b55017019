//! HTTP inbound and outbound, and e-mail, end to end over real sockets on 127.0.0.1: a real
//! HTTP client against the listener, a real receiving HTTP server, a real SMTP server.

mod common;

use common::net::{HttpSink, SmtpSink};
use common::*;
use std::io::{Read, Write};
use std::ops::Not;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ack_mode_auth_limits_and_bad_json() {
    let ws = Workspace::new();
    ws.write_route(
        "shop.yaml",
        r#"from:
  http:
    listen: 127.0.0.1:0
    paths: [/orders]
    content: json
    max_body: 1KiB
    auth: { bearer: ["${SHOP_TOKEN}"] }
to:
  - file: { path: outbox, name: "{{id}}.json" }
"#,
    );
    let engine = ws.start_with_env(&[("SHOP_TOKEN", "t0ken-123")]);
    let base = format!("http://{}", ws.http_addr());
    let c = client();

    let r = c
        .post(format!("{base}/orders?channel=web"))
        .bearer_auth("t0ken-123")
        .header("content-type", "application/json")
        .body(r#"{"order": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ack: serde_json::Value = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let id = ack["id"].as_str().unwrap().to_string();
    assert_eq!(ack["status"], "accepted");
    assert!(
        wait_for(Duration::from_secs(20), || ws.files("outbox")
            == vec![format!("{id}.json")])
        .await
    );
    let headers = ws.query_pairs(&format!(
        "SELECT headers, 1 FROM messages WHERE id = '{id}'"
    ));
    let headers: serde_json::Value = serde_json::from_str(headers.keys().next().unwrap()).unwrap();
    assert_eq!(headers["http.method"], "POST");
    assert_eq!(headers["http.path"], "/orders");
    assert_eq!(headers["http.query.channel"], "web");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers.get("http.header.authorization").is_none(),
        "credentials must never be stored"
    );

    // Refused before anything is stored.
    let status = |r: reqwest::Response| r.status().as_u16();
    let no_auth = c
        .post(format!("{base}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.headers()["www-authenticate"], "Bearer");
    assert_eq!(status(no_auth), 401);
    let wrong = c
        .post(format!("{base}/orders"))
        .bearer_auth("guess")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(status(wrong), 401);
    let big = c
        .post(format!("{base}/orders"))
        .bearer_auth("t0ken-123")
        .body("x".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(status(big), 413);
    // The same without a content-length (chunked): the limit holds while the body streams in.
    let addr = base.trim_start_matches("http://").to_string();
    let chunked = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken-123\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        for _ in 0..30 {
            if s.write_all(b"64\r\n").is_err() || s.write_all(&[b'['; 100]).is_err() || s.write_all(b"\r\n").is_err() {
                break;
            }
        }
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert_eq!(
        status(c.post(format!("{base}/nowhere")).send().await.unwrap()),
        404
    );
    assert_eq!(
        status(c.get(format!("{base}/orders")).send().await.unwrap()),
        405
    );
    assert_eq!(
        ws.states().values().sum::<u64>(),
        1,
        "refused requests stored nothing: {:?}",
        ws.states()
    );

    // Malformed JSON: 400 with the parser's message, and a failed record.
    let bad = c
        .post(format!("{base}/orders"))
        .bearer_auth("t0ken-123")
        .body(r#"{"order": }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: serde_json::Value = bad
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON: expected value at line 1 column 11"),
        "{bad}"
    );
    assert_eq!(ws.count("failed"), 1);

    // Valid JSON nested deeper than the engine reads: 400 saying which limit, not "invalid".
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let deep = c
        .post(format!("{base}/orders"))
        .bearer_auth("t0ken-123")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 400);
    let deep: serde_json::Value = serde_json::from_slice(&deep.bytes().await.unwrap()).unwrap();
    let why = deep["error"].as_str().unwrap();
    assert!(
        why.contains("nested deeper than 127 levels") && !why.contains("not valid"),
        "{deep}"
    );
    assert_eq!(ws.count("failed"), 2);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reply_mode_answers_with_the_route_result_or_504() {
    let ws = Workspace::new();
    ws.write_route(
        "quote.yaml",
        r#"from:
  http:
    listen: 127.0.0.1:0
    response: reply
    reply_timeout: 2s
steps:
  - validate:
      script: 'if body.qty < 1 { "qty must be at least 1" } else { true }'
  - transform:
      script: |
        if body.qty == 99 { let t = timestamp(); while t.elapsed < 4.0 { } }
        body = #{ sku: body.sku, total: body.qty * 2.5 };
        headers["http.status"] = "201";
      limits: { max_operations: 1000000000, timeout: 60s }
to:
  - file: { path: outbox }
"#,
    );
    let engine = ws.start();
    let base = format!("http://{}", ws.http_addr());
    let c = client();
    let r = c
        .post(&base)
        .header("content-type", "application/json")
        .body(r#"{"sku": "A", "qty": 4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("x-message-id").is_some());
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(body, serde_json::json!({"sku": "A", "total": 10.0}));

    let r = c
        .post(&base)
        .header("content-type", "application/json")
        .body(r#"{"sku": "A", "qty": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("qty must be at least 1"),
        "{body}"
    );

    let r = c
        .post(&base)
        .header("content-type", "application/json")
        .body(r#"{"sku": "A", "qty": 99}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("will still be processed"),
        "{body}"
    );
    // ... and it is.
    assert!(
        wait_for(Duration::from_secs(60), || ws.count("delivered") == 2).await,
        "{:?}",
        ws.states()
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        "from:\n  http: { listen: 127.0.0.1:0, header_timeout: 500ms, body_timeout: 500ms }\nto:\n  - file: { path: outbox }\n",
    );
    let engine = ws.start();
    let addr = ws.http_addr();
    let (a1, a2) = (addr.clone(), addr.clone());
    // Headers trickled: the server closes the connection after header_timeout.
    let trickle_headers = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&a1).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // returns when the server closes
        started.elapsed()
    });
    // Body trickled: 408 after body_timeout.
    let trickle_body = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&a2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    // Meanwhile a normal client is served.
    let r = client()
        .post(format!("http://{addr}/"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let held = tokio::task::spawn_blocking(move || trickle_headers.join().unwrap())
        .await
        .unwrap();
    assert!(
        held < Duration::from_secs(5),
        "a header trickle held the connection for {held:?}"
    );
    let answer = tokio::task::spawn_blocking(move || trickle_body.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(wait_for(Duration::from_secs(10), || ws.count("delivered") == 1).await);
    assert_eq!(ws.states().values().sum::<u64>(), 1);
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outbound_retries_5xx_fails_4xx_and_dead_letters() {
    // Fails twice with 500, then takes it.
    let flaky = HttpSink::start(vec![500, 503, 201]).await;
    // Refuses for good.
    let strict = HttpSink::start(vec![400]).await;
    // Nothing listens here.
    let down = common::net::free_port();
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        &format!(
            r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms }}
to:
  - http:
      url: "http://{flaky}/erp/orders/{{{{header.file.name}}}}"
      headers: {{ x-api-key: "${{ERP_KEY}}" }}
      delivery: {{ retry: {{ max_attempts: 5, backoff: 100ms }} }}
  - http:
      url: "http://{strict}/strict"
      delivery: {{ retry: {{ max_attempts: 5, backoff: 100ms }} }}
  - http:
      url: "http://127.0.0.1:{down}/down"
      connect_timeout: 1s
      delivery: {{ retry: {{ max_attempts: 2, backoff: 100ms }} }}
  # Renders to `o1.json`, not a URL: never sent, dead at once.
  - http:
      url: "{{{{header.file.name}}}}"
      delivery: {{ retry: {{ max_attempts: 5, backoff: 100ms }} }}
dead_letter:
  file: {{ path: dead, name: "{{{{original_name}}}}" }}
"#,
            flaky = flaky.addr,
            strict = strict.addr
        ),
    );
    let engine = ws.start_with_env(&[("ERP_KEY", "k-42")]);
    ws.drop_file("inbox", "o1.json", br#"{"order": 1}"#);
    let done = wait_for(Duration::from_secs(30), || {
        ws.count("dead") == 1
            && ws
                .query_pairs("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                .contains_key("pending")
                .not()
    })
    .await;
    assert!(
        done,
        "{:?}",
        ws.query_pairs("SELECT destination || ' ' || state, attempts FROM deliveries")
    );
    let flaky_requests = flaky.requests();
    assert_eq!(flaky_requests.len(), 3);
    let last = &flaky_requests[2];
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/erp/orders/o1.json")
    );
    assert_eq!(last.header("x-api-key"), Some("k-42"));
    assert_eq!(&last.body[..], br#"{"order": 1}"#);
    assert_eq!(strict.requests().len(), 1, "a 400 is not retried");
    let states =
        ws.query_pairs("SELECT destination || ' ' || state || ' ' || attempts, 1 FROM deliveries");
    let states: Vec<&String> = states.keys().collect();
    assert_eq!(
        states,
        vec![
            "dead_letter delivered 1",
            "to[0] delivered 3",
            "to[1] dead 1",
            "to[2] dead 2",
            "to[3] dead 1"
        ],
        "{states:?}"
    );
    // Each attempt records the status and the start of the answer.
    let details =
        ws.query_pairs("SELECT name || ': ' || detail, 1 FROM transitions WHERE event = 'attempt'");
    let details: Vec<&String> = details.keys().collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("to[0]: attempt 1: HTTP 500 from 127.0.0.1: answer 1")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("to[1]: attempt 1: HTTP 400 from 127.0.0.1: answer 1")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("to[2]: attempt 2: cannot connect to 127.0.0.1")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.starts_with(
            "to[3]: attempt 1: bad request for the configured URL: relative URL without a base"
        )),
        "{details:?}"
    );
    // The dead delivery's message went to the dead letter once (two dead deliveries, one copy each would be two files; names clash into -2).
    assert!(wait_for(Duration::from_secs(10), || !ws.files("dead").is_empty()).await);
    engine.stop();
    flaky.stop();
    strict.stop();
}

#[test]
fn smtp_outbound_sends_text_and_attachments_to_a_real_server() {
    let ws = Workspace::new();
    // The server asks to try again twice before it takes a mail.
    let smtp = SmtpSink::start(&ws.path("mails"), 2);
    ws.write_route(
        "mail.yaml",
        &format!(
            r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms }}
to:
  - smtp:
      host: 127.0.0.1
      port: {port}
      security: none
      from: "Switchyard <switchyard@example.com>"
      to: ["orders@example.com", "{{{{header.copy-to}}}}"]
      subject: "Order {{{{original_stem}}}} received"
      body_as: attachment
      text: "Order {{{{original_stem}}}} is attached."
      delivery: {{ retry: {{ max_attempts: 5, backoff: 100ms }} }}
"#,
            port = smtp.port
        ),
    );
    // copy-to comes from a header the steps could set; here it is missing, so the address is
    // empty and the delivery fails for good — then we fix the route.
    let engine = ws.start();
    ws.drop_file("inbox", "PO-77.xml", b"<order id=\"77\"/>");
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("dead") == 1),
        "{:?}",
        ws.states()
    );
    let errors = ws.query_pairs("SELECT last_error, 1 FROM deliveries");
    assert!(
        errors
            .keys()
            .any(|e| e.contains("`to` gives ``, which is not an e-mail address")),
        "{errors:?}"
    );
    engine.stop();

    let text = std::fs::read_to_string(ws.path("routes/mail.yaml")).unwrap();
    std::fs::write(
        ws.path("routes/mail.yaml"),
        text.replace(
            "[\"orders@example.com\", \"{{header.copy-to}}\"]",
            "[\"orders@example.com\"]",
        ),
    )
    .unwrap();
    let engine = ws.start();
    ws.drop_file("inbox", "PO-78.xml", b"<order id=\"78\"/>");
    assert!(
        wait_until(Duration::from_secs(30), || ws.count("delivered") == 1),
        "{:?}",
        ws.states()
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("Subject: Order PO-78 received"), "{mail}");
    assert!(
        mail.contains("From: Switchyard <switchyard@example.com>"),
        "{mail}"
    );
    assert!(mail.contains("Order PO-78 is attached."), "{mail}");
    assert!(mail.contains("filename=\"PO-78.xml\""), "{mail}");
    // Two 451 answers were retried before the 250.
    let outcomes = ws.query_pairs("SELECT outcome, COUNT(*) FROM transitions WHERE event = 'attempt' AND message_id IN (SELECT id FROM messages WHERE state = 'delivered') GROUP BY outcome");
    assert_eq!(outcomes.get("retry"), Some(&2), "{outcomes:?}");
    let detail = ws.query_pairs("SELECT detail, 1 FROM transitions WHERE outcome = 'retry'");
    assert!(detail.keys().all(|d| d.contains("451")), "{detail:?}");
    engine.stop();
}

#[test]
fn https_listener_with_tls_from_cert_and_key_files() {
    let ws = Workspace::new();
    let (cert, key, ca) = common::net::test_ca(ws.dir.path());
    ws.write_route(
        "tls.yaml",
        &format!(
            "from:\n  http:\n    listen: 127.0.0.1:0\n    tls: {{ cert: {}, key: {} }}\nto:\n  - file: {{ path: outbox }}\n",
            cert.display(),
            key.display()
        ),
    );
    let engine = ws.start();
    let addr = ws.http_addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let pem = std::fs::read(&ca).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        c.post(format!("https://localhost:{port}/"))
            .body("secret")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 202);
    // Plain HTTP on the TLS port gets nothing.
    let plain = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
    });
    assert!(plain.is_err() || plain.unwrap().status() != 202);
    assert!(wait_until(Duration::from_secs(10), || ws
        .count("delivered")
        == 1));
    engine.stop();
}

#[test]
fn an_unset_environment_variable_is_a_check_error_with_its_position() {
    let ws = Workspace::new();
    let route = ws.write_route(
        "r.yaml",
        "from:\n  http:\n    listen: 127.0.0.1:0\n    auth: { bearer: [\"${SWITCHYARD_TEST_NEVER_SET}\"] }\nto:\n  - file: { path: outbox }\n",
    );
    let out = ws.run(&["check", &path_str(&route)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "{}:4:23: environment variable `SWITCHYARD_TEST_NEVER_SET` is not set",
            route.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webshop_example_posts_xml_to_the_erp_and_mails_a_notice() {
    let ws = Workspace::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/routes");
    for (from, to) in [
        ("webshop-orders.yaml", "webshop-orders.yaml"),
        (
            "schemas/webshop-order.schema.json",
            "schemas/webshop-order.schema.json",
        ),
        ("scripts/webshop-to-erp.rhai", "scripts/webshop-to-erp.rhai"),
    ] {
        let target = ws.path("routes").join(to);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(examples.join(from), target).unwrap();
    }
    let erp = HttpSink::start(vec![503, 200]).await;
    let smtp = SmtpSink::start(&ws.path("mails"), 0);
    let (erp_url, smtp_port) = (format!("http://{}", erp.addr), smtp.port.to_string());
    let engine = ws.start_with_env(&[
        ("SHOP_LISTEN", "127.0.0.1:0"),
        ("SHOP_TOKEN", "shop-secret"),
        ("ERP_URL", &erp_url),
        ("ERP_TOKEN", "erp-secret"),
        ("SMTP_PORT", &smtp_port),
    ]);
    let base = format!("http://{}", ws.http_addr());
    let order = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webshop/order-7001.json"),
    )
    .unwrap();
    let r = client()
        .post(format!("{base}/orders"))
        .bearer_auth("shop-secret")
        .header("content-type", "application/json")
        .body(order)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        wait_for(Duration::from_secs(60), || ws.count("delivered") == 1).await,
        "{:?}",
        ws.states()
    );
    let requests = erp.requests();
    assert_eq!(requests.len(), 2, "the 503 was retried");
    let put = &requests[1];
    assert_eq!(
        (put.method.as_str(), put.path.as_str()),
        ("PUT", "/orders/WS-7001")
    );
    assert_eq!(put.header("authorization"), Some("Bearer erp-secret"));
    assert_eq!(put.header("content-type"), Some("application/xml"));
    let xml = String::from_utf8_lossy(&put.body);
    assert!(
        xml.contains(r#"<erpOrder number="WS-7001">"#)
            && xml.contains(r#"<line no="2" sku="NUT-M8">"#),
        "{xml}"
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains("Subject: Web shop order WS-7001 for C-9"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("erp-order-WS-7001.xml"), "{}", mails[0]);
    // Secrets from the environment never reach the log.
    let log = std::fs::read_to_string(ws.path("logs/switchyard.jsonl")).unwrap();
    assert!(!log.contains("shop-secret") && !log.contains("erp-secret"));
    engine.stop();
    erp.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_checked_before_the_body_is_read() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        r#"from:
  http:
    listen: 127.0.0.1:0
    max_body: 10
    auth: { basic: [ { username: lab, password: "${LAB_PASSWORD}" } ] }
to:
  - file: { path: outbox }
"#,
    );
    let engine = ws.start_with_env(&[("LAB_PASSWORD", "pa:ss")]);
    let base = format!("http://{}", ws.http_addr());
    let c = client();
    // Without credentials an oversized body gets 401, not 413: the body is never looked at.
    let r = c.post(&base).body("x".repeat(100)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"switchyard\""
    );
    let r = c
        .post(&base)
        .basic_auth("lab", Some("wrong"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&base)
        .basic_auth("lab", Some("pa:ss"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(&base)
        .basic_auth("lab", Some("pa:ss"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(wait_for(Duration::from_secs(10), || ws.count("delivered") == 1).await);
    assert_eq!(ws.states().values().sum::<u64>(), 1);
    engine.stop();
}

/// SIGTERM under a steady load of keep-alive clients: the engine answers what is in flight,
/// finishes its work and exits as soon as that is done, well within the drain timeout; every
/// request answered 202 is delivered.
#[test]
fn sigterm_under_load_exits_when_the_work_in_hand_is_done() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "feed.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nsteps:\n  - transform: {{ script: 'body.seen = true;' }}\nto:\n  - file: {{ path: outbox, name: \"{{{{id}}}}.json\" }}\n"
        ),
    );
    let engine = ws.start();
    ws.http_addr();
    let (stop, accepted) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _in = rt.enter();
                let c = reqwest::Client::new();
                while !stop.load(Ordering::SeqCst) {
                    let sent = rt.block_on(
                        c.post(format!("http://127.0.0.1:{port}/"))
                            .header("content-type", "application/json")
                            .body("{\"n\":1}")
                            .timeout(Duration::from_secs(30))
                            .send(),
                    );
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(30), || accepted
        .load(Ordering::SeqCst)
        >= 300));
    // A client trickling its body does not hold the shutdown: it is told to send again.
    let mut trickler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    {
        use std::io::Write;
        trickler
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"n\":")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = std::time::Instant::now();
    let (status, console) = engine.stop();
    let took = signalled.elapsed();
    let mut answer = String::new();
    {
        use std::io::Read;
        trickler
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = trickler.read_to_string(&mut answer);
    }
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("send it again"),
        "the trickling client got: {answer:?}"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "{console}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to stop (the drain timeout is 30s): {console}"
    );
    // Every 202 is delivered, after a restart if need be.
    let engine = ws.start();
    let accepted = accepted.load(Ordering::SeqCst) as u64;
    assert!(
        wait_until(Duration::from_secs(30), || ws.count("delivered")
            >= accepted),
        "{accepted} accepted: {:?}",
        ws.states()
    );
    engine.stop();
}

/// A `content: json` route takes the checked body as JSON whatever the caller's label: a
/// script sees a map even when the request said `text/plain` (kept as
/// `http.header.content-type`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_json_route_reads_a_text_plain_body_as_json() {
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "orders.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port}, content: json }}\nsteps:\n  - transform: {{ script: 'body.total = body.qty * 2;' }}\nto:\n  - file: {{ path: outbox, name: \"{{{{id}}}}.json\" }}\n"
        ),
    );
    let engine = ws.start();
    ws.http_addr();
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("content-type", "text/plain")
        .body(r#"{"qty": 21}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        wait_for(Duration::from_secs(20), || ws.count("delivered") == 1).await,
        "{:?}",
        ws.states()
    );
    let file = &ws.files("outbox")[0];
    let out: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("outbox").join(file)).unwrap())
            .unwrap();
    assert_eq!(out["total"], 42);
    let headers = ws.query_pairs("SELECT headers, 1 FROM messages");
    let headers: serde_json::Value = serde_json::from_str(headers.keys().next().unwrap()).unwrap();
    assert_eq!(headers["http.header.content-type"], "text/plain");
    assert_eq!(headers["content-type"], "application/json");
    engine.stop();
}

/// A small message's script runs where the request arrived, within a budget of a few
/// hundred microseconds; one that runs longer is stopped there and run again on a blocking
/// thread. Each message ends with its script's full result, and what a script printed is
/// logged once, even for the messages whose first run was stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_over_its_in_place_budget_runs_again_whole() {
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "orders.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port}, content: json }}\nsteps:\n  - transform:\n      script: 'print(\"counting for \" + body.tag); let i = 0; while i < body.n {{ i += 1; }} print(\"counted \" + i + \" for \" + body.tag); body.counted = i; headers.tag = body.tag;'\n      limits: {{ max_operations: 10000000 }}\nto:\n  - file: {{ path: outbox, name: \"{{{{header.tag}}}}.json\" }}\n"
        ),
    );
    let engine = ws.start();
    ws.http_addr();
    // Slow (about 10 ms of script), quick, slow again, then quick ones while the route
    // sends its messages to blocking threads after the overrun.
    let sent: [(&str, i64); 5] = [("a", 300_000), ("b", 1), ("c", 300_000), ("d", 5), ("e", 2)];
    for (tag, n) in sent {
        let r = client()
            .post(format!("http://127.0.0.1:{port}/"))
            .body(format!(r#"{{"tag": "{tag}", "n": {n}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{tag}");
    }
    assert!(
        wait_for(Duration::from_secs(30), || ws.count("delivered")
            == sent.len() as u64)
        .await,
        "{:?}",
        ws.states()
    );
    for (tag, n) in sent {
        let out: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ws.path("outbox").join(format!("{tag}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(out["counted"], n, "{tag}: {out}");
    }
    assert_eq!(ws.count("failed"), 0);
    // The engine logs each printed line once.
    assert!(
        wait_for(Duration::from_secs(10), || {
            ws.log_events()
                .iter()
                .filter(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("counted "))
                })
                .count()
                >= sent.len()
        })
        .await
    );
    let printed: Vec<String> = ws
        .log_events()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("count"))
        .map(str::to_string)
        .collect();
    for (tag, n) in sent {
        // The first line is printed before the loop: a stopped run printed it too.
        for line in [
            format!("counting for {tag}"),
            format!("counted {n} for {tag}"),
        ] {
            assert_eq!(
                printed.iter().filter(|p| **p == line).count(),
                1,
                "{line} in {printed:?}"
            );
        }
    }
    engine.stop();
}

/// A `reply` route without destinations is a request-reply service: it is accepted, answers
/// with the steps' result, and its messages end `delivered` (not `unrouted`) once answered.
/// The bundled example is run as shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_route_without_destinations_answers_and_is_done() {
    let ws = Workspace::new();
    ws.copy_from_repo(
        "examples/routes/shipping-quote-service.yaml",
        "routes/shipping-quote-service.yaml",
    );
    let port = common::net::free_port();
    let engine = ws.start_with_env(&[("QUOTE_LISTEN", &format!("127.0.0.1:{port}"))]);
    ws.http_addr();
    let r = client()
        .post(format!("http://127.0.0.1:{port}/quote"))
        .header("content-type", "application/json")
        .body(r#"{"kg": 2, "zone": "EU"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["price"], 12.0, "{body}");
    let r = client()
        .post(format!("http://127.0.0.1:{port}/quote"))
        .header("content-type", "application/json")
        .body(r#"{"kg": "heavy", "zone": "EU"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(
        wait_for(Duration::from_secs(10), || ws.count("delivered") == 1
            && ws.count("failed") == 1)
        .await,
        "{:?}",
        ws.states()
    );
    assert_eq!(ws.count("unrouted"), 0);
    engine.stop();
}
