//! `filter`: drops messages on purpose. The message ends in state `filtered` with the reason
//! recorded — never silently.
//!
//! ```yaml
//! - filter:
//!     drop: 'body.type == "TEST"'          # or `keep: ...`, exactly one of the two
//!     reason: "test orders are not forwarded"
//! ```

use super::{script_engine, BuildContext, BuildError, Flow, ScriptPosition, Step, StepError};
use crate::message::Message;
use crate::script::{body_to_dynamic, Limits, Script};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FilterStep")]
pub struct Config {
    /// Keep the message when this expression is true; drop it otherwise.
    #[serde(default)]
    pub keep: Option<String>,
    /// Drop the message when this expression is true.
    #[serde(default)]
    pub drop: Option<String>,
    /// The reason recorded with a dropped message (default: the expression).
    #[serde(default)]
    pub reason: Option<String>,
    /// Lookup tables for the expression, as in `transform`.
    #[serde(default)]
    pub lookups: BTreeMap<String, PathBuf>,
    /// Sandbox limits for the expression.
    #[serde(default)]
    pub limits: Limits,
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Filter, BuildError> {
        let (expr, drop_when_true) = match (&self.keep, &self.drop) {
            (Some(k), None) => (k, false),
            (None, Some(d)) => (d, true),
            _ => return Err(BuildError::new("give exactly one of `keep` or `drop`")),
        };
        let engine = script_engine(&self.lookups, &self.limits, cx)?;
        let script =
            Script::compile_expression(engine, &self.limits, expr).map_err(|e| BuildError {
                message: format!("expression error: {}", e.message),
                script: Some(ScriptPosition {
                    file: None,
                    line: e.line,
                    column: e.column,
                }),
            })?;
        let reason = self.reason.clone().unwrap_or_else(|| {
            if drop_when_true {
                format!("dropped because `{}` is true", expr.trim())
            } else {
                format!("dropped because `{}` is not true", expr.trim())
            }
        });
        Ok(Filter {
            script,
            drop_when_true,
            reason,
        })
    }
}

pub struct Filter {
    script: Script,
    drop_when_true: bool,
    reason: String,
}

impl Step for Filter {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        self.control(msg).map(|_| ())
    }

    fn control(&self, msg: &mut Message) -> Result<Flow, StepError> {
        let body = body_to_dynamic(msg)?;
        let (value, _) = self
            .script
            .run(msg, body)
            .map_err(|e| StepError(e.to_string()))?;
        let Some(truth) = value.clone().try_cast::<bool>() else {
            return Err(StepError(format!(
                "the filter expression gave {} `{value}`, not true or false",
                value.type_name()
            )));
        };
        Ok(if truth == self.drop_when_true {
            Flow::Filter(self.reason.clone())
        } else {
            Flow::Continue
        })
    }
}
