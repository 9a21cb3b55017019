//! `hl7`: parses an HL7 v2 body, refuses what is not HL7, sets headers for the fields routes
//! use most (`hl7.type`, `hl7.event`, `hl7.control_id`, `hl7.version`, `hl7.sending_app`,
//! `hl7.sending_facility`) and, with `to_json: true`, replaces the body with its JSON mapping.
//! Scripts and `when:` rules read any field with `hl7(body, "PID-3.1")`.

use super::{BuildContext, Step, StepError};
use crate::hl7::Hl7;
use crate::message::Message;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Hl7Step")]
pub struct Config {
    /// Replace the body with the message's JSON mapping (see `docs/hl7.md`).
    #[serde(default)]
    pub to_json: bool,
    /// Fields that must be present (`PID-3.1`), else the message fails listing the missing.
    #[serde(default)]
    pub require: Vec<String>,
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<Hl7Step, super::BuildError> {
        let probe = Hl7::parse("MSH|^~\\&|\r").map_err(super::BuildError::new)?;
        for path in &self.require {
            probe
                .get(path)
                .map_err(|e| super::BuildError::new(format!("require: {e}")))?;
        }
        Ok(Hl7Step(self.clone()))
    }
}

pub struct Hl7Step(Config);

/// Headers set from the message header segment.
pub const HEADERS: [(&str, &str); 6] = [
    ("hl7.type", "MSH-9.1"),
    ("hl7.event", "MSH-9.2"),
    ("hl7.control_id", "MSH-10"),
    ("hl7.version", "MSH-12"),
    ("hl7.sending_app", "MSH-3"),
    ("hl7.sending_facility", "MSH-4"),
];

impl Step for Hl7Step {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let text = msg.body_text()?.to_string();
        let m = Hl7::parse(&text)?;
        for (header, path) in HEADERS {
            if let Some(v) = m.get(path)? {
                msg.headers.insert(header.into(), v);
            }
        }
        let missing: Vec<&str> = self
            .0
            .require
            .iter()
            .filter(|p| !matches!(m.get(p), Ok(Some(_))))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(StepError(format!(
                "required HL7 fields are empty: {}",
                missing.join(", ")
            )));
        }
        if self.0.to_json {
            msg.set_json(&m.to_json());
        }
        Ok(())
    }
}
