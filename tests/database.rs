//! The `database` adapters against the real servers, one suite run on PostgreSQL and on
//! MariaDB/MySQL: a table read with a watermark (rows sharing a timestamp included), a table
//! read with marks, SIGKILL while reading in both modes, column types into JSON, HTTP into a
//! table (with an SQL injection attempt stored as data, a constraint violation dead without
//! retry), and a database that cannot be reached (retried).
//!
//! Runs when `SWITCHYARD_TEST_POSTGRES` and `SWITCHYARD_TEST_MYSQL` are set (`.ci/run` sets
//! them); each test works in a schema or database of its own. Otherwise each test says what
//! it did not run.

mod common;

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// A database of its own on one of the test servers.
enum TestDb {
    Postgres {
        client: tokio_postgres::Client,
        url: String,
    },
    Mysql {
        pool: mysql_async::Pool,
        url: String,
        name: String,
    },
}

impl TestDb {
    fn postgres(rt: &tokio::runtime::Runtime) -> Option<TestDb> {
        let base = common::postgres::test_server("the database adapter tests on PostgreSQL")?;
        let (url, client) = rt.block_on(common::postgres::fresh_schema(&base, "sydb"));
        Some(TestDb::Postgres { client, url })
    }

    fn mysql(rt: &tokio::runtime::Runtime) -> Option<TestDb> {
        let base = mysql_server()?;
        let name = format!("sydb_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/')
                .map_or(base.as_str(), |(server, _)| server)
        );
        let pool = rt.block_on(async {
            let admin = mysql_async::Pool::new(base.as_str());
            let mut c = admin
                .get_conn()
                .await
                .unwrap_or_else(|e| panic!("MySQL at {base} cannot be reached: {e}"));
            c.query_drop(format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            drop(c);
            admin.disconnect().await.unwrap();
            mysql_async::Pool::new(url.as_str())
        });
        Some(TestDb::Mysql { pool, url, name })
    }

    fn url(&self) -> &str {
        match self {
            TestDb::Postgres { url, .. } | TestDb::Mysql { url, .. } => url,
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, TestDb::Postgres { .. })
    }

    /// Runs statements (separated by `;`).
    fn exec(&self, rt: &tokio::runtime::Runtime, sql: &str) {
        rt.block_on(async {
            match self {
                TestDb::Postgres { client, .. } => client.batch_execute(sql).await.unwrap(),
                TestDb::Mysql { pool, .. } => {
                    let mut c = pool.get_conn().await.unwrap();
                    for s in sql.split(';').filter(|s| !s.trim().is_empty()) {
                        c.query_drop(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
                    }
                }
            }
        })
    }

    /// The first column of the first row, as an integer.
    fn count(&self, rt: &tokio::runtime::Runtime, sql: &str) -> i64 {
        rt.block_on(async {
            match self {
                TestDb::Postgres { client, .. } => client.query_one(sql, &[]).await.unwrap().get(0),
                TestDb::Mysql { pool, .. } => {
                    let mut c = pool.get_conn().await.unwrap();
                    c.query_first::<i64, _>(sql).await.unwrap().unwrap_or(0)
                }
            }
        })
    }

    /// The first column of each row, as text.
    fn texts(&self, rt: &tokio::runtime::Runtime, sql: &str) -> Vec<String> {
        rt.block_on(async {
            match self {
                TestDb::Postgres { client, .. } => client
                    .query(sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect(),
                TestDb::Mysql { pool, .. } => {
                    let mut c = pool.get_conn().await.unwrap();
                    c.query::<String, _>(sql).await.unwrap()
                }
            }
        })
    }

    fn drop_all(self, rt: &tokio::runtime::Runtime) {
        if let TestDb::Mysql { pool, name, .. } = self {
            rt.block_on(async {
                if let Ok(mut c) = pool.get_conn().await {
                    let _ = c.query_drop(format!("DROP DATABASE {name}")).await;
                }
                let _ = pool.disconnect().await;
            });
        }
    }
}

/// `SWITCHYARD_TEST_MYSQL` (`mysql://root@127.0.0.1:3306/test`), or `None` with a note.
fn mysql_server() -> Option<String> {
    let url = std::env::var("SWITCHYARD_TEST_MYSQL").ok();
    if url.is_none() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: SWITCHYARD_TEST_MYSQL is not set: the database adapter tests on MySQL/MariaDB pass without running; .ci/run sets it"
            );
        });
    }
    url
}

/// POSTs a JSON body to the HTTP inbound at `addr`; the answer must be a success.
fn post_json(rt: &tokio::runtime::Runtime, addr: &str, body: String) {
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `test` on each server that is configured.
fn on_each(test: impl Fn(&tokio::runtime::Runtime, &TestDb)) {
    let rt = runtime();
    for db in [TestDb::postgres(&rt), TestDb::mysql(&rt)]
        .into_iter()
        .flatten()
    {
        eprintln!(
            "on {}",
            if db.is_postgres() {
                "PostgreSQL"
            } else {
                "MySQL/MariaDB"
            }
        );
        test(&rt, &db);
        db.drop_all(&rt);
    }
}

/// The orders table of a legacy system, in each dialect.
fn orders_table(db: &TestDb) -> &'static str {
    if db.is_postgres() {
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, total NUMERIC(12,2) NOT NULL,
                              updated_at TIMESTAMPTZ NOT NULL, exported BOOLEAN NOT NULL DEFAULT false)"
    } else {
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer VARCHAR(200) NOT NULL, total DECIMAL(12,2) NOT NULL,
                              updated_at DATETIME(6) NOT NULL, exported BOOLEAN NOT NULL DEFAULT false)"
    }
}

/// Inserts orders `from..to`, ten to a timestamp (rows sharing one are the watermark's trap).
fn insert_orders(rt: &tokio::runtime::Runtime, db: &TestDb, from: usize, to: usize) {
    let rows: Vec<String> = (from..to)
        .map(|i| {
            let seconds = i / 10;
            let at = if db.is_postgres() {
                format!("TIMESTAMPTZ '2026-12-01T10:00:00.5Z' + interval '{seconds} seconds'")
            } else {
                format!("TIMESTAMPADD(SECOND, {seconds}, '2026-12-01 10:00:00.5')")
            };
            format!("({i}, 'customer {i}', {}.{:02}, {at})", i * 3, i % 100)
        })
        .collect();
    for chunk in rows.chunks(200) {
        db.exec(
            rt,
            &format!(
                "INSERT INTO orders (id, customer, total, updated_at) VALUES {}",
                chunk.join(", ")
            ),
        );
    }
}

fn watermark_route(db: &TestDb, extra: &str) -> String {
    let start = if db.is_postgres() {
        "1970-01-01T00:00:00Z"
    } else {
        "1970-01-01 00:00:00"
    };
    format!(
        r#"from:
  database:
    url: "{url}"
    query: |
      SELECT id, customer, total, updated_at FROM orders
      WHERE (updated_at, id) > (:updated_at, :id)
      ORDER BY updated_at, id LIMIT 100
    key: [id]
    watermark:
      columns: [updated_at, id]
      start: {{ updated_at: "{start}", id: 0 }}
    interval: 200ms
{extra}to:
  - file: {{ path: outbox, name: "{{{{id}}}}.json" }}
"#,
        url = db.url()
    )
}

fn mark_route(db: &TestDb) -> String {
    format!(
        r#"from:
  database:
    url: "{url}"
    query: SELECT id, customer, total FROM orders WHERE NOT exported ORDER BY id LIMIT 50
    key: [id]
    mark: UPDATE orders SET exported = true WHERE id = :id
    interval: 200ms
to:
  - file: {{ path: outbox, name: "{{{{id}}}}.json" }}
"#,
        url = db.url()
    )
}

/// The order ids in the outbox, and how many files there are.
fn delivered_ids(ws: &Workspace) -> (BTreeSet<i64>, usize) {
    let files = ws.files("outbox");
    let ids = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).ok())
        .filter_map(|b| serde_json::from_str::<Value>(&b).ok())
        .filter_map(|v| v["id"].as_i64())
        .collect();
    (ids, files.len())
}

#[test]
fn a_table_read_by_watermark_delivers_every_row_once_even_rows_sharing_a_timestamp() {
    on_each(|rt, db| {
        db.exec(rt, orders_table(db));
        insert_orders(rt, db, 1, 251);
        let ws = Workspace::new();
        ws.write_route("orders.yaml", &watermark_route(db, ""));
        let engine = ws.start();
        assert!(
            wait_until(Duration::from_secs(60), || ws.files("outbox").len() >= 250),
            "{} of 250 delivered; log: {:?}",
            ws.files("outbox").len(),
            ws.log_events()
                .iter()
                .filter(|e| e["level"] != "INFO")
                .collect::<Vec<_>>()
        );
        // More rows with the very timestamp of the last row read, and later ones.
        insert_orders(rt, db, 251, 301);
        assert!(wait_until(Duration::from_secs(60), || ws
            .files("outbox")
            .len()
            >= 300));
        std::thread::sleep(Duration::from_millis(800));
        let (ids, files) = delivered_ids(&ws);
        assert_eq!(files, 300, "a row was delivered twice");
        assert_eq!(ids, (1..301).collect::<BTreeSet<i64>>());
        // Exact decimals, as strings by default.
        let first: Value = serde_json::from_str(
            &ws.files("outbox")
                .iter()
                .filter_map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).ok())
                .find(|b| b.contains("\"id\":7,"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["total"], "21.07");
        assert_eq!(first["customer"], "customer 7");
        assert_eq!(ws.count("delivered"), 300);
        engine.stop();
    });
}

#[test]
fn a_table_read_with_marks_is_marked_after_the_commit() {
    on_each(|rt, db| {
        db.exec(rt, orders_table(db));
        insert_orders(rt, db, 1, 201);
        let ws = Workspace::new();
        ws.write_route("orders.yaml", &mark_route(db));
        let engine = ws.start();
        assert!(wait_until(Duration::from_secs(60), || {
            db.count(rt, "SELECT COUNT(*) FROM orders WHERE exported") == 200
        }));
        assert!(wait_until(Duration::from_secs(30), || ws
            .files("outbox")
            .len()
            >= 200));
        std::thread::sleep(Duration::from_millis(600));
        let (ids, files) = delivered_ids(&ws);
        assert_eq!((ids.len(), files), (200, 200));
        assert_eq!(ws.count("duplicate"), 0);
        engine.stop();
    });
}

/// SIGKILL while a backlog is read, in both modes: after a restart every row is delivered
/// once; rows read again are recorded as duplicates, not delivered.
#[test]
fn sigkill_while_reading_loses_nothing_and_delivers_nothing_twice() {
    on_each(|rt, db| {
        for mode in ["watermark", "mark"] {
            db.exec(rt, "DROP TABLE IF EXISTS orders");
            db.exec(rt, orders_table(db));
            insert_orders(rt, db, 1, 1201);
            let ws = Workspace::new();
            let route = if mode == "mark" {
                mark_route(db)
            } else {
                watermark_route(db, "")
            };
            ws.write_route("orders.yaml", &route);
            let engine = ws.start();
            assert!(wait_until(Duration::from_secs(60), || ws
                .files("outbox")
                .len()
                >= 150));
            engine.kill();
            let engine = ws.start();
            assert!(
                wait_until(Duration::from_secs(90), || ws.files("outbox").len() >= 1200),
                "{mode}: {} of 1200 delivered",
                ws.files("outbox").len()
            );
            std::thread::sleep(Duration::from_secs(1));
            let (ids, files) = delivered_ids(&ws);
            assert_eq!(files, 1200, "{mode}: a row was delivered twice");
            assert_eq!(ids.len(), 1200, "{mode}");
            assert_eq!(ws.count("delivered"), 1200, "{mode}");
            eprintln!(
                "{mode}: duplicates recorded after the kill: {}",
                ws.count("duplicate")
            );
            if mode == "mark" {
                assert_eq!(
                    db.count(rt, "SELECT COUNT(*) FROM orders WHERE NOT exported"),
                    0
                );
            }
            engine.stop();
        }
    });
}

#[test]
fn column_types_become_exact_json() {
    on_each(|rt, db| {
        let (table, row) = if db.is_postgres() {
            (
                "CREATE TABLE kinds (id INT PRIMARY KEY, big BIGINT, price NUMERIC(30,10), ratio DOUBLE PRECISION,
                   ok BOOLEAN, note TEXT, code UUID, at TIMESTAMPTZ, day DATE, doc JSONB, tags TEXT[],
                   raw BYTEA, missing TEXT)",
                "INSERT INTO kinds VALUES (1, 9007199254740993, 12345678901234567890.0123456789, 0.25, true,
                   'It''s \"quoted\"', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-12-01T10:00:00.123456Z',
                   '2026-12-01', '{\"a\": [1, 2]}', ARRAY['x', 'y'], '\\x00ff', NULL)",
            )
        } else {
            (
                "CREATE TABLE kinds (id INT PRIMARY KEY, big BIGINT, price DECIMAL(30,10), ratio DOUBLE,
                   ok BOOLEAN, note TEXT, code CHAR(36), at DATETIME(6), day DATE, doc JSON, tags TEXT,
                   raw VARBINARY(10), missing TEXT)",
                "INSERT INTO kinds VALUES (1, 9007199254740993, 12345678901234567890.0123456789, 0.25, true,
                   'It''s \"quoted\"', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-12-01 10:00:00.123456',
                   '2026-12-01', '{\"a\": [1, 2]}', 'x,y', x'00ff', NULL)",
            )
        };
        db.exec(rt, table);
        db.exec(rt, row);
        let ws = Workspace::new();
        ws.write_route(
            "kinds.yaml",
            &format!(
                r#"from:
  database:
    url: "{url}"
    query: SELECT * FROM kinds WHERE id > :id ORDER BY id
    key: [id]
    watermark: {{ columns: [id], start: {{ id: 0 }} }}
    interval: 200ms
to:
  - file: {{ path: outbox, name: "{{{{id}}}}.json" }}
"#,
                url = db.url()
            ),
        );
        let engine = ws.start();
        assert!(wait_until(Duration::from_secs(30), || ws
            .files("outbox")
            .len()
            == 1));
        let body = std::fs::read_to_string(ws.path("outbox").join(&ws.files("outbox")[0])).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["big"], serde_json::json!(9007199254740993i64), "{body}");
        assert_eq!(v["price"], "12345678901234567890.0123456789", "{body}");
        assert_eq!(v["ratio"], 0.25);
        assert_eq!(v["note"], "It's \"quoted\"");
        assert_eq!(v["code"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(v["day"], "2026-12-01");
        assert_eq!(v["missing"], Value::Null);
        assert_eq!(v["raw"], "AP8=", "binary columns are base64: {body}");
        if db.is_postgres() {
            assert_eq!(v["ok"], true);
            assert_eq!(v["at"], "2026-12-01T10:00:00.123456Z");
            assert_eq!(v["doc"], serde_json::json!({"a": [1, 2]}));
            assert_eq!(v["tags"], serde_json::json!(["x", "y"]));
        } else {
            // MySQL's BOOLEAN is TINYINT(1).
            assert_eq!(v["ok"], 1);
            assert_eq!(v["at"], "2026-12-01T10:00:00.123456");
        }
        // Text starts with the columns in the table's order.
        assert!(body.starts_with("{\"id\":1,\"big\":"), "{body}");
        engine.stop();
    });
}

/// HTTP in, a table out: each message one upsert, bound by name; an SQL injection attempt
/// is stored as data; a NOT NULL violation is dead after one attempt; the rest commit.
#[test]
fn http_into_a_table_binds_parameters_and_classifies_errors() {
    on_each(|rt, db| {
        let upsert = if db.is_postgres() {
            "INSERT INTO orders (id, customer, total, updated_at) VALUES (:id, :customer, :total, :at)
             ON CONFLICT (id) DO UPDATE SET customer = EXCLUDED.customer, total = EXCLUDED.total"
        } else {
            "INSERT INTO orders (id, customer, total, updated_at) VALUES (:id, :customer, :total, :at)
             ON DUPLICATE KEY UPDATE customer = VALUES(customer), total = VALUES(total)"
        };
        db.exec(rt, orders_table(db));
        let at = if db.is_postgres() {
            "2026-12-01T10:00:00Z"
        } else {
            "2026-12-01 10:00:00"
        };
        let ws = Workspace::new();
        ws.write_route(
            "to-db.yaml",
            &format!(
                r#"from:
  http: {{ listen: "127.0.0.1:0" }}
to:
  - database:
      url: "{url}"
      statement: |
        {upsert}
      params:
        id: order.id
        customer: order.customer
        total: "= body.order.total"
        at: "= \"{at}\""
      delivery: {{ retry: {{ max_attempts: 5, backoff: 100ms }} }}
"#,
                url = db.url(),
                upsert = upsert.replace('\n', "\n        ")
            ),
        );
        let engine = ws.start();
        let addr = ws.http_addr();
        let post = |body: String| post_json(rt, &addr, body);
        for i in 1..=100 {
            post(format!(
                r#"{{"order":{{"id":{i},"customer":"shop {i}","total":"{i}.50"}}}}"#
            ));
        }
        let evil = "x'); DROP TABLE orders; --";
        post(serde_json::json!({"order": {"id": 101, "customer": evil, "total": 1}}).to_string());
        // Upsert of an existing row.
        post(r#"{"order":{"id":5,"customer":"shop five","total":"5.55"}}"#.to_string());
        // NOT NULL violated: permanent, dead after one attempt.
        post(r#"{"order":{"id":102,"customer":null,"total":"1"}}"#.to_string());
        assert!(
            wait_until(Duration::from_secs(60), || ws.count("delivered") == 102
                && ws.count("dead") == 1),
            "{:?}",
            ws.states()
        );
        assert_eq!(db.count(rt, "SELECT COUNT(*) FROM orders"), 101);
        assert_eq!(
            db.texts(rt, "SELECT customer FROM orders WHERE id = 101"),
            vec![evil.to_string()]
        );
        assert_eq!(
            db.texts(rt, "SELECT customer FROM orders WHERE id = 5"),
            vec!["shop five".to_string()]
        );
        let total = db.texts(
            rt,
            if db.is_postgres() {
                "SELECT total::text FROM orders WHERE id = 42"
            } else {
                "SELECT CAST(total AS CHAR) FROM orders WHERE id = 42"
            },
        );
        assert_eq!(total, vec!["42.50".to_string()]);
        let attempts = ws.query_pairs(
            "SELECT m.state, COUNT(*) FROM transitions t JOIN messages m ON m.id = t.message_id
             WHERE t.event = 'attempt' AND m.state = 'dead' GROUP BY m.state",
        );
        assert_eq!(
            attempts.get("dead"),
            Some(&1),
            "a constraint violation is not retried"
        );
        let error = ws.query_pairs(
            "SELECT error, COUNT(*) FROM messages WHERE state = 'dead' GROUP BY error",
        );
        let error = error.keys().next().cloned().unwrap_or_default();
        assert!(
            error.contains("customer"),
            "the error names the column: {error}"
        );
        engine.stop();
    });
}

/// A database that cannot be reached: deliveries are retried (not dead at once), and the
/// connection's state is shown in the admin API.
#[test]
fn an_unreachable_database_is_retried() {
    let rt = runtime();
    for db in [TestDb::postgres(&rt), TestDb::mysql(&rt)]
        .into_iter()
        .flatten()
    {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let scheme = if db.is_postgres() {
            "postgres://root"
        } else {
            "mysql://root"
        };
        let ws = Workspace::new();
        ws.write_route(
            "to-db.yaml",
            &format!(
                r#"from:
  http: {{ listen: "127.0.0.1:0" }}
to:
  - database:
      url: "{scheme}@127.0.0.1:{port}/test"
      statement: INSERT INTO t (id) VALUES (:id)
      delivery: {{ retry: {{ max_attempts: 50, backoff: 100ms, max_backoff: 200ms }} }}
"#
            ),
        );
        let engine = ws.start_with_env(&[("SWITCHYARD_ADMIN", "127.0.0.1:0")]);
        let addr = ws.http_addr();
        post_json(&rt, &addr, r#"{"id": 1}"#.to_string());
        assert!(wait_until(Duration::from_secs(20), || {
            ws.query_pairs(
                "SELECT event, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY event",
            )
            .get("attempt")
            .is_some_and(|n| *n >= 3)
        }));
        assert_eq!(ws.count("dead"), 0);
        let routes = rt.block_on(async {
            reqwest::get(format!("http://{}/routes", ws.admin_addr()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        assert!(routes.contains("\"state\":\"down\""), "{routes}");
        engine.stop();
        db.drop_all(&rt);
    }
}

/// The bundled database examples, as shipped (routes from `examples/routes`, named endpoints
/// from `adapters/`, tables from `examples/database/`): the ERP's orders table read by
/// watermark and PUT to a fulfilment API as canonical JSON — a changed row again — and web
/// shop orders POSTed over HTTP upserted into MySQL.
#[test]
fn the_bundled_database_examples_work_as_shipped() {
    let rt = runtime();
    let (Some(pg), Some(my)) = (TestDb::postgres(&rt), TestDb::mysql(&rt)) else {
        return;
    };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    pg.exec(
        &rt,
        &std::fs::read_to_string(repo.join("examples/database/legacy-orders.sql")).unwrap(),
    );
    my.exec(
        &rt,
        &std::fs::read_to_string(repo.join("examples/database/legacy-orders-mysql.sql")).unwrap(),
    );
    let sink = rt.block_on(common::net::HttpSink::start(vec![200]));
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("adapters")).unwrap();
    for f in [
        "legacy-orders-db-to-http.yaml",
        "webshop-orders-to-mysql.yaml",
    ] {
        std::fs::copy(
            repo.join("examples/routes").join(f),
            ws.path("routes").join(f),
        )
        .unwrap();
    }
    for f in ["erp-orders-db.yaml", "shop-db.yaml"] {
        std::fs::copy(repo.join("adapters").join(f), ws.path("adapters").join(f)).unwrap();
    }
    // The test's own schema and database, through the endpoints' `${…}` settings.
    let pg_db = pg.url().rsplit_once('/').unwrap().1.to_string();
    let my_db = my.url().rsplit_once('/').unwrap().1.to_string();
    let fulfilment = format!("http://{}", sink.addr);
    let engine = ws.start_with_env(&[
        ("ERP_DB_NAME", pg_db.as_str()),
        ("SHOP_DB_NAME", my_db.as_str()),
        ("FULFILMENT_URL", fulfilment.as_str()),
        ("SHOP_DB_LISTEN", "127.0.0.1:0"),
        ("HISTORY_LISTEN", "127.0.0.1:0"),
    ]);
    let puts = || sink.requests();
    assert!(
        wait_until(Duration::from_secs(30), || puts().len() == 3),
        "{:?} / {:?}",
        puts(),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    let mut paths: Vec<String> = puts()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "PUT /orders/ERP-4711",
            "PUT /orders/ERP-4712",
            "PUT /orders/ERP-4713"
        ]
    );
    let first = puts()
        .into_iter()
        .find(|r| r.path.ends_with("4711"))
        .unwrap();
    let order: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(order["total"]["amount"], "129.95");
    assert_eq!(order["customer"], "C-100");
    // A changed row is read again, as a new message.
    pg.exec(
        &rt,
        "UPDATE erp_orders SET amount = 139.95, changed_at = now() WHERE order_no = 4711",
    );
    assert!(wait_until(Duration::from_secs(30), || puts().len() == 4));
    let changed: Value = serde_json::from_slice(&puts()[3].body).unwrap();
    assert_eq!(changed["total"]["amount"], "139.95");

    let addr = ws.http_addr();
    let order = std::fs::read_to_string(repo.join("examples/webshop/order-7001.json")).unwrap();
    let post_to = |addr: &str, body: &str| {
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!("http://{addr}/orders"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        })
    };
    post_to(&addr, &order);
    post_to(&addr, &order); // the same order again: upserted, not doubled
    assert!(wait_until(Duration::from_secs(30), || ws
        .count("delivered")
        == 6));
    assert_eq!(my.count(&rt, "SELECT COUNT(*) FROM shop_orders"), 1);
    assert_eq!(
        my.texts(
            &rt,
            "SELECT CONCAT(customer, ' ', total) FROM shop_orders WHERE order_id = 'WS-7001'"
        ),
        vec!["ann@example.com 37.50".to_string()]
    );

    // The customer's history from the same database through the same endpoint (`enrich`
    // with a query), in a route added while the engine runs.
    ws.copy_from_repo(
        "examples/routes/orders-credit-from-shop-db.yaml",
        "routes/orders-credit-from-shop-db.yaml",
    );
    let history = ws.route_listener("orders-credit-from-shop-db", &[]);
    let newcomer = order.replace("ann@example.com", "new@example.com");
    post_to(&history, &order);
    post_to(&history, &newcomer);
    let enriched = |dir: &str| -> Vec<Value> {
        ws.files(dir)
            .iter()
            .filter(|f| f.ends_with(".json"))
            .filter_map(|f| serde_json::from_slice(&std::fs::read(ws.path(dir).join(f)).ok()?).ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || enriched("examples/enriched")
            .len()
            == 2
            && enriched("examples/enriched/welcome").len() == 1),
        "{:?}",
        ws.states()
    );
    let ann = enriched("examples/enriched")
        .into_iter()
        .find(|o| o["customer"]["email"] == "ann@example.com")
        .unwrap();
    assert_eq!(ann["history"]["orders"], 1, "{ann}");
    assert_eq!(ann["history"]["spent"], "37.50", "{ann}");
    assert_eq!(
        enriched("examples/enriched/welcome")[0]["customer"]["email"],
        "new@example.com"
    );
    engine.stop();
    sink.stop();
    my.drop_all(&rt);
}

/// Needs no server: a reader that says neither how to mark rows nor where it stands, and a
/// writer naming a parameter its statement lacks, are refused by `switchyard check` with
/// their place in the route file.
#[test]
fn check_refuses_a_reader_without_mark_or_watermark_and_a_stray_parameter() {
    let ws = Workspace::new();
    let path = ws.write_route(
        "bad.yaml",
        r#"from:
  database:
    url: postgres://root@127.0.0.1/test
    query: SELECT id FROM orders
    key: [id]
to:
  - database:
      url: mysql://root@127.0.0.1/test
      statement: INSERT INTO t (id) VALUES (:id)
      params: { idd: order.id }
"#,
    );
    let out = ws.run(&["check", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("bad.yaml:1:1: from.database: give either `mark`"),
        "{text}"
    );
    assert!(
        text.contains("bad.yaml:6:1: to[0]: params.idd: the statement has no parameter :idd"),
        "{text}"
    );
}

/// One batch, three messages, the middle one breaking a constraint: the batch is run again
/// with a savepoint each, the middle one fails alone (permanently, naming the column) and the
/// others commit.
#[test]
fn a_failing_statement_in_a_batch_is_undone_alone() {
    use switchyard::adapters::database::{Database, Decimals, Settings, Sql};
    on_each(|rt, db| {
        db.exec(rt, orders_table(db));
        let url: switchyard::adapters::database::Url =
            serde_json::from_value(Value::String(db.url().to_string())).unwrap();
        let database = Database::new(Settings {
            url,
            statement_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(60),
            decimals: Decimals::String,
        });
        let sql = Sql::parse(if db.is_postgres() {
            "INSERT INTO orders (id, customer, total, updated_at) VALUES (:id, :customer, 1, now())"
        } else {
            "INSERT INTO orders (id, customer, total, updated_at) VALUES (:id, :customer, 1, NOW(6))"
        })
        .unwrap();
        let row = |id: i64, customer: Value| Ok(vec![Value::from(id), customer]);
        let results = rt
            .block_on(database.execute_each(
                &sql,
                vec![row(1, "a".into()), row(2, Value::Null), row(3, "c".into())],
            ))
            .unwrap();
        assert!(matches!(results[0], Ok(1)), "{results:?}");
        assert!(matches!(results[2], Ok(1)), "{results:?}");
        let failed = results[1].as_ref().unwrap_err();
        assert!(!failed.retryable, "{failed}");
        assert!(failed.message.contains("customer"), "{failed}");
        assert_eq!(db.count(rt, "SELECT COUNT(*) FROM orders"), 2);
    });
}

/// The bundled partner SFTP → CSV → database example, as shipped: a stock file put in the
/// partner's directory on a real sshd is taken, split into rows and upserted into MySQL; the
/// file leaves the directory.
#[test]
fn the_bundled_sftp_to_database_example_works_as_shipped() {
    let rt = runtime();
    let Some(my) = TestDb::mysql(&rt) else {
        return;
    };
    let Some(sshd) = common::sshd::Sshd::start() else {
        return;
    };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    my.exec(
        &rt,
        &std::fs::read_to_string(repo.join("examples/database/legacy-orders-mysql.sql")).unwrap(),
    );
    let partner = tempfile::tempdir().unwrap();
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("adapters")).unwrap();
    std::fs::copy(
        repo.join("examples/routes/partner-sftp-stock-to-db.yaml"),
        ws.path("routes").join("partner-sftp-stock-to-db.yaml"),
    )
    .unwrap();
    std::fs::copy(
        repo.join("adapters/acme-sftp-out.yaml"),
        ws.path("adapters").join("acme-sftp-out.yaml"),
    )
    .unwrap();
    let my_db = my.url().rsplit_once('/').unwrap().1.to_string();
    let port = sshd.port.to_string();
    let dir = partner.path().display().to_string();
    let key = sshd.client_key.display().to_string();
    let known = sshd.known_hosts.display().to_string();
    let engine = ws.start_with_env(&[
        ("SHOP_DB_NAME", my_db.as_str()),
        ("ACME_SFTP_USER", "root"),
        ("ACME_SFTP_PORT", port.as_str()),
        ("ACME_SFTP_DIR", dir.as_str()),
        ("ACME_SFTP_KEY", key.as_str()),
        ("ACME_KNOWN_HOSTS", known.as_str()),
    ]);
    std::fs::copy(
        repo.join("examples/stock/stock-2026-11-26.csv"),
        partner.path().join("stock-2026-11-26.csv"),
    )
    .unwrap();
    let rows = std::fs::read_to_string(repo.join("examples/stock/stock-2026-11-26.csv"))
        .unwrap()
        .lines()
        .count() as i64
        - 1;
    assert!(
        wait_until(Duration::from_secs(120), || my
            .count(&rt, "SELECT COUNT(*) FROM stock")
            == rows),
        "{} of {rows} rows; {:?}",
        my.count(&rt, "SELECT COUNT(*) FROM stock"),
        ws.log_events()
            .iter()
            .filter(|e| e["level"] != "INFO")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        my.texts(
            &rt,
            "SELECT CONCAT(warehouse, '=', on_hand) FROM stock WHERE sku = 'BOLT-M8'"
        ),
        vec!["Hamburg; Dock 4=1200".to_string()]
    );
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_dir(
        partner.path()
    )
    .unwrap()
    .count()
        == 0));
    engine.stop();
    my.drop_all(&rt);
}

/// `each: poll` makes one message of a poll's rows (a JSON array); a writer calls a stored
/// procedure; a query running past `statement_timeout` is cancelled by the database and the
/// poll fails with its reason, then succeeds once the query is quick again.
#[test]
fn polls_as_one_message_procedures_and_statement_timeouts() {
    on_each(|rt, db| {
        db.exec(rt, orders_table(db));
        insert_orders(rt, db, 1, 26);
        let (procedure, sleep) = if db.is_postgres() {
            (
                "CREATE TABLE audit (what TEXT NOT NULL);
                 CREATE PROCEDURE note_order(what TEXT) LANGUAGE SQL AS $$ INSERT INTO audit VALUES (what) $$",
                "pg_sleep(2)",
            )
        } else {
            (
                "CREATE TABLE audit (what TEXT NOT NULL);
                 CREATE PROCEDURE note_order(what TEXT) INSERT INTO audit VALUES (what)",
                "SLEEP(2)",
            )
        };
        for statement in procedure.split(";\n") {
            db.exec(rt, statement);
        }
        let ws = Workspace::new();
        ws.write_route(
            "batch.yaml",
            &format!(
                r#"from:
  database:
    url: "{url}"
    query: SELECT id, total FROM orders WHERE id > :id ORDER BY id LIMIT 10
    watermark: {{ columns: [id], start: {{ id: 0 }} }}
    each: poll
    interval: 200ms
to:
  - database:
      url: "{url}"
      statement: CALL note_order(:what)
      params: {{ what: "= `${{body.len()}} rows from ${{body[0].id}}`" }}
"#,
                url = db.url()
            ),
        );
        ws.write_route(
            "slow.yaml",
            &format!(
                r#"from:
  database:
    url: "{url}"
    query: SELECT id, {sleep} AS slept FROM orders WHERE id > :id ORDER BY id LIMIT 1
    watermark: {{ columns: [id], start: {{ id: 0 }} }}
    statement_timeout: 500ms
    interval: 200ms
to:
  - file: {{ path: outbox }}
"#,
                url = db.url()
            ),
        );
        let engine = ws.start();
        assert!(
            wait_until(Duration::from_secs(30), || db
                .count(rt, "SELECT COUNT(*) FROM audit")
                == 3),
            "{:?}",
            ws.log_events()
                .iter()
                .filter(|e| e["level"] != "INFO")
                .collect::<Vec<_>>()
        );
        let mut notes = db.texts(rt, "SELECT what FROM audit");
        notes.sort();
        assert_eq!(
            notes,
            ["10 rows from 1", "10 rows from 11", "5 rows from 21"]
        );
        assert!(wait_until(Duration::from_secs(20), || ws
            .log_events()
            .iter()
            .any(|e| {
                e["message"] == "database poll failed; trying again after the interval"
                    && e["route"] == "slow"
            })));
        let failed = ws
            .log_events()
            .iter()
            .find(|e| e["route"] == "slow" && e["level"] == "WARN")
            .map(|e| e["error"].to_string())
            .unwrap_or_default();
        assert!(
            failed.contains("timeout")
                || failed.contains("interrupted")
                || failed.contains("max_statement_time"),
            "{failed}"
        );
        assert_eq!(ws.files("outbox").len(), 0);
        engine.stop();
    });
}

/// POSTs to an HTTP `reply` route; returns the status and the JSON answer.
fn ask(rt: &tokio::runtime::Runtime, addr: &str, body: &str) -> (u16, Value) {
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

#[test]
fn enrich_asks_a_database_by_url_and_through_a_named_endpoint() {
    on_each(|rt, db| {
        let numeric = if db.is_postgres() {
            "NUMERIC(12,2)"
        } else {
            "DECIMAL(12,2)"
        };
        db.exec(
            rt,
            &format!(
                "CREATE TABLE customers (id VARCHAR(20) PRIMARY KEY, name VARCHAR(100) NOT NULL, credit_limit {numeric} NOT NULL);
                 INSERT INTO customers VALUES ('C-1', 'ACME', 1500.00);
                 INSERT INTO customers VALUES ('C-2', 'Globex', 10.00)"
            ),
        );
        let ws = Workspace::new();
        std::fs::create_dir_all(ws.path("adapters")).unwrap();
        std::fs::write(
            ws.path("adapters/crm-db.yaml"),
            format!(
                "database:\n  url: \"{}\"\n  statement: \"SELECT 1\"\n",
                db.url()
            ),
        )
        .unwrap();
        ws.write_route(
            "quote.yaml",
            &format!(
                r#"from:
  http: {{ listen: "127.0.0.1:0", content: json, response: reply }}
steps:
  - enrich:
      query:
        database: "{url}"
        sql: "SELECT name, credit_limit FROM customers WHERE id = :customer"
      into: customer
      cache: {{ ttl: 1m }}
  - enrich:
      endpoint: crm-db
      query:
        sql: "SELECT id FROM customers WHERE credit_limit >= :min ORDER BY id"
        params: {{ min: order.min_credit }}
        rows: all
      into: eligible
  - enrich:
      query:
        database: "{url}"
        sql: "SELECT COUNT(*) AS n FROM customers"
      merge: 'body.customers_known = answer.n; headers["x-known"] = "yes";'
"#,
                url = db.url()
            ),
        );
        let engine = ws.start();
        let addr = ws.http_addr();
        let (status, answer) = ask(
            rt,
            &addr,
            r#"{"customer": "C-1", "order": {"min_credit": 5}}"#,
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["customer"],
            serde_json::json!({"name": "ACME", "credit_limit": "1500.00"})
        );
        assert_eq!(
            answer["eligible"],
            serde_json::json!([{"id": "C-1"}, {"id": "C-2"}])
        );
        assert_eq!(answer["customers_known"], 2, "merged by the script");
        // Values are bound, never spliced: this finds no customer instead of every one.
        let (status, answer) = ask(
            rt,
            &addr,
            r#"{"customer": "x' OR '1'='1", "order": {"min_credit": 5}}"#,
        );
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or("")
                .contains(r#"no row for :customer = "x' OR '1'='1""#),
            "{answer}"
        );
        // A parameter the body lacks fails the message, naming it.
        let (status, answer) = ask(rt, &addr, r#"{"order": {"min_credit": 5}}"#);
        assert_eq!(status, 422);
        assert!(
            answer["error"].as_str().unwrap_or("").contains(":customer"),
            "{answer}"
        );
        engine.stop();
    });
}
