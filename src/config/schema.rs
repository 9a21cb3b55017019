//! The JSON Schema side of the typed values: a value that YAML writes as text and a
//! `FromStr` or a custom `Deserialize` reads (a duration, a URL, a charset) describes itself
//! here, so the schema of route files says what the parser accepts.
//!
//! `${VAR}` is replaced in the text before YAML is read, so a number or a flag may be written
//! as `${PORT}`: [`allow_env_placeholders`] lets every non-string value also be such a string.

use schemars::transform::{transform_subschemas, Transform};
use schemars::Schema;

/// Implements `schemars::JsonSchema` for a value written as one string, with what it means and
/// examples; inlined where used, so several types may share a name (`Url`).
macro_rules! text_value {
    ($ty:ty, $description:literal, [$($example:literal),* $(,)?]) => {
        impl schemars::JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $description,
                    "examples": [$($example),*]
                })
            }
        }
    };
}
pub(crate) use text_value;

/// Lets an integer, number or boolean also be written as a `${VAR}` placeholder.
#[derive(Debug, Clone, Copy)]
pub struct AllowEnvPlaceholders;

impl Transform for AllowEnvPlaceholders {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        let typed =
            |t: &serde_json::Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
        let scalar = match object.get("type") {
            Some(t @ serde_json::Value::String(_)) => typed(t),
            Some(serde_json::Value::Array(ts)) => {
                ts.iter().any(typed) && !ts.iter().any(|t| t == "string")
            }
            _ => false,
        };
        if !scalar {
            return;
        }
        // Move the typed schema into `anyOf`, beside the placeholder, keeping the description
        // outside where editors show it.
        let description = object.remove("description");
        let default = object.remove("default");
        let typed_schema = serde_json::Value::Object(std::mem::take(object));
        object.insert(
            "anyOf".into(),
            serde_json::json!([typed_schema, {
                "type": "string",
                "pattern": "\\$\\{[A-Z_][A-Z0-9_]*(:-[^}]*)?\\}",
                "description": "an environment variable, replaced before the file is read"
            }]),
        );
        if let Some(d) = description {
            object.insert("description".into(), d);
        }
        if let Some(d) = default {
            object.insert("default".into(), d);
        }
    }
}

/// See [`AllowEnvPlaceholders`].
pub fn allow_env_placeholders() -> AllowEnvPlaceholders {
    AllowEnvPlaceholders
}
