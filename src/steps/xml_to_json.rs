//! `xml_to_json`: turns an XML body into a JSON body.
//!
//! The convention (documented with examples in `docs/steps.md`):
//! - the document becomes an object with one key, the root element's name;
//! - an element with neither attributes nor child elements becomes its text as a string, or
//!   `null` when empty;
//! - otherwise it becomes an object: attributes as `"@name"`, child elements by name, and any
//!   non-blank text as `"#text"`;
//! - a child name that occurs more than once becomes an array in document order; names listed
//!   in `always_array` are arrays even when they occur once;
//! - values stay strings (XML has no types); comments and processing instructions are dropped;
//!   CDATA is text.
//!
//! Safety: a DOCTYPE that declares entities is refused and only the five predefined entities
//! and character references are resolved, so external entities (XXE) and entity expansion
//! bombs cannot happen. Depth is limited by `max_depth`.

use super::{Step, StepError};
use crate::message::Message;
use quick_xml::events::Event;
use quick_xml::Reader;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prefix for attribute keys (default `@`).
    pub attribute_prefix: String,
    /// Key for the text of an element that also has attributes or children (default `#text`).
    pub text_key: String,
    /// Element names that always become arrays, so consumers see one shape for one or many.
    pub always_array: Vec<String>,
    /// Drop namespace prefixes (`ns:order` becomes `order`) and `xmlns` attributes.
    pub strip_namespaces: bool,
    /// Deepest element nesting accepted (default 256).
    pub max_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attribute_prefix: "@".into(),
            text_key: "#text".into(),
            always_array: Vec::new(),
            strip_namespaces: false,
            max_depth: 256,
        }
    }
}

impl Config {
    pub fn build(&self) -> XmlToJson {
        XmlToJson(self.clone())
    }
}

pub struct XmlToJson(Config);

struct Frame {
    name: String,
    attrs: Map<String, Value>,
    children: Map<String, Value>,
    text: String,
}

impl Step for XmlToJson {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        let json = self.convert(&msg.body)?;
        let bytes = serde_json::to_vec(&json)
            .map_err(|e| StepError(format!("cannot serialise JSON: {e}")))?;
        msg.body = bytes.into();
        msg.headers
            .insert("content-type".into(), "application/json".into());
        Ok(())
    }
}

impl XmlToJson {
    pub fn convert(&self, body: &[u8]) -> Result<Value, StepError> {
        let text = std::str::from_utf8(body).map_err(|e| {
            let (line, col) = line_col(body, e.valid_up_to());
            StepError(format!(
                "XML body is not UTF-8 at line {line}, column {col}: convert it to UTF-8 first"
            ))
        })?;
        let cfg = &self.0;
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<Frame> = Vec::new();
        let mut root: Option<Value> = None;
        let fail = |reader: &Reader<&[u8]>, what: String| {
            let (line, col) = line_col(body, reader.error_position() as usize);
            StepError(format!(
                "malformed XML at line {line}, column {col}: {what}"
            ))
        };
        let fail_here = |reader: &Reader<&[u8]>, what: String| {
            let (line, col) = line_col(body, reader.buffer_position() as usize);
            StepError(format!(
                "malformed XML at line {line}, column {col}: {what}"
            ))
        };
        loop {
            let event = reader
                .read_event()
                .map_err(|e| fail(&reader, e.to_string()))?;
            let is_empty = matches!(event, Event::Empty(_));
            match event {
                Event::Start(e) | Event::Empty(e) => {
                    if root.is_some() {
                        return Err(fail_here(&reader, "content after the root element".into()));
                    }
                    if stack.len() >= cfg.max_depth {
                        return Err(fail_here(
                            &reader,
                            format!("elements nested deeper than max_depth {}", cfg.max_depth),
                        ));
                    }
                    let name = self.name(&String::from_utf8_lossy(e.name().as_ref()));
                    let mut attrs = Map::new();
                    for a in e.attributes() {
                        let a = a.map_err(|err| fail_here(&reader, err.to_string()))?;
                        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                        if cfg.strip_namespaces && (key == "xmlns" || key.starts_with("xmlns:")) {
                            continue;
                        }
                        let value = a
                            .unescape_value()
                            .map_err(|err| fail_here(&reader, err.to_string()))?;
                        attrs.insert(
                            format!("{}{}", cfg.attribute_prefix, self.name(&key)),
                            Value::String(value.into_owned()),
                        );
                    }
                    let frame = Frame {
                        name,
                        attrs,
                        children: Map::new(),
                        text: String::new(),
                    };
                    if is_empty {
                        self.close(frame, &mut stack, &mut root);
                    } else {
                        stack.push(frame);
                    }
                }
                Event::End(_) => match stack.pop() {
                    Some(frame) => self.close(frame, &mut stack, &mut root),
                    None => return Err(fail(&reader, "end tag without a start tag".into())),
                },
                Event::Text(t) => {
                    let s = t.xml_content().map_err(|e| fail(&reader, e.to_string()))?;
                    self.text(&reader, &mut stack, &s, &fail_here)?;
                }
                Event::CData(t) => {
                    let s = t.decode().map_err(|e| fail(&reader, e.to_string()))?;
                    self.text(&reader, &mut stack, &s, &fail_here)?;
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => {
                            let name = r.decode().map_err(|e| fail(&reader, e.to_string()))?;
                            match quick_xml::escape::resolve_predefined_entity(&name) {
                                Some(s) => s.to_string(),
                                None => {
                                    return Err(fail_here(
                                        &reader,
                                        format!("unknown entity `&{name};` (only &lt; &gt; &amp; &apos; &quot; and character references are allowed)"),
                                    ))
                                }
                            }
                        }
                        Err(e) => return Err(fail_here(&reader, e.to_string())),
                    };
                    self.text(&reader, &mut stack, &resolved, &fail_here)?;
                }
                Event::DocType(d) => {
                    let decl = String::from_utf8_lossy(d.as_ref()).to_ascii_uppercase();
                    if decl.contains("<!ENTITY")
                        || decl.contains("SYSTEM")
                        || decl.contains("PUBLIC")
                    {
                        return Err(fail_here(
                            &reader,
                            "DOCTYPE with entity declarations or an external DTD is refused (XML external entities are not allowed)".into(),
                        ));
                    }
                }
                Event::Eof => break,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            }
        }
        if let Some(open) = stack.last() {
            return Err(fail_here(
                &reader,
                format!("document ends before `<{}>` is closed", open.name),
            ));
        }
        root.ok_or_else(|| StepError("the body holds no XML element".into()))
    }

    fn name(&self, raw: &str) -> String {
        if self.0.strip_namespaces {
            raw.rsplit(':').next().unwrap_or(raw).to_string()
        } else {
            raw.to_string()
        }
    }

    fn text(
        &self,
        reader: &Reader<&[u8]>,
        stack: &mut [Frame],
        s: &str,
        fail_here: &dyn Fn(&Reader<&[u8]>, String) -> StepError,
    ) -> Result<(), StepError> {
        match stack.last_mut() {
            Some(frame) => frame.text.push_str(s),
            None if s.trim().is_empty() => {}
            None => return Err(fail_here(reader, "text outside the root element".into())),
        }
        Ok(())
    }

    fn close(&self, frame: Frame, stack: &mut [Frame], root: &mut Option<Value>) {
        let text = frame.text.trim();
        let value = if frame.attrs.is_empty() && frame.children.is_empty() {
            if text.is_empty() {
                Value::Null
            } else {
                Value::String(text.to_string())
            }
        } else {
            let mut obj = frame.attrs;
            for (k, v) in frame.children {
                obj.insert(k, v);
            }
            if !text.is_empty() {
                obj.insert(self.0.text_key.clone(), Value::String(text.to_string()));
            }
            Value::Object(obj)
        };
        match stack.last_mut() {
            Some(parent) => {
                let force_array = self.0.always_array.contains(&frame.name);
                match parent.children.get_mut(&frame.name) {
                    Some(Value::Array(items)) => items.push(value),
                    Some(existing) => {
                        let first = existing.take();
                        *existing = Value::Array(vec![first, value]);
                    }
                    None => {
                        let v = if force_array {
                            Value::Array(vec![value])
                        } else {
                            value
                        };
                        parent.children.insert(frame.name, v);
                    }
                }
            }
            None => {
                let mut doc = Map::new();
                doc.insert(frame.name, value);
                *root = Some(Value::Object(doc));
            }
        }
    }
}

/// 1-based line and column of a byte offset, for error messages.
fn line_col(body: &[u8], offset: usize) -> (usize, usize) {
    let upto = &body[..offset.min(body.len())];
    let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
    let col = upto.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(xml: &str) -> Result<Value, StepError> {
        Config::default().build().convert(xml.as_bytes())
    }

    #[test]
    fn follows_the_convention() {
        let v = convert(
            r#"<?xml version="1.0"?>
<order id="17" xmlns:x="urn:x">
  <!-- a comment -->
  <customer>ACME &amp; Sons</customer>
  <line sku="A1">2</line>
  <line sku="B2">5</line>
  <note/>
  <x:flag>&#65;<![CDATA[<b>]]></x:flag>
</order>"#,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"order": {
                "@id": "17", "@xmlns:x": "urn:x",
                "customer": "ACME & Sons",
                "line": [{"@sku": "A1", "#text": "2"}, {"@sku": "B2", "#text": "5"}],
                "note": null,
                "x:flag": "A<b>"
            }})
        );
    }

    #[test]
    fn always_array_and_namespaces() {
        let cfg = Config {
            always_array: vec!["line".into()],
            strip_namespaces: true,
            ..Config::default()
        };
        let v = cfg
            .build()
            .convert(br#"<p:order xmlns:p="urn:p"><p:line>1</p:line></p:order>"#)
            .unwrap();
        assert_eq!(v, json!({"order": {"line": ["1"]}}));
    }

    #[test]
    fn reports_line_and_column_of_malformed_xml() {
        let e = convert("<a>\n  <b>x</c>\n</a>").unwrap_err();
        assert!(e.0.starts_with("malformed XML at line 2"), "{e}");
        let e = convert("<a>\n<b>").unwrap_err();
        assert!(e.0.contains("`<b>` is closed"), "{e}");
        let e = convert("").unwrap_err();
        assert!(e.0.contains("no XML element"), "{e}");
        let e = convert("<a/><b/>").unwrap_err();
        assert!(e.0.contains("after the root"), "{e}");
    }

    #[test]
    fn refuses_external_entities() {
        let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<foo>&xxe;</foo>"#;
        let e = convert(xxe).unwrap_err();
        assert!(e.0.contains("external entities are not allowed"), "{e}");
        let e = convert("<foo>&xxe;</foo>").unwrap_err();
        assert!(e.0.contains("unknown entity `&xxe;`"), "{e}");
    }
}
