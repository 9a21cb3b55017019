//! The layer map of docs/architecture.md, enforced on the source: a module uses modules of its
//! own layer and of the layers below it, never one above, and no modules use each other in a
//! circle. A new top-level module must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// From the ground floor up; the order within a layer means nothing.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground floor",
        &[
            "config",
            "tls",
            "metrics",
            "codec",
            "listeners",
            "secrets",
            "http_answer",
        ],
    ),
    (
        "messages and their formats",
        &[
            "message",
            "hl7",
            "convert",
            "template",
            "throttle",
            "telemetry",
        ],
    ),
    ("store", &["store"]),
    ("scripts", &["script", "keys"]),
    ("steps", &["steps"]),
    ("adapters", &["adapters"]),
    ("routes", &["routing", "route"]),
    ("engine", &["delivery", "aggregator", "engine"]),
    ("running", &["reload", "settings"]),
    (
        "operators",
        &[
            "admin",
            "cli",
            "message_views",
            "tail",
            "replay_diff",
            "test_runner",
            "fuzzing",
        ],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// Every top-level module each top-level module names through `crate::`, outside comments
/// and its unit tests; with one file that does, for the message.
fn uses() -> BTreeMap<String, BTreeMap<String, String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let module = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for (i, _) in line.match_indices("crate::") {
                    let used: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !used.is_empty() && used != module {
                        out.entry(module.clone())
                            .or_default()
                            .entry(used)
                            .or_insert_with(|| rel.clone());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_module_has_a_layer_and_uses_none_above_its_own() {
    let uses = uses();
    let mut problems = Vec::new();
    for (module, used) in &uses {
        let Some(mine) = layer_of(module) else {
            problems.push(format!(
                "`{module}` has no layer: add it to LAYERS and to docs/architecture.md"
            ));
            continue;
        };
        for (other, file) in used {
            match layer_of(other) {
                Some(theirs) if theirs > mine => problems.push(format!(
                    "src/{file}: `{module}` ({}) uses `{other}` ({}), a layer above it",
                    LAYERS[mine].0, LAYERS[theirs].0
                )),
                None if uses.contains_key(other) => {} // reported as having no layer
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_modules_use_each_other_in_a_circle() {
    let uses = uses();
    // Upward uses are the other test's; a circle left is within one layer.
    fn visit(
        m: &str,
        uses: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for other in uses.get(m).into_iter().flat_map(|u| u.keys()) {
            if let Some(c) = visit(other, uses, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in uses.keys() {
        if let Some(circle) = visit(m, &uses, &mut Vec::new(), &mut done) {
            panic!("modules use each other in a circle: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_layer_map_in_the_docs_is_this_one() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    for (name, modules) in LAYERS {
        let line = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("docs/architecture.md has no row for the layer `{name}`"));
        for m in *modules {
            assert!(
                line.contains(&format!("`{m}`")),
                "docs/architecture.md: the layer `{name}` does not list `{m}`: {line}"
            );
        }
    }
}

/// serde_yaml is reached through `config::yaml` only (`parse`, `parse_str`, `parse_data`,
/// `Value`), so route files, snippets and data files are read one way and the YAML crate could
/// be swapped in one file.
#[test]
fn only_config_yaml_names_the_yaml_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("config/yaml.rs")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .any(|l| l.split("//").next().unwrap().contains("serde_yaml"))
            {
                found.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "serde_yaml named outside src/config/yaml.rs (use config::yaml): {found:?}"
    );
}
