//! Operating the store with the real binary: list, show and replay messages beside a running
//! engine, back the store up while it runs, and clear errors for a locked or damaged store.

mod common;

use common::*;
use std::time::Duration;

fn run(ws: &Workspace, args: &[&str]) -> (bool, String, String) {
    let out = ws.run(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROUTE: &str = r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
steps:
  - transform: { script: 'if body.contains("REJECT") { reject("not today") }' }
to:
  - file: { path: outbox, name: "{{original_name}}", delivery: { retry: { max_attempts: 2, backoff: 50ms } } }
"#;

#[test]
fn list_show_and_replay_beside_a_running_engine() {
    let ws = Workspace::new();
    ws.write_route("r.yaml", ROUTE);
    // The destination starts broken, so the first message dies.
    std::fs::remove_dir(ws.path("outbox")).unwrap();
    std::fs::write(ws.path("outbox"), b"not a directory").unwrap();
    let engine = ws.start();
    ws.drop_file("inbox", "dies.txt", b"order C1");
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("dead") == 1),
        "{:?}",
        ws.states()
    );
    std::fs::remove_file(ws.path("outbox")).unwrap();
    std::fs::create_dir_all(ws.path("outbox")).unwrap(); // the destination may make it first
    ws.drop_file("inbox", "fails.txt", b"order C2 REJECT");
    ws.drop_file("inbox", "fine.txt", b"order C3");
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("failed") == 1
            && ws.count("delivered") == 1),
        "{:?}",
        ws.states()
    );

    let (ok, table, _) = run(&ws, &["messages", "list"]);
    assert!(ok);
    assert!(table.contains("3 message(s)"), "{table}");
    let (_, failed, _) = run(&ws, &["messages", "list", "--state", "failed"]);
    assert!(
        failed.contains("rejected by the script: not today") && failed.contains("1 message(s)"),
        "{failed}"
    );
    let (_, found, _) = run(&ws, &["messages", "list", "--text", "C3", "--json"]);
    let rows: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["headers"]["file.name"], "fine.txt");
    let (_, dead, _) = run(&ws, &["messages", "list", "--state", "dead", "--json"]);
    let dead_id = serde_json::from_str::<serde_json::Value>(dead.lines().next().unwrap()).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (ok, shown, _) = run(&ws, &["messages", "show", &dead_id]);
    assert!(ok, "{shown}");
    for part in [
        "state     dead",
        "file.name: dies.txt",
        "order C1",
        "attempt",
        "to[0]",
        "cannot write to outbox",
    ] {
        assert!(shown.contains(part), "missing `{part}` in:\n{shown}");
    }
    let (_, json, _) = run(&ws, &["messages", "show", &dead_id, "--json"]);
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(d["deliveries"][0]["state"], "dead");

    // Re-deliver the dead one to its (now fixed) destination.
    let (ok, said, err) = run(
        &ws,
        &["messages", "replay", &dead_id, "--destination", "to[0]"],
    );
    assert!(ok, "{err}");
    assert!(
        said.contains("delivery to to[0] is pending again"),
        "{said}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || ws
            .files("outbox")
            .contains(&"dies.txt".to_string())),
        "{:?}",
        ws.states()
    );
    // Delivered now: its old error is history (in the timeline), not its state.
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, json, _) = run(&ws, &["messages", "show", &dead_id, "--json"]);
        let d: serde_json::Value = serde_json::from_str(&json).unwrap();
        d["message"]["state"] == "delivered"
    }));
    let (_, json, _) = run(&ws, &["messages", "show", &dead_id, "--json"]);
    let d: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        d["message"]["error"].is_null(),
        "a delivered message keeps an error: {d}"
    );
    let (_, shown, _) = run(&ws, &["messages", "show", &dead_id]);
    assert!(
        shown.contains("cannot write to outbox"),
        "the old error stays in the timeline:\n{shown}"
    );

    // Fix the route (it reloads), then run the rejected one through again from the start.
    std::fs::write(ws.path("routes/r.yaml"), ROUTE.replace("REJECT", "NEVER")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || ws
        .log_events()
        .iter()
        .any(|e| e["message"] == "route changed; swapping versions")));
    let (ok, said, err) = run(
        &ws,
        &["messages", "replay", "--route", "r", "--state", "failed"],
    );
    assert!(ok, "{err}");
    assert!(
        said.contains("queued to run through the route again (was failed)"),
        "{said}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 3),
        "{:?}",
        ws.states()
    );
    assert!(ws.files("outbox").contains(&"fails.txt".to_string()));

    // An online backup while the engine runs.
    let (ok, said, err) = run(&ws, &["backup", "copy.db"]);
    assert!(ok, "{err}");
    assert!(said.contains("store copied to copy.db"));
    let copy = rusqlite::Connection::open(ws.path("copy.db")).unwrap();
    let n: i64 = copy
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
    drop(copy);
    // An existing copy is kept unless --force.
    let before = std::fs::metadata(ws.path("copy.db"))
        .unwrap()
        .modified()
        .unwrap();
    let (ok, _, err) = run(&ws, &["backup", "copy.db"]);
    assert!(
        !ok && err.contains("copy.db exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(ws.path("copy.db"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    let (ok, _, err) = run(&ws, &["backup", "copy.db", "--force"]);
    assert!(ok, "{err}");

    // A second engine on the same store is refused, with what to do.
    let (status, console) = ws
        .start()
        .wait_exit(Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        console.contains("is in use by another switchyard engine"),
        "{console}"
    );
    engine.stop();
}

#[test]
fn a_bad_retention_interval_is_refused_not_replaced() {
    let ws = Workspace::new();
    ws.write_route("r.yaml", ROUTE);
    let (status, console) = ws
        .start_with_env(&[("SWITCHYARD_RETENTION_EVERY", "soon")])
        .wait_exit(Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        console.contains("SWITCHYARD_RETENTION_EVERY")
            && console.contains("`soon` is not a duration"),
        "{console}"
    );
}

#[test]
fn a_damaged_store_gives_a_clear_error() {
    let ws = Workspace::new();
    ws.write_route("r.yaml", ROUTE);
    std::fs::create_dir_all(ws.path("data")).unwrap();
    std::fs::write(ws.path("data/switchyard.db"), vec![0x42u8; 8192]).unwrap();
    let (status, console) = ws
        .start()
        .wait_exit(Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        console.contains("the store data/switchyard.db is damaged: file is not a database")
            && console.contains("left the file as it was"),
        "{console}"
    );
    assert!(console.contains("restore the latest backup"), "{console}");
    assert!(!console.contains("panicked"));
}

fn db_size(ws: &Workspace) -> u64 {
    std::fs::metadata(ws.path("data/switchyard.db"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn retention_keeps_the_store_bounded_under_a_steady_feed() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
to:
  - file: { path: outbox, on_clash: overwrite, name: "{{original_name}}" }
retention:
  max_age: 2s
"#,
    );
    let engine = ws.start_with_env(&[("SWITCHYARD_RETENTION_EVERY", "500ms")]);
    let body = vec![b'x'; 8 * 1024];
    let mut sizes = Vec::new();
    for wave in 0..4 {
        for i in 0..400 {
            ws.drop_file("inbox", &format!("w{wave}-{i:03}.dat"), &body);
        }
        let want = 400 * (wave + 1) as u64;
        assert!(
            wait_until(Duration::from_secs(60), || ws.files("outbox").len() as u64
                == want),
            "wave {wave}: {:?}",
            ws.states()
        );
        // The earlier waves are older than `max_age`: pruned within a few retention rounds
        // (waited for, rather than slept, so a loaded machine does not fail the test).
        assert!(
            wait_until(Duration::from_secs(20), || ws
                .states()
                .values()
                .sum::<u64>()
                <= 400),
            "wave {wave}: older waves not pruned: {:?}",
            ws.states()
        );
        sizes.push(db_size(&ws));
    }
    assert!(wait_until(Duration::from_secs(20), || ws
        .states()
        .values()
        .sum::<u64>()
        < 400));
    let kept = ws.states().values().sum::<u64>();
    println!("retention: store file after each wave of 400 × 8 KiB messages: {sizes:?} bytes; messages kept: {kept}");
    // Each wave alone stores about 400 × 16 KiB (body as received + after the steps); without
    // retention four waves would need four times the first size.
    let peak = *sizes.iter().max().unwrap();
    assert!(kept < 400, "old messages were not deleted: {kept}");
    // Once the last wave is pruned too, the file gives its space back.
    assert!(wait_until(Duration::from_secs(20), || ws
        .states()
        .values()
        .sum::<u64>()
        == 0));
    assert!(
        wait_until(Duration::from_secs(20), || db_size(&ws) < peak / 4),
        "the store file did not shrink: {} of {peak}",
        db_size(&ws)
    );
    println!(
        "retention: peak {peak} bytes, after the last prune {} bytes",
        db_size(&ws)
    );
    engine.stop();
}

#[test]
fn index_fields_make_messages_findable_by_value() {
    let ws = Workspace::new();
    ws.write_route(
        "r.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
index:
  order: 'body.order'
  file: 'headers["file.name"]'
  missing: 'body.nothing.deeper'
to:
  - file: { path: outbox }
"#,
    );
    let engine = ws.start();
    for i in 0..50 {
        ws.drop_file(
            "inbox",
            &format!("o{i}.json"),
            format!(r#"{{"order": {}}}"#, 1000 + i).as_bytes(),
        );
    }
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 50),
        "{:?}",
        ws.states()
    );
    let (ok, out, err) = run(
        &ws,
        &["messages", "list", "--field", "order=1042", "--json"],
    );
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["headers"]["file.name"], "o42.json");
    let (_, out, _) = run(&ws, &["messages", "list", "--field", "file=o7.json"]);
    assert!(out.contains("1 message(s)"), "{out}");
    // By the start of an id; a prefix that is not hex is refused with what to give.
    let id = rows[0]["id"].as_str().unwrap();
    let (ok, out, err) = run(&ws, &["messages", "list", "--id", &id[..23]]);
    assert!(ok && out.contains(id), "{out}{err}");
    let (ok, _, err) = run(&ws, &["messages", "list", "--id", "o42"]);
    assert!(
        !ok && err.contains("not the start of a message id"),
        "{err}"
    );
    // An expression that fails for a message leaves that field out, and costs nothing else.
    let n = ws.query_pairs("SELECT name, COUNT(*) FROM message_index GROUP BY name");
    assert_eq!(n.get("order"), Some(&50));
    assert_eq!(n.get("missing"), None);
    engine.stop();
}
