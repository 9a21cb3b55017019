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

mod read;
mod write;

pub use read::{check_xml, xml_to_json, xml_to_value};
pub use write::value_to_xml;

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
