//! XML ⇄ JSON, both directions, with one documented convention (`docs/mapping.md`):
//!
//! - the document is an object with one key, the root element's name;
//! - an element with neither attributes nor child elements is its text as a string, or `null`
//!   when empty;
//! - otherwise it is an object: attributes as `"@name"`, child elements by name, and any
//!   non-blank text as `"#text"`;
//! - a child name that occurs more than once is an array in document order; names listed in
//!   `always_array` are arrays even when they occur once;
//! - values stay strings (XML has no types); comments and processing instructions are dropped;
//!   CDATA is text.
//!
//! Reading is safe on hostile input: a DOCTYPE is refused (so no external entities and no
//! entity-expansion bombs), only the predefined entities and character references are
//! resolved, and nesting depth is limited.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How XML is read into JSON (the options of the `xml_to_json` step).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadOptions {
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

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            attribute_prefix: "@".into(),
            text_key: "#text".into(),
            always_array: Vec::new(),
            strip_namespaces: false,
            max_depth: 256,
        }
    }
}

/// How JSON is written as XML (the options of the `json_to_xml` step).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteOptions {
    /// Name of the root element. When unset, the JSON must be an object with exactly one key,
    /// which names the root (the shape `xml_to_json` produces).
    pub root: Option<String>,
    /// Keys with this prefix become attributes (default `@`).
    pub attribute_prefix: String,
    /// This key becomes the element's text (default `#text`).
    pub text_key: String,
    /// Element name for the items of an array that has no name of its own (an array at the
    /// root, or inside an array); default `item`.
    pub item_name: String,
    /// Namespace declarations put on the root element: prefix to URI; the prefix `""` is the
    /// default namespace. Element and attribute names carry their prefixes as written (`x:order`).
    pub namespaces: BTreeMap<String, String>,
    /// Write `<?xml version="1.0" encoding="UTF-8"?>` first (default `true`).
    pub declaration: bool,
    /// Indent nested elements by this many spaces; 0 (default) writes everything on one line.
    pub indent: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            root: None,
            attribute_prefix: "@".into(),
            text_key: "#text".into(),
            item_name: "item".into(),
            namespaces: BTreeMap::new(),
            declaration: true,
            indent: 0,
        }
    }
}

struct Frame {
    name: String,
    attrs: Map<String, Value>,
    children: Map<String, Value>,
    text: String,
}

/// Reads an XML document into JSON. Errors name the line and column.
pub fn xml_to_value(body: &[u8], opts: &ReadOptions) -> Result<Value, String> {
    let text = crate::message::utf8(body, "XML")?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    let at = |pos: u64, what: String| {
        let (line, col) = line_col(body, pos as usize);
        format!("malformed XML at line {line}, column {col}: {what}")
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| at(reader.error_position(), e.to_string()))?;
        let here = reader.buffer_position();
        let is_empty = matches!(event, Event::Empty(_));
        match event {
            Event::Start(e) | Event::Empty(e) => {
                if root.is_some() {
                    return Err(at(here, "content after the root element".into()));
                }
                if stack.len() >= opts.max_depth {
                    return Err(at(
                        here,
                        format!("elements nested deeper than max_depth {}", opts.max_depth),
                    ));
                }
                let name = local(opts, &String::from_utf8_lossy(e.name().as_ref()));
                let mut attrs = Map::new();
                for a in e.attributes() {
                    let a = a.map_err(|err| at(here, err.to_string()))?;
                    let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                    if opts.strip_namespaces && (key == "xmlns" || key.starts_with("xmlns:")) {
                        continue;
                    }
                    let value = a
                        .unescape_value()
                        .map_err(|err| at(here, err.to_string()))?;
                    attrs.insert(
                        format!("{}{}", opts.attribute_prefix, local(opts, &key)),
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
                    close(opts, frame, &mut stack, &mut root);
                } else {
                    stack.push(frame);
                }
            }
            Event::End(_) => match stack.pop() {
                Some(frame) => close(opts, frame, &mut stack, &mut root),
                None => return Err(at(here, "end tag without a start tag".into())),
            },
            Event::Text(t) => {
                let s = t.xml_content().map_err(|e| at(here, e.to_string()))?;
                push_text(&mut stack, &s).map_err(|e| at(here, e))?;
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| at(here, e.to_string()))?;
                push_text(&mut stack, &s).map_err(|e| at(here, e))?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r.decode().map_err(|e| at(here, e.to_string()))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.to_string(),
                            None => return Err(at(here, format!(
                                "unknown entity `&{name};` (only &lt; &gt; &amp; &apos; &quot; and character references are allowed)"
                            ))),
                        }
                    }
                    Err(e) => return Err(at(here, e.to_string())),
                };
                push_text(&mut stack, &resolved).map_err(|e| at(here, e))?;
            }
            Event::DocType(_) => {
                return Err(at(
                    here,
                    "DOCTYPE declarations are refused (no DTDs, so no external entities or entity expansion)".into(),
                ));
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(at(
            reader.buffer_position(),
            format!("document ends before `<{}>` is closed", open.name),
        ));
    }
    root.ok_or_else(|| "the body holds no XML element".to_string())
}

fn local(opts: &ReadOptions, raw: &str) -> String {
    if opts.strip_namespaces {
        raw.rsplit(':').next().unwrap_or(raw).to_string()
    } else {
        raw.to_string()
    }
}

fn push_text(stack: &mut [Frame], s: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(frame) => frame.text.push_str(s),
        None if s.trim().is_empty() => {}
        None => return Err("text outside the root element".into()),
    }
    Ok(())
}

fn close(opts: &ReadOptions, frame: Frame, stack: &mut [Frame], root: &mut Option<Value>) {
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
            obj.insert(opts.text_key.clone(), Value::String(text.to_string()));
        }
        Value::Object(obj)
    };
    match stack.last_mut() {
        Some(parent) => match parent.children.get_mut(&frame.name) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                let v = if opts.always_array.contains(&frame.name) {
                    Value::Array(vec![value])
                } else {
                    value
                };
                parent.children.insert(frame.name, v);
            }
        },
        None => {
            let mut doc = Map::new();
            doc.insert(frame.name, value);
            *root = Some(Value::Object(doc));
        }
    }
}

/// 1-based line and column of a byte offset, for error messages.
pub fn line_col(body: &[u8], offset: usize) -> (usize, usize) {
    let upto = &body[..offset.min(body.len())];
    let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
    let col = upto.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

/// Writes JSON as an XML document, following the convention in reverse.
pub fn value_to_xml(value: &Value, opts: &WriteOptions) -> Result<String, String> {
    let (root, content) = match (&opts.root, value) {
        (Some(name), v) => (name.as_str(), v),
        (None, Value::Object(m)) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            (k.as_str(), v)
        }
        (None, _) => {
            return Err("json_to_xml needs an object with exactly one key (the root element's name), or the `root` option".into())
        }
    };
    let mut out = Vec::new();
    {
        let mut w = if opts.indent > 0 {
            Writer::new_with_indent(&mut out, b' ', opts.indent)
        } else {
            Writer::new(&mut out)
        };
        let io = |e: std::io::Error| e.to_string();
        if opts.declaration {
            w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
                .map_err(io)?;
        }
        let mut xmlns: Vec<(String, String)> = opts
            .namespaces
            .iter()
            .map(|(p, uri)| {
                let key = if p.is_empty() {
                    "xmlns".to_string()
                } else {
                    format!("xmlns:{p}")
                };
                (key, uri.clone())
            })
            .collect();
        write_element(&mut w, opts, root, content, &mut xmlns, &format!("/{root}"))?;
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn check_name(name: &str, path: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_start = |c: char| c.is_alphabetic() || c == '_';
    let ok = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    match chars.next() {
        Some(c) if ok_start(c) && chars.all(ok) => Ok(()),
        _ => Err(format!(
            "`{name}` at {path} is not a valid XML name (it must start with a letter or `_` and hold only letters, digits, `_`, `-`, `.` and `:`)"
        )),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn write_element<W: std::io::Write>(
    w: &mut Writer<W>,
    opts: &WriteOptions,
    name: &str,
    value: &Value,
    extra_attrs: &mut Vec<(String, String)>,
    path: &str,
) -> Result<(), String> {
    check_name(name, path)?;
    let io = |e: std::io::Error| e.to_string();
    let mut start = BytesStart::new(name);
    for (k, v) in extra_attrs.drain(..) {
        start.push_attribute((k.as_str(), v.as_str()));
    }
    match value {
        Value::Null => {
            w.write_event(Event::Empty(start)).map_err(io)?;
        }
        Value::Object(map) => {
            let mut text = None;
            let mut children = Vec::new();
            for (k, v) in map {
                if let Some(attr) = k
                    .strip_prefix(&opts.attribute_prefix)
                    .filter(|_| !opts.attribute_prefix.is_empty())
                {
                    check_name(attr, &format!("{path}/{k}"))?;
                    let t = scalar_text(v).ok_or_else(|| {
                        format!("attribute {path}/{k} must be a string, number, boolean or null")
                    })?;
                    start.push_attribute((attr, t.as_str()));
                } else if *k == opts.text_key {
                    text = Some(scalar_text(v).ok_or_else(|| {
                        format!("text {path}/{k} must be a string, number, boolean or null")
                    })?);
                } else {
                    children.push((k, v));
                }
            }
            if text.is_none() && children.is_empty() {
                w.write_event(Event::Empty(start)).map_err(io)?;
                return Ok(());
            }
            w.write_event(Event::Start(start)).map_err(io)?;
            if let Some(t) = text {
                w.write_event(Event::Text(BytesText::new(&t))).map_err(io)?;
            }
            for (k, v) in children {
                write_child(w, opts, k, v, &format!("{path}/{k}"))?;
            }
            w.write_event(Event::End(BytesEnd::new(name))).map_err(io)?;
        }
        Value::Array(items) => {
            w.write_event(Event::Start(start)).map_err(io)?;
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}/{}[{i}]", opts.item_name);
                write_element(w, opts, &opts.item_name, item, &mut Vec::new(), &p)?;
            }
            w.write_event(Event::End(BytesEnd::new(name))).map_err(io)?;
        }
        scalar => {
            let t = scalar_text(scalar).unwrap_or_default();
            w.write_event(Event::Start(start)).map_err(io)?;
            w.write_event(Event::Text(BytesText::new(&t))).map_err(io)?;
            w.write_event(Event::End(BytesEnd::new(name))).map_err(io)?;
        }
    }
    Ok(())
}

/// A named child: an array repeats the element once per item.
fn write_child<W: std::io::Write>(
    w: &mut Writer<W>,
    opts: &WriteOptions,
    name: &str,
    value: &Value,
    path: &str,
) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                write_element(
                    w,
                    opts,
                    name,
                    item,
                    &mut Vec::new(),
                    &format!("{path}[{i}]"),
                )?;
            }
            Ok(())
        }
        v => write_element(w, opts, name, v, &mut Vec::new(), path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(xml: &str) -> Result<Value, String> {
        xml_to_value(xml.as_bytes(), &ReadOptions::default())
    }

    #[test]
    fn reads_by_the_convention() {
        let v = read(
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
        let opts = ReadOptions {
            always_array: vec!["line".into()],
            strip_namespaces: true,
            ..ReadOptions::default()
        };
        let v = xml_to_value(
            br#"<p:order xmlns:p="urn:p"><p:line>1</p:line></p:order>"#,
            &opts,
        )
        .unwrap();
        assert_eq!(v, json!({"order": {"line": ["1"]}}));
    }

    #[test]
    fn reports_line_and_column_of_malformed_xml() {
        let e = read("<a>\n  <b>x</c>\n</a>").unwrap_err();
        assert!(e.starts_with("malformed XML at line 2"), "{e}");
        let e = read("<a>\n<b>").unwrap_err();
        assert!(e.contains("`<b>` is closed"), "{e}");
        let e = read("").unwrap_err();
        assert!(e.contains("no XML element"), "{e}");
        let e = read("<a/><b/>").unwrap_err();
        assert!(e.contains("after the root"), "{e}");
        let e = xml_to_value(b"<a>\xff</a>", &ReadOptions::default()).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn refuses_doctype_and_unknown_entities() {
        let xxe = r#"<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<foo>&xxe;</foo>"#;
        let e = read(xxe).unwrap_err();
        assert!(e.contains("DOCTYPE declarations are refused"), "{e}");
        let bomb = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        assert!(read(bomb).unwrap_err().contains("DOCTYPE"));
        let e = read("<foo>&xxe;</foo>").unwrap_err();
        assert!(e.contains("unknown entity `&xxe;`"), "{e}");
    }

    #[test]
    fn writes_by_the_convention_and_round_trips() {
        let v = json!({"order": {
            "@id": "17",
            "customer": "ACME & Sons",
            "line": [{"@sku": "A1", "#text": "2"}, {"@sku": "B2", "#text": 5}],
            "note": null
        }});
        let opts = WriteOptions {
            declaration: false,
            ..WriteOptions::default()
        };
        let xml = value_to_xml(&v, &opts).unwrap();
        assert_eq!(
            xml,
            r#"<order id="17"><customer>ACME &amp; Sons</customer><line sku="A1">2</line><line sku="B2">5</line><note/></order>"#
        );
        let back = read(&xml).unwrap();
        assert_eq!(back["order"]["line"][1]["#text"], "5");
        assert_eq!(back["order"]["customer"], "ACME & Sons");
    }

    #[test]
    fn writes_root_option_arrays_and_namespaces() {
        let opts = WriteOptions {
            root: Some("x:orders".into()),
            namespaces: [("x".to_string(), "urn:x".to_string())]
                .into_iter()
                .collect(),
            declaration: false,
            ..WriteOptions::default()
        };
        let xml = value_to_xml(&json!([{"id": 1}, "two"]), &opts).unwrap();
        assert_eq!(
            xml,
            r#"<x:orders xmlns:x="urn:x"><item><id>1</id></item><item>two</item></x:orders>"#
        );
        let e = value_to_xml(&json!({"a": 1, "b": 2}), &WriteOptions::default()).unwrap_err();
        assert!(e.contains("exactly one key"), "{e}");
        let e =
            value_to_xml(&json!({"order": {"1bad": "x"}}), &WriteOptions::default()).unwrap_err();
        assert!(
            e.contains("`1bad` at /order/1bad is not a valid XML name"),
            "{e}"
        );
    }
}
