//! `csv_to_json`: a CSV body becomes a JSON array of records (see [`crate::convert::csv`]).

use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::csv::{ascii, csv_to_value, ReadOptions};
use crate::message::Message;

/// The step's options: see [`ReadOptions`].
pub type Config = ReadOptions;

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<CsvToJson, BuildError> {
        ascii(self.delimiter, "delimiter").map_err(BuildError::new)?;
        ascii(self.quote, "quote").map_err(BuildError::new)?;
        Ok(CsvToJson(self.clone()))
    }
}

pub struct CsvToJson(ReadOptions);

impl Step for CsvToJson {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = csv_to_value(&msg.body, &self.0)?;
        msg.set_json(&json);
        Ok(())
    }
}
