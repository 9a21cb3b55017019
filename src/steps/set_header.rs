//! `set_header`: sets one header to a static or templated value, for example
//! `{ name: target-file, value: "{{original_stem}}.json" }`.

use super::{BuildContext, BuildError, Step, StepError};
use crate::message::Message;
use crate::template::Template;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SetHeaderStep")]
pub struct Config {
    /// The header to set; an existing value is replaced.
    pub name: String,
    /// The value: text, optionally with `{{...}}` placeholders (see `docs/routes.md`).
    pub value: Template,
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> Result<SetHeader, BuildError> {
        Ok(SetHeader(self.clone()))
    }
}

pub struct SetHeader(Config);

impl Step for SetHeader {
    fn cost(&self) -> super::Cost {
        super::Cost::Pass
    }

    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let value = self.0.value.render(msg);
        msg.headers.insert(self.0.name.clone(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_templated_header() {
        let cfg: Config =
            crate::config::yaml::parse_str("name: out\nvalue: \"{{original_stem}}.json\"").unwrap();
        let mut m = Message::new("r", bytes::Bytes::new());
        m.headers.insert("file.name".into(), "a.xml".into());
        cfg.build(&BuildContext::default())
            .unwrap()
            .apply(&mut m)
            .unwrap();
        assert_eq!(m.header("out"), Some("a.json"));
    }
}
