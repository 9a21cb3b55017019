//! Routes: a route file ([`file`]) loaded, checked and compiled into a runnable [`Route`].
//!
//! A route file holds one route: `id`, `description`, `from` (one inbound adapter), `steps`
//! (in order) and `to` (the destinations). Every adapter and step is written `kind: { options }`,
//! which maps onto the closed enums [`InboundConfig`], `StepConfig` and [`OutboundConfig`].
//!
//! Loading goes read → resolve named endpoints ([`endpoints`]) → `check` (what needs nothing
//! built) → `compile` (steps, scripts, rules). Parsing lives in [`crate::config::yaml`]; checks
//! across the set of routes live here ([`load_all`]); the JSON Schema of the file is
//! [`schema`]'s. Every problem is a [`Diagnostic`] naming `file:line:column`.

mod check;
mod compile;
pub mod endpoints;
pub mod file;
pub mod schema;

pub use file::{DedupeConfig, DeliveryPolicy, OnError, RouteFile, StepPolicy, ThrottleConfig};

use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::OutboundConfig;
use crate::config::{yaml, Diagnostic};
use crate::keys::{Dedupe, Index};
use crate::routing::Router;
use crate::steps::split::Split;
use crate::steps::{BuildContext, BuiltStep};
use crate::store::DeliveryKind;
use endpoints::Endpoints;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a destination is for.
#[derive(Debug, Clone)]
pub struct DestinationSpec {
    /// `to[0]`, `route.rules[1].to[0]`, `route.otherwise[0]`, `dead_letter`, `wire_tap[0]`.
    pub name: String,
    pub kind: DeliveryKind,
    pub config: OutboundConfig,
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
    /// Every destination: main ones, the dead letter, wire taps.
    pub destinations: Vec<DestinationSpec>,
    pub router: Arc<Router>,
    pub on_error: OnError,
    pub retention: crate::store::Retention,
    /// Compiled `index:` expressions.
    pub index: Arc<Index>,
    /// The compiled `dedupe:` key.
    pub dedupe: Option<Arc<Dedupe>>,
    pub throttle: Option<ThrottleConfig>,
    pub concurrency: usize,
    /// The first step, when it is a split: adapters that read streams (files) split while
    /// they read, so a large input is never loaded whole.
    pub split_first: Option<Arc<Split>>,
    /// The route's `aggregate` step (at most one) and its place: its aggregator combines
    /// completed groups, which carry on from the step after it.
    pub aggregate: Option<(usize, Arc<crate::steps::aggregate::Aggregate>)>,
    /// What its components were built with; the engine adds the listening sockets when it
    /// builds the adapters.
    pub context: BuildContext,
}

impl Route {
    pub fn dead_letter(&self) -> Option<&str> {
        self.destinations
            .iter()
            .find(|d| d.kind == DeliveryKind::DeadLetter)
            .map(|d| d.name.as_str())
    }

    pub fn wire_taps(&self) -> Vec<String> {
        self.destinations
            .iter()
            .filter(|d| d.kind == DeliveryKind::WireTap)
            .map(|d| d.name.clone())
            .collect()
    }
}

/// Reads one route file and makes it runnable: parse (with positions), resolve the named
/// endpoints it uses ([`endpoints`]), [`check`] what needs no building, then [`compile`] its
/// steps, scripts and rules. Every problem found is returned, each at `file:line:column`.
pub fn load_file(path: &Path, endpoints: &Endpoints) -> Result<Route, Vec<Diagnostic>> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read route file: {e}"),
        }]
    })?;
    let src = Source {
        path,
        text: &source,
    };
    let mut file: RouteFile = yaml::parse(path, &source).map_err(|d| vec![d])?;
    let used = endpoints
        .resolve_route(&mut file, path, &source)
        .map_err(|d| vec![d])?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = file.id.clone().unwrap_or(stem);
    let mut cx = BuildContext::new(path.parent().map(Path::to_path_buf).unwrap_or_default());
    cx.databases = Some(crate::adapters::database::enrich_queries());
    let problems = check::check(&file, &id, &src, &cx);
    // The endpoints a route uses are part of its version: changing one reloads the route.
    let version = version_hash(
        std::iter::once(source.as_str())
            .chain(used.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n---\n")
            .as_bytes(),
    );
    compile::compile(file, id, version, &src, cx, problems)
}

/// A route file's text and where it came from, to place problems in it.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// A problem at `(line, column)`, or at the start when the place is unknown.
    pub fn at(&self, place: Option<(usize, usize)>, message: String) -> Diagnostic {
        let (line, column) = place.unwrap_or((1, 1));
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// A problem at the first place `key` is written.
    pub fn at_key(&self, key: &str, message: String) -> Diagnostic {
        self.at(yaml::locate_key(self.text, key), message)
    }
}

/// The route files in `dir` (`*.yaml`, `*.yml`, not hidden, not `*.test.yaml`), sorted by name.
pub fn route_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // A route's test file (`NAME.test.yaml`) may sit beside it: it is not a route.
        let skipped = name.is_some_and(|n| {
            n.starts_with('.') || n.ends_with(".test.yaml") || n.ends_with(".test.yml")
        });
        if is_yaml && path.is_file() && !skipped {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every given route file; returns the routes and every problem found, including
/// problems between files (two routes with one id, two routes watching one directory).
pub fn load_all(files: &[PathBuf], endpoints: &Endpoints) -> (Vec<Route>, Vec<Diagnostic>) {
    let mut routes: Vec<Route> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match load_file(file, endpoints) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_routes_run_their_steps_as_wide_as_the_broker_window() {
        let dir = tempfile::tempdir().unwrap();
        let load = |name: &str, yaml: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, yaml).unwrap();
            load_file(&path, &Endpoints::default()).unwrap().concurrency
        };
        let to = "to:\n  - file: { path: out }\n";
        let amqp = "from:\n  amqp: { url: \"amqp://h/%2f\", queue: q, prefetch: 200 }\n";
        let mqtt = "from:\n  mqtt: { url: \"mqtt://h\", client_id: c, topics: [t] }\n";
        assert_eq!(load("a.yaml", &format!("{amqp}{to}")), 200);
        assert_eq!(load("m.yaml", &format!("{mqtt}{to}")), 64);
        assert_eq!(load("c.yaml", &format!("{amqp}concurrency: 8\n{to}")), 8);
        let small = "from:\n  amqp: { url: \"amqp://h/%2f\", queue: q, prefetch: 1 }\n";
        assert_eq!(load("s.yaml", &format!("{small}{to}")), 4);
        let http = "from:\n  http: { listen: \"127.0.0.1:0\" }\n";
        assert_eq!(load("h.yaml", &format!("{http}{to}")), 4);
    }
}
