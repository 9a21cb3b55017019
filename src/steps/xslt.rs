//! `xslt`: transforms an XML body with an XSLT 1.0 stylesheet (libxslt; cargo feature `xsd`).
//!
//! ```yaml
//! - xslt:
//!     stylesheet: stylesheets/order-to-idoc.xsl    # relative to the route file
//!     params: { sender: SHOP01 }                   # <xsl:param name="sender"/>
//! ```

use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::xslt::Stylesheet;
use crate::message::Message;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "XsltStep")]
pub struct Config {
    /// The stylesheet file, relative to the route file; compiled when the route loads.
    pub stylesheet: PathBuf,
    /// String parameters for the stylesheet's top-level `xsl:param`s, by name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The result's `content-type` (default: `application/xml` when the output starts with
    /// `<`, `text/plain` otherwise; say `text/html` or `text/csv` where that is what it is).
    #[serde(default)]
    pub content_type: Option<String>,
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Xslt, BuildError> {
        let stylesheet =
            Stylesheet::load(&cx.resolve(&self.stylesheet)).map_err(BuildError::new)?;
        Ok(Xslt {
            stylesheet,
            params: self.params.clone().into_iter().collect(),
            content_type: self.content_type.clone(),
        })
    }
}

pub struct Xslt {
    stylesheet: Stylesheet,
    params: Vec<(String, String)>,
    content_type: Option<String>,
}

impl Step for Xslt {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let xml = msg.body_text()?;
        let out = self.stylesheet.apply(xml, &self.params)?;
        let content_type = self.content_type.clone().unwrap_or_else(|| {
            let xml = out
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'<');
            if xml { "application/xml" } else { "text/plain" }.to_string()
        });
        msg.body = bytes::Bytes::from(out);
        msg.headers.insert("content-type".into(), content_type);
        Ok(())
    }
}
