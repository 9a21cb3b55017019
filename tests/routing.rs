//! Routing and reliable delivery end to end: content-based rules, multicast, unrouted,
//! filters, wire taps, dead letters, `on_error`, strict FIFO through an outage, a dead
//! destination beside a healthy one, and splitting.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn json_file(ws: &Workspace, name: &str, kind: &str, n: i64) {
    ws.drop_file(
        "inbox",
        name,
        format!(r#"{{"type": "{kind}", "n": {n}}}"#).as_bytes(),
    );
}

fn count_json(ws: &Workspace, dir: &str) -> usize {
    ws.files(dir)
        .iter()
        .filter(|f| f.ends_with(".json"))
        .count()
}

#[test]
fn rules_multicast_otherwise_unrouted_and_filters() {
    let ws = Workspace::new();
    ws.write_route(
        "labs.yaml",
        r#"from:
  file: { path: inbox, settle: 100ms, poll_interval: 200ms }
steps:
  - filter:
      drop: 'body.type == "TEST"'
      reason: test messages are not forwarded
route:
  mode: first
  rules:
    - when: 'body.type == "ORU"'
      to:
        - file: { path: out/results, name: "{{original_name}}" }
        - file: { path: out/archive, name: "{{original_name}}" }
    - when: 'body.type == "ADT"'
      to:
        - file: { path: out/admissions, name: "{{original_name}}" }
wire_tap:
  - file: { path: out/audit, name: "{{original_name}}" }
"#,
    );
    let engine = ws.start();
    json_file(&ws, "r1.json", "ORU", 1);
    json_file(&ws, "r2.json", "ORU", 2);
    json_file(&ws, "a1.json", "ADT", 3);
    json_file(&ws, "x1.json", "XYZ", 4);
    json_file(&ws, "t1.json", "TEST", 5);
    let done = wait_until(Duration::from_secs(20), || {
        ws.count("delivered") == 3
            && ws.count("unrouted") == 1
            && ws.count("filtered") == 1
            && count_json(&ws, "out/audit") == 5
    });
    assert!(done, "{:?}", ws.states());
    assert_eq!(ws.files("out/results"), vec!["r1.json", "r2.json"]);
    assert_eq!(
        ws.files("out/archive"),
        vec!["r1.json", "r2.json"],
        "multicast"
    );
    assert_eq!(ws.files("out/admissions"), vec!["a1.json"]);
    // Unrouted and filtered messages are recorded, with their reasons, not dropped silently.
    let reasons = ws.query_pairs(
        "SELECT state || ': ' || COALESCE(error, '') || ' ' || json_extract(headers, '$.\"file.name\"'), 1 FROM messages WHERE state IN ('filtered', 'unrouted')",
    );
    let reasons: Vec<&String> = reasons.keys().collect();
    assert!(
        reasons
            .iter()
            .any(|r| r
                .starts_with("filtered: steps[0].filter: test messages are not forwarded t1.json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unrouted:") && r.ends_with("x1.json")),
        "{reasons:?}"
    );
    // The wire tap got every message as received, whatever became of it.
    assert_eq!(ws.files("out/audit").len(), 5);
    assert_eq!(
        std::fs::read_to_string(ws.path("out/audit/t1.json")).unwrap(),
        r#"{"type": "TEST", "n": 5}"#
    );
    engine.stop();
}

#[test]
fn mode_all_is_a_recipient_list() {
    let ws = Workspace::new();
    ws.write_route(
        "all.yaml",
        r#"from:
  file: { path: inbox }
to:
  - file: { path: out/always }
route:
  mode: all
  rules:
    - when: 'body.n > 1'
      to: [ { file: { path: out/big } } ]
    - when: 'body.n > 2'
      to: [ { file: { path: out/bigger } } ]
  otherwise:
    - file: { path: out/small }
"#,
    );
    std::fs::write(
        ws.path("all.test.yaml"),
        r#"route: routes/all.yaml
cases:
  - name: every matching rule adds its destinations
    body: '{"n": 3}'
    expect: { destinations: ["to[0]", "route.rules[0].to[0]", "route.rules[1].to[0]"] }
  - name: one rule
    body: '{"n": 2}'
    expect: { destinations: ["to[0]", "route.rules[0].to[0]"] }
  - name: no rule, so otherwise
    body: '{"n": 1}'
    expect: { destinations: ["to[0]", "route.otherwise[0]"] }
  - name: comparing different types is false, not an error
    body: '{"n": "x"}'
    expect: { destinations: ["to[0]", "route.otherwise[0]"] }
"#,
    )
    .unwrap();
    ws.write_route(
        "odd.yaml",
        "from:\n  file: { path: inbox2 }\nroute:\n  rules:\n    - when: 'body.n'\n      to: [ { file: { path: out/x } } ]\n",
    );
    std::fs::write(
        ws.path("odd.test.yaml"),
        r#"route: routes/odd.yaml
cases:
  - name: a predicate that is not true or false fails the message with the rule's name
    body: '{"n": 3}'
    expect: { error: "route.rules[0].when gave i64 `3`, not true or false" }
  - name: a predicate error fails it too
    body: '[1]'
    expect: { error: "route.rules[0].when: script error at line 1" }
"#,
    )
    .unwrap();
    let out = ws.run(&["test", "all.test.yaml", "odd.test.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}

/// The order in which a destination's deliveries succeeded, by message id.
fn delivered_order(ws: &Workspace, destination: &str) -> Vec<String> {
    let rows = ws.query_pairs(&format!(
        "SELECT printf('%08d ', t.id) || t.message_id, 1 FROM transitions t
         WHERE t.event = 'attempt' AND t.outcome = 'delivered' AND t.name = '{destination}'"
    ));
    rows.keys().map(|k| k[9..].to_string()).collect()
}

#[test]
fn a_fifo_destination_keeps_order_through_an_outage_and_loses_nothing() {
    let ws = Workspace::new();
    // The destination is down: its directory is a plain file.
    std::fs::remove_dir(ws.path("outbox")).unwrap();
    std::fs::write(ws.path("outbox"), b"down").unwrap();
    ws.write_route(
        "hl7.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms, parallel: 1 }
to:
  - file:
      path: outbox
      name: "{{original_name}}"
      delivery:
        ordering: fifo
        retry: { max_attempts: 1000, backoff: 50ms, max_backoff: 200ms }
"#,
    );
    let engine = ws.start();
    let total = 40;
    for i in 0..total {
        json_file(&ws, &format!("m{i:03}.json"), "ORU", i as i64);
        std::thread::sleep(Duration::from_millis(15));
    }
    // While it is down, the head of the line is retried and nothing overtakes it.
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivering")
            == total as u64),
        "{:?}",
        ws.states()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws.count("delivered"), 0);
    let retries = ws.query_pairs(
        "SELECT name, COUNT(*) FROM transitions WHERE outcome = 'retry' GROUP BY name",
    );
    assert!(
        retries.get("to[0]").copied().unwrap_or(0) >= 2,
        "{retries:?}"
    );
    let attempted = ws.query_pairs("SELECT message_id, 1 FROM deliveries WHERE attempts > 0");
    assert_eq!(
        attempted.len(),
        1,
        "only the head of the line is tried: {attempted:?}"
    );

    // Back up.
    std::fs::remove_file(ws.path("outbox")).unwrap();
    // The destination may make the directory itself the moment the file is gone.
    std::fs::create_dir_all(ws.path("outbox")).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || ws.count("delivered")
            == total as u64),
        "{:?}",
        ws.states()
    );
    assert_eq!(ws.files("outbox").len(), total);
    let order = delivered_order(&ws, "to[0]");
    let mut sorted = order.clone();
    sorted.sort(); // UUIDv7 ids sort by arrival
    assert_eq!(order, sorted, "delivered out of order");
    engine.stop();
}

#[test]
fn a_dead_destination_never_slows_a_healthy_one_and_goes_to_the_dead_letter() {
    let ws = Workspace::new();
    std::fs::write(ws.path("broken"), b"not a directory").unwrap();
    let route = |dead: bool| {
        format!(
            r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms }}
to:
  - file: {{ path: healthy, name: "{{{{original_name}}}}" }}
{}
dead_letter:
  file: {{ path: dead, name: "{{{{original_name}}}}" }}
"#,
            if dead {
                "  - file: { path: broken, delivery: { retry: { max_attempts: 3, backoff: 200ms } } }"
            } else {
                ""
            }
        )
    };
    let total = 300;
    let run = |ws: &Workspace, dead: bool| -> Duration {
        ws.write_route("r.yaml", &route(dead));
        let engine = ws.start();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        for i in 0..total {
            json_file(ws, &format!("m{i:04}.json"), "ORU", i as i64);
        }
        assert!(
            wait_until(Duration::from_secs(60), || ws.files("healthy").len()
                == total),
            "healthy destination stalled: {:?}",
            ws.states()
        );
        let took = started.elapsed();
        if dead {
            assert!(
                wait_until(Duration::from_secs(30), || ws.count("dead") == total as u64),
                "{:?}",
                ws.states()
            );
            assert!(wait_until(Duration::from_secs(30), || ws
                .files("dead")
                .len()
                == total));
        }
        engine.stop();
        took
    };
    let baseline = run(&Workspace::new(), false);
    let with_dead = run(&ws, true);
    // Every healthy delivery went through at its first attempt.
    let healthy = ws.query_pairs("SELECT CAST(attempts AS TEXT), COUNT(*) FROM deliveries WHERE destination = 'to[0]' GROUP BY attempts");
    assert_eq!(healthy, BTreeMap::from([("1".to_string(), total as u64)]));
    let dead = ws.query_pairs("SELECT attempts || ' ' || state, COUNT(*) FROM deliveries WHERE destination = 'to[1]' GROUP BY 1");
    assert_eq!(dead, BTreeMap::from([("3 dead".to_string(), total as u64)]));
    let errors = ws.query_pairs("SELECT error, COUNT(*) FROM messages GROUP BY error");
    assert!(
        errors
            .keys()
            .all(|e| e.starts_with("to[1]: cannot write to broken")),
        "{errors:?}"
    );
    println!("healthy destination: {total} messages in {baseline:?} alone, {with_dead:?} beside a dead one");
}

#[test]
fn on_error_retries_steps_then_dead_letters_the_original() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
steps:
  - validate:
      script: 'if body.n < 0 { "n must not be negative" } else { true }'
  - transform:
      script: 'if body.n == 13 { throw "unlucky" } body.ok = true;'
to:
  - file: { path: out, name: "{{original_name}}" }
dead_letter:
  file: { path: dead, name: "{{original_name}}" }
on_error:
  validation: dead_letter
  transform: retry
  retry: { max_attempts: 3, backoff: 100ms }
"#,
    );
    let engine = ws.start();
    json_file(&ws, "good.json", "X", 1);
    json_file(&ws, "negative.json", "X", -1);
    json_file(&ws, "unlucky.json", "X", 13);
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("failed") == 2
            && ws.count("delivered") == 1
            && ws.files("dead").len() == 2),
        "{:?} {:?}",
        ws.states(),
        ws.files("dead")
    );
    assert_eq!(ws.files("out"), vec!["good.json"]);
    // The dead letters are the originals, as received.
    assert_eq!(
        std::fs::read_to_string(ws.path("dead/negative.json")).unwrap(),
        r#"{"type": "X", "n": -1}"#
    );
    // The transform error was retried (3 runs of the steps in all) before it failed.
    let runs = ws.query_pairs(
        "SELECT json_extract(m.headers, '$.\"file.name\"') || ' ' || t.outcome, COUNT(*) FROM transitions t JOIN messages m ON m.id = t.message_id
         WHERE t.event = 'step' AND t.name = 'steps[1].transform' GROUP BY 1",
    );
    assert_eq!(runs.get("unlucky.json error"), Some(&3), "{runs:?}");
    let errors = ws.query_pairs("SELECT error, 1 FROM messages WHERE state = 'failed'");
    assert!(
        errors
            .keys()
            .any(|e| e.contains("unlucky") && e.ends_with("(after 3 attempts)")),
        "{errors:?}"
    );
    assert!(
        errors
            .keys()
            .any(|e| e.contains("invalid: n must not be negative")),
        "{errors:?}"
    );
    engine.stop();
}

#[test]
fn a_message_splits_into_children_tracked_one_by_one() {
    let ws = Workspace::new();
    ws.write_route(
        "batch.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
steps:
  - transform: { script: 'body = body.orders;' }
  - split: { json: {} }
  - transform: { script: 'headers.target = `order-${body.id}.json`;' }
to:
  - file: { path: out, name: "{{header.target}}" }
"#,
    );
    let engine = ws.start();
    ws.drop_file(
        "inbox",
        "batch.json",
        br#"{"orders": [{"id": 1}, {"id": 2}, {"id": 3}]}"#,
    );
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 3
            && ws.count("split") == 1),
        "{:?}",
        ws.states()
    );
    assert_eq!(
        ws.files("out"),
        vec!["order-1.json", "order-2.json", "order-3.json"]
    );
    let parents = ws.query_pairs(
        "SELECT parent_id, COUNT(*) FROM messages WHERE parent_id IS NOT NULL GROUP BY parent_id",
    );
    assert_eq!(parents.values().copied().collect::<Vec<_>>(), vec![3]);
    engine.stop();
}

#[test]
fn a_large_csv_file_is_split_as_a_stream_in_bounded_memory() {
    // SPLIT_TEST_MB changes the size (default 200 MB); rows are 10 KiB each.
    let mb: usize = std::env::var("SPLIT_TEST_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let row = 10 * 1024;
    let rows = mb * 1024 * 1024 / row;
    let ws = Workspace::new();
    ws.write_route(
        "big.yaml",
        r#"from:
  file: { path: inbox, pattern: "*.csv", settle: 200ms, poll_interval: 200ms }
steps:
  - split: { csv: {} }
  - transform: { script: 'headers.target = `row-${body.id}.json`; body.note = body.note.len();' }
to:
  - file: { path: out, name: "{{header.target}}" }
"#,
    );
    {
        use std::io::Write;
        let tmp = ws.path("inbox/.big.csv.partial");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        writeln!(f, "id,note").unwrap();
        let note = "x".repeat(row - 16);
        for i in 0..rows {
            writeln!(f, "{i:08},{note}").unwrap();
        }
        f.flush().unwrap();
        drop(f);
        std::fs::rename(&tmp, ws.path("inbox/big.csv")).unwrap();
    }
    let size = std::fs::metadata(ws.path("inbox/big.csv")).unwrap().len();
    let engine = ws.start();
    let started = Instant::now();
    let done = wait_until(Duration::from_secs(900), || {
        ws.count("delivered") == rows as u64
    });
    let took = started.elapsed();
    let peak = engine.memory_kib("VmHWM");
    assert!(done, "{:?}", ws.states());
    assert_eq!(ws.count("split"), 1);
    assert_eq!(ws.files("out").len(), rows);
    let sample: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("out/row-00000042.json")).unwrap())
            .unwrap();
    assert_eq!(sample["note"], row - 16);
    engine.stop();
    println!(
        "split: {:.0} MB file, {rows} children delivered in {took:?}; engine peak RSS {} MiB",
        size as f64 / 1048576.0,
        peak / 1024
    );
    // The file is never held whole: memory stays far below its size.
    assert!(peak < 150 * 1024, "peak RSS {} MiB", peak / 1024);
}
