//! End-to-end throughput of a file-drop route, with the real (release) binary, real
//! directories and the real SQLite store: `cargo bench --bench file_throughput`.
//! `BENCH_FILES` sets the number of files (default 5,000).
//!
//! Two figures: draining a backlog that is already there at start, and a live feed dropped
//! while the engine runs. Both include reading, committing (ack after commit), xml_to_json,
//! the fsynced output write and every recorded transition.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::var("BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    println!(
        "file_throughput: {n} XML files per scenario ({} cores)",
        cores()
    );

    let ws = Workspace::new();
    ws.write_route("orders.yaml", &xml_route(""));
    for i in 0..n {
        ws.drop_file(
            "inbox",
            &format!("order-{i:06}.xml"),
            order_xml(i).as_bytes(),
        );
    }
    let start = Instant::now();
    let engine = ws.start();
    let ok = wait_until(Duration::from_secs(600), || {
        ws.count("delivered") == n as u64
    });
    let took = start.elapsed();
    engine.stop();
    assert!(ok, "backlog not drained: {:?}", ws.states());
    report(
        "backlog (includes start-up and the 200ms settle)",
        n,
        took,
        &ws,
    );

    let ws = Workspace::new();
    ws.write_route("orders.yaml", &xml_route(""));
    let engine = ws.start();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    for i in 0..n {
        ws.drop_file(
            "inbox",
            &format!("order-{i:06}.xml"),
            order_xml(i).as_bytes(),
        );
    }
    let ok = wait_until(Duration::from_secs(600), || {
        ws.count("delivered") == n as u64
    });
    let took = start.elapsed();
    engine.stop();
    assert!(ok, "feed not drained: {:?}", ws.states());
    report(
        "live feed (from the first drop to the last delivery)",
        n,
        took,
        &ws,
    );
}

fn report(what: &str, n: usize, took: Duration, ws: &Workspace) {
    let db = std::fs::metadata(ws.path("data/switchyard.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let wal = std::fs::metadata(ws.path("data/switchyard.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "  {what}: {:.2}s, {:.0} messages/s; store {:.1} KiB per message",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        (db + wal) as f64 / n as f64 / 1024.0
    );
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
