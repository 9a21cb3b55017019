//! CSV ⇄ JSON. A CSV document is an array of records: objects keyed by the header row (or by
//! `columns`), or arrays of strings when there is no header. Values stay strings.

use serde::Deserialize;
use serde_json::{Map, Value};

/// How CSV is read (the options of the `csv_to_json` step).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "CsvReadOptions")]
pub struct ReadOptions {
    /// Field separator, one ASCII character (default `,`; `;` and `\t` are common).
    pub delimiter: char,
    /// Quote character (default `"`); a quote inside a quoted field is doubled.
    pub quote: char,
    /// The first row names the columns (default `true`).
    pub header: bool,
    /// Column names to use instead of the header row (or when there is none).
    pub columns: Option<Vec<String>>,
    /// Trim spaces around each field (default `false`).
    pub trim: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            delimiter: ',',
            quote: '"',
            header: true,
            columns: None,
            trim: false,
        }
    }
}

/// How JSON is written as CSV (the options of the `json_to_csv` step).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "CsvWriteOptions")]
pub struct WriteOptions {
    /// Field separator, one ASCII character (default `,`).
    pub delimiter: char,
    /// Columns to write, in order. Default: the keys of the first record.
    pub columns: Option<Vec<String>>,
    /// Write a header row (default `true`).
    pub header: bool,
    /// End lines with CR LF instead of LF (default `false`).
    pub crlf: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            delimiter: ',',
            columns: None,
            header: true,
            crlf: false,
        }
    }
}

/// Checks that a separator or quote is one ASCII character, as CSV readers need.
pub fn ascii(c: char, what: &str) -> Result<u8, String> {
    if c.is_ascii() {
        Ok(c as u8)
    } else {
        Err(format!(
            "the CSV {what} `{c}` must be a single ASCII character"
        ))
    }
}

pub fn csv_to_value(body: &[u8], opts: &ReadOptions) -> Result<Value, String> {
    crate::message::utf8(body, "CSV")?;
    let mut out = Vec::new();
    for_each_record(body, opts, &mut |v| {
        out.push(v);
        Ok(())
    })?;
    Ok(Value::Array(out))
}

/// Reads CSV from `input` one record at a time (objects by the header row or `columns`, or
/// arrays without), handing each to `emit`: memory holds one record, however long the input.
pub fn for_each_record(
    input: impl std::io::Read,
    opts: &ReadOptions,
    emit: &mut dyn FnMut(Value) -> Result<(), String>,
) -> Result<(), String> {
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(ascii(opts.delimiter, "delimiter")?)
        .quote(ascii(opts.quote, "quote")?)
        .has_headers(opts.header)
        .flexible(true) // ragged rows get our own error, which names the columns
        .trim(if opts.trim {
            ::csv::Trim::All
        } else {
            ::csv::Trim::None
        })
        .from_reader(input);
    let located = |e: ::csv::Error| match e.position() {
        Some(p) => format!("CSV error at line {}: {e}", p.line()),
        None => format!("CSV error: {e}"),
    };
    let names: Option<Vec<String>> = match (&opts.columns, opts.header) {
        (Some(c), _) => Some(c.clone()),
        (None, true) => Some(
            reader
                .headers()
                .map_err(located)?
                .iter()
                .map(str::to_string)
                .collect(),
        ),
        (None, false) => None,
    };
    for record in reader.records() {
        let record = record.map_err(located)?;
        let value = match &names {
            Some(names) => {
                if record.len() != names.len() {
                    let line = record.position().map(|p| p.line()).unwrap_or(0);
                    return Err(format!(
                        "CSV line {line} has {} fields but there are {} columns ({})",
                        record.len(),
                        names.len(),
                        names.join(", ")
                    ));
                }
                let mut obj = Map::new();
                for (name, field) in names.iter().zip(record.iter()) {
                    obj.insert(name.clone(), Value::String(field.to_string()));
                }
                Value::Object(obj)
            }
            None => Value::Array(record.iter().map(|f| Value::String(f.into())).collect()),
        };
        emit(value)?;
    }
    Ok(())
}

fn field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(), // nested values are written as JSON text
    }
}

pub fn value_to_csv(value: &Value, opts: &WriteOptions) -> Result<String, String> {
    let records = match value {
        Value::Array(items) => items,
        _ => return Err("json_to_csv needs a JSON array of records (objects or arrays)".into()),
    };
    let columns: Vec<String> = match &opts.columns {
        Some(c) => c.clone(),
        None => match records.first() {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        },
    };
    let mut writer = ::csv::WriterBuilder::new()
        .delimiter(ascii(opts.delimiter, "delimiter")?)
        .terminator(if opts.crlf {
            ::csv::Terminator::CRLF
        } else {
            ::csv::Terminator::Any(b'\n')
        })
        .from_writer(Vec::new());
    let err = |e: ::csv::Error| e.to_string();
    if opts.header && !columns.is_empty() {
        writer.write_record(&columns).map_err(err)?;
    }
    for (i, record) in records.iter().enumerate() {
        let row: Vec<String> = match record {
            Value::Object(m) => columns
                .iter()
                .map(|c| m.get(c).map(field).unwrap_or_default())
                .collect(),
            Value::Array(a) => a.iter().map(field).collect(),
            _ => return Err(format!("record [{i}] is neither an object nor an array")),
        };
        writer.write_record(&row).map_err(err)?;
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_header_quotes_and_delimiters() {
        let csv = "sku;name;qty\nA1;\"Bolt; M8\";200\nB2;\"Say \"\"hi\"\"\";5\n";
        let opts = ReadOptions {
            delimiter: ';',
            ..ReadOptions::default()
        };
        let v = csv_to_value(csv.as_bytes(), &opts).unwrap();
        assert_eq!(
            v,
            json!([{"sku": "A1", "name": "Bolt; M8", "qty": "200"}, {"sku": "B2", "name": "Say \"hi\"", "qty": "5"}])
        );
        let plain = ReadOptions {
            header: false,
            ..ReadOptions::default()
        };
        assert_eq!(
            csv_to_value(b"a,b\n1,2\n", &plain).unwrap(),
            json!([["a", "b"], ["1", "2"]])
        );
    }

    #[test]
    fn reports_ragged_rows_with_their_line() {
        let e = csv_to_value(b"a,b\n1,2\n3\n", &ReadOptions::default()).unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        let e = csv_to_value(b"a\n\xff\n", &ReadOptions::default()).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn writes_and_round_trips() {
        let v = json!([{"sku": "A1", "name": "Bolt, M8", "qty": 200}, {"sku": "B2", "name": null, "qty": 5}]);
        let csv = value_to_csv(&v, &WriteOptions::default()).unwrap();
        assert_eq!(csv, "sku,name,qty\nA1,\"Bolt, M8\",200\nB2,,5\n");
        let back = csv_to_value(csv.as_bytes(), &ReadOptions::default()).unwrap();
        assert_eq!(back[0]["name"], "Bolt, M8");
        let cols = WriteOptions {
            columns: Some(vec!["qty".into(), "sku".into()]),
            header: false,
            ..WriteOptions::default()
        };
        assert_eq!(value_to_csv(&v, &cols).unwrap(), "200,A1\n5,B2\n");
        assert!(value_to_csv(&json!({"a": 1}), &WriteOptions::default()).is_err());
    }
}
