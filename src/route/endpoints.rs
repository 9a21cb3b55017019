//! Named endpoints: an adapter written once in `adapters/NAME.yaml` (a lab system's host,
//! port, charset and timeouts, say) and used by name from any route: `- endpoint: NAME` in
//! `to:`, or `from: { endpoint: NAME }`. The definition is the same `kind: { options }` a
//! route would write inline. A route's version includes the endpoints it uses, so changing
//! an endpoint reloads every route that uses it.

use crate::adapters::inbound::InboundConfig;
use crate::adapters::outbound::OutboundConfig;
use crate::config::{did_you_mean, yaml, Diagnostic};
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
}
