//! Message templates such as `{{original_stem}}-{{id}}.json`, used for output file names and
//! header values. A template is parsed when the route file is read, so an unknown placeholder
//! is a `file:line:column` error, never a surprise at run time.
//!
//! Placeholders:
//! - `{{id}}` the message id, `{{route}}` the route id;
//! - `{{original_name}}` / `{{original_stem}}` / `{{original_ext}}`: the `file.name` header
//!   (the name the message arrived with), whole, without its extension, or the extension alone;
//! - `{{timestamp}}` the time the message was received, `20261126T063012.123Z`;
//!   `{{date}}` the same day, `2026-11-26`;
//! - `{{header.NAME}}` any header (empty when missing).

use crate::message::Message;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Id,
    Route,
    OriginalName,
    OriginalStem,
    OriginalExt,
    Timestamp,
    Date,
    Header(String),
}

/// Splits `source` into its text and its `{{name}}` placeholders, made into parts by `text`
/// and `placeholder` (which gets the trimmed name). Shared with templates of other
/// placeholders (`enrich`'s URL).
pub fn split<P>(
    source: &str,
    text: impl Fn(String) -> P,
    mut placeholder: impl FnMut(&str) -> Result<P, String>,
) -> Result<Vec<P>, String> {
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!("template `{source}` has a `{{{{` that is never closed with `}}}}`")
        })?;
        parts.push(placeholder(after[..end].trim())?);
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(text(rest.to_string()));
    }
    Ok(parts)
}

/// A parsed template; render it with [`Template::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

const PLACEHOLDERS: &[&str] = &[
    "id",
    "route",
    "original_name",
    "original_stem",
    "original_ext",
    "timestamp",
    "date",
    "header.NAME",
];

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let parts = split(source, Part::Text, |name| {
            Ok(match name {
                "id" => Part::Id,
                "route" => Part::Route,
                "original_name" => Part::OriginalName,
                "original_stem" => Part::OriginalStem,
                "original_ext" => Part::OriginalExt,
                "timestamp" => Part::Timestamp,
                "date" => Part::Date,
                h if h.starts_with("header.") && h.len() > "header.".len() => {
                    Part::Header(h["header.".len()..].to_string())
                }
                other => {
                    let hint = crate::config::did_you_mean(other, PLACEHOLDERS)
                        .map(|s| format!(" (did you mean `{{{{{s}}}}}`?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown placeholder `{{{{{other}}}}}` in template `{source}`{hint}; known: {}",
                        PLACEHOLDERS.join(", ")
                    ));
                }
            })
        })?;
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text every message renders to, when the template has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        self.parts
            .iter()
            .all(|p| matches!(p, Part::Text(_)))
            .then_some(self.source.as_str())
    }

    pub fn render(&self, msg: &Message) -> String {
        let mut out = String::new();
        let original = msg.header("file.name").unwrap_or("");
        let (stem, ext) = split_ext(original);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Id => out.push_str(&msg.id.to_string()),
                Part::Route => out.push_str(&msg.route),
                Part::OriginalName => out.push_str(original),
                Part::OriginalStem => out.push_str(stem),
                Part::OriginalExt => out.push_str(ext),
                Part::Timestamp => {
                    // 2026-11-26T06:30:12.123Z -> 20261126T063012.123Z: sortable and file-name safe.
                    let t = humantime::format_rfc3339_millis(msg.received_at).to_string();
                    out.extend(t.chars().filter(|c| *c != '-' && *c != ':'));
                }
                Part::Date => {
                    let t = humantime::format_rfc3339_seconds(msg.received_at).to_string();
                    out.push_str(&t[..10]);
                }
                Part::Header(name) => out.push_str(msg.header(name).unwrap_or("")),
            }
        }
        out
    }
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

crate::config::schema::text_value!(
    Template,
    "Text with `{{ placeholders }}`: `{{header.NAME}}`, `{{body.PATH}}`, `{{id}}`, `{{original_stem}}`, … (docs/routes.md#templates).",
    ["{{original_stem}}.json", "orders/{{header.customer}}"]
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn renders_placeholders() {
        let mut m = Message::new("orders", bytes::Bytes::new());
        m.headers.insert("file.name".into(), "po-17.xml".into());
        m.headers.insert("customer".into(), "acme".into());
        let t =
            Template::parse("{{ original_stem }}-{{header.customer}}.{{original_ext}}").unwrap();
        assert_eq!(t.render(&m), "po-17-acme.xml");
        let t = Template::parse("{{id}}").unwrap();
        assert_eq!(t.render(&m), m.id.to_string());
        let ts = Template::parse("{{timestamp}}").unwrap().render(&m);
        assert!(ts.ends_with('Z') && !ts.contains(':'), "{ts}");
    }

    #[test]
    fn rejects_unknown_placeholder_with_hint() {
        let e = Template::parse("{{orignal_name}}.json").unwrap_err();
        assert!(e.contains("did you mean `{{original_name}}`"), "{e}");
        assert!(Template::parse("{{id").is_err());
    }
}
