//! XML to JSON: the document read into a compact tree that points into the body, then written
//! as JSON text or a value.

use super::*;

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
pub(super) struct Span {
    start: u32,
    len: u32,
    decoded: bool,
}

pub(super) const NONE: u32 = u32::MAX;

/// One element. Children are a linked list, so a node's size does not depend on how many
/// children it has.
pub(super) struct Node {
    name: Span,
    text: Span,
    first_attr: u32,
    attrs: u32,
    first_child: u32,
    next_sibling: u32,
}

/// An element being read: its node, its last child so far and its text so far.
pub(super) struct Open {
    node: u32,
    last_child: u32,
    text: Pending,
}

/// Text of an open element: most elements have one piece, which stays where it is in the
/// document; several pieces (text around entities, CDATA, mixed content) are joined.
pub(super) enum Pending {
    None,
    InBody(Span),
    Joined(String),
}

pub(super) struct Tree<'a> {
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

pub(super) enum Member {
    Text(Span),
    Children(Vec<u32>),
}

/// Writes `s` as a JSON string.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(super) fn local<'s>(opts: &ReadOptions, raw: &'s str) -> &'s str {
    if opts.strip_namespaces {
        raw.rsplit(':').next().unwrap_or(raw)
    } else {
        raw
    }
}
