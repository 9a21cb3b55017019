//! The broker conformance suite, written once and run against every broker adapter (RabbitMQ
//! and Mosquitto here; the next brokers add a `TestBroker` and the same lines at the end):
//! end to end through a broker, SIGKILL while consuming a steady stream, the broker's
//! connections cut mid-stream, a poison message, a reload under a steady stream. Then what is
//! particular to each broker: unroutable messages, dead-letter exchanges, persistent MQTT
//! sessions, TLS.
//!
//! Runs against the real servers when `SWITCHYARD_TEST_AMQP` / `SWITCHYARD_TEST_MQTT` are set
//! (`.ci/run` sets them); otherwise each test says what it did not run.

mod common;

use common::brokers::*;
use common::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn admin_addr(ws: &Workspace) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = ws
            .log_events()
            .iter()
            .find(|e| e["message"] == "admin API ready")
            .and_then(|e| e["listen"].as_str().map(str::to_string));
        found.is_some()
    });
    found.expect("admin API never ready")
}

/// Waits until the route's inbound consumes (AMQP: the consumer is registered; MQTT: the
/// subscription is acknowledged), so that nothing is published before anyone listens.
fn wait_consuming(ws: &Workspace, route: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || ws
            .log_events()
            .iter()
            .any(|e| e["message"] == "consuming" && e["route"] == route)),
        "the inbound of `{route}` never started consuming"
    );
}

/// The bodies of the files in `outbox/`, and how many files there are.
fn outbox_bodies(ws: &Workspace) -> (BTreeSet<String>, usize) {
    let files = ws.files("outbox");
    let bodies = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).ok())
        .collect();
    (bodies, files.len())
}

fn messages(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i}"),
                format!("{{\"n\":{i},\"tag\":\"{prefix}\"}}"),
            )
        })
        .collect()
}

/// A route from the broker's `source` to files named after each stored message's id, so
/// every delivery is a file of its own and a duplicate delivery would show as a file too.
fn to_files(b: &dyn TestBroker, source: &str, extra: &str) -> String {
    format!(
        "from:\n{}to:\n  - file: {{ path: outbox, name: \"{{{{id}}}}.json\" }}\n",
        b.inbound_yaml(source, extra)
    )
}

/// Publishes `all` in slices of `per` every `every`, on a task of its own.
fn steady(
    b: Arc<dyn TestBroker>,
    source: &'static str,
    all: Vec<(String, String)>,
    per: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in all.chunks(per) {
            b.publish(source, chunk).await;
            tokio::time::sleep(every).await;
        }
    })
}

// ---- the conformance suite, once for every broker ----

/// HTTP in → broker out (publisher confirms, PUBACK) → broker in → file out, every message
/// counted.
async fn end_to_end(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "publish.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nto:\n{}",
            b.outbound_yaml("in")
        ),
    );
    ws.write_route("consume.yaml", &to_files(b.as_ref(), "in", ""));
    let engine = ws.start();
    ws.http_addr();
    wait_consuming(&ws, "consume");
    let client = reqwest::Client::new();
    let total = 200;
    for i in 0..total {
        let r = client
            .post(format!("http://127.0.0.1:{port}/"))
            .header("content-type", "application/json")
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    assert!(
        wait_until(Duration::from_secs(60), || ws.files("outbox").len()
            >= total),
        "{} of {total} arrived: {:?}",
        ws.files("outbox").len(),
        ws.states()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (bodies, files) = outbox_bodies(&ws);
    assert_eq!((bodies.len(), files), (total, total), "{}", b.kind());
    assert!(bodies.contains("{\"n\":137}"));
    // The consumed copies carry the broker's envelope as headers.
    let header = match b.kind() {
        "amqp" => "amqp.routing_key",
        _ => "mqtt.topic",
    };
    let with_header = ws.query_pairs(&format!(
        "SELECT route, COUNT(*) FROM messages WHERE json_extract(headers, '$.\"{header}\"') IS NOT NULL GROUP BY route"
    ));
    assert_eq!(with_header.get("consume"), Some(&(total as u64)));
    let (status, _) = engine.stop();
    assert!(status.success());
}

/// SIGKILL while consuming a steady stream: after the restart every published message is
/// delivered, none twice to the destination; redeliveries are recorded as `duplicate`.
async fn sigkill_while_consuming(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    ws.write_route("consume.yaml", &to_files(b.as_ref(), "stream", ""));
    let engine = ws.start();
    wait_consuming(&ws, "consume");
    let total = 1200;
    let feed = steady(
        b.clone(),
        "stream",
        messages("k", total),
        40,
        Duration::from_millis(50),
    );
    assert!(wait_until(Duration::from_secs(60), || ws
        .files("outbox")
        .len()
        >= 200));
    engine.kill();
    let at_kill = ws.files("outbox").len();
    let engine = ws.start();
    feed.await.unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || ws.files("outbox").len()
            >= total),
        "{} of {total} after the restart: {:?}",
        ws.files("outbox").len(),
        ws.states()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (bodies, files) = outbox_bodies(&ws);
    let states = ws.states();
    eprintln!(
        "{}: killed with {at_kill} delivered; after the restart: {states:?}",
        b.kind()
    );
    assert_eq!(bodies.len(), total, "lost messages");
    assert_eq!(files, total, "a message was delivered twice: {states:?}");
    assert_eq!(states.get("delivered"), Some(&(total as u64)));
    let unfinished = ws.count("received") + ws.count("delivering");
    assert_eq!(unfinished, 0);
    engine.stop();
}

/// The broker drops the engine's connections while messages flow both ways: outbound
/// deliveries fail and are retried, the inbound reconnects; nothing is lost, nothing arrives
/// twice (the consumer recognises a republished message by its id), and the admin API counts
/// the reconnects.
async fn connection_cut_mid_stream(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "publish.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nto:\n{}",
            b.outbound_yaml("in")
        ),
    );
    ws.write_route("consume.yaml", &to_files(b.as_ref(), "in", ""));
    let engine = ws.start_with_env(&[("SWITCHYARD_ADMIN", "127.0.0.1:0")]);
    ws.http_addr();
    wait_consuming(&ws, "consume");
    let admin = format!("http://{}", admin_addr(&ws));
    let total = 600;
    let post = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..total {
            let r = client
                .post(format!("http://127.0.0.1:{port}/"))
                .body(format!("m{i}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(wait_until(Duration::from_secs(60), || ws
        .files("outbox")
        .len()
        >= 100));
    b.cut().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.cut().await;
    post.await.unwrap();
    assert!(
        wait_until(Duration::from_secs(90), || ws.files("outbox").len()
            >= total),
        "{} of {total}: {:?}",
        ws.files("outbox").len(),
        ws.states()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (bodies, files) = outbox_bodies(&ws);
    assert_eq!(bodies.len(), total, "lost messages: {:?}", ws.states());
    assert_eq!(files, total, "delivered twice: {:?}", ws.states());
    assert_eq!(ws.count("dead"), 0);
    let routes: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{admin}/routes"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let consume = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "consume")
        .unwrap();
    let from = &consume["connections"][0];
    assert_eq!(from["adapter"], "from");
    assert_eq!(from["state"], "connected", "{routes:#}");
    assert!(from["reconnects"].as_u64().unwrap() >= 1, "{routes:#}");
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_broker_connected{route=\"consume\",adapter=\"from\"} 1"),
        "{metrics}"
    );
    engine.stop();
}

/// A poison message (too large, not JSON) is recorded as failed once and not redelivered
/// for ever; the messages around it go through.
async fn poison_is_not_redelivered(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    let extra = "    max_size: 1KiB\n    content: json\n";
    ws.write_route("consume.yaml", &to_files(b.as_ref(), "in", extra));
    let engine = ws.start();
    wait_consuming(&ws, "consume");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    b.publish(
        "in",
        &[
            ("p1".into(), "{\"ok\":1}".into()),
            ("p2".into(), big),
            ("p3".into(), "not json".into()),
            ("p4".into(), "{\"ok\":2}".into()),
        ],
    )
    .await;
    assert!(wait_until(Duration::from_secs(30), || ws
        .files("outbox")
        .len()
        >= 2
        && ws.count("failed") >= 2));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ws.count("failed"), 2, "redelivered: {:?}", ws.states());
    assert_eq!(ws.files("outbox").len(), 2);
    let errors = ws
        .query_pairs("SELECT error, COUNT(*) FROM messages WHERE state = 'failed' GROUP BY error");
    let text = format!("{errors:?}");
    assert!(text.contains("larger than max_size (1024 bytes)"), "{text}");
    assert!(text.contains("not valid JSON"), "{text}");
    engine.stop();
}

/// Route files rewritten three times while a steady stream flows in: nothing lost, nothing
/// delivered twice.
async fn reload_under_stream(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    let route = to_files(b.as_ref(), "stream", "");
    ws.write_route("consume.yaml", &route);
    let engine = ws.start();
    wait_consuming(&ws, "consume");
    let total = 800;
    let feed = steady(
        b.clone(),
        "stream",
        messages("r", total),
        40,
        Duration::from_millis(60),
    );
    for i in 0..3 {
        assert!(wait_until(Duration::from_secs(60), || ws
            .files("outbox")
            .len()
            >= 150 * (i + 1)));
        ws.write_route(
            "consume.yaml",
            &format!("description: version {}\n{route}", i + 2),
        );
        assert!(wait_until(Duration::from_secs(20), || ws
            .log_events()
            .iter()
            .filter(|e| e["message"] == "route changed; swapping versions")
            .count()
            > i));
    }
    feed.await.unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || ws.files("outbox").len()
            >= total),
        "{} of {total}: {:?}",
        ws.files("outbox").len(),
        ws.states()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (bodies, files) = outbox_bodies(&ws);
    assert_eq!((bodies.len(), files), (total, total), "{:?}", ws.states());
    let versions = ws.query_pairs("SELECT route_version, COUNT(*) FROM messages GROUP BY 1");
    assert!(
        versions.len() >= 3,
        "the reloads did not take: {versions:?}"
    );
    engine.stop();
}

/// The same message id published twice (a publisher retrying after a lost confirm) is
/// stored twice but delivered once; the copy is `duplicate`, with the id as search field.
async fn same_id_twice_is_a_visible_duplicate(b: Arc<dyn TestBroker>) {
    let ws = Workspace::new();
    ws.write_route("consume.yaml", &to_files(b.as_ref(), "in", ""));
    let engine = ws.start();
    wait_consuming(&ws, "consume");
    let once = ("order-77".to_string(), "{\"order\":77}".to_string());
    b.publish("in", std::slice::from_ref(&once)).await;
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 1));
    b.publish("in", &[once]).await;
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("duplicate")
        == 1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws.files("outbox").len(), 1);
    let found = ws.run(&["messages", "list", "--state", "duplicate"]);
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(text.contains("duplicate"), "{text}");
    let keyed = ws.query_pairs(
        "SELECT value, COUNT(*) FROM message_index WHERE name = 'broker_message_id' GROUP BY value",
    );
    assert_eq!(keyed.get("order-77"), Some(&2));
    engine.stop();
}

macro_rules! conformance {
    ($module:ident, $server:ident, $make:expr) => {
        mod $module {
            use super::*;

            fn broker(what: &str) -> Option<Arc<dyn TestBroker>> {
                let url = $server(what)?;
                let make: fn(&str) -> Arc<dyn TestBroker> = $make;
                Some(make(&url))
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn end_to_end_through_the_broker() {
                if let Some(b) = broker("broker end to end") {
                    end_to_end(b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sigkill_while_consuming_loses_and_doubles_nothing() {
                if let Some(b) = broker("broker SIGKILL") {
                    sigkill_while_consuming(b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn connections_cut_mid_stream_lose_nothing() {
                if let Some(b) = broker("broker connection cut") {
                    connection_cut_mid_stream(b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_poison_message_is_recorded_once() {
                if let Some(b) = broker("broker poison message") {
                    poison_is_not_redelivered(b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reloads_under_a_stream_lose_nothing() {
                if let Some(b) = broker("broker reload") {
                    reload_under_stream(b).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_message_id_seen_before_is_a_duplicate() {
                if let Some(b) = broker("broker duplicate id") {
                    same_id_twice_is_a_visible_duplicate(b).await;
                }
            }
        }
    };
}

conformance!(amqp, amqp_server, |url| Arc::new(Rabbit::new(url)));
conformance!(mqtt, mqtt_server, |url| Arc::new(Mosquitto::new(url)));
