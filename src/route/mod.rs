//! The route model: what a route file says, loaded and validated.
//!
//! A route file holds one route: `id`, `description`, `from` (one inbound adapter), `steps`
//! (in order) and `to` (the destinations). Every adapter and step is written `kind: { options }`,
//! which maps onto the closed enums [`InboundConfig`], [`StepConfig`] and [`OutboundConfig`].
//! Parsing lives in [`yaml`]; checks that need the whole route or the whole set of routes live
//! here. Every problem is a [`Diagnostic`] naming `file:line:column`.

pub mod values;
pub mod yaml;

use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::OutboundConfig;
use crate::steps::{BuildContext, BuildError, BuiltStep, StepConfig};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What a route file contains. Every key is documented in `docs/routes.md`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The route's id; defaults to the file name without its extension.
    #[serde(default)]
    pub id: Option<String>,
    /// Free text for people reading the route list.
    #[serde(default)]
    pub description: Option<String>,
    /// The one inbound adapter that feeds this route.
    pub from: InboundConfig,
    /// Steps run in order on every message.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Destinations: each gets its own tracked, retried delivery of the processed message.
    pub to: Vec<OutboundConfig>,
    /// How many messages of this route run through the steps at the same time (default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// A loaded, validated route.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub description: Option<String>,
    /// Hash of the file's bytes: the version stored with every message the route receives.
    pub version: String,
    pub file: PathBuf,
    pub from: InboundConfig,
    /// The steps, built: scripts compiled, schemas and tables loaded.
    pub steps: Vec<BuiltStep>,
    pub to: Vec<OutboundConfig>,
    pub concurrency: usize,
}

impl Route {
    /// The stable name of destination `index`, as recorded with its deliveries.
    pub fn destination_name(index: usize) -> String {
        format!("to[{index}]")
    }
}

/// One problem found in a route file, printed as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Reads and validates one route file.
pub fn load_file(path: &Path) -> Result<Route, Vec<Diagnostic>> {
    let at_start = |message: String| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message,
    };
    let source = std::fs::read_to_string(path)
        .map_err(|e| vec![at_start(format!("cannot read route file: {e}"))])?;
    let file: RouteFile = yaml::parse(path, &source).map_err(|d| vec![d])?;

    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = file.id.clone().unwrap_or(stem);
    let mut problems = Vec::new();
    let locate = |key: &str, message: String| {
        let (line, column) = yaml::locate_key(&source, key).unwrap_or((1, 1));
        Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        problems.push(locate(
            "id",
            format!("route id `{id}` may only contain letters, digits, `-`, `_` and `.`"),
        ));
    }
    if file.to.is_empty() {
        problems.push(locate(
            "to",
            "`to` lists no destination: add at least one outbound adapter".into(),
        ));
    }
    if file.concurrency == Some(0) {
        problems.push(locate(
            "concurrency",
            "`concurrency` must be at least 1".into(),
        ));
    }
    let cx = BuildContext {
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut steps = Vec::new();
    for (i, config) in file.steps.iter().enumerate() {
        let name = format!("steps[{i}].{}", config.kind());
        match config.build(&cx) {
            Ok(step) => steps.push(BuiltStep { name, step }),
            Err(e) => problems.push(step_diagnostic(path, &source, i, &name, e)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Route {
        id,
        description: file.description,
        version: version_hash(source.as_bytes()),
        file: path.to_path_buf(),
        from: file.from,
        steps,
        to: file.to,
        concurrency: file.concurrency.unwrap_or(4),
    })
}

/// Places a step's build error: in the script file, at the script's position inside the
/// route file when the script is inline, or at the step's entry.
fn step_diagnostic(
    path: &Path,
    source: &str,
    index: usize,
    name: &str,
    e: BuildError,
) -> Diagnostic {
    let message = format!("{name}: {}", e.message);
    let step_line = yaml::locate_list_item(source, "steps", index);
    if let Some(pos) = e.script {
        if let Some(file) = pos.file {
            return Diagnostic {
                file,
                line: pos.line,
                column: pos.column,
                message,
            };
        }
        if let Some((line, column)) =
            step_line.and_then(|(l, _)| yaml::locate_inline_script(source, l, pos.line, pos.column))
        {
            return Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                message,
            };
        }
    }
    let (line, column) = step_line.unwrap_or((1, 1));
    Diagnostic {
        file: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// The route files in `dir` (`*.yaml`, `*.yml`, not hidden), sorted by name.
pub fn route_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() && !name.is_some_and(|n| n.starts_with('.')) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every given route file; returns the routes and every problem found, including
/// problems between files (two routes with one id, two routes watching one directory).
pub fn load_all(files: &[PathBuf]) -> (Vec<Route>, Vec<Diagnostic>) {
    let mut routes: Vec<Route> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match load_file(file) {
            Ok(r) => routes.push(r),
            Err(mut d) => problems.append(&mut d),
        }
    }
    let mut ids: HashMap<&str, &Path> = HashMap::new();
    let mut claims: HashMap<String, &Route> = HashMap::new();
    for route in &routes {
        if let Some(first) = ids.insert(&route.id, &route.file) {
            problems.push(diagnostic_at_key(
                route,
                "id",
                format!(
                    "route id `{}` is already used by {}; give one of them another `id`",
                    route.id,
                    first.display()
                ),
            ));
        }
        if let Some(claim) = route.from.claim() {
            if let Some(other) = claims.insert(claim.clone(), route) {
                problems.push(diagnostic_at_key(
                    route,
                    "from",
                    format!(
                        "{claim} is already used by route `{}` ({}); one inbound resource can feed one route",
                        other.id,
                        other.file.display()
                    ),
                ));
            }
        }
    }
    let bad: Vec<PathBuf> = problems.iter().map(|d| d.file.clone()).collect();
    routes.retain(|r| !bad.contains(&r.file));
    (routes, problems)
}

fn diagnostic_at_key(route: &Route, key: &str, message: String) -> Diagnostic {
    let source = std::fs::read_to_string(&route.file).unwrap_or_default();
    let (line, column) = yaml::locate_key(&source, key).unwrap_or((1, 1));
    Diagnostic {
        file: route.file.clone(),
        line,
        column,
        message,
    }
}

/// 64-bit FNV-1a, hex: stable across builds and platforms, enough to tell versions apart.
pub fn version_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names() {
        assert_eq!(did_you_mean("pathh", &["path", "pattern"]), Some("path"));
        assert_eq!(
            did_you_mean("xml_to_jsn", &["xml_to_json", "set_header"]),
            Some("xml_to_json")
        );
        assert_eq!(did_you_mean("zzz", &["path", "pattern"]), None);
    }
}
