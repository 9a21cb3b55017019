//! Several engines (nodes) on one PostgreSQL store, one of them killed with SIGKILL under a
//! steady feed. Runs when `SWITCHYARD_TEST_POSTGRES` names a server (`.ci/run` sets it).

mod common;

use common::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A runtime for talking to the test server, a fresh schema on it, the store URL that uses
/// that schema, and a client to check the store with; `None` without a test server.
fn postgres() -> Option<(tokio::runtime::Runtime, String, tokio_postgres::Client)> {
    let base = common::postgres::test_server("multi-node test")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (url, db) = rt.block_on(common::postgres::fresh_schema(&base, "t"));
    Some((rt, url, db))
}

fn count(rt: &tokio::runtime::Runtime, db: &tokio_postgres::Client, sql: &str) -> i64 {
    rt.block_on(db.query_one(sql, &[]))
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// One POST on a new connection; true when the node answered 202 (stored).
fn post(addr: &str, body: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 202")
}

#[test]
fn three_nodes_one_killed_nothing_lost_nothing_twice() {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let ordered = tempfile::tempdir().unwrap();
    let lease = "2s";
    let nodes: Vec<(String, Workspace)> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| (n.to_string(), Workspace::new()))
        .collect();
    let mut engines = Vec::new();
    let mut addrs = Vec::new();
    for (name, ws) in &nodes {
        // The same route on every node: each has its own HTTP listener; all share the work.
        ws.write_route(
            "feed.yaml",
            &format!(
                "from:\n  http: {{ listen: 127.0.0.1:0 }}\nsteps:\n  - transform: {{ script: 'body.seen = true;' }}\nto:\n  - file: {{ path: {}, name: \"{{{{id}}}}.json\" }}\n  - file: {{ path: {}, name: \"{{{{id}}}}.json\", delivery: {{ ordering: fifo }} }}\n",
                out.path().display(),
                ordered.path().display()
            ),
        );
        engines.push(Some(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", name.as_str()),
            ("SWITCHYARD_LEASE", lease),
        ])));
        addrs.push(ws.http_addr());
    }

    // A steady feed from four clients, round robin over the nodes that answer.
    let total = 900;
    let sent = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let a_down = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (addrs, sent, accepted, a_down) = (
                addrs.clone(),
                sent.clone(),
                accepted.clone(),
                a_down.clone(),
            );
            std::thread::spawn(move || {
                let mut turn = c;
                loop {
                    let i = sent.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    let body = format!("{{\"n\": {i}}}");
                    // A refused request goes to the next node, as a load balancer would.
                    for _ in 0..6 {
                        turn += 1;
                        let node = turn % addrs.len();
                        if node == 0 && a_down.load(Ordering::SeqCst) {
                            continue;
                        }
                        if post(&addrs[node], &body) {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    // Mid-way, node A dies without a chance to clean up.
    assert!(wait_until(Duration::from_secs(60), || sent
        .load(Ordering::SeqCst)
        >= total / 3));
    engines[0].take().unwrap().kill();
    a_down.store(true, Ordering::SeqCst);
    let killed = Instant::now();
    let held = |what: &str| {
        count(
            &rt,
            &db,
            &format!("SELECT COUNT(*) FROM {what} WHERE owner = 'node-a'"),
        )
    };
    let (a_messages, a_deliveries) = (held("messages"), held("deliveries"));
    let a_fifo = held("destination_leases");

    for c in clients {
        c.join().unwrap();
    }
    let accepted = accepted.load(Ordering::SeqCst);
    // Every stored message is delivered; what node A held is taken over after its lease.
    let mut taken_over = None;
    let done = wait_until(Duration::from_secs(120), || {
        if taken_over.is_none() && held("messages") + held("deliveries") == 0 {
            taken_over = Some(killed.elapsed());
        }
        let stored = count(&rt, &db, "SELECT COUNT(*) FROM messages");
        stored > 0
            && count(
                &rt,
                &db,
                "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
            ) == stored
    });
    let stored = count(&rt, &db, "SELECT COUNT(*) FROM messages");
    assert!(
        done,
        "not all delivered: {:?}",
        rt.block_on(db.query("SELECT state, COUNT(*) FROM messages GROUP BY state", &[]))
            .map(|rows| rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>())
    );
    // Nothing acknowledged is lost. A request cut off by the kill may have been stored
    // without its 202 reaching the client: stored, delivered, and visible as one extra.
    assert!(
        stored as usize >= accepted,
        "{stored} stored < {accepted} accepted"
    );
    assert!(
        stored as usize <= accepted + 4,
        "{stored} stored, {accepted} accepted: more than the requests in flight at the kill"
    );
    // Each message went through the steps once and was recorded delivered once.
    let twice = count(
        &rt,
        &db,
        "SELECT COUNT(*) FROM (SELECT message_id FROM transitions WHERE event = 'state' AND outcome = 'delivering'
         GROUP BY message_id HAVING COUNT(*) > 1) AS t",
    );
    assert_eq!(twice, 0, "messages processed twice");
    let delivered_twice = count(
        &rt,
        &db,
        "SELECT COUNT(*) FROM (SELECT message_id FROM transitions WHERE event = 'attempt' AND outcome = 'delivered'
         GROUP BY message_id, name HAVING COUNT(*) > 1) AS t",
    );
    assert_eq!(delivered_twice, 0, "deliveries recorded twice");
    // One file per message, none duplicated (a re-delivery after the kill finds its file).
    let files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(files.len(), stored as usize, "one output file per message");
    // `<id>.json`; a second copy would be `<id>-2.json`.
    assert!(
        files.iter().all(|f| f.len() == 36 + ".json".len()),
        "duplicate outputs: {:?}",
        files.iter().filter(|f| f.len() != 41).collect::<Vec<_>>()
    );
    // The FIFO destination got every message, one node at a time, in order.
    let order = rt
        .block_on(db.query(
            "SELECT d.id, MIN(t.at) FROM deliveries d JOIN transitions t
               ON t.message_id = d.message_id AND t.event = 'attempt' AND t.name = d.destination AND t.outcome = 'delivered'
             WHERE d.destination = 'to[1]' GROUP BY d.id ORDER BY d.id",
            &[],
        ))
        .unwrap();
    assert_eq!(order.len(), stored as usize);
    let times: Vec<i64> = order.iter().map(|r| r.get(1)).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "FIFO destination delivered out of order"
    );
    // The operator's view of the shared store: `messages` with the same URL.
    let listed = nodes[1].1.run(&[
        "messages",
        "list",
        "--store",
        &url,
        "--state",
        "delivered",
        "--limit",
        "5",
        "--json",
    ]);
    assert!(listed.status.success(), "{listed:?}");
    let lines = String::from_utf8_lossy(&listed.stdout).lines().count();
    assert_eq!(lines, 5, "{}", String::from_utf8_lossy(&listed.stdout));
    // The work was shared.
    let per_node = nodes
        .iter()
        .skip(1)
        .map(|(_, ws)| {
            ws.log_events()
                .iter()
                .filter(|e| e["message"] == "delivered")
                .count()
        })
        .collect::<Vec<_>>();
    eprintln!(
        "multi-node: {accepted} accepted, {stored} stored and delivered; node-a killed holding {a_messages} messages, {a_deliveries} deliveries and {a_fifo} FIFO destinations; taken over in {:.1} s (lease {lease}); deliveries logged by b and c: {per_node:?}",
        taken_over.unwrap_or_default().as_secs_f64()
    );
    for e in engines.into_iter().flatten() {
        e.stop();
    }
}

#[test]
fn a_shared_directory_is_read_by_one_node_and_taken_over_when_it_dies() {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let (inbox, out) = (shared.path().join("inbox"), shared.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let nodes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let mut engines = Vec::new();
    for (i, ws) in nodes.iter().enumerate() {
        ws.write_route(
            "files.yaml",
            &format!(
                "from:\n  file: {{ path: {}, settle: 50ms, poll_interval: 100ms }}\nto:\n  - file: {{ path: {}, name: \"{{{{original_name}}}}\" }}\n",
                inbox.display(),
                out.display()
            ),
        );
        let node = format!("node-{i}");
        engines.push(Some(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", node.as_str()),
            ("SWITCHYARD_LEASE", "2s"),
            ("SWITCHYARD_ADMIN", "127.0.0.1:0"),
        ])));
        // The first node takes the inbound before the second starts.
        std::thread::sleep(Duration::from_millis(700));
    }
    let runs = |ws: &Workspace, what: &str| ws.log_events().iter().any(|e| e["message"] == what);
    assert!(wait_until(Duration::from_secs(10), || runs(
        &nodes[1],
        "another node runs this route's inbound; standing by"
    )));
    // The admin API says which node runs the inbound.
    let state = |ws: &Workspace| {
        let admin = ws
            .log_events()
            .iter()
            .find(|e| e["message"] == "admin API ready")
            .and_then(|e| e["listen"].as_str().map(str::to_string))
            .expect("admin API address");
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.write_all(b"GET /routes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let routes: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        routes[0]["state"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(state(&nodes[0]), "running");
    assert_eq!(state(&nodes[1]), "standing by");
    let drop_files = |from: usize, to: usize| {
        for i in from..to {
            let tmp = inbox.join(format!(".f{i:04}.partial"));
            std::fs::write(&tmp, format!("file {i}")).unwrap();
            std::fs::rename(&tmp, inbox.join(format!("f{i:04}.txt"))).unwrap();
        }
    };
    let delivered = || {
        count(
            &rt,
            &db,
            "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
        )
    };
    drop_files(0, 100);
    assert!(wait_until(Duration::from_secs(30), || delivered() == 100));
    // Only node 0 read the directory.
    let took = |ws: &Workspace| {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "received")
            .count()
    };
    assert_eq!((took(&nodes[0]), took(&nodes[1])), (100, 0));

    // Node 0 dies; files keep coming; node 1 takes the directory over after the lease.
    engines[0].take().unwrap().kill();
    let killed = Instant::now();
    drop_files(100, 200);
    assert!(wait_until(Duration::from_secs(30), || runs(
        &nodes[1],
        "this node now runs the route's inbound (taken over)"
    )));
    let takeover = killed.elapsed();
    assert_eq!(state(&nodes[1]), "running");
    assert!(wait_until(Duration::from_secs(30), || delivered() == 200));
    assert_eq!(
        took(&nodes[1]),
        100,
        "node 1 read the files that came after"
    );
    let mut outputs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    outputs.sort();
    let expected: Vec<String> = (0..200).map(|i| format!("f{i:04}.txt")).collect();
    assert_eq!(outputs, expected, "every file once, none twice");
    assert_eq!(count(&rt, &db, "SELECT COUNT(*) FROM messages"), 200);
    eprintln!(
        "shared directory: node 1 took over the inbound {:.1} s after node 0 was killed (lease 2s)",
        takeover.as_secs_f64()
    );
    for e in engines.into_iter().flatten() {
        e.stop();
    }
}

#[test]
fn a_node_reconnects_when_its_database_connections_are_cut() {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let node = format!("node-{}", uuid::Uuid::new_v4().simple());
    let ws = Workspace::new();
    ws.write_route(
        "feed.yaml",
        "from:\n  http: { listen: 127.0.0.1:0 }\nto:\n  - file: { path: outbox }\n",
    );
    let engine = ws.start_with_env(&[
        ("SWITCHYARD_STORE", url.as_str()),
        ("SWITCHYARD_NODE", node.as_str()),
        ("SWITCHYARD_LEASE", "2s"),
    ]);
    let addr = ws.http_addr();
    let mut accepted = 0;
    for i in 0..100 {
        accepted += post(&addr, &format!("{{\"n\": {i}}}")) as usize;
    }
    assert_eq!(accepted, 100);
    // The database drops every connection of this node (a failover, a restart, a DBA).
    let cut = count(
        &rt,
        &db,
        &format!(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'switchyard {node}'"
        ),
    );
    assert!(cut >= 1, "no connection of the node found to cut");
    // Requests right after may be refused (503: not stored, the sender retries); the node
    // reconnects by itself and takes requests again.
    let mut refused = 0;
    for i in 100..300 {
        if post(&addr, &format!("{{\"n\": {i}}}")) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(accepted > 250, "{accepted} accepted, {refused} refused");
    // Everything stored is delivered. A refused request is normally not stored; one cut off
    // after its commit but before its answer would be, visibly (at most the refused ones).
    let delivered = || {
        count(
            &rt,
            &db,
            "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
        )
    };
    let stored = || count(&rt, &db, "SELECT COUNT(*) FROM messages");
    assert!(
        wait_until(Duration::from_secs(30), || delivered() == stored()),
        "{} of {} delivered",
        delivered(),
        stored()
    );
    let stored = stored() as usize;
    assert!(
        (accepted..=accepted + refused).contains(&stored),
        "{stored} stored, {accepted} accepted"
    );
    assert_eq!(ws.files("outbox").len(), stored);
    eprintln!("connections cut: {cut}; afterwards {refused} of 200 requests refused, the rest stored and delivered");
    engine.stop();
}

/// Two nodes on one PostgreSQL store in one Kafka consumer group (librdkafka's mock cluster):
/// the group coordinator shares the topic's partitions between them, each record is stored
/// by one node; one node killed with SIGKILL mid-stream, its partitions go to the other after
/// the session timeout, and every record is delivered once — what the killed node had read
/// but not committed is read again and recorded as a duplicate in the shared store.
#[cfg(feature = "kafka")]
#[test]
fn kafka_partitions_shared_by_two_nodes_one_killed() {
    use common::brokers::{kafka_client, KafkaMock};
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let kafka = KafkaMock::new("");
    kafka.create("orders");
    let out = tempfile::tempdir().unwrap();
    let nodes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let mut engines = Vec::new();
    for (i, ws) in nodes.iter().enumerate() {
        ws.write_route(
            "orders.yaml",
            &format!(
                "from:\n{}to:\n  - file: {{ path: {}, name: \"{{{{id}}}}.json\" }}\n",
                kafka_client::inbound_yaml(
                    &kafka.bootstrap(),
                    &kafka.topic("orders"),
                    "shared-group",
                    ""
                ),
                out.path().display()
            ),
        );
        engines.push(Some(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", &format!("node-{i}")),
            ("SWITCHYARD_LEASE", "2s"),
        ])));
    }
    // Both members hold partitions once the group settled.
    let assigned = |ws: &Workspace| {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "consuming")
            .filter_map(|e| e["partitions"].as_str().map(str::to_string))
            .next_back()
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (a, b) = (assigned(&nodes[0]), assigned(&nodes[1]));
            matches!((a, b), (Some(a), Some(b)) if a != b && !a.ends_with("[0,1,2]") && !b.ends_with("[0,1,2]"))
        }),
        "the partitions were not shared: {:?} / {:?}",
        assigned(&nodes[0]),
        assigned(&nodes[1]),
    );
    let batch = |from: usize, n: usize| -> Vec<(String, String)> {
        (from..from + n)
            .map(|i| (format!("o-{i}"), format!("{{\"order\":{i}}}")))
            .collect()
    };
    // The killed node's hidden temp files (`.switchyard-*.tmp`, swept when a node starts) are
    // not deliveries: count the named outputs only.
    let outputs = || -> Vec<String> {
        std::fs::read_dir(out.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    let files = || outputs().len();
    rt.block_on(kafka_client::publish(
        &kafka.bootstrap(),
        &kafka.topic("orders"),
        &batch(0, 300),
    ));
    assert!(wait_until(Duration::from_secs(60), || files() >= 300));
    let received = |ws: &Workspace| {
        ws.log_events()
            .iter()
            .filter(|e| e["event"] == "received")
            .count()
    };
    let (a, b) = (received(&nodes[0]), received(&nodes[1]));
    assert!(a > 0 && b > 0, "one node took every record: {a} / {b}");
    // Nodes starting together on a new store: no PostgreSQL NOTICE passed off as news.
    for ws in &nodes {
        let console = std::fs::read_to_string(ws.path("console.log")).unwrap_or_default();
        assert!(!console.contains("already exists"), "{console}");
    }

    // Kill node 0 while a second batch streams in.
    let feed = {
        let (bootstrap, topic) = (kafka.bootstrap(), kafka.topic("orders"));
        let all = batch(300, 600);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for chunk in all.chunks(30) {
                rt.block_on(kafka_client::publish(&bootstrap, &topic, chunk));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(60), || files() >= 400));
    engines[0].take().unwrap().kill();
    feed.join().unwrap();
    assert!(
        wait_until(Duration::from_secs(120), || files() >= 900),
        "{} of 900 delivered after the kill",
        files()
    );
    std::thread::sleep(Duration::from_secs(2));
    let names = outputs();
    assert_eq!(names.len(), 900, "a record was delivered twice");
    // `<id>.json`; a second copy of one message would be `<id>-2.json`.
    assert!(
        names.iter().all(|f| f.len() == 36 + ".json".len()),
        "{names:?}"
    );
    let delivered = count(
        &rt,
        &db,
        "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
    );
    let unique = count(
        &rt,
        &db,
        "SELECT COUNT(DISTINCT value) FROM message_index WHERE name = 'broker_message_id'",
    );
    assert_eq!((delivered, unique), (900, 900));
    for e in engines.into_iter().flatten() {
        e.stop();
    }
}

/// Clients alternating their requests between two nodes, each request sent after the last
/// one's 202, several clients at once: a FIFO destination delivers each client's messages in
/// the order that client sent them, and every message in the order of the store's delivery
/// sequence — whichever node stored it and whichever node delivers.
#[test]
fn fifo_order_across_two_nodes_follows_the_commits() {
    fifo_across_two_nodes("", 6, 60);
}

/// The same, when every third message's steps outlast the intake's inline budget (50 ms):
/// such a message is stored before its steps end and keeps its place in the FIFO line from
/// then, so the quick ones sent after it, on the other node, wait behind it.
#[test]
fn fifo_order_across_two_nodes_holds_when_steps_are_slow() {
    fifo_across_two_nodes(
        "steps:\n  - transform:\n      script: 'if body.n % 3 == 0 { let i = 0; while i < 300000 { i += 1; } }'\n      limits: { max_operations: 10000000 }\n",
        3,
        30,
    );
}

fn fifo_across_two_nodes(steps: &str, clients: usize, each: usize) {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let nodes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let mut engines = Vec::new();
    let mut addrs = Vec::new();
    for (i, ws) in nodes.iter().enumerate() {
        ws.write_route(
            "feed.yaml",
            &format!(
                "from:\n  http: {{ listen: 127.0.0.1:0 }}\n{steps}to:\n  - file: {{ path: {}, name: \"{{{{id}}}}.json\", delivery: {{ ordering: fifo }} }}\n",
                out.path().display()
            ),
        );
        engines.push(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", &format!("node-{i}")),
            ("SWITCHYARD_LEASE", "2s"),
        ]));
        addrs.push(ws.http_addr());
    }
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                for n in 0..each {
                    let body = format!("{{\"client\": {c}, \"n\": {n}}}");
                    assert!(post(&addrs[(c + n) % 2], &body), "client {c} request {n}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = (clients * each) as i64;
    assert!(wait_until(Duration::from_secs(60), || count(
        &rt,
        &db,
        "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'"
    ) == total));
    // Each delivery's first successful attempt, in the order they happened.
    let rows = rt
        .block_on(db.query(
            "SELECT m.body, d.id, MIN(t.id) AS first FROM deliveries d
               JOIN messages m ON m.id = d.message_id
               JOIN transitions t ON t.message_id = d.message_id AND t.event = 'attempt'
                                 AND t.name = d.destination AND t.outcome = 'delivered'
             GROUP BY m.body, d.id ORDER BY first",
            &[],
        ))
        .unwrap();
    assert_eq!(rows.len() as i64, total);
    let mut last_n = vec![-1i64; clients];
    let mut last_id = 0i64;
    for r in &rows {
        let body: Vec<u8> = r.get(0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let (c, n) = (
            v["client"].as_u64().unwrap() as usize,
            v["n"].as_i64().unwrap(),
        );
        assert!(
            n > last_n[c],
            "client {c}: {n} delivered after {}",
            last_n[c]
        );
        last_n[c] = n;
        let id: i64 = r.get(1);
        assert!(id > last_id, "delivery {id} delivered after {last_id}");
        last_id = id;
    }
    for e in engines {
        e.stop();
    }
}

/// Two nodes on one PostgreSQL store with a route reading a table by watermark: one node reads
/// (the other stands by), and when it is killed the other takes over from the watermark in the
/// shared store — every row delivered once, none twice.
#[test]
fn a_table_is_read_by_one_node_and_taken_over_from_its_watermark() {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    rt.block_on(db.batch_execute(
        "CREATE TABLE source_orders (id BIGINT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())",
    ))
    .unwrap();
    let insert = |from: usize, to: usize| {
        rt.block_on(db.batch_execute(&format!(
            "INSERT INTO source_orders (id) SELECT g FROM generate_series({from}, {}) g",
            to - 1
        )))
        .unwrap();
    };
    let out = tempfile::tempdir().unwrap();
    let nodes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let mut engines = Vec::new();
    for (i, ws) in nodes.iter().enumerate() {
        ws.write_route(
            "orders.yaml",
            &format!(
                r#"from:
  database:
    url: "{url}"
    query: SELECT id, at FROM source_orders WHERE (at, id) > (:at, :id) ORDER BY at, id LIMIT 100
    watermark: {{ columns: [at, id], start: {{ at: "2000-01-01T00:00:00Z", id: 0 }} }}
    interval: 100ms
to:
  - file: {{ path: {}, name: "{{{{id}}}}.json" }}
"#,
                out.path().display()
            ),
        );
        engines.push(Some(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", &format!("node-{i}")),
            ("SWITCHYARD_LEASE", "2s"),
        ])));
        // The first node takes the inbound before the second starts.
        std::thread::sleep(Duration::from_millis(700));
    }
    let delivered = || {
        count(
            &rt,
            &db,
            "SELECT COUNT(*) FROM messages WHERE state = 'delivered'",
        )
    };
    let took = |ws: &Workspace| {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "received")
            .count()
    };
    insert(1, 301);
    assert!(wait_until(Duration::from_secs(30), || delivered() == 300));
    // The processing log is written a moment after the commit: wait for its last lines.
    assert!(
        wait_until(Duration::from_secs(10), || took(&nodes[0]) == 300),
        "node 0 logged {} of 300",
        took(&nodes[0])
    );
    assert_eq!(took(&nodes[1]), 0, "one node reads");
    // Node 0 dies while more rows come; node 1 goes on from the shared watermark.
    engines[0].take().unwrap().kill();
    insert(301, 601);
    assert!(
        wait_until(Duration::from_secs(30), || delivered() == 600),
        "{} of 600 delivered after the take-over",
        delivered()
    );
    assert!(
        wait_until(Duration::from_secs(10), || took(&nodes[1]) == 300),
        "node 1 read {} rows after the watermark, not 300",
        took(&nodes[1])
    );
    std::thread::sleep(Duration::from_millis(500));
    let names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 600, "one file per row");
    let rows = count(
        &rt,
        &db,
        "SELECT COUNT(DISTINCT value) FROM message_index WHERE name = 'database_key'",
    );
    assert_eq!((delivered(), rows), (600, 600));
    for e in engines.into_iter().flatten() {
        e.stop();
    }
}

/// Two nodes on one PostgreSQL store running one schedule: one node fires (the other stands
/// by); killed, the other takes over, catches up once, and no fire time is stored twice.
#[test]
fn a_schedule_fires_on_one_node_and_is_taken_over() {
    let Some((rt, url, db)) = postgres() else {
        return;
    };
    let nodes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let mut engines = Vec::new();
    for (i, ws) in nodes.iter().enumerate() {
        ws.write_route(
            "tick.yaml",
            "from:\n  schedule: { every: 500ms }\nto:\n  - file: { path: outbox }\n",
        );
        engines.push(Some(ws.start_with_env(&[
            ("SWITCHYARD_STORE", url.as_str()),
            ("SWITCHYARD_NODE", &format!("node-{i}")),
            ("SWITCHYARD_LEASE", "2s"),
        ])));
        std::thread::sleep(Duration::from_millis(700));
    }
    let fired = |ws: &Workspace| {
        ws.log_events()
            .iter()
            .filter(|e| e["message"] == "received")
            .count()
    };
    assert!(wait_until(Duration::from_secs(20), || fired(&nodes[0]) >= 4));
    assert_eq!(fired(&nodes[1]), 0, "one node fires");
    engines[0].take().unwrap().kill();
    assert!(wait_until(Duration::from_secs(20), || fired(&nodes[1]) >= 4));
    let twice = count(
        &rt,
        &db,
        "SELECT COUNT(*) FROM (SELECT headers::json->>'schedule.fire_time' FROM messages
         WHERE state != 'duplicate' GROUP BY 1 HAVING COUNT(*) > 1) t",
    );
    assert_eq!(twice, 0, "a fire time was stored twice");
    // The fire times follow each other half a second apart, but for the gap of the take-over
    // (one fire for it, not one per missed time). A fire late by more than a period (a
    // stalled machine: CI runs these tests side by side) also goes on from then, once, which
    // leaves a shorter gap of whole periods.
    let times: Vec<String> = rt
        .block_on(db.query(
            "SELECT headers::json->>'schedule.fire_time' FROM messages WHERE state != 'duplicate' ORDER BY 1",
            &[],
        ))
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gaps: Vec<i64> = times
        .windows(2)
        .map(|w| {
            let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
            (t(&w[1]) - t(&w[0])).num_milliseconds()
        })
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= 500 && g % 500 == 0),
        "fire times a whole number of periods apart: {gaps:?}"
    );
    // The lease is 2 s: the take-over's gap is the largest, and at least that long less the
    // period the dead node may have fired in.
    assert!(
        gaps.iter().max().is_some_and(|g| *g >= 1500),
        "one gap, the take-over: {gaps:?}"
    );
    assert!(
        gaps.iter().filter(|g| **g > 500).count() <= 2,
        "one gap for the take-over, not one per missed time: {gaps:?}"
    );
    for e in engines.into_iter().flatten() {
        e.stop();
    }
}
