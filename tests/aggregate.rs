//! The aggregator end to end: the real binary, real HTTP on 127.0.0.1, a real SQLite store
//! and real files — groups completed by count and by timeout, their messages carried on
//! through the next steps, and a SIGKILL that neither loses a member nor makes a group twice.
//! (The store's side — both backends, two nodes at once — is in tests/store.rs.)

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

async fn post(url: &str, body: String) -> Result<serde_json::Value, String> {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(20))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().as_u16() != 202 {
        return Err(format!("answered {}", r.status()));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// The JSON files in `dir`, by name.
fn outputs(ws: &Workspace, dir: &str) -> BTreeMap<String, serde_json::Value> {
    ws.files(dir)
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .filter_map(|f| {
            let text = std::fs::read(ws.path(dir).join(&f)).ok()?;
            Some((f, serde_json::from_slice(&text).ok()?))
        })
        .collect()
}

const ORDER_LINES: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/lines], content: json }
steps:
  - aggregate:
      key: body.order
      count: 3
      timeout: 1500ms
  - transform:
      script: |
        let qty = 0;
        for line in body { qty += line.qty; }
        body = #{ order: body[0].order, lines: body.len(), qty: qty,
                  completed_by: headers["aggregate.completed_by"] };
to:
  - file: { path: outbox, name: "order-{{id}}.json" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_complete_by_count_and_by_timeout_and_carry_on_through_the_next_steps() {
    let ws = Workspace::new();
    ws.write_route("lines.yaml", ORDER_LINES);
    let engine = ws.start();
    let url = format!("http://{}/lines", ws.route_listener("lines", &[]));
    let mut members = Vec::new();
    for (order, qty) in [("A", 1), ("B", 10), ("A", 2), ("A", 3), ("B", 20)] {
        let answer = post(&url, format!(r#"{{"order": "{order}", "qty": {qty}}}"#))
            .await
            .unwrap();
        members.push(answer["id"].as_str().unwrap().to_string());
    }
    // A completes with its third line at once; B, with two, when its 1.5 s run out.
    assert!(
        wait_until(Duration::from_secs(20), || outputs(&ws, "outbox").len()
            == 2),
        "{:?}",
        ws.states()
    );
    let mut made: Vec<serde_json::Value> = outputs(&ws, "outbox").into_values().collect();
    made.sort_by_key(|v| v["order"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        made,
        [
            serde_json::json!({"order": "A", "lines": 3, "qty": 6, "completed_by": "count"}),
            serde_json::json!({"order": "B", "lines": 2, "qty": 30, "completed_by": "timeout"}),
        ]
    );
    let states = ws.states();
    assert_eq!(states.get("aggregated"), Some(&5), "{states:?}");
    assert!(wait_until(Duration::from_secs(10), || ws
        .count("delivered")
        == 2));

    // The members of a group are found by its message's id, and name it.
    let a = outputs(&ws, "outbox")
        .into_iter()
        .find(|(_, v)| v["order"] == "A")
        .map(|(name, _)| name["order-".len()..name.len() - ".json".len()].to_string())
        .unwrap();
    let listed = ws.run(&["messages", "list", "--field", &format!("aggregate={a}")]);
    let out = String::from_utf8_lossy(&listed.stdout);
    for id in [&members[0], &members[2], &members[3]] {
        assert!(out.contains(id.as_str()), "{id} not in\n{out}");
    }
    assert!(out.contains("3 message(s)"), "{out}");
    let shown = ws.run(&["messages", "show", &members[0]]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("into message {a} (3 in all)")),
        "{shown}"
    );
    let shown = ws.run(&["messages", "show", &a]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("combined from the 3 members"), "{shown}");
    engine.stop();
}

const BATCHES: &str = r#"from:
  http: { listen: 127.0.0.1:0, paths: [/in], content: json }
steps:
  - transform: { script: 'body.id = id;' }
  - aggregate:
      key: body.batch
      count: 5
      timeout: 2s
to:
  - file: { path: batches, name: "{{id}}.json" }
"#;

/// Sends `body` until the engine took it (an error means it may or may not have: sent again,
/// as any sender would); returns the id it was taken under.
async fn send(url: &std::sync::Mutex<String>, body: String) -> String {
    loop {
        let target = url.lock().unwrap().clone();
        match post(&target, body.clone()).await {
            Ok(answer) => return answer["id"].as_str().unwrap().to_string(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_neither_loses_a_member_nor_makes_a_group_twice() {
    let ws = Workspace::new();
    ws.write_route("batches.yaml", BATCHES);
    let engine = ws.start();
    let first = ws.route_listener("batches", &[]);
    let url = std::sync::Arc::new(std::sync::Mutex::new(format!("http://{first}/in")));

    // Sixteen batches of five, interleaved, sent by four senders at once; a batch of three that
    // can only complete by its timeout, after the restart.
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..4)
        .map(|s| {
            let (url, taken) = (url.clone(), taken.clone());
            tokio::spawn(async move {
                for i in (s..80).step_by(4) {
                    let id = send(&url, format!(r#"{{"batch": "b{}", "n": {i}}}"#, i % 16)).await;
                    taken.lock().unwrap().push(id);
                    // Paced, so that the kill falls while they send.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for i in 0..3 {
        let id = send(&url, format!(r#"{{"batch": "late", "n": {i}}}"#)).await;
        taken.lock().unwrap().push(id);
    }
    // Killed while the senders are busy and groups are being combined and delivered.
    wait_until(Duration::from_secs(20), || {
        taken.lock().unwrap().len() >= 40
    });
    engine.kill();
    let at_kill = taken.lock().unwrap().len();
    assert!(at_kill < 83, "the senders had finished before the kill");
    let engine = ws.start();
    let second = ws.route_listener("batches", &[&first]);
    *url.lock().unwrap() = format!("http://{second}/in");
    for s in senders {
        s.await.unwrap();
    }
    let taken: BTreeSet<String> = taken.lock().unwrap().iter().cloned().collect();
    assert_eq!(taken.len(), 83);

    // Every member taken is in exactly one delivered group; no group was made twice.
    let complete = || {
        let grouped: usize = outputs(&ws, "batches")
            .values()
            .map(|v| v.as_array().map_or(0, Vec::len))
            .sum();
        grouped >= taken.len() && ws.count("aggregating") == 0 && ws.count("received") == 0
    };
    assert!(
        wait_until(Duration::from_secs(60), complete),
        "{:?}, {} files",
        ws.states(),
        ws.files("batches").len()
    );
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivering")
        == 0));
    let files = outputs(&ws, "batches");
    let mut seen = BTreeSet::new();
    for (name, group) in &files {
        let members = group.as_array().unwrap();
        let batch = &members[0]["batch"];
        for m in members {
            assert_eq!(&m["batch"], batch, "{name}: one key per group");
            let id = m["id"].as_str().unwrap().to_string();
            assert!(seen.insert(id.clone()), "member {id} is in two groups");
        }
        // Five by count; fewer by the timeout (the late batch, or a batch whose resent member
        // made a sixth).
        assert!(members.len() <= 5, "{name}: {group}");
        if *batch == "late" {
            assert_eq!(members.len(), 3, "{name}: {group}");
        }
    }
    // A sender that got no answer sent again, so a member may have been taken twice (two ids,
    // at least once); every id the engine answered is in a group.
    assert!(
        taken.is_subset(&seen),
        "members lost: {:?}",
        taken.difference(&seen)
    );
    let states = ws.states();
    assert_eq!(
        states.get("delivered").copied().unwrap_or(0),
        files.len() as u64,
        "one message per group, each delivered once: {states:?}"
    );
    assert_eq!(
        states.get("aggregated").copied().unwrap_or(0),
        seen.len() as u64,
        "{states:?}"
    );
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_order_lines_example_runs_as_shipped() {
    let ws = Workspace::new();
    ws.copy_from_repo(
        "examples/routes/order-lines-aggregate.yaml",
        "routes/order-lines-aggregate.yaml",
    );
    let engine = ws.start_with_env(&[("LINES_LISTEN", "127.0.0.1:0")]);
    let url = format!(
        "http://{}/order-lines",
        ws.route_listener("order-lines-aggregate", &[])
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for n in 1..=3 {
        let line =
            std::fs::read_to_string(repo.join(format!("examples/lines/so-1001-{n}.json"))).unwrap();
        post(&url, line).await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(20), || outputs(
            &ws,
            "examples/lines/orders"
        )
        .len()
            == 1),
        "{:?}",
        ws.states()
    );
    let (name, order) = outputs(&ws, "examples/lines/orders")
        .into_iter()
        .next()
        .unwrap();
    assert!(name.starts_with("order-SO-1001-"), "{name}");
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(3), "{order}");
    assert_eq!(order["complete_by"], "when");
    assert_eq!(order["total"], 21.0);
    engine.stop();
}
