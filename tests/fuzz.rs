//! Mutation fuzzing of everything that reads outside input: the TCP framings (MLLP, lines,
//! length prefixes, delimiters), HL7, XML (both ways), CSV (both ways), JSON, fixed-width
//! records, name templates, `${ENV}` interpolation and route files. Each target takes real
//! inputs (the bundled examples), mutates them thousands of times — bit flips, bytes inserted
//! and deleted, chunks repeated and cut, structure characters sprinkled in — and asserts that
//! the parser answers with a value or an error, never a panic, and holds its limits.
//!
//! Deterministic (a fixed seed per target), so a failure reproduces; `FUZZ_ITERATIONS` runs
//! more (CI runs the default; a long session: `FUZZ_ITERATIONS=200000 cargo test --release
//! --test fuzz`). A panic prints the target, the iteration and the input.

use bytes::BytesMut;
use std::panic::{catch_unwind, AssertUnwindSafe};
use switchyard::codec::framing::{Decoded, DelimiterOptions, Framing, LengthPrefix};

fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that mean something to one of the parsers.
const STRUCTURE: &[u8] = b"\x0b\x1c\r\n|^~\\&<>/=\"'?!-[],:{}#@*%$ \t\x00\xff";

/// One to four mutations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.insert(at, STRUCTURE[rng.below(STRUCTURE.len())]),
            2 if at < b.len() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            3 if at < b.len() => {
                // A chunk repeated: deep nesting, long fields.
                let end = (at + 1 + rng.below(64)).min(b.len());
                let chunk = b[at..end].to_vec();
                for _ in 0..1 + rng.below(50) {
                    b.splice(at..at, chunk.iter().copied());
                }
            }
            4 => b.truncate(at),
            5 => b.insert(at, rng.next() as u8),
            _ if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = STRUCTURE[rng.below(STRUCTURE.len())];
            }
            _ => {}
        }
    }
    b
}

/// Runs `check` on `n` mutations of the seeds; a panic fails the test with the input.
fn fuzz(target: &str, seeds: &[Vec<u8>], n: usize, check: impl Fn(&[u8])) {
    let mut rng = Rng(0x5EED ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 32);
    for i in 0..n {
        let seed = &seeds[i % seeds.len()];
        let input = mutate(&mut rng, seed);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!(
                "{target}: iteration {i} panicked on {} bytes: {:?}",
                input.len(),
                String::from_utf8_lossy(&input)
            );
        }
    }
}

fn example(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hl7_seeds() -> Vec<Vec<u8>> {
    vec![
        example("examples/hl7/adt-a01.hl7"),
        example("examples/hl7/oru-r01.hl7"),
    ]
}

/// Every framing, fed in pieces as TCP may deliver them: frames are never longer than the
/// limit, and the decoder always makes progress or waits for more.
#[test]
fn framings_hold_their_limit_and_never_panic() {
    let framings = [
        Framing::Mllp,
        Framing::Lines,
        Framing::LengthPrefixed(LengthPrefix { bytes: 2 }),
        Framing::LengthPrefixed(LengthPrefix { bytes: 4 }),
        Framing::Delimiter(DelimiterOptions {
            end: "\u{3}".into(),
        }),
    ];
    let mut seeds = Vec::new();
    for h in hl7_seeds() {
        // Segments end in CR, as on the wire (`lines` cannot carry a line feed).
        let h: Vec<u8> = h
            .iter()
            .map(|b| if *b == b'\n' { b'\r' } else { *b })
            .collect();
        for f in &framings {
            let mut stream = f.encode(&h).unwrap();
            stream.extend(f.encode(b"second message").unwrap());
            seeds.push(stream);
        }
    }
    let max = 300;
    fuzz("framing", &seeds, iterations(20_000), |stream| {
        for f in &framings {
            let mut buf = BytesMut::new();
            let mut rest = stream;
            let mut pieces = 0usize;
            while !rest.is_empty() {
                // Pieces of 1 to 97 bytes, varying with the input.
                let take = (1 + (rest.len() * 31 + pieces * 7) % 97).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                pieces += 1;
                for _ in 0..10_000 {
                    let before = buf.len();
                    match f.decode(&mut buf, max) {
                        Ok(Some(Decoded::Frame(frame))) => {
                            assert!(frame.len() <= max, "{f:?}: a frame of {}", frame.len())
                        }
                        Ok(Some(Decoded::Skipped(_) | Decoded::Broken(_))) => {}
                        Ok(None) | Err(_) => break,
                    }
                    assert!(buf.len() < before, "{f:?}: decoded without consuming");
                }
            }
            let _ = f.leftover(&buf);
        }
    });
}

#[test]
fn hl7_parsing_never_panics() {
    let paths = [
        "MSH-9", "MSH-9.1", "MSH-10", "PID-3", "PID-5.1", "OBX-5", "OBX(2)-5", "PV1-3.2", "ZZZ-1",
    ];
    fuzz("hl7", &hl7_seeds(), iterations(20_000), |input| {
        let text = String::from_utf8_lossy(input);
        if let Ok(m) = switchyard::hl7::Hl7::parse(&text) {
            for p in paths {
                let _ = m.get(p);
            }
            let _ = m.segments("OBX");
        }
        let _ = switchyard::hl7::reject_unparsed(&text);
        let _ = switchyard::hl7::ack_code(&text);
    });
}

#[test]
fn xml_reading_never_panics_and_keeps_its_depth_limit() {
    use switchyard::convert::xml::{value_to_xml, xml_to_value, ReadOptions, WriteOptions};
    let seeds = vec![
        example("examples/orders/order-1001.xml"),
        br#"<?xml version="1.0"?><a xmlns:n="urn:x" n:k="v"><n:b>t<![CDATA[<c>]]></n:b><!-- c --><d/></a>"#.to_vec(),
        br#"<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;&amp;&#65;</a>"#.to_vec(),
    ];
    let opts = ReadOptions {
        max_depth: 32,
        ..ReadOptions::default()
    };
    fuzz("xml", &seeds, iterations(20_000), |input| {
        if let Ok(v) = xml_to_value(input, &opts) {
            let _ = value_to_xml(&v, &WriteOptions::default());
            let text = v.to_string();
            assert!(!text.contains("root:"), "an external entity was read");
        }
    });
}

#[test]
fn csv_and_json_reading_never_panic() {
    use switchyard::convert::csv::{csv_to_value, value_to_csv, ReadOptions, WriteOptions};
    let seeds = vec![
        example("examples/stock/stock-2026-11-26.csv"),
        b"id;name\n1;\"a;\"\"b\"\"\"\n2;c\n".to_vec(),
    ];
    fuzz("csv", &seeds, iterations(10_000), |input| {
        for delimiter in [',', ';'] {
            let opts = ReadOptions {
                delimiter,
                ..ReadOptions::default()
            };
            if let Ok(v) = csv_to_value(input, &opts) {
                let _ = value_to_csv(&v, &WriteOptions::default());
            }
        }
    });
    let seeds = vec![
        example("examples/webshop/order-7001.json"),
        br#"{"a":[1,2,{"b":null,"c":"\u00e9\n"}],"d":-1.5e10}"#.to_vec(),
    ];
    fuzz("json", &seeds, iterations(20_000), |input| {
        // The intake's scan must catch every document the parser is too shallow for, so
        // that none is accepted and then fails every step.
        let deep = switchyard::message::json_too_deep(input);
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(input) {
            if e.to_string().contains("recursion limit") {
                assert!(
                    deep,
                    "the parser gave up on its depth, the intake's scan did not"
                );
            }
        }
    });
}

/// A mutated route file is loaded or refused with a position inside the file, never a panic.
#[test]
fn route_files_are_loaded_or_refused_with_a_position() {
    let seeds = [
        "examples/routes/webshop-orders.yaml",
        "examples/routes/lab-results-routing.yaml",
        "examples/routes/order-xml-to-canonical-json.yaml",
    ]
    .map(example)
    .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = switchyard::route::endpoints::Endpoints::load(&dir.path().join("adapters"));
    let file = dir.path().join("route.yaml");
    fuzz("route", &seeds, iterations(1_500), |input| {
        std::fs::write(&file, input).unwrap();
        if let Err(problems) = switchyard::route::load_file(&file, &endpoints) {
            assert!(!problems.is_empty());
            // Lines as YAML counts them: LF, CR LF and a lone CR each end one.
            let text = String::from_utf8_lossy(input).replace("\r\n", "\n");
            let lines = text.split(['\n', '\r']).count().max(1);
            for p in problems {
                assert!(
                    p.line >= 1 && p.line <= lines + 1 && p.column >= 1,
                    "a position outside the file: {p}"
                );
            }
        }
    });
}

#[test]
fn fixed_width_records_and_templates_never_panic() {
    use switchyard::steps::Step;
    let step: switchyard::steps::fixed_width::Config = serde_yaml::from_str(
        "columns: [ { name: employee, start: 1, width: 5 }, { name: name, start: 7, width: 20 }, { name: hours, start: 33, width: 4 } ]\nskip_lines: 1\n",
    )
    .unwrap();
    let step = step.build().unwrap();
    let seeds = vec![example("examples/legacy/PAYROLL.DAT")];
    fuzz("fixed_width", &seeds, iterations(10_000), |input| {
        let mut m = switchyard::message::Message::new("r", bytes::Bytes::from(input.to_vec()));
        let _ = step.apply(&mut m);
    });

    let seeds = vec![
        b"{{original_stem}}-{{header.order_id}}-{{timestamp}}.xml".to_vec(),
        b"${HOME:-/tmp}/x-${SWITCHYARD_FUZZ_UNSET:-d}".to_vec(),
    ];
    let mut msg = switchyard::message::Message::new("r", bytes::Bytes::from_static(b"{}"));
    msg.headers.insert("file.name".into(), "in.xml".into());
    msg.headers.insert("order_id".into(), "../x".into());
    fuzz("template", &seeds, iterations(20_000), |input| {
        let text = String::from_utf8_lossy(input);
        if let Ok(t) = switchyard::template::Template::parse(&text) {
            let _ = t.render(&msg);
        }
        let _ = switchyard::route::yaml::interpolate(std::path::Path::new("r.yaml"), &text);
    });
}
