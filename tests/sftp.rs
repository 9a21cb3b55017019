//! The `sftp` adapters against a real OpenSSH server (Debian's `sshd`, started per test on a
//! free port with its own keys): files taken from a partner's directory once settled (a file
//! still growing is left until it stops) and removed only after the commit, SIGKILL while
//! taking files, uploads renamed into place whole, a server killed mid-transfer, and a server
//! whose key does not match refused.

mod common;

use common::sshd::Sshd;
use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

/// A directory the test's sshd serves, as an absolute path in an `sftp://` URL.
fn remote(sshd: &Sshd, dir: &std::path::Path) -> String {
    format!("sftp://root@127.0.0.1:{}/{}", sshd.port, dir.display())
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

fn outbox_bodies(ws: &Workspace) -> BTreeSet<String> {
    ws.files("outbox")
        .iter()
        .filter_map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).ok())
        .collect()
}

fn inbound_route(sshd: &Sshd, dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"from:
  sftp:
    url: "{url}"
    {keys}
    pattern: "*.csv"
    interval: 200ms
    settle: 1s
{extra}to:
  - file: {{ path: outbox, name: "{{{{original_name}}}}" }}
"#,
        url = remote(sshd, dir),
        keys = sshd.route_keys()
    )
}

#[test]
fn settled_files_are_taken_and_removed_after_the_commit_a_growing_one_waits() {
    let Some(sshd) = Sshd::start() else { return };
    let partner = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(
            partner.path().join(format!("order-{i:02}.csv")),
            format!("id;{i}\n"),
        )
        .unwrap();
    }
    std::fs::write(partner.path().join("readme.txt"), "not a csv").unwrap();
    let ws = Workspace::new();
    ws.write_route("partner.yaml", &inbound_route(&sshd, partner.path(), ""));
    let engine = ws.start();
    // A file still being written: a line every 300 ms for 3 s.
    let growing = partner.path().join("big.csv");
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&growing).unwrap();
        for i in 0..10 {
            writeln!(f, "line {i}").unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    assert!(
        wait_until(Duration::from_secs(30), || ws.files("outbox").len() >= 20),
        "{:?} / {:?}",
        ws.files("outbox"),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    writer.join().unwrap();
    assert!(wait_until(Duration::from_secs(20), || ws
        .files("outbox")
        .len()
        == 21));
    let big = std::fs::read_to_string(ws.path("outbox").join("big.csv")).unwrap();
    assert_eq!(
        big.lines().count(),
        10,
        "the growing file was taken whole: {big:?}"
    );
    // Taken files are gone from the partner's directory; what does not match stays.
    assert!(wait_until(Duration::from_secs(10), || names(
        partner.path()
    ) == ["readme.txt"]));
    // The attempts are recorded a moment after the files are in place.
    assert!(
        wait_until(Duration::from_secs(10), || ws.count("delivered") == 21),
        "{:?}",
        ws.states()
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("outbox").join("order-07.csv")).unwrap(),
        "id;7\n"
    );
    engine.stop();
}

#[test]
fn sigkill_while_taking_files_loses_none_and_delivers_none_twice() {
    let Some(sshd) = Sshd::start() else { return };
    let partner = tempfile::tempdir().unwrap();
    let done = tempfile::tempdir().unwrap();
    for i in 0..300 {
        std::fs::write(
            partner.path().join(format!("f{i:03}.csv")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    let ws = Workspace::new();
    let extra = format!("    move_to: \"/{}\"\n", done.path().display());
    ws.write_route(
        "partner.yaml",
        &inbound_route(&sshd, partner.path(), &extra),
    );
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(60), || ws
        .files("outbox")
        .len()
        >= 60));
    engine.kill();
    let engine = ws.start();
    assert!(
        wait_until(Duration::from_secs(90), || names(partner.path()).is_empty()),
        "{} left",
        names(partner.path()).len()
    );
    assert!(wait_until(Duration::from_secs(30), || ws
        .count("delivered")
        >= 300));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws.count("delivered"), 300, "{:?}", ws.states());
    assert_eq!(outbox_bodies(&ws).len(), 300);
    assert_eq!(names(done.path()).len(), 300, "each file moved once");
    eprintln!(
        "duplicates recorded after the kill: {}",
        ws.count("duplicate")
    );
    engine.stop();
}

/// HTTP in, SFTP out: each message a file, uploaded under a hidden name and renamed; the server
/// killed mid-stream and started again: every message arrives once, whole, and no temporary
/// file is left.
#[test]
fn uploads_are_renamed_into_place_and_survive_a_server_killed_mid_transfer() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let inbox = tempfile::tempdir().unwrap();
    let target = inbox.path().join("incoming/orders");
    let ws = Workspace::new();
    ws.write_route(
        "upload.yaml",
        &format!(
            r#"from:
  http: {{ listen: "127.0.0.1:0" }}
to:
  - sftp:
      url: "sftp://root@127.0.0.1:{port}/{dir}"
      auth: {{ key: {key} }}
      host_key: {{ fingerprint: "{fp}" }}
      name: "order-{{{{header.http.header.x-order}}}}.json"
      create_dirs: true
      delivery: {{ retry: {{ max_attempts: 100, backoff: 200ms, max_backoff: 1s }} }}
"#,
            port = sshd.port,
            dir = target.display(),
            key = sshd.client_key.display(),
            fp = sshd.fingerprint
        ),
    );
    let engine = ws.start();
    let addr = ws.http_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let big = "x".repeat(512 * 1024);
    let post = |i: usize| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("http://{addr}/"))
                .header("x-order", i.to_string())
                .body(format!("{{\"order\":{i},\"pad\":\"{big}\"}}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        })
    };
    for i in 0..20 {
        post(i);
    }
    assert!(wait_until(Duration::from_secs(30), || names(&target).len() >= 5));
    sshd.kill();
    for i in 20..40 {
        post(i);
    }
    std::thread::sleep(Duration::from_secs(2));
    sshd.restart();
    assert!(
        wait_until(Duration::from_secs(60), || ws.count("delivered") == 40),
        "{:?}",
        ws.states()
    );
    let files = names(&target);
    assert_eq!(
        files.len(),
        40,
        "no temporary file left, none twice: {files:?}"
    );
    let attempts = ws.query_pairs(
        "SELECT outcome, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY outcome",
    );
    eprintln!("attempts: {attempts:?}");
    assert!(
        attempts.iter().any(|(o, _)| o != "delivered"),
        "the server's death failed no attempt: {attempts:?}"
    );
    for i in 0..40 {
        let body = std::fs::read_to_string(target.join(format!("order-{i}.json"))).unwrap();
        assert!(
            body.ends_with("\"}") && body.len() > 512 * 1024,
            "order {i} arrived whole"
        );
    }
    engine.stop();
}

#[test]
fn a_server_whose_key_does_not_match_gets_nothing() {
    let Some(sshd) = Sshd::start() else { return };
    let partner = tempfile::tempdir().unwrap();
    std::fs::write(partner.path().join("secret.csv"), "a;b\n").unwrap();
    let ws = Workspace::new();
    ws.write_route(
        "partner.yaml",
        &format!(
            r#"from:
  sftp:
    url: "{url}"
    auth: {{ key: {key} }}
    host_key: {{ fingerprint: "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }}
    interval: 200ms
to:
  - file: {{ path: outbox }}
"#,
            url = remote(&sshd, partner.path()),
            key = sshd.client_key.display()
        ),
    );
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(20), || ws
        .log_events()
        .iter()
        .any(|e| e
            .to_string()
            .contains("is not the pinned SHA256:AAAA"))));
    assert_eq!(names(partner.path()), ["secret.csv"]);
    assert_eq!(ws.files("outbox").len(), 0);
    engine.stop();
}
