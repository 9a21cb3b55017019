//! `xml_to_json`: parses an XML body into JSON by the convention in [`crate::convert::xml`].

use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::xml::{xml_to_json, ReadOptions};
use crate::message::Message;

/// The step's options: see [`ReadOptions`].
pub type Config = ReadOptions;

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<XmlToJson, BuildError> {
        Ok(XmlToJson(self.clone()))
    }
}

pub struct XmlToJson(ReadOptions);

impl Step for XmlToJson {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = xml_to_json(&msg.body, &self.0)?;
        msg.body = json.into();
        msg.headers
            .insert("content-type".into(), "application/json".into());
        Ok(())
    }
}
