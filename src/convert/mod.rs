//! Format conversions shared by the mapping steps and the script helpers: XML ⇄ JSON and
//! CSV ⇄ JSON. Each direction follows one documented convention (`docs/mapping.md`).

pub mod csv;
pub mod xml;
