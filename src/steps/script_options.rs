//! The options every scripted step shares — its lookup tables and its sandbox limits — and
//! what they build: the step's script engine, its scripts and its expressions.
//!
//! A scripted step declares its config with [`scripted_step_config!`], which adds the two
//! shared fields to the step's own. serde's `flatten` would share one struct, but it turns
//! `deny_unknown_fields` off for the whole step (a misspelt option would pass unnoticed), and
//! a nested key (`sandbox: { … }`) would change every route file; so the two fields are
//! declared here, once, and spliced into each step's struct, keeping one flat, strict spec.

use super::{BuildContext, BuildError, ScriptPosition};
use crate::script::{lookup::Tables, Limits, Script};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Declares a scripted step's config struct: the step's own fields, then `lookups` and
/// `limits`, and `script_options()` to reach them.
macro_rules! scripted_step_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
            /// Lookup tables for `lookup(...)` in this step's scripts and expressions: name to
            /// a `.csv` or `.yaml` file, relative to the route file.
            #[serde(default)]
            pub lookups: ::std::collections::BTreeMap<String, ::std::path::PathBuf>,
            /// Sandbox limits for this step's scripts and expressions.
            #[serde(default)]
            pub limits: $crate::script::Limits,
        }

        impl $name {
            /// This step's lookup tables and sandbox limits.
            pub fn script_options(&self) -> $crate::steps::script_options::ScriptOptions<'_> {
                $crate::steps::script_options::ScriptOptions {
                    lookups: &self.lookups,
                    limits: &self.limits,
                }
            }
        }
    };
}
pub(crate) use scripted_step_config;

/// A scripted step's `lookups` and `limits`, borrowed from its config.
#[derive(Clone, Copy)]
pub struct ScriptOptions<'a> {
    pub lookups: &'a BTreeMap<String, PathBuf>,
    pub limits: &'a Limits,
}

impl ScriptOptions<'_> {
    /// The script engine for the step, with its lookup tables loaded (relative to the route
    /// file) and its limits set.
    pub fn engine(&self, cx: &BuildContext) -> Result<Arc<rhai::Engine>, BuildError> {
        let tables = Tables::load(self.lookups, &cx.dir).map_err(BuildError::new)?;
        Ok(Arc::new(crate::script::engine(
            self.limits,
            Arc::new(tables),
        )))
    }

    /// Compiles a script from `script:` (inline) or `script_file:` (relative to the route
    /// file); at most one may be given, `None` when neither is. Errors point at the script's
    /// line and column.
    pub fn script(
        &self,
        engine: &Arc<rhai::Engine>,
        inline: Option<&str>,
        file: Option<&Path>,
        cx: &BuildContext,
    ) -> Result<Option<Script>, BuildError> {
        let (source, file) = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(BuildError::new(
                    "give either `script` or `script_file`, not both",
                ))
            }
            (Some(s), None) => (s.to_string(), None),
            (None, Some(f)) => {
                let path = cx.resolve(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    BuildError::new(format!("cannot read script_file {}: {e}", path.display()))
                })?;
                (text, Some(path))
            }
            (None, None) => return Ok(None),
        };
        Script::compile(engine.clone(), self.limits, &source)
            .map(Some)
            .map_err(|e| BuildError {
                message: format!("script syntax error: {}", e.message),
                script: Some(ScriptPosition {
                    file,
                    line: e.line,
                    column: e.column,
                }),
            })
    }

    /// Compiles one expression written in the route file; `what` names the option it came
    /// from in the error (`key`, `fields.total`), or is empty when the step has only one.
    pub fn expression(
        &self,
        engine: &Arc<rhai::Engine>,
        what: &str,
        source: &str,
    ) -> Result<Script, BuildError> {
        Script::compile_expression(engine.clone(), self.limits, source).map_err(|e| BuildError {
            message: if what.is_empty() {
                format!("expression error: {}", e.message)
            } else {
                format!("{what}: expression error: {}", e.message)
            },
            script: Some(ScriptPosition {
                file: None,
                line: e.line,
                column: e.column,
            }),
        })
    }
}

/// The engine for scripts outside any step (routing rules, search fields, database
/// parameters): no lookup tables, the default limits.
pub fn plain_engine() -> Arc<rhai::Engine> {
    Arc::new(crate::script::engine(
        &Limits::default(),
        Arc::new(Tables::default()),
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::yaml::parse_str;
    use crate::steps::StepConfig;

    #[test]
    fn every_scripted_step_takes_lookups_and_limits_and_refuses_a_misspelt_one() {
        for step in [
            "transform: { script: 'body', lookups: {}, limits: { timeout: 2s } }",
            "validate: { script: 'true', lookups: {}, limits: { timeout: 2s } }",
            "filter: { keep: 'true', lookups: {}, limits: { timeout: 2s } }",
            "map: { fields: { a: b }, lookups: {}, limits: { timeout: 2s } }",
            "aggregate: { key: 'body.k', count: 2, lookups: {}, limits: { timeout: 2s } }",
            "enrich: { url: 'http://127.0.0.1:1/', into: x, lookups: {}, limits: { timeout: 2s } }",
        ] {
            parse_str::<StepConfig>(step).unwrap_or_else(|e| panic!("{step}: {e}"));
            // The shared fields are spliced in, not flattened: the step stays strict.
            let misspelt = step.replace("lookups:", "lookup:");
            let e = parse_str::<StepConfig>(&misspelt).expect_err(&misspelt);
            assert!(
                e.to_string()
                    .contains("unknown key `lookup`; did you mean `lookups`?"),
                "{misspelt}: {e}"
            );
        }
    }
}
