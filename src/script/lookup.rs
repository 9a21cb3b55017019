//! Lookup tables for scripts: code cross-references loaded from CSV or YAML files when the
//! route is loaded, read with `lookup("table", key)` or `lookup("table", key, default)`.
//!
//! - CSV: a header row, then one row per entry; the first column is the key. With two columns
//!   the value is the second column's text; with more, a map of the row.
//! - YAML: a mapping from key to value (any YAML value).

use crate::config::yaml::{self, Value};
use rhai::{Dynamic, Engine, EvalAltResult};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Table = HashMap<String, Dynamic>;

/// Every table a step declared, by name.
#[derive(Default)]
pub struct Tables(HashMap<String, Table>);

impl Tables {
    /// Loads each `name: file` (relative to `base`, the route file's directory).
    pub fn load(specs: &BTreeMap<String, PathBuf>, base: &Path) -> Result<Tables, String> {
        let mut tables = HashMap::new();
        for (name, file) in specs {
            let path = base.join(file);
            let table = match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => load_csv(&path),
                Some("yaml" | "yml") => load_yaml(&path),
                _ => Err("a lookup table must be a .csv, .yaml or .yml file".to_string()),
            }
            .map_err(|e| format!("lookup table `{name}` ({}): {e}", path.display()))?;
            tables.insert(name.clone(), table);
        }
        Ok(Tables(tables))
    }
}

fn load_csv(path: &Path) -> Result<Table, String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    if headers.is_empty() {
        return Err("the header row is empty".into());
    }
    let mut table = Table::new();
    for row in reader.records() {
        let row = row.map_err(|e| e.to_string())?;
        let key = row.get(0).unwrap_or_default().to_string();
        let value = if headers.len() == 2 {
            Dynamic::from(row.get(1).unwrap_or_default().to_string())
        } else {
            let map: rhai::Map = headers
                .iter()
                .zip(row.iter())
                .map(|(h, v)| (h.into(), Dynamic::from(v.to_string())))
                .collect();
            map.into()
        };
        table.insert(key, value);
    }
    Ok(table)
}

fn load_yaml(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc: Value = yaml::parse_data(path, &text).map_err(|e| e.to_string())?;
    let Value::Mapping(map) = doc else {
        return Err("the file must hold a mapping from keys to values".into());
    };
    let mut table = Table::new();
    for (k, v) in map {
        let key = match k {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("key {other:?} is not a string or number")),
        };
        let json = serde_json::to_value(&v).map_err(|e| format!("value of `{key}`: {e}"))?;
        let value = rhai::serde::to_dynamic(&json).map_err(|e| e.to_string())?;
        table.insert(key, value);
    }
    Ok(table)
}

pub fn register(engine: &mut Engine, tables: Arc<Tables>) {
    let t = tables.clone();
    engine.register_fn(
        "lookup",
        move |table: &str, key: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
            Ok(find(&t, table, &key)?.unwrap_or(Dynamic::UNIT))
        },
    );
    engine.register_fn(
        "lookup",
        move |table: &str, key: Dynamic, default: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
            Ok(find(&tables, table, &key)?.unwrap_or(default))
        },
    );
}

fn find(
    tables: &Tables,
    table: &str,
    key: &Dynamic,
) -> Result<Option<Dynamic>, Box<EvalAltResult>> {
    let Some(t) = tables.0.get(table) else {
        let mut known: Vec<&str> = tables.0.keys().map(String::as_str).collect();
        known.sort();
        return Err(format!(
            "unknown lookup table `{table}`; this step declares: {}",
            if known.is_empty() {
                "none (add `lookups:` to the step)".to_string()
            } else {
                known.join(", ")
            }
        )
        .into());
    };
    let key = if key.is_string() {
        key.clone().into_string().unwrap_or_default()
    } else {
        key.to_string()
    };
    Ok(t.get(&key).cloned())
}
