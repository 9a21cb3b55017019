//! `json_to_csv`: a JSON array of records becomes CSV (see [`crate::convert::csv`]).

use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::csv::{ascii, value_to_csv, WriteOptions};
use crate::message::Message;

/// The step's options: see [`WriteOptions`].
pub type Config = WriteOptions;

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<JsonToCsv, BuildError> {
        ascii(self.delimiter, "delimiter").map_err(BuildError::new)?;
        Ok(JsonToCsv(self.clone()))
    }
}

pub struct JsonToCsv(WriteOptions);

impl Step for JsonToCsv {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = msg.body_json()?;
        let csv = value_to_csv(&json, &self.0)?;
        msg.set_text(csv, "text/csv");
        Ok(())
    }
}
