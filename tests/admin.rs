//! The admin API against a running engine: health, metrics, routes, pause and resume.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_routes_pause_and_resume() {
    let ws = Workspace::new();
    ws.write_route("orders.yaml", &xml_route(""));
    let engine = ws.start_with_env(&[
        ("SWITCHYARD_ADMIN", "127.0.0.1:0"),
        ("SWITCHYARD_ADMIN_TOKEN", "adm1n"),
    ]);
    let base = format!("http://{}", ws.admin_addr());
    let c = reqwest::Client::new();
    let get = |path: &str| c.get(format!("{base}{path}")).bearer_auth("adm1n").send();

    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/routes"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(format!("{base}/metrics"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    for i in 0..5 {
        ws.drop_file("inbox", &format!("o{i}.xml"), order_xml(i).as_bytes());
    }
    ws.drop_file("inbox", "bad.xml", b"<order>");
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 5
        && ws.count("failed") == 1));

    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for line in [
        "switchyard_messages_received_total{route=\"orders\"} 6",
        "switchyard_messages_total{route=\"orders\",state=\"delivered\"} 5",
        "switchyard_messages_total{route=\"orders\",state=\"failed\"} 1",
        "switchyard_deliveries_total{route=\"orders\",destination=\"to[0]\",outcome=\"delivered\"} 5",
        "switchyard_step_duration_seconds_count{route=\"orders\",step=\"steps[0].xml_to_json\"} 6",
        "# TYPE switchyard_step_duration_seconds histogram",
        "switchyard_route_up{route=\"orders\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    // The destination's worker had nothing due in the store when the files came (it looked at
    // start): their deliveries were handed to it in memory, not claimed from the store.
    let handed: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "switchyard_deliveries_handed_over_total{route=\"orders\",destination=\"to[0]\"} ",
            )
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=5).contains(&handed),
        "{handed} handed over:\n{metrics}"
    );

    let routes: serde_json::Value =
        serde_json::from_slice(&get("/routes").await.unwrap().bytes().await.unwrap()).unwrap();
    // A trailing slash names the same endpoint.
    let slashed: serde_json::Value =
        serde_json::from_slice(&get("/routes/").await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(slashed[0]["id"], "orders");
    let r = &routes[0];
    assert_eq!(r["id"], "orders");
    assert_eq!(r["state"], "running");
    assert_eq!(r["received"], 6);
    assert_eq!(r["messages"]["delivered"], 5);
    assert!(
        r["last_error"]["error"]
            .as_str()
            .unwrap()
            .contains("malformed XML"),
        "{r}"
    );

    // Paused: files wait in the inbox; resumed: they are taken.
    let p = c
        .post(format!("{base}/routes/orders/pause"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), 200);
    ws.drop_file("inbox", "later.xml", order_xml(9).as_bytes());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ws.path("inbox/later.xml").exists(),
        "a paused route took a file"
    );
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("switchyard_route_up{route=\"orders\"} 0"),
        "{metrics}"
    );
    let r = c
        .post(format!("{base}/routes/orders/resume"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 6),
        "{:?}",
        ws.states()
    );
    let missing = c
        .post(format!("{base}/routes/nope/pause"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Browse, look at and replay messages as JSON.
    let failed: serde_json::Value = serde_json::from_slice(
        &get("/messages?state=failed&route=orders")
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["headers"]["file.name"], "bad.xml");
    let id = failed[0]["id"].as_str().unwrap().to_string();
    let details: serde_json::Value = serde_json::from_slice(
        &get(&format!("/messages/{id}"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(details["body"], "<order>");
    assert!(details["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["event"] == "step"));
    let replayed = c
        .post(format!("{base}/messages/{id}/replay"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 200);
    let replayed: serde_json::Value =
        serde_json::from_slice(&replayed.bytes().await.unwrap()).unwrap();
    assert!(
        replayed["result"]
            .as_str()
            .unwrap()
            .contains("queued to run through the route again"),
        "{replayed}"
    );
    let texts: serde_json::Value = serde_json::from_slice(
        &get("/messages?text=C3")
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(texts.as_array().unwrap().len(), 1, "{texts}");

    // A rejected reload is visible through the API with its position.
    std::fs::write(
        ws.path("routes/orders.yaml"),
        "from:\n  file:\n    pathh: inbox\nto:\n  - file: { path: outbox }\n",
    )
    .unwrap();
    let mut reload = serde_json::Value::Null;
    for _ in 0..100 {
        reload = serde_json::from_slice(&get("/reload").await.unwrap().bytes().await.unwrap())
            .unwrap_or_default();
        if reload["rejected"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rejected = reload["rejected"][0].as_str().unwrap_or_default();
    assert!(
        rejected.contains("routes/orders.yaml:3:5: from.file: unknown key `pathh`"),
        "{reload}"
    );
    let routes: serde_json::Value =
        serde_json::from_slice(&get("/routes").await.unwrap().bytes().await.unwrap()).unwrap();
    assert_eq!(routes[0]["state"], "running", "the running version stays");
    engine.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_file_sets_directories_logs_and_the_admin_api() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("flows")).unwrap();
    std::fs::write(ws.path("flows/orders.yaml"), xml_route("")).unwrap();
    std::fs::write(
        ws.path("switchyard.yaml"),
        "routes: flows\nlogs: journal\nstore: state/main.db\nlog: { max_size: 1MiB, keep: 3, level: info }\nadmin:\n  listen: 127.0.0.1:0\n  token: \"${ADMIN_SECRET}\"\n",
    )
    .unwrap();
    let engine = ws.start_with_env(&[("ADMIN_SECRET", "from-env")]);
    let mut addr = None;
    wait_until(Duration::from_secs(20), || {
        addr = std::fs::read_to_string(ws.path("journal/switchyard.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["message"] == "admin API ready")
            .and_then(|e| e["listen"].as_str().map(str::to_string));
        addr.is_some()
    });
    let base = format!("http://{}", addr.expect("admin API from the settings file"));
    ws.drop_file("inbox", "o.xml", order_xml(1).as_bytes());
    assert!(wait_until(Duration::from_secs(20), || ws
        .files("outbox")
        .len()
        == 1));
    assert!(ws.path("state/main.db").exists());
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{base}/routes"))
        .bearer_auth("from-env")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let routes: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(routes[0]["id"], "orders");
    engine.stop();

    // A mistake in the settings file stops start-up with its position.
    std::fs::write(ws.path("switchyard.yaml"), "routes: flows\nlogz: journal\n").unwrap();
    let (status, console) = ws
        .start()
        .wait_exit(Duration::from_secs(20))
        .expect("exits");
    assert!(!status.success());
    assert!(
        console.contains("switchyard.yaml:2:1: unknown key `logz`; did you mean `logs`?"),
        "{console}"
    );
}

/// A paused HTTP route answers at once with 503 and `Retry-After`, stores nothing it did
/// not acknowledge — a caller that gave up while paused is not stored at the resume — and
/// takes requests again once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_http_route_answers_503_at_once_and_stores_nothing() {
    use std::io::Write;
    let ws = Workspace::new();
    let port = net::free_port();
    ws.write_route(
        "shop.yaml",
        &format!(
            "from:\n  http: {{ listen: 127.0.0.1:{port} }}\nto:\n  - file: {{ path: outbox }}\n"
        ),
    );
    let engine = ws.start_with_env(&[
        ("SWITCHYARD_ADMIN", "127.0.0.1:0"),
        ("SWITCHYARD_ADMIN_TOKEN", "adm1n"),
    ]);
    let admin = format!("http://{}", ws.admin_addr());
    ws.http_addr();
    let c = reqwest::Client::new();
    let shop = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        c.post(&shop).body("before").send().await.unwrap().status(),
        202
    );
    let pause = c
        .post(format!("{admin}/routes/shop/pause"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);

    let started = std::time::Instant::now();
    let paused = c
        .post(&shop)
        .body("while paused")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("an answer, not a hang");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(paused.status(), 503);
    assert_eq!(paused.headers()["retry-after"], "5");
    // A caller that sends and gives up while the route is paused.
    let mut gave_up = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    gave_up
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabandon!")
        .unwrap();
    drop(gave_up);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let resume = c
        .post(format!("{admin}/routes/shop/resume"))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 200);
    let after = async {
        loop {
            if let Ok(r) = c.post(&shop).body("after").send().await {
                return r.status();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), after)
            .await
            .unwrap(),
        202
    );
    assert!(wait_until(Duration::from_secs(20), || ws
        .count("delivered")
        == 2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies: Vec<String> = ws
        .files("outbox")
        .iter()
        .map(|f| std::fs::read_to_string(ws.path("outbox").join(f)).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        !bodies
            .iter()
            .any(|b| b == "abandon!" || b == "while paused"),
        "{bodies:?}"
    );
    engine.stop();
}
