//! Mutation fuzzing of everything that reads outside input: the TCP framings (MLLP, lines,
//! length prefixes, delimiters), HL7, XML (both ways), CSV (both ways), JSON, fixed-width
//! records, name templates, `${ENV}` interpolation and route files. Each target takes real
//! inputs (the bundled examples), mutates them thousands of times — bit flips, bytes inserted
//! and deleted, chunks repeated and cut, structure characters sprinkled in — and asserts that
//! the parser answers with a value or an error, never a panic, and holds its limits.
//!
//! The checks themselves are `switchyard::fuzzing`'s, shared with the coverage-guided
//! `cargo fuzz` targets in `fuzz/` (see the README); the last test here runs the
//! inputs those keep (their corpus, and every input they found a failure with).
//!
//! Deterministic (a fixed seed per target), so a failure reproduces; `FUZZ_ITERATIONS` runs
//! more (CI runs the default; a long session: `FUZZ_ITERATIONS=200000 cargo test --release
//! --test fuzz`). A panic prints the target, the iteration and the input.

use std::panic::{catch_unwind, AssertUnwindSafe};
use switchyard::fuzzing;

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

/// Every framing, fed in pieces as TCP may deliver them ([`fuzzing::framing`]).
#[test]
fn framings_hold_their_limit_and_never_panic() {
    let mut seeds = Vec::new();
    for h in hl7_seeds() {
        // Segments end in CR, as on the wire (`lines` cannot carry a line feed).
        let h: Vec<u8> = h
            .iter()
            .map(|b| if *b == b'\n' { b'\r' } else { *b })
            .collect();
        for f in &fuzzing::framings() {
            let mut stream = f.encode(&h).unwrap();
            stream.extend(f.encode(b"second message").unwrap());
            seeds.push(stream);
        }
    }
    fuzz("framing", &seeds, iterations(20_000), fuzzing::framing);
}

#[test]
fn hl7_parsing_never_panics() {
    fuzz("hl7", &hl7_seeds(), iterations(20_000), fuzzing::hl7);
}

#[test]
fn xml_reading_never_panics_and_keeps_its_depth_limit() {
    let seeds = vec![
        example("examples/orders/order-1001.xml"),
        br#"<?xml version="1.0"?><a xmlns:n="urn:x" n:k="v"><n:b>t<![CDATA[<c>]]></n:b><!-- c --><d/></a>"#.to_vec(),
        br#"<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;&amp;&#65;</a>"#.to_vec(),
    ];
    fuzz("xml", &seeds, iterations(20_000), fuzzing::xml);
}

#[test]
fn csv_and_json_reading_never_panic() {
    let seeds = vec![
        example("examples/stock/stock-2026-11-26.csv"),
        b"id;name\n1;\"a;\"\"b\"\"\"\n2;c\n".to_vec(),
    ];
    fuzz("csv", &seeds, iterations(10_000), fuzzing::csv);
    let seeds = vec![
        example("examples/webshop/order-7001.json"),
        br#"{"a":[1,2,{"b":null,"c":"\u00e9\n"}],"d":-1.5e10}"#.to_vec(),
    ];
    fuzz("json", &seeds, iterations(20_000), fuzzing::json);
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
    fuzz("route", &seeds, iterations(1_500), fuzzing::route_file);
}

#[test]
fn fixed_width_records_and_templates_never_panic() {
    // A plain layout's file, and lines of the record-type layout the check writes back.
    let seeds = vec![
        example("examples/legacy/PAYROLL.DAT"),
        "H000042\nDBOLT 007\nDNüt  -05\nD  x +\r\nH\n"
            .as_bytes()
            .to_vec(),
    ];
    fuzz(
        "fixed_width",
        &seeds,
        iterations(20_000),
        fuzzing::fixed_width,
    );
    let seeds = vec![
        b"{{original_stem}}-{{header.order_id}}-{{timestamp}}.xml".to_vec(),
        b"${HOME:-/tmp}/x-${SWITCHYARD_FUZZ_UNSET:-d}".to_vec(),
    ];
    fuzz("template", &seeds, iterations(20_000), fuzzing::template);
}

/// Every input `cargo fuzz` found a failure with, kept in `fuzz/regressions/<target>/`, and
/// every input of the kept corpus (`fuzz/corpus/<target>/`), through its check again.
#[test]
fn kept_fuzz_inputs_pass_their_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for (name, check) in fuzzing::TARGETS {
        for kind in ["regressions", "corpus"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                let input = std::fs::read(entry.path()).unwrap();
                if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
                    panic!("{name}: {} fails its check again", entry.path().display());
                }
                ran += 1;
            }
        }
    }
    assert!(ran > 0, "no kept inputs under {}", root.display());
}
