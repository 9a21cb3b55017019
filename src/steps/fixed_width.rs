//! Fixed-width text records (mainframe and EDI-era files), both ways, from one layout
//! definition: `fixed_width` reads lines into a JSON array of objects; `json_to_fixed_width`
//! writes such an array back into lines — padded, aligned, and refused (or cut, when asked)
//! where a value is wider than its columns. A layout is one list of columns, or one list per
//! record type (header, detail, trailer lines told apart by a code at fixed columns).

use super::{BuildContext, BuildError, Step, StepError};
use crate::message::Message;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The field's name in the JSON records.
    pub name: String,
    /// First column of the field, counting from 1.
    pub start: usize,
    /// Width in characters.
    pub width: usize,
    /// Writing: `left` (default) or `right` (numbers).
    #[serde(default)]
    pub align: Align,
    /// Writing: the character that fills the rest of the field (default a space; `"0"` for
    /// zero-padded numbers, which keeps a sign in front: `-0042`).
    #[serde(default = "space")]
    pub pad: char,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Align {
    #[default]
    Left,
    Right,
}

/// Where a line says which kind of record it is, and the JSON field that holds it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordType {
    /// First column of the code, counting from 1.
    pub start: usize,
    /// Width of the code in characters.
    pub width: usize,
    /// The JSON field holding the code (default `record_type`).
    #[serde(default = "record_type_field")]
    pub field: String,
}

/// What a value wider than its columns does when writing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The message fails, saying which record and field (default).
    #[default]
    Error,
    /// The value is cut to the field's width (its first characters are kept).
    Truncate,
}

fn space() -> char {
    ' '
}

fn record_type_field() -> String {
    "record_type".into()
}

fn yes() -> bool {
    true
}

/// `fixed_width`: the reader's options.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FixedWidthStep")]
pub struct Config {
    /// The fields of a record (or give `record_type` and `records`).
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Lines of several kinds: where the code that tells them apart is.
    #[serde(default)]
    pub record_type: Option<RecordType>,
    /// The fields of each kind of line, by its code.
    #[serde(default)]
    pub records: BTreeMap<String, Vec<Column>>,
    /// Trim spaces around each field (default `true`).
    #[serde(default = "yes")]
    pub trim: bool,
    /// Lines to skip at the start (headers); default 0.
    #[serde(default)]
    pub skip_lines: usize,
}

/// `json_to_fixed_width`: the writer's options. The layout keys repeat the reader's rather
/// than sharing a flattened struct: serde cannot flatten under `deny_unknown_fields`, and a
/// misspelt key must stay an error at load.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "JsonToFixedWidthStep")]
pub struct WriteConfig {
    /// The fields of a record (or give `record_type` and `records`).
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Lines of several kinds: where the code goes, and the JSON field that names it.
    #[serde(default)]
    pub record_type: Option<RecordType>,
    /// The fields of each kind of line, by its code.
    #[serde(default)]
    pub records: BTreeMap<String, Vec<Column>>,
    /// A value wider than its columns: `error` (default) or `truncate`.
    #[serde(default)]
    pub overflow: Overflow,
    /// End lines with CR LF instead of LF.
    #[serde(default)]
    pub crlf: bool,
}

/// A checked layout.
#[derive(Debug, Clone)]
struct Layout {
    single: Vec<Column>,
    record_type: Option<RecordType>,
    records: BTreeMap<String, Vec<Column>>,
}

impl Layout {
    fn new(
        columns: &[Column],
        record_type: &Option<RecordType>,
        records: &BTreeMap<String, Vec<Column>>,
    ) -> Result<Layout, BuildError> {
        match record_type {
            None if !records.is_empty() => {
                return Err(BuildError::new(
                    "`records` needs `record_type`: where in a line its code is",
                ))
            }
            None if columns.is_empty() => {
                return Err(BuildError::new("`columns` lists no field"))
            }
            Some(_) if !columns.is_empty() => {
                return Err(BuildError::new(
                    "give `columns` for one kind of line, or `record_type` with `records` for several, not both",
                ))
            }
            Some(_) if records.is_empty() => {
                return Err(BuildError::new(
                    "`record_type` needs `records`: the fields of each kind of line, by its code",
                ))
            }
            _ => {}
        }
        let check = |what: &str, columns: &[Column]| -> Result<(), BuildError> {
            if columns.is_empty() {
                return Err(BuildError::new(format!("{what}: lists no field")));
            }
            let mut spans: Vec<(usize, usize, String)> = Vec::new();
            if let Some(rt) = record_type {
                if rt.start == 0 || rt.width == 0 {
                    return Err(BuildError::new(
                        "`record_type`: `start` counts from 1 and `width` must be at least 1",
                    ));
                }
                spans.push((rt.start, rt.start + rt.width - 1, "the record type".into()));
            }
            for c in columns {
                if c.start == 0 || c.width == 0 {
                    return Err(BuildError::new(format!(
                        "{what}: column `{}`: `start` counts from 1 and `width` must be at least 1",
                        c.name
                    )));
                }
                if record_type.as_ref().is_some_and(|rt| rt.field == c.name) {
                    return Err(BuildError::new(format!(
                        "{what}: column `{}` has the name of the record type's field",
                        c.name
                    )));
                }
                let (from, to) = (c.start, c.start + c.width - 1);
                if let Some((a, b, other)) = spans.iter().find(|(a, b, _)| from <= *b && *a <= to) {
                    return Err(BuildError::new(format!(
                        "{what}: column `{}` ({from}–{to}) overlaps {other} ({a}–{b})",
                        c.name
                    )));
                }
                spans.push((from, to, format!("column `{}`", c.name)));
            }
            Ok(())
        };
        match record_type {
            None => check("`columns`", columns)?,
            Some(rt) => {
                for (code, cols) in records {
                    if code.chars().count() > rt.width {
                        return Err(BuildError::new(format!(
                            "`records`: the code `{code}` is wider than the record type's {} column(s)",
                            rt.width
                        )));
                    }
                    check(&format!("`records.{code}`"), cols)?;
                }
            }
        }
        Ok(Layout {
            single: columns.to_vec(),
            record_type: record_type.clone(),
            records: records.clone(),
        })
    }

    fn codes(&self) -> String {
        self.records
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<FixedWidth, BuildError> {
        let layout = Layout::new(&self.columns, &self.record_type, &self.records)?;
        Ok(FixedWidth {
            layout,
            trim: self.trim,
            skip_lines: self.skip_lines,
        })
    }
}

impl WriteConfig {
    pub fn build(&self, _cx: &BuildContext) -> Result<JsonToFixedWidth, BuildError> {
        let layout = Layout::new(&self.columns, &self.record_type, &self.records)?;
        Ok(JsonToFixedWidth {
            layout,
            overflow: self.overflow,
            crlf: self.crlf,
        })
    }
}

pub struct FixedWidth {
    layout: Layout,
    trim: bool,
    skip_lines: usize,
}

/// The characters of `chars` at columns `start` (from 1) for `width`, as far as there are any.
fn slice(chars: &[char], start: usize, width: usize) -> String {
    let from = (start - 1).min(chars.len());
    let to = (from + width).min(chars.len());
    chars[from..to].iter().collect()
}

impl Step for FixedWidth {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let text = msg.body_text()?;
        let mut records = Vec::new();
        for (n, line) in text.lines().enumerate().skip(self.skip_lines) {
            if line.trim().is_empty() {
                continue;
            }
            let chars: Vec<char> = line.chars().collect();
            let mut record = Map::new();
            let columns = match &self.layout.record_type {
                None => &self.layout.single,
                Some(rt) => {
                    let code = slice(&chars, rt.start, rt.width).trim().to_string();
                    let Some(columns) = self.layout.records.get(&code) else {
                        return Err(StepError(format!(
                            "line {}: the record type `{code}` (columns {}–{}) is not one of {}",
                            n + 1,
                            rt.start,
                            rt.start + rt.width - 1,
                            self.layout.codes()
                        )));
                    };
                    record.insert(rt.field.clone(), Value::String(code));
                    columns
                }
            };
            for c in columns {
                let field = slice(&chars, c.start, c.width);
                let field = if self.trim {
                    field.trim().to_string()
                } else {
                    field
                };
                record.insert(c.name.clone(), Value::String(field));
            }
            records.push(Value::Object(record));
        }
        msg.set_json(&Value::Array(records));
        Ok(())
    }
}

pub struct JsonToFixedWidth {
    layout: Layout,
    overflow: Overflow,
    crlf: bool,
}

/// A JSON value as the text of a field; arrays and objects have none.
fn text_of(v: Option<&Value>) -> Result<String, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Array(_)) => Err("an array"),
        Some(Value::Object(_)) => Err("an object"),
    }
}

/// `value` filled to `width` characters as the column says (its width is already checked).
fn padded(value: &str, c: &Column) -> String {
    let fill = c.width.saturating_sub(value.chars().count());
    let pad: String = std::iter::repeat_n(c.pad, fill).collect();
    match c.align {
        Align::Left => format!("{value}{pad}"),
        // Zeros go between the sign and the digits: -42 in 5 columns is -0042.
        Align::Right if c.pad == '0' && (value.starts_with('-') || value.starts_with('+')) => {
            format!("{}{pad}{}", &value[..1], &value[1..])
        }
        Align::Right => format!("{pad}{value}"),
    }
}

impl JsonToFixedWidth {
    fn line(&self, i: usize, record: &Map<String, Value>) -> Result<String, StepError> {
        let mut placed: Vec<(usize, String)> = Vec::new();
        let columns = match &self.layout.record_type {
            None => &self.layout.single,
            Some(rt) => {
                let code = text_of(record.get(&rt.field)).unwrap_or_default();
                let Some(columns) = self.layout.records.get(&code) else {
                    return Err(StepError(format!(
                        "record {}: `{}` is `{code}`, not one of {}: it says which layout the record has",
                        i + 1,
                        rt.field,
                        self.layout.codes()
                    )));
                };
                let code_column = Column {
                    name: rt.field.clone(),
                    start: rt.start,
                    width: rt.width,
                    align: Align::Left,
                    pad: ' ',
                };
                placed.push((rt.start, padded(&code, &code_column)));
                columns
            }
        };
        for c in columns {
            let value = text_of(record.get(&c.name)).map_err(|kind| {
                StepError(format!(
                    "record {}, field `{}`: {kind} cannot be written into fixed columns",
                    i + 1,
                    c.name
                ))
            })?;
            let n = value.chars().count();
            let value = if n <= c.width {
                value
            } else if self.overflow == Overflow::Truncate {
                value.chars().take(c.width).collect()
            } else {
                return Err(StepError(format!(
                    "record {}, field `{}`: `{value}` is {n} characters, wider than its {} column(s) ({}–{}); shorten it in a step before, or set `overflow: truncate`",
                    i + 1,
                    c.name,
                    c.width,
                    c.start,
                    c.start + c.width - 1
                )));
            };
            placed.push((c.start, padded(&value, c)));
        }
        // Fields in column order; a gap between fields is spaces.
        placed.sort_by_key(|(start, _)| *start);
        let mut line = String::new();
        let mut at = 1;
        for (start, text) in placed {
            line.extend(std::iter::repeat_n(' ', start.saturating_sub(at)));
            at = start + text.chars().count();
            line.push_str(&text);
        }
        Ok(line)
    }
}

impl Step for JsonToFixedWidth {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = msg.body_json()?;
        let records =
            match &json {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                Value::Object(_) => vec![&json],
                _ => return Err(StepError(
                    "json_to_fixed_width needs a JSON array of records (objects), or one object"
                        .into(),
                )),
            };
        let end = if self.crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        for (i, r) in records.into_iter().enumerate() {
            let Value::Object(record) = r else {
                return Err(StepError(format!(
                    "record {}: not an object (each record is one line)",
                    i + 1
                )));
            };
            out.push_str(&self.line(i, record)?);
            out.push_str(end);
        }
        msg.set_text(out, "text/plain");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(step: &dyn Step, body: &str) -> Result<Message, StepError> {
        let mut m = Message::new("r", bytes::Bytes::from(body.to_string()));
        step.apply(&mut m).map(|_| m)
    }

    #[test]
    fn slices_records() {
        let cfg: Config = crate::config::yaml::parse_str(
            "columns:\n  - {name: id, start: 1, width: 4}\n  - {name: name, start: 5, width: 8}\n  - {name: qty, start: 13, width: 3}\nskip_lines: 1\n",
        )
        .unwrap();
        let m = run(
            &cfg.build(&BuildContext::default()).unwrap(),
            "HEADER\n0001Bolt M8 200\n0002Nüt\n\n",
        )
        .unwrap();
        assert_eq!(
            m.body_json().unwrap(),
            serde_json::json!([{"id": "0001", "name": "Bolt M8", "qty": "200"}, {"id": "0002", "name": "Nüt", "qty": ""}])
        );
    }

    const TYPED: &str = r#"
record_type: { start: 1, width: 1 }
records:
  H: [ { name: batch, start: 2, width: 6, align: right, pad: "0" }, { name: date, start: 8, width: 8 } ]
  D: [ { name: sku, start: 2, width: 6 }, { name: qty, start: 8, width: 5, align: right, pad: "0" }, { name: text, start: 14, width: 10 } ]
  T: [ { name: count, start: 2, width: 4, align: right } ]
"#;

    #[test]
    fn record_types_round_trip_through_one_layout() {
        let json = serde_json::json!([
            {"record_type": "H", "batch": 42, "date": "20261203"},
            {"record_type": "D", "sku": "A-1", "qty": -7, "text": "Bolt M8"},
            {"record_type": "D", "sku": "B-22", "qty": "120", "text": "Nüt"},
            {"record_type": "T", "count": 2}
        ]);
        let write: WriteConfig = crate::config::yaml::parse_str(TYPED).unwrap();
        let m = run(
            &write.build(&BuildContext::default()).unwrap(),
            &json.to_string(),
        )
        .unwrap();
        let text = String::from_utf8(m.body.to_vec()).unwrap();
        assert_eq!(
            text,
            "H00004220261203\nDA-1   -0007 Bolt M8   \nDB-22  00120 Nüt       \nT   2\n"
        );
        assert_eq!(m.headers["content-type"], "text/plain");
        // Read back with the same layout: the same records, as text.
        let read: Config = crate::config::yaml::parse_str(TYPED).unwrap();
        let back = run(&read.build(&BuildContext::default()).unwrap(), &text).unwrap();
        assert_eq!(
            back.body_json().unwrap(),
            serde_json::json!([
                {"record_type": "H", "batch": "000042", "date": "20261203"},
                {"record_type": "D", "sku": "A-1", "qty": "-0007", "text": "Bolt M8"},
                {"record_type": "D", "sku": "B-22", "qty": "00120", "text": "Nüt"},
                {"record_type": "T", "count": "2"}
            ])
        );
        // A line of a kind the layout does not know says which line and which kinds it knows.
        let e = run(
            &read.build(&BuildContext::default()).unwrap(),
            "H000042\nX123\n",
        )
        .unwrap_err();
        assert!(
            e.0.contains("line 2") && e.0.contains("`X`") && e.0.contains("`D`, `H`, `T`"),
            "{e}"
        );
    }

    #[test]
    fn overflow_is_an_error_unless_truncation_is_asked_for() {
        let yaml = "columns:\n  - {name: name, start: 1, width: 5}\n  - {name: qty, start: 7, width: 3, align: right}\n";
        let strict: WriteConfig = crate::config::yaml::parse_str(yaml).unwrap();
        let body = r#"[{"name": "Bolts", "qty": 5}, {"name": "Washers", "qty": 12}]"#;
        let e = run(&strict.build(&BuildContext::default()).unwrap(), body).unwrap_err();
        assert!(
            e.0.contains("record 2, field `name`: `Washers` is 7 characters, wider than its 5 column(s) (1–5)"),
            "{e}"
        );
        let cut: WriteConfig =
            crate::config::yaml::parse_str(&format!("{yaml}overflow: truncate\ncrlf: true\n"))
                .unwrap();
        let m = run(&cut.build(&BuildContext::default()).unwrap(), body).unwrap();
        assert_eq!(&m.body[..], b"Bolts   5\r\nWashe  12\r\n");
        // One object is one line; nested values are refused.
        let m = run(
            &cut.build(&BuildContext::default()).unwrap(),
            r#"{"name": "Nut"}"#,
        )
        .unwrap();
        assert_eq!(&m.body[..], b"Nut      \r\n");
        let e = run(
            &strict.build(&BuildContext::default()).unwrap(),
            r#"[{"name": ["x"]}]"#,
        )
        .unwrap_err();
        assert!(e.0.contains("an array cannot be written"), "{e}");
    }

    #[test]
    fn layouts_are_checked_when_the_route_loads() {
        let bad = |yaml: &str| {
            let cfg: WriteConfig = crate::config::yaml::parse_str(yaml).unwrap();
            cfg.build(&BuildContext::default())
                .err()
                .map(|e| e.message)
                .unwrap_or_default()
        };
        assert!(bad(
            "columns:\n  - {name: a, start: 1, width: 4}\n  - {name: b, start: 3, width: 2}\n"
        )
        .contains("column `b` (3–4) overlaps column `a` (1–4)"));
        assert!(bad(
            "record_type: {start: 1, width: 1}\nrecords:\n  HD: [{name: a, start: 2, width: 1}]\n"
        )
        .contains("wider than the record type"));
        assert!(bad(
            "record_type: {start: 1, width: 2}\nrecords:\n  H: [{name: a, start: 2, width: 1}]\n"
        )
        .contains("overlaps the record type"));
        assert!(
            bad("records:\n  H: [{name: a, start: 2, width: 1}]\n").contains("needs `record_type`")
        );
        assert!(bad("columns: []\n").contains("lists no field"));
    }
}
