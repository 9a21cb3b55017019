//! `json_to_xml`: writes a JSON body as XML by the convention in [`crate::convert::xml`].

use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::xml::{value_to_xml, WriteOptions};
use crate::message::Message;

/// The step's options: see [`WriteOptions`].
pub type Config = WriteOptions;

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<JsonToXml, BuildError> {
        if self.item_name.is_empty() {
            return Err(BuildError::new("`item_name` must not be empty"));
        }
        Ok(JsonToXml(self.clone()))
    }
}

pub struct JsonToXml(WriteOptions);

impl Step for JsonToXml {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = msg.body_json()?;
        let xml = value_to_xml(&json, &self.0)?;
        msg.set_text(xml, "application/xml");
        Ok(())
    }
}
