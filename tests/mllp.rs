//! TCP and MLLP end to end: a real HL7 client no one here wrote (`mllp_send` from the `hl7`
//! package on PyPI), our MLLP client against our listener through an outage, bad input on the
//! wire, and other framings with a charset.

mod common;

use common::net::free_port;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn hl7_message(control: &str, kind: &str, patient: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20261126063012||{kind}|{control}|P|2.5\r\
PID|1||{patient}^^^GENHOSP^MR||DOE^JANE\r\
OBX|1|NM|4548-4^HbA1c^LN||6.1|%|4.0-5.6|H\r"
    )
}

fn tcp_addr(ws: &Workspace) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(20), || {
        found = ws
            .log_events()
            .iter()
            .find(|e| e["message"] == "TCP listener ready")
            .and_then(|e| e["listen"].as_str().map(str::to_string));
        found.is_some()
    });
    found.expect("the TCP listener never became ready")
}

/// Sends one MLLP frame and reads one answer frame.
fn exchange(stream: &mut TcpStream, payload: &[u8]) -> String {
    let mut frame = vec![0x0b];
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).unwrap();
    read_frame(stream)
}

fn read_frame(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(&[0x1c, 0x0d]) {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf)
        .trim_matches(['\x0b', '\x1c', '\r'])
        .to_string()
}

#[test]
fn a_real_hl7_client_gets_aa_acks_after_commit() {
    common::net::ensure_python_package("hl7.client", "hl7");
    let ws = Workspace::new();
    ws.write_route(
        "lab.yaml",
        r#"from:
  tcp: { listen: 127.0.0.1:0 }
steps:
  - hl7: { to_json: true }
to:
  - file: { path: outbox, name: "{{header.hl7.control_id}}.json" }
"#,
    );
    let engine = ws.start();
    let addr = tcp_addr(&ws);
    let port = addr.rsplit(':').next().unwrap();
    let batch: String = (1..=3)
        .map(|i| hl7_message(&format!("MSG000{i}"), "ORU^R01", "100234").replace('\r', "\n"))
        .collect();
    std::fs::write(ws.path("batch.hl7"), batch).unwrap();
    let out = Command::new("mllp_send")
        .args(["--loose", "--file"])
        .arg(ws.path("batch.hl7"))
        .args(["-p", port, "127.0.0.1"])
        .output()
        .expect("run mllp_send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=3 {
        assert!(stdout.contains(&format!("MSA|AA|MSG000{i}")), "{stdout}");
    }
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 3),
        "{:?}",
        ws.states()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("outbox/MSG0002.json")).unwrap())
            .unwrap();
    assert_eq!(json["PID"][0]["3"]["1"], "100234");
    assert_eq!(json["MSH"][0]["9"]["1"], "ORU");
    engine.stop();
}

#[test]
fn our_mllp_client_keeps_order_through_an_outage_of_our_listener() {
    let port = free_port();
    let receiver = Workspace::new();
    receiver.write_route(
        "in.yaml",
        &format!(
            "from:\n  tcp: {{ listen: 127.0.0.1:{port} }}\nto:\n  - file: {{ path: outbox, name: \"{{{{header.hl7.control_id}}}}.hl7\" }}\n"
        ),
    );
    let sender = Workspace::new();
    sender.write_route(
        "out.yaml",
        &format!(
            r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms, parallel: 1 }}
to:
  - tcp:
      host: 127.0.0.1
      port: {port}
      connect_timeout: 1s
      ack_timeout: 5s
      delivery: {{ retry: {{ max_attempts: 1000, backoff: 100ms, max_backoff: 300ms }} }}
"#
        ),
    );
    let sending = sender.start();
    let total = 20;
    for i in 0..total {
        sender.drop_file(
            "inbox",
            &format!("m{i:03}.hl7"),
            hl7_message(&format!("C{i:03}"), "ADT^A01", "1").as_bytes(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The receiver is down: the head of the line is retried, nothing is lost.
    assert!(
        wait_until(Duration::from_secs(20), || sender.count("delivering")
            == total as u64),
        "{:?}",
        sender.states()
    );
    std::thread::sleep(Duration::from_millis(600));
    let retries = sender.query_pairs(
        "SELECT outcome, COUNT(*) FROM transitions WHERE event = 'attempt' GROUP BY outcome",
    );
    assert!(
        retries.get("retry").copied().unwrap_or(0) >= 2,
        "{retries:?}"
    );
    let receiving = receiver.start();
    assert!(
        wait_until(Duration::from_secs(30), || sender.count("delivered")
            == total as u64),
        "{:?}",
        sender.states()
    );
    // The receiver ACKs on commit and writes its files just after: wait for the last one.
    assert!(
        wait_until(Duration::from_secs(10), || receiver.files("outbox").len()
            >= total),
        "{:?}",
        receiver.states()
    );
    assert_eq!(receiver.files("outbox").len(), total);
    // The receiver stored them in the order they were sent.
    let order = receiver.query_pairs(
        "SELECT id || ' ' || json_extract(headers, '$.\"hl7.control_id\"'), 1 FROM messages",
    );
    let controls: Vec<String> = order
        .keys()
        .map(|k| k.split(' ').nth(1).unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..total).map(|i| format!("C{i:03}")).collect();
    assert_eq!(controls, expected);
    let error =
        sender.query_pairs("SELECT detail, 1 FROM transitions WHERE outcome = 'retry' LIMIT 1");
    assert!(
        error
            .keys()
            .next()
            .unwrap()
            .contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{error:?}"
    );
    sending.stop();
    receiving.stop();
}

#[test]
fn bad_input_gets_an_ar_and_a_record_and_the_listener_serves_others() {
    let ws = Workspace::new();
    ws.write_route(
        "lab.yaml",
        "from:\n  tcp: { listen: 127.0.0.1:0, max_frame: 2KiB }\nto:\n  - file: { path: outbox }\n",
    );
    let engine = ws.start();
    let addr = tcp_addr(&ws);

    // A payload that is not HL7: AR with the reason; the connection stays usable.
    let mut a = TcpStream::connect(&addr).unwrap();
    let ar = exchange(&mut a, b"hello, is this the lab?");
    assert!(ar.contains("MSA|AR||not an HL7 v2 message"), "{ar}");
    let aa = exchange(&mut a, hl7_message("OK1", "ORU^R01", "1").as_bytes());
    assert!(aa.contains("MSA|AA|OK1"), "{aa}");

    // Bytes between frames: reported with an AR, then the next frame is taken.
    let mut b = TcpStream::connect(&addr).unwrap();
    b.write_all(b"GARBAGE").unwrap();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(hl7_message("OK2", "ORU^R01", "2").as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    b.write_all(&frame).unwrap();
    let first = read_frame(&mut b);
    assert!(
        first.contains("MSA|AR||7 bytes outside any frame were skipped"),
        "{first}"
    );
    assert!(read_frame(&mut b).contains("MSA|AA|OK2"));

    // An oversize frame: AR, and that connection is closed.
    let mut c = TcpStream::connect(&addr).unwrap();
    let mut big = vec![0x0b];
    big.extend(std::iter::repeat_n(b'x', 5000));
    c.write_all(&big).unwrap();
    let answer = read_frame(&mut c);
    assert!(answer.contains("larger than max_frame"), "{answer}");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);

    // A frame cut off by the sender closing: a recorded failure.
    let mut d = TcpStream::connect(&addr).unwrap();
    d.write_all(b"\x0bMSH|^~\\&|CUT").unwrap();
    drop(d);

    // Meanwhile another connection is served as usual.
    let mut e = TcpStream::connect(&addr).unwrap();
    assert!(exchange(&mut e, hl7_message("OK3", "ORU^R01", "3").as_bytes()).contains("MSA|AA|OK3"));

    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 3
            && ws.count("failed") == 4),
        "{:?}",
        ws.states()
    );
    let errors = ws.query_pairs("SELECT error, 1 FROM messages WHERE state = 'failed'");
    let errors: Vec<&String> = errors.keys().collect();
    for needle in [
        "not an HL7 v2 message",
        "7 bytes outside any frame",
        "larger than max_frame",
        "without the end block",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no failure with `{needle}`: {errors:?}"
        );
    }
    engine.stop();
}

#[test]
fn ack_after_steps_answers_ae_with_the_reason() {
    let ws = Workspace::new();
    ws.write_route(
        "adt.yaml",
        r#"from:
  tcp: { listen: 127.0.0.1:0, ack_after: steps }
steps:
  - hl7: { require: [PID-3.1, PID-5.1] }
route:
  rules:
    - when: 'headers["hl7.type"] == "ADT"'
      to: [ { file: { path: adt } } ]
  otherwise:
    - file: { path: other }
"#,
    );
    let engine = ws.start();
    let addr = tcp_addr(&ws);
    let mut s = TcpStream::connect(&addr).unwrap();
    let ok = exchange(&mut s, hl7_message("A1", "ADT^A01", "77").as_bytes());
    assert!(ok.contains("MSA|AA|A1"), "{ok}");
    let no_patient = hl7_message("A2", "ADT^A01", "").replace("DOE^JANE", "");
    let ae = exchange(&mut s, no_patient.as_bytes());
    assert!(
        ae.contains("MSA|AE|A2|steps[0].hl7: required HL7 fields are empty: PID-3.1, PID-5.1"),
        "{ae}"
    );
    let oru = exchange(&mut s, hl7_message("O1", "ORU^R01", "9").as_bytes());
    assert!(oru.contains("MSA|AA|O1"));
    assert!(
        wait_until(Duration::from_secs(10), || ws.count("delivered") == 2
            && ws.count("failed") == 1),
        "{:?}",
        ws.states()
    );
    assert_eq!(ws.files("adt").len(), 1);
    assert_eq!(ws.files("other").len(), 1);
    engine.stop();
}

#[test]
fn lines_and_length_prefixes_with_a_latin1_wire() {
    let (p1, p2) = (free_port(), free_port());
    let ws = Workspace::new();
    // Files go out over two framings to two listeners of the same engine.
    ws.write_route(
        "send.yaml",
        &format!(
            r#"from:
  file: {{ path: inbox, settle: 50ms, poll_interval: 100ms }}
to:
  - tcp: {{ host: 127.0.0.1, port: {p1}, framing: lines, charset: iso-8859-1 }}
  - tcp: {{ host: 127.0.0.1, port: {p2}, framing: {{ length_prefixed: {{ bytes: 4 }} }}, charset: iso-8859-1 }}
"#
        ),
    );
    ws.write_route(
        "lines.yaml",
        &format!("from:\n  tcp: {{ listen: 127.0.0.1:{p1}, framing: lines, charset: iso-8859-1 }}\nto:\n  - file: {{ path: out-lines, name: \"{{{{id}}}}.txt\" }}\n"),
    );
    ws.write_route(
        "prefixed.yaml",
        &format!("from:\n  tcp: {{ listen: 127.0.0.1:{p2}, framing: {{ length_prefixed: {{ bytes: 4 }} }}, charset: iso-8859-1 }}\nto:\n  - file: {{ path: out-prefixed, name: \"{{{{id}}}}.txt\" }}\n"),
    );
    let engine = ws.start();
    ws.drop_file("inbox", "a.txt", "Grüße aus Köln".as_bytes());
    assert!(
        wait_until(Duration::from_secs(20), || ws.files("out-lines").len() == 1
            && ws.files("out-prefixed").len() == 1),
        "{:?}",
        ws.states()
    );
    for dir in ["out-lines", "out-prefixed"] {
        let name = &ws.files(dir)[0];
        assert_eq!(
            std::fs::read_to_string(ws.path(&format!("{dir}/{name}"))).unwrap(),
            "Grüße aus Köln"
        );
    }
    // A character Latin-1 cannot hold fails that delivery for good, with the reason.
    ws.drop_file("inbox", "b.txt", "Ω is not Latin-1".as_bytes());
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("dead") == 1),
        "{:?}",
        ws.states()
    );
    let error = ws.query_pairs("SELECT error, 1 FROM messages WHERE state = 'dead'");
    assert!(
        error.keys().next().unwrap().contains("cannot hold"),
        "{error:?}"
    );
    engine.stop();
}

/// `max_frame` is exact through a real socket: a complete frame one byte over the limit, sent
/// in one write, gets an AR and a close (it used to be accepted up to about twice the limit);
/// one exactly at the limit gets its AA. A frame missing its end block, followed by a good
/// frame, gets an AR of its own and the good one its AA.
#[test]
fn max_frame_is_exact_and_a_broken_frame_does_not_swallow_the_next() {
    let ws = Workspace::new();
    ws.write_route(
        "lab.yaml",
        "from:\n  tcp: { listen: 127.0.0.1:0, max_frame: 64KiB }\nto:\n  - file: { path: outbox }\n",
    );
    let engine = ws.start();
    let addr = tcp_addr(&ws);
    // HL7 padded with an NTE segment to an exact size.
    let sized = |control: &str, size: usize| {
        let mut m = hl7_message(control, "ORU^R01", "7");
        m.push_str("NTE|1||");
        let pad = size - m.len() - 1;
        m.push_str(&"x".repeat(pad));
        m.push('\r');
        assert_eq!(m.len(), size);
        m
    };
    let mut a = TcpStream::connect(&addr).unwrap();
    let at_limit = exchange(&mut a, sized("EXACT", 65_536).as_bytes());
    assert!(at_limit.contains("MSA|AA|EXACT"), "{at_limit}");
    let over = exchange(&mut a, sized("OVER", 65_537).as_bytes());
    assert!(
        over.contains("MSA|AR") && over.contains("larger than max_frame"),
        "{over}"
    );
    let mut rest = Vec::new();
    let _ = a.read_to_end(&mut rest);

    let mut b = TcpStream::connect(&addr).unwrap();
    let mut wire = vec![0x0b];
    wire.extend_from_slice(
        b"MSH|^~\\&|LAB|GENHOSP|EHR|GENHOSP|20261126063012||ORU^R01|CUT|P|2.5\r",
    );
    wire.push(0x0b);
    wire.extend_from_slice(hl7_message("GOOD", "ORU^R01", "8").as_bytes());
    wire.extend_from_slice(&[0x1c, 0x0d]);
    b.write_all(&wire).unwrap();
    let first = read_frame(&mut b);
    assert!(
        first.contains("MSA|AR") && first.contains("no end block"),
        "{first}"
    );
    let second = read_frame(&mut b);
    assert!(second.contains("MSA|AA|GOOD"), "{second}");
    assert!(
        wait_until(Duration::from_secs(20), || ws.count("delivered") == 2
            && ws.count("failed") == 2),
        "{:?}",
        ws.states()
    );
    engine.stop();
}
