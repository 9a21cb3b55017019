//! What fuzzing checks on each parser of outside input, written once for both of its drivers:
//! the coverage-guided `cargo fuzz` targets in `fuzz/` and the seeded mutations of
//! `tests/fuzz.rs` (which run with every `cargo test`). Each check feeds one input to a parser
//! and asserts what must hold whatever the input — a value or an error, never a panic, limits
//! kept. Not part of the engine; public only for those two.

use crate::codec::framing::{Decoded, DelimiterOptions, Framing, LengthPrefix};
use bytes::BytesMut;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The largest frame the framing check allows (small, so that inputs cross it often).
pub const MAX_FRAME: usize = 300;

/// Every framing the TCP adapters offer.
pub fn framings() -> [Framing; 5] {
    [
        Framing::Mllp,
        Framing::Lines,
        Framing::LengthPrefixed(LengthPrefix { bytes: 2 }),
        Framing::LengthPrefixed(LengthPrefix { bytes: 4 }),
        Framing::Delimiter(DelimiterOptions {
            end: "\u{3}".into(),
        }),
    ]
}

/// A byte stream through every framing, in pieces as TCP may deliver them: frames are never
/// longer than the limit, and the decoder always makes progress or waits for more.
pub fn framing(stream: &[u8]) {
    for f in &framings() {
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
                match f.decode(&mut buf, MAX_FRAME) {
                    Ok(Some(Decoded::Frame(frame))) => {
                        assert!(
                            frame.len() <= MAX_FRAME,
                            "{f:?}: a frame of {}",
                            frame.len()
                        )
                    }
                    Ok(Some(Decoded::Skipped(_) | Decoded::Broken(_))) => {}
                    Ok(None) | Err(_) => break,
                }
                assert!(buf.len() < before, "{f:?}: decoded without consuming");
            }
        }
        let _ = f.leftover(&buf);
    }
}

/// An HL7 message parsed, read by field paths, acknowledged.
pub fn hl7(input: &[u8]) {
    let paths = [
        "MSH-9", "MSH-9.1", "MSH-10", "PID-3", "PID-5.1", "OBX-5", "OBX(2)-5", "PV1-3.2", "ZZZ-1",
    ];
    let text = String::from_utf8_lossy(input);
    if let Ok(m) = crate::hl7::Hl7::parse(&text) {
        for p in paths {
            let _ = m.get(p);
        }
        let _ = m.segments("OBX");
    }
    let _ = crate::hl7::reject_unparsed(&text);
    let _ = crate::hl7::ack_code(&text);
}

/// XML read into JSON text and into a value (the two agree), written back as XML; no external
/// entity is ever read.
pub fn xml(input: &[u8]) {
    use crate::convert::xml::{value_to_xml, xml_to_json, xml_to_value, ReadOptions, WriteOptions};
    let opts = ReadOptions {
        max_depth: 32,
        ..ReadOptions::default()
    };
    let text = xml_to_json(input, &opts);
    let value = xml_to_value(input, &opts);
    match (&text, &value) {
        (Ok(text), Ok(v)) => {
            let parsed: serde_json::Value =
                serde_json::from_slice(text).expect("xml_to_json writes valid JSON");
            assert_eq!(&parsed, v, "xml_to_json and xml_to_value disagree");
            let _ = value_to_xml(v, &WriteOptions::default());
            // /etc/passwd's first line in a read string but not in the document: an external
            // entity was read. "In the document" means in order, not side by side: text
            // around a child element is joined (`root<b/>:x:0:0` reads as `root:x:0:0`), and
            // cargo fuzz found that, as it found the text itself, and `r` then a carriage
            // return then `oot:x:0:0`, which JSON's escaping turns into `r\root:x:0:0`.
            let passwd = "root:x:0:0:root:/root:";
            assert!(
                !any_string(v, &|s| s.contains(passwd))
                    || in_order(
                        passwd,
                        &with_references_read(&String::from_utf8_lossy(input))
                    ),
                "an external entity was read"
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("one reading failed, the other did not: {text:?} / {value:?}"),
    }
}

/// Whether the characters of `needle` occur in `text` in that order (with anything between).
fn in_order(needle: &str, text: &str) -> bool {
    let mut rest = text.chars();
    needle.chars().all(|c| rest.any(|t| t == c))
}

/// Whether a key or string anywhere in `v` satisfies `test`.
fn any_string(v: &serde_json::Value, test: &dyn Fn(&str) -> bool) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => test(s),
        Value::Array(items) => items.iter().any(|i| any_string(i, test)),
        Value::Object(fields) => fields.iter().any(|(k, i)| test(k) || any_string(i, test)),
        _ => false,
    }
}

/// XML text with its character references and predefined entities replaced by what they
/// stand for (the only references the reader resolves); anything else stays as written.
fn with_references_read(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let read = rest[1..].find(';').and_then(|end| {
            let name = &rest[1..1 + end];
            let c = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "apos" => Some('\''),
                "quot" => Some('"'),
                _ => name
                    .strip_prefix("#x")
                    .map(|hex| u32::from_str_radix(hex, 16))
                    .or_else(|| name.strip_prefix('#').map(|dec| dec.parse::<u32>()))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end + 2))
        });
        match read {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// CSV read with two delimiters and written back.
pub fn csv(input: &[u8]) {
    use crate::convert::csv::{csv_to_value, value_to_csv, ReadOptions, WriteOptions};
    for delimiter in [',', ';'] {
        let opts = ReadOptions {
            delimiter,
            ..ReadOptions::default()
        };
        if let Ok(v) = csv_to_value(input, &opts) {
            let _ = value_to_csv(&v, &WriteOptions::default());
        }
    }
}

/// JSON: the intake's depth scan catches every document the parser is too shallow for, so
/// that none is accepted and then fails every step.
pub fn json(input: &[u8]) {
    let deep = crate::message::json_too_deep(input);
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(input) {
        if e.to_string().contains("recursion limit") {
            assert!(
                deep,
                "the parser gave up on its depth, the intake's scan did not"
            );
        }
    }
}

/// A route file loaded, or refused with problems that point inside the file.
pub fn route_file(input: &[u8]) {
    static PLACE: OnceLock<(PathBuf, crate::route::endpoints::Endpoints)> = OnceLock::new();
    let (file, endpoints) = PLACE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchyard-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let endpoints = crate::route::endpoints::Endpoints::load(&dir.join("adapters"));
        (dir.join("route.yaml"), endpoints)
    });
    std::fs::write(file, input).expect("the fuzz route file can be written");
    if let Err(problems) = crate::route::load_file(file, endpoints) {
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
}

/// Fixed-width records read by a three-column layout; and read by a layout with record types,
/// written back by the same layout and read again: the same records (what the reader gives
/// always fits its columns, so the writer must take it back unchanged).
pub fn fixed_width(input: &[u8]) {
    use crate::steps::fixed_width::{Config, FixedWidth, JsonToFixedWidth, WriteConfig};
    use crate::steps::Step;
    static STEPS: OnceLock<(FixedWidth, FixedWidth, JsonToFixedWidth)> = OnceLock::new();
    let (plain, typed, write) = STEPS.get_or_init(|| {
        let plain: Config = crate::config::yaml::parse_str(
            "columns: [ { name: employee, start: 1, width: 5 }, { name: name, start: 7, width: 20 }, { name: hours, start: 33, width: 4 } ]\nskip_lines: 1\n",
        )
        .expect("the layout parses");
        let typed = "record_type: { start: 1, width: 1 }\nrecords:\n  H: [ { name: batch, start: 2, width: 6 } ]\n  D: [ { name: sku, start: 2, width: 4 }, { name: qty, start: 7, width: 3, align: right, pad: '0' } ]\n";
        let read: Config = crate::config::yaml::parse_str(typed).expect("the layout parses");
        let write: WriteConfig = crate::config::yaml::parse_str(typed).expect("the layout parses");
        (
            plain.build(&Default::default()).expect("the layout builds"),
            read.build(&Default::default()).expect("the layout builds"),
            write.build(&Default::default()).expect("the layout builds"),
        )
    });
    let mut m = crate::message::Message::new("r", bytes::Bytes::from(input.to_vec()));
    let _ = plain.apply(&mut m);
    let mut m = crate::message::Message::new("r", bytes::Bytes::from(input.to_vec()));
    if typed.apply(&mut m).is_err() {
        return;
    }
    let records = m.body_json().expect("the reader writes JSON");
    write
        .apply(&mut m)
        .unwrap_or_else(|e| panic!("the writer refused what the reader gave: {e}: {records}"));
    let written = m.body.clone();
    typed
        .apply(&mut m)
        .unwrap_or_else(|e| panic!("the reader refused what the writer wrote: {e}"));
    // Zero padding is the writer's: a value read as `7` comes back as `007`.
    let strip = |v: serde_json::Value| -> serde_json::Value {
        let mut v = v;
        for r in v.as_array_mut().into_iter().flatten() {
            if let Some(q) = r.get_mut("qty") {
                let text = q.as_str().unwrap_or("");
                let (sign, digits) = match text.strip_prefix(['-', '+']) {
                    Some(rest) => (&text[..1], rest),
                    None => ("", text),
                };
                *q = serde_json::Value::String(format!("{sign}{}", digits.trim_start_matches('0')));
            }
        }
        v
    };
    assert_eq!(
        strip(m.body_json().expect("JSON")),
        strip(records),
        "written as {:?}",
        String::from_utf8_lossy(&written)
    );
}

/// A name template parsed and rendered (with a header that tries to leave the directory),
/// and `${ENV}` interpolation of route text.
pub fn template(input: &[u8]) {
    let mut msg = crate::message::Message::new("r", bytes::Bytes::from_static(b"{}"));
    msg.headers.insert("file.name".into(), "in.xml".into());
    msg.headers.insert("order_id".into(), "../x".into());
    let text = String::from_utf8_lossy(input);
    if let Ok(t) = crate::template::Template::parse(&text) {
        let _ = t.render(&msg);
    }
    let _ = crate::config::yaml::interpolate(Path::new("r.yaml"), &text);
}

/// One check: an input in, a panic when something that must hold did not.
pub type Check = fn(&[u8]);

/// The checks by name: the `cargo fuzz` targets and the kept regression inputs
/// (`fuzz/regressions/<name>/`) use these names.
pub const TARGETS: &[(&str, Check)] = &[
    ("framing", framing),
    ("hl7", hl7),
    ("xml", xml),
    ("csv", csv),
    ("json", json),
    ("route_file", route_file),
    ("fixed_width", fixed_width),
    ("template", template),
];
