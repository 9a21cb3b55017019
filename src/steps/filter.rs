//! `filter`: drops messages on purpose. The message ends in state `filtered` with the reason
//! recorded — never silently.
//!
//! ```yaml
//! - filter:
//!     drop: 'body.type == "TEST"'          # or `keep: ...`, exactly one of the two
//!     reason: "test orders are not forwarded"
//! ```

use super::script_options::scripted_step_config;
use super::{BuildContext, BuildError, Flow, Step, StepError};
use crate::message::Message;
use crate::script::{body_to_dynamic, Script};
use serde::Deserialize;

scripted_step_config! {
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
    }
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Filter, BuildError> {
        let (expr, drop_when_true) = match (&self.keep, &self.drop) {
            (Some(k), None) => (k, false),
            (None, Some(d)) => (d, true),
            _ => return Err(BuildError::new("give exactly one of `keep` or `drop`")),
        };
        let options = self.script_options();
        let script = options.expression(&options.engine(cx)?, "", expr)?;
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
    fn cost(&self) -> super::Cost {
        super::Cost::Script
    }

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
