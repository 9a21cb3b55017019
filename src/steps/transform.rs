//! `transform`: runs a Rhai script on each message. The script reads and changes `body` and
//! `headers`, reads `id` and `route`, and may call `reject("reason")` to fail the message on
//! purpose. See `docs/scripting.md`.

use super::{compile_script, script_engine, BuildContext, BuildError, Step, StepError};
use crate::message::Message;
use crate::script::{body_to_dynamic, write_back, Limits, Script};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The script, inline.
    #[serde(default)]
    pub script: Option<String>,
    /// The script in its own file, relative to the route file.
    #[serde(default)]
    pub script_file: Option<PathBuf>,
    /// Lookup tables for `lookup(...)`: name to a `.csv` or `.yaml` file, relative to the
    /// route file.
    #[serde(default)]
    pub lookups: BTreeMap<String, PathBuf>,
    /// Sandbox limits.
    #[serde(default)]
    pub limits: Limits,
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Transform, BuildError> {
        let engine = script_engine(&self.lookups, &self.limits, cx)?;
        let script = compile_script(
            &engine,
            &self.limits,
            self.script.as_deref(),
            self.script_file.as_deref(),
            cx,
        )?
        .ok_or_else(|| BuildError::new("a transform needs `script` or `script_file`"))?;
        Ok(Transform { script })
    }
}

pub struct Transform {
    script: Script,
}

impl Step for Transform {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let body = body_to_dynamic(msg)?;
        let (_, mut scope) = self
            .script
            .run(msg, body)
            .map_err(|e| StepError(e.to_string()))?;
        write_back(msg, &mut scope)?;
        Ok(())
    }
}
