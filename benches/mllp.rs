//! MLLP intake throughput with ACK after commit: `cargo bench --bench mllp`.
//!
//! 8 connections at once (`BENCH_CONNECTIONS`), each sending `BENCH_MESSAGES` (default 1,000)
//! HL7 ORU messages one after the other and waiting for each AA — which the engine sends only
//! once the message is committed to the store (group commit, `synchronous=FULL`). The route
//! parses the HL7 and delivers each message to a file, so delivery competes for the same two
//! cores, as it would in production.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn message(conn: usize, i: usize) -> Vec<u8> {
    let text = format!(
        "MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20261126063012||ORU^R01^ORU_R01|C{conn}-{i}|P|2.5\r\
PID|1||{i}^^^GENHOSP^MR||DOE^JANE^Q||19800101|F\r\
OBR|1|ORD{i}|FIL{i}|4548-4^HbA1c^LN\r\
OBX|1|NM|4548-4^HbA1c^LN||6.1|%^percent^UCUM|4.0-5.6|H|||F\r"
    );
    let mut frame = vec![0x0b];
    frame.extend_from_slice(text.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    frame
}

fn read_ack(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> String {
    buf.clear();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut chunk).expect("read ack");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(buf).into_owned()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let connections = env("BENCH_CONNECTIONS", 8);
    let per = env("BENCH_MESSAGES", 1000);
    let ws = Workspace::new();
    ws.write_route(
        "lab.yaml",
        "from:\n  tcp: { listen: 127.0.0.1:0 }\nsteps:\n  - hl7: {}\nto:\n  - file: { path: outbox, name: \"{{header.hl7.control_id}}.hl7\" }\n",
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
    let addr = addr.expect("listener ready");
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).ok();
                let mut buf = Vec::new();
                for i in 0..per {
                    s.write_all(&message(c, i)).expect("send");
                    let ack = read_ack(&mut s, &mut buf);
                    assert!(ack.contains("MSA|AA|"), "{ack}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let acked = started.elapsed();
    let total = connections * per;
    let delivered = wait_until(Duration::from_secs(600), || {
        ws.count("delivered") == total as u64
    });
    let all_done = started.elapsed();
    engine.stop();
    assert!(delivered, "not all delivered: {:?}", ws.states());
    println!("mllp: {connections} connections x {per} messages, ACK after commit");
    println!(
        "  {total} ACKs in {:.2}s: {:.0} messages/s acknowledged",
        acked.as_secs_f64(),
        total as f64 / acked.as_secs_f64()
    );
    println!(
        "  all {total} delivered to files after {:.2}s: {:.0} messages/s end to end",
        all_done.as_secs_f64(),
        total as f64 / all_done.as_secs_f64()
    );
}
