//! `fixed_width`: text records with fields at fixed columns (mainframe and EDI-era exports)
//! become a JSON array of objects, one per line.

use super::{BuildError, Step, StepError};
use crate::message::Message;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The field's name in the JSON records.
    pub name: String,
    /// First column of the field, counting from 1.
    pub start: usize,
    /// Width in characters.
    pub width: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The fields of a record.
    pub columns: Vec<Column>,
    /// Trim spaces around each field (default `true`).
    #[serde(default = "yes")]
    pub trim: bool,
    /// Lines to skip at the start (headers); default 0.
    #[serde(default)]
    pub skip_lines: usize,
}

fn yes() -> bool {
    true
}

impl Config {
    pub fn build(&self) -> Result<FixedWidth, BuildError> {
        if self.columns.is_empty() {
            return Err(BuildError::new("`columns` lists no field"));
        }
        for c in &self.columns {
            if c.start == 0 || c.width == 0 {
                return Err(BuildError::new(format!(
                    "column `{}`: `start` counts from 1 and `width` must be at least 1",
                    c.name
                )));
            }
        }
        Ok(FixedWidth(self.clone()))
    }
}

pub struct FixedWidth(Config);

impl Step for FixedWidth {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let text = msg.body_text()?;
        let mut records = Vec::new();
        for line in text.lines().skip(self.0.skip_lines) {
            if line.trim().is_empty() {
                continue;
            }
            let chars: Vec<char> = line.chars().collect();
            let mut record = Map::new();
            for c in &self.0.columns {
                let from = (c.start - 1).min(chars.len());
                let to = (from + c.width).min(chars.len());
                let field: String = chars[from..to].iter().collect();
                let field = if self.0.trim {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_records() {
        let cfg: Config = serde_yaml::from_str(
            "columns:\n  - {name: id, start: 1, width: 4}\n  - {name: name, start: 5, width: 8}\n  - {name: qty, start: 13, width: 3}\nskip_lines: 1\n",
        )
        .unwrap();
        let mut m = Message::new(
            "r",
            bytes::Bytes::from("HEADER\n0001Bolt M8 200\n0002Nüt\n\n"),
        );
        cfg.build().unwrap().apply(&mut m).unwrap();
        assert_eq!(
            m.body_json().unwrap(),
            serde_json::json!([{"id": "0001", "name": "Bolt M8", "qty": "200"}, {"id": "0002", "name": "Nüt", "qty": ""}])
        );
    }
}
