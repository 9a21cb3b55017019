//! JSON to XML, the convention in reverse.

use super::*;

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

pub(super) fn check_name(name: &str, path: &str) -> Result<(), String> {
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

pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

pub(super) fn write_element<W: std::io::Write>(
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
pub(super) fn write_child<W: std::io::Write>(
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
