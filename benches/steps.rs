//! Per-message cost of steps, on one core: `cargo bench --bench steps`.
//!
//! The message is a 2 KiB JSON order (20 lines). The transform script is the kind route
//! authors write: read fields, loop over lines, compute a total, set a header.

use bytes::Bytes;
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
    cfg.build(&BuildContext::new("."))
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
    // The issue's 1 KiB case: an order with a few lines, attributes and text.
    let small = Bytes::from(format!(
        "<?xml version=\"1.0\"?><order id=\"PO-2026-1001\" date=\"2026-11-26\"><customer code=\"ACME\">ACME Corporation</customer>{}</order>",
        (0..6)
            .map(|i| format!("<line no=\"{i}\"><sku>sku-{i:04}</sku><description>Hex bolt M8 zinc plated, box of 100</description><qty>{}</qty><price>{i}.50</price></line>", i + 1))
            .collect::<String>()
    ));
    measure(
        &format!("xml_to_json ({} byte XML)", small.len()),
        step("xml_to_json: {}").as_ref(),
        &small,
        "application/xml",
    );
    micro_hl7_and_routing();
    measure(
        "json_to_xml",
        step("json_to_xml: {}").as_ref(),
        &json,
        "application/json",
    );
}

/// Times `f` per call, for work that is not a step.
fn time_it(name: &str, mut f: impl FnMut()) {
    if std::env::var("BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    for _ in 0..2_000 {
        f();
    }
    let n = 50_000;
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    let per = started.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!("  {name:<44} {per:>8.1} µs/message");
}

fn micro_hl7_and_routing() {
    const ORU: &str =
        "MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20261126063012||ORU^R01^ORU_R01|MSG00042|P|2.5\r\
PID|1||100234^^^GENHOSP^MR~555-44-3333^^^SSA^SS||DOE^JANE^Q||19800101|F\r\
OBR|1|ORD777|FIL888|4548-4^HbA1c^LN\r\
OBX|1|NM|4548-4^HbA1c^LN||6.1|%^percent^UCUM|4.0-5.6|H\r";
    time_it("hl7 parse + MSH-9.1, PID-3.1, OBX-5", || {
        let m = switchyard::hl7::Hl7::parse(ORU).expect("hl7");
        let _ = std::hint::black_box((m.get("MSH-9.1"), m.get("PID-3.1"), m.get("OBX-5")));
    });
    let routing: switchyard::routing::RoutingConfig = serde_yaml::with::singleton_map_recursive::deserialize(
        serde_yaml::Deserializer::from_str(
            "rules:\n  - when: 'body.type == \"ADT\"'\n    to: [ { file: { path: a } } ]\n  - when: 'body.type == \"ORU\" && body.value > 5.0'\n    to: [ { file: { path: b } } ]\notherwise: [ { file: { path: c } } ]\n",
        ),
    )
    .expect("routing");
    let router = switchyard::routing::Router::build(&[], Some(&routing))
        .map_err(|(n, e)| format!("{n}: {}", e.message))
        .expect("router");
    let mut msg = Message::new(
        "bench",
        Bytes::from_static(br#"{"type": "ORU", "value": 6.1, "patient": "100234"}"#),
    );
    msg.headers
        .insert("content-type".into(), "application/json".into());
    time_it("route rules (2 rules + otherwise)", || {
        std::hint::black_box(router.destinations(&msg).expect("routes"));
    });
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
