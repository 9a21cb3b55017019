//! Named endpoints: an adapter written once in `adapters/NAME.yaml` (a lab system's host,
//! port, charset and timeouts, say) and used by name from any route: `- endpoint: NAME` in
//! `to:`, or `from: { endpoint: NAME }`. The definition is the same `kind: { options }` a
//! route would write inline. A route's version includes the endpoints it uses, so changing
//! an endpoint reloads every route that uses it.

use super::file::RouteFile;
use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::OutboundConfig;
use crate::config::{did_you_mean, yaml, Diagnostic};
use crate::steps::StepConfig;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    defs: BTreeMap<String, (PathBuf, String)>,
}

impl Endpoints {
    /// Reads every `*.yaml` in `dir`; a missing directory means no endpoints.
    pub fn load(dir: &Path) -> Endpoints {
        let mut defs = BTreeMap::new();
        for file in super::route_files(dir).unwrap_or_default() {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Ok(source) = std::fs::read_to_string(&file) {
                defs.insert(name, (file, source));
            }
        }
        Endpoints { defs }
    }

    /// The definition files, for change detection.
    pub fn files(&self) -> impl Iterator<Item = (&PathBuf, &String)> {
        self.defs.values().map(|(f, s)| (f, s))
    }

    fn resolve<T: DeserializeOwned>(
        &self,
        name: &str,
        route_file: &Path,
        route_source: &str,
        used: &mut Vec<String>,
    ) -> Result<T, Diagnostic> {
        let Some((file, source)) = self.defs.get(name) else {
            let (line, column) = yaml::locate_key(route_source, "endpoint").unwrap_or((1, 1));
            let names: Vec<&str> = self.defs.keys().map(String::as_str).collect();
            let hint = did_you_mean(name, &names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(Diagnostic {
                file: route_file.to_path_buf(),
                line,
                column,
                message: format!(
                    "no endpoint named `{name}` in the adapters directory{hint} (known: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            });
        };
        used.push(source.clone());
        yaml::parse(file, source)
    }

    /// Replaces `endpoint: NAME` by its definition; returns the definitions' texts it used.
    pub fn resolve_outbound(
        &self,
        cfg: &mut OutboundConfig,
        route_file: &Path,
        route_source: &str,
        used: &mut Vec<String>,
    ) -> Result<(), Diagnostic> {
        if let OutboundConfig::Endpoint(name) = cfg {
            let resolved: OutboundConfig =
                self.resolve(&name.clone(), route_file, route_source, used)?;
            if let OutboundConfig::Endpoint(inner) = &resolved {
                return Err(Diagnostic {
                    file: route_file.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: format!("endpoint `{name}` refers to another endpoint (`{inner}`); define the adapter itself"),
                });
            }
            *cfg = resolved;
        }
        Ok(())
    }

    pub fn resolve_inbound(
        &self,
        cfg: &mut InboundConfig,
        route_file: &Path,
        route_source: &str,
        used: &mut Vec<String>,
    ) -> Result<(), Diagnostic> {
        if let InboundConfig::Endpoint(name) = cfg {
            let resolved: InboundConfig =
                self.resolve(&name.clone(), route_file, route_source, used)?;
            if matches!(resolved, InboundConfig::Endpoint(_)) {
                return Err(Diagnostic {
                    file: route_file.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "endpoint `{name}` refers to another endpoint; define the adapter itself"
                    ),
                });
            }
            *cfg = resolved;
        }
        Ok(())
    }

    /// Replaces every `endpoint: NAME` of a route file (its inbound, its destinations, its
    /// `enrich` steps) by the definition; returns the definitions' texts, which are part of the
    /// route's version.
    pub fn resolve_route(
        &self,
        file: &mut RouteFile,
        path: &Path,
        source: &str,
    ) -> Result<Vec<String>, Diagnostic> {
        let mut used = Vec::new();
        self.resolve_inbound(&mut file.from, path, source, &mut used)?;
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
            self.resolve_outbound(cfg, path, source, &mut used)?;
        }
        for (i, step) in file.steps.iter_mut().enumerate() {
            if let StepConfig::Enrich(enrich) = step {
                enrich_endpoint(enrich, i, self, path, source, &mut used)?;
            }
        }
        Ok(used)
    }
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
