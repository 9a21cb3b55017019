//! The ground floor: what configuration files are made of — typed values (durations, sizes,
//! rates, globs), YAML loading with `file:line:column` positions and `${VAR}` interpolation,
//! and diagnostics. It imports nothing of the engine, so every layer above may use it.

pub mod diagnostic;
pub mod schema;
pub mod values;
pub mod yaml;

pub use diagnostic::{did_you_mean, Diagnostic};
