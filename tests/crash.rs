//! Crash safety with the real binary: SIGKILL while messages are in their steps and while
//! they are being delivered, an output disk that fills up, and a store file that gets
//! damaged. After a restart (or once there is room again) nothing is lost; duplicates are
//! counted and printed; a damaged store is refused and never written into.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Inputs stored more than once, and output files beyond one per input.
fn duplicates(ws: &Workspace, total: usize, out_dir: &str) -> (usize, usize) {
    let stored_twice = ws
        .query_pairs("SELECT json_extract(headers, '$.\"file.name\"'), COUNT(*) FROM messages GROUP BY 1 HAVING COUNT(*) > 1")
        .len();
    (stored_twice, ws.files(out_dir).len().saturating_sub(total))
}

fn all_outputs_present(ws: &Workspace, total: usize, out_dir: &str, ext: &str) -> Vec<usize> {
    let outputs: BTreeSet<String> = ws.files(out_dir).into_iter().collect();
    (0..total)
        .filter(|i| !outputs.contains(&format!("m{i:04}.{ext}")))
        .collect()
}

#[test]
fn sigkill_during_steps_and_during_delivery_loses_nothing() {
    let ws = Workspace::new();
    // Slow steps (a busy script) and a strictly one-at-a-time destination, so that at the kill
    // many messages are in their steps (run at intake, before the commit: their files are
    // still in the inbox) or waiting for delivery.
    ws.write_route(
        "slow.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
concurrency: 2
steps:
  - transform:
      script: 'let i = 0; while i < 20000 { i += 1; } body = body + " done";'
to:
  - file:
      path: outbox
      name: "{{original_stem}}.out"
      delivery: { ordering: fifo }
"#,
    );
    let total = 400;
    for i in 0..total {
        ws.drop_file(
            "inbox",
            &format!("m{i:04}.txt"),
            format!("message {i}").as_bytes(),
        );
    }
    let engine = ws.start();
    let mid = wait_until(Duration::from_secs(120), || {
        let s = ws.states();
        s.get("delivered").copied().unwrap_or(0) >= 40
            && s.get("delivering").copied().unwrap_or(0) > 0
            && !ws.files("inbox").is_empty()
    });
    assert!(mid, "never caught it mid-way: {:?}", ws.states());
    engine.kill();
    let at_kill = ws.states();

    let engine = ws.start();
    // Not "delivered >= total": inputs stored twice count there too, before every input
    // has its output.
    assert!(
        wait_until(Duration::from_secs(180), || ws.files("inbox").is_empty()
            && all_outputs_present(&ws, total, "outbox", "out").is_empty()
            && ws.count("received") + ws.count("delivering") == 0),
        "{:?}; missing outputs: {:?}",
        ws.states(),
        all_outputs_present(&ws, total, "outbox", "out")
    );
    let (status, _) = engine.stop();
    assert!(status.success());
    let missing = all_outputs_present(&ws, total, "outbox", "out");
    assert!(missing.is_empty(), "lost: {missing:?}");
    let content = std::fs::read_to_string(ws.path("outbox/m0123.out")).unwrap();
    assert_eq!(content, "message 123 done");
    let unfinished = ws.count("received") + ws.count("delivering");
    assert_eq!(unfinished, 0);
    let (stored_twice, extra_outputs) = duplicates(&ws, total, "outbox");
    println!("crash (steps and delivery): at kill {at_kill:?}; inputs stored twice: {stored_twice}; extra output files: {extra_outputs}");
    assert!(stored_twice <= 16 && extra_outputs == 0);
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_full_output_disk_holds_deliveries_until_there_is_room() {
    let ws = Workspace::new();
    let out = ws.path("outbox");
    // A 256 KiB file system for the output, where the test can mount one (it runs as root in
    // CI); otherwise a read-only directory.
    let tmpfs = mount_tmpfs(&out, "256k");
    if !tmpfs {
        let mut perm = std::fs::metadata(&out).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
        std::fs::set_permissions(&out, perm).unwrap();
    }
    println!(
        "disk full test on {}",
        if tmpfs {
            "a 256 KiB tmpfs"
        } else {
            "a read-only directory"
        }
    );
    ws.write_route(
        "big.yaml",
        r#"from:
  file: { path: inbox, settle: 50ms, poll_interval: 100ms }
to:
  - file:
      path: outbox
      name: "{{original_name}}"
      delivery: { retry: { max_attempts: 1000, backoff: 100ms, max_backoff: 500ms } }
"#,
    );
    let engine = ws.start();
    let total = 24;
    let body = vec![b'z'; 60 * 1024];
    for i in 0..total {
        ws.drop_file("inbox", &format!("m{i:04}.dat"), &body);
    }
    // Some fit, the rest fail with "no space" (or "permission denied") and are retried.
    let stuck = wait_until(Duration::from_secs(30), || {
        ws.query_pairs(
            "SELECT outcome, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY outcome",
        )
        .get("retry")
        .copied()
        .unwrap_or(0)
            >= 5
    });
    assert!(stuck, "{:?}", ws.states());
    let errors = ws.query_pairs(
        "SELECT last_error, 1 FROM deliveries WHERE state = 'pending' AND last_error IS NOT NULL",
    );
    assert!(
        errors
            .keys()
            .any(|e| e.contains("No space left on device") || e.contains("Permission denied")),
        "{errors:?}"
    );
    // Make room: an operator moves the written files away, or fixes the permissions.
    let saved = ws.path("saved");
    std::fs::create_dir_all(&saved).unwrap();
    if !tmpfs {
        let mut perm = std::fs::metadata(&out).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&out, perm).unwrap();
    }
    let all = wait_until(Duration::from_secs(90), || {
        for f in ws.files("outbox") {
            let _ = std::fs::copy(out.join(&f), saved.join(&f))
                .and_then(|_| std::fs::remove_file(out.join(&f)));
        }
        ws.count("delivered") == total as u64
    });
    for f in ws.files("outbox") {
        let _ = std::fs::copy(out.join(&f), saved.join(&f));
    }
    engine.stop();
    if tmpfs {
        let _ = std::process::Command::new("umount").arg(&out).status();
    }
    assert!(all, "{:?}", ws.states());
    let saved_files: BTreeSet<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let missing: Vec<usize> = (0..total)
        .filter(|i| !saved_files.contains(&format!("m{i:04}.dat")))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    for f in &saved_files {
        assert_eq!(
            std::fs::metadata(saved.join(f)).unwrap().len(),
            60 * 1024,
            "{f} is incomplete"
        );
    }
    println!(
        "disk full: {total} messages, all delivered whole once there was room; {} files",
        saved_files.len()
    );
}

/// A store of `n` delivered messages (HTTP in, files out), stopped, with its log copied into
/// the file, so that every page is in `data/switchyard.db` itself.
/// Returns the route's address (the same port for every start of the engine).
async fn filled_store(ws: &Workspace, n: usize) -> String {
    let port = net::free_port();
    ws.write_route(
        "in.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nto:\n  - file: {{ path: outbox }}\n"
        ),
    );
    let engine = ws.start();
    let url = format!("http://127.0.0.1:{port}/");
    ws.http_addr();
    let client = reqwest::Client::new();
    for i in 0..n {
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(900));
        let r = client.post(&url).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    assert!(wait_until(Duration::from_secs(60), || ws
        .count("delivered")
        == n as u64));
    engine.stop();
    checkpoint(ws);
    url
}

fn checkpoint(ws: &Workspace) {
    let conn = rusqlite::Connection::open(ws.path("data/switchyard.db")).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Overwrites three pages in the middle of the store file, as a failing disk would.
fn damage_pages(ws: &Workspace) {
    use std::io::{Seek, SeekFrom, Write};
    let path = ws.path("data/switchyard.db");
    let pages = std::fs::metadata(&path).unwrap().len() / 4096;
    assert!(
        pages > 40,
        "a store of {pages} pages is too small to damage in the middle"
    );
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for at in [pages * 3 / 10, pages / 2, pages * 7 / 10] {
        f.seek(SeekFrom::Start(at * 4096)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
    }
    f.sync_all().unwrap();
}

/// A store with damaged pages is refused at start — with what is wrong and what to do — and
/// not modified at all; `switchyard store check` finds the damage (exit status 1) and says a
/// sound store is sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_at_start_and_left_untouched() {
    let ws = Workspace::new();
    filled_store(&ws, 400).await;
    let sound = ws.run(&["store", "check"]);
    let text = String::from_utf8_lossy(&sound.stdout);
    assert!(sound.status.success(), "{text}");
    assert!(
        text.starts_with("ok: ") && text.contains("full check"),
        "{text}"
    );

    damage_pages(&ws);
    let before = std::fs::read(ws.path("data/switchyard.db")).unwrap();
    let (status, console) = ws
        .start()
        .wait_exit(Duration::from_secs(30))
        .expect("the engine started on a damaged store");
    assert!(!status.success());
    assert!(
        console.contains("is damaged") && console.contains("A damaged store"),
        "{console}"
    );
    let after = std::fs::read(ws.path("data/switchyard.db")).unwrap();
    assert!(before == after, "the refused store was modified");

    for args in [&["store", "check"][..], &["store", "check", "--quick"]] {
        let out = ws.run(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.contains("switchyard.db: ") && stderr.contains("is damaged"),
            "{args:?}: {stdout}{stderr}"
        );
    }
}

/// Damage that appears while the engine runs is found by the periodic check: intake stops
/// (HTTP answers 503), `/ready` says not ready, `/metrics` says damaged, and nothing more is
/// written into the file — not even at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_found_while_running_stops_intake_and_writes() {
    let ws = Workspace::new();
    let url = filled_store(&ws, 400).await;
    let engine = ws.start_with_env(&[
        ("SWITCHYARD_ADMIN", "127.0.0.1:0"),
        ("SWITCHYARD_STORE_CHECK_EVERY", "1s"),
    ]);
    let admin = format!("http://{}", ws.admin_addr());
    let client = reqwest::Client::new();
    let ready = || async {
        client
            .get(format!("{admin}/ready"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready().await, 200);
    checkpoint(&ws);
    damage_pages(&ws);
    let mut found = false;
    for _ in 0..100 {
        if ready().await == 503 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "/ready still ready 10 s after the damage");
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("switchyard_store_damaged 1"), "{metrics}");
    assert!(wait_until(Duration::from_secs(20), || ws
        .log_events()
        .iter()
        .any(
            |e| e["message"] == "every route's intake is paused: the store is damaged"
        )));
    let before = std::fs::read(ws.path("data/switchyard.db")).unwrap();
    let refused = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(refused.status(), 503);
    engine.stop();
    let after = std::fs::read(ws.path("data/switchyard.db")).unwrap();
    assert!(before == after, "the damaged store was written into");
    let damaged = ws.log_events();
    let event = damaged
        .iter()
        .find(|e| e["event"] == "store damaged")
        .expect("a `store damaged` event in the log");
    assert!(
        event["problem"]
            .as_str()
            .unwrap_or("")
            .contains("docs/store.md"),
        "{event}"
    );
}
