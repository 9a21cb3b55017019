//! `switchyard tail` against a real engine's processing log, while the engine rotates it.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn tail_follows_filters_and_survives_rotation() {
    let ws = Workspace::new();
    ws.write_route("orders.yaml", &xml_route(""));
    ws.write_route(
        "other.yaml",
        "from:\n  file: { path: inbox2, create: true, settle: 50ms, poll_interval: 100ms }\nto:\n  - file: { path: outbox2 }\n",
    );
    std::fs::create_dir_all(ws.path("inbox2")).unwrap();
    // Small log files, so the engine rotates several times during the test.
    let engine = ws.start_with_env(&[("SWITCHYARD_LOG_MAX_SIZE", "128KiB")]);
    assert!(wait_until(Duration::from_secs(10), || ws
        .path("logs/switchyard.jsonl")
        .exists()));
    let out = std::fs::File::create(ws.path("tail.out")).unwrap();
    let mut tail = Command::new(BIN)
        .args([
            "tail",
            "--json",
            "--route",
            "orders",
            "--state",
            "delivered",
        ])
        .current_dir(ws.dir.path())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let total = 200;
    for i in 0..total {
        ws.drop_file("inbox", &format!("o{i:04}.xml"), order_xml(i).as_bytes());
        ws.drop_file(
            "inbox2",
            &format!("x{i:04}.txt"),
            b"noise for another route",
        );
    }
    ws.drop_file("inbox", "bad.xml", b"<order>");
    // A route file with a mistake: its reload is rejected, with where and what.
    ws.write_route("broken.yaml", "from:\n  file: { pathh: inbox3 }\nto: []\n");
    assert!(
        wait_until(Duration::from_secs(60), || ws.count("delivered")
            == 2 * total as u64),
        "{:?}",
        ws.states()
    );
    let finished = || {
        std::fs::read_to_string(ws.path("tail.out"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"finished\""))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || finished() == total),
        "tail saw {} of {total}",
        finished()
    );
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(
        ws.path("logs/switchyard.jsonl.1").exists(),
        "the log was never rotated"
    );
    let text = std::fs::read_to_string(ws.path("tail.out")).unwrap();
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["route"], "orders");
        assert_eq!(e["outcome"], "delivered");
    }

    // Readable lines, errors only, without following.
    let out = Command::new(BIN)
        .args(["tail", "--no-follow", "--errors"])
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.lines()
            .any(|l| l.contains(" orders ") && l.contains(" failed")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" orders ") && l.contains("error=malformed XML at line 1")),
        "{text}"
    );
    assert!(
        text.lines().all(|l| !l.contains(" delivered")),
        "--errors shows no successes: {text}"
    );
    assert!(
        text.lines().any(|l| l.contains("reload")
            && l.contains("rejected")
            && l.contains("broken.yaml:2:")),
        "a rejected reload shows its file:line:column: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colours when the output is not a terminal"
    );

    // The 8 characters a readable line shows of an id find that message.
    let failed_line = text
        .lines()
        .find(|l| l.contains(" orders ") && l.contains(" failed"))
        .unwrap();
    let shown = failed_line
        .split_whitespace()
        .find(|w| w.len() == 8 && w.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .unwrap_or_else(|| panic!("no short id in `{failed_line}`"));
    let out = Command::new(BIN)
        .args(["tail", "--no-follow", "--json", "--message", shown])
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    let ids: std::collections::BTreeSet<String> = found
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["message_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 1, "{found}");
    assert!(ids.iter().all(|id| id.ends_with(shown)), "{ids:?}");
    engine.stop();
}
