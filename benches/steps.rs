//! Per-message cost of steps, on one core: `cargo bench --bench steps`.
//!
//! The message is a 2 KiB JSON order (20 lines). The transform script is the kind route
//! authors write: read fields, loop over lines, compute a total, set a header.

use bytes::Bytes;
use std::path::PathBuf;
use std::time::Instant;
use switchyard::message::Message;
use switchyard::steps::{BuildContext, Step, StepConfig};

const SCRIPT: &str = r#"
let total = 0.0;
let lines = [];
for line in body.order.lines {
    let amount = line.qty * line.price;
    total += amount;
    lines.push(#{ sku: line.sku.to_upper(), amount: amount });
}
body.order.total = total;
body.order.summary = lines;
headers["order-id"] = body.order.id;
"#;

/// A transform that touches fields without looping: rename, compute, set a header.
const SIMPLE: &str = r#"
body.order.customer_code = body.order.customer.code;
body.order.customer.name = body.order.customer.name.to_upper();
body.order.line_count = body.order.lines.len();
body.order.received = now();
headers["order-id"] = body.order.id;
"#;

fn order_json() -> String {
    let lines: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"sku": "sku-{i:04}", "description": "Hex bolt M8 zinc plated, box of 100", "qty": {}, "price": {}.5}}"#,
                i + 1,
                i + 2
            )
        })
        .collect();
    format!(
        r#"{{"order": {{"id": "PO-2026-1001", "customer": {{"code": "ACME", "name": "ACME Corporation"}}, "lines": [{}]}}}}"#,
        lines.join(", ")
    )
}

fn step(yaml: &str) -> std::sync::Arc<dyn Step> {
    let cfg: StepConfig =
        serde_yaml::with::singleton_map::deserialize(serde_yaml::Deserializer::from_str(yaml))
            .expect("step config");
    cfg.build(&BuildContext {
        dir: PathBuf::from("."),
    })
    .map_err(|e| e.message)
    .expect("step builds")
}

fn measure(name: &str, step: &dyn Step, body: &Bytes, content_type: &str) {
    // `BENCH_ONLY=transform` runs the matching measurements alone, for profiling.
    if std::env::var("BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let mut template = Message::new("bench", body.clone());
    template
        .headers
        .insert("content-type".into(), content_type.into());
    for _ in 0..2_000 {
        step.apply(&mut template.clone()).expect("step succeeds");
    }
    let n = 50_000;
    let started = Instant::now();
    for _ in 0..n {
        let mut m = template.clone();
        step.apply(&mut m).expect("step succeeds");
        std::hint::black_box(&m);
    }
    let per = started.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!("  {name:<44} {per:>8.1} µs/message");
}

fn main() {
    let json = Bytes::from(order_json());
    println!("steps: per-message cost, {} byte JSON order", json.len());
    measure(
        "transform (loop over 20 lines, new records)",
        step(&format!("transform:\n  script: |\n{}", indent(SCRIPT))).as_ref(),
        &json,
        "application/json",
    );
    measure(
        "transform (field edits, no loop)",
        step(&format!("transform:\n  script: |\n{}", indent(SIMPLE))).as_ref(),
        &json,
        "application/json",
    );
    measure(
        "transform (empty script: conversion only)",
        step("transform: { script: '' }").as_ref(),
        &json,
        "application/json",
    );
    measure(
        "map (4 paths, 1 expression)",
        step("map:\n  fields:\n    id: order.id\n    customer: order.customer.name\n    first: order.lines[0].sku\n    lines: order.lines\n    count: '= body.order.lines.len()'\n").as_ref(),
        &json,
        "application/json",
    );
    measure(
        "validate (JSON Schema)",
        step("validate:\n  json_schema: {type: object, required: [order], properties: {order: {type: object, required: [id, lines], properties: {lines: {type: array, items: {type: object, required: [sku, qty]}}}}}}\n").as_ref(),
        &json,
        "application/json",
    );
    let xml = Bytes::from(
        switchyard::convert::xml::value_to_xml(
            &serde_json::from_slice(&json).expect("json"),
            &Default::default(),
        )
        .expect("xml"),
    );
    measure(
        &format!("xml_to_json ({} byte XML)", xml.len()),
        step("xml_to_json: {}").as_ref(),
        &xml,
        "application/xml",
    );
    measure(
        "json_to_xml",
        step("json_to_xml: {}").as_ref(),
        &json,
        "application/json",
    );
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
