//! `validate`: checks each message and fails it with every problem listed (path and reason).
//!
//! Checks, any combination, all run: `json_schema` (a schema file, or the schema inline),
//! `xml` (well-formedness, with DOCTYPEs refused), `xsd` (with the `xsd` cargo feature) and
//! `script` (a predicate).

use super::script_options::scripted_step_config;
use super::xsd::Xsd;
use super::{BuildContext, BuildError, Step, StepError};
use crate::convert::xml::check_xml;
use crate::message::Message;
use crate::script::{body_to_dynamic, Script};
use rhai::Dynamic;
use serde::Deserialize;
use std::path::PathBuf;

scripted_step_config! {
    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ValidateStep")]
    pub struct Config {
        /// A JSON Schema: a file name (relative to the route file) or the schema itself, inline.
        /// Remote `$ref`s are not fetched.
        #[serde(default)]
        pub json_schema: Option<serde_json::Value>,
        /// Check that the body is well-formed XML.
        #[serde(default)]
        pub xml: bool,
        /// An XSD file (relative to the route file) the XML body must match; implies `xml`.
        /// Needs a build with the `xsd` feature.
        #[serde(default)]
        pub xsd: Option<PathBuf>,
        /// A predicate script: it passes by returning `true` (or nothing); `false`, a string (the
        /// reason) or an array of strings (several reasons) fail the message.
        #[serde(default)]
        pub script: Option<String>,
        /// The predicate script in its own file, relative to the route file.
        #[serde(default)]
        pub script_file: Option<PathBuf>,
    }
}

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Validate, BuildError> {
        let schema = match &self.json_schema {
            None => None,
            Some(serde_json::Value::String(file)) => {
                let path = cx.resolve(file.as_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    BuildError::new(format!("cannot read json_schema {}: {e}", path.display()))
                })?;
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    BuildError::new(format!("json_schema {} is not JSON: {e}", path.display()))
                })?;
                Some(v)
            }
            Some(inline) => Some(inline.clone()),
        };
        let schema = schema
            .map(|s| {
                jsonschema::validator_for(&s)
                    .map_err(|e| BuildError::new(format!("invalid JSON Schema: {e}")))
            })
            .transpose()?;
        let script = if self.script.is_some() || self.script_file.is_some() {
            let options = self.script_options();
            options.script(
                &options.engine(cx)?,
                self.script.as_deref(),
                self.script_file.as_deref(),
                cx,
            )?
        } else {
            None
        };
        let xsd = self
            .xsd
            .as_ref()
            .map(|f| Xsd::load(&cx.resolve(f)).map_err(BuildError::new))
            .transpose()?;
        if schema.is_none() && !self.xml && xsd.is_none() && script.is_none() {
            return Err(BuildError::new(
                "validate checks nothing: set `json_schema`, `xml: true`, `xsd` or `script`",
            ));
        }
        Ok(Validate {
            schema,
            xml: self.xml || xsd.is_some(),
            xsd,
            script,
        })
    }
}

pub struct Validate {
    schema: Option<jsonschema::Validator>,
    xml: bool,
    xsd: Option<Xsd>,
    script: Option<Script>,
}

impl Step for Validate {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let mut errors: Vec<String> = Vec::new();
        if self.xml {
            match check_xml(&msg.body) {
                Err(e) => errors.push(e),
                // Only a well-formed document without a DOCTYPE reaches libxml2.
                Ok(_) => {
                    if let Some(xsd) = &self.xsd {
                        errors.extend(xsd.check(&msg.body));
                    }
                }
            }
        }
        if let Some(schema) = &self.schema {
            match msg.body_json() {
                Ok(json) => {
                    for e in schema.iter_errors(&json) {
                        let path = e.instance_path().to_string();
                        let path = if path.is_empty() {
                            "/".to_string()
                        } else {
                            path
                        };
                        errors.push(format!("{path}: {e}"));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(script) = &self.script {
            let body = body_to_dynamic(msg)?;
            match script.run(msg, body) {
                Ok((verdict, _)) => errors.extend(verdict_errors(verdict)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(StepError(format!("invalid: {}", errors[0]))),
            n => Err(StepError(format!(
                "{n} validation errors: {}",
                errors.join("; ")
            ))),
        }
    }
}

/// What a predicate's value says: nothing wrong, or the reasons.
fn verdict_errors(v: Dynamic) -> Vec<String> {
    if v.is_unit() {
        return Vec::new();
    }
    if let Some(ok) = v.clone().try_cast::<bool>() {
        return if ok {
            Vec::new()
        } else {
            vec!["the validation script returned false".into()]
        };
    }
    if v.is_string() {
        let s = v.into_string().unwrap_or_default();
        return if s.is_empty() { Vec::new() } else { vec![s] };
    }
    if let Some(items) = v.clone().try_cast::<rhai::Array>() {
        return items.into_iter().map(|i| i.to_string()).collect();
    }
    vec![format!(
        "the validation script returned {} `{v}`; return true, false, a reason or a list of reasons",
        v.type_name()
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn validate(yaml: &str) -> Validate {
        let cfg: Config = crate::config::yaml::parse_str(yaml).unwrap();
        cfg.build(&BuildContext::new(PathBuf::from("."))).unwrap()
    }

    fn check(v: &Validate, body: &str) -> Result<(), StepError> {
        v.apply(&mut Message::new("r", Bytes::from(body.to_string())))
    }

    #[test]
    fn script_predicates() {
        let v = validate("script: 'body.qty > 0'");
        assert!(check(&v, r#"{"qty": 1}"#).is_ok());
        assert_eq!(
            check(&v, r#"{"qty": 0}"#).unwrap_err().0,
            "invalid: the validation script returned false"
        );
        let v = validate("script: |\n  let e = [];\n  if body.qty < 1 { e.push(\"qty must be positive\") }\n  if body.sku == \"\" { e.push(\"sku is empty\") }\n  e");
        assert_eq!(
            check(&v, r#"{"qty": 0, "sku": ""}"#).unwrap_err().0,
            "2 validation errors: qty must be positive; sku is empty"
        );
        assert!(check(&v, r#"{"qty": 2, "sku": "A"}"#).is_ok());
    }

    #[test]
    fn schema_and_xml_errors_are_all_listed() {
        let v = validate(
            "json_schema: {type: object, required: [id], properties: {id: {type: integer}, tags: {type: array, items: {type: string}}}}",
        );
        let e = check(&v, r#"{"tags": ["a", 2]}"#).unwrap_err().0;
        assert!(e.starts_with("2 validation errors: "), "{e}");
        assert!(e.contains("/: \"id\" is a required property"), "{e}");
        assert!(e.contains("/tags/1: 2 is not of type \"string\""), "{e}");
        assert!(check(&v, "not json")
            .unwrap_err()
            .0
            .contains("not valid JSON"));

        let v = validate("xml: true");
        assert!(check(&v, "<a><b/></a>").is_ok());
        assert!(check(&v, "<a><b></a>")
            .unwrap_err()
            .0
            .contains("malformed XML at line 1"));
    }

    #[test]
    fn nothing_to_check_is_a_load_error() {
        let cfg: Config = crate::config::yaml::parse_str("xml: false").unwrap();
        let e = cfg
            .build(&BuildContext::new(PathBuf::from(".")))
            .err()
            .unwrap();
        assert!(e.message.contains("validate checks nothing"));
    }
}

#[cfg(all(test, feature = "xsd"))]
mod xsd_tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn xsd_lists_every_violation_and_passes_valid_documents() {
        let cfg: Config =
            crate::config::yaml::parse_str("xsd: examples/xsd/schemas/order.xsd").unwrap();
        let v = cfg
            .build(&BuildContext::new(PathBuf::from(env!(
                "CARGO_MANIFEST_DIR"
            ))))
            .map_err(|e| e.message)
            .unwrap();
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/orders/order-1001.xml"
        ))
        .unwrap();
        assert!(v.apply(&mut Message::new("r", Bytes::from(good))).is_ok());
        let bad = "<order id=\"x\" date=\"2026-11-20\">\n<customer>A</customer>\n<line sku=\"A\" qty=\"0\">?</line>\n</order>";
        let e = v
            .apply(&mut Message::new("r", Bytes::from(bad)))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("3 validation errors: line 1: Element 'order', attribute 'id'"),
            "{e}"
        );
        assert!(e.contains("line 3: Element 'line', attribute 'qty'"), "{e}");
        // Several threads at once share the one validator thread safely.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        assert!(v.apply(&mut Message::new("r", Bytes::from(bad))).is_err());
                    }
                });
            }
        });
        let missing: Config = crate::config::yaml::parse_str("xsd: nowhere.xsd").unwrap();
        let e = missing
            .build(&BuildContext::new(PathBuf::from(".")))
            .err()
            .unwrap();
        assert!(
            e.message.contains("nowhere.xsd does not exist"),
            "{}",
            e.message
        );
    }
}

#[cfg(all(test, not(feature = "xsd")))]
mod no_xsd_tests {
    use super::*;

    #[test]
    fn xsd_without_the_feature_is_a_clear_load_error() {
        let cfg: Config = crate::config::yaml::parse_str("xsd: schemas/order.xsd").unwrap();
        let e = cfg
            .build(&BuildContext::new(PathBuf::from(".")))
            .err()
            .unwrap();
        assert!(
            e.message
                .contains("build it with `cargo build --features xsd`"),
            "{}",
            e.message
        );
    }
}
