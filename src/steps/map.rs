//! `map`: builds a JSON body field by field, for mappings that need no script.
//!
//! ```yaml
//! - map:
//!     fields:
//!       order_id: order.@id              # a path into the input
//!       customer: order.customer.#text
//!       first_sku: order.line[0].@sku
//!       currency: '= "EUR"'              # an expression (Rhai), after `=`
//!       lines: '= body.order.line.len()'
//! ```
//!
//! Targets are paths too (`customer.name`, `lines[0].sku`); they create the objects and
//! arrays they pass through. A source path that does not exist, and an expression that gives
//! `()`, leave the target out. `$` is the whole input.

use super::script_options::scripted_step_config;
use super::{BuildContext, BuildError, Step, StepError};
use crate::message::Message;
use crate::script::{body_to_dynamic, to_json, Script};
use serde::Deserialize;
use serde_json::{Map, Value};

scripted_step_config! {
    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "MapStep")]
    pub struct Config {
        /// Target path to source: a path into the input, or `= expression`. In order.
        pub fields: Map<String, Value>,
        /// Start from a copy of the input instead of an empty object (default `false`).
        #[serde(default)]
        pub keep_input: bool,
    }
}

/// One segment of a path: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Parses `a.b[0].@c` into segments; `$` alone is the root.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let path = path.trim();
    if path == "$" {
        return Ok(Vec::new());
    }
    if path.is_empty() {
        return Err("empty path".into());
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && rest.is_empty() {
            return Err(format!("path `{path}` has an empty segment"));
        }
        if !name.is_empty() {
            out.push(Segment::Key(name.to_string()));
        }
        while !rest.is_empty() {
            let close = rest
                .find(']')
                .ok_or_else(|| format!("path `{path}`: `[` without `]`"))?;
            let idx = rest[1..close].parse::<usize>().map_err(|_| {
                format!("path `{path}`: `{}` is not an array index", &rest[..=close])
            })?;
            out.push(Segment::Index(idx));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("path `{path}`: unexpected `{rest}`"));
            }
        }
    }
    Ok(out)
}

pub fn get<'a>(v: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| match seg {
        Segment::Key(k) => cur.as_object()?.get(k),
        Segment::Index(i) => cur.as_array()?.get(*i),
    })
}

/// Sets `value` at `path`, creating objects and arrays on the way; an existing value of
/// the wrong shape on the way is an error.
pub fn set(root: &mut Value, path: &[Segment], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        *root = value;
        return Ok(());
    };
    let mut cur = root;
    for (i, seg) in parents.iter().enumerate() {
        let next_is_index = matches!(path[i + 1], Segment::Index(_));
        let empty = || {
            if next_is_index {
                Value::Array(Vec::new())
            } else {
                Value::Object(Map::new())
            }
        };
        cur = slot(cur, seg, empty)?;
    }
    let target = slot(cur, last, || Value::Null)?;
    *target = value;
    Ok(())
}

fn slot<'a>(
    cur: &'a mut Value,
    seg: &Segment,
    empty: impl Fn() -> Value,
) -> Result<&'a mut Value, String> {
    match seg {
        Segment::Key(k) => {
            if cur.is_null() {
                *cur = Value::Object(Map::new());
            }
            let obj = cur
                .as_object_mut()
                .ok_or_else(|| format!("cannot set key `{k}` inside a non-object"))?;
            Ok(obj.entry(k.clone()).or_insert_with(empty))
        }
        Segment::Index(i) => {
            if cur.is_null() {
                *cur = Value::Array(Vec::new());
            }
            let arr = cur
                .as_array_mut()
                .ok_or_else(|| format!("cannot set index [{i}] inside a non-array"))?;
            if *i > 100_000 {
                return Err(format!("array index [{i}] is too large"));
            }
            while arr.len() <= *i {
                arr.push(Value::Null);
            }
            let slot = &mut arr[*i];
            if slot.is_null() {
                *slot = empty();
            }
            Ok(slot)
        }
    }
}

enum Source {
    Path(Vec<Segment>),
    Expression(Script),
}

struct Field {
    target: Vec<Segment>,
    source: Source,
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<MapStep, BuildError> {
        let needs_engine = self
            .fields
            .values()
            .any(|v| v.as_str().is_some_and(|s| s.trim_start().starts_with('=')));
        let options = self.script_options();
        let engine = if needs_engine {
            Some(options.engine(cx)?)
        } else {
            None
        };
        let mut fields = Vec::new();
        for (target, source) in &self.fields {
            let target_path =
                parse_path(target).map_err(|e| BuildError::new(format!("fields.{target}: {e}")))?;
            let Some(source) = source.as_str() else {
                return Err(BuildError::new(format!(
                    "fields.{target}: write a source path or `= expression` as a string"
                )));
            };
            let source = match (source.trim_start().strip_prefix('='), &engine) {
                (Some(expr), Some(engine)) => Source::Expression(options.expression(
                    engine,
                    &format!("fields.{target}"),
                    expr,
                )?),
                _ => Source::Path(
                    parse_path(source)
                        .map_err(|e| BuildError::new(format!("fields.{target}: {e}")))?,
                ),
            };
            fields.push(Field {
                target: target_path,
                source,
            });
        }
        Ok(MapStep {
            fields,
            keep_input: self.keep_input,
        })
    }
}

pub struct MapStep {
    fields: Vec<Field>,
    keep_input: bool,
}

impl Step for MapStep {
    fn cost(&self) -> super::Cost {
        super::Cost::Script
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let input = msg.body_json()?;
        let mut script_body = None;
        let mut out = if self.keep_input {
            input.clone()
        } else {
            Value::Object(Map::new())
        };
        for field in &self.fields {
            let value = match &field.source {
                Source::Path(p) => get(&input, p).cloned(),
                Source::Expression(script) => {
                    if script_body.is_none() {
                        script_body = Some(body_to_dynamic(msg)?);
                    }
                    let body = script_body.clone().unwrap_or_default();
                    let (v, _) = script
                        .run(msg, body)
                        .map_err(|e| StepError(e.to_string()))?;
                    if v.is_unit() {
                        None
                    } else {
                        Some(to_json(&v)?)
                    }
                }
            };
            if let Some(v) = value {
                set(&mut out, &field.target, v)?;
            }
        }
        msg.set_json(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("a.b[2].@c").unwrap(),
            vec![
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::Index(2),
                Segment::Key("@c".into())
            ]
        );
        assert!(parse_path("a..b").is_err());
        assert!(parse_path("a[x]").is_err());
        let v = json!({"a": {"b": [1, {"@c": "x"}]}});
        assert_eq!(
            get(&v, &parse_path("a.b[1].@c").unwrap()),
            Some(&json!("x"))
        );
        assert_eq!(get(&v, &parse_path("a.z").unwrap()), None);
        let mut out = Value::Object(Map::new());
        set(&mut out, &parse_path("x.y[1].z").unwrap(), json!(5)).unwrap();
        assert_eq!(out, json!({"x": {"y": [null, {"z": 5}]}}));
        assert!(set(&mut out, &parse_path("x.y.q").unwrap(), json!(1)).is_err());
    }
}
