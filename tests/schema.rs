//! The JSON Schema of route and endpoint files against what the engine reads and what docs/
//! says: every bundled route and endpoint file passes it; a file the parser refuses for a
//! wrong key, kind or type fails it too; each option table in docs/ marked
//! `<!-- spec: PATH -->` lists exactly the keys of that section, and says which are required;
//! and `schema/` holds what `switchyard schema` prints (checked in a build with every feature,
//! as CI runs it, since `kafka` and `sqs` describe their options only there).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use switchyard::route::schema::{self, Kind};
use switchyard::route::RouteFile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.ends_with(".yaml") && !name.ends_with(".test.yaml")
    });
    files.sort();
    files
}

fn as_json(path: &Path, text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The schema's complaints about `text`, one line each with the JSON pointer.
fn complaints(validator: &jsonschema::Validator, path: &Path, text: &str) -> Vec<String> {
    let value = as_json(path, text);
    validator
        .iter_errors(&value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn validator(kind: Kind) -> jsonschema::Validator {
    jsonschema::validator_for(&schema::generate(kind)).expect("the generated schema compiles")
}

#[test]
fn every_bundled_route_and_endpoint_file_passes_the_schema() {
    let routes = validator(Kind::Route);
    let endpoints = validator(Kind::Endpoint);
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in [
        "routes",
        "examples/routes",
        "examples/kafka",
        "examples/sqs",
        "examples/xsd",
    ] {
        for file in yaml_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).expect("readable");
            for c in complaints(&routes, &file, &text) {
                failures.push(format!("{}: {c}", file.display()));
            }
            checked += 1;
        }
    }
    for file in yaml_files(&root().join("adapters")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        for c in complaints(&endpoints, &file, &text) {
            failures.push(format!("{}: {c}", file.display()));
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} files found");
    assert!(
        failures.is_empty(),
        "files the engine runs that the schema refuses:\n{}",
        failures.join("\n")
    );
}

/// The engine's verdict on a route file's text.
fn parses(text: &str) -> bool {
    switchyard::config::yaml::parse::<RouteFile>(Path::new("case.yaml"), text).is_ok()
}

#[test]
fn what_the_parser_refuses_the_schema_refuses_and_placeholders_pass() {
    let routes = validator(Kind::Route);
    let base = "from:\n  http:\n    listen: 127.0.0.1:0\n    paths: [/orders]\nsteps:\n  - transform:\n      script: 'body'\nto:\n  - file:\n      path: out\n";
    assert!(parses(base), "the base case is a valid route");
    assert_eq!(
        complaints(&routes, Path::new("base"), base),
        Vec::<String>::new()
    );
    let refused = [
        ("a misspelt top-level key", base.replace("steps:", "stpes:")),
        (
            "an unknown adapter option",
            base.replace("paths: [/orders]", "paths: [/orders]\n    pth: /x"),
        ),
        (
            "an unknown step kind",
            base.replace("- transform:", "- transfrom:"),
        ),
        (
            "an unknown adapter kind",
            base.replace("  - file:", "  - flie:"),
        ),
        ("no inbound", base.replace("from:\n  http:", "x:\n  http:")),
        (
            "a number that is text",
            format!("{base}concurrency: many\n"),
        ),
        (
            "a value outside its choices",
            format!("{base}on_error:\n  delivery: shrug\n"),
        ),
    ];
    for (what, text) in refused {
        assert!(!parses(&text), "{what}: the parser accepts\n{text}");
        assert!(
            !complaints(&routes, Path::new(what), &text).is_empty(),
            "{what}: the parser refuses it but the schema accepts\n{text}"
        );
    }
    // `${VAR}` is replaced before the file is read: a number may be written as one.
    let placeholder = format!("{base}concurrency: ${{WORKERS:-8}}\n");
    assert_eq!(
        complaints(&routes, Path::new("placeholder"), &placeholder),
        Vec::<String>::new()
    );
}

/// One option table of docs/: the section it documents, where, its keys and required keys.
struct Table {
    spec: String,
    place: String,
    keys: BTreeSet<String>,
    required: BTreeSet<String>,
    /// Whether the table has a `default` or `required` column, saying what is required.
    says_required: bool,
    /// The keys of the tables that say what is required.
    known: BTreeSet<String>,
    /// The `default` column where it is one literal (`30s`, `64`, `false`), by key.
    defaults: std::collections::BTreeMap<String, String>,
}

/// Every `<!-- spec: PATH -->` marker in the markdown files under `dir` and the table after it.
fn spec_tables(dir: &Path, tables: &mut Vec<Table>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            spec_tables(&path, tables);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(spec) = line
                .trim()
                .strip_prefix("<!-- spec:")
                .and_then(|s| s.strip_suffix("-->"))
            else {
                continue;
            };
            let place = format!(
                "{}:{}",
                path.strip_prefix(root()).unwrap_or(&path).display(),
                i + 1
            );
            let rows: Vec<&str> = lines[i + 1..]
                .iter()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| l.trim_start().starts_with('|'))
                .copied()
                .collect();
            assert!(rows.len() > 2, "{place}: no table after the spec marker");
            let cells = |row: &str| -> Vec<String> {
                row.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            };
            let header = cells(rows[0]);
            let mut table = Table {
                spec: spec.trim().to_string(),
                place,
                keys: BTreeSet::new(),
                required: BTreeSet::new(),
                says_required: header.iter().any(|h| h == "default" || h == "required"),
                known: BTreeSet::new(),
                defaults: Default::default(),
            };
            for row in &rows[2..] {
                let row = cells(row);
                // The first cell names one key or several (`a`, `b`), each in backticks.
                let keys: Vec<String> = row[0]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                let required = header.iter().zip(&row).any(|(h, c)| {
                    (h == "default" && c.starts_with("required"))
                        || (h == "required" && c.starts_with("yes"))
                });
                let default = header
                    .iter()
                    .zip(&row)
                    .find(|(h, _)| *h == "default")
                    .map(|(_, c)| c.as_str())
                    .and_then(|c| c.strip_prefix('`')?.strip_suffix('`'))
                    .filter(|c| !c.contains('`'));
                for key in keys {
                    if let Some(d) = default {
                        table.defaults.insert(key.clone(), d.to_string());
                    }
                    if required {
                        table.required.insert(key.clone());
                    }
                    table.keys.insert(key);
                }
            }
            tables.push(table);
        }
    }
}

/// Kinds a build without a feature describes only as "not in this build".
fn described_in_this_build(schema: &Value, spec: &str) -> bool {
    schema::section(schema, spec).is_some_and(|s| s.get("properties").is_some())
        || !["from.kafka", "to.kafka", "from.sqs", "to.sqs"]
            .iter()
            .any(|k| spec == *k || spec.starts_with(&format!("{k}.")))
}

#[test]
fn every_option_table_in_the_docs_matches_the_spec() {
    let routes = schema::generate(Kind::Route);
    let mut tables = Vec::new();
    spec_tables(&root().join("docs"), &mut tables);
    let mut problems = Vec::new();
    let mut defaults_compared = 0;
    // A section's keys may be spread over several tables (keys both directions share, say):
    // the tables marked with one section are taken together.
    let mut merged: std::collections::BTreeMap<String, Table> = std::collections::BTreeMap::new();
    for table in tables {
        for spec in table.spec.split_whitespace() {
            let entry = merged.entry(spec.to_string()).or_insert_with(|| Table {
                spec: spec.to_string(),
                place: table.place.clone(),
                keys: BTreeSet::new(),
                required: BTreeSet::new(),
                says_required: false,
                known: BTreeSet::new(),
                defaults: Default::default(),
            });
            entry.defaults.extend(table.defaults.clone());
            if table.says_required {
                entry.known.extend(table.keys.iter().cloned());
            }
            entry.keys.extend(table.keys.iter().cloned());
            entry.required.extend(table.required.iter().cloned());
            entry.says_required |= table.says_required;
        }
    }
    let documented: BTreeSet<String> = merged.keys().cloned().collect();
    for table in merged.values() {
        if !described_in_this_build(&routes, &table.spec) {
            continue;
        }
        let Some(section) = schema::section(&routes, &table.spec) else {
            problems.push(format!(
                "{}: `{}` names no section of a route file",
                table.place, table.spec
            ));
            continue;
        };
        let (keys, required) = schema::keys(section);
        let keys: BTreeSet<String> = keys.into_iter().collect();
        let required: BTreeSet<String> = required.into_iter().collect();
        // A row may name a key inside a key (`auth.password`, `rules[].when`): the outer key
        // is the section's, the rest must exist below it.
        let mut listed = BTreeSet::new();
        for key in &table.keys {
            let path: Vec<&str> = key.split('.').map(|k| k.trim_end_matches("[]")).collect();
            listed.insert(path[0].to_string());
            if let [outer @ .., last] = path.as_slice() {
                if outer.is_empty() {
                    continue;
                }
                let inner = format!("{}.{}", table.spec, outer.join("."));
                let found = schema::section(&routes, &inner)
                    .is_some_and(|s| schema::keys(s).0.iter().any(|k| k == last));
                if !found {
                    problems.push(format!(
                        "{}: the table of `{}` lists `{key}`, which the spec has not",
                        table.place, table.spec
                    ));
                }
            }
        }
        for (key, said) in &table.defaults {
            // A default of nothing (`null`) is one the adapter works out; the docs say how.
            let Some(default) = section
                .get("properties")
                .and_then(|p| p.get(key))
                .and_then(|p| p.get("default"))
                .filter(|d| !d.is_null())
            else {
                continue;
            };
            let spec = match default {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            defaults_compared += 1;
            let said_value: Option<Value> = serde_yaml::from_str(said).ok();
            if spec != *said && said_value.as_ref() != Some(default) {
                problems.push(format!(
                    "{}: the table of `{}` gives `{key}` the default `{said}`; the spec's is `{spec}`",
                    table.place, table.spec
                ));
            }
        }
        let table_required: BTreeSet<String> = table
            .required
            .iter()
            .filter(|k| !k.contains('.'))
            .cloned()
            .collect();
        let extra: Vec<_> = listed.difference(&keys).collect();
        let missing: Vec<_> = keys.difference(&listed).collect();
        if !extra.is_empty() {
            problems.push(format!(
                "{}: the table of `{}` lists {extra:?}, which the spec has not",
                table.place, table.spec
            ));
        }
        if !missing.is_empty() {
            problems.push(format!(
                "{}: the table of `{}` lacks {missing:?}: add a row for each",
                table.place, table.spec
            ));
        }
        let said: Vec<_> = table_required
            .symmetric_difference(&required)
            .filter(|k| table.known.contains(*k))
            .collect();
        if !said.is_empty() {
            problems.push(format!(
                "{}: the table of `{}` says required/optional wrongly for {said:?} (required by the spec: {required:?})",
                table.place, table.spec
            ));
        }
    }
    // Every adapter and step kind has its table.
    for (list, of) in [
        ("from", "InboundConfig"),
        ("to", "OutboundConfig"),
        ("steps", "StepConfig"),
    ] {
        let variants = routes["$defs"][of]["oneOf"]
            .as_array()
            .or_else(|| routes["$defs"][of]["anyOf"].as_array())
            .unwrap_or_else(|| panic!("{of} is an enum of kinds"));
        for variant in variants {
            let kinds: Vec<String> = match variant.get("properties").and_then(Value::as_object) {
                Some(p) => p.keys().cloned().collect(),
                None => variant["enum"]
                    .as_array()
                    .map(|e| {
                        e.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            for kind in kinds {
                let spec = format!("{list}.{kind}");
                if kind == "endpoint" || documented.contains(&spec) {
                    continue;
                }
                problems.push(format!(
                    "`{spec}` has no option table in docs/ (a table after `<!-- spec: {spec} -->`)"
                ));
            }
        }
    }
    assert!(
        merged.len() >= 50 && defaults_compared >= 100,
        "only {} sections and {defaults_compared} defaults compared",
        merged.len()
    );
    assert!(
        problems.is_empty(),
        "docs/ and the spec disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
#[cfg(all(feature = "kafka", feature = "sqs"))]
fn the_schemas_in_the_repository_are_what_switchyard_schema_prints() {
    for kind in [Kind::Route, Kind::Endpoint] {
        let path = root().join("schema").join(kind.file_name());
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == schema::to_text(kind),
            "{} is not what this build prints: run `cargo run --features kafka,sqs -- schema --write schema`",
            path.display()
        );
    }
}
