//! Format conversions shared by the mapping steps and the script helpers: XML ⇄ JSON and
//! CSV ⇄ JSON, each direction following one documented convention (`docs/mapping.md`); XPath
//! and XSLT through libxml2 and libxslt (cargo feature `xsd`).

pub mod csv;
pub mod xml;
pub mod xpath;
pub mod xslt;
