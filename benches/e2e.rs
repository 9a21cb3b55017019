//! End-to-end scenarios against the real (release) binary with the durable store
//! (`synchronous=FULL`, group commit), printed as one table:
//! `cargo bench --bench e2e`. `BENCH_SCALE=0.01` runs tiny counts (what CI does, to keep the
//! command from rotting); `BENCH_SECONDS` sets the HTTP run length (default 20).
//!
//! Columns: messages, msg/s, latency p50/p99 (HTTP: request to 202; MLLP: message to ACK;
//! search: the median and the slowest of five queries, and the rows found),
//! engine CPU seconds per 1,000 messages, and the engine's peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

struct Row {
    scenario: String,
    messages: usize,
    seconds: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    cpu_per_1000: f64,
    rss_mib: f64,
}

fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()).round() as usize).max(1)
}

/// (CPU seconds, peak RSS in KiB) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let hz = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / hz, rss)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

const TRANSFORM: &str =
    "  - transform: { script: 'body.received = now(); body.source = \"bench\";' }\n";

fn file_scenario() -> Row {
    let n = scaled(10_000);
    let ws = Workspace::new();
    ws.write_route(
        "file.yaml",
        &format!(
            "from:\n  file: {{ path: inbox, pattern: \"*.xml\", settle: 100ms, poll_interval: 200ms }}\nsteps:\n  - xml_to_json: {{}}\n{TRANSFORM}to:\n  - file: {{ path: outbox, name: \"{{{{original_stem}}}}.json\" }}\n"
        ),
    );
    let engine = ws.start_with_env(&[("SWITCHYARD_LOG", "warn")]);
    std::thread::sleep(Duration::from_millis(500));
    let filler = "x".repeat(800);
    let started = Instant::now();
    for i in 0..n {
        ws.drop_file(
            "inbox",
            &format!("o{i:06}.xml"),
            format!("<order id=\"{i}\"><note>{filler}</note></order>").as_bytes(),
        );
    }
    assert!(
        Progress::new(&ws).wait(Duration::from_secs(1800), |_, delivered| delivered
            == n as u64),
        "{:?}",
        ws.states()
    );
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, rss) = usage(engine.pid());
    engine.stop();
    Row {
        scenario: "file (xml_to_json + transform)".into(),
        messages: n,
        seconds,
        p50_ms: None,
        p99_ms: None,
        cpu_per_1000: cpu / n as f64 * 1000.0,
        rss_mib: rss as f64 / 1024.0,
    }
}

/// Peak memory with large messages: for each case, the engine's peak resident memory above
/// what it held idle, as a multiple of one message — the figure docs/operations.md ("Memory")
/// bounds. Cases: one large file through no steps, one large XML document through
/// `xml_to_json`, and eight large files dropped at once (read one by one under the intake's
/// read budget; delivered under the destination's byte bound).
fn memory_scenario() -> Vec<Row> {
    let plain = scaled(60 << 20);
    let xml = large_order(scaled(27 << 20));
    let filler: Vec<u8> = (0..plain).map(|i| b'a' + (i % 26) as u8).collect();
    // (what, the route's steps, the files dropped at once)
    type Case<'a> = (&'a str, &'a str, Vec<(String, &'a [u8])>);
    let cases: [Case; 3] = [
        (
            "1 large file, no steps",
            "",
            vec![("big.dat".to_string(), &filler[..])],
        ),
        (
            "1 large XML, xml_to_json",
            "steps:\n  - xml_to_json: {}\n",
            vec![("big.xml".to_string(), &xml[..])],
        ),
        (
            "8 large files at once",
            "",
            (0..8)
                .map(|i| (format!("big{i}.dat"), &filler[..]))
                .collect(),
        ),
    ];
    let mut rows = Vec::new();
    for (what, steps, files) in cases {
        let ws = Workspace::new();
        ws.write_route(
            "big.yaml",
            &format!("from:\n  file: {{ path: inbox, settle: 100ms, poll_interval: 200ms, max_size: 256MiB }}\n{steps}to:\n  - file: {{ path: outbox }}\n"),
        );
        let engine = ws.start_with_env(&[("SWITCHYARD_LOG", "warn")]);
        std::thread::sleep(Duration::from_millis(500));
        let idle = engine.memory_kib("VmRSS");
        let size = files[0].1.len();
        let started = Instant::now();
        for (name, body) in &files {
            ws.drop_file("inbox", name, body);
        }
        assert!(
            wait_until(Duration::from_secs(600), || ws.count("delivered")
                == files.len() as u64),
            "{:?}",
            ws.states()
        );
        let seconds = started.elapsed().as_secs_f64();
        let (cpu, peak) = usage(engine.pid());
        engine.stop();
        let above = peak.saturating_sub(idle) as f64 * 1024.0 / size as f64;
        rows.push(Row {
            scenario: format!(
                "memory: {what}, {:.1} MiB each (peak {above:.1}× one above idle {:.0} MiB)",
                size as f64 / (1 << 20) as f64,
                idle as f64 / 1024.0
            ),
            messages: files.len(),
            seconds,
            p50_ms: None,
            p99_ms: None,
            cpu_per_1000: cpu / files.len() as f64 * 1000.0,
            rss_mib: peak as f64 / 1024.0,
        });
    }
    rows
}

/// A PostgreSQL store for one scenario: a fresh schema, and a client to count with.
struct Postgres {
    url: String,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Postgres {
    fn new(base: &str) -> Postgres {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, client) = rt.block_on(common::postgres::fresh_schema(base, "bench"));
        Postgres { url, rt, client }
    }

    fn count(&self, state: &str) -> u64 {
        self.rt
            .block_on(
                self.client
                    .query_one("SELECT COUNT(*) FROM messages WHERE state = $1", &[&state]),
            )
            .map(|r| r.get::<_, i64>(0) as u64)
            .unwrap_or(0)
    }
}

fn http_scenario(connections: usize, with_transform: bool) -> Row {
    http_scenario_on(connections, with_transform, None, None)
}

/// Where the HTTP scenario's messages go.
enum Out<'a> {
    /// A file destination (the default).
    File,
    /// A destination named for the table, and its YAML (an item of `to:`).
    Named(&'a str, String),
    /// Nowhere: no routing rule matches, the messages end `unrouted` — intake alone.
    Nowhere,
}

/// The HTTP scenario; with `postgres`, on a PostgreSQL store instead of SQLite; with `to`
/// (a named destination and its YAML), to that destination instead of a file.
fn http_scenario_on(
    connections: usize,
    with_transform: bool,
    postgres: Option<&str>,
    to: Option<(&str, String)>,
) -> Row {
    let out = match to {
        Some((name, yaml)) => Out::Named(name, yaml),
        None => Out::File,
    };
    http_run(
        connections,
        with_transform,
        false,
        postgres,
        out,
        Pattern::None,
    )
}

/// How long a timed load runs: `BENCH_SECONDS` (default 20) times the scale, within limits.
fn load_seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(20.0)
        * scale().clamp(0.05, 1.0)
}

/// Stored and delivered counts of a workspace's store, cheap enough to poll every few
/// milliseconds under a load: one kept read-only connection, the highest rowid of
/// `messages` (nothing is deleted during a bench, so it is the count) and the messages not
/// delivered, read from the partial state index. `Workspace::states` opens the file and
/// reads every stored body (20 MB at 20,000 messages) on each call: polled under a load it
/// took a share of the two cores from the engine it measured.
struct Progress {
    path: std::path::PathBuf,
    conn: Option<rusqlite::Connection>,
}

impl Progress {
    fn new(ws: &Workspace) -> Progress {
        Progress {
            path: ws.path("data/switchyard.db"),
            conn: None,
        }
    }

    /// (stored, delivered); zeros until the store and its schema exist.
    fn read(&mut self) -> (u64, u64) {
        if self.conn.is_none() && self.path.exists() {
            self.conn = rusqlite::Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok();
        }
        let Some(conn) = &self.conn else {
            return (0, 0);
        };
        conn.query_row(
            "SELECT COALESCE((SELECT MAX(rowid) FROM messages), 0), \
                    (SELECT COUNT(*) FROM messages WHERE state <> 'delivered')",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .map(|(stored, open)| (stored, stored.saturating_sub(open)))
        .unwrap_or((0, 0))
    }

    /// Polls every 5 ms until `done(stored, delivered)`, or false after `timeout`.
    fn wait(&mut self, timeout: Duration, done: impl Fn(u64, u64) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let (stored, delivered) = self.read();
            if done(stored, delivered) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A destination on its own, without the intake in front of it: HTTP posts for half of
/// `BENCH_SECONDS` are stored while the destination is held (`rate: 1/h`, one attempt goes),
/// then the route file is rewritten without the rate and the time until the stored backlog is
/// delivered is taken (the reload's own start, a few hundred milliseconds, counts against it).
/// `to` is the destination's YAML with `delivery: { retry: … }`, as the broker helpers write it.
fn backlog_drain(name: &str, to: &str) -> Row {
    backlog_drain_for(name, to, load_seconds() / 2.0)
}

/// [`backlog_drain`] with a backlog taken in for `secs` (a destination whose server slows as
/// its queue grows is compared on a backlog the size of its bare client's load).
fn backlog_drain_for(name: &str, to: &str, secs: f64) -> Row {
    let held = to.replace("delivery: { retry:", "delivery: { rate: 1/h, retry:");
    assert_ne!(
        held, to,
        "the destination's YAML has no `delivery: {{ retry: … }}`"
    );
    let route = |to: &str| format!("from:\n  http: {{ listen: 127.0.0.1:0 }}\nto:\n{to}");
    let ws = Workspace::new();
    ws.write_route("drain.yaml", &route(&held));
    let engine = ws.start_with_env(&[(
        "SWITCHYARD_LOG",
        "warn,switchyard::adapters::inbound::http=info",
    )]);
    let addr = ws.http_addr();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let accepted = http_load(&addr, 50, deadline, "HTTP/1.1 202").len() as u64;
    let (cpu0, _) = usage(engine.pid());
    let started = Instant::now();
    ws.write_route("drain.yaml", &route(to));
    assert!(
        Progress::new(&ws).wait(Duration::from_secs(600), |_, delivered| delivered
            == accepted),
        "{:?}",
        ws.states()
    );
    let seconds = started.elapsed().as_secs_f64();
    let (cpu, rss) = usage(engine.pid());
    engine.stop();
    Row {
        scenario: format!("{name}: a stored backlog delivered"),
        messages: accepted as usize,
        seconds,
        p50_ms: None,
        p99_ms: None,
        cpu_per_1000: (cpu - cpu0) / accepted.max(1) as f64 * 1000.0,
        rss_mib: rss as f64 / 1024.0,
    }
}

/// An integration pattern on the HTTP scenario's route, to see what it costs beside the same
/// route without it in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    None,
    /// `dedupe` on a key every message has its own of (each intake looks the key up).
    Dedupe,
    /// An `aggregate` step making one message of every 10 (all members share one key).
    Aggregate,
}

/// One HTTP run: `connections` keep-alive clients posting for `BENCH_SECONDS`; `reply`: the
/// route answers with its result (`response: reply`) instead of 202 after the commit.
fn http_run(
    connections: usize,
    with_transform: bool,
    reply: bool,
    postgres: Option<&str>,
    to: Out,
    pattern: Pattern,
) -> Row {
    let pg = postgres.map(Postgres::new);
    let secs = load_seconds();
    let ws = Workspace::new();
    let aggregate = if pattern == Pattern::Aggregate {
        "  - aggregate: { key: '\"all\"', count: 10, timeout: 1s }\n"
    } else {
        ""
    };
    let steps = match (with_transform, aggregate) {
        (false, "") => String::new(),
        (true, agg) => format!("steps:\n{TRANSFORM}{agg}"),
        (false, agg) => format!("steps:\n{agg}"),
    };
    let dedupe = if pattern == Pattern::Dedupe {
        "dedupe: { key: 'id', window: 1h }\n"
    } else {
        ""
    };
    let outputs = match &to {
        Out::Named(_, yaml) => format!("to:\n{yaml}"),
        Out::File => format!(
            "to:\n  - file: {{ path: outbox, delivery: {{ concurrency: {c} }} }}\n",
            c = std::env::var("BENCH_FILE_CONCURRENCY").unwrap_or_else(|_| "4".into())
        ),
        Out::Nowhere => {
            "route:\n  rules:\n    - when: 'false'\n      to:\n        - file: { path: outbox }\n"
                .to_string()
        }
    };
    let response = if reply { ", response: reply" } else { "" };
    ws.write_route(
        "http.yaml",
        &format!("from:\n  http: {{ listen: 127.0.0.1:0{response} }}\n{dedupe}{steps}{outputs}"),
    );
    let mut env = vec![(
        "SWITCHYARD_LOG",
        "warn,switchyard::adapters::inbound::http=info",
    )];
    if let Some(pg) = &pg {
        env.push(("SWITCHYARD_STORE", pg.url.as_str()));
    }
    let engine = ws.start_with_env(&env);
    let addr = ws.http_addr();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let expect = if reply {
        "HTTP/1.1 200"
    } else {
        "HTTP/1.1 202"
    };
    let mut lat = http_load(&addr, connections, deadline, expect);
    let accepted = lat.len();
    let elapsed = started.elapsed().as_secs_f64();
    // The backlog must drain: wait until every accepted message is delivered.
    let finished = if matches!(to, Out::Nowhere) {
        "unrouted"
    } else {
        "delivered"
    };
    // Members of aggregate groups end `aggregated` (their groups' messages `finished`).
    let finished = if pattern == Pattern::Aggregate {
        "aggregated"
    } else {
        finished
    };
    let delivered = || match &pg {
        Some(pg) => pg.count(finished),
        None => ws.count(finished),
    };
    assert!(
        wait_until(Duration::from_secs(1800), || delivered() == accepted as u64),
        "{:?}",
        ws.states()
    );
    let drained = started.elapsed().as_secs_f64() - elapsed;
    let (cpu, rss) = usage(engine.pid());
    engine.stop();
    lat.sort();
    Row {
        scenario: format!(
            "http {connections} conn{}{}{}{}{}{} (drain {drained:.1}s)",
            if connections > 1 { "s" } else { "" },
            if reply { " reply" } else { "" },
            if with_transform { " + transform" } else { "" },
            match pattern {
                Pattern::None => "",
                Pattern::Dedupe => " + dedupe",
                Pattern::Aggregate => " + aggregate by 10",
            },
            if pg.is_some() { ", PostgreSQL" } else { "" },
            match &to {
                Out::File => String::new(),
                Out::Named(name, _) => format!(" → {name}"),
                Out::Nowhere => " → nowhere".into(),
            }
        ),
        messages: accepted,
        seconds: elapsed,
        p50_ms: Some(percentile(&lat, 0.5)),
        p99_ms: Some(percentile(&lat, 0.99)),
        cpu_per_1000: cpu / accepted.max(1) as f64 * 1000.0,
        rss_mib: rss as f64 / 1024.0,
    }
}

/// `connections` keep-alive HTTP/1.1 clients, one request at a time each, until `deadline`;
/// every answer must start with `expect`. One thread drives them all through one event loop,
/// and each request is one write, as wrk does: a client thread per connection cost the two
/// cores as much CPU as the engine, and its header and body as two writes woke the engine
/// twice. Returns each request's latency.
fn http_load(
    addr: &str,
    connections: usize,
    deadline: Instant,
    expect: &'static str,
) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let addr = addr.to_string();
            clients.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
                s.set_nodelay(true).ok();
                let body = r#"{"order": 42, "lines": [1, 2, 3]}"#;
                let req = format!(
                    "POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut lat = Vec::new();
                let mut buf = vec![0u8; 4096];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.write_all(req.as_bytes()).await.expect("write");
                    let mut got = 0;
                    loop {
                        let n = s.read(&mut buf[got..]).await.expect("read");
                        assert!(n > 0, "closed");
                        got += n;
                        let text = &buf[..got];
                        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&text[..end]);
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got >= end + 4 + len {
                                assert!(head.starts_with(expect), "{head}");
                                break;
                            }
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            });
        }
        let mut lat = Vec::new();
        while let Some(l) = clients.join_next().await {
            lat.extend(l.expect("client"));
        }
        lat
    })
}

/// `messages list`/search on a store of 1,000,000 messages (scaled by `BENCH_SCALE`) over
/// three routes, 1% failed, each with a search field: each query's time (median of five, and
/// the slowest) for a page of 50, through the store's own search.
fn search_scenario() -> Vec<Row> {
    use switchyard::store::{Insert, MessageState, Search, Store};
    let n = scaled(1_000_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        switchyard::store::sqlite::SqliteStore::open(&tmp.path().join("store.db")).unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut window = None;
    let mut middle = None;
    rt.block_on(async {
        let mut i = 0;
        while i < n {
            if window.is_none() && i >= n * 2 / 5 {
                window = Some(std::time::SystemTime::now());
            }
            let batch: Vec<Insert> = (i..(i + 1000).min(n))
                .map(|k| {
                    let mut msg = switchyard::message::Message::new(
                        ["orders", "lab", "shop"][k % 3],
                        bytes::Bytes::from(format!("{{\"order\": {k}, \"lines\": [1, 2, 3]}}")),
                    );
                    msg.headers
                        .insert("content-type".into(), "application/json".into());
                    let failed = k % 100 == 7;
                    Insert {
                        msg,
                        route_version: "v1".into(),
                        state: if failed {
                            MessageState::Failed
                        } else {
                            MessageState::Delivered
                        },
                        error: failed.then(|| "steps[0].validate: qty must be at least 1".into()),
                        parent: None,
                        resume_step: 0,
                        scheduled: false,
                        wire_taps: Vec::new(),
                        fifo: Vec::new(),
                        index: vec![("order".into(), k.to_string())],
                        position: None,
                    }
                })
                .collect();
            if middle.is_none() && i + batch.len() > n / 2 {
                middle = Some(batch[n / 2 - i].msg.id);
            }
            i += batch.len();
            store.insert(batch).await.expect("insert");
        }
    });
    let filled = started.elapsed().as_secs_f64();
    let since = window.unwrap_or_else(std::time::SystemTime::now);
    let queries: Vec<(&str, Search)> = vec![
        (
            "state = failed",
            Search {
                state: Some(MessageState::Failed),
                ..Default::default()
            },
        ),
        (
            "route + state = failed",
            Search {
                route: Some("lab".into()),
                state: Some(MessageState::Failed),
                ..Default::default()
            },
        ),
        (
            "route + 1 s time window",
            Search {
                route: Some("shop".into()),
                since: Some(since),
                until: Some(since + Duration::from_secs(1)),
                ..Default::default()
            },
        ),
        (
            "index field order = (a middle one)",
            Search {
                field: Some(("order".into(), (n / 2).to_string())),
                ..Default::default()
            },
        ),
        (
            "route, newest",
            Search {
                route: Some("orders".into()),
                ..Default::default()
            },
        ),
        // What the console adds: an id's first 12 hex digits, the next page of a route's
        // messages from the middle, text in the error of the failed.
        (
            "id prefix (12 hex digits)",
            Search {
                id_prefix: middle.map(|m| m.simple().to_string()[..12].to_string()),
                ..Default::default()
            },
        ),
        (
            "route, a page from the middle",
            Search {
                route: Some("orders".into()),
                before: middle,
                ..Default::default()
            },
        ),
        (
            "state = failed + error text",
            Search {
                state: Some(MessageState::Failed),
                error: Some("qty must".into()),
                ..Default::default()
            },
        ),
    ];
    let mut rows = vec![Row {
        scenario: format!("search: fill the store ({n} messages)"),
        messages: n,
        seconds: filled,
        p50_ms: None,
        p99_ms: None,
        cpu_per_1000: 0.0,
        rss_mib: 0.0,
    }];
    for (name, mut query) in queries {
        query.limit = 50;
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..5 {
            let t = Instant::now();
            found = rt.block_on(store.search(&query)).expect("search").len();
            times.push(t.elapsed());
        }
        times.sort();
        assert!(found > 0, "{name}: nothing found");
        rows.push(Row {
            scenario: format!("search {n}: {name} ({found} rows)"),
            messages: found,
            seconds: times[2].as_secs_f64(),
            p50_ms: Some(times[2].as_secs_f64() * 1e3),
            p99_ms: Some(times[4].as_secs_f64() * 1e3),
            cpu_per_1000: 0.0,
            rss_mib: 0.0,
        });
    }
    // The console's dashboard: counts by route and state over a window holding 60% of the
    // store, and the destination queues.
    let routes: Vec<String> = ["orders", "lab", "shop"].map(String::from).to_vec();
    let mut times = Vec::new();
    let mut counted = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let counts = rt
            .block_on(store.counts_since(&routes, since))
            .expect("counts");
        counted = counts.values().sum::<u64>() as usize;
        times.push(t.elapsed());
    }
    times.sort();
    rows.push(Row {
        scenario: format!("search {n}: dashboard counts since the window ({counted} messages)"),
        messages: 1,
        seconds: times[2].as_secs_f64(),
        p50_ms: Some(times[2].as_secs_f64() * 1e3),
        p99_ms: Some(times[4].as_secs_f64() * 1e3),
        cpu_per_1000: 0.0,
        rss_mib: 0.0,
    });
    let _ = rt.block_on(store.close());
    rows
}

/// A bare HTTP/1.1 endpoint on 127.0.0.1 answering every request with 200 and an empty body,
/// a thread per connection; it runs until the benchmark ends.
fn http_sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                s.set_nodelay(true).ok();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // Answer each complete request (head and Content-Length body) in turn.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        buf.drain(..end + 4 + len);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// MLLP in, HL7 parsed, to a file per message (`to_file`) or to nowhere (unrouted: the
/// intake alone, without the file destination's syncs sharing the disk).
fn mllp_scenario(to_file: bool) -> Row {
    let per = scaled(1000);
    let connections = 8;
    let ws = Workspace::new();
    let to = if to_file {
        "to:\n  - file: { path: outbox, name: \"{{header.hl7.control_id}}.hl7\" }\n"
    } else {
        "route:\n  rules:\n    - when: 'false'\n      to:\n        - file: { path: outbox }\n"
    };
    ws.write_route(
        "lab.yaml",
        &format!("from:\n  tcp: {{ listen: 127.0.0.1:0 }}\nsteps:\n  - hl7: {{}}\n{to}"),
    );
    let engine = ws.start_with_env(&[(
        "SWITCHYARD_LOG",
        "warn,switchyard::adapters::inbound::tcp=info",
    )]);
    let mut addr = None;
    wait_until(Duration::from_secs(30), || {
        addr = ws
            .log_events()
            .iter()
            .find(|e| e["message"] == "TCP listener ready")
            .and_then(|e| e["listen"].as_str().map(str::to_string));
        addr.is_some()
    });
    let addr = addr.expect("listener");
    let started = Instant::now();
    let mut lat = mllp_clients(&addr, connections, per);
    let seconds = started.elapsed().as_secs_f64();
    let total = connections * per;
    let finished = if to_file { "delivered" } else { "unrouted" };
    assert!(wait_until(Duration::from_secs(600), || ws.count(finished)
        == total as u64));
    let (cpu, rss) = usage(engine.pid());
    engine.stop();
    lat.sort();
    Row {
        scenario: if to_file {
            "mllp 8 conns, ACK after commit → file".into()
        } else {
            "mllp 8 conns, ACK after commit → nowhere".into()
        },
        messages: total,
        seconds,
        p50_ms: Some(percentile(&lat, 0.5)),
        p99_ms: Some(percentile(&lat, 0.99)),
        cpu_per_1000: cpu / total as f64 * 1000.0,
        rss_mib: rss as f64 / 1024.0,
    }
}

/// `connections` MLLP clients, each sending `per` HL7 messages and waiting for each ACK.
/// Returns every message-to-ACK latency.
fn mllp_clients(addr: &str, connections: usize, per: usize) -> Vec<Duration> {
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_nodelay(true).ok();
                let mut lat = Vec::new();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                for i in 0..per {
                    let msg = format!("\x0bMSH|^~\\&|LAB|H|EHR|H|20261126||ORU^R01|C{c}-{i}|P|2.5\rPID|1||{i}^^^H^MR||DOE^JANE\rOBX|1|NM|4548-4^HbA1c^LN||6.1|%\r\x1c\r");
                    let t = Instant::now();
                    s.write_all(msg.as_bytes()).unwrap();
                    buf.clear();
                    while !buf.ends_with(&[0x1c, 0x0d]) {
                        let n = s.read(&mut chunk).unwrap();
                        assert!(n > 0);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn main() {
    // BENCH_ONLY=baseline (or file, http, http sink, http nowhere, postgres, mllp, search, memory) runs
    // the groups whose name contains it.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |group: &str| group.contains(only.as_str());
    let mut rows = Vec::new();
    if want("file") {
        rows.push(file_scenario());
    }
    if want("http") {
        // BENCH_HTTP_CONNECTIONS=50 runs only that one (with a transform).
        match std::env::var("BENCH_HTTP_CONNECTIONS") {
            Ok(list) => {
                for c in list.split(',').filter_map(|c| c.trim().parse().ok()) {
                    rows.push(http_scenario(c, true));
                }
            }
            Err(_) => {
                for c in [1, 10, 50] {
                    rows.push(http_scenario(c, true));
                }
                rows.push(http_scenario(50, false));
            }
        }
    }
    // Intake alone (nothing to deliver), acknowledged after the commit and as a reply.
    // Each target is a share of the disk's floor of the same minutes, and that floor drifts
    // (44,000–69,000 writes/s within an hour here): it is measured before and after the
    // scenario, and the share is of the two's mean.
    let mut shares = Vec::new();
    if want("http nowhere") {
        beside_the_floor(&mut rows, &mut shares, || {
            vec![
                http_run(50, true, false, None, Out::Nowhere, Pattern::None),
                http_run(50, false, true, None, Out::Nowhere, Pattern::None),
            ]
        });
    }
    // What the patterns cost on the intake (nothing to deliver), beside the same route
    // without them in the same run.
    if want("http patterns") {
        for pattern in [Pattern::None, Pattern::Dedupe, Pattern::Aggregate] {
            rows.push(http_run(50, true, false, None, Out::Nowhere, pattern));
        }
    }
    // To an HTTP endpoint (a bare local sink answering 200), 16 deliveries in flight; beside
    // it, the same load through two proxies to the same sink — bare, and with one store write
    // a message — what HTTP in and out cost these two cores, and the least a durable intake
    // adds ([`baseline_http_proxy`]).
    if want("http sink") {
        let sink = http_sink();
        beside_the_floor(&mut rows, &mut shares, || {
            vec![
                baseline_http_proxy(50, 16, &sink, false),
                baseline_http_proxy(50, 16, &sink, true),
                http_run(
                    50,
                    true,
                    false,
                    None,
                    Out::Named(
                        "http sink (16 in flight)",
                        format!(
                        "  - http: {{ url: \"http://{sink}/\", delivery: {{ concurrency: 16 }} }}\n"
                    ),
                    ),
                    Pattern::None,
                ),
            ]
        });
    }
    // BENCH_POSTGRES=postgres://root@127.0.0.1/test: HTTP on a PostgreSQL store as well.
    if let (true, Ok(url)) = (want("http postgres"), std::env::var("BENCH_POSTGRES")) {
        rows.push(http_scenario_on(50, true, Some(&url), None));
    }
    if want("mllp") {
        // Each connection waits for its ACK, so the rate is bounded by the store's group
        // commit at 8 writers: measured before and after the engine, in the same run.
        rows.push(baseline_group_commit(8, false));
        rows.push(mllp_scenario(true));
        rows.push(mllp_scenario(false));
        rows.push(baseline_group_commit(8, false));
    }
    if want("search") {
        rows.extend(search_scenario());
    }
    if want("memory") {
        rows.extend(memory_scenario());
    }
    // Brokers, each beside its bare client at the same window (SWITCHYARD_TEST_AMQP and
    // SWITCHYARD_TEST_MQTT name the servers, as for the tests) and between two measures of
    // the store's floor: a bare client that outruns the floor sets a pace no engine that
    // stores each message before its ack can follow.
    if want("broker amqp") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_AMQP") {
            beside_the_floor(&mut rows, &mut shares, || broker::amqp(&url));
        }
    }
    if want("broker mqtt") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_MQTT") {
            beside_the_floor(&mut rows, &mut shares, || broker::mqtt(&url));
        }
    }
    if want("broker amqp1") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_AMQP1") {
            beside_the_floor(&mut rows, &mut shares, || broker::amqp1(&url));
        }
    }
    if want("broker nats") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_NATS") {
            beside_the_floor(&mut rows, &mut shares, || broker::nats(&url));
        }
    }
    if want("broker redis") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_REDIS") {
            beside_the_floor(&mut rows, &mut shares, || broker::redis(&url));
        }
    }
    #[cfg(feature = "kafka")]
    if want("broker kafka") {
        if let Ok(tansu) = std::env::var("SWITCHYARD_TEST_KAFKA") {
            beside_the_floor(&mut rows, &mut shares, || broker::kafka(&tansu));
        }
    }
    // SWITCHYARD_TEST_SQS=moto: SQS against moto's server, started here.
    #[cfg(feature = "sqs")]
    if want("broker sqs") && std::env::var("SWITCHYARD_TEST_SQS").is_ok() {
        rows.extend(broker::sqs());
    }
    // Databases as systems to integrate, each beside its bare client doing the same reads
    // and writes (SWITCHYARD_TEST_POSTGRES and SWITCHYARD_TEST_MYSQL name the servers).
    if want("database postgres") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_POSTGRES") {
            rows.extend(database::run(&url));
        }
    }
    if want("database mysql") {
        if let Ok(url) = std::env::var("SWITCHYARD_TEST_MYSQL") {
            rows.extend(database::run(&url));
        }
    }
    // The machine's limits, for reading the figures above as fractions of them.
    if want("baseline") {
        rows.push(baseline_file(1, Sync::Fsync));
        for how in [Sync::Fsync, Sync::Fdatasync, Sync::Parallel, Sync::Syncfs] {
            rows.push(baseline_file(64, how));
        }
        rows.push(baseline_mllp());
        rows.push(baseline_sqlite(1));
        rows.push(baseline_sqlite(100));
    }
    if want("baseline store floor") {
        // As many writers as the MLLP scenario has connections: its floor.
        rows.push(baseline_group_commit(8, false));
        rows.push(baseline_group_commit(50, false));
        rows.push(baseline_group_commit(50, true));
    }
    println!(
        "\n{:<44} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9}",
        "scenario", "messages", "msg/s", "p50 ms", "p99 ms", "CPU s/1000", "RSS MiB"
    );
    for share in shares {
        println!("{share}");
    }
    for r in rows {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<44} {:>9} {:>9.0} {:>9} {:>9} {:>12.3} {:>9}",
            r.scenario,
            r.messages,
            r.messages as f64 / r.seconds,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.cpu_per_1000,
            if r.rss_mib > 0.0 {
                format!("{:.1}", r.rss_mib)
            } else {
                "-".into()
            }
        );
    }
}

/// Runs `scenarios` between two measures of the 50-writer group-commit floor and notes each
/// scenario's rate as a share of the floors' mean.
fn beside_the_floor(
    rows: &mut Vec<Row>,
    shares: &mut Vec<String>,
    scenarios: impl FnOnce() -> Vec<Row>,
) {
    let before = baseline_group_commit(50, false);
    let runs = scenarios();
    let after = baseline_group_commit(50, false);
    let rate = |r: &Row| r.messages as f64 / r.seconds;
    let floor = (rate(&before) + rate(&after)) / 2.0;
    for r in &runs {
        shares.push(format!(
            "share of the floor: {:.1}% — {} ({:.0} msg/s; floor {:.0} before, {:.0} after)",
            rate(r) * 100.0 / floor,
            r.scenario,
            rate(r),
            rate(&before),
            rate(&after)
        ));
    }
    rows.push(before);
    rows.extend(runs);
    rows.push(after);
}

// ---- Baselines: the machine's own limits, measured in the same run. ----

/// HTTP in → HTTP out with nothing between: `connections` clients (the scenarios' load)
/// post to a bare hyper server on two runtime threads, which answers `202` and hands each body
/// to `in_flight` senders posting it to `sink` with reqwest — what the engine's HTTP intake
/// and HTTP destination do, without the store, the steps or the routing. No durable engine
/// can deliver faster on these cores; its rate is the ceiling the HTTP-destination scenario
/// is read against. With `durable`, each request is first stored through the store's own
/// writer and schema (one group-committed write a message, as in the floor) before its
/// `202`: the least a durable intake adds. CPU is this process's: the proxy, its store, the
/// load and the sink's threads together.
fn baseline_http_proxy(connections: usize, in_flight: usize, sink: &str, durable: bool) -> Row {
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchyard::store::Store;
    let secs = load_seconds();
    let tmp = tempfile::tempdir().expect("temp dir");
    let store: Option<Arc<dyn Store>> = durable.then(|| {
        Arc::new(
            switchyard::store::sqlite::SqliteStore::open(&tmp.path().join("store.db"))
                .expect("store"),
        ) as Arc<dyn Store>
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("proxy runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let forwarded = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1024);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let client = reqwest::Client::new();
    let url = format!("http://{sink}/");
    for _ in 0..in_flight {
        let (rx, client, url, forwarded) =
            (rx.clone(), client.clone(), url.clone(), forwarded.clone());
        rt.spawn(async move {
            loop {
                let Some(body) = rx.lock().await.recv().await else {
                    return;
                };
                let answer = client.post(&url).body(body).send().await.expect("post");
                assert_eq!(answer.status(), 200);
                answer.bytes().await.expect("answer");
                forwarded.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let accepting = store.clone();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            s.set_nodelay(true).ok();
            let (tx, store) = (tx.clone(), accepting.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, store) = (tx.clone(), store.clone());
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            if let Some(store) = store {
                                store
                                    .insert(vec![floor_insert(body.clone(), true)])
                                    .await
                                    .expect("insert");
                            }
                            tx.send(body).await.ok();
                            let mut answer = hyper::Response::new(Full::new(bytes::Bytes::new()));
                            *answer.status_mut() = hyper::StatusCode::ACCEPTED;
                            Ok::<_, hyper::Error>(answer)
                        }
                    },
                );
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await
                    .ok();
            });
        }
    });
    let cpu0 = self_cpu();
    let started = Instant::now();
    let mut lat = http_load(
        &addr,
        connections,
        started + Duration::from_secs_f64(secs),
        "HTTP/1.1 202",
    );
    lat.sort();
    let seconds = started.elapsed().as_secs_f64();
    let accepted = lat.len();
    assert!(wait_until(Duration::from_secs(600), || forwarded
        .load(Ordering::Relaxed)
        == accepted));
    let drained = started.elapsed().as_secs_f64() - seconds;
    let mut row = Row::baseline(
        format!(
            "baseline: {} → http sink, {in_flight} in flight (drain {drained:.1}s)",
            if durable {
                "proxy + 1 store write/msg"
            } else {
                "bare proxy"
            }
        ),
        accepted,
        started,
        cpu0,
    );
    row.seconds = seconds;
    row.p50_ms = Some(percentile(&lat, 0.5));
    row.p99_ms = Some(percentile(&lat, 0.99));
    if let Some(store) = store {
        rt.block_on(store.close()).ok();
    }
    rt.shutdown_background();
    row
}

/// How a batch of files is made durable.
#[derive(Debug, Clone, Copy)]
enum Sync {
    /// `fsync` each file, one after another.
    Fsync,
    /// `fdatasync` each file, one after another.
    Fdatasync,
    /// `fsync` each file, eight threads side by side.
    Parallel,
    /// One `syncfs` for the whole file system.
    Syncfs,
}

/// The file scenario's I/O alone: read the input, write a temporary file, sync, link it into
/// place, remove the temporary name and the input, fsync the directory. `batch` files share
/// one sync pass (made as `how` says) and one directory fsync, as the engine's file
/// destination does.
fn baseline_file(batch: usize, how: Sync) -> Row {
    let n = scaled(10_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&outbox).unwrap();
    let filler = "x".repeat(800);
    for i in 0..n {
        std::fs::write(
            inbox.join(format!("o{i:06}.xml")),
            format!("<order id=\"{i}\"><note>{filler}</note></order>"),
        )
        .unwrap();
    }
    let cpu0 = self_cpu();
    let started = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("o{i:06}")).collect();
    for chunk in names.chunks(batch) {
        let mut open = Vec::with_capacity(chunk.len());
        for name in chunk {
            let body = std::fs::read(inbox.join(format!("{name}.xml"))).unwrap();
            let tmp = outbox.join(format!(".{name}.tmp"));
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(&body).unwrap();
            open.push((name, tmp, f));
        }
        match how {
            Sync::Fsync => open.iter().for_each(|(_, _, f)| f.sync_all().unwrap()),
            Sync::Fdatasync => open.iter().for_each(|(_, _, f)| f.sync_data().unwrap()),
            Sync::Parallel => std::thread::scope(|s| {
                for part in open.chunks(open.len().div_ceil(8)) {
                    s.spawn(move || part.iter().for_each(|(_, _, f)| f.sync_all().unwrap()));
                }
            }),
            Sync::Syncfs => {
                use std::os::fd::AsRawFd;
                if let Some((_, _, f)) = open.first() {
                    // SAFETY: a valid open descriptor; syncfs only reads it.
                    assert_eq!(unsafe { libc::syncfs(f.as_raw_fd()) }, 0);
                }
            }
        }
        for (name, tmp, _) in &open {
            std::fs::hard_link(tmp, outbox.join(format!("{name}.json"))).unwrap();
            std::fs::remove_file(tmp).unwrap();
        }
        std::fs::File::open(&outbox).unwrap().sync_all().unwrap();
        for (name, _, _) in &open {
            std::fs::remove_file(inbox.join(format!("{name}.xml"))).unwrap();
        }
    }
    Row::baseline(
        format!("baseline: raw file I/O, {how:?} per {batch}"),
        n,
        started,
        cpu0,
    )
}

/// A bare MLLP echo: one thread per connection answers each frame with a short ACK frame.
fn baseline_mllp() -> Row {
    let per = scaled(1000);
    let connections = 8;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut handlers = Vec::new();
        for _ in 0..connections {
            let (mut s, _) = listener.accept().unwrap();
            handlers.push(std::thread::spawn(move || {
                s.set_nodelay(true).ok();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        buf.drain(..end + 2);
                        let ack =
                            b"\x0bMSH|^~\\&|EHR|H|LAB|H|20261126||ACK|1|P|2.5\rMSA|AA|1\r\x1c\r";
                        if s.write_all(ack).is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        for h in handlers {
            let _ = h.join();
        }
    });
    let cpu0 = self_cpu();
    let started = Instant::now();
    let mut lat = mllp_clients(&addr.to_string(), connections, per);
    let seconds = started.elapsed().as_secs_f64();
    let _ = server.join();
    lat.sort();
    let total = connections * per;
    Row {
        scenario: "baseline: MLLP echo, 8 conns".into(),
        messages: total,
        seconds,
        p50_ms: Some(percentile(&lat, 0.5)),
        p99_ms: Some(percentile(&lat, 0.99)),
        cpu_per_1000: (self_cpu() - cpu0) / total as f64 * 1000.0,
        rss_mib: 0.0,
    }
}

/// SQLite as the store uses it (WAL, `synchronous=FULL`): 1 KiB rows, `batch` per commit.
fn baseline_sqlite(batch: usize) -> Row {
    let n = scaled(if batch == 1 { 5_000 } else { 100_000 });
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut db = rusqlite::Connection::open(tmp.path().join("bench.db")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .unwrap();
    let body = vec![b'x'; 1024];
    let cpu0 = self_cpu();
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let tx = db.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO m (body) VALUES (?1)")
                .unwrap();
            for _ in 0..batch.min(n - done) {
                st.execute([&body]).unwrap();
            }
        }
        tx.commit().unwrap();
        done += batch;
    }
    Row::baseline(
        format!("baseline: SQLite 1 KiB rows, {batch} per commit"),
        n,
        started,
        cpu0,
    )
}

/// The group-commit floor: `clients` concurrent callers, each storing one new message per
/// write (a JSON body of 34 bytes and two headers, as the HTTP scenario sends) through the
/// store's own writer and schema. One write per message is the least any durable intake
/// costs, so the HTTP figures above read as a fraction of this.
///
/// With `processed`, each write is what the engine's intake commits for an HTTP message: the
/// message with one step's outcome and one delivery ([`Store::insert_processed`]) — the
/// store's share of the engine's cost, beside the floor.
fn baseline_group_commit(clients: usize, processed: bool) -> Row {
    use switchyard::store::{Processed, StepRecord, Store};
    let secs = load_seconds();
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("store.db");
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(switchyard::store::sqlite::SqliteStore::open(&path).unwrap());
    // BENCH_DROP_INDEX=messages_state: the same without that index — what the index costs.
    let dropped = std::env::var("BENCH_DROP_INDEX").unwrap_or_default();
    if !dropped.is_empty() {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("DROP INDEX {dropped}"))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cpu0 = self_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let stored: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let ins = floor_insert(
                            bytes::Bytes::from_static(br#"{"order": 42, "lines": [1, 2, 3]}"#),
                            !processed,
                        );
                        if processed {
                            let step = StepRecord {
                                step: "steps[0].transform".into(),
                                ok: true,
                                duration: Duration::from_micros(20),
                                detail: None,
                            };
                            let result = Processed::Routed {
                                headers: ins.msg.headers.clone(),
                                body: ins.msg.body.clone(),
                                destinations: vec!["to[0]".into()],
                                held: Vec::new(),
                            };
                            store
                                .insert_processed(ins, vec![step], result, vec![])
                                .await
                                .expect("insert");
                        } else {
                            store.insert(vec![ins]).await.expect("insert");
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("client");
        }
        total
    });
    let _ = rt.block_on(store.close());
    Row::baseline(
        if processed {
            format!(
                "store: {clients} writers, message + outcome + delivery{}",
                if dropped.is_empty() {
                    String::new()
                } else {
                    format!(" (without {dropped})")
                }
            )
        } else {
            format!("baseline: group commit, {clients} writers, 1 write/msg")
        },
        stored,
        started,
        cpu0,
    )
}

/// A new message as the floor stores it: `body` with the two headers an HTTP intake records.
fn floor_insert(body: bytes::Bytes, scheduled: bool) -> switchyard::store::Insert {
    let mut msg = switchyard::message::Message::new("bench", body);
    msg.headers.insert("http.method".into(), "POST".into());
    msg.headers
        .insert("content-type".into(), "application/json".into());
    switchyard::store::Insert {
        msg,
        route_version: "v1".into(),
        state: switchyard::store::MessageState::Received,
        error: None,
        parent: None,
        resume_step: 0,
        scheduled,
        wire_taps: Vec::new(),
        fifo: Vec::new(),
        index: Vec::new(),
        position: None,
    }
}

impl Row {
    /// A baseline measured in this process: no latency, no engine RSS.
    fn baseline(scenario: String, messages: usize, started: Instant, cpu0: f64) -> Row {
        Row {
            scenario,
            messages,
            seconds: started.elapsed().as_secs_f64(),
            p50_ms: None,
            p99_ms: None,
            cpu_per_1000: (self_cpu() - cpu0) / messages as f64 * 1000.0,
            rss_mib: 0.0,
        }
    }
}

/// CPU seconds used by this (benchmark) process so far.
fn self_cpu() -> f64 {
    usage(std::process::id()).0
}

/// Broker scenarios and their baselines: the bare client doing the same broker work (consume
/// with an ack per message at the same prefetch, publish with confirms at the same window).
mod broker {
    use super::*;
    use common::brokers::{Amqp1, Mosquitto, Nats, Rabbit, Redis, TestBroker};
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use rumqttc::v5::mqttbytes::QoS;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn payloads(n: usize) -> Vec<(String, String)> {
        let filler = "x".repeat(900);
        (0..n)
            .map(|i| {
                (
                    format!("b-{i}"),
                    format!("{{\"order\":{i},\"note\":\"{filler}\"}}"),
                )
            })
            .collect()
    }

    fn engine_row(scenario: &str, n: usize, seconds: f64, engine: Engine) -> Row {
        let (cpu, rss) = usage(engine.pid());
        engine.stop();
        Row {
            scenario: scenario.into(),
            messages: n,
            seconds,
            p50_ms: None,
            p99_ms: None,
            cpu_per_1000: cpu / n as f64 * 1000.0,
            rss_mib: rss as f64 / 1024.0,
        }
    }

    /// A route's destination in a drain: one file each (synced), or the bench's HTTP sink.
    #[derive(Clone, Copy)]
    pub(super) enum To {
        File,
        Http,
    }

    impl To {
        fn label(self) -> &'static str {
            match self {
                To::File => "file",
                To::Http => "http sink",
            }
        }

        /// A route from the inbound `from` (its YAML under `from:`) to here, with
        /// `BENCH_ROUTE_EXTRA` (steps, say) between them.
        fn route(self, from: &str) -> String {
            format!(
                "from:\n{from}{}to:\n{}",
                std::env::var("BENCH_ROUTE_EXTRA").unwrap_or_default(),
                self.yaml()
            )
        }

        fn yaml(self) -> String {
            match self {
                To::File => "  - file: { path: outbox, name: \"{{id}}.json\" }\n".into(),
                // As the `http sink` group's destination.
                To::Http => format!(
                    "  - http: {{ url: \"http://{}/\", delivery: {{ concurrency: 16 }} }}\n",
                    super::http_sink()
                ),
            }
        }
    }

    /// The engine drains `n` messages its inbound `from` finds loaded beforehand, to `to`;
    /// the scenario's figure is the whole run, intake is in its label.
    pub(super) fn drain(label: &str, from: String, n: usize, to: To) -> Row {
        let ws = Workspace::new();
        ws.write_route("consume.yaml", &to.route(&from));
        let engine = ws.start_with_env(&[("SWITCHYARD_LOG", "warn")]);
        let mut progress = Progress::new(&ws);
        let started = Instant::now();
        let n = n as u64;
        assert!(progress.wait(Duration::from_secs(1800), |stored, _| stored >= n));
        let intake = started.elapsed().as_secs_f64();
        assert!(
            progress.wait(Duration::from_secs(1800), |_, delivered| delivered == n),
            "{:?}",
            ws.states()
        );
        engine_row(
            &format!(
                "{label} → {} (intake {:.0}/s)",
                to.label(),
                n as f64 / intake
            ),
            n as usize,
            started.elapsed().as_secs_f64(),
            engine,
        )
    }

    /// How many messages the bare publisher keeps in flight: 64 — a broker destination sends
    /// batches of up to 64 as one pipeline — unless BENCH_AMQP_WINDOW says otherwise.
    fn window() -> usize {
        std::env::var("BENCH_AMQP_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    }

    pub fn amqp(url: &str) -> Vec<Row> {
        let rt = runtime();
        let rabbit = Rabbit::new(url);
        let n = scaled(20_000);
        let mut rows = Vec::new();

        // amqp in → file out: a queue loaded beforehand, drained by the engine.
        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            rt.block_on(rabbit.publish(source, &payloads(n)));
            let from = rabbit.inbound_yaml(source, "");
            rows.push(drain("amqp in (prefetch 64)", from, n, to));
        }

        // Baseline: the bare client drains the same load, acking each message.
        rt.block_on(rabbit.publish("bare", &payloads(n)));
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let conn = rabbit.connect().await;
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(64, BasicQosOptions::default()).await.unwrap();
            let mut consumer = ch
                .basic_consume(
                    "bare".into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            for _ in 0..n {
                let d = consumer.next().await.unwrap().unwrap();
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        });
        rows.push(Row::baseline(
            "baseline: bare consume + ack, prefetch 64".into(),
            n,
            started,
            cpu0,
        ));

        // HTTP in → amqp out, publisher confirms, batches of 64 pipelined.
        let window = window();
        let destination = format!(
            "  - amqp:\n      url: {}\n      routing_key: published\n      declare: {{ queues: [ {{ name: published }} ] }}\n      delivery: {{ retry: {{ max_attempts: 100 }} }}\n",
            rabbit.url()
        );
        let label = "amqp (batches of 64, pipelined)".to_string();
        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((label.as_str(), destination.clone())),
        ));
        rows.push(backlog_drain("amqp", &destination));

        // Baseline: the bare client publishing with confirms, as many in flight.
        let n = scaled(20_000);
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let conn = rabbit.connect().await;
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(
                "bare-out".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let ch = std::sync::Arc::new(ch);
            let workers: Vec<_> = (0..window)
                .map(|_| {
                    let (ch, body) = (ch.clone(), body.clone());
                    tokio::spawn(async move {
                        for _ in 0..n / window {
                            let props = lapin::BasicProperties::default().with_delivery_mode(2);
                            let confirm = ch
                                .basic_publish(
                                    "".into(),
                                    "bare-out".into(),
                                    BasicPublishOptions {
                                        mandatory: true,
                                        ..Default::default()
                                    },
                                    body.as_bytes(),
                                    props,
                                )
                                .await
                                .unwrap();
                            assert!(confirm.await.unwrap().is_ack());
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        });
        rows.push(Row::baseline(
            format!("baseline: bare publish + confirm, {window} in flight"),
            n / window * window,
            started,
            cpu0,
        ));
        rows
    }

    pub fn mqtt(url: &str) -> Vec<Row> {
        let rt = runtime();
        let broker = Mosquitto::new(url);
        // Mosquitto queues at most 1,000 messages per session by default and drops the rest:
        // publish in slices the consumer takes before the next one, for both runs alike.
        let n = scaled(10_000);
        let slice = 500.min(n);
        let mut rows = Vec::new();

        let all = payloads(n);
        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            let ws = Workspace::new();
            ws.write_route("consume.yaml", &to.route(&broker.inbound_yaml(source, "")));
            let engine =
                ws.start_with_env(&[("SWITCHYARD_LOG", "warn,switchyard::adapters::inbound=info")]);
            assert!(wait_until(Duration::from_secs(20), || ws
                .log_events()
                .iter()
                .any(|e| e["message"] == "consuming")));
            let mut progress = Progress::new(&ws);
            let started = Instant::now();
            for (i, chunk) in all.chunks(slice).enumerate() {
                rt.block_on(broker.publish(source, chunk));
                let want = ((i + 1) * slice).min(n) as u64;
                // Polled every 5 ms, as the baseline polls its counter every 2 ms.
                assert!(
                    progress.wait(Duration::from_secs(600), |stored, _| stored >= want),
                    "{:?}",
                    ws.states()
                );
            }
            let intake = started.elapsed().as_secs_f64();
            assert!(
                progress.wait(Duration::from_secs(1800), |_, delivered| delivered
                    == n as u64)
            );
            rows.push(engine_row(
                &format!(
                    "mqtt in (QoS 1, rcv max 64) → {} (intake {:.0}/s)",
                    to.label(),
                    n as f64 / intake
                ),
                n,
                started.elapsed().as_secs_f64(),
                engine,
            ));
        }

        // Baseline: a bare subscriber with manual acks at the same receive maximum.
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let mut o = rumqttc::v5::MqttOptions::new(broker.client_id("bare"), "127.0.0.1", 1883);
            o.set_manual_acks(true)
                .set_receive_maximum(Some(64))
                .set_max_packet_size(Some(1 << 20));
            let (client, mut events) = rumqttc::v5::AsyncClient::new(o, 256);
            client
                .subscribe_many([Filter::new(broker.topic("bare"), QoS::AtLeastOnce)])
                .await
                .unwrap();
            loop {
                if let Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) = events.poll().await {
                    break;
                }
            }
            let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = received.clone();
            let subscriber = tokio::spawn(async move {
                while counter.load(std::sync::atomic::Ordering::Relaxed) < n {
                    if let Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) =
                        events.poll().await
                    {
                        client.ack(&p).await.unwrap();
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            for (i, chunk) in all.chunks(slice).enumerate() {
                broker.publish("bare", chunk).await;
                let want = ((i + 1) * slice).min(n);
                while received.load(std::sync::atomic::Ordering::Relaxed) < want {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            subscriber.await.unwrap();
        });
        rows.push(Row::baseline(
            "baseline: bare subscriber, manual acks".into(),
            n,
            started,
            cpu0,
        ));
        rows
    }

    pub fn nats(url: &str) -> Vec<Row> {
        let rt = runtime();
        let nats = Nats::new(url);
        let n = scaled(20_000);
        let mut rows = Vec::new();
        // Straight to the server, not through the tests' relay.
        let direct = |yaml: String| yaml.replace(&nats.engine_url(), url);

        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            rt.block_on(nats.publish(source, &payloads(n)));
            let from = direct(nats.inbound_yaml(source, ""));
            rows.push(drain("nats in (prefetch 64, double ack)", from, n, to));
        }

        // Baseline: a bare pull consumer drains the same load with the engine's guarantee —
        // a double ack per message (the server confirms it), up to 64 awaited at once.
        rt.block_on(nats.publish("bare", &payloads(n)));
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let js = nats.connect().await;
            let consumer = js
                .get_stream(nats.stream("bare"))
                .await
                .unwrap()
                .get_or_create_consumer(
                    "bare",
                    async_nats::jetstream::consumer::pull::Config {
                        durable_name: Some("bare".into()),
                        max_ack_pending: 64,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut acks = futures_util::stream::FuturesUnordered::new();
            let mut taken = 0;
            while taken < n || !acks.is_empty() {
                tokio::select! {
                    m = messages.next(), if taken < n => {
                        let m = m.unwrap().unwrap();
                        taken += 1;
                        acks.push(async move { m.double_ack().await.unwrap() });
                    }
                    Some(()) = acks.next(), if !acks.is_empty() => {}
                }
            }
        });
        rows.push(Row::baseline(
            "baseline: bare pull consumer + double ack, 64 pending".into(),
            n,
            started,
            cpu0,
        ));

        // HTTP in → nats out, done on the PubAck, batches of 64 pipelined.
        let window = window();
        let label = "nats (batches of 64, pipelined)".to_string();
        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((label.as_str(), direct(nats.outbound_yaml("published")))),
        ));
        rows.push(backlog_drain(
            "nats",
            &direct(nats.outbound_yaml("drained")),
        ));

        // Baseline: the bare client publishing, each with a `Nats-Msg-Id`, and awaiting each
        // PubAck, as many in flight.
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let js = nats.connect().await;
            nats.ensure_stream(&js, "bare-out").await;
            let workers: Vec<_> = (0..window)
                .map(|_| {
                    let (js, body, subject) = (js.clone(), body.clone(), nats.subject("bare-out"));
                    tokio::spawn(async move {
                        for _ in 0..n / window {
                            // With a message id, as the destination sends: the stream keeps
                            // it for its duplicate window.
                            let mut headers = async_nats::HeaderMap::new();
                            headers
                                .insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                            let ack = js.publish_with_headers(
                                subject.clone(),
                                headers,
                                body.clone().into(),
                            );
                            ack.await.unwrap().await.unwrap();
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        });
        rows.push(Row::baseline(
            format!("baseline: bare publish + PubAck, {window} in flight"),
            n / window * window,
            started,
            cpu0,
        ));
        rows
    }

    /// Waits at most 5 s for an AMQP 1.0 goodbye: once a bare client hung in its close after
    /// all its sends were accepted, and the bench with it.
    async fn closed<T>(goodbye: impl std::future::Future<Output = T>) {
        let _ = tokio::time::timeout(Duration::from_secs(5), goodbye).await;
    }

    /// Kafka as tansu serves it (a broker of the bench's own, its logs in memory): records
    /// loaded beforehand drained by the engine's consumer group, beside a bare consumer in a
    /// group of its own that stores and commits offsets the same way; and HTTP → kafka beside
    /// a bare idempotent producer queueing batches of 64 and awaiting their acknowledgements.
    #[cfg(feature = "kafka")]
    pub fn kafka(tansu: &str) -> Vec<Row> {
        use common::brokers::{kafka_client, Kafka};
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let rt = runtime();
        let kafka = Kafka::direct(tansu);
        let n = scaled(20_000);
        let mut rows = Vec::new();
        let bootstrap = kafka.bootstrap();

        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            kafka.create(source);
            rt.block_on(kafka_client::publish(
                &bootstrap,
                &kafka.topic(source),
                &payloads(n),
            ));
            let from = kafka.inbound_yaml(source, "");
            rows.push(drain("kafka in (prefetch 256, 3 partitions)", from, n, to));
        }

        kafka.create("bare");
        rt.block_on(kafka_client::publish(
            &bootstrap,
            &kafka.topic("bare"),
            &payloads(n),
        ));
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let consumer: StreamConsumer = kafka_client::config(&bootstrap)
                .set("group.id", "bare")
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.offset.store", "false")
                .set("auto.commit.interval.ms", "200")
                .create()
                .unwrap();
            consumer.subscribe(&[kafka.topic("bare").as_str()]).unwrap();
            for _ in 0..n {
                let m = consumer.recv().await.unwrap();
                consumer.store_offset_from_message(&m).unwrap();
            }
        });
        rows.push(Row::baseline(
            "baseline: bare group consumer, offsets stored".into(),
            n,
            started,
            cpu0,
        ));

        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((
                "kafka (batches of 64, acks=all)",
                kafka.outbound_yaml("published"),
            )),
        ));
        rows.push(backlog_drain("kafka", &kafka.outbound_yaml("drained")));

        kafka.create("bare-out");
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        let batches = n / 64;
        rt.block_on(async {
            let producer: FutureProducer = kafka_client::config(&bootstrap)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "1")
                .create()
                .unwrap();
            let topic = kafka.topic("bare-out");
            for _ in 0..batches {
                let sends = (0..64).map(|_| {
                    producer.send(
                        FutureRecord::<str, str>::to(&topic).payload(&body),
                        Duration::from_secs(10),
                    )
                });
                for sent in futures_util::future::join_all(sends).await {
                    assert!(sent.is_ok());
                }
            }
        });
        rows.push(Row::baseline(
            "baseline: bare idempotent producer, batches of 64".into(),
            batches * 64,
            started,
            cpu0,
        ));
        rows
    }

    /// Amazon SQS as moto serves it (a Python server of the bench's own): the engine beside
    /// the bare SDK client, both talking to moto straight, not through the tests' relay.
    #[cfg(feature = "sqs")]
    pub fn sqs() -> Vec<Row> {
        use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
        use common::brokers::Sqs;
        let rt = runtime();
        let sqs = Sqs::new("");
        // moto answers a few hundred to a few thousand calls a second: 4,000 messages say
        // enough.
        let n = scaled(4_000).max(20);
        let mut rows = Vec::new();
        let direct = |source: &str, yaml: String| {
            yaml.replace(&sqs.engine_queue_url(source), &sqs.queue_url(source))
        };

        rt.block_on(sqs.publish("engine", &payloads(n)));
        // The tests' 5 s visibility timeout is for their redelivery checks; under a bench
        // load moto can take longer than that to answer, and a message would come back.
        rows.push(drain(
            "sqs in (long poll, batches of 10)",
            direct("engine", sqs.inbound_yaml("engine", ""))
                .replace("visibility_timeout: 5s", "visibility_timeout: 120s"),
            n,
            To::File,
        ));

        rt.block_on(sqs.publish("bare", &payloads(n)));
        let (client, url) = (sqs.client(), sqs.queue_url("bare"));
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let mut got = 0;
            while got < n {
                let out = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .unwrap();
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .unwrap()
                    })
                    .collect();
                client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .unwrap();
                got += messages.len();
            }
        });
        rows.push(Row::baseline(
            "baseline: bare receive + delete, batches of 10".into(),
            n,
            started,
            cpu0,
        ));

        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some(("sqs", direct("published", sqs.outbound_yaml("published")))),
        ));

        // The pair to read: moto slows as a queue grows (the HTTP scenario above leaves
        // thousands in it), so a backlog taken in for a tenth of the load's time is delivered
        // into a fresh queue, and the bare client sends as many into another.
        let backlog = backlog_drain_for(
            "sqs (batches of 10)",
            &direct("drained", sqs.outbound_yaml("drained")),
            (load_seconds() / 10.0).max(0.02),
        );
        let rounds = backlog.messages.div_ceil(80).max(1);
        rows.push(backlog);

        sqs.create("bare-out");
        let url = sqs.queue_url("bare-out");
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            for _ in 0..rounds {
                // Eight batches of ten at once.
                let sends = (0..8).map(|b| {
                    let entries = (0..10)
                        .map(|i| {
                            SendMessageBatchRequestEntry::builder()
                                .id(format!("{b}-{i}"))
                                .message_body(&body)
                                .build()
                                .unwrap()
                        })
                        .collect();
                    client
                        .send_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                });
                for sent in futures_util::future::join_all(sends).await {
                    assert!(sent.unwrap().failed.is_empty());
                }
            }
        });
        rows.push(Row::baseline(
            "baseline: bare SDK client, 8 batches of 10 at once".into(),
            rounds * 80,
            started,
            cpu0,
        ));
        rows
    }

    pub fn redis(url: &str) -> Vec<Row> {
        let rt = runtime();
        let redis = Redis::new(url);
        let n = scaled(20_000);
        let mut rows = Vec::new();
        let direct = |yaml: String| yaml.replace(&redis.engine_url(), url);

        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            rt.block_on(redis.publish(source, &payloads(n)));
            let from = direct(redis.inbound_yaml(source, ""));
            rows.push(drain("redis in (group, prefetch 64)", from, n, to));
        }

        // Baseline: a bare group reader drains the same load, XACK after each read of 64.
        rt.block_on(redis.publish("bare", &payloads(n)));
        let cpu0 = self_cpu();
        let started = Instant::now();
        let mut conn = redis.connection();
        let key = redis.key("bare");
        let _: () = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("bare")
            .arg("0")
            .query(&mut conn)
            .unwrap();
        let mut read = 0;
        while read < n {
            let reply: ::redis::Value = ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("bare")
                .arg("bare")
                .arg("COUNT")
                .arg(64)
                .arg("STREAMS")
                .arg(&key)
                .arg(">")
                .query(&mut conn)
                .unwrap();
            let entries = switchyard::adapters::broker::redis::read_entries(&reply);
            let mut ack = ::redis::cmd("XACK");
            ack.arg(&key).arg("bare");
            for e in &entries {
                ack.arg(&e.id);
            }
            let _: i64 = ack.query(&mut conn).unwrap();
            read += entries.len();
        }
        rows.push(Row::baseline(
            "baseline: bare XREADGROUP 64 + XACK".into(),
            n,
            started,
            cpu0,
        ));

        // HTTP in → redis out (XADD), done on the reply, batches of 64 pipelined.
        let window = window();
        let label = "redis xadd (batches of 64, pipelined)".to_string();
        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((label.as_str(), direct(redis.outbound_yaml("published")))),
        ));
        rows.push(backlog_drain(
            "redis xadd",
            &direct(redis.outbound_yaml("drained")),
        ));

        // Baseline: the bare client adding entries and awaiting each reply, as many in flight.
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let conn = ::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let workers: Vec<_> = (0..window)
                .map(|_| {
                    let (mut conn, body, key) = (conn.clone(), body.clone(), redis.key("bare-out"));
                    tokio::spawn(async move {
                        for _ in 0..n / window {
                            let _: String = ::redis::cmd("XADD")
                                .arg(&key)
                                .arg("*")
                                .arg("body")
                                .arg(&body)
                                .query_async(&mut conn)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        });
        rows.push(Row::baseline(
            format!("baseline: bare XADD, {window} in flight"),
            n / window * window,
            started,
            cpu0,
        ));
        rows
    }

    pub fn amqp1(url: &str) -> Vec<Row> {
        use fe2o3_amqp::types::messaging::{Body, Header, Message, MessageId, Outcome, Properties};
        use fe2o3_amqp::types::primitives::{Binary, Timestamp, Value};
        use std::time::SystemTime;
        let rt = runtime();
        let broker = Amqp1::new(url);
        let n = scaled(20_000);
        let mut rows = Vec::new();
        let direct = |yaml: String| yaml.replace(&broker.engine_url(), url);

        for (source, to) in [("engine", To::File), ("engine-http", To::Http)] {
            rt.block_on(broker.publish(source, &payloads(n)));
            let from = direct(broker.inbound_yaml(source, ""));
            rows.push(drain("amqp1 in (credit 64)", from, n, to));
        }

        // Baseline: a bare receiver drains the same load, accepting each delivery.
        rt.block_on(broker.publish("bare", &payloads(n)));
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let (mut conn, mut session) = broker.connect().await;
            let mut receiver = fe2o3_amqp::Receiver::builder()
                .name("bare")
                .source(broker.address("bare"))
                .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(64))
                .attach(&mut session)
                .await
                .unwrap();
            for _ in 0..n {
                let d = receiver.recv::<Body<Value>>().await.unwrap();
                receiver.accept(&d).await.unwrap();
            }
            closed(receiver.close()).await;
            closed(session.end()).await;
            closed(conn.close()).await;
        });
        rows.push(Row::baseline(
            "baseline: bare receiver + accept, credit 64".into(),
            n,
            started,
            cpu0,
        ));

        // HTTP in → amqp1 out, done on `accepted`, batches of 64 pipelined.
        let window = window();
        let label = "amqp1 (batches of 64, pipelined)".to_string();
        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((label.as_str(), direct(broker.outbound_yaml("published")))),
        ));
        rows.push(backlog_drain(
            "amqp1",
            &direct(broker.outbound_yaml("drained")),
        ));

        // Baseline: bare senders awaiting each outcome, as many in flight (a link each).
        let body = payloads(1).remove(0).1;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let (mut conn, mut session) = broker.connect().await;
            let mut workers = Vec::new();
            for w in 0..window {
                let mut sender = fe2o3_amqp::Sender::attach(
                    &mut session,
                    format!("bare-{w}"),
                    broker.address("bare-out"),
                )
                .await
                .unwrap();
                let body = body.clone();
                workers.push(tokio::spawn(async move {
                    for _ in 0..n / window {
                        // Durable, as the destination sends by default: the broker
                        // keeps (and syncs) it before it accepts. With the properties the
                        // destination sets: a message id (so a consumer can drop a
                        // duplicate), the content type and the creation time.
                        let m = Message::builder()
                            .header(Header {
                                durable: true,
                                ..Default::default()
                            })
                            .properties(Properties {
                                message_id: Some(MessageId::String(
                                    uuid::Uuid::now_v7().to_string(),
                                )),
                                content_type: Some("application/json".into()),
                                creation_time: Some(Timestamp::from_milliseconds(
                                    SystemTime::now()
                                        .duration_since(SystemTime::UNIX_EPOCH)
                                        .map(|d| d.as_millis() as i64)
                                        .unwrap_or(0),
                                )),
                                ..Default::default()
                            })
                            .data(Binary::from(body.as_bytes().to_vec()))
                            .build();
                        // Bounded: RabbitMQ once left a run's last outcomes unsent, and
                        // the bench hung here instead of failing.
                        let outcome = tokio::time::timeout(Duration::from_secs(30), sender.send(m))
                            .await
                            .expect("the broker sent no outcome for 30 s")
                            .unwrap();
                        assert!(matches!(outcome, Outcome::Accepted(_)));
                    }
                    closed(sender.close()).await;
                }));
            }
            for w in workers {
                w.await.unwrap();
            }
            closed(session.end()).await;
            closed(conn.close()).await;
        });
        rows.push(Row::baseline(
            format!("baseline: bare send + accepted, {window} in flight"),
            n / window * window,
            started,
            cpu0,
        ));
        rows
    }
}

/// Database scenarios and their baselines: a table of 1 KiB rows read by watermark into files
/// beside the bare client reading the same pages; HTTP into a table beside the bare client
/// inserting in transactions of 64 rows, one at a time (the destination's batch).
mod database {
    use super::*;
    use mysql_async::prelude::Queryable;

    /// A database of its own on the server at `base`: PostgreSQL a schema, MySQL a database.
    enum Db {
        Postgres(tokio_postgres::Client),
        Mysql(mysql_async::Conn),
    }

    impl Db {
        async fn exec(&mut self, sql: &str) {
            match self {
                Db::Postgres(c) => c.batch_execute(sql).await.unwrap(),
                Db::Mysql(c) => c.query_drop(sql).await.unwrap(),
            }
        }
    }

    async fn open(base: &str) -> (String, Db, &'static str) {
        if base.starts_with("postgres") {
            let (url, client) = common::postgres::fresh_schema(base, "bench").await;
            (url, Db::Postgres(client), "PostgreSQL")
        } else {
            let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            let mut admin = mysql_async::Conn::from_url(base).await.unwrap();
            admin
                .query_drop(format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let url = format!("{}/{name}", base.rsplit_once('/').map_or(base, |(s, _)| s));
            let conn = mysql_async::Conn::from_url(&url).await.unwrap();
            (url, Db::Mysql(conn), "MySQL")
        }
    }

    const PAGE: usize = 500;

    pub fn run(base: &str) -> Vec<Row> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, mut db, name) = rt.block_on(open(base));
        let n = scaled(20_000);
        let note = "x".repeat(1000);
        rt.block_on(async {
            db.exec("CREATE TABLE source (id BIGINT PRIMARY KEY, note TEXT NOT NULL)")
                .await;
            db.exec("CREATE TABLE sink (id VARCHAR(40) PRIMARY KEY, body TEXT NOT NULL)")
                .await;
            for from in (0..n).step_by(1000) {
                let rows: Vec<String> = (from..(from + 1000).min(n))
                    .map(|i| format!("({}, '{note}')", i + 1))
                    .collect();
                db.exec(&format!(
                    "INSERT INTO source (id, note) VALUES {}",
                    rows.join(",")
                ))
                .await;
            }
        });
        let mut rows = Vec::new();

        // database in (watermark, pages of 500) → file.
        let query = format!("SELECT id, note FROM source WHERE id > :id ORDER BY id LIMIT {PAGE}");
        rows.push(super::broker::drain(
            &format!("database in ({name}, pages of {PAGE})"),
            format!(
                "  database:\n    url: \"{url}\"\n    query: {query}\n    watermark: {{ columns: [id], start: {{ id: 0 }} }}\n    interval: 100ms\n"
            ),
            n,
            super::broker::To::File,
        ));
        // Baseline: the bare client reads the same pages.
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            let mut last = 0i64;
            let mut read = 0;
            while read < n {
                let page = PAGE as i64;
                let ids: Vec<i64> = match &mut db {
                    Db::Postgres(c) => c
                        .query(
                            "SELECT id, note FROM source WHERE id > $1 ORDER BY id LIMIT $2",
                            &[&last, &page],
                        )
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect(),
                    Db::Mysql(c) => c
                        .exec::<(i64, String), _, _>(
                            "SELECT id, note FROM source WHERE id > ? ORDER BY id LIMIT ?",
                            (last, page),
                        )
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect(),
                };
                read += ids.len();
                last = *ids.last().unwrap();
            }
        });
        rows.push(Row::baseline(
            format!("baseline: bare {name} keyset reads, pages of {PAGE}"),
            n,
            started,
            cpu0,
        ));

        // HTTP in → database out (an insert per message, one transaction per batch).
        let destination = format!(
            "  - database:\n      url: \"{url}\"\n      statement: INSERT INTO sink (id, body) VALUES (:id, :body)\n      params: {{ id: \"= id\", body: \"= to_json(body)\" }}\n"
        );
        let label = format!("{name} insert");
        rows.push(http_scenario_on(
            50,
            false,
            None,
            Some((label.as_str(), destination)),
        ));
        // Baseline: the bare client inserts the same rows, 64 to a transaction.
        let body = r#"{"order":42,"lines":[1,2,3]}"#;
        let cpu0 = self_cpu();
        let started = Instant::now();
        rt.block_on(async {
            for batch in 0..n / 64 {
                match &mut db {
                    Db::Postgres(c) => {
                        let tx = c.transaction().await.unwrap();
                        let insert = tx
                            .prepare("INSERT INTO sink (id, body) VALUES ($1, $2)")
                            .await
                            .unwrap();
                        for i in 0..64 {
                            let id = format!("bare-{batch}-{i}");
                            tx.execute(&insert, &[&id, &body]).await.unwrap();
                        }
                        tx.commit().await.unwrap();
                    }
                    Db::Mysql(c) => {
                        c.query_drop("START TRANSACTION").await.unwrap();
                        for i in 0..64 {
                            let id = format!("bare-{batch}-{i}");
                            c.exec_drop("INSERT INTO sink (id, body) VALUES (?, ?)", (id, body))
                                .await
                                .unwrap();
                        }
                        c.query_drop("COMMIT").await.unwrap();
                    }
                }
            }
        });
        rows.push(Row::baseline(
            format!("baseline: bare {name} inserts, 64 per commit"),
            n / 64 * 64,
            started,
            cpu0,
        ));
        rows
    }
}
