//! Routes: a route file ([`file`]) loaded, checked and compiled into a runnable [`Route`].
//!
//! A route file holds one route: `id`, `description`, `from` (one inbound adapter), `steps`
//! (in order) and `to` (the destinations). Every adapter and step is written `kind: { options }`,
//! which maps onto the closed enums [`InboundConfig`], [`StepConfig`] and [`OutboundConfig`].
//! Parsing lives in [`crate::config::yaml`]; checks that need the whole route or the whole set
//! of routes live here. Every problem is a [`Diagnostic`] naming `file:line:column`.

pub mod endpoints;
pub mod file;
pub mod schema;

pub use file::{DedupeConfig, DeliveryPolicy, OnError, RouteFile, StepPolicy, ThrottleConfig};

use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::{DeliveryOrder, OutboundConfig};
use crate::config::{yaml, Diagnostic};
use crate::keys::{Dedupe, Index};
use crate::routing::{self, Router};
use crate::steps::split::Split;
use crate::steps::{BuildContext, BuildError, BuiltStep, StepConfig};
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

/// Reads and validates one route file, resolving named endpoints from `endpoints`.
pub fn load_file(path: &Path, endpoints: &Endpoints) -> Result<Route, Vec<Diagnostic>> {
    let at_start = |message: String| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message,
    };
    let source = std::fs::read_to_string(path)
        .map_err(|e| vec![at_start(format!("cannot read route file: {e}"))])?;
    let mut file: RouteFile = yaml::parse(path, &source).map_err(|d| vec![d])?;
    let mut used = Vec::new();
    {
        let mut resolve = || -> Result<(), Diagnostic> {
            endpoints.resolve_inbound(&mut file.from, path, &source, &mut used)?;
            let routing_to = file.route.iter_mut().flat_map(|r| {
                r.rules
                    .iter_mut()
                    .flat_map(|rule| rule.to.iter_mut())
                    .chain(r.otherwise.iter_mut())
            });
            for cfg in file
                .to
                .iter_mut()
                .chain(routing_to)
                .chain(file.dead_letter.iter_mut())
                .chain(file.wire_tap.iter_mut())
            {
                endpoints.resolve_outbound(cfg, path, &source, &mut used)?;
            }
            for (i, step) in file.steps.iter_mut().enumerate() {
                if let StepConfig::Enrich(enrich) = step {
                    enrich_endpoint(enrich, i, endpoints, path, &source, &mut used)?;
                }
            }
            Ok(())
        };
        resolve().map_err(|d| vec![d])?;
    }

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
    // An HTTP route in `reply` mode may only answer its callers (a transformation service):
    // its messages end `delivered` with the reply.
    let replies = matches!(&file.from, InboundConfig::Http(h)
        if h.response == crate::adapters::inbound::http::ResponseMode::Reply);
    if file.to.is_empty() && file.route.is_none() && !replies {
        problems.push(locate(
            "to",
            "the route has no destination: add outbound adapters under `to`, or rules under `route` (only an HTTP route with `response: reply` may have none: it answers its callers)".into(),
        ));
    }
    let wants_dead_letter = [file.on_error.validation, file.on_error.transform]
        .contains(&StepPolicy::DeadLetter)
        || file.on_error.delivery == DeliveryPolicy::DeadLetter;
    if wants_dead_letter && file.dead_letter.is_none() {
        problems.push(locate(
            "on_error",
            "`on_error` says `dead_letter`, but the route has no `dead_letter` destination".into(),
        ));
    }
    if let Err(e) = file.from.check() {
        problems.push(locate("from", format!("from.{}: {e}", file.from.kind())));
    }
    if file.concurrency == Some(0) {
        problems.push(locate(
            "concurrency",
            "`concurrency` must be at least 1".into(),
        ));
    }
    let mut cx = BuildContext::new(path.parent().map(Path::to_path_buf).unwrap_or_default());
    cx.databases = Some(crate::adapters::database::enrich_queries());
    let aggregates: Vec<usize> = file
        .steps
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, StepConfig::Aggregate(_)))
        .map(|(i, _)| i)
        .collect();
    if let [_, second, ..] = aggregates[..] {
        let (line, column) = yaml::locate_list_item(&source, "steps", second).unwrap_or((1, 1));
        problems.push(Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message: format!(
                "steps[{second}].aggregate: a route has at most one `aggregate` step; combine in one, or pass the combined messages on to another route"
            ),
        });
    }
    let mut steps = Vec::new();
    for (i, config) in file.steps.iter().enumerate() {
        let name = format!("steps[{i}].{}", config.kind());
        match config.build(&cx) {
            Ok(step) => steps.push(BuiltStep {
                name,
                step,
                class: config.class(),
            }),
            Err(e) => problems.push(step_diagnostic(path, &source, i, &name, e)),
        }
    }
    let mut index = Index::default();
    let mut dedupe = None;
    if !file.index.is_empty() || file.dedupe.is_some() {
        let limits = crate::script::Limits::default();
        match crate::steps::script_engine(&Default::default(), &limits, &cx) {
            Ok(engine) => {
                let compile = |expr: &str| {
                    crate::script::Script::compile_expression(engine.clone(), &limits, expr)
                        .map_err(|e| e.message)
                };
                for (name, expr) in &file.index {
                    let compiled = expr
                        .as_str()
                        .ok_or_else(|| "write the expression as a string".to_string())
                        .and_then(compile);
                    match compiled {
                        Ok(s) => index.0.push((name.clone(), s)),
                        Err(e) => {
                            let (line, column) = yaml::locate_key(&source, name).unwrap_or((1, 1));
                            problems.push(Diagnostic {
                                file: path.to_path_buf(),
                                line,
                                column,
                                message: format!("index.{name}: {e}"),
                            });
                        }
                    }
                }
                if let Some(d) = &file.dedupe {
                    match compile(&d.key) {
                        Ok(key) => {
                            dedupe = Some(Arc::new(Dedupe {
                                key,
                                source: d.key.clone(),
                                window: d.window.0,
                            }))
                        }
                        Err(e) => {
                            let (line, column) =
                                yaml::locate_in_section(&source, "dedupe", "key").unwrap_or((1, 1));
                            problems.push(Diagnostic {
                                file: path.to_path_buf(),
                                line,
                                column,
                                message: format!("dedupe.key: {e}"),
                            });
                        }
                    }
                }
            }
            Err(e) => problems.push(Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                message: e.message,
            }),
        }
    }
    let router = match Router::build(&file.to, file.route.as_ref(), &cx) {
        Ok(r) => Some(Arc::new(r)),
        Err((name, e)) => {
            let message = format!("{name}: {}", e.message);
            let (line, column) = yaml::locate_key(&source, "when")
                .filter(|_| name.ends_with(".when"))
                .or_else(|| yaml::locate_key(&source, "route"))
                .unwrap_or((1, 1));
            problems.push(Diagnostic {
                file: path.to_path_buf(),
                line,
                column,
                message,
            });
            None
        }
    };
    let mut destinations: Vec<DestinationSpec> =
        routing::destination_names(&file.to, file.route.as_ref())
            .into_iter()
            .map(|(name, config)| DestinationSpec {
                name,
                kind: DeliveryKind::Main,
                config,
            })
            .collect();
    if let Some(dl) = &file.dead_letter {
        destinations.push(DestinationSpec {
            name: "dead_letter".into(),
            kind: DeliveryKind::DeadLetter,
            config: dl.clone(),
        });
    }
    for (i, tap) in file.wire_tap.iter().enumerate() {
        destinations.push(DestinationSpec {
            name: format!("wire_tap[{i}]"),
            kind: DeliveryKind::WireTap,
            config: tap.clone(),
        });
    }
    for d in &destinations {
        if let Err(e) = d.config.check() {
            let key = d.name.split(['[', '.']).next().unwrap_or("to");
            problems.push(locate(key, format!("{}: {e}", d.name)));
        }
    }
    let fifo = destinations
        .iter()
        .any(|d| d.config.delivery().ordering == Some(DeliveryOrder::Fifo));
    if !problems.is_empty() {
        return Err(problems);
    }
    let Some(router) = router else {
        return Err(problems);
    };
    // A broker inbound keeps up to its window of deliveries unacknowledged until they are
    // committed; steps narrower than that window would hold the broker back, so by default
    // they run as wide as the window.
    let concurrency = file
        .concurrency
        .unwrap_or_else(|| file.from.in_flight().map_or(4, |window| window.max(4)));
    Ok(Route {
        id,
        description: file.description,
        // The endpoints a route uses are part of its version: changing one reloads the route.
        version: version_hash(
            std::iter::once(source.as_str())
                .chain(used.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("\n---\n")
                .as_bytes(),
        ),
        file: path.to_path_buf(),
        from: file.from,
        steps,
        destinations,
        router,
        split_first: match file.steps.first() {
            Some(StepConfig::Split(c)) => c.build().ok().map(Arc::new),
            _ => None,
        },
        aggregate: aggregates.first().and_then(|&i| match &file.steps[i] {
            StepConfig::Aggregate(c) => c.build(&cx).ok().map(|a| (i, Arc::new(a))),
            _ => None,
        }),
        on_error: file.on_error,
        retention: file.retention,
        index: Arc::new(index),
        dedupe,
        throttle: file.throttle,
        // Strict FIFO delivery needs the steps to finish in arrival order.
        concurrency: if fifo { 1 } else { concurrency },
    })
}

/// An `enrich` step's `endpoint: NAME` becomes the backend it names: an `http` endpoint's URL
/// and headers, a `tcp` endpoint's address, framing and charset, or a `database` endpoint's
/// URL for the step's `query`.
fn enrich_endpoint(
    enrich: &mut crate::steps::enrich::Config,
    index: usize,
    endpoints: &Endpoints,
    path: &Path,
    source: &str,
    used: &mut Vec<String>,
) -> Result<(), Diagnostic> {
    use crate::adapters::outbound::OutboundConfig;
    let Some(name) = enrich.endpoint.take() else {
        return Ok(());
    };
    let problem = |message: String| {
        let (line, column) = yaml::locate_list_item(source, "steps", index).unwrap_or((1, 1));
        Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            message: format!("steps[{index}].enrich: {message}"),
        }
    };
    if enrich.url.is_some() || enrich.tcp.is_some() {
        return Err(problem(format!(
            "give `endpoint: {name}` or the backend itself (`url`, `tcp`), not both"
        )));
    }
    let mut cfg = OutboundConfig::Endpoint(name.clone());
    endpoints.resolve_outbound(&mut cfg, path, source, used)?;
    match cfg {
        OutboundConfig::Http(h) => {
            enrich.url = Some(h.url.source().to_string());
            for (k, v) in h.headers {
                enrich.headers.entry(k).or_insert_with(|| v.source().to_string());
            }
        }
        OutboundConfig::Tcp(t) => {
            enrich.tcp = Some(crate::steps::enrich::tcp::Config {
                host: t.host,
                port: t.port,
                framing: t.framing,
                charset: t.charset,
                max_frame: t.max_frame,
            });
        }
        OutboundConfig::Database(d) => match &mut enrich.query {
            Some(q) if q.database.is_none() => q.database = Some(d.url.to_string()),
            Some(_) => {
                return Err(problem(format!(
                    "give `endpoint: {name}` or `query.database`, not both"
                )))
            }
            None => {
                return Err(problem(format!(
                    "endpoint `{name}` is a database: say what to ask it in `query: {{ sql: ... }}`"
                )))
            }
        },
        other => {
            return Err(problem(format!(
                "endpoint `{name}` is a `{}` adapter; enrich asks `http`, `tcp` and `database` endpoints",
                other.kind()
            )))
        }
    }
    Ok(())
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
