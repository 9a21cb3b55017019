//! Steps: the ordered processing a route applies to each message after it is stored.
//!
//! Each step is a config struct (the `kind: { options }` entry of a route's `steps:` list) plus
//! a [`StepConfig::build`] into a running [`Step`]. A step changes the message in place or
//! fails it with a [`StepError`] saying what was wrong and where.

pub mod set_header;
pub mod xml_to_json;

use crate::message::Message;
use serde::Deserialize;
use std::fmt;

/// One entry of a route's `steps:` list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepConfig {
    /// Sets one header to a static or templated value.
    SetHeader(set_header::Config),
    /// Turns an XML body into JSON (see `docs/steps.md` for the convention).
    XmlToJson(xml_to_json::Config),
}

impl StepConfig {
    /// The kind as written in route files.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::SetHeader(_) => "set_header",
            StepConfig::XmlToJson(_) => "xml_to_json",
        }
    }

    pub fn build(&self) -> anyhow::Result<Box<dyn Step>> {
        Ok(match self {
            StepConfig::SetHeader(c) => Box::new(c.build()),
            StepConfig::XmlToJson(c) => Box::new(c.build()),
        })
    }
}

/// A running step. Steps are synchronous and CPU-bound; they must not block on I/O.
pub trait Step: Send + Sync {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError>;
}

/// Why a step failed the message; shown to people, so it says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError(pub String);

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StepError {}
