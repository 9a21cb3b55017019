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
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// How XML is read into JSON (the options of the `xml_to_json` step).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "XmlReadOptions")]
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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "XmlWriteOptions")]
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

/// Reads an XML document into JSON text by the convention. Errors name the line and column.
///
/// Memory: the document is read into a compact tree that points into the body instead of
/// copying it (about 40 bytes per element and 24 per attribute, plus any text that needed
/// decoding), then written out as JSON; no `serde_json::Value` is built. That keeps a
/// conversion near three times the document's size (document, tree, JSON) where a tree of
/// values took twenty to thirty (docs/limits.md, "Memory").
pub fn xml_to_json(body: &[u8], opts: &ReadOptions) -> Result<Vec<u8>, String> {
    let tree = Tree::read(body, opts)?;
    let mut out = Vec::with_capacity(body.len() + body.len() / 4);
    out.push(b'{');
    string(&mut out, tree.str(tree.nodes[0].name));
    out.push(b':');
    tree.write_json(0, opts, &mut out);
    out.push(b'}');
    Ok(out)
}

/// Reads an XML document into a JSON value (for scripts' `parse_xml`).
pub fn xml_to_value(body: &[u8], opts: &ReadOptions) -> Result<Value, String> {
    let tree = Tree::read(body, opts)?;
    let mut doc = Map::new();
    doc.insert(
        tree.str(tree.nodes[0].name).to_string(),
        tree.value(0, opts),
    );
    Ok(Value::Object(doc))
}

/// Checks that a body is a well-formed XML document without a DOCTYPE, building no JSON.
pub fn check_xml(body: &[u8]) -> Result<(), String> {
    Tree::read(body, &ReadOptions::default()).map(|_| ())
}

/// A piece of text: a range of the document, or of the tree's buffer of decoded text.
#[derive(Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
    decoded: bool,
}

const NONE: u32 = u32::MAX;

/// One element. Children are a linked list, so a node's size does not depend on how many
/// children it has.
struct Node {
    name: Span,
    text: Span,
    first_attr: u32,
    attrs: u32,
    first_child: u32,
    next_sibling: u32,
}

/// An element being read: its node, its last child so far and its text so far.
struct Open {
    node: u32,
    last_child: u32,
    text: Pending,
}

/// Text of an open element: most elements have one piece, which stays where it is in the
/// document; several pieces (text around entities, CDATA, mixed content) are joined.
enum Pending {
    None,
    InBody(Span),
    Joined(String),
}

struct Tree<'a> {
    body: &'a str,
    decoded: String,
    nodes: Vec<Node>,
    /// Attribute (name, value) pairs; a node's are `first_attr..first_attr + attrs`.
    attrs: Vec<(Span, Span)>,
}

impl<'a> Tree<'a> {
    fn read(body: &'a [u8], opts: &ReadOptions) -> Result<Tree<'a>, String> {
        let text = crate::message::utf8(body, "XML")?;
        if u32::try_from(body.len()).is_err() {
            return Err(format!(
                "the XML document is {} bytes; at most 4 GiB can be read",
                body.len()
            ));
        }
        let mut tree = Tree {
            body: text,
            decoded: String::new(),
            nodes: Vec::new(),
            attrs: Vec::new(),
        };
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<Open> = Vec::new();
        let at = |pos: u64, what: String| {
            let (line, col) = crate::message::line_col(body, pos as usize);
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
                    if stack.is_empty() && !tree.nodes.is_empty() {
                        return Err(at(here, "content after the root element".into()));
                    }
                    if stack.len() >= opts.max_depth {
                        return Err(at(
                            here,
                            format!("elements nested deeper than max_depth {}", opts.max_depth),
                        ));
                    }
                    let raw = std::str::from_utf8(e.name().into_inner())
                        .map_err(|err| at(here, err.to_string()))?;
                    let name = tree.span(local(opts, raw));
                    let first_attr = tree.attrs.len() as u32;
                    for a in e.attributes() {
                        let a = a.map_err(|err| at(here, err.to_string()))?;
                        let key = std::str::from_utf8(a.key.into_inner())
                            .map_err(|err| at(here, err.to_string()))?;
                        if opts.strip_namespaces && (key == "xmlns" || key.starts_with("xmlns:")) {
                            continue;
                        }
                        let key = tree.span(local(opts, key));
                        let value = a
                            .unescape_value()
                            .map_err(|err| at(here, err.to_string()))?;
                        let value = tree.span(&value);
                        tree.attrs.push((key, value));
                    }
                    let node = tree.nodes.len() as u32;
                    tree.nodes.push(Node {
                        name,
                        text: Span::default(),
                        first_attr,
                        attrs: tree.attrs.len() as u32 - first_attr,
                        first_child: NONE,
                        next_sibling: NONE,
                    });
                    if let Some(parent) = stack.last_mut() {
                        match parent.last_child {
                            NONE => tree.nodes[parent.node as usize].first_child = node,
                            last => tree.nodes[last as usize].next_sibling = node,
                        }
                        parent.last_child = node;
                    }
                    let open = Open {
                        node,
                        last_child: NONE,
                        text: Pending::None,
                    };
                    if is_empty {
                        tree.close(open);
                    } else {
                        stack.push(open);
                    }
                }
                Event::End(_) => match stack.pop() {
                    Some(open) => tree.close(open),
                    None => return Err(at(here, "end tag without a start tag".into())),
                },
                Event::Text(t) => {
                    let s = t.xml_content().map_err(|e| at(here, e.to_string()))?;
                    tree.push_text(&mut stack, &s).map_err(|e| at(here, e))?;
                }
                Event::CData(t) => {
                    let s = t.decode().map_err(|e| at(here, e.to_string()))?;
                    tree.push_text(&mut stack, &s).map_err(|e| at(here, e))?;
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
                    tree.push_text(&mut stack, &resolved)
                        .map_err(|e| at(here, e))?;
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
                format!(
                    "document ends before `<{}>` is closed",
                    tree.str(tree.nodes[open.node as usize].name)
                ),
            ));
        }
        if tree.nodes.is_empty() {
            return Err("the body holds no XML element".to_string());
        }
        Ok(tree)
    }

    /// `s` as a range of the document, when it is a slice of it.
    fn in_body(&self, s: &str) -> Option<Span> {
        let at = (s.as_ptr() as usize).wrapping_sub(self.body.as_ptr() as usize);
        (at <= self.body.len() && s.len() <= self.body.len() - at).then_some(Span {
            start: at as u32,
            len: s.len() as u32,
            decoded: false,
        })
    }

    /// Where `s` is: a slice of the document is pointed at; anything else (decoded text) is
    /// copied into the tree's own buffer.
    fn span(&mut self, s: &str) -> Span {
        self.in_body(s).unwrap_or_else(|| {
            let start = self.decoded.len() as u32;
            self.decoded.push_str(s);
            Span {
                start,
                len: s.len() as u32,
                decoded: true,
            }
        })
    }

    fn str(&self, s: Span) -> &str {
        let from = if s.decoded { &self.decoded } else { self.body };
        // Spans are made from char boundaries of these very strings.
        from.get(s.start as usize..(s.start + s.len) as usize)
            .unwrap_or_default()
    }

    fn push_text(&mut self, stack: &mut [Open], s: &str) -> Result<(), String> {
        let Some(open) = stack.last_mut() else {
            return match s.trim().is_empty() {
                true => Ok(()),
                false => Err("text outside the root element".into()),
            };
        };
        open.text = match std::mem::replace(&mut open.text, Pending::None) {
            Pending::None => match self.in_body(s) {
                Some(span) => Pending::InBody(span),
                None => Pending::Joined(s.to_string()),
            },
            Pending::InBody(first) => Pending::Joined(format!("{}{s}", self.str(first))),
            Pending::Joined(mut joined) => {
                joined.push_str(s);
                Pending::Joined(joined)
            }
        };
        Ok(())
    }

    fn close(&mut self, open: Open) {
        let text = match open.text {
            Pending::None => Span::default(),
            Pending::InBody(span) => {
                let full = self.str(span);
                let trimmed = full.trim_start();
                let start = span.start + (full.len() - trimmed.len()) as u32;
                Span {
                    start,
                    len: trimmed.trim_end().len() as u32,
                    decoded: false,
                }
            }
            Pending::Joined(joined) => self.span(joined.trim()),
        };
        self.nodes[open.node as usize].text = text;
    }

    fn children(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.nodes[node as usize].first_child;
        std::iter::successors((first != NONE).then_some(first), move |&c| {
            let next = self.nodes[c as usize].next_sibling;
            (next != NONE).then_some(next)
        })
    }

    /// An element's members in the order of the convention: attributes, then children by
    /// name in order of first appearance, then text. A key met again (an attribute and a child
    /// of the same name when `attribute_prefix` is empty) keeps its first place and takes the
    /// later value, as a JSON object would.
    fn members<'t>(&'t self, node: u32, opts: &'t ReadOptions) -> Vec<(Cow<'t, str>, Member)> {
        let n = &self.nodes[node as usize];
        let mut members: Vec<(Cow<'t, str>, Member)> = Vec::new();
        // Most elements have a few members: a scan finds a key; many get an index.
        let mut index: HashMap<Cow<'t, str>, usize> = HashMap::new();
        let mut put =
            |key: Cow<'t, str>, member: Member, members: &mut Vec<(Cow<'t, str>, Member)>| {
                let found = if members.len() < 16 {
                    members.iter().position(|(k, _)| *k == key)
                } else {
                    if index.is_empty() {
                        index.extend(members.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)));
                    }
                    index.get(&key).copied()
                };
                match found {
                    Some(i) => match (&mut members[i].1, member) {
                        (Member::Children(items), Member::Children(more)) => items.extend(more),
                        (slot, member) => *slot = member,
                    },
                    None => {
                        if !index.is_empty() {
                            index.insert(key.clone(), members.len());
                        }
                        members.push((key, member));
                    }
                }
            };
        for i in n.first_attr..n.first_attr + n.attrs {
            let (key, value) = self.attrs[i as usize];
            let key = match opts.attribute_prefix.as_str() {
                "" => Cow::Borrowed(self.str(key)),
                prefix => Cow::Owned(format!("{prefix}{}", self.str(key))),
            };
            put(key, Member::Text(value), &mut members);
        }
        for child in self.children(node) {
            let name = Cow::Borrowed(self.str(self.nodes[child as usize].name));
            put(name, Member::Children(vec![child]), &mut members);
        }
        if n.text.len > 0 {
            put(
                Cow::Borrowed(&opts.text_key),
                Member::Text(n.text),
                &mut members,
            );
        }
        members
    }

    fn is_leaf(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.attrs == 0 && n.first_child == NONE
    }

    fn write_json(&self, node: u32, opts: &ReadOptions, out: &mut Vec<u8>) {
        if self.is_leaf(node) {
            return self.write_text(self.nodes[node as usize].text, out);
        }
        out.push(b'{');
        for (i, (key, member)) in self.members(node, opts).into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, &key);
            out.push(b':');
            match member {
                Member::Text(span) => string(out, self.str(span)),
                Member::Children(items) => {
                    let array = items.len() > 1 || opts.always_array.iter().any(|a| *a == key);
                    if array {
                        out.push(b'[');
                    }
                    for (j, child) in items.into_iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        self.write_json(child, opts, out);
                    }
                    if array {
                        out.push(b']');
                    }
                }
            }
        }
        out.push(b'}');
    }

    fn write_text(&self, text: Span, out: &mut Vec<u8>) {
        match text.len {
            0 => out.extend_from_slice(b"null"),
            _ => string(out, self.str(text)),
        }
    }

    fn value(&self, node: u32, opts: &ReadOptions) -> Value {
        if self.is_leaf(node) {
            let text = self.nodes[node as usize].text;
            return match text.len {
                0 => Value::Null,
                _ => Value::String(self.str(text).to_string()),
            };
        }
        let mut obj = Map::new();
        for (key, member) in self.members(node, opts) {
            let v = match member {
                Member::Text(span) => Value::String(self.str(span).to_string()),
                Member::Children(items) => {
                    let array = items.len() > 1 || opts.always_array.iter().any(|a| *a == key);
                    let mut values: Vec<Value> =
                        items.into_iter().map(|c| self.value(c, opts)).collect();
                    match (array, values.pop()) {
                        (false, Some(one)) => one,
                        (_, last) => {
                            values.extend(last);
                            Value::Array(values)
                        }
                    }
                }
            };
            obj.insert(key.into_owned(), v);
        }
        Value::Object(obj)
    }
}

enum Member {
    Text(Span),
    Children(Vec<u32>),
}

/// Writes `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn local<'s>(opts: &ReadOptions, raw: &'s str) -> &'s str {
    if opts.strip_namespaces {
        raw.rsplit(':').next().unwrap_or(raw)
    } else {
        raw
    }
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
