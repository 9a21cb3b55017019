//! `split`: turns one message into child messages — lines, CSV rows, JSON array items or XML
//! elements. Each child is stored and tracked on its own (with the parent's id in
//! `split.parent`) and carries on from the step after the split.
//!
//! The splitting reads from any byte stream, so the same code splits a message body in
//! memory and, when `split` is a file route's first step, a file of any size straight from
//! disk without loading it whole (see the file inbound adapter).

use super::{BuildContext, BuildError, Flow, Step, StepError};
use crate::config::values::ByteSize;
use crate::convert::csv::{ascii, ReadOptions as CsvOptions};
use crate::message::Message;
use bytes::Bytes;
use quick_xml::events::Event;
use quick_xml::{Reader, Writer};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use std::io::{BufRead, Read};

/// What to split on.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each non-blank line is a child (text).
    Lines(LinesOptions),
    /// Each CSV row is a child: a JSON object keyed by the header row.
    Csv(CsvOptions),
    /// Each item of the top-level JSON array is a child (JSON).
    Json(JsonOptions),
    /// Each element at `path` is a child XML document.
    Xml(XmlOptions),
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LinesOptions {
    /// Lines to skip at the start (default 0).
    pub skip_lines: usize,
}

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonOptions {}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlOptions {
    /// Element path from the root, `/`-separated: `orders/order` takes each `order` directly
    /// inside the root `orders`.
    pub path: String,
}

/// The step's options: exactly one of `lines`, `csv`, `json` or `xml`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SplitStep")]
pub struct Config {
    /// Each non-blank line is a child.
    #[serde(default)]
    pub lines: Option<LinesOptions>,
    /// Each CSV row is a child (a JSON object by the header row); options as `csv_to_json`.
    #[serde(default)]
    pub csv: Option<CsvOptions>,
    /// Each item of the top-level JSON array is a child.
    #[serde(default)]
    pub json: Option<JsonOptions>,
    /// Each element at `path` is a child XML document.
    #[serde(default)]
    pub xml: Option<XmlOptions>,
    /// Largest child accepted (default `16MiB`); a larger one fails the split.
    #[serde(default = "default_max_child")]
    pub max_child_size: ByteSize,
}

fn default_max_child() -> ByteSize {
    ByteSize(16 << 20)
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<Split, BuildError> {
        let modes = [
            self.lines.clone().map(Mode::Lines),
            self.csv.clone().map(Mode::Csv),
            self.json.clone().map(Mode::Json),
            self.xml.clone().map(Mode::Xml),
        ];
        let mut given = modes.into_iter().flatten();
        let (Some(mode), None) = (given.next(), given.next()) else {
            return Err(BuildError::new(
                "give exactly one of `lines`, `csv`, `json` or `xml`",
            ));
        };
        match &mode {
            Mode::Csv(o) => {
                ascii(o.delimiter, "delimiter").map_err(BuildError::new)?;
                ascii(o.quote, "quote").map_err(BuildError::new)?;
            }
            Mode::Xml(o) if o.path.split('/').any(|p| p.trim().is_empty()) => {
                return Err(BuildError::new(format!(
                    "xml path `{}` has an empty part: write element names separated by `/`, e.g. `orders/order`",
                    o.path
                )));
            }
            _ => {}
        }
        Ok(Split {
            mode,
            max_child: self.max_child_size.0,
        })
    }
}

#[derive(Debug)]
pub struct Split {
    mode: Mode,
    max_child: u64,
}

impl Split {
    /// The content type of the children.
    pub fn content_type(&self) -> &'static str {
        match self.mode {
            Mode::Lines(_) => "text/plain",
            Mode::Csv(_) | Mode::Json(_) => "application/json",
            Mode::Xml(_) => "application/xml",
        }
    }

    /// Reads `input` and hands each child body to `emit`, in order. Returns how many there
    /// were. Memory use is one child at a time (plus the reader's buffer).
    pub fn split(
        &self,
        input: impl BufRead,
        emit: &mut dyn FnMut(Bytes) -> Result<(), String>,
    ) -> Result<usize, String> {
        let mut n = 0usize;
        let max = self.max_child;
        let mut emit = |b: Vec<u8>| -> Result<(), String> {
            if b.len() as u64 > max {
                return Err(format!(
                    "child {} is {} bytes, over max_child_size ({max} bytes)",
                    n + 1,
                    b.len()
                ));
            }
            n += 1;
            emit(Bytes::from(b))
        };
        match &self.mode {
            Mode::Lines(o) => split_lines(input, o, max, &mut emit)?,
            Mode::Csv(o) => split_csv(input, o, &mut emit)?,
            Mode::Json(_) => split_json(input, &mut emit)?,
            Mode::Xml(o) => split_xml(input, o, max, &mut emit)?,
        }
        Ok(n)
    }

    /// The children of `parent`: its headers plus `split.parent`, `split.index` (from 1) and
    /// the children's `content-type`.
    pub fn child(&self, parent: &Message, index: usize, body: Bytes) -> Message {
        let mut child = Message::new(&parent.route, body);
        child.headers = parent.headers.clone();
        child
            .headers
            .insert("split.parent".into(), parent.id.to_string());
        child
            .headers
            .insert("split.index".into(), index.to_string());
        child
            .headers
            .insert("content-type".into(), self.content_type().into());
        child
    }
}

impl Step for Split {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        self.control(msg).map(|_| ())
    }

    fn control(&self, msg: &mut Message) -> Result<Flow, StepError> {
        let mut bodies = Vec::new();
        self.split(&msg.body[..], &mut |b| {
            bodies.push(b);
            Ok(())
        })?;
        let children = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| self.child(msg, i + 1, b))
            .collect();
        Ok(Flow::Split(children))
    }
}

fn split_lines(
    mut input: impl BufRead,
    o: &LinesOptions,
    max: u64,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let mut line_no = 0usize;
    loop {
        let mut line = Vec::new();
        // Never read more than one child's worth, however long the line.
        let read = (&mut input)
            .take(max + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read: {e}"))?;
        if read == 0 {
            return Ok(());
        }
        line_no += 1;
        if line.len() as u64 > max + 1 && !line.ends_with(b"\n") {
            return Err(format!(
                "line {line_no} is longer than max_child_size ({max} bytes)"
            ));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line_no <= o.skip_lines || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        std::str::from_utf8(&line).map_err(|e| {
            format!(
                "line {line_no} is not UTF-8 (bad byte at column {})",
                e.valid_up_to() + 1
            )
        })?;
        emit(line)?;
    }
}

fn split_csv(
    input: impl BufRead,
    o: &CsvOptions,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    crate::convert::csv::for_each_record(input, o, &mut |record| {
        emit(serde_json::to_vec(&record).map_err(|e| e.to_string())?)
    })
}

/// Streams the items of a top-level JSON array, one at a time.
fn split_json(
    input: impl BufRead,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    struct Items<'a>(&'a mut dyn FnMut(Vec<u8>) -> Result<(), String>);
    impl<'de> Visitor<'de> for Items<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<serde_json::Value>()? {
                let bytes = serde_json::to_vec(&item).map_err(serde::de::Error::custom)?;
                (self.0)(bytes).map_err(serde::de::Error::custom)?;
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Items<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut de = serde_json::Deserializer::from_reader(input);
    Items(emit)
        .deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| format!("JSON split: {e}"))
}

/// Streams the elements at `path` out of an XML document, each as a document of its own.
fn split_xml(
    input: impl BufRead,
    o: &XmlOptions,
    max: u64,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let path: Vec<&str> = o.path.split('/').map(str::trim).collect();
    let mut reader = Reader::from_reader(input);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    // The child being copied, and how deep inside it we are.
    let mut capture: Option<(Writer<Vec<u8>>, usize)> = None;
    let at = |reader: &Reader<_>, e: String| {
        format!("malformed XML at byte {}: {e}", reader.buffer_position())
    };
    loop {
        buf.clear();
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| at(&reader, e.to_string()))?;
        match &event {
            Event::DocType(_) => {
                return Err(at(&reader, "DOCTYPE declarations are refused".into()));
            }
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(format!(
                        "document ends before `<{}>` is closed",
                        stack.join("/")
                    ));
                }
                return Ok(());
            }
            Event::Start(e) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                if capture.is_none() && stack == path {
                    capture = Some((Writer::new(Vec::new()), 0));
                }
            }
            Event::Empty(e) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                if capture.is_none() && stack == path {
                    let mut w = Writer::new(Vec::new());
                    w.write_event(event.borrow()).map_err(|e| e.to_string())?;
                    emit(w.into_inner())?;
                    stack.pop();
                    continue;
                }
            }
            _ => {}
        }
        if let Some((writer, depth)) = capture.as_mut() {
            writer
                .write_event(event.borrow())
                .map_err(|e| e.to_string())?;
            if writer.get_ref().len() as u64 > max {
                return Err(format!(
                    "an element at `{}` is larger than max_child_size ({max} bytes)",
                    o.path
                ));
            }
            match &event {
                Event::Start(_) => *depth += 1,
                Event::End(_) => {
                    *depth -= 1;
                    if *depth == 0 {
                        let (w, _) = capture.take().expect("capturing");
                        emit(w.into_inner())?;
                    }
                }
                _ => {}
            }
        }
        match &event {
            Event::End(_) | Event::Empty(_) => {
                stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(yaml: &str, input: &str) -> Result<Vec<String>, String> {
        let cfg: Config = crate::config::yaml::parse_str(yaml).unwrap();
        let s = cfg.build(&BuildContext::default()).map_err(|e| e.message)?;
        let mut out = Vec::new();
        s.split(input.as_bytes(), &mut |b| {
            out.push(String::from_utf8(b.to_vec()).unwrap());
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn lines_csv_json_xml() {
        assert_eq!(
            split("lines: { skip_lines: 1 }", "H\na\r\n\n b \n").unwrap(),
            vec!["a", " b "]
        );
        assert_eq!(
            split("csv: { delimiter: ';' }", "sku;qty\nA;1\n\"B;x\";2\n").unwrap(),
            vec![r#"{"sku":"A","qty":"1"}"#, r#"{"sku":"B;x","qty":"2"}"#]
        );
        assert_eq!(
            split("json: {}", r#" [ {"a": 1}, [2], "x" ] "#).unwrap(),
            vec![r#"{"a":1}"#, "[2]", r#""x""#]
        );
        assert!(split("json: {}", r#"{"a": 1}"#)
            .unwrap_err()
            .contains("JSON split"));
        assert_eq!(
            split(
                "xml: { path: orders/order }",
                r#"<?xml version="1.0"?><orders><order id="1"><line>a &amp; b</line></order><note/><order id="2"/></orders>"#
            )
            .unwrap(),
            vec![r#"<order id="1"><line>a &amp; b</line></order>"#, r#"<order id="2"/>"#]
        );
        assert!(split("xml: { path: a/b }", "<!DOCTYPE a><a/>")
            .unwrap_err()
            .contains("DOCTYPE"));
        assert!(split("xml: { path: a/b }", "<a><b>")
            .unwrap_err()
            .contains("ends before"));
    }

    #[test]
    fn oversize_children_are_refused() {
        let e = split("lines: {}\nmax_child_size: 4", "abc\nabcdefgh\n").unwrap_err();
        assert!(e.contains("longer than max_child_size"), "{e}");
        let e = split(
            "xml: { path: a/b }\nmax_child_size: 10",
            "<a><b>0123456789</b></a>",
        )
        .unwrap_err();
        assert!(e.contains("max_child_size"), "{e}");
    }
}
