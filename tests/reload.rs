//! Hot reload under a steady feed: rewriting a route five times (once invalidly) loses and
//! duplicates nothing, the invalid version is reported with its line and column, and a
//! listener never refuses a connection during the swaps.

mod common;

use common::net::free_port;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn file_route(marker: &str) -> String {
    format!(
        r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms }}
steps:
  - set_header: {{ name: version, value: "{marker}" }}
to:
  - file: {{ path: outbox, name: "{{{{original_stem}}}}.txt" }}
"#
    )
}

const INVALID: &str = "from:\n  file:\n    pathh: inbox\nto:\n  - file: { path: outbox }\n";

#[test]
fn rewriting_a_file_route_under_a_steady_feed_loses_and_duplicates_nothing() {
    let ws = Workspace::new();
    let route = ws.write_route("feed.yaml", &file_route("v1"));
    let mut valid = vec![switchyard::route::version_hash(file_route("v1").as_bytes())];
    let engine = ws.start();
    assert!(wait_until(Duration::from_secs(10), || ws
        .path("data/switchyard.db")
        .exists()));
    let total = 2000;
    let feeder = {
        let inbox = ws.path("inbox");
        std::thread::spawn(move || {
            for i in 0..total {
                let tmp = inbox.join(format!(".f{i:05}.part"));
                std::fs::write(&tmp, format!("message {i}")).unwrap();
                std::fs::rename(&tmp, inbox.join(format!("f{i:05}.dat"))).unwrap();
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    for n in 2..=6 {
        std::thread::sleep(Duration::from_millis(700));
        if n == 4 {
            std::fs::write(&route, INVALID).unwrap();
        } else {
            let text = file_route(&format!("v{n}"));
            valid.push(switchyard::route::version_hash(text.as_bytes()));
            std::fs::write(&route, text).unwrap();
        }
    }
    feeder.join().unwrap();
    let done = wait_until(Duration::from_secs(120), || {
        ws.count("delivered") == total as u64
    });
    assert!(done, "{:?}", ws.states());
    engine.stop();

    // Exactly once: one message per input, one output per input.
    let per_file = ws.query_pairs(
        "SELECT json_extract(headers, '$.\"file.name\"'), COUNT(*) FROM messages GROUP BY 1 HAVING COUNT(*) > 1",
    );
    assert!(per_file.is_empty(), "duplicated: {per_file:?}");
    assert_eq!(
        ws.states(),
        BTreeMap::from([("delivered".to_string(), total as u64)])
    );
    assert_eq!(ws.files("outbox").len(), total);
    // Every message was taken by a valid version, and several versions took part.
    let versions =
        ws.query_pairs("SELECT route_version, COUNT(*) FROM messages GROUP BY route_version");
    assert!(
        versions.keys().all(|v| valid.contains(v)),
        "{versions:?} not in {valid:?}"
    );
    assert!(
        versions.len() >= 3,
        "the feed should span several versions: {versions:?}"
    );
    // The invalid version was reported with its position and changed nothing.
    let log = std::fs::read_to_string(ws.path("logs/switchyard.jsonl")).unwrap();
    assert!(
        log.contains("routes/feed.yaml:3:5: from.file: unknown key `pathh`"),
        "no file:line:column error in the log"
    );
    let reloads = ws
        .log_events()
        .iter()
        .filter(|e| e["message"] == "route changed; swapping versions")
        .count();
    // v2, v3, v5 and v6 replace the running version; two rewrites that land in one reload
    // round (a slow machine) are applied as one.
    assert!(
        (3..=4).contains(&reloads),
        "{reloads} swaps for four valid rewrites"
    );
}

fn http_route(port: u16, marker: &str) -> String {
    format!(
        "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nsteps:\n  - set_header: {{ name: version, value: \"{marker}\" }}\nto:\n  - file: {{ path: outbox }}\n"
    )
}

#[test]
fn an_http_listener_keeps_accepting_across_reloads() {
    let port = free_port();
    let ws = Workspace::new();
    let route = ws.write_route("api.yaml", &http_route(port, "v1"));
    let engine = ws.start();
    ws.http_addr();
    let total = 600;
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            // A new connection for every request, so each one tests the listener.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut failures = Vec::new();
            for i in 0..total {
                match c
                    .post(format!("http://127.0.0.1:{port}/"))
                    .body(format!("m{i}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => {}
                    Ok(r) => failures.push(format!("{i}: HTTP {}", r.status())),
                    Err(e) => failures.push(format!("{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    });
    for n in 2..=6 {
        std::thread::sleep(Duration::from_millis(500));
        let text = if n == 4 {
            INVALID.to_string()
        } else {
            http_route(port, &format!("v{n}"))
        };
        std::fs::write(&route, text).unwrap();
    }
    let failures = client.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        wait_until(Duration::from_secs(60), || ws.count("delivered")
            == total as u64),
        "{:?}",
        ws.states()
    );
    assert_eq!(
        ws.states().values().sum::<u64>(),
        total as u64,
        "nothing stored twice"
    );
    let versions =
        ws.query_pairs("SELECT route_version, COUNT(*) FROM messages GROUP BY route_version");
    assert!(
        versions.len() >= 3,
        "the requests should span several versions: {versions:?}"
    );
    engine.stop();
}

/// Keep-alive connections are handed from version to version: four clients each keep one
/// connection and post on it all through six rewrites of the route; no request fails, none
/// is stored twice, and each client's requests all came over its one connection.
#[test]
fn keep_alive_connections_carry_on_across_reloads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let port = free_port();
    let ws = Workspace::new();
    let route = ws.write_route("api.yaml", &http_route(port, "v1"));
    let engine = ws.start();
    ws.http_addr();
    let clients = 4;
    // The clients post until every rewrite has taken, however fast the machine is.
    let done = Arc::new(AtomicBool::new(false));
    let feed = {
        let done = done.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for c in 0..clients {
                    let done = done.clone();
                    tasks.push(tokio::spawn(async move {
                        // One connection, kept alive for every request of this client.
                        let client = reqwest::Client::builder()
                            .pool_max_idle_per_host(1)
                            .build()
                            .unwrap();
                        let (mut sent, mut failures) = (0u64, Vec::new());
                        while !done.load(Ordering::Relaxed) {
                            match client
                                .post(format!("http://127.0.0.1:{port}/"))
                                .body(format!("c{c}-m{sent}"))
                                .send()
                                .await
                            {
                                Ok(r) if r.status() == 202 => {}
                                Ok(r) => {
                                    failures.push(format!("c{c}-m{sent}: HTTP {}", r.status()))
                                }
                                Err(e) => failures.push(format!("c{c}-m{sent}: {e:?}")),
                            }
                            sent += 1;
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                        (sent, failures)
                    }));
                }
                let (mut sent, mut failures) = (0, Vec::new());
                for t in tasks {
                    let (n, f) = t.await.unwrap();
                    sent += n;
                    failures.extend(f);
                }
                (sent, failures)
            })
        })
    };
    let swaps = || {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "route changed; swapping versions")
            .count()
    };
    for n in 2..=7 {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(&route, http_route(port, &format!("v{n}"))).unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || swaps() >= n - 1),
            "rewrite {n} did not take"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let (total, failures) = feed.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        wait_until(Duration::from_secs(60), || ws.count("delivered") == total),
        "{:?} of {total}",
        ws.states()
    );
    assert_eq!(
        ws.states().values().sum::<u64>(),
        total,
        "nothing stored twice"
    );
    let versions =
        ws.query_pairs("SELECT route_version, COUNT(*) FROM messages GROUP BY route_version");
    assert!(
        versions.len() >= 5,
        "the requests should span the versions: {versions:?}"
    );
    let remotes = ws.query_pairs(
        "SELECT json_extract(headers, '$.\"http.remote\"'), COUNT(*) FROM messages GROUP BY 1",
    );
    assert_eq!(
        remotes.len(),
        clients,
        "each client's connection should have carried all its requests: {remotes:?}"
    );
    engine.stop();
}

#[test]
fn routes_are_added_and_removed_while_running() {
    let ws = Workspace::new();
    ws.write_route("a.yaml", &file_route("a"));
    let engine = ws.start();
    std::fs::create_dir_all(ws.path("inbox2")).unwrap();
    ws.write_route(
        "b.yaml",
        "from:\n  file: { path: inbox2, settle: 50ms, poll_interval: 100ms }\nto:\n  - file: { path: outbox2 }\n",
    );
    ws.drop_file("inbox2", "x.dat", b"x");
    assert!(
        wait_until(Duration::from_secs(20), || ws.files("outbox2").len() == 1),
        "the new route never ran"
    );
    std::fs::remove_file(ws.path("routes/b.yaml")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || ws
        .log_events()
        .iter()
        .any(|e| e["message"] == "route removed; stopping it")));
    ws.drop_file("inbox2", "y.dat", b"y");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ws.files("outbox2").len(),
        1,
        "a removed route must not take files"
    );
    assert!(ws.path("inbox2/y.dat").exists());
    engine.stop();
}

#[test]
fn named_endpoints_are_resolved_and_a_change_reloads_the_routes_using_them() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("adapters")).unwrap();
    std::fs::write(
        ws.path("adapters/archive.yaml"),
        "file: { path: outbox-one, name: \"{{original_name}}\" }\n",
    )
    .unwrap();
    ws.write_route(
        "r.yaml",
        "from:\n  file: { path: inbox, settle: 50ms, poll_interval: 100ms }\nto:\n  - endpoint: archive\n",
    );
    // A misspelt endpoint name is a check error with a hint.
    let bad = ws.write_route(
        "bad.yaml",
        "from:\n  file: { path: inbox9 }\nto:\n  - endpoint: archiv\n",
    );
    let out = ws.run(&["check", &path_str(&bad)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:4:5: no endpoint named `archiv` in the adapters directory; did you mean `archive`?"), "{stderr}");
    std::fs::remove_file(&bad).unwrap();

    let engine = ws.start();
    ws.drop_file("inbox", "a.txt", b"a");
    assert!(
        wait_until(Duration::from_secs(20), || ws.files("outbox-one")
            == vec!["a.txt"]),
        "{:?}",
        ws.states()
    );
    // The endpoint moves: the route reloads, and new messages follow the new settings.
    std::fs::write(
        ws.path("adapters/archive.yaml"),
        "file: { path: outbox-two, name: \"{{original_name}}\" }\n",
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(20), || ws
        .log_events()
        .iter()
        .any(|e| e["message"] == "route changed; swapping versions")));
    ws.drop_file("inbox", "b.txt", b"b");
    assert!(
        wait_until(Duration::from_secs(20), || ws.files("outbox-two")
            == vec!["b.txt"]),
        "{:?}",
        ws.states()
    );
    assert_eq!(ws.files("outbox-one"), vec!["a.txt"]);
    engine.stop();
}

/// A reload builds every new version before it stops a running one: a version that cannot be
/// built (here its TLS certificate is missing) is rejected while the running version goes on,
/// never stopped; and a new route cannot take the port the running one listens on.
#[test]
fn a_version_that_cannot_be_built_leaves_the_running_one_untouched() {
    let port = free_port();
    let ws = Workspace::new();
    let v1 = http_route(port, "v1");
    let route = ws.write_route("api.yaml", &v1);
    let engine = ws.start();
    ws.http_addr();
    let addr = format!("127.0.0.1:{port}");
    let post = |body: &str| common::net::post_once(&addr, "/", None, body);
    assert!(post("before").starts_with("HTTP/1.1 202"));

    let broken = v1.replace(
        &format!("listen: 127.0.0.1:{port}"),
        &format!("listen: 127.0.0.1:{port}, tls: {{ cert: missing.pem, key: missing.pem }}"),
    );
    std::fs::write(&route, broken).unwrap();
    let rejected = |what: &str| {
        ws.log_events().into_iter().any(|e| {
            e["outcome"] == "rejected" && e["message"].as_str().is_some_and(|m| m.contains(what))
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || rejected("missing.pem")),
        "{:?}",
        ws.log_events()
    );
    assert!(
        !ws.log_events()
            .iter()
            .any(|e| e["message"] == "route changed; swapping versions"),
        "the running version was stopped for a version that could not be built"
    );
    assert!(post("after").starts_with("HTTP/1.1 202"));

    // Another route on the same port: refused, naming the route that listens there.
    ws.write_route("other.yaml", &http_route(port, "other"));
    assert!(
        wait_until(Duration::from_secs(20), || rejected(&format!(
            "address 127.0.0.1:{port} is already used by route `api`"
        ))),
        "{:?}",
        ws.log_events()
    );
    assert!(post("still").starts_with("HTTP/1.1 202"));
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 3));
    let versions =
        ws.query_pairs("SELECT route_version, COUNT(*) FROM messages GROUP BY route_version");
    assert_eq!(
        versions,
        BTreeMap::from([(switchyard::route::version_hash(v1.as_bytes()), 3)]),
        "every message taken by the first version"
    );
    engine.stop();
}

/// Routes on any free port (`:0`) do not share a socket: one added while another runs starts
/// on a port of its own.
#[test]
fn routes_on_any_free_port_are_added_beside_each_other() {
    let ws = Workspace::new();
    let route = |marker: &str| {
        format!("from:\n  http: {{ listen: \"127.0.0.1:0\" }}\nsteps:\n  - set_header: {{ name: v, value: {marker} }}\nto:\n  - file: {{ path: outbox }}\n")
    };
    ws.write_route("first.yaml", &route("first"));
    let engine = ws.start();
    let first = ws.route_listener("first", &[]);
    ws.write_route("second.yaml", &route("second"));
    let second = ws.route_listener("second", &[]);
    assert_ne!(first, second);
    engine.stop();
}
