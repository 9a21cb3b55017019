//! `aggregate`: combines messages of a route that share a key into one message.
//!
//! ```yaml
//! - aggregate:
//!     key: 'body.order_id'          # messages with the same key form a group
//!     count: 3                      # complete with 3 members,
//!     timeout: 5m                   # or 5 minutes after the first,
//!     combine: json_array           # json_array | lines | csv | xml | script
//! ```
//!
//! A message reaching the step joins the open group of its key and ends there, `aggregating`
//! — its body as the steps before left it is kept in the store. The group completes by
//! `count`, `size`, `when` (checked in the transaction that commits the member), or by
//! `timeout` / `idle` (found by the route's aggregator). A completed group is combined into a
//! new message whose id is the group's, which carries on from the step after `aggregate`; its
//! members become `aggregated`. Groups live in the store, so a crash neither loses a member
//! nor makes a group twice (docs/patterns.md#aggregator).

use super::script_options::scripted_step_config;
use super::{BuildContext, BuildError, Flow, Step, StepError};
use crate::config::values::{ByteSize, Duration};
use crate::message::{Headers, Message};
use crate::script::{body_to_dynamic, write_back, Script};
use crate::store::{Group, Join};
use bytes::Bytes;
use serde::Deserialize;
use std::path::PathBuf;

/// How a completed group's members become one body.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// A JSON array of the members' bodies (JSON bodies as JSON, others as strings).
    #[default]
    JsonArray,
    /// The members' bodies one per line.
    Lines,
    /// The members' CSV texts; the header line is kept once, from the first member.
    Csv,
    /// The members' XML documents inside one `root` element.
    Xml,
    /// A script: `body` is the array of the members' bodies; it sets `body`.
    Script,
}

scripted_step_config! {
    #[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "AggregateStep")]
    pub struct Config {
        /// A Rhai expression over the message as it reaches the step: its group's key
        /// (`body.order_id`, `headers["batch"]`, `hl7(body, "PID-3.1")`). A message for which it
        /// fails or gives nothing fails.
        pub key: String,
        /// The group is complete with this many members.
        #[serde(default)]
        pub count: Option<u64>,
        /// The group is complete once its members' bodies reach this size (default 16MiB: a
        /// group is combined in memory, so this bounds it).
        #[serde(default)]
        pub size: Option<ByteSize>,
        /// The group is complete this long after its first member joined.
        #[serde(default)]
        pub timeout: Option<Duration>,
        /// The group is complete when no member joined for this long.
        #[serde(default)]
        pub idle: Option<Duration>,
        /// A Rhai expression over the message: when true, this message completes its group
        /// (a trailer, `body.last == true`).
        #[serde(default)]
        pub when: Option<String>,
        /// How the members become one body (default `json_array`).
        #[serde(default)]
        pub combine: Combine,
        /// The root element around the members (`combine: xml`; default `messages`).
        #[serde(default)]
        pub root: Option<String>,
        /// The combining script, inline (`combine: script`).
        #[serde(default)]
        pub script: Option<String>,
        /// The combining script in its own file, relative to the route file.
        #[serde(default)]
        pub script_file: Option<PathBuf>,
    }
}

/// The default and largest group: members are combined in memory.
const DEFAULT_SIZE: u64 = 16 * 1024 * 1024;

impl Config {
    pub fn build(&self, cx: &BuildContext) -> Result<Aggregate, BuildError> {
        if self.count.is_none()
            && self.size.is_none()
            && self.timeout.is_none()
            && self.idle.is_none()
            && self.when.is_none()
        {
            return Err(BuildError::new(
                "say when a group is complete: `count`, `size`, `timeout`, `idle` or `when` (a `timeout` as well keeps a group whose last member never comes from waiting for ever)",
            ));
        }
        if self.count == Some(0) {
            return Err(BuildError::new("`count` must be at least 1"));
        }
        if self.size.is_some_and(|s| s.0 == 0) {
            return Err(BuildError::new("`size` must be more than 0"));
        }
        for (name, d) in [("timeout", &self.timeout), ("idle", &self.idle)] {
            if d.as_ref().is_some_and(|d| d.0.is_zero()) {
                return Err(BuildError::new(format!("`{name}` must be more than 0")));
            }
        }
        let options = self.script_options();
        let engine = options.engine(cx)?;
        let key = options.expression(&engine, "key", &self.key)?;
        let when = self
            .when
            .as_deref()
            .map(|w| options.expression(&engine, "when", w))
            .transpose()?;
        let script = options.script(
            &engine,
            self.script.as_deref(),
            self.script_file.as_deref(),
            cx,
        )?;
        match (self.combine, &script) {
            (Combine::Script, None) => {
                return Err(BuildError::new(
                    "`combine: script` needs `script` or `script_file`",
                ))
            }
            (c, Some(_)) if c != Combine::Script => {
                return Err(BuildError::new(
                    "`script` is for `combine: script`; remove it or set `combine: script`",
                ))
            }
            _ => {}
        }
        if self.root.is_some() && self.combine != Combine::Xml {
            return Err(BuildError::new("`root` is for `combine: xml`"));
        }
        let root = self.root.clone().unwrap_or_else(|| "messages".into());
        if !xml_name(&root) {
            return Err(BuildError::new(format!(
                "`root: {root}` is not an XML element name"
            )));
        }
        Ok(Aggregate {
            key,
            key_source: self.key.trim().to_string(),
            when,
            count: self.count,
            size: self.size.map_or(DEFAULT_SIZE, |s| s.0),
            timeout: self.timeout.as_ref().map(|d| d.0),
            idle: self.idle.as_ref().map(|d| d.0),
            combine: self.combine,
            root,
            script,
        })
    }
}

fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

pub struct Aggregate {
    key: Script,
    key_source: String,
    when: Option<Script>,
    count: Option<u64>,
    size: u64,
    timeout: Option<std::time::Duration>,
    idle: Option<std::time::Duration>,
    combine: Combine,
    root: String,
    script: Option<Script>,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("key", &self.key_source)
            .field("combine", &self.combine)
            .finish()
    }
}

impl Step for Aggregate {
    fn apply(&self, msg: &mut Message) -> Result<(), StepError> {
        self.control(msg).map(|_| ())
    }

    fn control(&self, msg: &mut Message) -> Result<Flow, StepError> {
        let body = body_to_dynamic(msg)?;
        let (value, _) = self
            .key
            .run(msg, body.clone())
            .map_err(|e| StepError(format!("key `{}`: {e}", self.key_source)))?;
        let key = if value.is_string() {
            value.into_string().unwrap_or_default()
        } else if value.is_unit() {
            String::new()
        } else {
            value.to_string()
        };
        if key.is_empty() {
            return Err(StepError(format!(
                "key `{}` gave no key for this message (nothing at that path, or empty); it cannot join a group",
                self.key_source
            )));
        }
        let closes = match &self.when {
            None => false,
            Some(when) => {
                let (v, _) = when
                    .run(msg, body)
                    .map_err(|e| StepError(format!("when: {e}")))?;
                v.clone().try_cast::<bool>().ok_or_else(|| {
                    StepError(format!(
                        "when gave {} `{v}`, not true or false",
                        v.type_name()
                    ))
                })?
            }
        };
        Ok(Flow::Aggregate(Join {
            key,
            closes,
            count: self.count,
            size: self.size,
            timeout: self.timeout,
            idle: self.idle,
        }))
    }
}

impl Aggregate {
    /// The message a completed group becomes: the first member's headers with the group's
    /// (`aggregate.key`, `aggregate.count`, `aggregate.completed_by`), and the members'
    /// bodies combined. Errors name the member that could not be combined.
    pub fn combine(&self, group: &Group) -> Result<(Headers, Bytes), String> {
        let mut headers = group
            .members
            .first()
            .map(|m| m.headers.clone())
            .unwrap_or_default();
        headers.insert("aggregate.key".into(), group.key.clone());
        headers.insert("aggregate.count".into(), group.members.len().to_string());
        headers.insert("aggregate.completed_by".into(), group.completed_by.clone());
        let text = |m: &Message| {
            m.body_text()
                .map_err(|e| format!("member {}: {e}", m.id))
                .map(str::to_string)
        };
        let (body, content_type) = match self.combine {
            Combine::JsonArray => {
                let items = group
                    .members
                    .iter()
                    .map(member_json)
                    .collect::<Result<Vec<_>, _>>()?;
                let json = serde_json::to_vec(&items)
                    .map_err(|e| format!("cannot write the JSON array: {e}"))?;
                (json, "application/json")
            }
            Combine::Lines => {
                let mut out = String::new();
                for m in &group.members {
                    out.push_str(text(m)?.trim_end_matches(['\r', '\n']));
                    out.push('\n');
                }
                (out.into_bytes(), "text/plain")
            }
            Combine::Csv => (csv(&group.members)?.into_bytes(), "text/csv"),
            Combine::Xml => (self.xml(&group.members)?.into_bytes(), "application/xml"),
            Combine::Script => return self.script(group, headers),
        };
        headers.insert("content-type".into(), content_type.into());
        Ok((headers, Bytes::from(body)))
    }

    fn xml(&self, members: &[Message]) -> Result<String, String> {
        let mut out = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{}>\n",
            self.root
        );
        for m in members {
            let doc = m.body_text().map_err(|e| format!("member {}: {e}", m.id))?;
            out.push_str(xml_content(doc).map_err(|e| format!("member {}: {e}", m.id))?);
            out.push('\n');
        }
        out.push_str(&format!("</{}>\n", self.root));
        Ok(out)
    }

    fn script(&self, group: &Group, headers: Headers) -> Result<(Headers, Bytes), String> {
        let Some(script) = &self.script else {
            return Err("no combining script".into());
        };
        let items = group
            .members
            .iter()
            .map(|m| body_to_dynamic(m).map_err(|e| format!("member {}: {e}", m.id)))
            .collect::<Result<rhai::Array, _>>()?;
        let mut msg = Message::new(
            group.members.first().map_or("", |m| m.route.as_str()),
            Bytes::new(),
        );
        msg.id = group.id;
        msg.headers = headers;
        let (_, mut scope) = script
            .run(&msg, rhai::Dynamic::from_array(items))
            .map_err(|e| format!("combining script: {e}"))?;
        write_back(&mut msg, &mut scope)?;
        Ok((msg.headers, msg.body))
    }
}

/// A member's body in a JSON array: JSON as JSON, other text as a string.
fn member_json(m: &Message) -> Result<serde_json::Value, String> {
    let text = m.body_text().map_err(|e| format!("member {}: {e}", m.id))?;
    let looks_json = m.header("content-type").is_none()
        && matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    if m.is_json() || looks_json {
        match serde_json::from_str(text) {
            Ok(v) => return Ok(v),
            Err(e) if m.is_json() => {
                return Err(format!(
                    "member {}: {}",
                    m.id,
                    crate::message::json_error("body", &e)
                ))
            }
            Err(_) => {}
        }
    }
    Ok(serde_json::Value::String(text.to_string()))
}

/// CSV texts as one: the first member's header line once, every member's rows.
fn csv(members: &[Message]) -> Result<String, String> {
    let mut out = String::new();
    let mut header: Option<String> = None;
    for m in members {
        let text = m.body_text().map_err(|e| format!("member {}: {e}", m.id))?;
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        match &header {
            None => {
                header = Some(first.to_string());
                out.push_str(first);
                out.push('\n');
            }
            Some(h) if h == first => {}
            Some(h) => {
                return Err(format!(
                    "member {}: its header line `{first}` is not the first member's `{h}`; members of a CSV group share one header",
                    m.id
                ))
            }
        }
        for line in lines.filter(|l| !l.trim().is_empty()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// A document without its XML declaration, to be put inside another element. A document
/// type declaration cannot be (nor would its entities be read).
fn xml_content(doc: &str) -> Result<&str, String> {
    let mut rest = doc.trim_start_matches('\u{feff}').trim_start();
    if rest.starts_with("<?xml") {
        let end = rest
            .find("?>")
            .ok_or("its XML declaration does not end (`?>`)")?;
        rest = rest[end + 2..].trim_start();
    }
    if rest.contains("<!DOCTYPE") {
        return Err(
            "it has a document type declaration (<!DOCTYPE>), which cannot be put inside another element".into(),
        );
    }
    if !rest.starts_with('<') {
        return Err("it is not an XML document".into());
    }
    Ok(rest.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(yaml: &str) -> Result<Aggregate, String> {
        let c: Config = crate::config::yaml::parse_str(yaml).map_err(|e| e.to_string())?;
        c.build(&BuildContext::new(".")).map_err(|e| e.message)
    }

    fn member(body: &str, ct: Option<&str>) -> Message {
        let mut m = Message::new("r", Bytes::from(body.to_string()));
        if let Some(ct) = ct {
            m.headers.insert("content-type".into(), ct.into());
        }
        m
    }

    fn group(members: Vec<Message>) -> Group {
        Group {
            id: uuid::Uuid::now_v7(),
            key: "k1".into(),
            completed_by: "count".into(),
            members,
        }
    }

    #[test]
    fn key_and_when_make_the_join() {
        let s = step("key: body.order\ncount: 3\nwhen: 'body.last == true'").unwrap();
        let mut m = member(r#"{"order": 7, "last": true}"#, Some("application/json"));
        match s.control(&mut m).unwrap() {
            Flow::Aggregate(j) => {
                assert_eq!(j.key, "7");
                assert!(j.closes);
                assert_eq!(j.count, Some(3));
                assert_eq!(j.size, DEFAULT_SIZE);
            }
            other => panic!("{other:?}"),
        }
        let mut none = member(r#"{"x": 1}"#, Some("application/json"));
        let e = s.control(&mut none).unwrap_err().0;
        assert!(e.contains("gave no key"), "{e}");
    }

    #[test]
    fn refuses_configs_that_never_complete_or_do_not_fit() {
        for (yaml, says) in [
            ("key: body.a", "say when a group is complete"),
            ("key: body.a\ncount: 0", "at least 1"),
            ("key: body.a\ncount: 2\ncombine: script", "needs `script`"),
            (
                "key: body.a\ncount: 2\nscript: 'body = 1;'",
                "is for `combine: script`",
            ),
            (
                "key: body.a\ncount: 2\ncombine: xml\nroot: '1x'",
                "not an XML element name",
            ),
            ("key: body.a\ncount: 2\nroot: x", "for `combine: xml`"),
            ("key: 'body.'\ncount: 2", "key: expression error"),
        ] {
            let e = step(yaml).err().unwrap_or_default();
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn combines_each_way() {
        let g = group(vec![
            member(r#"{"n": 1}"#, Some("application/json")),
            member("plain", Some("text/plain")),
        ]);
        let (h, b) = step("key: body.a\ncount: 2").unwrap().combine(&g).unwrap();
        assert_eq!(&b[..], br#"[{"n":1},"plain"]"#);
        assert_eq!(h["aggregate.count"], "2");
        assert_eq!(h["aggregate.key"], "k1");
        assert_eq!(h["content-type"], "application/json");

        let lines = group(vec![member("a\n", None), member("b", None)]);
        let (_, b) = step("key: body.a\ncount: 2\ncombine: lines")
            .unwrap()
            .combine(&lines)
            .unwrap();
        assert_eq!(&b[..], b"a\nb\n");

        let csv = group(vec![
            member("id,qty\n1,2\n", None),
            member("id,qty\n3,4\n", None),
        ]);
        let s = step("key: body.a\ncount: 2\ncombine: csv").unwrap();
        assert_eq!(&s.combine(&csv).unwrap().1[..], b"id,qty\n1,2\n3,4\n");
        let other = group(vec![member("id,qty\n1,2", None), member("x,y\n3,4", None)]);
        assert!(s.combine(&other).unwrap_err().contains("share one header"));

        let xml = group(vec![
            member("<?xml version=\"1.0\"?>\n<order id=\"1\"/>", None),
            member("<order id=\"2\"/>", None),
        ]);
        let s = step("key: body.a\ncount: 2\ncombine: xml\nroot: orders").unwrap();
        let (_, b) = s.combine(&xml).unwrap();
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(
            text.contains("<orders>\n<order id=\"1\"/>\n<order id=\"2\"/>\n</orders>"),
            "{text}"
        );
        let doctype = group(vec![member(
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>",
            None,
        )]);
        assert!(s.combine(&doctype).unwrap_err().contains("document type"));

        let s = step(
            "key: body.a\ncount: 2\ncombine: script\nscript: |\n  let total = 0;\n  for m in body { total += m.qty; }\n  body = #{ total: total, lines: body.len() };",
        )
        .unwrap();
        let g = group(vec![
            member(r#"{"qty": 2}"#, Some("application/json")),
            member(r#"{"qty": 5}"#, Some("application/json")),
        ]);
        let (h, b) = s.combine(&g).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"total": 7, "lines": 2}));
        assert_eq!(h["content-type"], "application/json");
    }
}
